//! Choosing and building the GPU backend for `amk generate` and `amk gpu-test`: the schedule
//! (lowered with knobs, or a hand-edited `schedule.ron`) is verified before anything is
//! launched, and the backend re-verifies it with the compiled kernel's real occupancy.

use crate::progress::weight_bar;
use amk_ir::graph::DecodeGraph;
use amk_ir::Model;
use amk_runtime::gpu::{GpuBackend, GpuOptions, WeightDType};
use amk_runtime::quant::WeightPrecision;
use amk_schedule::{lower, PrecisionPlan, Schedule, ScheduleConfig};
use amk_verify::{verify, LaunchFacts, VerifiedSchedule};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Weight precision of the GPU backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// f32 weights and activations: the exact mode, checked token for token against Hugging
    /// Face's fp32 decodes.
    F32,
    /// bf16 weights, f32 activations and accumulation: half the bytes per token.
    Bf16,
    /// int8 matrices with one f32 scale per output channel (symmetric), f32 vectors,
    /// activations and accumulation: about a quarter of f32's bytes per token.
    Int8,
}

/// GPU options shared by the commands that launch the megakernel.
#[derive(Debug, Clone, Args)]
pub struct GpuArgs {
    /// Weight precision (GPU default bf16; on the CPU, bf16 and int8 weights are emulated in f32
    /// arithmetic, f32 by default).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Run this schedule.ron instead of lowering one. It is verified first, on either backend:
    /// the GPU launches it, the CPU runs it on the schedule executor.
    #[arg(long)]
    pub schedule: Option<PathBuf>,
    /// Knobs (RON ScheduleConfig) for lowering the schedule; with --schedule, only its launch
    /// facts (sm_count, blocks_per_sm) are used, to verify the given schedule. The CPU
    /// reference does not lower: it uses only the knobs' per-op precision plan
    /// (`precision: (lm_head: Some(Int8))`), emulating each matrix in its format.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seconds a launch may take before the run stops with the counters' values.
    #[arg(long, default_value_t = 10.0)]
    pub watchdog: f64,
    /// Threads per block of the megakernel.
    #[arg(long, default_value_t = 512)]
    pub block_threads: u32,
    /// Do not stage weight tiles in shared memory before waiting (only an L2 prefetch); for
    /// measuring what staging buys.
    #[arg(long)]
    pub no_stage: bool,
    /// Compile the kernel with in-kernel timestamps and print where a step's time goes
    /// (per phase on the critical path, per task kind, waits); costs a little speed.
    #[arg(long)]
    pub trace: bool,
    /// Launch each token's kernel only after the previous one has finished, instead of
    /// overlapping its start (control data, the rope table) with the previous launch's
    /// end (programmatic dependent launch, sm_90 and later); for measuring what the overlap
    /// buys.
    #[arg(long)]
    pub no_overlap: bool,
    /// A per-op precision plan that replaces the knobs' (`amk bench`'s `bf16+lm_head=int8`
    /// entries); not a command-line option.
    #[arg(skip)]
    pub plan: Option<PrecisionPlan>,
}

impl Precision {
    /// How the device stores weights in this precision.
    pub fn weight_dtype(self) -> WeightDType {
        match self {
            Precision::F32 => WeightDType::F32,
            Precision::Bf16 => WeightDType::BF16,
            Precision::Int8 => WeightDType::Int8,
        }
    }

    /// Bytes of one matrix element on the device.
    pub fn weight_elem_bytes(self) -> u64 {
        self.weight_dtype().bytes()
    }
}

impl Default for GpuArgs {
    /// What the command line gives when no GPU option is passed.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            gpu: GpuArgs,
        }
        <Defaults as clap::Parser>::parse_from(["amk"]).gpu
    }
}

impl GpuArgs {
    pub fn weight_dtype(&self) -> WeightDType {
        self.precision.unwrap_or(Precision::Bf16).weight_dtype()
    }

    /// The knobs: `--config`'s (or the defaults), with [`GpuArgs::plan`] in place of their
    /// precision plan when it is set.
    pub fn knobs(&self) -> Result<ScheduleConfig> {
        let mut knobs = read_knobs(self.config.as_deref())?;
        if let Some(plan) = self.plan {
            knobs.precision = plan;
        }
        Ok(knobs)
    }
}

/// The weight formats of a `precision` build with the per-op precision plan of the knob file
/// `config` (none: every matrix in `precision`): what the CPU reference emulates.
pub fn weight_precision(precision: Precision, config: Option<&Path>) -> Result<WeightPrecision> {
    let plan = read_knobs(config)?.precision;
    Ok(WeightPrecision { dtype: precision.weight_dtype(), plan })
}

/// Bytes of weights one token streams, at `elem` bytes per weight element.
pub fn weight_bytes(model: &Model, elem: u64) -> u64 {
    model.graph.weights.iter().map(|w| w.numel() as u64 * elem).sum()
}

/// Bytes of weights one token streams with each weight in its format (int8 matrices with
/// their rows' f32 scales).
pub fn weight_bytes_as(model: &Model, precision: &WeightPrecision) -> u64 {
    model
        .graph
        .weights
        .iter()
        .map(|w| {
            let format = precision.format_of(w);
            let scales = match (format, w.shape.first()) {
                (WeightDType::Int8, Some(&rows)) => 4 * rows as u64,
                _ => 0,
            };
            w.numel() as u64 * format.bytes() + scales
        })
        .sum()
}

/// Bytes of KV cache one token reads per cached position: the megakernel keeps f32 keys and
/// values for every layer, whatever the weight precision.
pub fn kv_bytes_per_position(model: &Model) -> u64 {
    let c = &model.config;
    (2 * c.num_layers * c.kv_dim() * 4) as u64
}

/// A fresh, empty temporary directory whose name starts with `tag`.
pub fn scratch_dir(tag: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Lowers `graph` with `knobs`, read from `path` (`None`: the defaults); errors name the file.
pub fn lower_with(
    graph: &DecodeGraph,
    knobs: &ScheduleConfig,
    path: Option<&Path>,
) -> Result<Schedule> {
    lower(graph, knobs).with_context(|| match path {
        Some(p) => format!("lowering with the knobs in {}", p.display()),
        None => "lowering with the default knobs".to_owned(),
    })
}

/// Reads knobs from a file, or the defaults.
pub fn read_knobs(path: Option<&Path>) -> Result<ScheduleConfig> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok(ScheduleConfig::from_ron(&text).with_context(|| format!("in {}", path.display()))?)
        }
        None => Ok(ScheduleConfig::default()),
    }
}

/// Parses `schedule.ron` text read from `path`; a parse error names the real file (the
/// parser's messages say `schedule.ron:LINE:COLUMN`).
pub fn parse_schedule(text: &str, path: &Path) -> Result<Schedule, String> {
    Schedule::from_ron_str(text)
        .map_err(|e| e.to_string().replacen("schedule.ron", &path.display().to_string(), 1))
}

/// The schedule to run: a file, or the lowering of the model with the knobs.
pub fn schedule_for(model: &Model, args: &GpuArgs) -> Result<(Schedule, LaunchFacts)> {
    let knobs = args.knobs()?;
    let facts = LaunchFacts { sm_count: knobs.sm_count, blocks_per_sm: knobs.blocks_per_sm };
    let schedule = match &args.schedule {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            parse_schedule(&text, path).map_err(anyhow::Error::msg)?
        }
        None => lower_with(&model.graph, &knobs, args.config.as_deref())?,
    };
    Ok((schedule, facts))
}

/// Verifies before launch: an unsafe schedule never reaches the GPU.
pub fn verify_or_refuse(schedule: &Schedule, facts: &LaunchFacts) -> Result<VerifiedSchedule> {
    match verify(schedule, facts) {
        Ok(v) => Ok(v),
        Err(rejection) => bail!("refusing to launch an unverified schedule: {rejection}"),
    }
}

/// The error for `--backend gpu` where no GPU is usable (`why`), pointing at the CPU choices.
pub fn no_gpu_for_backend(why: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "--backend gpu: no GPU is usable here ({why}); use --backend cpu (the f32 reference, \
         lower precisions emulated) or --backend auto"
    )
}

/// Builds the GPU backend for `model`.
pub fn build_backend(model: &Model, args: &GpuArgs, quiet: bool) -> Result<GpuBackend> {
    amk_runtime::gpu::cuda_available()
        .map_err(|why| anyhow::anyhow!("no GPU is usable here ({why})"))?;
    let (schedule, facts) = schedule_for(model, args)?;
    let verified = verify_or_refuse(&schedule, &facts)?;
    backend_for(model, &verified, args, quiet)
}

/// The backend options `args` ask for.
pub fn gpu_options(args: &GpuArgs) -> GpuOptions {
    GpuOptions {
        weight_dtype: args.weight_dtype(),
        watchdog: Duration::from_secs_f64(args.watchdog.max(1e-6)),
        block_threads: args.block_threads,
        stage_weights: !args.no_stage,
        trace: args.trace,
        overlap_launches: !args.no_overlap,
        ..GpuOptions::default()
    }
}

/// Builds the GPU backend for an already verified schedule of `model`: code generation, NVRTC
/// (through the kernel cache), module load, the co-residency check and the weight upload.
pub fn backend_for(
    model: &Model,
    verified: &VerifiedSchedule,
    args: &GpuArgs,
    quiet: bool,
) -> Result<GpuBackend> {
    let bar = weight_bar(model.graph.weights.len(), "compiling and uploading");
    let backend = GpuBackend::new(model, verified, gpu_options(args))?;
    bar.finish_and_clear();
    if !quiet {
        eprintln!("amk: gpu: {}", backend.fit());
    }
    Ok(backend)
}
