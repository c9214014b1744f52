//! [`GpuBackend`]: device memory, the co-residency check, and one watched launch per token.

use super::codegen_bridge::{self, CodePlan, Int8Matrix, Transposed, WeightDType};
use super::driver::{self, check, code_name, DeviceInfo};
use super::{guarded, nvrtc, GpuError};
use crate::{Backend, RuntimeError};
use amk_schedule::ops::{io, TaskOp, ELEM, IO_BYTES};
use amk_schedule::schedule::{BufferKind, CounterReset, Schedule};
use amk_verify::{LaunchFacts, VerifiedSchedule};
use cudarc::driver::sys;
use rayon::prelude::*;
use std::ffi::{c_int, c_uint, c_void, CString};
use std::fmt;
use std::time::{Duration, Instant};

/// Where the kernel's counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CounterMemory {
    /// Pinned host memory mapped into the device: the host reads the counters while the kernel
    /// spins (and after a device fault), at the price of every counter access crossing the bus.
    HostMapped,
    /// Device memory (fast atomics); the watchdog reads them with a copy on a second stream.
    #[default]
    Device,
}

/// How to run the megakernel.
#[derive(Debug, Clone)]
pub struct GpuOptions {
    /// How weights are stored on the device.
    pub weight_dtype: WeightDType,
    /// A launch not finished after this long is reported as a hang.
    pub watchdog: Duration,
    /// Threads per block asked of code generation.
    pub block_threads: u32,
    /// Stage weight tiles in shared memory before waiting (code generation's default: on).
    pub stage_weights: bool,
    /// Compile the kernel with in-kernel timestamps ([`GpuBackend::read_trace`]).
    pub trace: bool,
    /// Copy the logits back after every step (for [`Backend::logits`]).
    pub read_logits: bool,
    /// Where the counters live.
    pub counters: CounterMemory,
    /// CUDA device ordinal.
    pub device: usize,
    /// Overlap each launch's start with the end of the one before it (programmatic dependent
    /// launch, sm_90 and later; ignored on older GPUs): the next launch's blocks copy their
    /// control data and fill their rope table as the previous launch's blocks exit, and wait
    /// for that launch's grid (`griddepcontrol.wait`) before reading anything it
    /// wrote.
    pub overlap_launches: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            weight_dtype: WeightDType::F32,
            watchdog: Duration::from_secs(10),
            block_threads: 512,
            stage_weights: true,
            trace: false,
            read_logits: true,
            counters: CounterMemory::Device,
            device: 0,
            overlap_launches: true,
        }
    }
}

/// Launches timed together between two CUDA events by [`GpuBackend::time_decode`]. An event
/// recorded between two launches makes the second wait until the first has finished, which
/// would undo [`GpuOptions::overlap_launches`]; so events go between batches only, and each
/// batch's time is divided by its launches.
pub const TIMING_BATCH: usize = 20;

/// How the compiled kernel fits the device: what the occupancy API was asked and answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KernelFit {
    pub device: String,
    pub arch: String,
    pub registers: u32,
    pub static_smem_bytes: u32,
    pub dynamic_smem_bytes: u32,
    pub local_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub block_threads: u32,
    pub blocks_per_sm: u32,
    pub sm_count: u32,
    pub workers: usize,
}

impl fmt::Display for KernelFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {} registers/thread, {} B static + {} B dynamic smem/block, {} B local, \
             spills {} B stores / {} B loads, {} threads/block -> {} blocks/SM x {} SMs = {} \
             co-resident blocks for {} workers",
            self.device,
            self.arch,
            self.registers,
            self.static_smem_bytes,
            self.dynamic_smem_bytes,
            self.local_bytes,
            self.spill_stores,
            self.spill_loads,
            self.block_threads,
            self.blocks_per_sm,
            self.sm_count,
            u64::from(self.blocks_per_sm) * u64::from(self.sm_count),
            self.workers
        )
    }
}

/// One counter as a failed launch left it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CounterState {
    pub name: String,
    /// The raw device value.
    pub value: u32,
    /// `value` minus this launch's epoch offset: the signals this launch delivered.
    pub relative: i64,
    /// Signals the counter receives in one whole launch.
    pub per_launch: u32,
}

/// A one-line summary of counters: those short of their per-launch total first, then all.
pub(crate) fn describe_counters(counters: Option<&[CounterState]>) -> String {
    let Some(counters) = counters else {
        return "the counters could not be read".into();
    };
    let short: Vec<&CounterState> =
        counters.iter().filter(|c| c.relative < i64::from(c.per_launch)).collect();
    let list = |cs: &mut dyn Iterator<Item = &CounterState>| {
        cs.map(|c| format!("{} = {}/{} (raw {})", c.name, c.relative, c.per_launch, c.value))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{} of {} counters short of their per-launch signals [{}]; all counters (this launch / \
         per launch): [{}]",
        short.len(),
        counters.len(),
        list(&mut short.iter().copied()),
        list(&mut counters.iter())
    )
}

/// Every driver resource of one backend, released in order on drop (or leaked, when a launch
/// may still be running: freeing would block on it).
struct Gpu {
    device: sys::CUdevice,
    ctx: sys::CUcontext,
    streams: Vec<sys::CUstream>,
    events: Vec<sys::CUevent>,
    modules: Vec<sys::CUmodule>,
    device_allocs: Vec<sys::CUdeviceptr>,
    host_allocs: Vec<*mut c_void>,
    /// Set when a launch hung or faulted: nothing is freed then.
    leak: bool,
}

impl Gpu {
    /// Retains device `ordinal`'s primary context and makes it current.
    fn open(ordinal: usize) -> Result<Gpu, GpuError> {
        let device = driver::get_device(ordinal)?;
        let mut ctx: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: valid out-pointer and device.
        check("cuDevicePrimaryCtxRetain", unsafe {
            sys::cuDevicePrimaryCtxRetain(&mut ctx, device)
        })?;
        let gpu = Gpu {
            device,
            ctx,
            streams: Vec::new(),
            events: Vec::new(),
            modules: Vec::new(),
            device_allocs: Vec::new(),
            host_allocs: Vec::new(),
            leak: false,
        };
        gpu.bind()?;
        Ok(gpu)
    }

    /// Makes the context current on the calling thread.
    fn bind(&self) -> Result<(), GpuError> {
        // SAFETY: the context is retained for as long as `self` lives.
        check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(self.ctx) })
    }

    fn stream(&mut self) -> Result<sys::CUstream, GpuError> {
        let mut s: sys::CUstream = std::ptr::null_mut();
        let flags = sys::CUstream_flags::CU_STREAM_NON_BLOCKING as c_uint;
        // SAFETY: valid out-pointer, current context.
        check("cuStreamCreate", unsafe { sys::cuStreamCreate(&mut s, flags) })?;
        self.streams.push(s);
        Ok(s)
    }

    /// An event that records time (for [`GpuBackend::time_decode`]); destroy it after use.
    fn timing_event(&mut self) -> Result<sys::CUevent, GpuError> {
        let mut e: sys::CUevent = std::ptr::null_mut();
        // SAFETY: valid out-pointer, current context.
        check("cuEventCreate", unsafe { sys::cuEventCreate(&mut e, 0) })?;
        Ok(e)
    }

    fn destroy_event(&mut self, e: sys::CUevent) {
        // SAFETY: an event created by `timing_event` and no longer recorded.
        unsafe { sys::cuEventDestroy_v2(e) };
    }

    fn event(&mut self) -> Result<sys::CUevent, GpuError> {
        let mut e: sys::CUevent = std::ptr::null_mut();
        let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as c_uint;
        // SAFETY: valid out-pointer, current context.
        check("cuEventCreate", unsafe { sys::cuEventCreate(&mut e, flags) })?;
        self.events.push(e);
        Ok(e)
    }

    /// `bytes` of zeroed device memory (at least 4, so empty tables still get an address).
    fn alloc_zeroed(&mut self, bytes: u64) -> Result<sys::CUdeviceptr, GpuError> {
        let bytes = usize::try_from(bytes.max(4))
            .map_err(|_| GpuError::Layout(format!("a buffer of {bytes} bytes")))?;
        let mut p: sys::CUdeviceptr = 0;
        // SAFETY: valid out-pointer, current context.
        check("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut p, bytes) })?;
        self.device_allocs.push(p);
        // SAFETY: `p` holds `bytes` bytes.
        check("cuMemsetD8", unsafe { sys::cuMemsetD8_v2(p, 0, bytes) })?;
        Ok(p)
    }

    /// Device memory holding a copy of `data`.
    fn upload<T: Copy>(&mut self, data: &[T]) -> Result<sys::CUdeviceptr, GpuError> {
        let bytes = std::mem::size_of_val(data);
        let p = self.alloc_zeroed(bytes as u64)?;
        self.copy_to(p, data)?;
        Ok(p)
    }

    /// Synchronous host-to-device copy of `data` to `dst`.
    fn copy_to<T: Copy>(&self, dst: sys::CUdeviceptr, data: &[T]) -> Result<(), GpuError> {
        let bytes = std::mem::size_of_val(data);
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: `data` holds `bytes` bytes; `dst` was allocated with at least as many.
        check("cuMemcpyHtoD", unsafe {
            sys::cuMemcpyHtoD_v2(dst, data.as_ptr() as *const c_void, bytes)
        })
    }

    /// `bytes` of zeroed pinned host memory; with `mapped`, also its device address.
    fn host_alloc(
        &mut self,
        bytes: usize,
        mapped: bool,
    ) -> Result<(*mut c_void, sys::CUdeviceptr), GpuError> {
        let bytes = bytes.max(4);
        let flags = if mapped { sys::CU_MEMHOSTALLOC_DEVICEMAP } else { 0 };
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid out-pointer, current context.
        check("cuMemHostAlloc", unsafe { sys::cuMemHostAlloc(&mut p, bytes, flags) })?;
        self.host_allocs.push(p);
        // SAFETY: `p` points to `bytes` writable bytes.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0, bytes) };
        let mut d: sys::CUdeviceptr = 0;
        if mapped {
            // SAFETY: `p` was allocated with DEVICEMAP.
            check("cuMemHostGetDevicePointer", unsafe {
                sys::cuMemHostGetDevicePointer_v2(&mut d, p, 0)
            })?;
        }
        Ok((p, d))
    }

    fn load_module(&mut self, cubin: &[u8], kernel: &str) -> Result<sys::CUfunction, GpuError> {
        let mut module: sys::CUmodule = std::ptr::null_mut();
        // SAFETY: `cubin` is a complete CUBIN image, alive for the call.
        check("cuModuleLoadData", unsafe {
            sys::cuModuleLoadData(&mut module, cubin.as_ptr() as *const c_void)
        })?;
        self.modules.push(module);
        let name = CString::new(kernel)
            .map_err(|_| GpuError::Codegen(format!("kernel name `{kernel}` contains a NUL")))?;
        let mut f: sys::CUfunction = std::ptr::null_mut();
        // SAFETY: valid module, NUL-terminated name, out-pointer.
        check("cuModuleGetFunction", unsafe {
            sys::cuModuleGetFunction(&mut f, module, name.as_ptr())
        })?;
        Ok(f)
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: every handle was created by this struct in this context and is released once;
        // no work is in flight (each step waits for its launch).
        unsafe {
            sys::cuCtxSetCurrent(self.ctx);
            for &p in &self.device_allocs {
                sys::cuMemFree_v2(p);
            }
            for &p in &self.host_allocs {
                sys::cuMemFreeHost(p);
            }
            for &e in &self.events {
                sys::cuEventDestroy_v2(e);
            }
            for &s in &self.streams {
                sys::cuStreamDestroy_v2(s);
            }
            for &m in &self.modules {
                sys::cuModuleUnload(m);
            }
            sys::cuDevicePrimaryCtxRelease_v2(self.device);
        }
    }
}

/// Polls `event` until it completes (`Ok(true)`), `timeout` passes (`Ok(false)`) or the device
/// reports an error: spinning first, then yielding, then sleeping, so a fast launch is seen
/// at once and a slow one does not burn a core.
fn wait_event(event: sys::CUevent, timeout: Duration) -> Result<bool, sys::CUresult> {
    let start = Instant::now();
    loop {
        // SAFETY: a live event.
        match unsafe { sys::cuEventQuery(event) } {
            sys::CUresult::CUDA_SUCCESS => return Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => {}
            e => return Err(e),
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Ok(false);
        }
        if waited < Duration::from_millis(2) {
            std::hint::spin_loop();
        } else if waited < Duration::from_millis(50) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

/// The counters and how to read them.
struct Counters {
    dev: sys::CUdeviceptr,
    /// Pinned host memory: the counters themselves (host-mapped) or the watchdog's snapshot.
    host: *mut u32,
    memory: CounterMemory,
    /// The second stream and event the watchdog copies device counters with.
    diag: Option<(sys::CUstream, sys::CUevent)>,
    names: Vec<String>,
    resets: Vec<CounterReset>,
    /// Signal instructions per counter in one launch (the schedule's, for every reset kind).
    signals: Vec<u32>,
}

/// Runs a verified schedule's megakernel, one launch per token.
pub struct GpuBackend {
    gpu: Gpu,
    function: sys::CUfunction,
    stream: sys::CUstream,
    done: sys::CUevent,
    plan: CodePlan,
    verified: VerifiedSchedule,
    fit: KernelFit,
    options: GpuOptions,
    /// Device addresses of the first six kernel parameters: the buffer address table,
    /// program, worker_start, tasks, run_start, per_launch (counters and epoch follow).
    tables: [sys::CUdeviceptr; 6],
    counters: Counters,
    io_dev: sys::CUdeviceptr,
    /// Pinned io words ({token, position, packed next token}, `amk_schedule::ops::io`):
    /// written before a launch, read back after it.
    io_host: *mut u32,
    logits_dev: Option<(sys::CUdeviceptr, usize)>,
    logits_host: *mut f32,
    logits: Vec<f32>,
    has_logits: bool,
    launches: u64,
    /// Launches are programmatic dependent launches ([`GpuOptions::overlap_launches`] on a
    /// GPU that has them).
    overlap: bool,
    /// Added to every launch's position hint ([`GpuBackend::skew_position_hints`]).
    hint_skew: u32,
    max_positions: usize,
    vocab_size: usize,
    /// Why the backend refuses work, after a hang or fault.
    wedged: Option<String>,
    /// Device address and length (u64 slots) of the timestamps of a traced kernel.
    trace: Option<(sys::CUdeviceptr, usize)>,
}

// SAFETY: the raw handles belong to this backend alone; the driver API is thread-safe and every
// entry point makes the context current on the calling thread first.
unsafe impl Send for GpuBackend {}

impl GpuBackend {
    /// Generates, compiles and loads the megakernel for `verified` on this machine's GPU,
    /// checks it is co-resident (re-verifying with the real occupancy), and uploads weights.
    pub fn new(
        model: &amk_ir::Model,
        verified: &VerifiedSchedule,
        options: GpuOptions,
    ) -> Result<GpuBackend, GpuError> {
        let schedule = verified.schedule();
        let certificate = verified.certificate();
        if !certificate.matches(schedule) {
            return Err(GpuError::CertificateMismatch {
                certificate: certificate.schedule_hash.clone(),
                schedule: amk_verify::schedule_hash(schedule),
            });
        }
        let count = driver::init()?;
        if options.device >= count {
            return Err(GpuError::Unavailable(format!(
                "device {} requested, the driver reports {count} device(s)",
                options.device
            )));
        }
        guarded("setting up the GPU backend", || Self::build(model, verified, options))
    }

    fn build(
        model: &amk_ir::Model,
        verified: &VerifiedSchedule,
        options: GpuOptions,
    ) -> Result<GpuBackend, GpuError> {
        let schedule = verified.schedule();
        let mut gpu = Gpu::open(options.device)?;
        let info = DeviceInfo::query(gpu.device)?;
        let arch = info.arch();

        let plan = codegen_bridge::generate(
            verified,
            options.weight_dtype,
            options.block_threads,
            options.stage_weights,
            options.trace,
            &arch,
        )?;
        check_plan(&plan, schedule, options.weight_dtype)?;
        let compiled = nvrtc::compile(&plan.source, &arch)?;
        let function = gpu.load_module(&compiled.cubin, &plan.kernel)?;
        let fit = fit_kernel(function, &info, &plan, &compiled, schedule.workers.len())?;
        let verified = amk_verify::verify(
            schedule,
            &LaunchFacts { sm_count: fit.sm_count, blocks_per_sm: fit.blocks_per_sm },
        )
        .map_err(|r| GpuError::Rejected { fit: fit.clone(), rejection: r.to_string() })?;
        tracing::info!("gpu: {fit}");

        let stream = gpu.stream()?;
        let done = gpu.event()?;

        // Buffers: weights uploaded once, everything else zeroed.
        let upload = tracing::info_span!("upload", precision = ?plan.weight_dtype).entered();
        let mut addresses = Vec::with_capacity(schedule.buffers.len());
        for (i, b) in schedule.buffers.iter().enumerate() {
            let p = gpu.alloc_zeroed(plan.buffer_bytes[i])?;
            if b.kind == BufferKind::Weight {
                // check_plan checked there is a format per buffer and a layout per int8 one.
                let int8 = plan.int8_matrices.get(i).copied().flatten();
                let layout = match (plan.formats[i], int8) {
                    (WeightDType::BF16, _) => WeightLayout::Bf16,
                    (WeightDType::Int8, Some(m)) => WeightLayout::Int8(m),
                    _ => WeightLayout::F32,
                };
                let transposed = plan.transposed.get(i).copied().flatten();
                upload_weight(&gpu, p, model, &b.name, b.bytes / ELEM, layout, transposed)?;
            }
            addresses.push(p);
        }
        drop(upload);
        let find = |kind: BufferKind, name: &str| {
            schedule.buffers.iter().position(|b| b.kind == kind && b.name == name)
        };
        let io = find(BufferKind::Io, "io")
            .ok_or_else(|| GpuError::Layout("the schedule has no Io buffer named `io`".into()))?;
        if plan.buffer_bytes[io] < IO_BYTES {
            return Err(GpuError::Layout(format!(
                "the `io` buffer is smaller than {{token, position, next token}} ({IO_BYTES} bytes)"
            )));
        }
        let (io_host, _) = gpu.host_alloc(IO_BYTES as usize, false)?;
        let logits_dev = match find(BufferKind::Logits, "logits") {
            Some(i) if options.read_logits => {
                Some((addresses[i], (plan.buffer_bytes[i] / 4) as usize))
            }
            _ => None,
        };
        let (logits_host, _) = gpu.host_alloc(logits_dev.map_or(0, |(_, n)| n * 4), false)?;

        let tables = [
            gpu.upload(&addresses)?,
            gpu.upload(&plan.program)?,
            gpu.upload(&plan.worker_start)?,
            gpu.upload(&plan.tasks)?,
            gpu.upload(&plan.run_start)?,
            gpu.upload(&plan.per_launch)?,
        ];

        // Counters, zeroed once: epoch offsets keep launches apart. A traced kernel writes its
        // timestamps after them.
        let n = schedule.counters.len();
        let instructions = plan.program.len() / 2;
        let words = if options.trace {
            codegen_bridge::trace_words(n, instructions, schedule.workers.len())
        } else {
            n
        };
        let (dev, host, diag) = match options.counters {
            CounterMemory::HostMapped => {
                if !info.can_map_host_memory {
                    return Err(GpuError::Unavailable(format!(
                        "{} cannot map host memory; use CounterMemory::Device",
                        info.name
                    )));
                }
                let (host, dev) = gpu.host_alloc(words * 4, true)?;
                (dev, host, None)
            }
            CounterMemory::Device => {
                let dev = gpu.alloc_zeroed(words as u64 * 4)?;
                let (host, _) = gpu.host_alloc(n * 4, false)?;
                (dev, host, Some((gpu.stream()?, gpu.event()?)))
            }
        };
        let counters = Counters {
            dev,
            host: host as *mut u32,
            memory: options.counters,
            diag,
            names: schedule.counters.iter().map(|c| c.name.clone()).collect(),
            resets: schedule.counters.iter().map(|c| c.reset).collect(),
            signals: schedule
                .signal_counts()
                .into_iter()
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                .collect(),
        };

        let trace = options
            .trace
            .then(|| (dev + (n.div_ceil(2) * 2) as u64 * 4, instructions + schedule.workers.len()));
        let io_dev = addresses[io];
        // The caches bound the positions as much as the model does.
        let cache_positions = schedule
            .tasks
            .iter()
            .filter_map(|t| match t.op {
                TaskOp::Attention { max_positions, .. }
                | TaskOp::AttentionOut { max_positions, .. } => Some(max_positions as usize),
                _ => None,
            })
            .min()
            .unwrap_or(usize::MAX);
        let logits_len = logits_dev.map_or(0, |(_, n)| n);
        let overlap = options.overlap_launches && info.major >= 9;
        Ok(GpuBackend {
            gpu,
            function,
            stream,
            done,
            plan,
            verified,
            fit,
            options,
            tables,
            counters,
            io_dev,
            io_host: io_host as *mut u32,
            logits_dev,
            logits_host: logits_host as *mut f32,
            logits: vec![0.0; logits_len],
            has_logits: false,
            launches: 0,
            overlap,
            hint_skew: 0,
            max_positions: model.config.max_position_embeddings.min(cache_positions),
            vocab_size: model.config.vocab_size,
            wedged: None,
            trace,
        })
    }

    /// Launches issued by this backend so far (the next launch's epoch).
    pub fn launch_count(&self) -> u64 {
        self.launches
    }

    /// How the kernel fits the device (registers, shared memory, blocks per SM, SMs, workers).
    pub fn fit(&self) -> &KernelFit {
        &self.fit
    }

    /// The schedule as re-verified with this device's launch facts.
    pub fn verified(&self) -> &VerifiedSchedule {
        &self.verified
    }

    /// The generated CUDA source the kernel was compiled from.
    pub fn source(&self) -> &str {
        &self.plan.source
    }

    /// Runs one decode step: writes io (the position, and the token as the packed next token
    /// the embedding reads), launches the kernel once, waits for it under the watchdog and
    /// returns the token the LM head's packed argmax names.
    pub fn launch(&mut self, token: u32, position: u32) -> Result<u32, GpuError> {
        if let Some(why) = &self.wedged {
            return Err(GpuError::Wedged(why.clone()));
        }
        guarded("launching the megakernel", || self.launch_inner(token, position))
    }

    fn launch_inner(&mut self, token: u32, position: u32) -> Result<u32, GpuError> {
        self.gpu.bind()?;
        self.has_logits = false;
        let launch = self.launches;
        let epoch = launch as u32;
        let stream = self.stream;
        self.zero_reset_counters()?;
        self.put_io(token, position)?;
        self.enqueue_kernel(epoch, position)?;
        self.fetch_io()?;
        // SAFETY: pinned destinations of the sizes copied; the sources are live allocations.
        unsafe {
            if let Some((dev, n)) = self.logits_dev {
                check(
                    "cuMemcpyDtoHAsync (logits)",
                    sys::cuMemcpyDtoHAsync_v2(self.logits_host as *mut c_void, dev, n * 4, stream),
                )?;
            }
            check("cuEventRecord", sys::cuEventRecord(self.done, stream))?;
        }
        self.await_done(launch, self.options.watchdog, format!("launch {launch}"))?;
        let next = self.next_token();
        if let Some((_, n)) = self.logits_dev {
            // SAFETY: `logits_host` holds `n` floats, copied back by this launch.
            let src = unsafe { std::slice::from_raw_parts(self.logits_host, n) };
            self.logits.copy_from_slice(src);
            self.has_logits = true;
        }
        if next as usize >= self.vocab_size {
            return Err(GpuError::BadToken { token: next, vocab_size: self.vocab_size });
        }
        Ok(next)
    }

    /// Queues one launch of the kernel for `epoch` on the backend's stream. `position_hint` is the position the launch is expected to find in
    /// io: the kernel fills its rope table for it before waiting for the previous launch and
    /// refills it if io holds another (a wrong hint costs time, never a wrong result).
    fn enqueue_kernel(&mut self, epoch: u32, position_hint: u32) -> Result<(), GpuError> {
        let stream = self.stream;
        let t = self.tables;
        let mut args: [sys::CUdeviceptr; 7] =
            [t[0], t[1], t[2], t[3], t[4], t[5], self.counters.dev];
        let mut epoch_arg: c_uint = epoch;
        let mut hint_arg: c_uint = position_hint.wrapping_add(self.hint_skew);
        let mut params: [*mut c_void; 9] = [
            &mut args[0] as *mut _ as *mut c_void,
            &mut args[1] as *mut _ as *mut c_void,
            &mut args[2] as *mut _ as *mut c_void,
            &mut args[3] as *mut _ as *mut c_void,
            &mut args[4] as *mut _ as *mut c_void,
            &mut args[5] as *mut _ as *mut c_void,
            &mut args[6] as *mut _ as *mut c_void,
            &mut epoch_arg as *mut _ as *mut c_void,
            &mut hint_arg as *mut _ as *mut c_void,
        ];
        let (g, b) = (self.plan.grid, self.plan.block);
        if self.overlap {
            // SAFETY: a plain C union of integers; zero is a valid value of every field.
            let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
            attr.id =
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attr.value.programmaticStreamSerializationAllowed = 1;
            let config = sys::CUlaunchConfig {
                gridDimX: g.0,
                gridDimY: g.1,
                gridDimZ: g.2,
                blockDimX: b.0,
                blockDimY: b.1,
                blockDimZ: b.2,
                sharedMemBytes: self.plan.dynamic_smem_bytes,
                hStream: stream,
                attrs: &mut attr,
                numAttrs: 1,
            };
            // SAFETY: as for cuLaunchKernel below; `config` and `attr` outlive the call.
            check("cuLaunchKernelEx", unsafe {
                sys::cuLaunchKernelEx(
                    &config,
                    self.function,
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            })?;
            self.launches += 1;
            return Ok(());
        }
        // SAFETY: the parameters match kernels/abi.cuh (seven device addresses, then a u32) and
        // point to locals alive for the call; every address is a live allocation.
        check("cuLaunchKernel", unsafe {
            sys::cuLaunchKernel(
                self.function,
                g.0,
                g.1,
                g.2,
                b.0,
                b.1,
                b.2,
                self.plan.dynamic_smem_bytes,
                stream,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })?;
        self.launches += 1;
        Ok(())
    }

    /// Decodes `tokens` tokens from `token` at `position` with the launches queued back to back
    /// (each reads the token and position the previous one wrote on the device, so the host
    /// never stalls the GPU), and returns, for each batch of up to [`TIMING_BATCH`]
    /// consecutive launches, its GPU time per launch in milliseconds from the CUDA events
    /// recorded between batches. Logits are not copied back. The watchdog covers the whole.
    pub fn time_decode(
        &mut self,
        token: u32,
        position: u32,
        tokens: usize,
    ) -> Result<Vec<f32>, GpuError> {
        if let Some(why) = &self.wedged {
            return Err(GpuError::Wedged(why.clone()));
        }
        guarded("timing the megakernel", || {
            self.queue_decode(token, position, tokens, true).map(|(times, _)| times)
        })
    }

    /// Makes every later launch hint a position `skew` past its real one (0 restores exact
    /// hints). For the GPU checks: the kernel must find the real position and produce the
    /// same tokens, only later.
    #[doc(hidden)]
    pub fn skew_position_hints(&mut self, skew: u32) {
        self.hint_skew = skew;
    }

    /// Decodes `tokens` tokens as [`GpuBackend::time_decode`] does (queued, overlapped when
    /// [`GpuOptions::overlap_launches`] applies) and returns the last one: what as many
    /// single launches from the same state return, which is how the GPU checks test that
    /// queued launches compute the same tokens.
    pub fn decode_queued(
        &mut self,
        token: u32,
        position: u32,
        tokens: usize,
    ) -> Result<u32, GpuError> {
        if let Some(why) = &self.wedged {
            return Err(GpuError::Wedged(why.clone()));
        }
        guarded("decoding with queued launches", || {
            self.queue_decode(token, position, tokens, false).map(|(_, next)| next)
        })
    }

    fn queue_decode(
        &mut self,
        token: u32,
        position: u32,
        tokens: usize,
        timed: bool,
    ) -> Result<(Vec<f32>, u32), GpuError> {
        if tokens == 0 {
            return Ok((Vec::new(), token));
        }
        let end = position as usize + tokens;
        if end > self.max_positions {
            return Err(GpuError::Layout(format!(
                "decoding {tokens} tokens from position {position} needs {end} positions; the \
                 caches hold {}",
                self.max_positions
            )));
        }
        if self.counters.memory == CounterMemory::HostMapped
            && self.counters.resets.contains(&CounterReset::Zeroed)
        {
            return Err(GpuError::Unavailable(
                "queued launches need device counters when a counter is zeroed per launch".into(),
            ));
        }
        self.gpu.bind()?;
        self.has_logits = false;
        let stream = self.stream;
        let batches = if timed { tokens.div_ceil(TIMING_BATCH) } else { 0 };
        let events: Vec<sys::CUevent> = if timed {
            (0..=batches).map(|_| self.gpu.timing_event()).collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        self.put_io(token, position)?;
        let first = self.launches;
        if let Some(&e) = events.first() {
            // SAFETY: a live event on the backend's stream.
            check("cuEventRecord", unsafe { sys::cuEventRecord(e, stream) })?;
        }
        for k in 1..=tokens {
            let epoch = self.launches as u32;
            self.zero_reset_counters()?;
            // Launch k decodes at position + k - 1 (each launch advances it by one).
            self.enqueue_kernel(epoch, position + (k as u32 - 1))?;
            if timed && (k % TIMING_BATCH == 0 || k == tokens) {
                // SAFETY: as above.
                check("cuEventRecord", unsafe {
                    sys::cuEventRecord(events[k.div_ceil(TIMING_BATCH)], stream)
                })?;
            }
        }
        self.fetch_io()?;
        // SAFETY: a live event on the backend's stream.
        check("cuEventRecord", unsafe { sys::cuEventRecord(self.done, stream) })?;
        let watchdog = self.options.watchdog.saturating_mul(tokens as u32);
        let last = self.launches - 1;
        self.await_done(last, watchdog, format!("launches {first}..{}", self.launches))?;
        let mut times = Vec::with_capacity(batches);
        for (b, pair) in events.windows(2).enumerate() {
            let mut ms = 0f32;
            // SAFETY: both events completed on this stream.
            check("cuEventElapsedTime", unsafe {
                sys::cuEventElapsedTime_v2(&mut ms, pair[0], pair[1])
            })?;
            let launches = TIMING_BATCH.min(tokens - b * TIMING_BATCH);
            times.push(ms / launches as f32);
        }
        for e in events {
            self.gpu.destroy_event(e);
        }
        let next = self.next_token();
        if next as usize >= self.vocab_size {
            return Err(GpuError::BadToken { token: next, vocab_size: self.vocab_size });
        }
        Ok((times, next))
    }

    /// Queues the copy of the step's input into the io buffer: its position, and the token as
    /// the packed next token the embedding reads (`amk_schedule::ops::io`).
    fn put_io(&mut self, token: u32, position: u32) -> Result<(), GpuError> {
        let next = io::pack_input(token);
        let words = [token, position, next as u32, (next >> 32) as u32];
        // SAFETY: `io_host` is pinned memory of IO_BYTES (4 words); no copy is in flight.
        unsafe { std::ptr::copy_nonoverlapping(words.as_ptr(), self.io_host, words.len()) };
        // SAFETY: pinned source of IO_BYTES; the io buffer holds at least as many.
        check("cuMemcpyHtoDAsync (io)", unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                self.io_dev,
                self.io_host as *const c_void,
                IO_BYTES as usize,
                self.stream,
            )
        })
    }

    /// Queues the copy of the io buffer back to the host, after the launches queued before.
    fn fetch_io(&mut self) -> Result<(), GpuError> {
        // SAFETY: pinned destination of IO_BYTES; the io buffer is a live allocation as large.
        check("cuMemcpyDtoHAsync (io)", unsafe {
            sys::cuMemcpyDtoHAsync_v2(
                self.io_host as *mut c_void,
                self.io_dev,
                IO_BYTES as usize,
                self.stream,
            )
        })
    }

    /// The next token in the io words [`Self::fetch_io`] copied back (once that completed).
    fn next_token(&self) -> u32 {
        let at = (io::NEXT / 4) as usize;
        // SAFETY: `io_host` holds IO_BYTES (4 words); the copy back has completed.
        let (lo, hi) = unsafe { (self.io_host.add(at).read(), self.io_host.add(at + 1).read()) };
        io::next_token(u64::from(lo) | (u64::from(hi) << 32))
    }

    /// The timestamps (ns, `%globaltimer`) the last launch of a traced kernel recorded: worker
    /// w's instructions' start times from slot `worker_start[w] + w`, then its end time (see
    /// [`crate::trace::Trace`]). `None` unless [`GpuOptions::trace`] was set.
    pub fn read_trace(&mut self) -> Result<Option<Vec<u64>>, GpuError> {
        let Some((dev, len)) = self.trace else { return Ok(None) };
        self.gpu.bind()?;
        let mut out = vec![0u64; len];
        // SAFETY: the counters allocation holds `len` u64 slots at `dev`; launches are complete
        // (each waits for its event), and `out` holds `len` u64s.
        check("cuMemcpyDtoH (trace)", unsafe {
            sys::cuMemcpyDtoH_v2(out.as_mut_ptr() as *mut c_void, dev, len * 8)
        })?;
        Ok(Some(out))
    }

    /// The worker start offsets of the device program (for reading a trace).
    pub fn worker_start(&self) -> &[u32] {
        &self.plan.worker_start
    }

    /// Waits for the `done` event under `watchdog`; on a hang or fault, wedges the backend and
    /// reports the counters as `launch` (the last one queued, named `what`) left them.
    fn await_done(
        &mut self,
        launch: u64,
        watchdog: Duration,
        what: String,
    ) -> Result<(), GpuError> {
        let epoch = launch as u32;
        match wait_event(self.done, watchdog) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.wedge(format!("{what} hung"));
                Err(GpuError::Hang { launch, epoch, watchdog, counters: self.read_counters(epoch) })
            }
            Err(code) => {
                self.wedge(format!("{what} failed: {}", code_name(code)));
                Err(GpuError::Fault {
                    launch,
                    epoch,
                    call: "cuEventQuery",
                    code: code_name(code),
                    counters: self.read_counters(epoch),
                })
            }
        }
    }

    /// Marks the backend unusable and keeps its memory alive (a launch may still use it).
    fn wedge(&mut self, why: String) {
        self.gpu.leak = true;
        self.wedged = Some(why);
    }

    /// Zeroes the counters the schedule wants reset before each launch.
    fn zero_reset_counters(&mut self) -> Result<(), GpuError> {
        let c = &self.counters;
        let mut i = 0;
        while i < c.resets.len() {
            if c.resets[i] != CounterReset::Zeroed {
                i += 1;
                continue;
            }
            let start = i;
            while i < c.resets.len() && c.resets[i] == CounterReset::Zeroed {
                i += 1;
            }
            match c.memory {
                CounterMemory::HostMapped => {
                    // SAFETY: host-mapped pinned memory of `resets.len()` counters; no launch
                    // is running.
                    unsafe { std::ptr::write_bytes(c.host.add(start), 0, i - start) };
                }
                CounterMemory::Device => {
                    // SAFETY: the counters allocation holds `resets.len()` u32s.
                    check("cuMemsetD32Async (counters)", unsafe {
                        sys::cuMemsetD32Async(c.dev + start as u64 * 4, 0, i - start, self.stream)
                    })?;
                }
            }
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Every counter's value as the failed launch left it, relative to `epoch`.
    fn read_counters(&self, epoch: u32) -> Option<Vec<CounterState>> {
        let c = &self.counters;
        let n = c.names.len();
        if let (CounterMemory::Device, Some((stream, event))) = (c.memory, c.diag) {
            // A copy on a second non-blocking stream runs beside the spinning kernel.
            // SAFETY: pinned destination of `n` u32s; the counters allocation holds as many.
            let queued = unsafe {
                sys::cuMemcpyDtoHAsync_v2(c.host as *mut c_void, c.dev, n * 4, stream)
                    == sys::CUresult::CUDA_SUCCESS
                    && sys::cuEventRecord(event, stream) == sys::CUresult::CUDA_SUCCESS
            };
            if !queued || wait_event(event, Duration::from_secs(2)) != Ok(true) {
                return None;
            }
        }
        let states = (0..n)
            .map(|i| {
                // SAFETY: `host` holds `n` u32s; the device may still write them (volatile).
                let value = unsafe { c.host.add(i).read_volatile() };
                let per_launch = c.signals.get(i).copied().unwrap_or(0);
                // The value the counter had when this launch began.
                let base = match c.resets[i] {
                    CounterReset::Zeroed => 0,
                    CounterReset::Epoch { signals_per_launch } => {
                        epoch.wrapping_mul(signals_per_launch)
                    }
                    CounterReset::Never => epoch.wrapping_mul(per_launch),
                };
                CounterState {
                    name: c.names[i].clone(),
                    value,
                    relative: i64::from(value.wrapping_sub(base) as i32),
                    per_launch,
                }
            })
            .collect();
        Some(states)
    }
}

/// Checks the generated launch against the schedule before anything is allocated.
fn check_plan(plan: &CodePlan, s: &Schedule, dtype: WeightDType) -> Result<(), GpuError> {
    let hash = amk_verify::schedule_hash(s);
    let problems = [
        (plan.schedule_hash != hash)
            .then(|| format!("code was generated for schedule {}, not {hash}", plan.schedule_hash)),
        (plan.weight_dtype != dtype)
            .then(|| format!("weights are {:?}, {:?} was asked for", plan.weight_dtype, dtype)),
        (plan.buffer_bytes.len() != s.buffers.len()).then(|| {
            format!("{} buffer sizes for {} buffers", plan.buffer_bytes.len(), s.buffers.len())
        }),
        (plan.per_launch.len() != s.counters.len()).then(|| {
            format!("{} per-launch counts for {} counters", plan.per_launch.len(), s.counters.len())
        }),
        (plan.worker_start.len() != s.workers.len() + 1).then(|| {
            format!("{} worker offsets for {} workers", plan.worker_start.len(), s.workers.len())
        }),
        (plan.run_start.len() != s.workers.len() + 1).then(|| {
            format!("{} descriptor offsets for {} workers", plan.run_start.len(), s.workers.len())
        }),
        (u64::from(plan.grid.0) * u64::from(plan.grid.1) * u64::from(plan.grid.2)
            != s.workers.len() as u64)
            .then(|| format!("grid {:?} for {} workers", plan.grid, s.workers.len())),
    ];
    let mut problems: Vec<String> = problems.into_iter().flatten().collect();
    for (what, n) in [("int8 layouts", plan.int8_matrices.len()), ("formats", plan.formats.len())] {
        if n != s.buffers.len() {
            problems.push(format!("{n} {what} for {} buffers", s.buffers.len()));
        }
    }
    for (i, (b, &device_bytes)) in s.buffers.iter().zip(&plan.buffer_bytes).enumerate() {
        let int8 = plan.int8_matrices.get(i).copied().flatten();
        let format = plan.formats.get(i).copied().unwrap_or(WeightDType::F32);
        let needed = match (b.kind, format, int8) {
            (BufferKind::Weight, WeightDType::Int8, Some(m)) => m.bytes(),
            (BufferKind::Weight, WeightDType::Int8, None) => {
                problems.push(format!("int8 buffer `{}` has no int8 layout", b.name));
                b.bytes
            }
            (BufferKind::Weight, format, _) => b.bytes / ELEM * format.bytes(),
            // A launch tag beside every value.
            (BufferKind::Tagged, _, _) => b.bytes.saturating_mul(2),
            _ => b.bytes,
        };
        let ok = match b.kind {
            BufferKind::Weight => device_bytes == needed && b.bytes % ELEM == 0,
            _ => device_bytes >= needed,
        };
        if !ok {
            problems.push(format!(
                "buffer `{}` ({:?}, {} B in the schedule) gets {device_bytes} B on the device, \
                 {needed} B needed",
                b.name, b.kind, b.bytes
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(GpuError::Layout(problems.join("; ")))
    }
}

/// Reads the loaded kernel's resources and asks the occupancy API how many blocks fit per SM;
/// refuses a kernel whose workers cannot all be resident at once.
fn fit_kernel(
    f: sys::CUfunction,
    info: &DeviceInfo,
    plan: &CodePlan,
    compiled: &nvrtc::Compiled,
    workers: usize,
) -> Result<KernelFit, GpuError> {
    use sys::CUfunction_attribute as A;
    let attr = |a: A| -> Result<u32, GpuError> {
        let mut v: c_int = 0;
        // SAFETY: valid out-pointer and function.
        check("cuFuncGetAttribute", unsafe { sys::cuFuncGetAttribute(&mut v, a, f) })?;
        Ok(v.max(0) as u32)
    };
    let (b, dynamic) = (plan.block, plan.dynamic_smem_bytes);
    let usage = compiled.usage(&plan.kernel).unwrap_or_default();
    let mut fit = KernelFit {
        device: info.name.clone(),
        arch: info.arch(),
        registers: attr(A::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
        static_smem_bytes: attr(A::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
        dynamic_smem_bytes: dynamic,
        local_bytes: attr(A::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?,
        spill_stores: usage.spill_stores,
        spill_loads: usage.spill_loads,
        block_threads: b.0.saturating_mul(b.1).saturating_mul(b.2),
        blocks_per_sm: 0,
        sm_count: info.sm_count,
        workers,
    };
    let refuse =
        |reason: String, fit: &KernelFit| GpuError::NotCoResident { reason, fit: fit.clone() };
    let max_threads = attr(A::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?;
    if fit.block_threads == 0 || fit.block_threads > max_threads {
        return Err(refuse(
            format!(
                "{} threads per block, the kernel allows at most {max_threads}",
                fit.block_threads
            ),
            &fit,
        ));
    }
    if dynamic > 48 * 1024 {
        let available = info.max_smem_optin.saturating_sub(fit.static_smem_bytes);
        if dynamic > available {
            return Err(refuse(
                format!("{dynamic} B of dynamic shared memory, the device allows {available} B"),
                &fit,
            ));
        }
        // SAFETY: valid function; the value is within the device's opt-in limit.
        check("cuFuncSetAttribute (MAX_DYNAMIC_SHARED_SIZE_BYTES)", unsafe {
            sys::cuFuncSetAttribute(
                f,
                A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                dynamic as c_int,
            )
        })?;
    }
    let mut blocks: c_int = 0;
    // SAFETY: valid out-pointer and function.
    check("cuOccupancyMaxActiveBlocksPerMultiprocessor", unsafe {
        sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
            &mut blocks,
            f,
            fit.block_threads as c_int,
            dynamic as usize,
        )
    })?;
    fit.blocks_per_sm = blocks.max(0) as u32;
    let capacity = u64::from(fit.blocks_per_sm) * u64::from(fit.sm_count);
    if fit.blocks_per_sm == 0 || workers as u64 > capacity {
        return Err(refuse(
            format!("{workers} workers need to be resident at once, the device holds {capacity}"),
            &fit,
        ));
    }
    Ok(fit)
}

/// How one weight buffer is stored on the device.
#[derive(Debug, Clone, Copy)]
enum WeightLayout {
    F32,
    Bf16,
    /// Int8 rows and their f32 scales ([`crate::quant::quantize_rows`]).
    Int8(Int8Matrix),
}

/// `[rows, cols]` row-major values as `[cols, rows]`. Blocks of 64 output rows go to rayon's
/// pool, and each block reads every input row's 64 contiguous values in turn, so reads stay in
/// cache (a column-by-column walk missed it on every read: 0.13 s for one 8192 x 2048 matrix).
fn transpose<T: Copy + Default + Send + Sync>(values: &[T], rows: usize, cols: usize) -> Vec<T> {
    const TILE: usize = 64;
    let mut out = vec![T::default(); values.len()];
    if rows == 0 || cols == 0 {
        return out;
    }
    out.par_chunks_mut(TILE * rows).enumerate().for_each(|(block, dst)| {
        // `dst` holds output rows c0..c0 + n, i.e. input columns c0..c0 + n.
        let c0 = block * TILE;
        let n = dst.len() / rows;
        for r in 0..rows {
            let src = &values[r * cols + c0..r * cols + c0 + n];
            for (k, &v) in src.iter().enumerate() {
                dst[k * rows + r] = v;
            }
        }
    });
    out
}

/// Loads weight `name` from the checkpoint and copies it to `dst` in `layout`, transposed
/// first when the kernel reads it so (int8: quantized per checkpoint row, then transposed).
fn upload_weight(
    gpu: &Gpu,
    dst: sys::CUdeviceptr,
    model: &amk_ir::Model,
    name: &str,
    elements: u64,
    layout: WeightLayout,
    transposed: Option<Transposed>,
) -> Result<(), GpuError> {
    let err = |message: String| GpuError::Weight { name: name.to_owned(), message };
    let spec =
        model.graph.weights.iter().find(|w| w.name == name).ok_or_else(|| {
            err("the schedule names a weight the model's graph does not read".into())
        })?;
    if spec.numel() as u64 != elements {
        return Err(err(format!(
            "the schedule's buffer holds {elements} elements, the checkpoint tensor {}",
            spec.numel()
        )));
    }
    let data = model.checkpoint.load_weight(spec).map_err(|e| err(e.to_string()))?;
    if data.len() as u64 != elements {
        return Err(err(format!("loaded {} elements, expected {elements}", data.len())));
    }
    if let Some(t) = transposed {
        if u64::from(t.rows) * u64::from(t.cols) != elements {
            return Err(err(format!(
                "the kernel reads it as a transposed [{}, {}] matrix, but it holds {elements} \
                 elements",
                t.rows, t.cols
            )));
        }
    }
    // The value order the kernel reads: as stored, or transposed.
    let order = |values: Vec<f32>| match transposed {
        Some(t) => transpose(&values, t.rows as usize, t.cols as usize),
        None => values,
    };
    match layout {
        WeightLayout::F32 => gpu.copy_to(dst, &order(data)),
        WeightLayout::Bf16 => {
            let data = order(data);
            let bits: Vec<u16> =
                data.par_iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect();
            gpu.copy_to(dst, &bits)
        }
        WeightLayout::Int8(m) => {
            if spec.shape.len() != 2 || spec.shape[1] as u64 != u64::from(m.cols) {
                return Err(err(format!(
                    "the schedule reads it as a matrix of {} columns, the checkpoint's shape is \
                     {:?}",
                    m.cols, spec.shape
                )));
            }
            let q = crate::quant::quantize_rows(&data, m.cols as usize);
            let values = match transposed {
                Some(t) => transpose(&q.values, t.rows as usize, t.cols as usize),
                None => q.values,
            };
            let mut bytes = vec![0u8; m.bytes() as usize];
            for (b, &v) in bytes.iter_mut().zip(&values) {
                *b = v as u8;
            }
            let scales = &mut bytes[m.scales_offset as usize..];
            for (chunk, s) in scales.chunks_exact_mut(4).zip(&q.scales) {
                chunk.copy_from_slice(&s.to_le_bytes());
            }
            gpu.copy_to(dst, &bytes)
        }
    }
}

impl Backend for GpuBackend {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn reset(&mut self) {
        // Nothing to clear: attention reads only cache rows written for the current sequence.
        self.has_logits = false;
    }

    fn step(&mut self, token: u32, position: usize) -> Result<u32, RuntimeError> {
        crate::check_step(token, position, self.vocab_size, self.max_positions)?;
        Ok(self.launch(token, position as u32)?)
    }

    fn logits(&self) -> Option<&[f32]> {
        self.has_logits.then_some(self.logits.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::transpose;

    /// The tiled transpose against the definition, on shapes around and across its tiles.
    #[test]
    fn transpose_moves_every_element() {
        for (rows, cols) in
            [(1, 1), (3, 5), (64, 64), (65, 130), (200, 7), (7, 200), (0, 4), (130, 1)]
        {
            let values: Vec<u32> = (0..rows * cols).map(|i| i as u32).collect();
            let t = transpose(&values, rows, cols);
            assert_eq!(t.len(), values.len());
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        values[r * cols + c],
                        "{rows}x{cols} at ({r}, {c})"
                    );
                }
            }
        }
    }
}
