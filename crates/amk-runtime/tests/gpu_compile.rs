//! GPU backend pieces that run without a GPU: the CUDA probe must fail cleanly, and NVRTC must
//! compile a kernel for each target we ship and report its resources.
//!
//! NVRTC is required: install it with `python3 -m pip install nvidia-cuda-nvrtc==13.0.88` and
//! put its `nvidia/cu13/lib` directory on LD_LIBRARY_PATH.

use amk_runtime::gpu::{self, GpuError};

const KERNEL: &str = r#"
extern "C" __global__ void amk_test_axpy(float a, const float* x, float* y, unsigned n) {
    __shared__ float tile[128];
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x % 128] = i < n ? x[i] : 0.0f;
    __syncthreads();
    if (i < n) y[i] = a * tile[(threadIdx.x + 1) % 128] + y[i];
}
"#;

/// NVRTC's version, or a failure that says how to install it.
fn require_nvrtc() -> (u32, u32) {
    match gpu::nvrtc_available() {
        Ok(v) => v,
        Err(why) => panic!(
            "NVRTC is required for this test: {why}\n(e.g. python3 -m pip install \
             nvidia-cuda-nvrtc==13.0.88, then export LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib)"
        ),
    }
}

#[test]
fn cuda_probe_never_panics() {
    // On a machine without a driver or device this must be an Err with a reason, not a panic.
    match gpu::cuda_available() {
        Ok(()) => eprintln!("CUDA is available here"),
        Err(reason) => {
            assert!(!reason.is_empty());
            eprintln!("CUDA not available (expected without a GPU): {reason}");
        }
    }
}

#[test]
fn nvrtc_compiles_for_every_target() {
    let (major, minor) = require_nvrtc();
    eprintln!("NVRTC {major}.{minor}");
    let cache = tempfile::tempdir().expect("temporary directory");
    for arch in ["sm_80", "sm_90", "sm_120"] {
        let c = gpu::compile_cached(KERNEL, arch, Some(cache.path()))
            .unwrap_or_else(|e| panic!("compiling for {arch}: {e}"));
        assert!(!c.from_cache);
        assert_eq!(&c.cubin[..4], b"\x7fELF", "{arch}: a CUBIN is an ELF image");
        let usage = c.usage("amk_test_axpy").unwrap_or_else(|| {
            panic!("{arch}: ptxas reported no usage for the kernel; log:\n{}", c.log)
        });
        eprintln!("{arch}: {usage:?}");
        assert!(usage.registers > 0, "{arch}: {usage:?}\n{}", c.log);
        assert_eq!(usage.shared_bytes, 512, "{arch}: 128 floats of static smem\n{}", c.log);

        let again = gpu::compile_cached(KERNEL, arch, Some(cache.path())).expect("cached");
        assert!(again.from_cache, "{arch}: second compile should hit the cache");
        assert_eq!(again.cubin, c.cubin);
        assert_eq!(again.usage("amk_test_axpy"), Some(usage));
    }
}

#[test]
fn nvrtc_reports_compile_errors_with_the_log() {
    require_nvrtc();
    let err = gpu::compile_cached("extern \"C\" __global__ void k( { }", "sm_90", None)
        .expect_err("broken source must not compile");
    match err {
        GpuError::Compile { arch, log } => {
            assert_eq!(arch, "sm_90");
            assert!(log.contains("error"), "{log}");
        }
        other => panic!("expected a compile error, got {other}"),
    }
}

#[test]
fn bad_targets_are_refused() {
    for arch in ["compute_90", "sm_9", "90", "sm_90x"] {
        assert!(
            matches!(gpu::compile_cached(KERNEL, arch, None), Err(GpuError::Arch(_))),
            "{arch}"
        );
    }
}
