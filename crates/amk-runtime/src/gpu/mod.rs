//! The GPU backend: one launch of the persistent megakernel per generated token.
//!
//! # Contract
//!
//! - [`cuda_available`] says whether a CUDA driver and at least one device are usable, and why
//!   not otherwise. Nothing in this module panics on a machine without CUDA: the driver library
//!   (`libcuda.so`) and NVRTC (`libnvrtc.so*`) are loaded at run time by cudarc, and every
//!   entry point checks that the library is present before its first call (a panic from
//!   cudarc's loader is also caught as a last guard).
//! - [`compile`] turns CUDA C++ source into a CUBIN for one `sm_XX` with NVRTC (no GPU needed)
//!   and reports ptxas' [`ResourceUsage`] per kernel; results are cached by the sha256 of
//!   source, arch, options and NVRTC version under `amk_ir::cache::cache_dir()/kernels`.
//! - [`GpuBackend`] launches a [`VerifiedSchedule`](amk_verify::VerifiedSchedule) only if its
//!   certificate matches it, and only after re-verifying it with the co-residency the COMPILED
//!   kernel really gets on this device (registers and shared memory, through the occupancy
//!   API). Each [`Backend::step`](crate::Backend::step) is exactly one kernel launch, waited on
//!   with a watchdog: a launch that does not finish in time is reported as [`GpuError::Hang`]
//!   with every counter's value, and the backend refuses further work.
//! - Every CUDA call is checked; errors name the call and the CUDA error code.

mod backend;
mod codegen_bridge;
mod driver;
mod nvrtc;

pub use backend::{CounterMemory, CounterState, GpuBackend, GpuOptions, KernelFit, TIMING_BATCH};
pub use codegen_bridge::WeightDType;
pub use driver::{cuda_available, device_arch};
pub use nvrtc::{
    compile, compile_cached, kernel_cache_dir, nvrtc_available, parse_ptxas_log, Compiled,
    ResourceUsage, NVRTC_INSTALL_HINT,
};

use crate::RuntimeError;
use std::time::Duration;

/// What can go wrong in the GPU backend.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    #[error("NVRTC is not available: {0}")]
    NvrtcUnavailable(String),
    #[error("{call} failed: {code}")]
    Driver { call: &'static str, code: String },
    #[error("{call} failed: {code}")]
    Nvrtc { call: &'static str, code: String },
    #[error("NVRTC could not compile the kernel source for {arch}:\n{log}")]
    Compile { arch: String, log: String },
    #[error("invalid compile target `{0}`: expected `sm_XX` (e.g. sm_80, sm_90, sm_120)")]
    Arch(String),
    #[error(
        "the certificate does not match the schedule: it was issued for sha256 {certificate}, \
         the schedule's is {schedule}"
    )]
    CertificateMismatch { certificate: String, schedule: String },
    #[error("code generation failed: {0}")]
    Codegen(String),
    #[error("the generated launch does not fit the schedule: {0}")]
    Layout(String),
    #[error("the kernel cannot be made co-resident on this device: {reason} ({fit})")]
    NotCoResident { reason: String, fit: KernelFit },
    #[error("the schedule does not verify with this device's launch facts ({fit}): {rejection}")]
    Rejected { fit: KernelFit, rejection: String },
    #[error("loading weight `{name}`: {message}")]
    Weight { name: String, message: String },
    #[error(
        "launch {launch} (epoch {epoch}) did not finish within {watchdog:?}: {}",
        backend::describe_counters(counters.as_deref())
    )]
    Hang { launch: u64, epoch: u32, watchdog: Duration, counters: Option<Vec<CounterState>> },
    #[error(
        "launch {launch} (epoch {epoch}) failed on the device ({call}: {code}); {}",
        backend::describe_counters(counters.as_deref())
    )]
    Fault {
        launch: u64,
        epoch: u32,
        call: &'static str,
        code: String,
        counters: Option<Vec<CounterState>>,
    },
    #[error("the kernel returned token {token}, outside the vocabulary (vocab_size {vocab_size})")]
    BadToken { token: u32, vocab_size: usize },
    #[error("the GPU backend is unusable after an earlier failure: {0}")]
    Wedged(String),
}

impl From<GpuError> for RuntimeError {
    fn from(e: GpuError) -> Self {
        RuntimeError::Gpu(Box::new(e))
    }
}

/// Runs `f`, turning a panic (cudarc panics when a library or symbol it needs is missing) into
/// an error.
pub(crate) fn guarded<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, GpuError>,
) -> Result<T, GpuError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(GpuError::Unavailable(format!("{what}: the CUDA library loader panicked: {message}")))
    })
}
