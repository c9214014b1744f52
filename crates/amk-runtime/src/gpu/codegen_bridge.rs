//! The one place the GPU backend calls `amk-codegen-cuda`: a verified schedule in, a
//! [`CodePlan`] (kernel source, launch shape, device tables) out.
//!
//! Nothing else in the backend names `amk_codegen_cuda`: a change of its API lands here.

use super::GpuError;
use amk_codegen_cuda as cg;
use amk_verify::VerifiedSchedule;

pub(crate) use amk_codegen_cuda::trace_words;
pub use amk_codegen_cuda::{Int8Matrix, Transposed, WeightDType};

/// Everything the backend needs from code generation.
#[derive(Debug, Clone)]
pub(crate) struct CodePlan {
    /// CUDA C++ source of the whole module.
    pub source: String,
    /// The kernel's name in the module.
    pub kernel: String,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub dynamic_smem_bytes: u32,
    pub weight_dtype: WeightDType,
    /// sha256 of the schedule the code was generated for.
    pub schedule_hash: String,
    pub program: Vec<u32>,
    pub worker_start: Vec<u32>,
    pub tasks: Vec<u32>,
    pub run_start: Vec<u32>,
    pub per_launch: Vec<u32>,
    /// Device bytes of each buffer, by BufferId.
    pub buffer_bytes: Vec<u64>,
    /// Int8 weights: the layout of each weight matrix, by BufferId.
    pub int8_matrices: Vec<Option<Int8Matrix>>,
    /// The format the device holds each buffer in, by BufferId (see
    /// `amk_codegen_cuda::DeviceTables::formats`).
    pub formats: Vec<WeightDType>,
    /// The weight matrices the device holds transposed, by BufferId.
    pub transposed: Vec<Option<Transposed>>,
}

/// Generates the kernel for `verified`, to be compiled for `arch` (the device's `sm_XX`), with
/// `block_threads` threads per block and weights stored as `weight_dtype`, staging weight
/// tiles in shared memory when `stage_weights`.
pub(crate) fn generate(
    verified: &VerifiedSchedule,
    weight_dtype: WeightDType,
    block_threads: u32,
    stage_weights: bool,
    trace: bool,
    arch: &str,
) -> Result<CodePlan, GpuError> {
    let arch: cg::Arch = arch.parse().map_err(|e| {
        GpuError::Codegen(format!("this device's architecture is not supported: {e}"))
    })?;
    let options = cg::CodegenOptions { weight_dtype, arch, block_threads, stage_weights, trace };
    let generated =
        cg::generate(verified, &options).map_err(|e| GpuError::Codegen(e.to_string()))?;
    let (launch, tables) = (generated.launch, generated.tables);
    let mut source = generated.source;
    // A profiling aid, documented in kernels/megakernel.cuh and docs/perf.md: skip chosen task
    // bodies to measure what the rest costs. The tokens are then wrong, so say so loudly.
    if let Ok(value) = std::env::var("AMK_ABLATE") {
        match value.trim().parse::<u32>() {
            Ok(mask) => {
                tracing::warn!(mask, "AMK_ABLATE: task bodies are skipped, tokens will be wrong");
                eprintln!(
                    "warning: AMK_ABLATE={mask}: the kernel skips task bodies (for timing only; \
                     its tokens are wrong)"
                );
                source = format!("#define AMK_ABLATE {mask}\n{source}");
            }
            Err(_) => eprintln!(
                "warning: AMK_ABLATE={value:?} is not a number (a bit mask, see \
                 kernels/megakernel.cuh); ignored"
            ),
        }
    }
    Ok(CodePlan {
        source,
        kernel: launch.kernel,
        grid: (launch.grid, 1, 1),
        block: (launch.block, 1, 1),
        dynamic_smem_bytes: launch.dynamic_smem_bytes,
        weight_dtype: launch.weight_dtype,
        schedule_hash: launch.schedule_hash,
        program: tables.program,
        worker_start: tables.worker_start,
        tasks: tables.tasks,
        run_start: tables.run_start,
        per_launch: tables.per_launch,
        buffer_bytes: tables.buffer_bytes,
        int8_matrices: tables.int8_matrices,
        formats: tables.formats,
        transposed: tables.transposed,
    })
}
