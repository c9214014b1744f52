//! The CPU executor of schedules: runs a schedule's workers interleaved, one instruction at a
//! time, in an order a [`Policy`] picks among the workers whose next instruction may run, and
//! computes every task in f32.
//!
//! This is how a schedule's meaning is tested without a GPU: for a race-free, deadlock-free
//! schedule every interleaving yields the same tokens, and those tokens must be the CPU
//! reference's. Each task's memory accesses are checked against the regions it declares (on
//! by default in debug builds), so a schedule that under-declares is caught where it lies.
//! A run that gets stuck reports the waiting workers.

use crate::kernels;
use crate::{Backend, RuntimeError};
use amk_codegen_cuda::WeightDType;
use amk_ir::synth::SplitMix;
use amk_schedule::ops::{
    attn_part_rows, attn_partial_index, attn_partial_len, io, Carry, NewRow, ProjInput, ProjOutput,
    TaskOp, ELEM,
};
use amk_schedule::schedule::{BufferId, BufferKind, CounterReset, Instr, Region, Schedule, TaskId};
use std::sync::Arc;

/// How the executor picks the next worker to advance among those that can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Uniformly at random, from a seed (SplitMix64).
    Random(u64),
    /// Always the lowest-numbered worker that can move: one worker runs ahead as far as it may.
    LowestFirst,
    /// Always the highest-numbered one.
    HighestFirst,
}

/// An error of the schedule executor.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(
        "the schedule deadlocked: {}",
        stuck.iter().map(|s| s.to_string())
            .chain(blocked.iter().map(|b| b.to_string()))
            .collect::<Vec<_>>().join("; ")
    )]
    Deadlock { stuck: Vec<StuckWorker>, blocked: Vec<BlockedRun> },
    #[error(
        "task `{task}` {kind} bytes {start}..{end} of buffer `{buffer}`, outside the regions it \
         declares"
    )]
    Undeclared { task: String, kind: &'static str, buffer: String, start: u64, end: u64 },
    #[error("task `{task}`: {message}")]
    Task { task: String, message: String },
    #[error("schedule is malformed: {0}")]
    Malformed(String),
}

/// A worker stuck at a wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckWorker {
    pub worker: usize,
    pub instr: usize,
    pub counter: String,
    pub waiting_for: u64,
    pub value: u64,
}

impl std::fmt::Display for StuckWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "worker {} at instruction {} waits for `{}` >= {} (it is {})",
            self.worker, self.instr, self.counter, self.waiting_for, self.value
        )
    }
}

/// A worker whose next task reads tagged values not yet written in this launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedRun {
    pub worker: usize,
    pub instr: usize,
    pub task: String,
    /// The tagged buffer and the element range of it still unwritten.
    pub buffer: String,
    pub first: usize,
    pub end: usize,
}

impl std::fmt::Display for BlockedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "worker {} at instruction {} runs `{}`, which reads elements {}..{} of tagged `{}` \
             that no task has written in this launch",
            self.worker, self.instr, self.task, self.first, self.end, self.buffer
        )
    }
}

impl From<ExecError> for RuntimeError {
    fn from(e: ExecError) -> Self {
        RuntimeError::Schedule(e.to_string())
    }
}

/// Runs a schedule on the CPU, one launch per decode step.
pub struct ScheduleExecutor {
    schedule: Arc<Schedule>,
    /// Every buffer as 4-byte words (f32 values or u32 bit patterns).
    mem: Vec<Vec<f32>>,
    /// For each [`BufferKind::Tagged`] buffer, the launch (plus one) that last wrote each
    /// word, as the device's tags; empty for other buffers.
    tags: Vec<Vec<u64>>,
    /// Absolute counter values (never reset; epoch offsets apply to waits).
    counters: Vec<u64>,
    launches: u64,
    io: BufferId,
    logits: Option<BufferId>,
    max_positions: usize,
    vocab_size: usize,
    /// Check every access against the task's declared regions.
    pub check_regions: bool,
    /// The policy of the next launch comes from this seed and the launch count...
    pub seed: u64,
    /// ...unless this fixes one policy for every launch.
    pub policy: Option<Policy>,
}

impl ScheduleExecutor {
    /// Prepares memory for `schedule`: weight buffers come from `load(name, elements)`, every
    /// other buffer starts zeroed. `max_positions` and `vocab_size` bound token and position.
    pub fn new(
        schedule: Arc<Schedule>,
        max_positions: usize,
        vocab_size: usize,
        mut load: impl FnMut(&str, usize) -> Result<Vec<f32>, RuntimeError>,
    ) -> Result<ScheduleExecutor, RuntimeError> {
        let mut mem = Vec::with_capacity(schedule.buffers.len());
        for b in &schedule.buffers {
            if b.bytes % ELEM != 0 {
                return Err(ExecError::Malformed(format!(
                    "buffer `{}` has {} bytes, not a whole number of 4-byte words",
                    b.name, b.bytes
                ))
                .into());
            }
            let n = (b.bytes / ELEM) as usize;
            mem.push(match b.kind {
                BufferKind::Weight => {
                    let data = load(&b.name, n)?;
                    if data.len() != n {
                        return Err(RuntimeError::WeightSize {
                            name: b.name.clone(),
                            expected: n,
                            found: data.len(),
                        });
                    }
                    data
                }
                _ => vec![0.0; n],
            });
        }
        let find = |kind: BufferKind, name: &str| {
            schedule.buffers.iter().position(|b| b.kind == kind && b.name == name)
        };
        let io = find(BufferKind::Io, "io")
            .ok_or_else(|| ExecError::Malformed("no Io buffer named `io`".into()))?;
        let logits = find(BufferKind::Logits, "logits").map(|i| BufferId(i as u32));
        // The caches bound the positions as much as the model does.
        let cache_positions = schedule
            .tasks
            .iter()
            .filter_map(|t| match t.op {
                TaskOp::Attention { max_positions, .. }
                | TaskOp::AttentionOut { max_positions, .. }
                | TaskOp::QueryAttention { max_positions, .. }
                | TaskOp::AppendKv { max_positions, .. } => Some(max_positions as usize),
                _ => None,
            })
            .min()
            .unwrap_or(max_positions);
        let tags = schedule
            .buffers
            .iter()
            .zip(&mem)
            .map(|(b, m)| if b.kind == BufferKind::Tagged { vec![0; m.len()] } else { Vec::new() })
            .collect();
        Ok(ScheduleExecutor {
            tags,
            counters: vec![0; schedule.counters.len()],
            launches: 0,
            io: BufferId(io as u32),
            logits,
            max_positions: max_positions.min(cache_positions),
            vocab_size,
            check_regions: cfg!(debug_assertions),
            seed: 0,
            policy: None,
            mem,
            schedule,
        })
    }

    /// Loads weights from a model's checkpoint by name (the lowering names weight buffers
    /// after checkpoint tensors).
    pub fn from_model(
        model: &amk_ir::Model,
        schedule: Arc<Schedule>,
        on_weight: &mut dyn FnMut(usize, usize),
    ) -> Result<ScheduleExecutor, RuntimeError> {
        Self::from_model_with(model, schedule, WeightDType::F32, on_weight)
    }

    /// Like [`Self::from_model`], with the weights as a device holding them in a `dtype` build
    /// would see them ([`crate::quant::emulate_as`]; matrices in the format the schedule's
    /// buffers give them, if any), so a schedule's lower-precision decode can be checked on
    /// the CPU.
    pub fn from_model_with(
        model: &amk_ir::Model,
        schedule: Arc<Schedule>,
        dtype: WeightDType,
        on_weight: &mut dyn FnMut(usize, usize),
    ) -> Result<ScheduleExecutor, RuntimeError> {
        let total = schedule.buffers.iter().filter(|b| b.kind == BufferKind::Weight).count();
        let formats: std::collections::HashMap<String, _> = schedule
            .buffers
            .iter()
            .filter(|b| b.kind == BufferKind::Weight)
            .map(|b| (b.name.clone(), b.format))
            .collect();
        let schedule_format = |name: &str| formats.get(name).copied().flatten();
        let mut done = 0;
        let max_pos = model.config.max_position_embeddings;
        Self::new(schedule, max_pos, model.config.vocab_size, |name, n| {
            let spec = model.graph.weights.iter().find(|w| w.name == name).ok_or_else(|| {
                RuntimeError::WeightLoad {
                    name: name.to_owned(),
                    message: "the schedule names a weight the model's graph does not read".into(),
                }
            })?;
            if spec.numel() != n {
                return Err(RuntimeError::WeightSize {
                    name: name.to_owned(),
                    expected: n,
                    found: spec.numel(),
                });
            }
            let data = model.checkpoint.load_weight(spec).map_err(|e| {
                RuntimeError::WeightLoad { name: name.to_owned(), message: e.to_string() }
            })?;
            done += 1;
            on_weight(done, total);
            let (matrix, format) = (crate::quant::is_matrix(spec), schedule_format(name));
            if !matrix && format.is_some() {
                return Err(RuntimeError::WeightLoad {
                    name: name.to_owned(),
                    message: "the schedule gives this weight vector a `format`; only matrices \
                              are held in a format of their own (remove it)"
                        .into(),
                });
            }
            Ok(crate::quant::emulate_as(dtype.weight_format(matrix, format), spec, data))
        })
    }

    /// The schedule being run.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The policy the next launch will use: random (seeded by `seed` and the launch count) two
    /// launches in three, alternately lowest-first and highest-first otherwise.
    pub fn next_policy(&self) -> Policy {
        if let Some(p) = self.policy {
            return p;
        }
        match self.launches % 6 {
            2 => Policy::LowestFirst,
            5 => Policy::HighestFirst,
            _ => Policy::Random(self.seed.wrapping_mul(0x9E37_79B9).wrapping_add(self.launches)),
        }
    }

    /// Runs one launch (one decode step) under `policy`.
    pub fn launch(&mut self, policy: Policy) -> Result<(), ExecError> {
        let s = Arc::clone(&self.schedule);
        let epoch = self.launches;
        for (c, counter) in s.counters.iter().enumerate() {
            if counter.reset == CounterReset::Zeroed {
                self.counters[c] = 0;
            }
        }
        let base = |c: usize| -> u64 {
            match s.counters[c].reset {
                CounterReset::Epoch { signals_per_launch } => epoch * signals_per_launch as u64,
                CounterReset::Zeroed | CounterReset::Never => 0,
            }
        };
        let mut pc = vec![0usize; s.workers.len()];
        let mut rng = SplitMix(match policy {
            Policy::Random(seed) => seed,
            _ => 0,
        });
        let mut ready = Vec::with_capacity(s.workers.len());
        loop {
            ready.clear();
            let mut all_done = true;
            for (w, worker) in s.workers.iter().enumerate() {
                let Some(instr) = worker.instrs.get(pc[w]) else { continue };
                all_done = false;
                let can = match *instr {
                    Instr::Wait { counter, at_least } => {
                        let c = counter.index();
                        if c >= self.counters.len() {
                            return Err(ExecError::Malformed(format!(
                                "worker {w} instruction {} waits on counter {c}, out of range",
                                pc[w]
                            )));
                        }
                        self.counters[c] >= base(c) + at_least as u64
                    }
                    Instr::Run(task) => self.unwritten(&s, task).is_none(),
                    Instr::Signal(_) => true,
                };
                if can {
                    ready.push(w);
                }
            }
            if all_done {
                break;
            }
            if ready.is_empty() {
                let stuck = s
                    .workers
                    .iter()
                    .enumerate()
                    .filter_map(|(w, worker)| match worker.instrs.get(pc[w]) {
                        Some(Instr::Wait { counter, at_least }) => Some(StuckWorker {
                            worker: w,
                            instr: pc[w],
                            counter: s.counters[counter.index()].name.clone(),
                            waiting_for: *at_least as u64,
                            value: self.counters[counter.index()] - base(counter.index()),
                        }),
                        _ => None,
                    })
                    .collect();
                let blocked = s
                    .workers
                    .iter()
                    .enumerate()
                    .filter_map(|(w, worker)| match worker.instrs.get(pc[w]) {
                        Some(&Instr::Run(task)) => {
                            let (b, first, end) = self.unwritten(&s, task)?;
                            Some(BlockedRun {
                                worker: w,
                                instr: pc[w],
                                task: s.tasks[task.index()].name.clone(),
                                buffer: s.buffers[b].name.clone(),
                                first,
                                end,
                            })
                        }
                        _ => None,
                    })
                    .collect();
                return Err(ExecError::Deadlock { stuck, blocked });
            }
            let w = match policy {
                Policy::LowestFirst => ready[0],
                Policy::HighestFirst => ready[ready.len() - 1],
                Policy::Random(_) => ready[(rng.next_u64() % ready.len() as u64) as usize],
            };
            match s.workers[w].instrs[pc[w]] {
                Instr::Run(task) => self.run_task(&s, task)?,
                Instr::Signal(counter) => {
                    let c = self.counters.get_mut(counter.index()).ok_or_else(|| {
                        ExecError::Malformed(format!("counter {} out of range", counter.0))
                    })?;
                    *c += 1;
                }
                Instr::Wait { .. } => {}
            }
            pc[w] += 1;
        }
        // A launch that signalled a counter more or fewer times than declared would shift the
        // next launch's epoch; the verifier proves this cannot happen, check it anyway.
        for (c, counter) in s.counters.iter().enumerate() {
            if let CounterReset::Epoch { signals_per_launch } = counter.reset {
                if self.counters[c] != (epoch + 1) * signals_per_launch as u64 {
                    return Err(ExecError::Malformed(format!(
                        "counter `{}` received {} signals in launch {epoch}, declared {}",
                        counter.name,
                        self.counters[c] - epoch * signals_per_launch as u64,
                        signals_per_launch
                    )));
                }
            }
        }
        self.launches += 1;
        Ok(())
    }

    /// The first run of tagged words task `id` declares reading that this launch has not
    /// written yet: (buffer, first element, end), or `None` when it may run.
    fn unwritten(&self, s: &Schedule, id: TaskId) -> Option<(usize, usize, usize)> {
        let now = self.launches + 1;
        let task = s.tasks.get(id.index())?;
        task.reads.iter().find_map(|r| {
            let tags = self.tags.get(r.buffer.index())?;
            let first = (r.offset / ELEM) as usize;
            let end = (r.end()?.div_ceil(ELEM) as usize).min(tags.len());
            let k = tags.get(first..end)?.iter().position(|&t| t != now)?;
            let stop =
                tags[first + k..end].iter().position(|&t| t == now).map_or(end, |j| first + k + j);
            Some((r.buffer.index(), first + k, stop))
        })
    }

    fn run_task(&mut self, s: &Schedule, id: TaskId) -> Result<(), ExecError> {
        let task = s
            .tasks
            .get(id.index())
            .ok_or_else(|| ExecError::Malformed(format!("task {} out of range", id.0)))?;
        let mut ctx = TaskCtx {
            exec: self,
            s,
            name: &task.name,
            reads: &task.reads,
            writes: &task.writes,
            adds: &task.adds,
        };
        ctx.run(&task.op)
    }

    /// The io buffer's packed next token ([`amk_schedule::ops::io`]).
    fn next_word(&self) -> u64 {
        unpack_next(&self.mem[self.io.index()][NEXT_AT..])
    }
}

/// One task's view of memory, checking its accesses against its declared regions.
struct TaskCtx<'a> {
    exec: &'a mut ScheduleExecutor,
    s: &'a Schedule,
    name: &'a str,
    reads: &'a [Region],
    writes: &'a [Region],
    adds: &'a [Region],
}

/// The element of the io buffer where its packed next token starts ([`io::NEXT`]).
const NEXT_AT: usize = (io::NEXT / ELEM) as usize;

/// The packed next token held in two io elements (a little-endian u64 in their bits).
fn unpack_next(w: &[f32]) -> u64 {
    u64::from(w[0].to_bits()) | (u64::from(w[1].to_bits()) << 32)
}

/// `next` as the two io elements that hold it.
fn pack_next(next: u64) -> [f32; 2] {
    [f32::from_bits(next as u32), f32::from_bits((next >> 32) as u32)]
}

/// How a task touches memory, for the check against its declared regions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Touch {
    Read,
    Write,
    /// An atomic add: declared in `adds` (or, stronger, in `writes`).
    Add,
}

impl TaskCtx<'_> {
    fn err(&self, message: impl Into<String>) -> ExecError {
        ExecError::Task { task: self.name.to_owned(), message: message.into() }
    }

    /// Checks an access of `len` elements from element `first` of `buffer`.
    fn check(
        &self,
        touch: Touch,
        buffer: BufferId,
        first: usize,
        len: usize,
    ) -> Result<(), ExecError> {
        let b = buffer.index();
        let size = self.exec.mem.get(b).map(|m| m.len()).ok_or_else(|| {
            ExecError::Malformed(format!("task `{}` names buffer {b}, out of range", self.name))
        })?;
        if first.checked_add(len).is_none_or(|end| end > size) {
            return Err(self.err(format!(
                "elements {first}..{} of buffer `{}` are outside it ({size} elements)",
                first.saturating_add(len),
                self.s.buffers[b].name
            )));
        }
        if self.exec.check_regions {
            let access = Region::new(buffer, first as u64 * ELEM, len as u64 * ELEM);
            let inside = |list: &[Region]| list.iter().any(|r| r.contains(&access));
            let declared = match touch {
                Touch::Read => inside(self.reads),
                Touch::Write => inside(self.writes),
                Touch::Add => inside(self.adds) || inside(self.writes),
            };
            if !declared {
                return Err(ExecError::Undeclared {
                    task: self.name.to_owned(),
                    kind: match touch {
                        Touch::Read => "reads",
                        Touch::Write => "writes",
                        Touch::Add => "adds",
                    },
                    buffer: self.s.buffers[b].name.clone(),
                    start: access.offset,
                    end: access.offset + access.len,
                });
            }
        }
        Ok(())
    }

    fn read(&self, buffer: BufferId, first: usize, len: usize) -> Result<&[f32], ExecError> {
        self.check(Touch::Read, buffer, first, len)?;
        // A tagged read sees only this launch's values (the device would wait for them).
        let tags = &self.exec.tags[buffer.index()];
        if !tags.is_empty() && tags[first..first + len].iter().any(|&t| t != self.exec.launches + 1)
        {
            return Err(self.err(format!(
                "reads elements {first}..{} of tagged `{}` before they are written in this \
                 launch (its declared reads must cover every tagged value it reads)",
                first + len,
                self.s.buffers[buffer.index()].name
            )));
        }
        Ok(&self.exec.mem[buffer.index()][first..first + len])
    }

    fn write(&mut self, buffer: BufferId, first: usize, data: &[f32]) -> Result<(), ExecError> {
        self.check(Touch::Write, buffer, first, data.len())?;
        self.exec.mem[buffer.index()][first..first + data.len()].copy_from_slice(data);
        let now = self.exec.launches + 1;
        if let Some(tags) = self.exec.tags.get_mut(buffer.index()).filter(|t| !t.is_empty()) {
            tags[first..first + data.len()].fill(now);
        }
        Ok(())
    }

    /// Adds `data` into `buffer` from element `first` (the device's atomic adds; here in the
    /// order the executor's policy runs the tasks).
    fn add(&mut self, buffer: BufferId, first: usize, data: &[f32]) -> Result<(), ExecError> {
        self.check(Touch::Add, buffer, first, data.len())?;
        if !self.exec.tags[buffer.index()].is_empty() {
            let name = &self.s.buffers[buffer.index()].name;
            return Err(self.err(format!("adds to tagged `{name}`, which only takes stores")));
        }
        let dst = &mut self.exec.mem[buffer.index()][first..first + data.len()];
        for (d, v) in dst.iter_mut().zip(data) {
            *d += v;
        }
        Ok(())
    }

    /// The position from the io buffer, checked as a read.
    fn position(&self, io: BufferId) -> Result<usize, ExecError> {
        Ok(self.read(io, (io::POSITION / ELEM) as usize, 1)?[0].to_bits() as usize)
    }

    /// The io buffer's packed next token, checked as a read.
    fn next(&self, io: BufferId) -> Result<u64, ExecError> {
        Ok(unpack_next(self.read(io, NEXT_AT, 2)?))
    }

    /// Stores a packed next token into the io buffer.
    fn store_next(&mut self, io: BufferId, next: u64, touch: Touch) -> Result<(), ExecError> {
        self.check(touch, io, NEXT_AT, 2)?;
        self.exec.mem[io.index()][NEXT_AT..NEXT_AT + 2].copy_from_slice(&pack_next(next));
        Ok(())
    }

    fn input(&self, input: &ProjInput) -> Result<Vec<f32>, ExecError> {
        match *input {
            ProjInput::Vector { buffer, len } => Ok(self.read(buffer, 0, len as usize)?.to_vec()),
            ProjInput::RmsNormed { buffer, len, weight, eps } => {
                let x = self.read(buffer, 0, len as usize)?;
                let w = self.read(weight, 0, len as usize)?;
                let mut out = vec![0.0; len as usize];
                kernels::rms_norm(x, w, eps, &mut out);
                Ok(out)
            }
            ProjInput::AttnPartials { buffer, heads, head_dim, parts, current } => {
                let hd = head_dim as usize;
                let per_head = parts as usize * attn_partial_len(head_dim) as usize;
                let all = self.read(buffer, 0, heads as usize * per_head)?;
                let mut out = vec![0.0; heads as usize * hd];
                for (h, (p, o)) in
                    all.chunks_exact(per_head).zip(out.chunks_exact_mut(hd)).enumerate()
                {
                    let Some(c) = current else {
                        kernels::combine_attn_partials(p, hd, o);
                        continue;
                    };
                    // The current row is one more part, after the others.
                    let g = c.kv_head(h as u32, heads).ok_or_else(|| {
                        self.err(format!(
                            "{} key/value heads do not divide {heads} query heads",
                            c.kv_heads
                        ))
                    })? as usize;
                    let q = self.read(c.q, h * hd, hd)?;
                    let k = self.read(c.kv, g * hd, hd)?;
                    let v = self.read(c.kv, (c.kv_heads as usize + g) * hd, hd)?;
                    let mut all_parts = p.to_vec();
                    let mut row = vec![0.0; hd + 2];
                    kernels::attention_partial(
                        q,
                        kernels::KvRows { k, v, stride: hd },
                        1,
                        &mut row,
                    );
                    all_parts.extend(row);
                    kernels::combine_attn_partials(&all_parts, hd, o);
                }
                Ok(out)
            }
        }
    }

    /// Rows `first..first+rows` of `weight @ x`.
    fn rows(
        &self,
        weight: BufferId,
        first: u32,
        rows: u32,
        cols: u32,
        x: &[f32],
        bias: Option<BufferId>,
    ) -> Result<Vec<f32>, ExecError> {
        if x.len() != cols as usize {
            return Err(
                self.err(format!("input has {} elements, weight has {cols} columns", x.len()))
            );
        }
        let (f, r, c) = (first as usize, rows as usize, cols as usize);
        let w = self.read(weight, f * c, r * c)?;
        let b = match bias {
            Some(b) => Some(self.read(b, f, r)?),
            None => None,
        };
        let mut out = vec![0.0; r];
        kernels::matvec(w, x, b, &mut out);
        Ok(out)
    }

    /// The partial softmax `[m, l, acc..]` of part `part` of `parts` of one query head's
    /// attention at the current position (see [`TaskOp::Attention`]), with query `q` (the
    /// geometry's query buffer's head when `None`).
    fn attention_partial(
        &self,
        op: &TaskOp,
        q: Option<&[f32]>,
        part: u32,
        parts: u32,
    ) -> Result<Vec<f32>, ExecError> {
        let g = op.attn_geometry().ok_or_else(|| self.err("not an attention task"))?;
        let pos = self.position(g.io)?;
        if part >= parts {
            return Err(self.err(format!("attention part {part} of {parts} parts")));
        }
        if pos >= g.max_positions as usize {
            return Err(self
                .err(format!("position {pos} is past the cache's {} positions", g.max_positions)));
        }
        if g.window == Some(0) {
            return Err(self.err("a sliding window of 0 positions attends to nothing"));
        }
        let hd = g.head_dim as usize;
        let qh = match (q, g.q) {
            (Some(q), _) => q,
            (None, Some(buffer)) => self.read(buffer, g.head as usize * hd, hd)?,
            (None, None) => return Err(self.err("an attention task without a query")),
        };
        if qh.len() != hd {
            return Err(self.err(format!("the query has {} elements, head_dim is {hd}", qh.len())));
        }
        // Only this part's rows of the window `first..=pos` (`first..pos` when the current row
        // is combined later) are read.
        let first = kernels::window_start(pos, g.window.map(|w| w as usize));
        let end = if g.past_only { pos } else { pos + 1 };
        let (a, b) = attn_part_rows(first, end, part, parts);
        let base = (g.kv_head as usize * g.max_positions as usize + a) * hd;
        let mut o = vec![0.0; hd + 2];
        let current = match *op {
            TaskOp::Attention { current, .. } => current,
            _ => None,
        };
        let Some(NewRow { kv, kv_heads }) = current.filter(|_| (a..b).contains(&pos)) else {
            let k = self.read(g.k_cache, base, (b - a) * hd)?;
            let v = self.read(g.v_cache, base, (b - a) * hd)?;
            kernels::attention_partial(qh, kernels::KvRows { k, v, stride: hd }, b - a, &mut o);
            return Ok(o);
        };
        // The rows before the position from the caches, the position's from `kv`, in order.
        let (g_kv, n) = (g.kv_head as usize, kv_heads as usize);
        let mut k = self.read(g.k_cache, base, (pos - a) * hd)?.to_vec();
        let mut v = self.read(g.v_cache, base, (pos - a) * hd)?.to_vec();
        k.extend_from_slice(self.read(kv, g_kv * hd, hd)?);
        v.extend_from_slice(self.read(kv, (n + g_kv) * hd, hd)?);
        kernels::attention_partial(qh, kernels::KvRows { k: &k, v: &v, stride: hd }, b - a, &mut o);
        Ok(o)
    }

    /// `y[r] = weight[r][first..first + x.len()] . x` for each of `rows` rows of `row_len`
    /// elements: a block of a matrix's columns (the fused MLP's down share, a fused or
    /// head-split output projection's share). The caller checked that `rows > 0` and that the
    /// block lies inside a row.
    fn column_block(
        &self,
        weight: BufferId,
        rows: usize,
        row_len: usize,
        first: usize,
        x: &[f32],
    ) -> Result<Vec<f32>, ExecError> {
        let n = x.len();
        // Columns first..first + n of each of the rows lie in this span.
        let span = self.read(weight, first, (rows - 1) * row_len + n)?;
        Ok((0..rows).map(|r| kernels::dot(&span[r * row_len..r * row_len + n], x)).collect())
    }

    /// A projection's rows after its bias, per-head norm and rope (not yet stored), and the
    /// position it read (0 when it needed none).
    fn project(&self, op: &TaskOp) -> Result<(Vec<f32>, usize), ExecError> {
        let TaskOp::Projection {
            input,
            weight,
            bias,
            first_row,
            rows,
            cols,
            head_norm,
            head_part,
            rope,
            io,
            output,
        } = *op
        else {
            return Err(self.err("not a projection"));
        };
        op.check_head_part().map_err(|e| self.err(e.to_string()))?;
        let x = self.input(&input)?;
        let mut y = match head_part {
            None => self.rows(weight, first_row, rows, cols, &x, bias)?,
            Some(p) => {
                // The part's two runs of head rows, one after the other (its local order),
                // each row as the whole head's task computes it.
                let mut y = Vec::with_capacity(rows as usize);
                for (at, n) in p.ranges(rows) {
                    let first = u32::try_from(u64::from(first_row) + at)
                        .map_err(|_| self.err("a head part's rows are past 32 bits"))?;
                    y.extend(self.rows(weight, first, n as u32, cols, &x, bias)?);
                }
                y
            }
        };
        let needs_pos = rope.is_some() || matches!(output, ProjOutput::CacheRow { .. });
        let pos = if needs_pos { self.position(io)? } else { 0 };
        if let Some(norm) = head_norm {
            let hd = norm.head_dim as usize;
            if hd == 0 || y.len() % hd != 0 {
                return Err(self.err("head norm tile is not whole heads"));
            }
            let w = self.read(norm.weight, 0, hd)?;
            let mut normed = vec![0.0; y.len()];
            kernels::head_rms_norm(&y, hd, w, norm.eps, &mut normed);
            y = normed;
        }
        if let Some(rope) = rope {
            let hd = rope.head_dim as usize;
            if hd == 0 || hd % 2 != 0 {
                return Err(self.err("rope head_dim is not even and positive"));
            }
            let inv_freq = rope.inv_freq();
            match head_part {
                None if y.len() % hd != 0 => {
                    return Err(self.err("rope tile is not whole heads of even size"))
                }
                None => kernels::rope(&mut y, hd, &inv_freq, pos),
                // The local pairs (i, i + rows / 2) are the head's (part * hl + i, + hd / 2),
                // with those frequencies (`check_head_part` made rows * parts = hd).
                Some(p) => {
                    let hl = y.len() / 2;
                    let at = p.part as usize * hl;
                    let freqs = inv_freq
                        .get(at..at + hl)
                        .ok_or_else(|| self.err("a head part's rope pairs are outside the head"))?;
                    kernels::rope(&mut y, 2 * hl, freqs, pos);
                }
            }
        }
        Ok((y, pos))
    }

    fn run(&mut self, op: &TaskOp) -> Result<(), ExecError> {
        match *op {
            TaskOp::Copy { src, dst } => {
                if src.len != dst.len
                    || src.offset % ELEM != 0
                    || dst.offset % ELEM != 0
                    || src.len % ELEM != 0
                {
                    return Err(self.err("copy regions differ in length or are not word aligned"));
                }
                let n = (src.len / ELEM) as usize;
                let data = self.read(src.buffer, (src.offset / ELEM) as usize, n)?.to_vec();
                self.write(dst.buffer, (dst.offset / ELEM) as usize, &data)
            }
            TaskOp::Zero { dst } => {
                if dst.offset % ELEM != 0 || dst.len % ELEM != 0 {
                    return Err(self.err("the zeroed region is not word aligned"));
                }
                let n = (dst.len / ELEM) as usize;
                self.write(dst.buffer, (dst.offset / ELEM) as usize, &vec![0.0; n])
            }
            TaskOp::Embed { table, hidden, io, out } => {
                let token = io::next_token(self.next(io)?);
                if token as usize >= self.exec.vocab_size {
                    return Err(self.err(format!("token {token} is outside the vocabulary")));
                }
                let h = hidden as usize;
                let row = self.read(table, token as usize * h, h)?.to_vec();
                self.write(io, (io::TOKEN / ELEM) as usize, &[f32::from_bits(token)])?;
                self.store_next(io, 0, Touch::Write)?;
                self.write(out, 0, &row)
            }
            TaskOp::Projection { output, head_part, .. } => {
                let (y, pos) = self.project(op)?;
                // Where each run of the rows goes, relative to the output's first element: all
                // from 0, or a head part's two runs at their head rows.
                let (runs, whole) = match head_part {
                    None => (vec![(0, &y[..])], y.len() as u64),
                    Some(p) => {
                        let rows = y.len() as u32;
                        let [(a, n), (b, _)] = p.ranges(rows);
                        let (lo, hi) = y.split_at(n as usize);
                        (vec![(a as usize, lo), (b as usize, hi)], p.head_dim(rows))
                    }
                };
                for (at, y) in runs {
                    match output {
                        ProjOutput::Store { buffer, offset } => {
                            self.write(buffer, offset as usize + at, y)?
                        }
                        ProjOutput::Accumulate { buffer, offset } => {
                            let old = self.read(buffer, offset as usize + at, y.len())?;
                            let sum: Vec<f32> = old.iter().zip(y).map(|(a, b)| a + b).collect();
                            self.write(buffer, offset as usize + at, &sum)?
                        }
                        ProjOutput::AccumulateCopy { buffer, offset, copy } => {
                            let old = self.read(buffer, offset as usize + at, y.len())?;
                            let sum: Vec<f32> = old.iter().zip(y).map(|(a, b)| a + b).collect();
                            self.write(buffer, offset as usize + at, &sum)?;
                            self.write(copy, offset as usize + at, &sum)?
                        }
                        ProjOutput::CacheRow { cache, kv_head, head_dim, max_positions } => {
                            if pos >= max_positions as usize {
                                return Err(self.err(format!(
                                    "position {pos} is past the cache's {max_positions} positions"
                                )));
                            }
                            if whole != u64::from(head_dim) {
                                return Err(
                                    self.err("a cache row task must compute exactly one head")
                                );
                            }
                            let hd = head_dim as usize;
                            let first = (kv_head as usize * max_positions as usize + pos) * hd;
                            self.write(cache, first + at, y)?
                        }
                    }
                }
                Ok(())
            }
            TaskOp::GatedUp { input, gate, up, first_row, rows, cols, out } => {
                let x = self.input(&input)?;
                let g = self.rows(gate, first_row, rows, cols, &x, None)?;
                let u = self.rows(up, first_row, rows, cols, &x, None)?;
                let mut y = vec![0.0; g.len()];
                kernels::silu_mul(&g, &u, &mut y);
                self.write(out, first_row as usize, &y)
            }
            TaskOp::GatedMlp {
                input,
                gate,
                up,
                down,
                first_row,
                rows,
                cols,
                inter,
                out,
                carry,
            } => {
                let x = self.input(&input)?;
                let g = self.rows(gate, first_row, rows, cols, &x, None)?;
                let u = self.rows(up, first_row, rows, cols, &x, None)?;
                let mut a = vec![0.0; g.len()];
                kernels::silu_mul(&g, &u, &mut a);
                let (f, r, c, m) =
                    (first_row as usize, rows as usize, cols as usize, inter as usize);
                if c == 0 || f + r > m {
                    return Err(self.err(format!(
                        "rows {f}..{} are not columns of a down projection with {m} columns",
                        f + r
                    )));
                }
                let mut y = self.column_block(down, c, m, f, &a)?;
                if let Some(Carry { first, len }) = carry {
                    let (cf, cl) = (first as usize, len as usize);
                    let Some(buffer) = input.elements().filter(|_| cf + cl <= c) else {
                        return Err(self.err(format!(
                            "its carry (elements {cf}..{}) is not inside an element input of \
                             {c} columns",
                            cf + cl
                        )));
                    };
                    for (v, x) in y[cf..cf + cl].iter_mut().zip(self.read(buffer, cf, cl)?) {
                        *v += x;
                    }
                }
                self.add(out, 0, &y)
            }
            TaskOp::QueryAttention { head, head_dim, part, parts, out, q_out, .. } => {
                let projection =
                    op.query_projection().ok_or_else(|| self.err("not a query attention"))?;
                let (q, _) = self.project(&projection)?;
                if let Some(q_out) = q_out {
                    self.write(q_out, (head * head_dim) as usize, &q)?;
                }
                let o = self.attention_partial(op, Some(&q), part, parts)?;
                let at = attn_partial_index(head, part, parts, head_dim) as usize;
                self.write(out, at, &o)
            }
            TaskOp::HeadOut {
                bias,
                partials,
                head,
                head_dim,
                parts,
                first,
                dims,
                weight,
                cols,
                weight_cols,
                out,
                mirror,
            } => {
                let hd = head_dim as usize;
                let per_head = parts as usize * attn_partial_len(head_dim) as usize;
                let p = self.read(partials, head as usize * per_head, per_head)?;
                let mut o = vec![0.0; hd];
                kernels::combine_attn_partials(p, hd, &mut o);
                let (c, wc, f, n) =
                    (cols as usize, weight_cols as usize, first as usize, dims as usize);
                let c0 = head as usize * hd + f;
                if c == 0 || f + n > hd || c0 + n > wc {
                    return Err(self.err(format!(
                        "dimensions {f}..{} of head {head} are not columns of an output \
                         projection with {wc} columns and heads of {hd}",
                        f + n
                    )));
                }
                let mut y = self.column_block(weight, c, wc, c0, &o[f..f + n])?;
                if let Some(b) = bias {
                    for (v, b) in y.iter_mut().zip(self.read(b, 0, c)?) {
                        *v += b;
                    }
                }
                for out in std::iter::once(out).chain(mirror) {
                    self.add(out, 0, &y)?;
                }
                Ok(())
            }
            TaskOp::AppendKv { kv, kv_heads, head_dim, max_positions, k_cache, v_cache, io } => {
                let pos = self.position(io)?;
                if pos >= max_positions as usize {
                    return Err(self.err(format!(
                        "position {pos} is past the cache's {max_positions} positions"
                    )));
                }
                let (hd, n) = (head_dim as usize, kv_heads as usize);
                let rows = self.read(kv, 0, 2 * n * hd)?.to_vec();
                for (g, row) in rows.chunks_exact(hd).enumerate() {
                    let (cache, head) = if g < n { (k_cache, g) } else { (v_cache, g - n) };
                    self.write(cache, (head * max_positions as usize + pos) * hd, row)?;
                }
                Ok(())
            }
            TaskOp::Attention { head, head_dim, part, parts, out, .. } => {
                let o = self.attention_partial(op, None, part, parts)?;
                let at = attn_partial_index(head, part, parts, head_dim) as usize;
                self.write(out, at, &o)
            }
            TaskOp::AttentionOut { head, head_dim, weight, cols, weight_cols, outs, .. } => {
                let partial = self.attention_partial(op, None, 0, 1)?;
                let hd = head_dim as usize;
                let mut o = vec![0.0; hd];
                kernels::combine_attn_partials(&partial, hd, &mut o);
                let (c, wc, first) = (cols as usize, weight_cols as usize, head as usize * hd);
                if c == 0 || first + hd > wc {
                    return Err(self.err(format!(
                        "head {head} is not columns of an output projection with {wc} columns"
                    )));
                }
                let y = self.column_block(weight, c, wc, first, &o)?;
                for out in outs {
                    self.add(out, 0, &y)?;
                }
                Ok(())
            }
            TaskOp::HeadArgmax { input, weight, first_row, rows, cols, logits, io, advance } => {
                let x = self.input(&input)?;
                let y = self.rows(weight, first_row, rows, cols, &x, None)?;
                self.write(logits, first_row as usize, &y)?;
                // The device's atomic max: the packed maximum of the rows (first on ties).
                let best = y
                    .iter()
                    .enumerate()
                    .filter_map(|(i, &v)| io::pack_max(v, first_row + i as u32))
                    .max();
                if let Some(best) = best {
                    self.check(Touch::Add, io, NEXT_AT, 2)?;
                    let held = unpack_next(&self.exec.mem[io.index()][NEXT_AT..]);
                    self.store_next(io, held.max(best), Touch::Add)?;
                }
                if advance {
                    let pos = self.position(io)?;
                    self.write(
                        io,
                        (io::POSITION / ELEM) as usize,
                        &[f32::from_bits(pos as u32 + 1)],
                    )?;
                }
                Ok(())
            }
            TaskOp::RmsNorm { input, len, weight, eps, out } => {
                let y = self.input(&ProjInput::RmsNormed { buffer: input, len, weight, eps })?;
                self.write(out, 0, &y)
            }
        }
    }
}

impl Backend for ScheduleExecutor {
    fn name(&self) -> &'static str {
        "cpu-schedule"
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn reset(&mut self) {
        // Nothing to clear: attention reads only cache rows written for the current sequence.
    }

    fn step(&mut self, token: u32, position: usize) -> Result<u32, RuntimeError> {
        crate::check_step(token, position, self.vocab_size, self.max_positions)?;
        let words = &mut self.mem[self.io.index()];
        words[(io::POSITION / ELEM) as usize] = f32::from_bits(position as u32);
        words[NEXT_AT..NEXT_AT + 2].copy_from_slice(&pack_next(io::pack_input(token)));
        let policy = self.next_policy();
        self.launch(policy)?;
        Ok(io::next_token(self.next_word()))
    }

    fn logits(&self) -> Option<&[f32]> {
        self.logits.map(|b| self.mem[b.index()].as_slice())
    }
}
