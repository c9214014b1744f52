//! The pipeline's stages one at a time: `amk ir`, `amk schedule`, `amk verify`. Each reads the
//! previous stage's artifact and writes its own, so a person or a search loop can edit
//! `schedule.ron` by hand, re-verify it and go on.

use crate::progress::ImportBar;
use amk_ir::graph::DecodeGraph;
use amk_ir::Model;
use amk_verify::{verify, LaunchFacts};
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Write a model's decode-step graph as model.ir.ron.
#[derive(Debug, Args)]
pub struct IrArgs {
    /// Hugging Face model directory or .gguf file.
    pub model: PathBuf,
    /// Where to write the graph.
    #[arg(short, long, default_value = "model.ir.ron")]
    pub output: PathBuf,
}

/// Lower a model (or its model.ir.ron) to a schedule of tasks on workers, schedule.ron.
///
/// The schedule is not trusted by anything downstream until `amk verify` proves it.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Hugging Face model directory, .gguf file, or a model.ir.ron written by `amk ir`.
    pub model: PathBuf,
    /// Knobs (RON ScheduleConfig: workers, blocks_per_sm, sm_count, o_rows, mlp_rows, down_rows,
    /// head_rows, assignment, task_order, fuse_norm, fuse_down, fuse_o, fuse_q, o_by_head,
    /// head_waits, tagged, qkv_parts, max_positions, attn_splits, prefetch_depth); absent
    /// fields keep defaults, e.g. `(workers: 64, fuse_norm: false)`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to write the schedule.
    #[arg(short, long, default_value = "schedule.ron")]
    pub output: PathBuf,
}

/// Prove a schedule deadlock-free, race-free, co-resident and launch-to-launch safe.
///
/// Exit status: 0 when proven safe (the certificate is printed), 1 when unsafe (every
/// counterexample is printed: stuck workers with their waits, or racing tasks with their byte
/// ranges), 2 when the input is malformed (unreadable file, RON syntax with line and column,
/// unknown names, ids or regions out of range; also when other errors come with it), 74 when the
/// result cannot be written to standard output.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The schedule.ron to check.
    pub schedule: PathBuf,
    /// Print the certificate or the rejection as JSON.
    #[arg(long)]
    pub json: bool,
    /// Streaming multiprocessors of the target device.
    #[arg(long, default_value_t = 132, value_parser = clap::value_parser!(u32).range(1..))]
    pub sms: u32,
    /// Blocks of the compiled kernel that fit on one SM at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub blocks_per_sm: u32,
}

/// Reads a graph: from model.ir.ron, or built from a model.
fn load_graph(path: &Path) -> Result<DecodeGraph> {
    if path.extension().is_some_and(|e| e == "ron") {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return DecodeGraph::from_ron(&text).with_context(|| format!("in {}", path.display()));
    }
    let mut bar = ImportBar::new();
    let model = Model::open(path, &mut |p| bar.update(&p))
        .with_context(|| format!("opening model {}", path.display()))?;
    bar.finish();
    Ok(model.graph)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Refuses an output directory path that exists as something else.
fn refuse_non_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!("{}: exists and is not a directory; -o takes a directory", dir.display());
    }
    Ok(())
}

/// The files a command reads for `model`: the path itself (a GGUF file, a model.ir.ron), or in
/// a Hugging Face directory its JSON files (config, tokenizer, index), weights and chat
/// template.
fn input_files(model: &Path) -> Vec<PathBuf> {
    if !model.is_dir() {
        return vec![model.to_path_buf()];
    }
    let read_by_import =
        |p: &Path| p.extension().is_some_and(|e| e == "json" || e == "safetensors" || e == "jinja");
    std::fs::read_dir(model)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && read_by_import(p))
        .collect()
}

/// Refuses an output path that is one of the command's inputs: `amk schedule DIR -o
/// DIR/model.safetensors` would replace the weights it had just read.
fn refuse_input(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    let Ok(out_c) = std::fs::canonicalize(out) else { return Ok(()) }; // not there yet
    if inputs.iter().any(|i| std::fs::canonicalize(i).is_ok_and(|c| c == out_c)) {
        anyhow::bail!(
            "{}: refusing to overwrite a file this command reads; write the output elsewhere",
            out.display()
        );
    }
    Ok(())
}

pub fn run_ir(args: IrArgs) -> Result<()> {
    let graph = load_graph(&args.model)?;
    refuse_input(&args.output, &input_files(&args.model))?;
    write(&args.output, &graph.to_ron())?;
    eprintln!("wrote {}: {}", args.output.display(), graph.summary());
    Ok(())
}

pub fn run_schedule(args: ScheduleArgs) -> Result<()> {
    let config = crate::gpu::read_knobs(args.config.as_deref())?;
    let graph = load_graph(&args.model)?;
    let schedule = crate::gpu::lower_with(&graph, &config, args.config.as_deref())?;
    let mut inputs = input_files(&args.model);
    inputs.extend(args.config.clone());
    refuse_input(&args.output, &inputs)?;
    write(&args.output, &schedule.to_ron_string())?;
    let instrs: usize = schedule.workers.iter().map(|w| w.instrs.len()).sum();
    eprintln!(
        "wrote {}: {} workers, {} tasks, {} counters, {} instructions; check it with `amk verify {}`",
        args.output.display(),
        schedule.workers.len(),
        schedule.tasks.len(),
        schedule.counters.len(),
        instrs,
        args.output.display()
    );
    Ok(())
}

/// `amk verify` decides its own exit status (0, 1 or 2).
pub fn run_verify(args: VerifyArgs) -> ExitCode {
    let text = match std::fs::read_to_string(&args.schedule) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", args.schedule.display());
            return ExitCode::from(2);
        }
    };
    let schedule = match crate::gpu::parse_schedule(&text, &args.schedule) {
        Ok(s) => s,
        Err(msg) => {
            if args.json {
                println!("{}", serde_json::json!({ "malformed": msg }));
            }
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    let facts = LaunchFacts { sm_count: args.sms, blocks_per_sm: args.blocks_per_sm };
    let started = std::time::Instant::now();
    let result = verify(&schedule, &facts);
    let elapsed = started.elapsed();
    match result {
        Ok(verified) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(verified.certificate()).unwrap_or_default()
                );
            } else {
                println!("{}: {}", args.schedule.display(), verified.certificate());
                eprintln!("verified in {:.1} ms", elapsed.as_secs_f64() * 1e3);
            }
            ExitCode::SUCCESS
        }
        Err(rejection) => {
            if args.json {
                println!("{}", rejection.to_json());
            } else {
                println!("{}: {rejection}", args.schedule.display());
            }
            if rejection.errors.iter().any(|e| e.is_malformed()) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Run the whole chain for a model and write every artifact into one directory: model.ir.ron,
/// schedule.ron, certificate.json, megakernel.cu and launch.ron; then compile the kernel with
/// NVRTC for each --arch (no GPU needed) and report registers, shared memory and spills.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Hugging Face model directory or .gguf file.
    pub model: PathBuf,
    /// Output directory.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Knobs for lowering (RON ScheduleConfig).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Weight precision on the device.
    #[arg(long, value_enum, default_value_t = crate::gpu::Precision::Bf16)]
    pub precision: crate::gpu::Precision,
    /// Targets to compile for (the first one goes into launch.ron).
    #[arg(long, value_delimiter = ',', default_value = "sm_90,sm_80,sm_120")]
    pub arch: Vec<String>,
    /// Threads per block.
    #[arg(long, default_value_t = 512)]
    pub block_threads: u32,
    /// Do not stage weight tiles in shared memory (cp.async) before waiting.
    #[arg(long)]
    pub no_stage: bool,
    /// Skip the NVRTC compile (when libnvrtc is not installed).
    #[arg(long)]
    pub no_compile: bool,
    /// Replace a schedule.ron in the output directory even when it was edited since amk wrote
    /// it (without this, an edited one is refused: it may be someone's work).
    #[arg(long)]
    pub overwrite: bool,
}

/// Refuses to replace `dir/schedule.ron` unless it is byte for byte the schedule that
/// `dir/certificate.json` certifies (the certificate hashes the canonical text, which is what
/// `amk build` writes), i.e. when someone edited it, a comment included, after amk wrote both.
fn refuse_edited_schedule(dir: &Path) -> Result<()> {
    use sha2::{Digest, Sha256};
    let path = dir.join("schedule.ron");
    let Ok(bytes) = std::fs::read(&path) else { return Ok(()) }; // nothing there
    let certified = std::fs::read_to_string(dir.join("certificate.json"))
        .ok()
        .and_then(|c| serde_json::from_str::<amk_verify::Certificate>(&c).ok());
    let hash: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let unedited = certified.is_some_and(|c| c.schedule_hash == hash);
    if !unedited {
        anyhow::bail!(
            "{}: not the schedule {}'s certificate.json certifies (edited since amk wrote it?); \
             keep it by choosing another directory, or pass --overwrite to replace it",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

pub fn run_build(args: BuildArgs) -> Result<()> {
    use amk_codegen_cuda::{generate, write_artifacts, Arch, CodegenOptions};
    let started = std::time::Instant::now();
    let knobs = crate::gpu::read_knobs(args.config.as_deref())?;
    let graph = load_graph(&args.model)?;
    let t_import = started.elapsed();
    refuse_non_dir(&args.output)?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let mut inputs = input_files(&args.model);
    inputs.extend(args.config.clone());
    // Every artifact is checked against the inputs before any is written.
    for artifact in
        ["model.ir.ron", "schedule.ron", "certificate.json", "megakernel.cu", "launch.ron"]
    {
        refuse_input(&args.output.join(artifact), &inputs)?;
    }
    if !args.overwrite {
        refuse_edited_schedule(&args.output)?;
    }
    write(&args.output.join("model.ir.ron"), &graph.to_ron())?;
    let schedule = crate::gpu::lower_with(&graph, &knobs, args.config.as_deref())?;
    let t_schedule = started.elapsed();
    let facts = LaunchFacts { sm_count: knobs.sm_count, blocks_per_sm: knobs.blocks_per_sm };
    // schedule.ron and its certificate are written together, once the proof holds, so the
    // directory never pairs a schedule with another schedule's certificate.
    let verified = crate::gpu::verify_or_refuse(&schedule, &facts)?;
    write(&args.output.join("schedule.ron"), &schedule.to_ron_string())?;
    write(
        &args.output.join("certificate.json"),
        &serde_json::to_string_pretty(verified.certificate())?,
    )?;
    let t_verify = started.elapsed();
    let archs: Vec<Arch> = args
        .arch
        .iter()
        .map(|a| a.parse::<Arch>().map_err(|e| anyhow::anyhow!("--arch {a}: {e}")))
        .collect::<Result<_>>()?;
    let Some(&first) = archs.first() else { anyhow::bail!("--arch: give at least one target") };
    let weight_dtype = args.precision.weight_dtype();
    let options = CodegenOptions {
        weight_dtype,
        arch: first,
        block_threads: args.block_threads,
        stage_weights: !args.no_stage,
        trace: false,
    };
    let generated = generate(&verified, &options)?;
    write_artifacts(&generated, &args.output)
        .with_context(|| format!("writing into {}", args.output.display()))?;
    let t_codegen = started.elapsed();
    println!(
        "{}: model.ir.ron, schedule.ron ({} workers, {} tasks), certificate.json, megakernel.cu, \
         launch.ron",
        args.output.display(),
        schedule.workers.len(),
        schedule.tasks.len()
    );
    println!(
        "  import {:.2} s, schedule {:.2} s, verify {:.2} s, codegen {:.2} s",
        t_import.as_secs_f64(),
        (t_schedule - t_import).as_secs_f64(),
        (t_verify - t_schedule).as_secs_f64(),
        (t_codegen - t_verify).as_secs_f64()
    );
    if args.no_compile {
        return Ok(());
    }
    amk_runtime::gpu::nvrtc_available().map_err(|why| {
        anyhow::anyhow!("NVRTC is not available ({why}); install it or pass --no-compile")
    })?;
    if archs.len() > 1 {
        // One source serves every target, but its shared-memory sizing (launch.ron, the staging
        // slots) is the first target's: the others are compile checks of the same source.
        println!(
            "  megakernel.cu and launch.ron are sized for {} (the first --arch); the other \
             targets compile the same source (a GPU run sizes the kernel for its own device)",
            first.as_str()
        );
    }
    for arch in &archs {
        let t = std::time::Instant::now();
        let compiled = amk_runtime::gpu::compile_cached(
            &generated.source,
            arch.as_str(),
            Some(&amk_runtime::gpu::kernel_cache_dir()),
        )?;
        let usage = compiled.usage(&generated.launch.kernel);
        println!(
            "  nvrtc {}: {} in {:.2} s: {}",
            arch.as_str(),
            if compiled.from_cache { "cached" } else { "compiled" },
            t.elapsed().as_secs_f64(),
            match usage {
                Some(u) => format!(
                    "{} registers, {} B static smem + {} B dynamic, {} B stack, spills {} B stores / {} B loads",
                    u.registers,
                    u.shared_bytes,
                    generated.launch.dynamic_smem_bytes,
                    u.stack_bytes,
                    u.spill_stores,
                    u.spill_loads
                ),
                None => "no resource report".into(),
            }
        );
    }
    Ok(())
}

/// Shapes `amk synth` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SynthPreset {
    /// SmolLM2-135M's shape (30 layers, hidden 576, 9/3 heads, vocab 49152, tied head).
    Smollm2_135m,
    /// SmolLM2-360M's shape (32 layers, hidden 960, 15/5 heads, vocab 49152, tied head).
    Smollm2_360m,
    /// Llama-3.2-1B's shape (16 layers, hidden 2048, 32/8 heads, vocab 128256, tied head),
    /// without its llama3 rope scaling.
    Llama3_2_1b,
    /// A tiny model (2 layers, hidden 64) for quick tests.
    Tiny,
}

/// Write a Hugging Face directory with seeded random weights in a model's shape: for timing
/// (speed does not depend on weight values) and tests, without downloading a checkpoint.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// The shape.
    #[arg(long, value_enum)]
    pub preset: SynthPreset,
    /// Output directory.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Seed of the weights.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Override the number of layers (to measure cost per layer).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Write into a non-empty output directory, replacing its config, weights and tokenizer
    /// (without it such a directory is refused: it may hold a real checkpoint).
    #[arg(long)]
    pub overwrite: bool,
}

impl SynthPreset {
    /// The preset's shape with weights seeded by `seed`.
    pub fn spec(self, seed: u64) -> amk_ir::synth::SynthSpec {
        use amk_ir::synth::SynthSpec;
        let base = SynthSpec { seed, ..SynthSpec::tiny() };
        let shape = |h, m, l, nh, nkv, hd, v| SynthSpec {
            hidden_size: h,
            intermediate_size: m,
            num_layers: l,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            vocab_size: v,
            max_position_embeddings: 8192,
            ..base.clone()
        };
        match self {
            // SmolLM2's rope theta is 1e5 (the tiny preset keeps 1e4).
            SynthPreset::Smollm2_135m => {
                SynthSpec { rope_theta: 100_000.0, ..shape(576, 1536, 30, 9, 3, 64, 49152) }
            }
            SynthPreset::Smollm2_360m => {
                SynthSpec { rope_theta: 100_000.0, ..shape(960, 2560, 32, 15, 5, 64, 49152) }
            }
            SynthPreset::Llama3_2_1b => {
                SynthSpec { rope_theta: 500_000.0, ..shape(2048, 8192, 16, 32, 8, 64, 128256) }
            }
            SynthPreset::Tiny => base.clone(),
        }
    }

    /// The name `--preset` takes (`smollm2-360m`, ...).
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value().map_or_else(|| format!("{self:?}"), |v| v.get_name().to_owned())
    }
}

pub fn run_synth(args: SynthArgs) -> Result<()> {
    use amk_ir::synth::{write_checkpoint, SynthSpec};
    let spec = args.preset.spec(args.seed);
    let spec = SynthSpec { num_layers: args.layers.unwrap_or(spec.num_layers), ..spec };
    refuse_non_dir(&args.output)?;
    if args.output.is_dir() {
        let mut entries = std::fs::read_dir(&args.output)
            .with_context(|| format!("cannot read {}", args.output.display()))?;
        if entries.next().is_some() && !args.overwrite {
            anyhow::bail!(
                "{}: output directory is not empty (it may hold a real checkpoint, which the \
                 synthetic config.json, model.safetensors and tokenizer.json would replace); \
                 choose another directory or pass --overwrite",
                args.output.display()
            );
        }
        // With --overwrite, the Hugging Face model files of what was there go first, so none
        // of them (a tokenizer_config.json's chat template, a shard index) mixes with the new
        // model; other files stay.
        const MODEL_FILES: [&str; 7] = [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "chat_template.jinja",
            "model.safetensors.index.json",
        ];
        for f in input_files(&args.output) {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if MODEL_FILES.contains(&name) || name.ends_with(".safetensors") {
                std::fs::remove_file(&f)
                    .with_context(|| format!("cannot remove {}", f.display()))?;
            }
        }
    }
    let config = write_checkpoint(&spec, &args.output)?;
    let graph = amk_ir::graph::DecodeGraph::build(&config);
    let params: usize = graph.weights.iter().map(|w| w.numel()).sum();
    eprintln!("wrote {}: {} parameters, {}", args.output.display(), params, graph.summary());
    Ok(())
}
