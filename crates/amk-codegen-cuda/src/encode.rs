//! The encoder: a schedule to the device tables of `kernels/abi.cuh`, checking every number.
//!
//! It works on a plain `&Schedule` so unit tests can feed it broken schedules (the public
//! entry point, [`crate::generate`], only accepts verified ones). Checks, in order: the
//! schedule's sizes (ids fit their words), buffers (device sizes), counters (per-launch
//! signals), instructions (ids in range), then each task: its op's fields (ids in range,
//! ABI rules, every index the device computes fits 32 bits), then its op's footprint
//! ([`TaskOp::footprint`]) against its declared regions.

use crate::abi::{self, word};
use crate::error::{Access, CodegenError, Problem};
use crate::{DeviceTables, Int8Matrix, Transposed, WeightDType};
use amk_schedule::ops::{CurrentRow, ProjInput, ProjOutput, TaskOp, ELEM};
use amk_schedule::schedule::{BufferId, BufferKind, CounterReset, Instr, Region, Schedule, Task};

/// The tables plus the numbers the source prologue needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Encoded {
    pub tables: DeviceTables,
    /// Largest projection input length (elements).
    pub max_cols: u32,
    /// Largest head dimension of any rope, head norm, cache row or attention task.
    pub max_head_dim: u32,
    /// Most rows of a fused MLP task (0 without one): it keeps their activations in shared
    /// memory beside its input.
    pub max_mlp_rows: u32,
    /// Weight-tile bytes of every task that has one (the candidates for staging).
    pub stage_tiles: Vec<u64>,
    /// Whether any task is a query attention or combines a current row (the kernel compiles
    /// that code only then).
    pub query_attention: bool,
    /// Whether any buffer is tagged, an attention reads its current row from its own buffer
    /// or a task appends to the caches (the kernel compiles that code only then).
    pub tagged: bool,
    /// Whether any projection is a head part of more than one (the kernel compiles that code
    /// only then).
    pub head_parts: bool,
    /// Whether some matrix the tasks read is not in the build's format (a per-op precision
    /// plan): the kernel then compiles each task function for its tasks' formats.
    pub mixed: bool,
    /// In a mixed kernel, the formats each task function's tasks hold their matrices in
    /// (the `AMK_FMTS_*` defines' order; bit 0 bf16, bit 1 int8), else all 0.
    pub kind_formats: [u8; crate::source::FORMAT_KINDS],
    /// The most words one worker's instructions and descriptors take
    /// (`INSTR_WORDS * instructions + TASK_WORDS * runs`): the kernel copies them into shared
    /// memory when it starts.
    pub max_worker_words: u32,
}

const U32_MAX: u64 = u32::MAX as u64;
/// How many ids an instruction word can carry.
const ID_LIMIT: u64 = abi::ID_MASK as u64 + 1;

/// Instruction word 0, or `None` if `id` does not fit the id bits.
pub(crate) fn instr_word(op: u32, id: u32) -> Option<u32> {
    (id <= abi::ID_MASK && op < (1 << (32 - abi::OP_SHIFT))).then_some(op << abi::OP_SHIFT | id)
}

/// Encodes `s` for weights held as `dtype`.
pub(crate) fn encode(s: &Schedule, dtype: WeightDType) -> Result<Encoded, CodegenError> {
    schedule_limits(s)?;
    let cols = matrix_cols(s);
    let formats = formats(s, dtype, &cols)?;
    let int8_matrices = int8_matrices(s, dtype, &cols, &formats)?;
    let buffer_bytes = buffers(s, &formats, &int8_matrices)?;
    let transposed = transposed(s)?;
    let per_launch = counters(s)?;
    let (program, worker_start) = program(s)?;
    let mut by_id = Vec::with_capacity(s.tasks.len());
    let mut stats = Stats::default();
    for (i, task) in s.tasks.iter().enumerate() {
        let ctx =
            TaskCtx { s, id: i as u32, name: &task.name, formats: &formats, int8: &int8_matrices };
        let words = ctx.encode(&task.op, &mut stats)?;
        ctx.check_footprint(&task.op, task)?;
        by_id.push(words);
    }
    let (tasks, run_start, max_worker_words) = run_order(s, &by_id)?;
    // Mixed: some matrix a task reads is not in the build's format (the kernel's vectors and
    // default instances follow the build's), so each task function is compiled for its tasks'
    // formats. That includes a plan that moves every matrix away from the build's format.
    let mixed = dtype != WeightDType::F32
        && cols.iter().zip(&formats).any(|(c, &f)| c.is_some() && f != dtype);
    let kind_formats = if mixed { kind_formats(s, &formats) } else { Default::default() };
    Ok(Encoded {
        tables: DeviceTables {
            program,
            worker_start,
            tasks,
            run_start,
            per_launch,
            buffer_bytes,
            int8_matrices,
            formats,
            transposed,
        },
        max_cols: stats.max_cols,
        max_head_dim: stats.max_head_dim,
        max_mlp_rows: stats.max_mlp_rows,
        stage_tiles: stats.stage_tiles,
        query_attention: stats.query_attention,
        tagged: stats.current_rows || s.buffers.iter().any(|b| b.kind == BufferKind::Tagged),
        head_parts: stats.head_parts,
        mixed,
        kind_formats,
        max_worker_words,
    })
}

/// The formats each task function's tasks hold their matrices in (the `AMK_FMTS_*` defines'
/// order; bit 0 bf16, bit 1 int8). The encoder has checked every id and that a task's
/// matrices share one format, so its first matrix stands for the task.
fn kind_formats(s: &Schedule, formats: &[WeightDType]) -> [u8; crate::source::FORMAT_KINDS] {
    let mut out = [0u8; crate::source::FORMAT_KINDS];
    for task in &s.tasks {
        let (kind, matrix) = match task.op {
            TaskOp::Projection { weight, .. } => (0, weight),
            TaskOp::GatedUp { gate, .. } | TaskOp::GatedMlp { gate, .. } => (1, gate),
            TaskOp::HeadOut { weight, .. } => (2, weight),
            TaskOp::AttentionOut { weight, .. } => (3, weight),
            TaskOp::QueryAttention { weight, .. } => (4, weight),
            TaskOp::HeadArgmax { weight, .. } => (5, weight),
            TaskOp::Embed { table, .. } => (6, table),
            _ => continue,
        };
        out[kind] |= match formats.get(matrix.index()) {
            Some(WeightDType::Int8) => 2,
            _ => 1,
        };
    }
    out
}

/// The descriptors in run order (each worker's `Run`s in program order, workers in order),
/// each worker's first descriptor (plus the end), and the most words one worker's
/// instructions and descriptors take. A worker's descriptors are contiguous so the kernel
/// copies them into shared memory in one coalesced pass; `Run`'s word 1 indexes them.
fn run_order(
    s: &Schedule,
    by_id: &[[u32; abi::TASK_WORDS]],
) -> Result<(Vec<u32>, Vec<u32>, u32), CodegenError> {
    let runs: u64 =
        s.workers.iter().flat_map(|w| &w.instrs).filter(|i| matches!(i, Instr::Run(_))).count()
            as u64;
    let words = runs * abi::TASK_WORDS as u64;
    if words > U32_MAX {
        return Err(schedule_err(
            "workers",
            Problem::TooLarge { what: "descriptor words", value: words as u128, max: U32_MAX },
        ));
    }
    let mut tasks = Vec::with_capacity(words as usize);
    let mut run_start = Vec::with_capacity(s.workers.len() + 1);
    let mut max_words = 0u64;
    for worker in &s.workers {
        let first = tasks.len() / abi::TASK_WORDS;
        run_start.push(first as u32);
        for instr in &worker.instrs {
            if let Instr::Run(t) = instr {
                // Ids were checked against the task count by `program`.
                tasks.extend_from_slice(&by_id[t.index()]);
            }
        }
        let n = (tasks.len() / abi::TASK_WORDS - first) as u64;
        let own = (abi::INSTR_WORDS * worker.instrs.len()) as u64 + n * abi::TASK_WORDS as u64;
        max_words = max_words.max(own);
    }
    run_start.push((tasks.len() / abi::TASK_WORDS) as u32);
    let max_words = u32::try_from(max_words).map_err(|_| {
        schedule_err(
            "workers",
            Problem::TooLarge {
                what: "words of one worker's program",
                value: max_words.into(),
                max: U32_MAX,
            },
        )
    })?;
    Ok((tasks, run_start, max_words))
}

#[derive(Default)]
struct Stats {
    max_cols: u32,
    max_head_dim: u32,
    max_mlp_rows: u32,
    /// Weight-tile bytes (device dtype) of every projection, gated-up and LM-head task.
    stage_tiles: Vec<u64>,
    query_attention: bool,
    /// Whether an attention reads its current row from its own buffer or a task appends
    /// rows to the caches (code compiled with the tagged code).
    current_rows: bool,
    /// Whether a projection is a head part of more than one.
    head_parts: bool,
}

fn schedule_err(field: &'static str, problem: Problem) -> CodegenError {
    CodegenError::Schedule { field, problem }
}

fn schedule_limits(s: &Schedule) -> Result<(), CodegenError> {
    if s.workers.is_empty() {
        return Err(schedule_err(
            "workers",
            Problem::Rule("a launch needs at least one worker (block)".into()),
        ));
    }
    if s.workers.len() as u64 > U32_MAX {
        let value = s.workers.len() as u128;
        return Err(schedule_err(
            "workers",
            Problem::TooLarge { what: "workers", value, max: U32_MAX },
        ));
    }
    for (field, count) in [("tasks", s.tasks.len()), ("counters", s.counters.len())] {
        if count as u64 > ID_LIMIT {
            return Err(schedule_err(
                field,
                Problem::IdTooWide { id: count as u64 - 1, max: ID_LIMIT - 1 },
            ));
        }
    }
    // Buffer ids must stay below AMK_NONE, which means "no buffer".
    if s.buffers.len() as u64 > abi::NONE as u64 {
        return Err(schedule_err(
            "buffers",
            Problem::TooLarge {
                what: "buffer count",
                value: s.buffers.len() as u128,
                max: abi::NONE as u64,
            },
        ));
    }
    Ok(())
}

/// A buffer's row length as the tasks read it as a matrix: `None` if none does, else the
/// first use's columns and, if another use disagrees, its columns.
type MatrixCols = Option<(u32, Option<u32>)>;

/// Every buffer a projection, gate/up, LM-head or embedding task reads as a matrix, with the
/// row length of its uses.
fn matrix_cols(s: &Schedule) -> Vec<MatrixCols> {
    let mut cols: Vec<MatrixCols> = vec![None; s.buffers.len()];
    for task in &s.tasks {
        let uses: Vec<(BufferId, u32)> = match task.op {
            TaskOp::Embed { table, hidden, .. } => vec![(table, hidden)],
            TaskOp::Projection { weight, cols, .. } | TaskOp::HeadArgmax { weight, cols, .. } => {
                vec![(weight, cols)]
            }
            TaskOp::GatedUp { gate, up, cols, .. } => vec![(gate, cols), (up, cols)],
            // The down weight keeps its checkpoint rows' scales (see `transposed`).
            TaskOp::GatedMlp { gate, up, down, cols, inter, .. } => {
                vec![(gate, cols), (up, cols), (down, inter)]
            }
            TaskOp::AttentionOut { weight, weight_cols, .. } => vec![(weight, weight_cols)],
            TaskOp::QueryAttention { weight, cols, .. } => vec![(weight, cols)],
            TaskOp::HeadOut { weight, weight_cols, .. } => vec![(weight, weight_cols)],
            _ => Vec::new(),
        };
        for (b, c) in uses {
            // Out-of-range ids are reported by the task encoder with their field.
            if let Some(slot) = cols.get_mut(b.index()) {
                match *slot {
                    Some((prev, None)) if prev != c => *slot = Some((prev, Some(c))),
                    Some(_) => {}
                    None => *slot = Some((c, None)),
                }
            }
        }
    }
    cols
}

/// The format the device holds each buffer in (see [`crate::DeviceTables::formats`]). A
/// buffer's own format (a per-op precision plan) is for the weight matrices the tasks read;
/// on anything else it is refused.
fn formats(
    s: &Schedule,
    dtype: WeightDType,
    cols: &[MatrixCols],
) -> Result<Vec<WeightDType>, CodegenError> {
    s.buffers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let matrix = cols[i].is_some();
            if b.format.is_some() && !(b.kind == BufferKind::Weight && matrix) {
                return Err(buffer_rule(
                    s,
                    BufferId(i as u32),
                    "format",
                    "is given, but only weight matrices that tasks read take a format of their \
                     own; remove it"
                        .into(),
                ));
            }
            Ok(match b.kind {
                BufferKind::Weight => dtype.weight_format(matrix, b.format),
                _ => WeightDType::F32,
            })
        })
        .collect()
}

/// The layout of each int8 matrix: the columns all its uses agree on (a conflict, a buffer
/// that is not a weight, or a size that is not whole rows is refused, naming the buffer).
fn int8_matrices(
    s: &Schedule,
    dtype: WeightDType,
    cols: &[MatrixCols],
    formats: &[WeightDType],
) -> Result<Vec<Option<Int8Matrix>>, CodegenError> {
    cols.iter()
        .zip(formats)
        .enumerate()
        .map(|(i, (c, &format))| {
            let b = &s.buffers[i];
            let id = BufferId(i as u32);
            let Some((cols, other)) = *c else { return Ok(None) };
            // Activations read as a matrix have no scales: an int8 build refuses them.
            let int8 = format == WeightDType::Int8
                || (dtype == WeightDType::Int8 && b.kind != BufferKind::Weight);
            if !int8 {
                return Ok(None);
            }
            if let Some(c) = other {
                return Err(buffer_rule(
                    s,
                    id,
                    "cols",
                    format!(
                        "read as a matrix of {cols} columns and of {c} columns; an int8 matrix \
                         has one row length"
                    ),
                ));
            }
            if b.kind != BufferKind::Weight {
                return Err(buffer_rule(
                    s,
                    id,
                    "kind",
                    "read as an int8 matrix but not a weight".into(),
                ));
            }
            let n = b.bytes / ELEM;
            if cols == 0 || b.bytes % ELEM != 0 || n % u64::from(cols) != 0 {
                return Err(buffer_rule(
                    s,
                    id,
                    "bytes",
                    format!("{} bytes are not whole rows of {cols} f32 columns", b.bytes),
                ));
            }
            let scales_offset = n.div_ceil(16) * 16;
            let m = Int8Matrix { rows: n / u64::from(cols), cols, scales_offset };
            if m.bytes() > U32_MAX {
                return Err(CodegenError::Buffer {
                    buffer: b.name.clone(),
                    id: i as u32,
                    field: "bytes",
                    problem: Problem::TooLarge {
                        what: "int8 matrix bytes (scale offsets are 32-bit words)",
                        value: u128::from(m.bytes()),
                        max: U32_MAX,
                    },
                });
            }
            Ok(Some(m))
        })
        .collect()
}

/// The weights the device holds transposed: every fused MLP's down projection and fused
/// attention's output projection, whose tasks read a block of their columns (contiguous once
/// transposed). Such a buffer must be exactly the matrix's elements, and no other task may
/// read it as a row-major matrix or copy it.
fn transposed(s: &Schedule) -> Result<Vec<Option<Transposed>>, CodegenError> {
    let mut out: Vec<Option<Transposed>> = vec![None; s.buffers.len()];
    for task in &s.tasks {
        let (b, t) = match task.op {
            TaskOp::GatedMlp { down, cols, inter, .. } => {
                (down, Transposed { rows: cols, cols: inter })
            }
            TaskOp::AttentionOut { weight, cols, weight_cols, .. }
            | TaskOp::HeadOut { weight, cols, weight_cols, .. } => {
                (weight, Transposed { rows: cols, cols: weight_cols })
            }
            _ => continue,
        };
        let Some(buffer) = s.buffers.get(b.index()) else { continue };
        let f32_bytes = u64::from(t.rows) * u64::from(t.cols) * ELEM;
        if buffer.bytes != f32_bytes {
            return Err(buffer_rule(
                s,
                b,
                "bytes",
                format!(
                    "{} bytes, but task `{}` reads it as a [{}, {}] matrix held transposed \
                     ({f32_bytes} bytes as f32)",
                    buffer.bytes, task.name, t.rows, t.cols
                ),
            ));
        }
        match out[b.index()] {
            Some(prev) if prev != t => {
                return Err(buffer_rule(
                    s,
                    b,
                    "cols",
                    format!(
                        "read as a [{}, {}] and as a [{}, {}] matrix held transposed; the device \
                         holds it in one shape",
                        prev.rows, prev.cols, t.rows, t.cols
                    ),
                ))
            }
            _ => out[b.index()] = Some(t),
        }
    }
    for task in &s.tasks {
        let row_major: Vec<BufferId> = match task.op {
            TaskOp::Embed { table, .. } => vec![table],
            TaskOp::Projection { weight, .. }
            | TaskOp::HeadArgmax { weight, .. }
            | TaskOp::QueryAttention { weight, .. } => vec![weight],
            TaskOp::GatedUp { gate, up, .. } | TaskOp::GatedMlp { gate, up, .. } => {
                vec![gate, up]
            }
            TaskOp::Copy { src, dst } => vec![src.buffer, dst.buffer],
            _ => Vec::new(),
        };
        for b in row_major {
            if out.get(b.index()).copied().flatten().is_some() {
                return Err(buffer_rule(
                    s,
                    b,
                    "kind",
                    format!(
                        "task `{}` reads it in its checkpoint layout, but a fused MLP, a fused \
                         attention or a head-split output projection reads it too, and the \
                         device holds it transposed for them",
                        task.name
                    ),
                ));
            }
        }
    }
    Ok(out)
}

fn buffer_rule(s: &Schedule, id: BufferId, field: &'static str, rule: String) -> CodegenError {
    CodegenError::Buffer {
        buffer: s.buffers.get(id.index()).map_or_else(String::new, |b| b.name.clone()),
        id: id.0,
        field,
        problem: Problem::Rule(rule),
    }
}

/// Bytes of each buffer as the device holds it (weights scaled to their format).
fn buffers(
    s: &Schedule,
    formats: &[WeightDType],
    int8: &[Option<Int8Matrix>],
) -> Result<Vec<u64>, CodegenError> {
    s.buffers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if b.kind == BufferKind::Tagged {
                // A launch tag beside every 4-byte value.
                return b.bytes.checked_mul(2).ok_or_else(|| {
                    buffer_rule(s, BufferId(i as u32), "bytes", "is too large to tag".into())
                });
            }
            if b.kind != BufferKind::Weight {
                return Ok(b.bytes);
            }
            match formats[i] {
                WeightDType::F32 => Ok(b.bytes),
                // Matrices as int8 rows plus scales.
                WeightDType::Int8 => Ok(int8[i].map_or(b.bytes, |m| m.bytes())),
                WeightDType::BF16 if b.bytes % ELEM == 0 => Ok(b.bytes / 2),
                WeightDType::BF16 => Err(CodegenError::Buffer {
                    buffer: b.name.clone(),
                    id: i as u32,
                    field: "bytes",
                    problem: Problem::NotMultiple {
                        what: "bytes of a weight buffer (described as f32 elements)",
                        value: b.bytes,
                        multiple: ELEM,
                    },
                }),
            }
        })
        .collect()
}

/// Signals per launch of each counter, checked against the program (defense in depth: an
/// epoch counter that receives a different number of signals breaks every later launch).
fn counters(s: &Schedule) -> Result<Vec<u32>, CodegenError> {
    let signals = s.signal_counts();
    s.counters
        .iter()
        .enumerate()
        .map(|(i, c)| match c.reset {
            CounterReset::Zeroed | CounterReset::Never => Ok(0),
            CounterReset::Epoch { signals_per_launch } => {
                let actual = signals.get(i).copied().unwrap_or(0);
                if actual == u64::from(signals_per_launch) {
                    Ok(signals_per_launch)
                } else {
                    Err(CodegenError::Counter {
                        counter: c.name.clone(),
                        id: i as u32,
                        field: "reset.signals_per_launch",
                        problem: Problem::Rule(format!(
                            "declares {signals_per_launch} signals per launch, but the workers \
                             signal it {actual} times per launch"
                        )),
                    })
                }
            }
        })
        .collect()
}

/// The instruction table and each worker's first instruction (plus the end).
fn program(s: &Schedule) -> Result<(Vec<u32>, Vec<u32>), CodegenError> {
    let total: u64 = s.workers.iter().map(|w| w.instrs.len() as u64).sum();
    if total > U32_MAX {
        return Err(schedule_err(
            "workers",
            Problem::TooLarge { what: "instructions", value: total as u128, max: U32_MAX },
        ));
    }
    let mut program = Vec::with_capacity(total as usize * abi::INSTR_WORDS);
    let mut worker_start = Vec::with_capacity(s.workers.len() + 1);
    for (w, worker) in s.workers.iter().enumerate() {
        worker_start.push((program.len() / abi::INSTR_WORDS) as u32);
        let mut runs = 0u32;
        for (index, instr) in worker.instrs.iter().enumerate() {
            let err = |field, problem| CodegenError::Instr { worker: w, index, field, problem };
            let (op, field, kind, id, count, threshold) = match *instr {
                Instr::Run(t) => {
                    runs += 1;
                    (abi::OP_RUN, "task", "task", t.0, s.tasks.len(), runs - 1)
                }
                Instr::Signal(c) => {
                    (abi::OP_SIGNAL, "counter", "counter", c.0, s.counters.len(), 0)
                }
                Instr::Wait { counter, at_least } => {
                    (abi::OP_WAIT, "counter", "counter", counter.0, s.counters.len(), at_least)
                }
            };
            if id as usize >= count {
                let problem = Problem::OutOfRange { kind, id: id.into(), count: count as u64 };
                return Err(err(field, problem));
            }
            let word0 = instr_word(op, id).ok_or_else(|| {
                err(field, Problem::IdTooWide { id: id.into(), max: ID_LIMIT - 1 })
            })?;
            program.push(word0);
            program.push(threshold);
        }
    }
    worker_start.push((program.len() / abi::INSTR_WORDS) as u32);
    Ok((program, worker_start))
}

/// One task being encoded: names it in every error.
struct TaskCtx<'a> {
    s: &'a Schedule,
    id: u32,
    name: &'a str,
    /// The device format of each buffer.
    formats: &'a [WeightDType],
    /// Int8 matrix layouts by buffer (`None` for every other buffer).
    int8: &'a [Option<Int8Matrix>],
}

type Words = [u32; abi::TASK_WORDS];

impl TaskCtx<'_> {
    fn err(&self, field: &'static str, problem: Problem) -> CodegenError {
        CodegenError::Task { task: self.name.to_string(), id: self.id, field, problem }
    }

    fn rule(&self, field: &'static str, message: String) -> CodegenError {
        self.err(field, Problem::Rule(message))
    }

    /// The buffer id, if it names a buffer.
    fn buf(&self, field: &'static str, b: BufferId) -> Result<u32, CodegenError> {
        if b.index() < self.s.buffers.len() {
            Ok(b.0)
        } else {
            let count = self.s.buffers.len() as u64;
            Err(self.err(field, Problem::OutOfRange { kind: "buffer", id: b.0.into(), count }))
        }
    }

    /// `value`, if it fits a 32-bit word.
    fn fit(
        &self,
        field: &'static str,
        what: &'static str,
        value: u128,
    ) -> Result<u32, CodegenError> {
        u32::try_from(value)
            .map_err(|_| self.err(field, Problem::TooLarge { what, value, max: U32_MAX }))
    }

    fn multiple(
        &self,
        field: &'static str,
        what: &'static str,
        value: u64,
        of: u64,
    ) -> Result<(), CodegenError> {
        if value % of == 0 {
            Ok(())
        } else {
            Err(self.err(field, Problem::NotMultiple { what, value, multiple: of }))
        }
    }

    /// Checks a copy's or zero's byte region (its fields named as given): whole words, and an
    /// end that fits the 32-bit byte offsets the kernel takes.
    fn word_region(
        &self,
        (offset_field, len_field): (&'static str, &'static str),
        region: Region,
    ) -> Result<(), CodegenError> {
        self.multiple(offset_field, "byte offset", region.offset, ELEM)?;
        self.multiple(len_field, "byte length", region.len, ELEM)?;
        let end = u128::from(region.offset) + u128::from(region.len);
        self.fit(len_field, "offset + len bytes", end).map(|_| ())
    }

    /// Whether `b` names a tagged buffer.
    fn tagged(&self, b: BufferId) -> bool {
        self.s.buffers.get(b.index()).is_some_and(|b| b.kind == BufferKind::Tagged)
    }

    /// Refuses every footprint region of `op` in a tagged buffer except those of `allowed`
    /// (the operands the kernel reads or stores with tags): anything else would read a
    /// tagged buffer as plain words, or add to one.
    fn tagged_operands(&self, op: &TaskOp, allowed: &[BufferId]) -> Result<(), CodegenError> {
        let f = op.footprint(|b| self.s.buffers.get(b.index()).map_or(0, |b| b.bytes));
        for (access, regions) in
            [(Access::Read, f.reads), (Access::Write, f.writes), (Access::Add, f.adds)]
        {
            for r in regions {
                if self.tagged(r.buffer) && !(access != Access::Add && allowed.contains(&r.buffer))
                {
                    let name = &self.s.buffers[r.buffer.index()].name;
                    return Err(self.rule(
                        field_of(op, r.buffer, access),
                        format!(
                            "is tagged buffer `{name}`, which this operand cannot {}: tagged \
                             buffers take only stored projection rows, an attention's query and \
                             current row, and an append's rows",
                            match access {
                                Access::Read => "read",
                                Access::Write => "write",
                                Access::Add => "add to",
                            }
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Bytes of one element of weight matrix `b` on the device (weight tiles are counted in
    /// them; ids out of range are refused by the encoder with their field).
    fn es(&self, b: BufferId) -> u64 {
        self.formats.get(b.index()).map_or(4, |f| f.bytes())
    }

    /// Refuses a task whose matrices the device holds in different formats: the kernel picks
    /// one format per task.
    fn one_format(&self, operands: &[(&'static str, BufferId)]) -> Result<(), CodegenError> {
        let (first_field, first) = operands[0];
        let f0 = self.formats.get(first.index()).copied();
        for &(field, b) in &operands[1..] {
            let f = self.formats.get(b.index()).copied();
            if f != f0 {
                let show = |f: Option<WeightDType>| f.map_or("?", |f| f.as_str());
                return Err(self.rule(
                    field,
                    format!(
                        "is held as {} but `{first_field}` as {}: a task's matrices share one \
                         format (give them the same precision)",
                        show(f),
                        show(f0)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The scales word of a matrix operand: its scales' byte offset for int8 weights, else 0
    /// (checked to fit a word when the layout was made).
    fn scales(&self, b: BufferId) -> u32 {
        self.int8.get(b.index()).copied().flatten().map_or(0, |m| m.scales_offset as u32)
    }

    fn positive(&self, field: &'static str, value: u32) -> Result<(), CodegenError> {
        if value == 0 {
            Err(self.rule(field, "must be at least 1".into()))
        } else {
            Ok(())
        }
    }

    /// Words 1..=5: a projection input, whose length must equal the op's columns.
    fn input(
        &self,
        input: &ProjInput,
        cols: u32,
        w: &mut Words,
        stats: &mut Stats,
    ) -> Result<(), CodegenError> {
        let len = match *input {
            ProjInput::Vector { buffer, len } => {
                w[word::input::KIND] = abi::IN_VECTOR;
                w[word::input::BUFFER] = self.buf("input.buffer", buffer)?;
                w[word::input::NORM_WEIGHT] = abi::NONE;
                w[word::input::EPS] = 0;
                len
            }
            ProjInput::RmsNormed { buffer, len, weight, eps } => {
                w[word::input::KIND] = abi::IN_RMSNORM;
                w[word::input::BUFFER] = self.buf("input.buffer", buffer)?;
                w[word::input::NORM_WEIGHT] = self.buf("input.weight", weight)?;
                w[word::input::EPS] = eps.to_bits();
                len
            }
            ProjInput::AttnPartials { buffer, heads, head_dim, parts, current } => {
                if let Some(c) = current {
                    self.current_row(&c, heads, head_dim, w, stats)?;
                }
                w[word::input::KIND] = abi::IN_ATTN_PARTIALS;
                w[word::input::BUFFER] = self.buf("input.buffer", buffer)?;
                w[word::input::NORM_WEIGHT] = parts;
                w[word::input::EPS] = head_dim;
                self.positive("input.parts", parts)?;
                self.positive("input.head_dim", head_dim)?;
                let end = u128::from(heads) * u128::from(parts) * (u128::from(head_dim) + 2);
                self.fit("input", "heads * parts * (head_dim + 2) elements", end)?;
                heads.checked_mul(head_dim).ok_or_else(|| {
                    self.rule("input.heads", "heads * head_dim overflows 32 bits".into())
                })?
            }
        };
        w[word::input::LEN] = len;
        self.positive("input.len", len)?;
        if len != cols {
            return Err(self.rule(
                "input.len",
                format!("the input has {len} elements but the op has {cols} columns; they must be equal"),
            ));
        }
        stats.max_cols = stats.max_cols.max(len);
        Ok(())
    }

    /// Words 30..=32: the current row of an attention-partials input (all 0 without one; its
    /// `kv_heads` is then 0, which a current row never has).
    fn current_row(
        &self,
        c: &CurrentRow,
        heads: u32,
        head_dim: u32,
        w: &mut Words,
        stats: &mut Stats,
    ) -> Result<(), CodegenError> {
        w[word::input::CURRENT_Q] = self.buf("input.current.q", c.q)?;
        w[word::input::CURRENT_KV] = self.buf("input.current.kv", c.kv)?;
        w[word::input::CURRENT_KV_HEADS] = c.kv_heads;
        stats.query_attention = true;
        if c.kv_head(0, heads).is_none() {
            return Err(self.rule(
                "input.current.kv_heads",
                format!("is {}, which does not divide the {heads} query heads", c.kv_heads),
            ));
        }
        let end = 2 * u128::from(c.kv_heads) * u128::from(head_dim);
        self.fit("input.current.kv_heads", "2 * kv_heads * head_dim elements", end)?;
        stats.max_head_dim = stats.max_head_dim.max(head_dim);
        Ok(())
    }

    /// Checks that rows `first_row..first_row + rows` of a `[*, cols]` matrix are addressable
    /// with 32-bit element indices.
    fn rows(&self, first_row: u32, rows: u32, cols: u32) -> Result<(), CodegenError> {
        let end = u128::from(first_row) + u128::from(rows);
        self.fit("rows", "first_row + rows", end)?;
        self.fit("rows", "(first_row + rows) * cols elements", end * u128::from(cols))?;
        Ok(())
    }

    /// Words 1..=8 and 10..=12 of an attention task (its geometry, window and part), checked.
    /// `base` is 0, or [`word::query_attention::ATTENTION_BASE`] for a query attention.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        op: &TaskOp,
        part: u32,
        parts: u32,
        base: usize,
        words: &mut Words,
        stats: &mut Stats,
    ) -> Result<(), CodegenError> {
        let g =
            op.attn_geometry().ok_or_else(|| self.rule("kind", "not an attention task".into()))?;
        use word::attention::*;
        let w = &mut words[base..];
        if part >= parts {
            return Err(self.rule("part", format!("is {part}, not below parts ({parts})")));
        }
        w[PART] = part;
        w[PARTS] = parts;
        w[WINDOW] = match g.window {
            Some(0) => {
                return Err(self.rule("window", "is 0; a window holds at least one position".into()))
            }
            Some(n) => n,
            None => 0,
        };
        w[Q] = match g.q {
            Some(q) => self.buf("q", q)?,
            None => abi::NONE,
        };
        w[HEAD] = g.head;
        w[KV_HEAD] = g.kv_head;
        w[HEAD_DIM] = g.head_dim;
        w[MAX_POSITIONS] = g.max_positions;
        w[K_CACHE] = self.buf("k_cache", g.k_cache)?;
        w[V_CACHE] = self.buf("v_cache", g.v_cache)?;
        w[IO] = self.buf("io", g.io)?;
        self.positive("head_dim", g.head_dim)?;
        self.positive("max_positions", g.max_positions)?;
        let (head, kv_head, hd) =
            (u128::from(g.head), u128::from(g.kv_head), u128::from(g.head_dim));
        self.fit("head", "(head + 1) * head_dim elements", (head + 1) * hd)?;
        let cache_end = (kv_head + 1) * u128::from(g.max_positions) * hd;
        self.fit("kv_head", "(kv_head + 1) * max_positions * head_dim elements", cache_end)?;
        stats.max_head_dim = stats.max_head_dim.max(g.head_dim);
        Ok(())
    }

    /// Words 1..=29 of a projection (a query attention's too), and 33..=34 of a head part,
    /// checked.
    fn projection(
        &self,
        op: &TaskOp,
        w: &mut Words,
        stats: &mut Stats,
    ) -> Result<(), CodegenError> {
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
            return Err(self.rule("kind", "not a projection".into()));
        };
        use word::projection::*;
        w[word::KIND] = abi::TASK_PROJECTION;
        self.input(&input, cols, w, stats)?;
        w[WEIGHT] = self.buf("weight", weight)?;
        w[WEIGHT_SCALES] = self.scales(weight);
        w[BIAS] = match bias {
            Some(b) => self.buf("bias", b)?,
            None => abi::NONE,
        };
        w[FIRST_ROW] = first_row;
        w[ROWS] = rows;
        w[COLS] = cols;
        // The rows the task's runs span: the whole head's with a head part.
        let span = match head_part {
            Some(p) => {
                op.check_head_part().map_err(|e| self.rule(e.field, e.message))?;
                w[HEAD_PART] = p.part;
                w[HEAD_PARTS] = p.parts;
                stats.head_parts |= p.parts > 1;
                // The kernel keeps the part's rows in its one-head area.
                stats.max_head_dim = stats.max_head_dim.max(rows);
                // `check_head_part` made rows * parts fit 32 bits.
                rows * p.parts
            }
            None => rows,
        };
        self.rows(first_row, span, cols)?;
        if let Some(r) = rope {
            if r.head_dim == 0 || r.head_dim % 2 != 0 {
                return Err(self.rule(
                    "rope.head_dim",
                    format!(
                        "is {}; rotary embedding rotates pairs within a head, so it must \
                         be even and at least 2",
                        r.head_dim
                    ),
                ));
            }
            let hd = u64::from(r.head_dim);
            self.multiple("rows", "rows of a rotated projection (whole heads)", span.into(), hd)?;
            self.multiple(
                "first_row",
                "first row of a rotated projection (whole heads)",
                first_row.into(),
                hd,
            )?;
            if !(r.theta.is_finite() && r.theta > 0.0) {
                return Err(self.rule(
                    "rope.theta",
                    format!("is {}; it must be finite and positive", r.theta),
                ));
            }
            let bits = r.theta.to_bits();
            w[ROPE] = 1;
            w[ROPE_HEAD_DIM] = r.head_dim;
            w[THETA_LO] = bits as u32;
            w[THETA_HI] = (bits >> 32) as u32;
            stats.max_head_dim = stats.max_head_dim.max(r.head_dim);
            if let Some(l3) = r.llama3 {
                let params = [
                    ("rope.llama3.factor", l3.factor),
                    ("rope.llama3.low_freq_factor", l3.low_freq_factor),
                    ("rope.llama3.high_freq_factor", l3.high_freq_factor),
                    (
                        "rope.llama3.original_max_position_embeddings",
                        l3.original_max_position_embeddings,
                    ),
                ];
                for (field, v) in params {
                    if !(v.is_finite() && v > 0.0) {
                        return Err(
                            self.rule(field, format!("is {v}; it must be finite and positive"))
                        );
                    }
                }
                if l3.high_freq_factor == l3.low_freq_factor {
                    return Err(self.rule(
                        "rope.llama3.high_freq_factor",
                        "equals low_freq_factor; the smoothing divides by their \
                         difference"
                            .into(),
                    ));
                }
                w[LLAMA3] = 1;
                w[LLAMA3_FACTOR] = l3.factor.to_bits();
                w[LLAMA3_LOW] = l3.low_freq_factor.to_bits();
                w[LLAMA3_HIGH] = l3.high_freq_factor.to_bits();
                w[LLAMA3_ORIGINAL] = l3.original_max_position_embeddings.to_bits();
            }
        }
        w[HEAD_NORM] = abi::NONE;
        if let Some(n) = head_norm {
            if let Some(r) = rope {
                if r.head_dim != n.head_dim {
                    return Err(self.rule(
                        "head_norm.head_dim",
                        format!(
                            "is {}, but the rope's head_dim is {}; they must be equal",
                            n.head_dim, r.head_dim
                        ),
                    ));
                }
            }
            self.positive("head_norm.head_dim", n.head_dim)?;
            let hd = u64::from(n.head_dim);
            self.multiple(
                "rows",
                "rows of a head-normed projection (whole heads)",
                rows.into(),
                hd,
            )?;
            if !(n.eps.is_finite() && n.eps >= 0.0) {
                return Err(self.rule(
                    "head_norm.eps",
                    format!("is {}; it must be finite and not negative", n.eps),
                ));
            }
            w[HEAD_NORM] = self.buf("head_norm.weight", n.weight)?;
            w[HEAD_NORM_EPS] = n.eps.to_bits();
            w[ROPE_HEAD_DIM] = n.head_dim;
            stats.max_head_dim = stats.max_head_dim.max(n.head_dim);
        }
        let es = self.es(weight);
        stats.stage_tiles.push(u64::from(rows) * u64::from(cols) * es);
        w[IO] = self.buf("io", io)?;
        w[OUT_COPY] = abi::NONE;
        match output {
            ProjOutput::Store { buffer, offset }
            | ProjOutput::Accumulate { buffer, offset }
            | ProjOutput::AccumulateCopy { buffer, offset, .. } => {
                w[OUT_KIND] = match output {
                    ProjOutput::Store { .. } if self.tagged(buffer) => abi::OUT_STORE_TAGGED,
                    ProjOutput::Store { .. } => abi::OUT_STORE,
                    ProjOutput::Accumulate { .. } => abi::OUT_ACCUMULATE,
                    _ => abi::OUT_ACCUMULATE_COPY,
                };
                if let ProjOutput::AccumulateCopy { copy, .. } = output {
                    w[OUT_COPY] = self.buf("output.copy", copy)?;
                }
                w[OUT_BUFFER] = self.buf("output.buffer", buffer)?;
                w[OUT_OFFSET] = offset;
                let end = u128::from(offset) + u128::from(span);
                self.fit("output.offset", "offset + rows", end)?;
            }
            ProjOutput::CacheRow { cache, kv_head, head_dim, max_positions } => {
                w[OUT_KIND] = abi::OUT_CACHE_ROW;
                w[OUT_BUFFER] = self.buf("output.cache", cache)?;
                w[OUT_OFFSET] = kv_head;
                w[OUT_HEAD_DIM] = head_dim;
                w[OUT_MAX_POSITIONS] = max_positions;
                self.positive("output.head_dim", head_dim)?;
                self.positive("output.max_positions", max_positions)?;
                if span != head_dim {
                    return Err(self.rule(
                        "rows",
                        format!(
                            "is {rows}, but a cache row has head_dim = {head_dim} \
                             elements; they must be equal"
                        ),
                    ));
                }
                let end =
                    (u128::from(kv_head) + 1) * u128::from(max_positions) * u128::from(head_dim);
                self.fit(
                    "output.kv_head",
                    "(kv_head + 1) * max_positions * head_dim elements",
                    end,
                )?;
                stats.max_head_dim = stats.max_head_dim.max(head_dim);
            }
        }
        Ok(())
    }

    fn encode(&self, op: &TaskOp, stats: &mut Stats) -> Result<Words, CodegenError> {
        let mut w: Words = [0; abi::TASK_WORDS];
        // The operands the kernel reads or stores with tags; any other in a tagged buffer is
        // refused.
        let taggable = match *op {
            TaskOp::Projection { output: ProjOutput::Store { buffer, .. }, .. } => vec![buffer],
            TaskOp::Attention { q, current, .. } => {
                let mut v = vec![q];
                v.extend(current.map(|c| c.kv));
                v
            }
            TaskOp::AppendKv { kv, .. } => vec![kv],
            _ => Vec::new(),
        };
        self.tagged_operands(op, &taggable)?;
        match *op {
            TaskOp::Copy { src, dst } => {
                use word::copy::*;
                w[word::KIND] = abi::TASK_COPY;
                w[SRC] = self.buf("src.buffer", src.buffer)?;
                w[DST] = self.buf("dst.buffer", dst.buffer)?;
                for (side, region) in [("src", src), ("dst", dst)] {
                    let (offset_field, len_field, buffer_field) = match side {
                        "src" => ("src.offset", "src.len", "src.buffer"),
                        _ => ("dst.offset", "dst.len", "dst.buffer"),
                    };
                    self.word_region((offset_field, len_field), region)?;
                    let kind = self.s.buffers[region.buffer.index()].kind;
                    let format = self.formats[region.buffer.index()];
                    if kind == BufferKind::Weight && format != WeightDType::F32 {
                        return Err(self.rule(
                            buffer_field,
                            format!(
                                "a copy of a weight buffer counts f32 bytes, but the device \
                                 holds this one as {format}; copies may only touch weights held \
                                 as f32"
                            ),
                        ));
                    }
                }
                if src.len != dst.len {
                    return Err(self.rule(
                        "dst.len",
                        format!(
                            "copies {} source bytes into {} destination bytes",
                            src.len, dst.len
                        ),
                    ));
                }
                w[SRC_OFFSET] = src.offset as u32;
                w[DST_OFFSET] = dst.offset as u32;
                w[BYTES] = src.len as u32;
            }
            TaskOp::Zero { dst } => {
                use word::copy::*;
                w[word::KIND] = abi::TASK_ZERO;
                w[DST] = self.buf("dst.buffer", dst.buffer)?;
                self.word_region(("dst.offset", "dst.len"), dst)?;
                if self.s.buffers[dst.buffer.index()].kind == BufferKind::Weight {
                    return Err(self.rule("dst.buffer", "zeroes a weight buffer".into()));
                }
                w[DST_OFFSET] = dst.offset as u32;
                w[BYTES] = dst.len as u32;
            }
            TaskOp::Embed { table, hidden, io, out } => {
                use word::embed::*;
                w[word::KIND] = abi::TASK_EMBED;
                w[TABLE] = self.buf("table", table)?;
                w[TABLE_SCALES] = self.scales(table);
                w[HIDDEN] = hidden;
                w[IO] = self.buf("io", io)?;
                w[OUT] = self.buf("out", out)?;
                self.positive("hidden", hidden)?;
            }
            TaskOp::Projection { .. } => self.projection(op, &mut w, stats)?,
            TaskOp::QueryAttention { rope, head_dim, head, part, parts, out, q_out, .. } => {
                let projection = op
                    .query_projection()
                    .ok_or_else(|| self.rule("kind", "not a query attention".into()))?;
                self.projection(&projection, &mut w, stats)?;
                w[word::KIND] = abi::TASK_QUERY_ATTENTION;
                stats.query_attention = true;
                if q_out.is_none() {
                    w[word::projection::OUT_BUFFER] = abi::NONE;
                }
                if rope.head_dim != head_dim {
                    return Err(self.rule(
                        "rope.head_dim",
                        format!(
                            "is {}, but the attention's head_dim is {head_dim}; they must be equal",
                            rope.head_dim
                        ),
                    ));
                }
                let base = word::query_attention::ATTENTION_BASE;
                self.attention(op, part, parts, base, &mut w, stats)?;
                w[base + word::attention::OUT] = self.buf("out", out)?;
                let end = (u128::from(head) * u128::from(parts) + u128::from(part) + 1)
                    * (u128::from(head_dim) + 2);
                self.fit("part", "the partial's end, in elements", end)?;
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
                use word::head_out::*;
                w[BIAS] = match bias {
                    Some(b) => self.buf("bias", b)?,
                    None => abi::NONE,
                };
                w[word::KIND] = abi::TASK_HEAD_OUT;
                w[PARTIALS] = self.buf("partials", partials)?;
                w[HEAD] = head;
                w[HEAD_DIM] = head_dim;
                w[PARTS] = parts;
                w[FIRST] = first;
                w[DIMS] = dims;
                w[WEIGHT] = self.buf("weight", weight)?;
                w[WEIGHT_SCALES] = self.scales(weight);
                w[COLS] = cols;
                w[WEIGHT_COLS] = weight_cols;
                w[OUT0] = self.buf("out", out)?;
                w[OUT1] = match mirror {
                    Some(m) => self.buf("mirror", m)?,
                    None => abi::NONE,
                };
                for (field, v) in
                    [("head_dim", head_dim), ("parts", parts), ("dims", dims), ("cols", cols)]
                {
                    self.positive(field, v)?;
                }
                if u64::from(first) + u64::from(dims) > u64::from(head_dim) {
                    return Err(self.rule(
                        "dims",
                        format!(
                            "dimensions {first}..{} are not within a head of {head_dim}",
                            u64::from(first) + u64::from(dims)
                        ),
                    ));
                }
                let end = (u128::from(head) + 1) * u128::from(parts) * (u128::from(head_dim) + 2);
                self.fit("head", "the head's partials' end, in elements", end)?;
                // The transposed weight: rows head * head_dim + first.. of [weight_cols, cols]
                // (`transposed` checked its size, the verified footprint that the columns lie
                // inside weight_cols).
                self.fit(
                    "weight_cols",
                    "weight_cols * cols elements",
                    u128::from(weight_cols) * u128::from(cols),
                )?;
                // The kernel keeps the head's output in its one-head area.
                stats.max_head_dim = stats.max_head_dim.max(head_dim);
                let es = self.es(weight);
                stats.stage_tiles.push(u64::from(dims) * u64::from(cols) * es);
            }
            TaskOp::AppendKv { kv, kv_heads, head_dim, max_positions, k_cache, v_cache, io } => {
                use word::append_kv::*;
                w[word::KIND] = abi::TASK_APPEND_KV;
                stats.current_rows = true;
                w[KV] = self.buf("kv", kv)?;
                w[TAGGED] = u32::from(self.tagged(kv));
                w[KV_HEADS] = kv_heads;
                w[HEAD_DIM] = head_dim;
                w[MAX_POSITIONS] = max_positions;
                w[K_CACHE] = self.buf("k_cache", k_cache)?;
                w[V_CACHE] = self.buf("v_cache", v_cache)?;
                w[IO] = self.buf("io", io)?;
                self.positive("kv_heads", kv_heads)?;
                self.positive("head_dim", head_dim)?;
                self.positive("max_positions", max_positions)?;
                let end = u128::from(kv_heads) * u128::from(max_positions) * u128::from(head_dim);
                self.fit("max_positions", "kv_heads * max_positions * head_dim elements", end)?;
                self.fit("kv_heads", "2 * kv_heads * head_dim elements", 2 * end)?;
            }
            TaskOp::GatedUp { input, gate, up, first_row, rows, cols, out } => {
                use word::gated_up::*;
                w[word::KIND] = abi::TASK_GATED_UP;
                self.input(&input, cols, &mut w, stats)?;
                w[GATE] = self.buf("gate", gate)?;
                w[UP] = self.buf("up", up)?;
                self.one_format(&[("gate", gate), ("up", up)])?;
                w[GATE_SCALES] = self.scales(gate);
                w[UP_SCALES] = self.scales(up);
                w[FIRST_ROW] = first_row;
                w[ROWS] = rows;
                w[COLS] = cols;
                w[OUT] = self.buf("out", out)?;
                self.rows(first_row, rows, cols)?;
                let es = self.es(gate);
                stats.stage_tiles.push(2 * u64::from(rows) * u64::from(cols) * es);
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
                use word::gated_mlp::*;
                w[word::KIND] = abi::TASK_GATED_MLP;
                self.input(&input, cols, &mut w, stats)?;
                w[GATE] = self.buf("gate", gate)?;
                w[UP] = self.buf("up", up)?;
                w[DOWN] = self.buf("down", down)?;
                self.one_format(&[("gate", gate), ("up", up), ("down", down)])?;
                w[GATE_SCALES] = self.scales(gate);
                w[UP_SCALES] = self.scales(up);
                w[DOWN_SCALES] = self.scales(down);
                w[FIRST_ROW] = first_row;
                w[ROWS] = rows;
                w[COLS] = cols;
                w[INTER] = inter;
                w[OUT] = self.buf("out", out)?;
                if let Some(c) = carry {
                    // The kernel adds the input elements it holds in shared memory.
                    if input.elements().is_none()
                        || u64::from(c.first) + u64::from(c.len) > u64::from(cols)
                    {
                        return Err(self.rule(
                            "carry",
                            format!(
                                "carries elements {}..{} of its input, which must be a vector \
                                 of {cols} elements",
                                c.first,
                                u64::from(c.first) + u64::from(c.len)
                            ),
                        ));
                    }
                    w[CARRY_FIRST] = c.first;
                    w[CARRY_LEN] = c.len;
                }
                self.positive("rows", rows)?;
                self.positive("inter", inter)?;
                self.rows(first_row, rows, cols)?;
                // The transposed down weight: rows first_row.. of [inter, cols] (`transposed`
                // checked its size is cols * inter, and the verified footprint that
                // first_row + rows <= inter).
                self.fit("inter", "inter * cols elements", u128::from(inter) * u128::from(cols))?;
                let es = self.es(gate);
                stats.stage_tiles.push(3 * u64::from(rows) * u64::from(cols) * es);
                stats.max_mlp_rows = stats.max_mlp_rows.max(rows);
            }
            TaskOp::Attention { q, head_dim, head, kv_head, part, parts, out, current, .. } => {
                use word::attention::*;
                w[word::KIND] = abi::TASK_ATTENTION;
                self.attention(op, part, parts, 0, &mut w, stats)?;
                w[OUT] = self.buf("out", out)?;
                w[CURRENT_KV] = abi::NONE;
                let mut tagged = 0;
                if let Some(c) = current {
                    stats.current_rows = true;
                    w[CURRENT_KV] = self.buf("current.kv", c.kv)?;
                    w[CURRENT_KV_HEADS] = c.kv_heads;
                    if kv_head >= c.kv_heads {
                        return Err(self.rule(
                            "current.kv_heads",
                            format!("is {}, not above kv_head ({kv_head})", c.kv_heads),
                        ));
                    }
                    let end = 2 * u128::from(c.kv_heads) * u128::from(head_dim);
                    self.fit("current.kv_heads", "2 * kv_heads * head_dim elements", end)?;
                    if self.tagged(c.kv) {
                        tagged |= abi::TAGGED_CURRENT;
                    }
                }
                if self.tagged(q) {
                    tagged |= abi::TAGGED_Q;
                }
                w[TAGGED] = tagged;
                let end = (u128::from(head) * u128::from(parts) + u128::from(part) + 1)
                    * (u128::from(head_dim) + 2);
                self.fit("part", "the partial's end, in elements", end)?;
            }
            TaskOp::AttentionOut { head_dim, weight, cols, weight_cols, outs, .. } => {
                use word::attention_out::*;
                w[word::KIND] = abi::TASK_ATTENTION_OUT;
                self.attention(op, 0, 1, 0, &mut w, stats)?;
                w[OUT] = abi::NONE;
                w[WEIGHT] = self.buf("weight", weight)?;
                w[WEIGHT_SCALES] = self.scales(weight);
                w[COLS] = cols;
                w[WEIGHT_COLS] = weight_cols;
                w[OUT0] = self.buf("outs[0]", outs[0])?;
                w[OUT1] = self.buf("outs[1]", outs[1])?;
                self.positive("cols", cols)?;
                // The transposed weight: the head's rows of [weight_cols, cols] (`transposed`
                // checked its size is cols * weight_cols, and the verified footprint that the
                // head's columns lie inside weight_cols).
                let end = u128::from(weight_cols) * u128::from(cols);
                self.fit("weight_cols", "weight_cols * cols elements", end)?;
                let es = self.es(weight);
                stats.stage_tiles.push(u64::from(head_dim) * u64::from(cols) * es);
            }
            TaskOp::HeadArgmax { input, weight, first_row, rows, cols, logits, io, advance } => {
                use word::head_argmax::*;
                w[word::KIND] = abi::TASK_HEAD_ARGMAX;
                self.input(&input, cols, &mut w, stats)?;
                w[WEIGHT] = self.buf("weight", weight)?;
                w[WEIGHT_SCALES] = self.scales(weight);
                w[FIRST_ROW] = first_row;
                w[ROWS] = rows;
                w[COLS] = cols;
                w[LOGITS] = self.buf("logits", logits)?;
                w[IO] = self.buf("io", io)?;
                w[ADVANCE] = u32::from(advance);
                self.rows(first_row, rows, cols)?;
                let es = self.es(weight);
                stats.stage_tiles.push(u64::from(rows) * u64::from(cols) * es);
            }
            TaskOp::RmsNorm { input, len, weight, eps, out } => {
                w[word::KIND] = abi::TASK_RMSNORM;
                let normed = ProjInput::RmsNormed { buffer: input, len, weight, eps };
                self.input(&normed, len, &mut w, stats)?;
                w[word::rms_norm::OUT] = self.buf("out", out)?;
            }
        }
        Ok(w)
    }

    /// Every byte the op touches lies inside one declared region of the same direction (an
    /// atomic add may also lie inside a declared write), and is addressable with 32-bit
    /// element indices.
    fn check_footprint(&self, op: &TaskOp, task: &Task) -> Result<(), CodegenError> {
        let f = op.footprint(|b| self.s.buffers.get(b.index()).map_or(0, |b| b.bytes));
        let adds_or_writes: Vec<Region> = task.adds.iter().chain(&task.writes).copied().collect();
        for (access, regions, declared) in [
            (Access::Read, f.reads, &task.reads[..]),
            (Access::Write, f.writes, &task.writes[..]),
            (Access::Add, f.adds, &adds_or_writes[..]),
        ] {
            for region in regions {
                if region.len == 0 {
                    continue; // touches nothing
                }
                let field = field_of(op, region.buffer, access);
                let end = u128::from(region.offset) + u128::from(region.len);
                self.fit(
                    field,
                    "end of the accessed range in 4-byte elements",
                    end.div_ceil(ELEM.into()),
                )?;
                if !declared.iter().any(|d| d.contains(&region)) {
                    let buffer = self.s.buffers[region.buffer.index()].name.clone();
                    return Err(self.err(
                        field,
                        Problem::OutsideDeclared {
                            access,
                            buffer,
                            offset: region.offset,
                            end: end as u64,
                        },
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The op field a footprint region of `buffer` comes from (first match in field order).
fn field_of(op: &TaskOp, buffer: BufferId, access: Access) -> &'static str {
    let input = |i: &ProjInput| -> Vec<(BufferId, &'static str)> {
        match *i {
            ProjInput::Vector { buffer, .. } => vec![(buffer, "input.buffer")],
            ProjInput::RmsNormed { buffer, weight, .. } => {
                vec![(buffer, "input.buffer"), (weight, "input.weight")]
            }
            ProjInput::AttnPartials { buffer, current, .. } => {
                let mut v = vec![(buffer, "input.buffer")];
                if let Some(c) = current {
                    v.extend([(c.q, "input.current.q"), (c.kv, "input.current.kv")]);
                }
                v
            }
        }
    };
    let read = access == Access::Read;
    let candidates: Vec<(BufferId, &'static str)> = match *op {
        TaskOp::Copy { src, dst } => {
            if read {
                vec![(src.buffer, "src")]
            } else {
                vec![(dst.buffer, "dst")]
            }
        }
        TaskOp::Zero { dst } => {
            if read {
                Vec::new()
            } else {
                vec![(dst.buffer, "dst")]
            }
        }
        TaskOp::Embed { table, io, out, .. } => {
            if read {
                vec![(io, "io"), (table, "table")]
            } else {
                vec![(out, "out")]
            }
        }
        TaskOp::Projection { input: inp, weight, bias, io, output, .. } => {
            let mut out = match output {
                ProjOutput::Store { buffer, .. }
                | ProjOutput::Accumulate { buffer, .. }
                | ProjOutput::AccumulateCopy { buffer, .. } => vec![(buffer, "output.buffer")],
                ProjOutput::CacheRow { cache, .. } => vec![(cache, "output.cache")],
            };
            if let ProjOutput::AccumulateCopy { copy, .. } = output {
                out.push((copy, "output.copy"));
            }
            if read {
                let mut v = input(&inp);
                v.push((weight, "weight"));
                if let Some(b) = bias {
                    v.push((b, "bias"));
                }
                v.push((io, "io"));
                v.extend(out);
                v
            } else {
                out
            }
        }
        TaskOp::GatedMlp { input: inp, gate, up, down, out, .. } => {
            if read {
                let mut v = input(&inp);
                v.extend([(gate, "gate"), (up, "up"), (down, "down")]);
                v
            } else {
                vec![(out, "out")]
            }
        }
        TaskOp::GatedUp { input: inp, gate, up, out, .. } => {
            if read {
                let mut v = input(&inp);
                v.extend([(gate, "gate"), (up, "up")]);
                v
            } else {
                vec![(out, "out")]
            }
        }
        TaskOp::QueryAttention {
            input: inp,
            weight,
            bias,
            k_cache,
            v_cache,
            io,
            out,
            q_out,
            head_norm,
            ..
        } => {
            if read {
                let mut v = input(&inp);
                v.push((weight, "weight"));
                if let Some(b) = bias {
                    v.push((b, "bias"));
                }
                if let Some(n) = head_norm {
                    v.push((n.weight, "head_norm.weight"));
                }
                v.extend([(k_cache, "k_cache"), (v_cache, "v_cache"), (io, "io")]);
                v
            } else {
                let mut v = vec![(out, "out")];
                v.extend(q_out.map(|q| (q, "q_out")));
                v
            }
        }
        TaskOp::HeadOut { bias, partials, weight, out, mirror, .. } => {
            if read {
                let mut v = vec![(partials, "partials"), (weight, "weight")];
                v.extend(bias.map(|b| (b, "bias")));
                v
            } else {
                let mut v = vec![(out, "out")];
                v.extend(mirror.map(|m| (m, "mirror")));
                v
            }
        }
        TaskOp::AppendKv { kv, k_cache, v_cache, io, .. } => {
            if read {
                vec![(kv, "kv"), (io, "io")]
            } else {
                vec![(k_cache, "k_cache"), (v_cache, "v_cache")]
            }
        }
        TaskOp::AttentionOut { q, k_cache, v_cache, io, weight, outs, .. } => {
            if read {
                vec![
                    (q, "q"),
                    (k_cache, "k_cache"),
                    (v_cache, "v_cache"),
                    (io, "io"),
                    (weight, "weight"),
                ]
            } else {
                vec![(outs[0], "outs[0]"), (outs[1], "outs[1]")]
            }
        }
        TaskOp::Attention { q, k_cache, v_cache, io, out, current, .. } => {
            if read {
                let mut v = vec![(q, "q"), (k_cache, "k_cache"), (v_cache, "v_cache"), (io, "io")];
                v.extend(current.map(|c| (c.kv, "current.kv")));
                v
            } else {
                vec![(out, "out")]
            }
        }
        TaskOp::HeadArgmax { input: inp, weight, logits, io, .. } => {
            if read {
                let mut v = input(&inp);
                v.extend([(weight, "weight"), (io, "io")]);
                v
            } else {
                vec![(logits, "logits"), (io, "io")]
            }
        }
        TaskOp::RmsNorm { input, weight, out, .. } => {
            if read {
                vec![(input, "input"), (weight, "weight")]
            } else {
                vec![(out, "out")]
            }
        }
    };
    candidates.into_iter().find(|&(b, _)| b == buffer).map_or("op", |(_, f)| f)
}

#[cfg(test)]
mod tests {
    //! Mutation tests: a verified schedule with one field broken must be refused, naming the
    //! task (or counter, buffer, instruction) and the field. A broken schedule cannot be
    //! verified, so these drive the encoder directly.
    use super::*;
    use amk_schedule::ops::RopeSpec;
    use amk_schedule::schedule::{CounterId, TaskId, Worker};
    use amk_schedule::ScheduleConfig;
    use amk_verify::LaunchFacts;

    fn tiny() -> Schedule {
        let dir = tempfile::tempdir().expect("tempdir");
        amk_ir::synth::write_checkpoint(&amk_ir::synth::SynthSpec::tiny(), dir.path())
            .expect("synthetic checkpoint");
        let model = amk_ir::Model::open(dir.path(), &mut |_| {}).expect("open model");
        // The unfused MLP and four attention parts: the tests below break its tasks by name
        // (the fused MLP has its own tests in tests/tables.rs).
        let config =
            ScheduleConfig { workers: 4, fuse_down: false, attn_splits: 4, ..Default::default() };
        let s = amk_schedule::lower(&model.graph, &config).expect("lower");
        amk_verify::verify(&s, &LaunchFacts { sm_count: 132, blocks_per_sm: 1 })
            .expect("the lowered schedule verifies")
            .into_schedule()
    }

    fn op_mut<'a>(s: &'a mut Schedule, task: &str) -> &'a mut TaskOp {
        let id = s.task_by_name(task).unwrap_or_else(|| panic!("no task {task}"));
        &mut s.tasks[id.index()].op
    }

    /// Asserts `encode` refuses with a task error on `task` / `field`, returns the problem.
    fn task_error(s: &Schedule, dtype: WeightDType, task: &str, field: &str) -> Problem {
        match encode(s, dtype) {
            Err(CodegenError::Task { task: t, field: f, problem, .. }) => {
                assert_eq!((t.as_str(), f), (task, field), "{problem}");
                problem
            }
            other => panic!("expected a task error on {task}.{field}, got {other:?}"),
        }
    }

    #[test]
    fn tagged_buffers_take_only_tagged_operands() {
        // A tagged lowering encodes, its query heads stored with tags...
        let dir = tempfile::tempdir().expect("tempdir");
        amk_ir::synth::write_checkpoint(&amk_ir::synth::SynthSpec::tiny(), dir.path())
            .expect("synthetic checkpoint");
        let model = amk_ir::Model::open(dir.path(), &mut |_| {}).expect("open model");
        let config = ScheduleConfig { workers: 4, tagged: true, ..Default::default() };
        let s = amk_schedule::lower(&model.graph, &config).expect("lower");
        let e = encode(&s, WeightDType::F32).expect("a tagged schedule encodes");
        let q = s.task_by_name("L0.q.h0").expect("a query head task");
        let words = &e.tables.tasks;
        assert!(
            words.chunks(abi::TASK_WORDS).any(|d| d[word::KIND] == abi::TASK_PROJECTION
                && d[word::projection::OUT_KIND] == abi::OUT_STORE_TAGGED),
            "no projection stores tagged rows (task {q:?})"
        );
        assert!(e.tagged, "the kernel compiles its tagged code");
        // An attention that reads its current row from a plain buffer needs that code too.
        let mut s = tiny();
        let q = s.buffer_by_name("q").expect("the query buffer");
        let t = s.task_by_name("L0.attn.h0.p0").expect("an attention part");
        if let TaskOp::Attention { current, .. } = &mut s.tasks[t.index()].op {
            *current = Some(amk_schedule::ops::NewRow { kv: q, kv_heads: 2 });
        }
        let bytes = |b: BufferId| s.buffers[b.index()].bytes;
        let reads = s.tasks[t.index()].op.footprint(bytes).reads;
        s.tasks[t.index()].reads = reads;
        let e = encode(&s, WeightDType::F32).expect("a current row from a plain buffer encodes");
        assert!(e.tagged, "the current-row code is compiled");
        assert!(!encode(&tiny(), WeightDType::F32).expect("encodes").tagged);
        // ...but a residual made tagged (copied into, added to, read as a norm input) is not.
        let mut s = tiny();
        let resid = s.buffer_by_name("resid.1").expect("a versioned residual");
        s.buffers[resid.index()].kind = BufferKind::Tagged;
        match encode(&s, WeightDType::F32) {
            Err(CodegenError::Task { problem: Problem::Rule(m), .. }) => {
                assert!(m.contains("tagged buffer `resid.1`"), "{m}")
            }
            other => panic!("expected a tagged-operand error, got {other:?}"),
        }
    }

    #[test]
    fn the_lowered_schedule_encodes() {
        let s = tiny();
        for dtype in [WeightDType::F32, WeightDType::BF16] {
            let e = encode(&s, dtype).expect("encodes");
            assert_eq!(e.max_cols, 160);
            assert_eq!(e.max_head_dim, 16);
            assert_eq!(e.tables.worker_start.len(), 5);
            assert_eq!(e.tables.tasks.len(), s.tasks.len() * abi::TASK_WORDS);
        }
    }

    #[test]
    fn instr_word_packs_op_and_id() {
        assert_eq!(instr_word(abi::OP_WAIT, 5), Some(2 << 28 | 5));
        assert_eq!(instr_word(abi::OP_RUN, abi::ID_MASK), Some(abi::ID_MASK));
        assert_eq!(instr_word(abi::OP_SIGNAL, abi::ID_MASK + 1), None);
        assert_eq!(instr_word(16, 0), None);
    }

    #[test]
    fn bumped_first_row_leaves_the_declared_weight_region() {
        let mut s = tiny();
        if let TaskOp::Projection { first_row, .. } = op_mut(&mut s, "L0.v.h0") {
            *first_row += 1;
        }
        let p = task_error(&s, WeightDType::BF16, "L0.v.h0", "weight");
        let buffer = "model.layers.0.self_attn.v_proj.weight".to_string();
        assert!(
            matches!(&p, Problem::OutsideDeclared { access: Access::Read, buffer: b, .. } if *b == buffer),
            "{p:?}"
        );
    }

    #[test]
    fn bumped_first_row_of_the_lm_head_leaves_its_region() {
        let mut s = tiny();
        if let TaskOp::HeadArgmax { first_row, .. } = op_mut(&mut s, "head.r0") {
            *first_row += 1;
        }
        // The logits write moves first (writes are checked after reads; the weight read moved
        // too): either way the task and a field are named.
        let p = task_error(&s, WeightDType::F32, "head.r0", "weight");
        assert!(matches!(p, Problem::OutsideDeclared { access: Access::Read, .. }), "{p:?}");
    }

    #[test]
    fn bumped_accumulate_offset_leaves_the_declared_residual() {
        let mut s = tiny();
        if let TaskOp::Projection { output: ProjOutput::Accumulate { offset, .. }, .. } =
            op_mut(&mut s, "L1.down.r0")
        {
            *offset += 1;
        }
        // The accumulate reads the residual first: the read is caught.
        let p = task_error(&s, WeightDType::BF16, "L1.down.r0", "output.buffer");
        assert!(matches!(p, Problem::OutsideDeclared { access: Access::Read, .. }), "{p:?}");
    }

    #[test]
    fn bumped_store_offset_leaves_the_declared_write() {
        let mut s = tiny();
        if let TaskOp::Projection { output: ProjOutput::Store { offset, .. }, .. } =
            op_mut(&mut s, "L0.q.h1")
        {
            *offset += 16;
        }
        let p = task_error(&s, WeightDType::BF16, "L0.q.h1", "output.buffer");
        assert!(matches!(p, Problem::OutsideDeclared { access: Access::Write, .. }), "{p:?}");
    }

    #[test]
    fn attention_on_another_head_leaves_its_regions() {
        let mut s = tiny();
        if let TaskOp::Attention { head, .. } = op_mut(&mut s, "L0.attn.h0.p0") {
            *head = 1;
        }
        let p = task_error(&s, WeightDType::BF16, "L0.attn.h0.p0", "q");
        assert!(matches!(p, Problem::OutsideDeclared { access: Access::Read, .. }), "{p:?}");
    }

    #[test]
    fn a_dropped_declared_region_is_caught() {
        let mut s = tiny();
        let id = s.task_by_name("L0.up.r0").expect("task");
        let up = s.buffer_by_name("model.layers.0.mlp.up_proj.weight").expect("buffer");
        s.tasks[id.index()].reads.retain(|r| r.buffer != up);
        let p = task_error(&s, WeightDType::BF16, "L0.up.r0", "up");
        assert!(matches!(p, Problem::OutsideDeclared { access: Access::Read, .. }), "{p:?}");
        // The error message names the task, the field and the buffer.
        let msg = encode(&s, WeightDType::BF16).expect_err("refused").to_string();
        assert!(msg.contains("`L0.up.r0`") && msg.contains("`up`"), "{msg}");
        assert!(msg.contains("model.layers.0.mlp.up_proj.weight"), "{msg}");
    }

    #[test]
    fn buffer_ids_out_of_range_are_named() {
        let mut s = tiny();
        if let TaskOp::Projection { weight, .. } = op_mut(&mut s, "L0.k.h1") {
            *weight = BufferId(9999);
        }
        let p = task_error(&s, WeightDType::BF16, "L0.k.h1", "weight");
        assert!(matches!(p, Problem::OutOfRange { kind: "buffer", id: 9999, .. }), "{p:?}");

        let mut s = tiny();
        if let TaskOp::HeadArgmax { io, .. } = op_mut(&mut s, "head.r0") {
            *io = BufferId(u32::MAX);
        }
        task_error(&s, WeightDType::BF16, "head.r0", "io");

        let mut s = tiny();
        if let TaskOp::GatedUp { input: ProjInput::RmsNormed { weight, .. }, .. } =
            op_mut(&mut s, "L1.up.r48")
        {
            *weight = BufferId(500);
        }
        task_error(&s, WeightDType::BF16, "L1.up.r48", "input.weight");
    }

    #[test]
    fn int8_matrices_need_one_row_length_and_a_weight_buffer() {
        // A weight read with two different row lengths cannot have one int8 layout.
        let mut s = tiny();
        let gate = match op_mut(&mut s, "L0.up.r0") {
            TaskOp::GatedUp { gate, .. } => *gate,
            _ => unreachable!(),
        };
        if let TaskOp::Projection { weight, .. } = op_mut(&mut s, "L0.down.r0") {
            *weight = gate;
        }
        match encode(&s, WeightDType::Int8) {
            Err(CodegenError::Buffer { field: "cols", .. }) => {}
            other => panic!("expected a cols error, got {other:?}"),
        }
        // Activations read as a matrix have no scales: refused for int8.
        let mut s = tiny();
        let resid = s.buffers.iter().position(|b| b.name.starts_with("resid")).expect("resid");
        if let TaskOp::HeadArgmax { weight, .. } = op_mut(&mut s, "head.r0") {
            *weight = BufferId(resid as u32);
        }
        match encode(&s, WeightDType::Int8) {
            Err(CodegenError::Buffer { field: "kind", .. }) => {}
            other => panic!("expected a kind error, got {other:?}"),
        }
    }

    #[test]
    fn formats_are_for_weight_matrices_and_one_per_task() {
        use amk_schedule::WeightFormat;
        let set = |s: &mut Schedule, name: &str, f: WeightFormat| {
            let b = s.buffers.iter_mut().find(|b| b.name == name).expect(name);
            b.format = Some(f);
        };
        // On an activation, or on a weight vector, a format is refused, naming the field.
        for name in ["resid.0", "model.layers.0.input_layernorm.weight"] {
            let mut s = tiny();
            set(&mut s, name, WeightFormat::Int8);
            match encode(&s, WeightDType::BF16) {
                Err(CodegenError::Buffer { buffer, field: "format", .. }) => {
                    assert_eq!(buffer, name)
                }
                other => panic!("{name}: expected a format error, got {other:?}"),
            }
        }
        // A gated task's gate and up in different formats: the kernel picks one per task.
        let mut s = tiny();
        set(&mut s, "model.layers.0.mlp.gate_proj.weight", WeightFormat::Int8);
        match encode(&s, WeightDType::BF16) {
            Err(CodegenError::Task { task, field: "up", .. }) => assert_eq!(task, "L0.up.r0"),
            other => panic!("expected the gated task's up to be refused, got {other:?}"),
        }
        // An int8 LM head in a bf16 build: a mixed kernel, the head's tasks with scales and
        // nothing else; f32 builds ignore formats.
        let mut s = tiny();
        set(&mut s, "model.embed_tokens.weight", WeightFormat::Int8);
        let e = encode(&s, WeightDType::BF16).expect("encodes");
        assert!(e.mixed);
        let table = s.buffer_by_name("model.embed_tokens.weight").unwrap().index();
        assert_eq!(e.tables.formats[table], WeightDType::Int8);
        assert!(e.tables.int8_matrices[table].is_some());
        let q = s.buffer_by_name("model.layers.0.self_attn.q_proj.weight").unwrap().index();
        assert_eq!(e.tables.formats[q], WeightDType::BF16);
        assert!(e
            .tables
            .int8_matrices
            .iter()
            .enumerate()
            .all(|(i, m)| m.is_some() == (i == table)));
        // Each task function is compiled for its tasks' formats alone (1 bf16, 2 int8): the LM
        // head and the embedding int8, the projections and gated tasks bf16, no fused
        // attention or query attention in this schedule.
        let k = e.kind_formats;
        assert_eq!((k[0], k[1], k[3], k[4], k[5], k[6]), (1, 1, 0, 0, 2, 2), "{k:?}");
        let mut both = s.clone();
        set(&mut both, "model.layers.0.self_attn.q_proj.weight", WeightFormat::Int8);
        assert_eq!(encode(&both, WeightDType::BF16).expect("encodes").kind_formats[0], 3);
        let f32 = encode(&s, WeightDType::F32).expect("encodes");
        assert!(!f32.mixed && f32.tables.formats.iter().all(|&f| f == WeightDType::F32));
        assert_eq!(f32.kind_formats, [0; 7]);
        // The same format as the build's is no mix.
        set(&mut s, "model.embed_tokens.weight", WeightFormat::Bf16);
        assert!(!encode(&s, WeightDType::BF16).expect("encodes").mixed);
        // Every matrix in the other format is: the kernel's default (the build's) would read
        // int8 buffers as bf16.
        let mut all = tiny();
        let matrices: Vec<String> = all
            .buffers
            .iter()
            .filter(|b| b.kind == BufferKind::Weight && b.name.ends_with("proj.weight"))
            .map(|b| b.name.clone())
            .chain(["model.embed_tokens.weight".to_string()])
            .collect();
        for name in &matrices {
            set(&mut all, name, WeightFormat::Int8);
        }
        let e = encode(&all, WeightDType::BF16).expect("encodes");
        assert!(
            e.mixed && e.kind_formats[0] == 2 && e.kind_formats[5] == 2,
            "{:?}",
            e.kind_formats
        );
        for name in &matrices {
            set(&mut all, name, WeightFormat::Bf16);
        }
        let e = encode(&all, WeightDType::Int8).expect("encodes");
        assert!(
            e.mixed && e.kind_formats[0] == 1 && e.kind_formats[6] == 1,
            "{:?}",
            e.kind_formats
        );
    }

    #[test]
    fn input_length_must_equal_columns() {
        let mut s = tiny();
        if let TaskOp::Projection { input: ProjInput::Vector { len, .. }, .. } =
            op_mut(&mut s, "L0.down.r0")
        {
            *len -= 4;
        }
        let p = task_error(&s, WeightDType::BF16, "L0.down.r0", "input.len");
        assert!(matches!(p, Problem::Rule(_)), "{p:?}");
    }

    #[test]
    fn rope_needs_whole_heads() {
        let mut s = tiny();
        if let TaskOp::Projection { rows, .. } = op_mut(&mut s, "L0.q.h0") {
            *rows = 8;
        }
        let p = task_error(&s, WeightDType::BF16, "L0.q.h0", "rows");
        assert!(matches!(p, Problem::NotMultiple { value: 8, multiple: 16, .. }), "{p:?}");

        let mut s = tiny();
        if let TaskOp::Projection { first_row, .. } = op_mut(&mut s, "L0.q.h1") {
            *first_row += 2;
        }
        task_error(&s, WeightDType::BF16, "L0.q.h1", "first_row");

        for bad in [0, 7] {
            let mut s = tiny();
            if let TaskOp::Projection { rope: Some(RopeSpec { head_dim, .. }), .. } =
                op_mut(&mut s, "L0.q.h2")
            {
                *head_dim = bad;
            }
            task_error(&s, WeightDType::BF16, "L0.q.h2", "rope.head_dim");
        }

        let mut s = tiny();
        if let TaskOp::Projection { rope: Some(RopeSpec { theta, .. }), .. } =
            op_mut(&mut s, "L0.k.h0")
        {
            *theta = f64::NAN;
        }
        task_error(&s, WeightDType::BF16, "L0.k.h0", "rope.theta");
    }

    /// Head parts (`qkv_parts`) encode their part and parts at words 33 and 34 (and have the
    /// kernel compile their code); a hand-edited head part that does not fit its projection
    /// is refused naming the field, never encoded.
    #[test]
    fn head_parts_encode_and_malformed_ones_are_refused() {
        use amk_schedule::ops::{HeadNorm, HeadPart};
        use word::projection::{HEAD_PART, HEAD_PARTS};
        let dir = tempfile::tempdir().expect("tempdir");
        amk_ir::synth::write_checkpoint(&amk_ir::synth::SynthSpec::tiny(), dir.path())
            .expect("synthetic checkpoint");
        let model = amk_ir::Model::open(dir.path(), &mut |_| {}).expect("open model");
        let config = ScheduleConfig { workers: 4, qkv_parts: 2, ..Default::default() };
        let split = amk_schedule::lower(&model.graph, &config).expect("lower");
        let e = encode(&split, WeightDType::BF16).expect("a split schedule encodes");
        assert!(e.head_parts, "the kernel compiles its head-part code");
        assert!(!encode(&tiny(), WeightDType::BF16).expect("encodes").head_parts);
        let parts: Vec<(u32, u32)> = e
            .tables
            .tasks
            .chunks(abi::TASK_WORDS)
            .filter(|d| d[word::KIND] == abi::TASK_PROJECTION && d[HEAD_PARTS] != 0)
            .map(|d| (d[HEAD_PART], d[HEAD_PARTS]))
            .collect();
        // Two layers of 4 query, 2 key and 2 value heads, two parts each.
        assert_eq!(parts.len(), 2 * 8 * 2);
        assert!(parts.iter().all(|&(p, n)| n == 2 && p < 2), "{parts:?}");

        let task = "L0.q.h1.p1";
        let broken = |edit: &dyn Fn(&mut TaskOp), field: &str| {
            let mut s = split.clone();
            edit(op_mut(&mut s, task));
            task_error(&s, WeightDType::BF16, task, field)
        };
        let part = |f: fn(&mut HeadPart)| {
            move |op: &mut TaskOp| {
                if let TaskOp::Projection { head_part: Some(p), .. } = op {
                    f(p)
                }
            }
        };
        broken(&part(|p| p.part = 2), "head_part.part");
        broken(&part(|p| p.parts = 0), "head_part.parts");
        broken(&part(|p| p.parts = u32::MAX), "head_part.parts");
        // 8 rows in 4 parts make a head of 32, not the rope's 16.
        broken(&part(|p| p.parts = 4), "rope.head_dim");
        broken(
            &|op: &mut TaskOp| {
                if let TaskOp::Projection { rows, .. } = op {
                    *rows = 7;
                }
            },
            "rows",
        );
        let norm = split.buffer_by_name("model.norm.weight").expect("a norm weight");
        broken(
            &|op: &mut TaskOp| {
                if let TaskOp::Projection { head_norm, .. } = op {
                    *head_norm = Some(HeadNorm { weight: norm, head_dim: 16, eps: 1e-6 });
                }
            },
            "head_norm",
        );
        // A part whose rows leave its declared regions is refused by the footprint check.
        let p = broken(
            &|op: &mut TaskOp| {
                if let TaskOp::Projection { head_part: Some(p), .. } = op {
                    p.part = 0;
                }
            },
            "weight",
        );
        assert!(matches!(p, Problem::OutsideDeclared { access: Access::Read, .. }), "{p:?}");
    }

    #[test]
    fn a_cache_row_has_head_dim_rows() {
        let mut s = tiny();
        if let TaskOp::Projection { rows, .. } = op_mut(&mut s, "L0.v.h1") {
            *rows = 8;
        }
        let p = task_error(&s, WeightDType::BF16, "L0.v.h1", "rows");
        assert!(matches!(p, Problem::Rule(_)), "{p:?}");
    }

    #[test]
    fn overflowing_indices_are_refused_without_panicking() {
        let mut s = tiny();
        if let TaskOp::Attention { head, .. } = op_mut(&mut s, "L0.attn.h3.p0") {
            *head = u32::MAX;
        }
        let p = task_error(&s, WeightDType::BF16, "L0.attn.h3.p0", "head");
        assert!(matches!(p, Problem::TooLarge { .. }), "{p:?}");

        let mut s = tiny();
        if let TaskOp::Attention { max_positions, .. } = op_mut(&mut s, "L0.attn.h3.p0") {
            *max_positions = u32::MAX;
        }
        task_error(&s, WeightDType::BF16, "L0.attn.h3.p0", "kv_head");

        let mut s = tiny();
        if let TaskOp::Projection { input, cols, .. } = op_mut(&mut s, "L0.down.r0") {
            *cols = u32::MAX;
            if let ProjInput::Vector { len, .. } = input {
                *len = u32::MAX;
            }
        }
        let p = task_error(&s, WeightDType::BF16, "L0.down.r0", "rows");
        assert!(matches!(p, Problem::TooLarge { .. }), "{p:?}");

        let mut s = tiny();
        if let TaskOp::Projection {
            output: ProjOutput::CacheRow { kv_head, max_positions, .. },
            ..
        } = op_mut(&mut s, "L0.k.h0")
        {
            *kv_head = u32::MAX;
            *max_positions = u32::MAX;
        }
        task_error(&s, WeightDType::BF16, "L0.k.h0", "output.kv_head");
    }

    #[test]
    fn instruction_ids_out_of_range_are_named() {
        let mut s = tiny();
        s.workers[2].instrs.insert(1, Instr::Run(TaskId(10_000)));
        match encode(&s, WeightDType::BF16) {
            Err(CodegenError::Instr { worker: 2, index: 1, field: "task", problem }) => {
                assert!(matches!(problem, Problem::OutOfRange { kind: "task", .. }));
            }
            other => panic!("{other:?}"),
        }
        let mut s = tiny();
        s.workers[0].instrs.push(Instr::Wait { counter: CounterId(77), at_least: 1 });
        let n = s.workers[0].instrs.len() - 1;
        match encode(&s, WeightDType::BF16) {
            Err(CodegenError::Instr { worker: 0, index, field: "counter", .. }) => {
                assert_eq!(index, n)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn epoch_counters_must_receive_their_declared_signals() {
        let mut s = tiny();
        let c = s.counter_by_name("L0.o.done").expect("counter");
        s.counters[c.index()].reset = CounterReset::Epoch { signals_per_launch: 2 };
        match encode(&s, WeightDType::BF16) {
            Err(CodegenError::Counter { counter, field: "reset.signals_per_launch", .. }) => {
                assert_eq!(counter, "L0.o.done")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn per_launch_follows_the_reset_mode() {
        let mut s = tiny();
        let c = s.counter_by_name("L1.up.done").expect("counter");
        s.counters[c.index()].reset = CounterReset::Zeroed;
        let d = s.counter_by_name("L0.o.done").expect("counter");
        s.counters[d.index()].reset = CounterReset::Never;
        let t = encode(&s, WeightDType::BF16).expect("encodes").tables;
        assert_eq!(t.per_launch[c.index()], 0);
        assert_eq!(t.per_launch[d.index()], 0);
        let o = s.counter_by_name("L1.o.done").expect("counter");
        // Hidden 64 in the default 16-row tiles: four o-projection tasks signal it.
        assert_eq!(t.per_launch[o.index()], 4);
    }

    #[test]
    fn no_workers_is_refused() {
        let mut s = tiny();
        s.workers.clear();
        assert!(matches!(
            encode(&s, WeightDType::BF16),
            Err(CodegenError::Schedule { field: "workers", .. })
        ));
    }

    #[test]
    fn bf16_weight_buffers_must_hold_whole_f32_elements() {
        let mut s = tiny();
        s.buffers[0].bytes += 2;
        match encode(&s, WeightDType::BF16) {
            Err(CodegenError::Buffer { id: 0, field: "bytes", .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    /// A hand-made schedule of Copy tasks (the lowering makes none).
    fn copies() -> Schedule {
        let mut s = Schedule::new("copies");
        let w = s.add_buffer("w", BufferKind::Weight, 64);
        let a = s.add_buffer("a", BufferKind::Activation, 64);
        let b = s.add_buffer("b", BufferKind::Scratch, 64);
        let t0 = s.add_task(
            "act",
            TaskOp::Copy { src: Region::new(a, 8, 16), dst: Region::new(b, 32, 16) },
            vec![Region::new(a, 0, 64)],
            vec![Region::new(b, 32, 32)],
        );
        let t1 = s.add_task(
            "weight",
            TaskOp::Copy { src: Region::new(w, 0, 16), dst: Region::new(b, 0, 16) },
            vec![Region::new(w, 0, 16)],
            vec![Region::new(b, 0, 16)],
        );
        s.workers = vec![Worker { instrs: vec![Instr::Run(t0), Instr::Run(t1)] }];
        s
    }

    fn copy_mut<'a>(s: &'a mut Schedule, task: &str) -> (&'a mut Region, &'a mut Region) {
        match op_mut(s, task) {
            TaskOp::Copy { src, dst } => (src, dst),
            _ => unreachable!(),
        }
    }

    #[test]
    fn copies_encode_in_f32() {
        let e = encode(&copies(), WeightDType::F32).expect("encodes");
        let d = &e.tables.tasks[..abi::TASK_WORDS];
        assert_eq!(&d[..6], &[abi::TASK_COPY, 1, 8, 2, 32, 16]);
        assert!(d[6..].iter().all(|&x| x == 0));
        assert_eq!(e.tables.buffer_bytes, vec![64, 64, 64]);
        // Run(0) reads the worker's descriptor 0, Run(1) its descriptor 1.
        assert_eq!(e.tables.program, vec![0, 0, 1, 1]);
        assert_eq!(e.tables.worker_start, vec![0, 2]);
        assert_eq!(e.tables.run_start, vec![0, 2]);
        assert_eq!(e.max_worker_words, 2 * 2 + 2 * abi::TASK_WORDS as u32);
    }

    #[test]
    fn copies_of_weights_are_refused_in_bf16() {
        task_error(&copies(), WeightDType::BF16, "weight", "src.buffer");
    }

    #[test]
    fn copy_offsets_and_lengths_are_whole_words() {
        let mut s = copies();
        copy_mut(&mut s, "act").0.offset = 9;
        let p = task_error(&s, WeightDType::F32, "act", "src.offset");
        assert!(matches!(p, Problem::NotMultiple { value: 9, multiple: 4, .. }), "{p:?}");

        let mut s = copies();
        let (src, dst) = copy_mut(&mut s, "act");
        src.len = 6;
        dst.len = 6;
        task_error(&s, WeightDType::F32, "act", "src.len");

        let mut s = copies();
        copy_mut(&mut s, "act").1.len = 12;
        task_error(&s, WeightDType::F32, "act", "dst.len");

        let mut s = copies();
        copy_mut(&mut s, "act").1.offset = 36; // 36..52 stays inside the declared 32..64
        assert!(encode(&s, WeightDType::F32).is_ok());
        copy_mut(&mut s, "act").1.offset = 52; // 52..68 leaves it
        let p = task_error(&s, WeightDType::F32, "act", "dst");
        assert!(matches!(p, Problem::OutsideDeclared { access: Access::Write, .. }), "{p:?}");

        let mut s = copies();
        copy_mut(&mut s, "act").0.offset = 1 << 40;
        let p = task_error(&s, WeightDType::F32, "act", "src.len");
        assert!(matches!(p, Problem::TooLarge { .. }), "{p:?}");
    }
}
