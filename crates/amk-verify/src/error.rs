//! What the verifier reports when it rejects a schedule: every error it found, each with the
//! names and indices a person needs to find the spot in `schedule.ron`.

use amk_schedule::schedule::NameKind;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An instruction position: worker index and instruction index within that worker (the
/// `// w:i` comments of `schedule.ron`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstrLoc {
    /// Worker (block) index.
    pub worker: u32,
    /// Instruction index within the worker.
    pub index: u32,
}

impl fmt::Display for InstrLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {} instruction {}", self.worker, self.index)
    }
}

/// Where in a task a region is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RegionPlace {
    /// `reads[i]`.
    Read(u32),
    /// `writes[i]`.
    Write(u32),
    /// The i-th region the op reads (`TaskOp::footprint`; for Copy, 0 = src).
    OpRead(u32),
    /// The i-th region the op writes (`TaskOp::footprint`; for Copy, 0 = dst).
    OpWrite(u32),
    /// `adds[i]`.
    Add(u32),
    /// The i-th region the op adds to atomically (`TaskOp::footprint`).
    OpAdd(u32),
}

impl fmt::Display for RegionPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionPlace::Read(i) => write!(f, "reads[{i}]"),
            RegionPlace::Write(i) => write!(f, "writes[{i}]"),
            RegionPlace::OpRead(i) => write!(f, "op read #{i}"),
            RegionPlace::OpWrite(i) => write!(f, "op write #{i}"),
            RegionPlace::Add(i) => write!(f, "adds[{i}]"),
            RegionPlace::OpAdd(i) => write!(f, "op add #{i}"),
        }
    }
}

/// A byte range as declared: `[offset, offset + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bytes [{}, {}) (offset {}, len {})",
            self.offset,
            self.offset as u128 + self.len as u128,
            self.offset,
            self.len
        )
    }
}

/// How a task touches a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccessKind {
    /// A declared read.
    Read,
    /// A declared write.
    Write,
    /// A declared atomic add (commutes with other adds, conflicts with reads and writes).
    Add,
}

impl AccessKind {
    /// The verb for messages: "reads", "writes" or "adds to".
    pub fn verb(self) -> &'static str {
        match self {
            AccessKind::Read => "reads",
            AccessKind::Write => "writes",
            AccessKind::Add => "adds to",
        }
    }
}

/// One side of a race: a task's access to a byte range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Task name.
    pub task: String,
    /// Where its `Run` is.
    pub at: InstrLoc,
    /// The declared region's byte range.
    pub range: ByteRange,
    /// Read, write or atomic add.
    pub kind: AccessKind,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task `{}` ({}) {} {}", self.task, self.at, self.kind.verb(), self.range)
    }
}

/// A worker stuck at a wait in the deadlocked state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckWorker {
    /// The stuck `Wait` instruction.
    pub at: InstrLoc,
    /// Counter name.
    pub counter: String,
    /// The wait's threshold.
    pub at_least: u32,
    /// The counter's value in the stuck state (no further step is possible).
    pub value: u64,
    /// Signals to this counter that were never executed, because their own workers are stuck
    /// before them (the first such signal per worker): the wait-for cycle or chain.
    pub pending_signals: Vec<InstrLoc>,
}

/// A worker stuck at a `Run` whose task reads tagged bytes that are not written yet (a
/// tagged read blocks inside the `Run` until every value it reads carries this launch's tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedRun {
    /// The blocked `Run` instruction.
    pub at: InstrLoc,
    /// The reading task.
    pub task: String,
    /// The tagged buffer.
    pub buffer: String,
    /// The bytes it waits for (the first of its reads not written yet; one writer's share).
    pub range: ByteRange,
    /// The task that writes them; `None` if no task does.
    pub writer: Option<String>,
    /// Where the writer's (first) `Run` is; `None` if no worker runs it. It has not run.
    pub writer_at: Option<InstrLoc>,
}

impl fmt::Display for BlockedRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} runs task `{}`, which reads {} of tagged buffer `{}`",
            self.at, self.task, self.range, self.buffer
        )?;
        match (&self.writer, self.writer_at) {
            (None, _) => write!(f, ", which no task writes"),
            (Some(w), None) => {
                write!(f, " before task `{w}` writes them, and no worker runs `{w}`")
            }
            (Some(_), Some(l)) if l == self.at => {
                write!(f, ", which it writes itself (a task cannot wait for its own tagged writes)")
            }
            (Some(w), Some(l)) if l.worker == self.at.worker => write!(
                f,
                " before task `{w}` writes them at {l}, later on the same worker (run `{w}` first)"
            ),
            (Some(w), Some(l)) => {
                write!(f, " before task `{w}` writes them at {l}, which has not run")
            }
        }
    }
}

/// One reason a schedule is not proven safe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerifyError {
    /// The schedule has no worker at all.
    NoWorkers,
    /// `Run` of a task index that does not exist.
    TaskIdOutOfRange {
        /// The instruction.
        at: InstrLoc,
        /// The bad index.
        task: u32,
        /// Number of tasks.
        tasks: usize,
    },
    /// `Signal`/`Wait` of a counter index that does not exist.
    CounterIdOutOfRange {
        /// The instruction.
        at: InstrLoc,
        /// The bad index.
        counter: u32,
        /// Number of counters.
        counters: usize,
    },
    /// A region names a buffer index that does not exist.
    BufferIdOutOfRange {
        /// Task name.
        task: String,
        /// Which region of the task.
        place: RegionPlace,
        /// The bad index.
        buffer: u32,
        /// Number of buffers.
        buffers: usize,
    },
    /// A region of zero bytes.
    EmptyRegion {
        /// Task name.
        task: String,
        /// Which region.
        place: RegionPlace,
        /// Buffer name.
        buffer: String,
    },
    /// A region that ends past its buffer (or whose end overflows u64).
    RegionOutOfBounds {
        /// Task name.
        task: String,
        /// Which region.
        place: RegionPlace,
        /// Buffer name.
        buffer: String,
        /// The region's range.
        range: ByteRange,
        /// The buffer's size.
        buffer_bytes: u64,
    },
    /// A task that no worker runs.
    TaskNotRun {
        /// Task name.
        task: String,
    },
    /// A task run more than once.
    TaskRunMoreThanOnce {
        /// Task name.
        task: String,
        /// Every `Run` of it.
        runs: Vec<InstrLoc>,
    },
    /// A wait whose threshold exceeds every signal the counter can ever receive.
    UnsatisfiableWait {
        /// The wait.
        at: InstrLoc,
        /// Counter name.
        counter: String,
        /// Its threshold.
        at_least: u32,
        /// All `Signal`s to that counter in the schedule.
        total_signals: u64,
    },
    /// A region the op touches (its footprint) is not inside any of the task's declared
    /// reads (for op reads), writes (for op writes), or adds or writes (for op adds).
    OpRegionUndeclared {
        /// Task name.
        task: String,
        /// `OpRead(i)`, `OpWrite(i)` or `OpAdd(i)`.
        place: RegionPlace,
        /// Buffer name.
        buffer: String,
        /// The op's byte range.
        range: ByteRange,
    },
    /// A Copy op whose src and dst differ in length.
    CopyLengthMismatch {
        /// Task name.
        task: String,
        /// Source length.
        src_len: u64,
        /// Destination length.
        dst_len: u64,
    },
    /// A buffer that is not a weight carries a weight format (`format: Some(Int8)`): formats
    /// say how the device holds a weight matrix, and nothing else has one.
    FormatOnNonWeight {
        /// Buffer name.
        buffer: String,
        /// Its kind, as `schedule.ron` writes it.
        kind: String,
    },
    /// Two objects of one kind share a name (`schedule.ron` refers by name).
    DuplicateName {
        /// What kind.
        kind: NameKind,
        /// The name.
        name: String,
        /// First index.
        first: usize,
        /// Second index.
        second: usize,
    },
    /// A task adds to a tagged buffer (declared in its `adds`, or an op add declared as a
    /// write): tagged values are written once, never added to.
    TaggedAdd {
        /// Task name.
        task: String,
        /// `Add(i)` or `OpAdd(i)`.
        place: RegionPlace,
        /// Buffer name.
        buffer: String,
        /// The added-to range.
        range: ByteRange,
    },
    /// Two tasks write overlapping bytes of a tagged buffer: every tagged byte has at most one
    /// writing task per launch.
    TaggedWrittenTwice {
        /// Buffer name.
        buffer: String,
        /// The task whose write starts first.
        first: String,
        /// The other task.
        second: String,
        /// Bytes both write (where the first overlap found lies).
        range: ByteRange,
    },
    /// A task reads bytes of a tagged buffer that no task writes: the read waits forever.
    TaggedUnwrittenRead {
        /// Task name.
        task: String,
        /// `Read(i)`.
        place: RegionPlace,
        /// Buffer name.
        buffer: String,
        /// A maximal range of the read that no task writes.
        range: ByteRange,
    },
    /// The greedy run sticks: every interleaving deadlocks in this state.
    Deadlock {
        /// Every worker that has not finished and is stuck at a wait.
        stuck: Vec<StuckWorker>,
        /// Every worker that has not finished and is stuck at a `Run` whose tagged reads are
        /// not written yet. Absent from the JSON when empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        blocked: Vec<BlockedRun>,
        /// Workers that finished.
        finished: usize,
    },
    /// Two accesses to overlapping bytes, not both atomic adds and at least one a write or an
    /// add, on different workers, not ordered by happens-before either way.
    Race {
        /// Buffer name.
        buffer: String,
        /// The access earlier in the greedy run.
        first: Access,
        /// The access later in the greedy run.
        second: Access,
    },
    /// More workers than blocks that can be co-resident: a waiting block could starve one
    /// that never gets an SM.
    TooManyWorkers {
        /// Workers in the schedule.
        workers: usize,
        /// SMs.
        sm_count: u32,
        /// Resident blocks per SM for this kernel.
        blocks_per_sm: u32,
        /// Their product.
        capacity: u64,
    },
    /// An epoch-offset counter that does not receive exactly its declared signals per launch.
    EpochSignalMismatch {
        /// Counter name.
        counter: String,
        /// Declared per-launch signals.
        signals_per_launch: u32,
        /// `Signal`s to it in the schedule.
        signals: u64,
    },
    /// A never-reset counter that is waited on: the next launch's waits would be satisfied by
    /// this launch's signals.
    NeverResetCounterWaited {
        /// Counter name.
        counter: String,
        /// Every wait on it.
        waits: Vec<InstrLoc>,
    },
    /// A task writes or adds to a weight buffer: weights are uploaded once and read by every
    /// launch, so a write would change the model for every later token.
    WeightWritten {
        /// Task name.
        task: String,
        /// `Write(i)` or `Add(i)`.
        place: RegionPlace,
        /// Buffer name.
        buffer: String,
        /// The written range.
        range: ByteRange,
    },
}

fn locs(v: &[InstrLoc]) -> String {
    v.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use VerifyError::*;
        match self {
            NoWorkers => write!(f, "malformed: the schedule has no workers."),
            TaskIdOutOfRange { at, task, tasks } => write!(
                f,
                "malformed: {at} runs task index {task}, but there are only {tasks} tasks."
            ),
            CounterIdOutOfRange { at, counter, counters } => write!(
                f,
                "malformed: {at} uses counter index {counter}, but there are only {counters} counters."
            ),
            BufferIdOutOfRange { task, place, buffer, buffers } => write!(
                f,
                "malformed: task `{task}` {place} names buffer index {buffer}, but there are only {buffers} buffers."
            ),
            EmptyRegion { task, place, buffer } => write!(
                f,
                "malformed: task `{task}` {place} is an empty region of buffer `{buffer}`."
            ),
            RegionOutOfBounds { task, place, buffer, range, buffer_bytes } => write!(
                f,
                "malformed: task `{task}` {place} covers {range} of buffer `{buffer}`, which has only {buffer_bytes} bytes."
            ),
            TaskNotRun { task } => write!(f, "malformed: task `{task}` is never run by any worker."),
            TaskRunMoreThanOnce { task, runs } => write!(
                f,
                "malformed: task `{task}` is run {} times (at {}); every task runs exactly once.",
                runs.len(),
                locs(runs)
            ),
            UnsatisfiableWait { at, counter, at_least, total_signals } => write!(
                f,
                "malformed: {at} waits for counter `{counter}` >= {at_least}, but the whole schedule signals it only {total_signals} times: never satisfiable."
            ),
            OpRegionUndeclared { task, place, buffer, range } => write!(
                f,
                "malformed: task `{task}`'s {place} ({range} of buffer `{buffer}`) is not inside any of its declared {}.",
                if matches!(place, RegionPlace::OpRead(_)) { "reads" } else { "writes" }
            ),
            CopyLengthMismatch { task, src_len, dst_len } => write!(
                f,
                "malformed: task `{task}` copies {src_len} bytes into a {dst_len}-byte destination."
            ),
            FormatOnNonWeight { buffer, kind } => write!(
                f,
                "malformed: buffer `{buffer}` ({kind}) has a `format`, but only weight buffers are held in a format of their own (remove its `format`)."
            ),
            DuplicateName { kind, name, first, second } => write!(
                f,
                "malformed: {kind}s #{first} and #{second} are both named `{name}`; schedule.ron refers by name, so names must be unique."
            ),
            TaggedAdd { task, place, buffer, range } => write!(
                f,
                "malformed: task `{task}` {place} adds to {range} of tagged buffer `{buffer}`; a tagged value is written once by one task, never added to (add into a non-tagged buffer)."
            ),
            TaggedWrittenTwice { buffer, first, second, range } => write!(
                f,
                "malformed: tasks `{first}` and `{second}` both write {range} of tagged buffer `{buffer}`; every tagged byte has at most one writing task per launch (give each its own bytes, or make the buffer non-tagged and order the writes with a counter)."
            ),
            TaggedUnwrittenRead { task, place, buffer, range } => write!(
                f,
                "malformed: task `{task}` {place} reads {range} of tagged buffer `{buffer}`, which no task writes: the read would wait forever (write those bytes in some task, or narrow the read)."
            ),
            Deadlock { stuck, blocked, finished } => {
                write!(
                    f,
                    "deadlock: every interleaving gets stuck ({finished} workers finish, {} are stuck):",
                    stuck.len() + blocked.len()
                )?;
                for s in stuck {
                    write!(
                        f,
                        "\n  {} waits for counter `{}` >= {}, which stays at {}",
                        s.at, s.counter, s.at_least, s.value
                    )?;
                    if s.pending_signals.is_empty() {
                        write!(f, "; no worker has a signal to it left")?;
                    } else {
                        write!(f, "; its remaining signals are behind stuck workers at {}", locs(&s.pending_signals))?;
                    }
                }
                for b in blocked {
                    write!(f, "\n  {b}")?;
                }
                write!(f, ".")
            }
            Race { buffer, first, second } => write!(
                f,
                "race on buffer `{buffer}`: {first} and {second}; the bytes overlap and neither task happens-before the other (add a Signal after one and a Wait before the other)."
            ),
            TooManyWorkers { workers, sm_count, blocks_per_sm, capacity } => write!(
                f,
                "co-residency: {workers} workers, but only {sm_count} SMs x {blocks_per_sm} blocks per SM = {capacity} blocks can be resident at once; a waiting block could starve one that never starts."
            ),
            EpochSignalMismatch { counter, signals_per_launch, signals } => write!(
                f,
                "launch-to-launch: epoch counter `{counter}` declares {signals_per_launch} signals per launch but the schedule signals it {signals} times; the next launch's offsets would be wrong."
            ),
            NeverResetCounterWaited { counter, waits } => write!(
                f,
                "launch-to-launch: counter `{counter}` is never reset but is waited on (at {}); the next launch's waits would be satisfied by this launch's signals. Make it Zeroed or Epoch.",
                locs(waits)
            ),
            WeightWritten { task, place, buffer, range } => write!(
                f,
                "launch-to-launch: task `{task}` {place} covers {range} of weight buffer `{buffer}`; weights are uploaded once and read by every launch, so no task may write or add to them."
            ),
        }
    }
}

impl VerifyError {
    /// Whether this is a malformed-input error (bad ids, bounds, names, run counts, the rules
    /// of tagged buffers), as opposed to a semantic hazard (deadlock, race, residency,
    /// launch-to-launch).
    pub fn is_malformed(&self) -> bool {
        !matches!(
            self,
            VerifyError::Deadlock { .. }
                | VerifyError::Race { .. }
                | VerifyError::TooManyWorkers { .. }
                | VerifyError::EpochSignalMismatch { .. }
                | VerifyError::NeverResetCounterWaited { .. }
                | VerifyError::WeightWritten { .. }
        )
    }
}

/// The verifier's refusal: every error found (never just the first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct Rejection {
    /// All errors, grouped by check in the order the checks run.
    pub errors: Vec<VerifyError>,
}

impl Rejection {
    /// The rejection as pretty JSON (for tools and search loops).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("rejection serializes")
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "schedule rejected: {} error(s)", self.errors.len())?;
        for (i, e) in self.errors.iter().enumerate() {
            write!(f, "\n\n{}. {e}", i + 1)?;
        }
        Ok(())
    }
}
