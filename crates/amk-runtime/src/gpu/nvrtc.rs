//! NVRTC: CUDA C++ source to a CUBIN for one `sm_XX`, with ptxas' resource report per kernel.

use super::GpuError;
use cudarc::nvrtc::sys;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};

/// How to get NVRTC when it is missing.
pub const NVRTC_INSTALL_HINT: &str = "install it with `python3 -m pip install \
     nvidia-cuda-nvrtc==13.0.88` and put its lib directory (`<site-packages>/nvidia/cu13/lib`, \
     printed by `python3 -c \"import nvidia, os; print(os.path.join(nvidia.__path__[0], 'cu13', \
     'lib'))\"`) on LD_LIBRARY_PATH";

/// What ptxas reports for one kernel (`--ptxas-options=-v`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResourceUsage {
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory per block, in bytes.
    pub shared_bytes: u32,
    /// Stack frame per thread, in bytes.
    pub stack_bytes: u32,
    /// Bytes of register spill stores.
    pub spill_stores: u32,
    /// Bytes of register spill loads.
    pub spill_loads: u32,
}

/// A compiled module: the CUBIN, the NVRTC log and each kernel's resource usage.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The CUBIN image, loadable with `cuModuleLoadData` on a device of `arch`.
    pub cubin: Vec<u8>,
    /// The `sm_XX` it was compiled for.
    pub arch: String,
    /// NVRTC's program log (ptxas' verbose report included).
    pub log: String,
    /// ptxas' report per function name (as the CUBIN names it).
    pub kernels: BTreeMap<String, ResourceUsage>,
    /// sha256 (hex) of NVRTC version, arch, options and source: the cache key.
    pub hash: String,
    /// Whether it came from the kernel cache rather than a fresh compile.
    pub from_cache: bool,
}

impl Compiled {
    /// The resources of kernel `name`, if ptxas reported it.
    pub fn usage(&self, name: &str) -> Option<ResourceUsage> {
        self.kernels.get(name).copied()
    }
}

/// Where compiled kernels are cached: `amk_ir::cache::cache_dir()/kernels`.
pub fn kernel_cache_dir() -> PathBuf {
    amk_ir::cache::cache_dir().join("kernels")
}

/// NVRTC's version, if the library loads; otherwise why not and how to install it.
pub fn nvrtc_available() -> Result<(u32, u32), String> {
    // SAFETY: only tries to dlopen the library names cudarc would use, then closes it.
    let present = std::panic::catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false);
    if !present {
        return Err(format!("libnvrtc.so not found; {NVRTC_INSTALL_HINT}"));
    }
    let version = std::panic::catch_unwind(|| {
        let (mut major, mut minor): (c_int, c_int) = (0, 0);
        // SAFETY: valid out-pointers.
        let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
        (r, major, minor)
    });
    match version {
        Ok((sys::nvrtcResult::NVRTC_SUCCESS, major, minor)) => Ok((major as u32, minor as u32)),
        Ok((r, _, _)) => Err(format!("nvrtcVersion failed: {r:?}; {NVRTC_INSTALL_HINT}")),
        Err(_) => Err(format!("libnvrtc.so could not be loaded; {NVRTC_INSTALL_HINT}")),
    }
}

/// Compiles `source` to a CUBIN for `arch` (`sm_80`, `sm_90`, `sm_120`, ...) with ptxas'
/// verbose report, using the kernel cache in [`kernel_cache_dir`].
pub fn compile(source: &str, arch: &str) -> Result<Compiled, GpuError> {
    compile_cached(source, arch, Some(&kernel_cache_dir()))
}

/// As [`compile`], with the cache in `cache` (`None`: always compile, cache nothing).
pub fn compile_cached(
    source: &str,
    arch: &str,
    cache: Option<&Path>,
) -> Result<Compiled, GpuError> {
    if !valid_arch(arch) {
        return Err(GpuError::Arch(arch.to_owned()));
    }
    let _span = tracing::info_span!("nvrtc", arch).entered();
    let (major, minor) = nvrtc_available().map_err(GpuError::NvrtcUnavailable)?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--ptxas-options=-v".to_owned(),
        "--std=c++17".to_owned(),
    ];
    let hash = cache_key(source, arch, &options, (major, minor));
    if let Some(dir) = cache {
        if let Some(hit) = read_cache(dir, &hash, arch) {
            return Ok(hit);
        }
    }
    let (cubin, log) = super::guarded("running NVRTC", || run_nvrtc(source, arch, &options))?;
    let compiled = Compiled {
        kernels: parse_ptxas_log(&log),
        cubin,
        arch: arch.to_owned(),
        log,
        hash,
        from_cache: false,
    };
    if let Some(dir) = cache {
        if let Err(e) = write_cache(dir, &compiled) {
            tracing::warn!("could not cache the compiled kernel in {}: {e}", dir.display());
        }
    }
    Ok(compiled)
}

/// `sm_` followed by digits and an optional `a`/`f` suffix (`sm_90a`).
fn valid_arch(arch: &str) -> bool {
    let Some(rest) = arch.strip_prefix("sm_") else { return false };
    let digits = rest.trim_end_matches(['a', 'f']);
    digits.len() >= 2
        && digits.len() + 1 >= rest.len()
        && digits.bytes().all(|b| b.is_ascii_digit())
}

fn cache_key(source: &str, arch: &str, options: &[String], version: (u32, u32)) -> String {
    let mut h = Sha256::new();
    h.update(format!("nvrtc {}.{}\0{arch}\0", version.0, version.1));
    for o in options {
        h.update(o.as_bytes());
        h.update([0]);
    }
    h.update(source.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn read_cache(dir: &Path, hash: &str, arch: &str) -> Option<Compiled> {
    let cubin = std::fs::read(dir.join(format!("{hash}.cubin"))).ok()?;
    let log = std::fs::read_to_string(dir.join(format!("{hash}.log"))).ok()?;
    if cubin.is_empty() {
        return None;
    }
    Some(Compiled {
        kernels: parse_ptxas_log(&log),
        cubin,
        arch: arch.to_owned(),
        log,
        hash: hash.to_owned(),
        from_cache: true,
    })
}

/// Writes the log, then the CUBIN (each through a temporary file and a rename, so a reader
/// never sees half a file; the CUBIN's presence marks a complete entry).
fn write_cache(dir: &Path, c: &Compiled) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let put = |name: String, bytes: &[u8]| -> std::io::Result<()> {
        let tmp = dir.join(format!("{name}.tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join(name))
    };
    put(format!("{}.log", c.hash), c.log.as_bytes())?;
    put(format!("{}.cubin", c.hash), &c.cubin)
}

/// Destroys the NVRTC program when dropped.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once.
        unsafe {
            sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

fn nvrtc_check(call: &'static str, r: sys::nvrtcResult) -> Result<(), GpuError> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(GpuError::Nvrtc { call, code: format!("{r:?}") })
    }
}

/// Compiles with NVRTC, returning the CUBIN and the program log.
fn run_nvrtc(source: &str, arch: &str, options: &[String]) -> Result<(Vec<u8>, String), GpuError> {
    let src = CString::new(source)
        .map_err(|_| GpuError::Codegen("the kernel source contains a NUL byte".into()))?;
    let opts: Vec<CString> = options
        .iter()
        .map(|o| CString::new(o.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| GpuError::Arch(arch.to_owned()))?;
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: valid NUL-terminated strings and out-pointer; no headers.
    nvrtc_check("nvrtcCreateProgram", unsafe {
        sys::nvrtcCreateProgram(
            &mut raw,
            src.as_ptr(),
            c"amk_kernel.cu".as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    })?;
    let program = Program(raw);
    // SAFETY: `opt_ptrs` points into `opts`, alive for the call.
    let compiled =
        unsafe { sys::nvrtcCompileProgram(program.0, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
    let log = program_log(&program)?;
    if compiled == sys::nvrtcResult::NVRTC_ERROR_COMPILATION {
        return Err(GpuError::Compile { arch: arch.to_owned(), log });
    }
    nvrtc_check("nvrtcCompileProgram", compiled)?;
    let mut size = 0usize;
    // SAFETY: valid program and out-pointer.
    nvrtc_check("nvrtcGetCUBINSize", unsafe { sys::nvrtcGetCUBINSize(program.0, &mut size) })?;
    if size == 0 {
        return Err(GpuError::Nvrtc {
            call: "nvrtcGetCUBINSize",
            code: format!("no CUBIN produced for {arch} (is it a real `sm_` target?)"),
        });
    }
    let mut cubin = vec![0u8; size];
    // SAFETY: the buffer holds the `size` bytes NVRTC reported.
    nvrtc_check("nvrtcGetCUBIN", unsafe {
        sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr() as *mut c_char)
    })?;
    Ok((cubin, log))
}

fn program_log(program: &Program) -> Result<String, GpuError> {
    let mut size = 0usize;
    // SAFETY: valid program and out-pointer.
    nvrtc_check("nvrtcGetProgramLogSize", unsafe {
        sys::nvrtcGetProgramLogSize(program.0, &mut size)
    })?;
    let mut log = vec![0u8; size.max(1)];
    // SAFETY: the buffer holds the `size` bytes NVRTC reported (at least one).
    nvrtc_check("nvrtcGetProgramLog", unsafe {
        sys::nvrtcGetProgramLog(program.0, log.as_mut_ptr() as *mut c_char)
    })?;
    let text = CStr::from_bytes_until_nul(&log)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(&log).into_owned());
    Ok(text)
}

/// Parses ptxas' verbose report (`--ptxas-options=-v`) into the resources of each function.
///
/// It reads the `Compiling entry function 'k'` / `Function properties for k` headers, then the
/// `N bytes stack frame, N bytes spill stores, N bytes spill loads` and
/// `Used N registers, ..., N bytes smem, ...` lines that follow.
pub fn parse_ptxas_log(log: &str) -> BTreeMap<String, ResourceUsage> {
    let mut out: BTreeMap<String, ResourceUsage> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        let mut body = line.trim();
        if let Some(rest) = body.strip_prefix("ptxas info") {
            body = rest.trim_start().trim_start_matches(':').trim();
        }
        if let Some(rest) = body.strip_prefix("Compiling entry function") {
            current = rest.split('\'').nth(1).map(str::to_owned);
            if let Some(name) = &current {
                out.entry(name.clone()).or_default();
            }
            continue;
        }
        if let Some(rest) = body.strip_prefix("Function properties for") {
            current = Some(rest.trim().trim_matches('\'').to_owned());
            continue;
        }
        let Some(name) = &current else { continue };
        for part in body.split(',') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let num = |s: &str| s.parse::<u32>().ok();
            let slot = match words.as_slice() {
                ["Used", n, "registers"] => num(n).map(|v| (0, v)),
                [n, "bytes", "smem"] => num(n).map(|v| (1, v)),
                [n, "bytes", "stack", "frame"] => num(n).map(|v| (2, v)),
                [n, "bytes", "spill", "stores"] => num(n).map(|v| (3, v)),
                [n, "bytes", "spill", "loads"] => num(n).map(|v| (4, v)),
                _ => None,
            };
            if let Some((field, value)) = slot {
                let u = out.entry(name.clone()).or_default();
                match field {
                    0 => u.registers = value,
                    1 => u.shared_bytes = value,
                    2 => u.stack_bytes = value,
                    3 => u.spill_stores = value,
                    _ => u.spill_loads = value,
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_ptxas_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'amk_megakernel' for 'sm_90'\n\
            ptxas info    : Function properties for amk_megakernel\n\
            \x20   16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
            ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem, 400 bytes cmem[0]\n";
        let k = parse_ptxas_log(log);
        assert_eq!(
            k.get("amk_megakernel"),
            Some(&ResourceUsage {
                registers: 40,
                shared_bytes: 2048,
                stack_bytes: 16,
                spill_stores: 8,
                spill_loads: 4
            })
        );
    }

    #[test]
    fn arch_names() {
        for ok in ["sm_80", "sm_90", "sm_90a", "sm_120", "sm_100f"] {
            assert!(valid_arch(ok), "{ok}");
        }
        for bad in ["compute_90", "sm_", "sm_9", "sm_90x", "90", "sm_9a0"] {
            assert!(!valid_arch(bad), "{bad}");
        }
    }
}
