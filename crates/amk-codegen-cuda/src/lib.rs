//! amk-codegen-cuda: a VERIFIED schedule in, the inputs of ONE persistent CUDA megakernel out.
//!
//! # Contract
//!
//! [`generate`] takes a [`VerifiedSchedule`] (only `amk_verify::verify` can make one) and
//! [`CodegenOptions`], and returns [`Generated`]:
//!
//! - [`Generated::source`], `megakernel.cu`: a prologue of `#define`s holding ONLY numbers
//!   computed from the schedule and options (`AMK_WEIGHT_BF16`, `AMK_BLOCK_THREADS`,
//!   `AMK_MAX_COLS`, `AMK_MAX_HEAD_DIM`, `AMK_WORKERS`, `AMK_TASKS`, `AMK_COUNTERS`), then the
//!   hand-written device code of `kernels/abi.cuh` and `kernels/megakernel.cuh`, embedded at
//!   compile time ([`KERNEL_FILES`]). No name, string or other text of the schedule ever
//!   reaches the source, so a schedule file cannot inject code into the kernel.
//! - [`Generated::tables`], the [`DeviceTables`] the host uploads: the instruction program
//!   (2 words per instruction), each worker's first instruction, one 32-word descriptor per
//!   task, per-counter signals per launch and the device size of every buffer, laid out as
//!   `kernels/abi.cuh` says ([`abi`] mirrors its constants; a test keeps the two equal).
//! - [`Generated::launch`], the [`LaunchSpec`] (`launch.ron`): kernel name, grid (= workers),
//!   block, dynamic shared memory, arch, weight dtype and the verified schedule's hash, so the
//!   runtime can check it launches what was verified.
//!
//! Encoding re-checks every number it writes, as defense in depth behind the verifier: ids in
//! range, every value fits its 32-bit word (including every element index the device
//! computes), the ABI's rules (Copy offsets multiples of 4, rope over whole heads, a cache row
//! of exactly head_dim rows, input length = columns), and that each op's real accesses
//! ([`amk_schedule::TaskOp::footprint`]) lie inside the regions its task declares, which are
//! what the verifier proved race-free. Any violation is a [`CodegenError`] naming the task,
//! counter, buffer or instruction and the field.
//!
//! # Why an instruction table interpreted on the device
//!
//! The kernel does not contain the schedule as code; each block loops over its slice of the
//! program and dispatches on the task descriptor. A task streams tens to hundreds of KB of
//! weights, so decoding a 2-word instruction and a 32-word descriptor costs nothing next to
//! it. In exchange, one kernel source serves every model and schedule (the prologue only sizes
//! shared memory and registers), and editing a schedule (re-tiling, moving tasks between
//! workers) needs no recompilation: only new tables.

#![warn(missing_docs)]

pub mod abi;
mod encode;
mod error;
mod source;

pub use error::{Access, CodegenError, Problem};
pub use source::{KERNEL_FILES, PROLOGUE_DEFINES};

pub use amk_verify::VerifiedSchedule;

use amk_schedule::WeightFormat;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::path::Path;
use std::str::FromStr;

/// The kernel's entry point (`extern "C"` in `kernels/megakernel.cuh`).
pub const KERNEL_NAME: &str = "amk_megakernel";
/// File name of the generated source written by [`write_artifacts`].
pub const SOURCE_FILE: &str = "megakernel.cu";
/// File name of the launch spec written by [`write_artifacts`].
pub const LAUNCH_FILE: &str = "launch.ron";

/// How the device holds weight buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum WeightDType {
    /// 4-byte floats, as the schedule describes them.
    F32,
    /// bfloat16: every weight buffer and region is half its described size.
    #[default]
    BF16,
    /// Weight-only int8: each matrix row (output channel) holds int8 values with one f32
    /// scale (symmetric, `max|w| / 127`); vectors (norm weights, biases) stay f32.
    Int8,
}

impl WeightDType {
    /// `"f32"` or `"bf16"`.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightDType::F32 => "f32",
            WeightDType::BF16 => "bf16",
            WeightDType::Int8 => "int8",
        }
    }

    /// Bytes of one matrix element on the device (int8 matrices add a 4-byte scale per row).
    pub fn bytes(self) -> u64 {
        match self {
            WeightDType::F32 => 4,
            WeightDType::BF16 => 2,
            WeightDType::Int8 => 1,
        }
    }

    /// The format of a weight matrix in a build of this dtype whose schedule gives it
    /// `format` ([`amk_schedule::schedule::Buffer::format`], from a per-op precision plan):
    /// that format, or the build's own when it gives none. f32 builds (the exact mode) hold
    /// every matrix in f32.
    pub fn matrix_format(self, format: Option<WeightFormat>) -> WeightDType {
        match (self, format) {
            (WeightDType::F32, _) | (_, None) => self,
            (_, Some(WeightFormat::Bf16)) => WeightDType::BF16,
            (_, Some(WeightFormat::Int8)) => WeightDType::Int8,
        }
    }

    /// The format a build of this dtype holds a weight in: a matrix as
    /// [`WeightDType::matrix_format`] gives it; a vector (norm weights, biases) in bf16 in a
    /// bf16 build, else in f32, whatever `format` says. Codegen, the CPU reference and the
    /// schedule executor all ask here, so what is uploaded is what is emulated.
    pub fn weight_format(self, matrix: bool, format: Option<WeightFormat>) -> WeightDType {
        match (matrix, self) {
            (true, _) => self.matrix_format(format),
            (false, WeightDType::BF16) => WeightDType::BF16,
            (false, _) => WeightDType::F32,
        }
    }
}

impl fmt::Display for WeightDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WeightDType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(WeightDType::F32),
            "bf16" | "bfloat16" => Ok(WeightDType::BF16),
            "int8" | "i8" => Ok(WeightDType::Int8),
            _ => Err(format!("unknown weight dtype `{s}`: expected `f32`, `bf16` or `int8`")),
        }
    }
}

/// The GPU architecture the source is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Arch {
    /// Ampere (A100): `sm_80`.
    Sm80,
    /// Hopper (H100, H200): `sm_90`.
    #[default]
    Sm90,
    /// Blackwell (consumer, RTX 50xx): `sm_120`.
    Sm120,
}

impl Arch {
    /// The compiler's name: `"sm_80"`, `"sm_90"` or `"sm_120"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90 => "sm_90",
            Arch::Sm120 => "sm_120",
        }
    }

    /// The most dynamic shared memory one block may opt into on this architecture.
    pub fn max_dynamic_smem_bytes(self) -> u32 {
        match self {
            Arch::Sm80 => 163 * 1024,
            Arch::Sm90 => 227 * 1024,
            Arch::Sm120 => 99 * 1024,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace('_', "").as_str() {
            "sm80" | "80" => Ok(Arch::Sm80),
            "sm90" | "90" => Ok(Arch::Sm90),
            "sm120" | "120" => Ok(Arch::Sm120),
            _ => Err(format!("unknown arch `{s}`: expected `sm_80`, `sm_90` or `sm_120`")),
        }
    }
}

/// What to generate for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CodegenOptions {
    /// How the device holds weights (default bf16).
    pub weight_dtype: WeightDType,
    /// Target architecture (default sm_90).
    pub arch: Arch,
    /// Threads per block: a multiple of 32 in 64..=1024 (default 512).
    pub block_threads: u32,
    /// Stage each worker's next weight tiles in shared memory (cp.async) before it waits for
    /// their inputs (default on). Off, workers only ask L2 to prefetch them.
    pub stage_weights: bool,
    /// Record a timestamp before every instruction into slots after the counters (default
    /// off; the runtime then allocates [`trace_words`] more counter words).
    pub trace: bool,
}

/// u32 words the counters allocation needs for `counters` counters, plus the trace slots of a
/// traced kernel (`instructions + workers` u64 timestamps after the counters, 8-byte aligned).
pub fn trace_words(counters: usize, instructions: usize, workers: usize) -> usize {
    counters.div_ceil(2) * 2 + 2 * (instructions + workers)
}

impl Default for CodegenOptions {
    fn default() -> Self {
        CodegenOptions {
            weight_dtype: WeightDType::BF16,
            arch: Arch::Sm90,
            block_threads: 512,
            stage_weights: true,
            trace: false,
        }
    }
}

impl CodegenOptions {
    /// Checks the options on their own.
    pub fn check(&self) -> Result<(), CodegenError> {
        let t = self.block_threads;
        if t % 32 != 0 || !(64..=1024).contains(&t) {
            return Err(CodegenError::Option {
                field: "block_threads",
                value: t.into(),
                message: "must be a multiple of 32 (whole warps) between 64 and 1024".into(),
            });
        }
        Ok(())
    }
}

/// How the runtime launches the generated kernel (`launch.ron`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// The kernel's entry point, [`KERNEL_NAME`].
    pub kernel: String,
    /// Blocks: one per worker (all co-resident, as the verifier checked).
    pub grid: u32,
    /// Threads per block.
    pub block: u32,
    /// Dynamic shared memory per block, in bytes (above 48 KiB the runtime must opt in with
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`).
    pub dynamic_smem_bytes: u32,
    /// The architecture to compile for (`sm_90`, ...).
    pub arch: String,
    /// How weight buffers are held.
    pub weight_dtype: WeightDType,
    /// sha256 of the verified schedule's canonical `schedule.ron`.
    pub schedule_hash: String,
}

impl LaunchSpec {
    /// Pretty RON text (what `launch.ron` holds), ending in a newline.
    pub fn to_ron(&self) -> String {
        let cfg = ron::ser::PrettyConfig::new().struct_names(true);
        let mut text = ron::ser::to_string_pretty(self, cfg)
            .expect("a LaunchSpec (numbers, plain strings and a unit enum) always serializes");
        text.push('\n');
        text
    }

    /// Reads `launch.ron` text.
    pub fn from_ron(text: &str) -> Result<LaunchSpec, ron::error::SpannedError> {
        ron::de::from_str(text)
    }
}

/// The tables the host uploads, laid out as `kernels/abi.cuh` says.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceTables {
    /// [`abi::INSTR_WORDS`] words per instruction, all workers in order: `op << 28 | id`, then
    /// the wait threshold (relative to the launch), a run's index among its worker's
    /// descriptors, or 0.
    pub program: Vec<u32>,
    /// workers + 1 offsets into `program`, in instructions: worker `w` runs
    /// `worker_start[w]..worker_start[w + 1]`.
    pub worker_start: Vec<u32>,
    /// [`abi::TASK_WORDS`] words per `Run` instruction, in run order: worker `w`'s descriptors
    /// are `run_start[w]..run_start[w + 1]`, in its program's order, so it copies them into
    /// shared memory in one pass when the kernel starts.
    pub tasks: Vec<u32>,
    /// workers + 1 offsets into `tasks`, in descriptors.
    pub run_start: Vec<u32>,
    /// Per counter: signals per launch for epoch-offset counters, 0 for zeroed and
    /// never-reset ones.
    pub per_launch: Vec<u32>,
    /// Bytes of each buffer as the device holds it: weight buffers scaled to the weight dtype
    /// (f32: as declared; bf16: half; int8: see [`Int8Matrix`]), others as declared.
    pub buffer_bytes: Vec<u64>,
    /// Per buffer: how the upload lays out an int8 weight matrix (`None` for every other
    /// buffer).
    #[serde(default)]
    pub int8_matrices: Vec<Option<Int8Matrix>>,
    /// Per buffer: the format the device holds its values in. Weights: the build's dtype, a
    /// matrix's own format from a per-op precision plan, f32 vectors in int8 builds; every
    /// other buffer F32 (as declared).
    #[serde(default)]
    pub formats: Vec<WeightDType>,
    /// Per buffer: a weight matrix the upload transposes (a fused MLP's down projection),
    /// else `None`.
    #[serde(default)]
    pub transposed: Vec<Option<Transposed>>,
}

/// A weight matrix the device holds transposed: the checkpoint's row-major `[rows, cols]`
/// stored as `[cols, rows]`, so a task that reads a block of its columns reads contiguous
/// bytes (a fused MLP's share of the down projection). Int8 values are quantized per
/// checkpoint row first, then transposed; the `rows` scales stay in checkpoint order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transposed {
    /// Rows of the checkpoint matrix (the model's hidden size for a down projection).
    pub rows: u32,
    /// Columns of the checkpoint matrix (the intermediate size).
    pub cols: u32,
}

/// An int8 weight matrix on the device: `rows * cols` int8 values (row-major), zero padding to
/// a 16-byte boundary, then `rows` f32 scales from byte `scales_offset` (see
/// `amk_runtime::quant`). Descriptors that read the matrix carry `scales_offset`; a task's
/// rows `first..first + rows` read only their own scales, inside the buffer because the
/// verified weight region of those rows is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Int8Matrix {
    /// Rows (output channels).
    pub rows: u64,
    /// Columns (the input length).
    pub cols: u32,
    /// Byte offset of the scales: the values' bytes rounded up to 16.
    pub scales_offset: u64,
}

impl Int8Matrix {
    /// Device bytes of the matrix: values, padding and scales.
    pub fn bytes(&self) -> u64 {
        self.scales_offset + 4 * self.rows
    }
}

impl DeviceTables {
    /// Instructions over all workers.
    pub fn instructions(&self) -> usize {
        self.program.len() / abi::INSTR_WORDS
    }
}

/// Everything [`generate`] produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// `megakernel.cu`: the numeric prologue, then the embedded device code.
    pub source: String,
    /// How to launch it (`launch.ron`).
    pub launch: LaunchSpec,
    /// What to upload.
    pub tables: DeviceTables,
}

/// Encodes a verified schedule for the megakernel: see the crate docs for what is checked.
pub fn generate(
    schedule: &VerifiedSchedule,
    options: &CodegenOptions,
) -> Result<Generated, CodegenError> {
    let _span = tracing::info_span!(
        "codegen",
        arch = options.arch.as_str(),
        weights = options.weight_dtype.as_str()
    )
    .entered();
    options.check()?;
    let s = schedule.schedule();
    let encoded = encode::encode(s, options.weight_dtype)?;
    // Counts were checked by the encoder (workers fit u32, tasks and counters fit 28 bits).
    let prologue = source::Prologue {
        weight_bf16: options.weight_dtype == WeightDType::BF16,
        weight_int8: options.weight_dtype == WeightDType::Int8,
        weight_mixed: encoded.mixed,
        formats: encoded.kind_formats,
        block_threads: options.block_threads,
        max_cols: encoded.max_cols.max(1),
        max_head_dim: encoded.max_head_dim.max(1),
        mlp_rows: encoded.max_mlp_rows,
        workers: s.workers.len() as u32,
        tasks: s.tasks.len() as u32,
        counters: s.counters.len() as u32,
        buffers: s.buffers.len() as u32,
        worker_words: encoded.max_worker_words,
        stage_bytes: 0,
        trace: options.trace,
        query_attention: encoded.query_attention,
        tagged: encoded.tagged,
        head_parts: encoded.head_parts,
    };
    let blocks_per_sm = schedule.certificate().facts.blocks_per_sm.max(1);
    let prologue = source::Prologue {
        stage_bytes: if options.stage_weights {
            stage_slot_bytes(&prologue, &encoded.stage_tiles, options.arch, blocks_per_sm)
        } else {
            0
        },
        ..prologue
    };
    let smem = prologue.dynamic_smem_bytes();
    let limit = options.arch.max_dynamic_smem_bytes();
    if smem > u64::from(limit) {
        return Err(CodegenError::Schedule {
            field: "max_cols",
            problem: Problem::Rule(format!(
                "the kernel needs {smem} bytes of shared memory per block (largest input \
                 {} columns, head_dim {}, {} buffer addresses, {} words of the longest \
                 worker's instructions and descriptors), more than {} allows ({limit}); \
                 spread the tasks over more workers or use fewer, larger tasks",
                prologue.max_cols,
                prologue.max_head_dim,
                prologue.buffers,
                prologue.worker_words,
                options.arch
            )),
        });
    }
    let source = source::render(&prologue);
    let launch = LaunchSpec {
        kernel: KERNEL_NAME.to_string(),
        grid: prologue.workers,
        block: options.block_threads,
        dynamic_smem_bytes: smem as u32,
        arch: options.arch.as_str().to_string(),
        weight_dtype: options.weight_dtype,
        schedule_hash: schedule.certificate().schedule_hash.clone(),
    };
    tracing::debug!(
        workers = prologue.workers,
        tasks = prologue.tasks,
        instructions = encoded.tables.instructions(),
        smem,
        "generated megakernel inputs"
    );
    Ok(Generated { source, launch, tables: encoded.tables })
}

/// Bytes of each of the two weight-staging slots: the largest task tile (16-byte multiple, as
/// cp.async copies 16 bytes at a time) such that two slots fit beside the rest of the kernel's
/// shared memory in this architecture's per-block share when `blocks_per_sm` blocks share an
/// SM. Tasks with larger tiles read global memory. 0 when no tile fits.
fn stage_slot_bytes(p: &source::Prologue, tiles: &[u64], arch: Arch, blocks_per_sm: u32) -> u32 {
    // The kernel's static shared memory stays free: the norm weights preloaded at waits (one
    // f32 per input column) and 4 KiB more for the rope tables and their key (288 B as
    // compiled for sm_90 with head_dim 64; the margin covers larger head dims).
    let budget = (u64::from(arch.max_dynamic_smem_bytes()) / u64::from(blocks_per_sm))
        .saturating_sub(4096 + 4 * u64::from(p.max_cols));
    let cap = budget.saturating_sub(p.base_smem_bytes()) / 2 / 16 * 16;
    let best = tiles.iter().copied().filter(|&t| t % 16 == 0 && t <= cap).max().unwrap_or(0);
    best as u32
}

/// Writes [`SOURCE_FILE`] and [`LAUNCH_FILE`] into `dir` (created if missing).
pub fn write_artifacts(generated: &Generated, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(SOURCE_FILE), &generated.source)?;
    std::fs::write(dir.join(LAUNCH_FILE), generated.launch.to_ron())?;
    Ok(())
}
