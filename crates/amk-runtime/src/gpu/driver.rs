//! Checked access to the CUDA driver API (through cudarc's run-time loaded `sys` bindings).

use super::{guarded, GpuError};
use cudarc::driver::sys;
use std::ffi::{c_int, CStr};

/// Turns a driver result into an error naming the call and the CUDA error code.
pub(crate) fn check(call: &'static str, result: sys::CUresult) -> Result<(), GpuError> {
    if result == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(GpuError::Driver { call, code: code_name(result) })
    }
}

/// The CUDA error code's name (`CUDA_ERROR_INVALID_IMAGE`), without calling the driver.
pub(crate) fn code_name(result: sys::CUresult) -> String {
    format!("{result:?}")
}

/// Whether the CUDA driver library can be loaded (checked without any driver call, which would
/// panic when the library is absent).
fn driver_library_present() -> bool {
    // SAFETY: only tries to dlopen the library names cudarc would use, then closes it.
    std::panic::catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false)
}

/// Loads and initialises the driver, returning the number of devices.
pub(crate) fn init() -> Result<usize, GpuError> {
    if !driver_library_present() {
        return Err(GpuError::Unavailable(
            "libcuda.so not found: no NVIDIA driver on this machine (the CUDA driver library \
             is loaded at run time; install the NVIDIA driver or put libcuda.so on \
             LD_LIBRARY_PATH)"
                .into(),
        ));
    }
    guarded("initialising the CUDA driver", || {
        // SAFETY: plain driver calls with valid out-pointers.
        unsafe {
            check("cuInit", sys::cuInit(0))?;
            let mut count: c_int = 0;
            check("cuDeviceGetCount", sys::cuDeviceGetCount(&mut count))?;
            if count <= 0 {
                return Err(GpuError::Unavailable(
                    "the CUDA driver is installed but reports no CUDA device".into(),
                ));
            }
            Ok(count as usize)
        }
    })
    .map_err(|e| match e {
        GpuError::Driver { call, code } => {
            GpuError::Unavailable(format!("{call} failed: {code} (no usable CUDA device)"))
        }
        other => other,
    })
}

/// Checks that the CUDA driver library loads, initialises, and finds at least one device;
/// otherwise says why not. Never panics.
pub fn cuda_available() -> Result<(), String> {
    init().map(|_| ()).map_err(|e| match e {
        GpuError::Unavailable(reason) => reason,
        other => other.to_string(),
    })
}

/// The `sm_XX` target of device `ordinal` (from its compute capability).
pub fn device_arch(ordinal: usize) -> Result<String, GpuError> {
    let count = init()?;
    if ordinal >= count {
        return Err(GpuError::Unavailable(format!(
            "device {ordinal} requested, the driver reports {count} device(s)"
        )));
    }
    guarded("querying the device", || {
        let device = get_device(ordinal)?;
        let info = DeviceInfo::query(device)?;
        Ok(info.arch())
    })
}

/// `cuDeviceGet` for `ordinal`.
pub(crate) fn get_device(ordinal: usize) -> Result<sys::CUdevice, GpuError> {
    let mut device: sys::CUdevice = 0;
    // SAFETY: valid out-pointer; the driver is initialised by `init`.
    check("cuDeviceGet", unsafe { sys::cuDeviceGet(&mut device, ordinal as c_int) })?;
    Ok(device)
}

/// What the backend needs to know about a device.
#[derive(Debug, Clone)]
pub(crate) struct DeviceInfo {
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub sm_count: u32,
    pub max_smem_optin: u32,
    pub can_map_host_memory: bool,
}

impl DeviceInfo {
    /// Reads the device's name and attributes.
    pub fn query(device: sys::CUdevice) -> Result<DeviceInfo, GpuError> {
        use sys::CUdevice_attribute as A;
        let attr = |a: A| -> Result<u32, GpuError> {
            let mut v: c_int = 0;
            // SAFETY: valid out-pointer and device handle.
            check("cuDeviceGetAttribute", unsafe { sys::cuDeviceGetAttribute(&mut v, a, device) })?;
            Ok(v.max(0) as u32)
        };
        let mut name = [0 as std::ffi::c_char; 256];
        // SAFETY: the buffer holds `len` bytes; the driver NUL-terminates it.
        check("cuDeviceGetName", unsafe {
            sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as c_int - 1, device)
        })?;
        // SAFETY: the last byte is never written, so the array is NUL-terminated.
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
        Ok(DeviceInfo {
            name,
            major: attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            minor: attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            sm_count: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            max_smem_optin: attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
            can_map_host_memory: attr(A::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY)? != 0,
        })
    }

    /// The device's own compile target, `sm_{major}{minor}`.
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.major, self.minor)
    }
}
