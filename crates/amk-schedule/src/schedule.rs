//! The schedule data model and its file format, `schedule.ron`.
//!
//! A [`Schedule`] is a set of workers (thread blocks of one persistent kernel), each running a
//! straight-line list of [`Instr`]uctions: `Run(task)`, `Signal(counter)` and
//! `Wait(counter, at_least)`. Tasks read and write declared byte [`Region`]s of named
//! [`Buffer`]s; [`Counter`]s only grow. `amk-verify` proves a schedule deadlock- and race-free.
//!
//! In memory everything refers by typed index ([`BufferId`], [`CounterId`], [`TaskId`],
//! [`WorkerId`]) and all fields are public, so search loops and tests can edit a schedule
//! freely; an index out of range is then caught by the verifier, never by a panic here.
//!
//! In `schedule.ron` everything refers by NAME, so a person can read and edit it:
//! `Run("L3.qkv.h0")`, `Wait("L3.qkv.done", 15)`, regions `("resid", 0, 2304)`. Names are
//! resolved to ids by [`Schedule::from_ron_str`]; [`Schedule::to_ron_string`] writes the
//! canonical, deterministic text (also what the verifier's certificate hashes).

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use crate::ops::TaskOp;

/// What kind of named object a name refers to (for errors and the name context).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NameKind {
    /// A [`Buffer`].
    Buffer,
    /// A [`Counter`].
    Counter,
    /// A [`Task`].
    Task,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Buffer => "buffer",
            NameKind::Counter => "counter",
            NameKind::Task => "task",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Name context: while writing or reading `schedule.ron`, ids are written / read as names.
// Outside that context (e.g. serde_json of an in-memory schedule) ids are plain numbers.
// ---------------------------------------------------------------------------------------------

enum NameCtx {
    Ser {
        buffers: Vec<String>,
        counters: Vec<String>,
        tasks: Vec<String>,
    },
    De {
        buffers: HashMap<String, u32>,
        counters: HashMap<String, u32>,
        tasks: HashMap<String, u32>,
        unknown: Option<(NameKind, String)>,
    },
}

thread_local! {
    static NAME_CTX: RefCell<Option<NameCtx>> = const { RefCell::new(None) };
}

/// Installs a name context for the current thread and removes it on drop (also on panic).
struct CtxGuard;

impl CtxGuard {
    fn install(ctx: NameCtx) -> CtxGuard {
        NAME_CTX.with(|c| *c.borrow_mut() = Some(ctx));
        CtxGuard
    }
    fn take_unknown(&self) -> Option<(NameKind, String)> {
        NAME_CTX.with(|c| match c.borrow_mut().as_mut() {
            Some(NameCtx::De { unknown, .. }) => unknown.take(),
            _ => None,
        })
    }
}

impl Drop for CtxGuard {
    fn drop(&mut self) {
        NAME_CTX.with(|c| *c.borrow_mut() = None);
    }
}

/// Name of id `index` of `kind` under a serialization context, if one is installed.
fn ctx_name(kind: NameKind, index: u32) -> Option<String> {
    NAME_CTX.with(|c| match c.borrow().as_ref() {
        Some(NameCtx::Ser { buffers, counters, tasks }) => {
            let names = match kind {
                NameKind::Buffer => buffers,
                NameKind::Counter => counters,
                NameKind::Task => tasks,
            };
            Some(
                names
                    .get(index as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("<{kind} #{index} out of range>")),
            )
        }
        _ => None,
    })
}

fn ctx_is_de() -> bool {
    NAME_CTX.with(|c| matches!(c.borrow().as_ref(), Some(NameCtx::De { .. })))
}

enum Resolved {
    NoContext,
    Found(u32),
    Unknown,
}

fn ctx_resolve(kind: NameKind, name: &str) -> Resolved {
    NAME_CTX.with(|c| match c.borrow_mut().as_mut() {
        Some(NameCtx::De { buffers, counters, tasks, unknown }) => {
            let map = match kind {
                NameKind::Buffer => &*buffers,
                NameKind::Counter => &*counters,
                NameKind::Task => &*tasks,
            };
            match map.get(name) {
                Some(&i) => Resolved::Found(i),
                None => {
                    *unknown = Some((kind, name.to_string()));
                    Resolved::Unknown
                }
            }
        }
        _ => Resolved::NoContext,
    })
}

struct IdVisitor(Option<NameKind>);

impl<'de> Visitor<'de> for IdVisitor {
    type Value = u32;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(kind) => write!(f, "the name of a {kind} (a string)"),
            None => f.write_str("an index (u32)"),
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
        if let Some(kind) = self.0 {
            if ctx_is_de() {
                return Err(E::custom(format!(
                    "a {kind} is referred to by its name in schedule.ron, not by index ({v})"
                )));
            }
        }
        u32::try_from(v).map_err(|_| E::custom(format!("index {v} does not fit in u32")))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
        if v < 0 {
            return Err(E::custom(format!("negative index {v}")));
        }
        self.visit_u64(v as u64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
        let Some(kind) = self.0 else {
            return Err(E::custom(format!("expected an index, found the name `{v}`")));
        };
        match ctx_resolve(kind, v) {
            Resolved::Found(i) => Ok(i),
            Resolved::Unknown => Err(E::custom(format!("unknown {kind} `{v}`"))),
            Resolved::NoContext => Err(E::custom(format!(
                "{kind} name `{v}` outside a schedule file (no names to resolve against)"
            ))),
        }
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $label:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);

        impl $name {
            /// The index as `usize` (for indexing the schedule's vectors).
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}#{}", $label, self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let kind: Option<NameKind> = $kind;
                match kind.and_then(|k| ctx_name(k, self.0)) {
                    Some(name) => s.serialize_str(&name),
                    None => s.serialize_u32(self.0),
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(IdVisitor($kind)).map($name)
            }
        }
    };
}

id_type!(
    /// Index into [`Schedule::buffers`]; written as the buffer's name in `schedule.ron`.
    BufferId,
    Some(NameKind::Buffer),
    "buffer"
);
id_type!(
    /// Index into [`Schedule::counters`]; written as the counter's name in `schedule.ron`.
    CounterId,
    Some(NameKind::Counter),
    "counter"
);
id_type!(
    /// Index into [`Schedule::tasks`]; written as the task's name in `schedule.ron`.
    TaskId,
    Some(NameKind::Task),
    "task"
);
id_type!(
    /// Index into [`Schedule::workers`] (= the thread block index in the launch).
    WorkerId,
    None,
    "worker"
);

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// What a buffer holds; decides where codegen places it and what the runtime fills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BufferKind {
    /// Model weights: read-only during a launch.
    Weight,
    /// Activations of one decode step (residual stream, q/k/v, MLP hidden, ...).
    Activation,
    /// The KV cache, persistent across launches.
    KvCache,
    /// Output logits.
    Logits,
    /// Host-visible input/output (token ids, position).
    Io,
    /// Scratch space private to the kernel (partial sums, argmax candidates).
    Scratch,
    /// Activations handed from the one task that writes them to the tasks that read them
    /// without a counter: on the device each 4-byte value sits beside the launch's tag (so
    /// the buffer takes twice its `bytes`), and a read of a value waits until it carries this
    /// launch's tag. The reader learns of each value as it lands, with no release fence and no
    /// second round trip; in exchange every byte has at most one writing task per launch,
    /// nothing adds to it, and a tagged read orders nothing but the values it reads (the
    /// verifier checks all three).
    Tagged,
}

/// A named device buffer of `bytes` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Buffer {
    /// Unique name, used for references in `schedule.ron`.
    pub name: String,
    /// What it holds.
    pub kind: BufferKind,
    /// Size in bytes (weights: as f32 elements, whatever format the device holds them in).
    pub bytes: u64,
    /// A weight matrix's format on the device when it is not the build's (a per-op precision
    /// plan, [`crate::config::PrecisionPlan`]); `None` follows the build's `--precision`.
    /// f32 builds (the exact mode) hold every weight in f32 and ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<WeightFormat>,
}

/// A weight matrix format a bf16 or int8 build can hold one class of matrices in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WeightFormat {
    /// bf16 values.
    Bf16,
    /// int8 rows, each with one f32 scale (symmetric, per output channel).
    Int8,
}

/// A byte range `[offset, offset + len)` of one buffer. Written `("resid", 0, 2304)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region {
    /// The buffer.
    pub buffer: BufferId,
    /// First byte.
    pub offset: u64,
    /// Number of bytes (must be > 0 in a well-formed schedule).
    pub len: u64,
}

impl Region {
    /// A region of `buffer` covering `[offset, offset + len)`.
    pub fn new(buffer: BufferId, offset: u64, len: u64) -> Region {
        Region { buffer, offset, len }
    }

    /// One past the last byte, or `None` on u64 overflow.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.len)
    }

    /// Whether the two regions share at least one byte (same buffer, non-empty intersection).
    pub fn overlaps(&self, other: &Region) -> bool {
        let a_end = self.offset.saturating_add(self.len);
        let b_end = other.offset.saturating_add(other.len);
        self.buffer == other.buffer
            && self.len > 0
            && other.len > 0
            && self.offset < b_end
            && other.offset < a_end
    }

    /// Whether `other` lies entirely inside `self`.
    pub fn contains(&self, other: &Region) -> bool {
        match (self.end(), other.end()) {
            (Some(a_end), Some(b_end)) => {
                self.buffer == other.buffer && self.offset <= other.offset && b_end <= a_end
            }
            _ => false,
        }
    }
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&self.buffer)?;
        t.serialize_element(&self.offset)?;
        t.serialize_element(&self.len)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Region;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a region (buffer, offset, len)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Region, A::Error> {
                let buffer =
                    seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let offset =
                    seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let len = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(2, &self))?;
                Ok(Region { buffer, offset, len })
            }
        }
        d.deserialize_tuple(3, V)
    }
}

/// How a counter is brought back between launches (one launch = one decode step), so that one
/// launch's signals never satisfy the next launch's waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum CounterReset {
    /// The host zeroes the counter before each launch (a memset in the launch sequence).
    Zeroed,
    /// Never reset; launch `epoch` (0, 1, ...) compares waits against
    /// `epoch * signals_per_launch + at_least`. Legal only if the counter receives exactly
    /// `signals_per_launch` signals per launch (the verifier checks this).
    Epoch {
        /// Signals the counter receives in every launch.
        signals_per_launch: u32,
    },
    /// Never reset and never offset: legal only for counters nobody waits on (e.g. progress
    /// or debug counters); otherwise one launch's signals satisfy the next launch's waits.
    Never,
}

/// A monotone counter in device memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counter {
    /// Unique name, used for references in `schedule.ron` (e.g. `L3.qkv.done`).
    pub name: String,
    /// What happens to it between launches.
    pub reset: CounterReset,
}

/// A unit of work run by exactly one worker. The verifier looks only at its regions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Unique name that says layer and op (e.g. `L3.qkv.h0`).
    pub name: String,
    /// What it computes.
    pub op: TaskOp,
    /// Every byte range it may read.
    pub reads: Vec<Region>,
    /// Every byte range it may write.
    pub writes: Vec<Region>,
    /// Every byte range it may add to with atomic f32 adds (and neither read nor write
    /// otherwise). Adds to the same bytes commute, so tasks that only add to a range need no
    /// order among themselves; an add still conflicts with any read or write of those bytes.
    /// Absent from `schedule.ron` when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adds: Vec<Region>,
}

/// One instruction of a worker's straight-line program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "InstrRepr", into = "InstrRepr")]
pub enum Instr {
    /// Runs a task (all its reads, writes and adds happen between the previous and next
    /// instruction).
    Run(TaskId),
    /// Release-increments a counter by one (after all earlier writes of this worker).
    Signal(CounterId),
    /// Acquire-waits until the counter is at least `at_least` (epoch-offset for
    /// [`CounterReset::Epoch`] counters). Written `Wait("name", at_least)`.
    Wait {
        /// The counter.
        counter: CounterId,
        /// The threshold, relative to this launch.
        at_least: u32,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename = "Instr", deny_unknown_fields)]
enum InstrRepr {
    Run(TaskId),
    Signal(CounterId),
    Wait(CounterId, u32),
}

impl From<InstrRepr> for Instr {
    fn from(r: InstrRepr) -> Instr {
        match r {
            InstrRepr::Run(t) => Instr::Run(t),
            InstrRepr::Signal(c) => Instr::Signal(c),
            InstrRepr::Wait(counter, at_least) => Instr::Wait { counter, at_least },
        }
    }
}

impl From<Instr> for InstrRepr {
    fn from(i: Instr) -> InstrRepr {
        match i {
            Instr::Run(t) => InstrRepr::Run(t),
            Instr::Signal(c) => InstrRepr::Signal(c),
            Instr::Wait { counter, at_least } => InstrRepr::Wait(counter, at_least),
        }
    }
}

/// One worker (thread block): its instruction list. Written as a plain list in the file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Worker {
    /// The straight-line program.
    pub instrs: Vec<Instr>,
}

/// A whole schedule: everything one launch (one decode step) of the megakernel does.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// The schedule's (model's) name.
    pub name: String,
    /// Buffers, indexed by [`BufferId`].
    pub buffers: Vec<Buffer>,
    /// Counters, indexed by [`CounterId`].
    pub counters: Vec<Counter>,
    /// Tasks, indexed by [`TaskId`].
    pub tasks: Vec<Task>,
    /// Workers, indexed by [`WorkerId`] (= block index).
    pub workers: Vec<Worker>,
}

/// Why a `schedule.ron` text could not be loaded (malformed input, as opposed to a well-formed
/// but unsafe schedule, which the verifier rejects).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ScheduleParseError {
    /// The text is not valid RON for a schedule.
    #[error("schedule.ron:{line}:{column}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// A reference names no declared object.
    #[error(
        "schedule.ron:{line}:{column}: unknown {kind} `{name}`: no {kind} of that name is declared"
    )]
    UnknownName {
        /// What kind of object was referred to.
        kind: NameKind,
        /// The name that refers to nothing.
        name: String,
        /// 1-based line (of the reference, as far as the parser had read).
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// Two objects of one kind share a name, so references would be ambiguous.
    #[error("duplicate {kind} name `{name}` (declared at positions {first} and {second}): names must be unique")]
    DuplicateName {
        /// What kind of object.
        kind: NameKind,
        /// The duplicated name.
        name: String,
        /// Index of the first declaration.
        first: usize,
        /// Index of the second declaration.
        second: usize,
    },
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename = "Schedule")]
struct Header {
    #[serde(default)]
    buffers: Vec<Named>,
    #[serde(default)]
    counters: Vec<Named>,
    #[serde(default)]
    tasks: Vec<Named>,
}

fn syntax(e: ron::error::SpannedError) -> ScheduleParseError {
    ScheduleParseError::Syntax {
        line: e.position.line,
        column: e.position.col,
        message: e.code.to_string(),
    }
}

fn name_map(kind: NameKind, names: &[Named]) -> Result<HashMap<String, u32>, ScheduleParseError> {
    let mut map = HashMap::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        if let Some(&first) = map.get(&n.name) {
            return Err(ScheduleParseError::DuplicateName {
                kind,
                name: n.name.clone(),
                first: first as usize,
                second: i,
            });
        }
        map.insert(n.name.clone(), i as u32);
    }
    Ok(map)
}

fn compact<T: Serialize + ?Sized>(v: &T) -> String {
    let cfg = ron::ser::PrettyConfig::new()
        .depth_limit(0)
        .new_line(String::new())
        .indentor(String::new());
    ron::ser::to_string_pretty(v, cfg).expect("schedule values always serialize")
}

impl Schedule {
    /// An empty schedule called `name`.
    pub fn new(name: impl Into<String>) -> Schedule {
        Schedule { name: name.into(), ..Schedule::default() }
    }

    /// Appends a buffer and returns its id.
    pub fn add_buffer(
        &mut self,
        name: impl Into<String>,
        kind: BufferKind,
        bytes: u64,
    ) -> BufferId {
        self.buffers.push(Buffer { name: name.into(), kind, bytes, format: None });
        BufferId(self.buffers.len() as u32 - 1)
    }

    /// Appends a counter and returns its id.
    pub fn add_counter(&mut self, name: impl Into<String>, reset: CounterReset) -> CounterId {
        self.counters.push(Counter { name: name.into(), reset });
        CounterId(self.counters.len() as u32 - 1)
    }

    /// Appends a task and returns its id (it still has to be placed on a worker with `Run`).
    pub fn add_task(
        &mut self,
        name: impl Into<String>,
        op: TaskOp,
        reads: Vec<Region>,
        writes: Vec<Region>,
    ) -> TaskId {
        self.tasks.push(Task { name: name.into(), op, reads, writes, adds: Vec::new() });
        TaskId(self.tasks.len() as u32 - 1)
    }

    /// Appends a task that declares its op's whole [`crate::ops::Footprint`] (reads, writes
    /// and atomic adds) and returns its id.
    pub fn add_task_with_footprint(&mut self, name: impl Into<String>, op: TaskOp) -> TaskId {
        let f = op.footprint(|b| self.buffers.get(b.index()).map_or(0, |b| b.bytes));
        let id = self.add_task(name, op, f.reads, f.writes);
        self.tasks[id.index()].adds = f.adds;
        id
    }

    /// Number of `Signal(counter)` instructions over all workers, per counter (ids out of
    /// range are ignored).
    pub fn signal_counts(&self) -> Vec<u64> {
        let mut n = vec![0u64; self.counters.len()];
        for w in &self.workers {
            for i in &w.instrs {
                if let Instr::Signal(c) = i {
                    if let Some(x) = n.get_mut(c.index()) {
                        *x += 1;
                    }
                }
            }
        }
        n
    }

    /// The task called `name`, if any.
    pub fn task_by_name(&self, name: &str) -> Option<TaskId> {
        self.tasks.iter().position(|t| t.name == name).map(|i| TaskId(i as u32))
    }

    /// The counter called `name`, if any.
    pub fn counter_by_name(&self, name: &str) -> Option<CounterId> {
        self.counters.iter().position(|c| c.name == name).map(|i| CounterId(i as u32))
    }

    /// The buffer called `name`, if any.
    pub fn buffer_by_name(&self, name: &str) -> Option<BufferId> {
        self.buffers.iter().position(|b| b.name == name).map(|i| BufferId(i as u32))
    }

    /// The canonical `schedule.ron` text: deterministic (same schedule, same bytes), one
    /// buffer / counter / task per line, one instruction per line with `// worker N` and
    /// `// instruction index` comments, references by name. Ids out of range are written as
    /// `"<task #7 out of range>"` (which will not load back).
    pub fn to_ron_string(&self) -> String {
        use std::fmt::Write;
        let _guard = CtxGuard::install(NameCtx::Ser {
            buffers: self.buffers.iter().map(|b| b.name.clone()).collect(),
            counters: self.counters.iter().map(|c| c.name.clone()).collect(),
            tasks: self.tasks.iter().map(|t| t.name.clone()).collect(),
        });
        // Names are quoted once; the common lines are written directly (ops go through serde).
        let quote = |names: Vec<&str>| -> Vec<String> { names.into_iter().map(compact).collect() };
        let bq = quote(self.buffers.iter().map(|b| b.name.as_str()).collect());
        let cq = quote(self.counters.iter().map(|c| c.name.as_str()).collect());
        let tq = quote(self.tasks.iter().map(|t| t.name.as_str()).collect());
        let name_of = |q: &[String], kind: NameKind, i: u32| -> String {
            q.get(i as usize)
                .cloned()
                .unwrap_or_else(|| compact(&format!("<{kind} #{i} out of range>")))
        };
        let mut out = String::with_capacity(64 * (self.tasks.len() + 1) * 4);
        let region = |out: &mut String, r: &Region| {
            match bq.get(r.buffer.index()) {
                Some(q) => out.push_str(&format!("({q}, ")),
                None => {
                    let q = name_of(&bq, NameKind::Buffer, r.buffer.0);
                    out.push_str(&format!("({q}, "))
                }
            }
            let _ = write!(out, "{}, {})", r.offset, r.len);
        };
        out.push_str("// amk schedule: references are by name; see amk-schedule docs.\n");
        let _ = writeln!(out, "Schedule(\n    name: {},", compact(&self.name));
        out.push_str("    buffers: [\n");
        for (b, q) in self.buffers.iter().zip(&bq) {
            let _ = write!(out, "        (name: {q}, kind: {:?}, bytes: {}", b.kind, b.bytes);
            if let Some(f) = b.format {
                let _ = write!(out, ", format: Some({f:?})");
            }
            out.push_str("),\n");
        }
        out.push_str("    ],\n    counters: [\n");
        for (c, q) in self.counters.iter().zip(&cq) {
            let reset = match c.reset {
                CounterReset::Zeroed => "Zeroed".to_string(),
                CounterReset::Never => "Never".to_string(),
                CounterReset::Epoch { signals_per_launch } => {
                    format!("Epoch(signals_per_launch: {signals_per_launch})")
                }
            };
            let _ = writeln!(out, "        (name: {q}, reset: {reset}),");
        }
        out.push_str("    ],\n    tasks: [\n");
        for (t, q) in self.tasks.iter().zip(&tq) {
            let _ = write!(out, "        (name: {q}, op: {}, reads: [", compact(&t.op));
            for (i, r) in t.reads.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                region(&mut out, r);
            }
            out.push_str("], writes: [");
            for (i, r) in t.writes.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                region(&mut out, r);
            }
            if !t.adds.is_empty() {
                out.push_str("], adds: [");
                for (i, r) in t.adds.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    region(&mut out, r);
                }
            }
            out.push_str("]),\n");
        }
        out.push_str("    ],\n    workers: [\n");
        for (w, worker) in self.workers.iter().enumerate() {
            let _ = writeln!(out, "        // worker {w}\n        [");
            for (i, instr) in worker.instrs.iter().enumerate() {
                let _ = match *instr {
                    Instr::Run(t) => match tq.get(t.index()) {
                        Some(q) => writeln!(out, "            Run({q}), // {w}:{i}"),
                        None => writeln!(
                            out,
                            "            Run({}), // {w}:{i}",
                            name_of(&tq, NameKind::Task, t.0)
                        ),
                    },
                    Instr::Signal(c) => match cq.get(c.index()) {
                        Some(q) => writeln!(out, "            Signal({q}), // {w}:{i}"),
                        None => writeln!(
                            out,
                            "            Signal({}), // {w}:{i}",
                            name_of(&cq, NameKind::Counter, c.0)
                        ),
                    },
                    Instr::Wait { counter, at_least } => match cq.get(counter.index()) {
                        Some(q) => writeln!(out, "            Wait({q}, {at_least}), // {w}:{i}"),
                        None => writeln!(
                            out,
                            "            Wait({}, {at_least}), // {w}:{i}",
                            name_of(&cq, NameKind::Counter, counter.0)
                        ),
                    },
                };
            }
            out.push_str("        ],\n");
        }
        out.push_str("    ],\n)\n");
        out
    }

    /// Loads `schedule.ron` text, resolving names to ids. Syntax errors carry line and column;
    /// a reference to an undeclared name is [`ScheduleParseError::UnknownName`]; duplicate
    /// names are [`ScheduleParseError::DuplicateName`]. Declaration order (= ids) is kept.
    pub fn from_ron_str(text: &str) -> Result<Schedule, ScheduleParseError> {
        // Pass 1: the declared names (so references may appear in any field order).
        let header: Header = ron::de::from_str(text).map_err(syntax)?;
        let buffers = name_map(NameKind::Buffer, &header.buffers)?;
        let counters = name_map(NameKind::Counter, &header.counters)?;
        let tasks = name_map(NameKind::Task, &header.tasks)?;
        // Pass 2: the schedule, with names resolved as they are read.
        let guard = CtxGuard::install(NameCtx::De { buffers, counters, tasks, unknown: None });
        ron::de::from_str::<Schedule>(text).map_err(|e| match guard.take_unknown() {
            Some((kind, name)) => ScheduleParseError::UnknownName {
                kind,
                name,
                line: e.position.line,
                column: e.position.col,
            },
            None => syntax(e),
        })
    }
}
