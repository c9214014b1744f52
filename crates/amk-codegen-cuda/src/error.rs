//! Why a schedule (or an option) cannot be encoded.

use std::fmt;

/// Whether a region is read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// A read (must lie inside a declared `reads` region).
    Read,
    /// A write (must lie inside a declared `writes` region).
    Write,
    /// An atomic add (must lie inside a declared `adds` or `writes` region).
    Add,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Add => "atomic add",
        })
    }
}

/// What is wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// An id names no object.
    #[error("{kind} id {id} is out of range (the schedule has {count} {kind}s)")]
    OutOfRange {
        /// `buffer`, `task` or `counter`.
        kind: &'static str,
        /// The id.
        id: u64,
        /// How many there are.
        count: u64,
    },
    /// An id does not fit the 28 id bits of an instruction word.
    #[error("id {id} does not fit the 28 id bits of an instruction word (at most {max})")]
    IdTooWide {
        /// The id (or count).
        id: u64,
        /// The largest id that fits.
        max: u64,
    },
    /// A value does not fit its 32-bit table word (or the device's 32-bit element indices).
    #[error("{what} = {value} does not fit a 32-bit word (at most {max})")]
    TooLarge {
        /// What was computed (e.g. `(first_row + rows) * cols elements`).
        what: &'static str,
        /// Its value.
        value: u128,
        /// The largest value allowed.
        max: u64,
    },
    /// A value is not a multiple of what the device needs.
    #[error("{what} = {value} is not a multiple of {multiple}")]
    NotMultiple {
        /// What the value is.
        what: &'static str,
        /// Its value.
        value: u64,
        /// What it must be a multiple of.
        multiple: u64,
    },
    /// The op touches bytes its task does not declare (defense in depth: the verifier proved
    /// the declared regions safe, so the op's real accesses must stay inside them).
    #[error(
        "the op would {access} bytes {offset}..{end} of buffer `{buffer}`, which no declared \
         {access} region of the task covers"
    )]
    OutsideDeclared {
        /// Read, write or atomic add.
        access: Access,
        /// The buffer's name.
        buffer: String,
        /// First byte.
        offset: u64,
        /// One past the last byte.
        end: u64,
    },
    /// Any other rule of the ABI.
    #[error("{0}")]
    Rule(String),
}

/// Why [`crate::generate`] refused: every error names the task (by name), counter, buffer,
/// instruction or option, and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodegenError {
    /// A [`crate::CodegenOptions`] value is unusable.
    #[error("codegen option `{field}` = {value}: {message}")]
    Option {
        /// The option.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What it must be.
        message: String,
    },
    /// A task's op cannot be encoded.
    #[error("task `{task}` (task #{id}), field `{field}`: {problem}")]
    Task {
        /// The task's name.
        task: String,
        /// Its id.
        id: u32,
        /// The op field (e.g. `weight`, `output.offset`, `rope.head_dim`).
        field: &'static str,
        /// What is wrong.
        problem: Problem,
    },
    /// An instruction cannot be encoded.
    #[error("worker {worker}, instruction {index}, field `{field}`: {problem}")]
    Instr {
        /// The worker (block) index.
        worker: usize,
        /// The instruction's index in that worker's program.
        index: usize,
        /// `task` or `counter`.
        field: &'static str,
        /// What is wrong.
        problem: Problem,
    },
    /// A counter cannot be encoded.
    #[error("counter `{counter}` (counter #{id}), field `{field}`: {problem}")]
    Counter {
        /// The counter's name.
        counter: String,
        /// Its id.
        id: u32,
        /// The field (e.g. `reset.signals_per_launch`).
        field: &'static str,
        /// What is wrong.
        problem: Problem,
    },
    /// A buffer cannot be placed on the device.
    #[error("buffer `{buffer}` (buffer #{id}), field `{field}`: {problem}")]
    Buffer {
        /// The buffer's name.
        buffer: String,
        /// Its id.
        id: u32,
        /// The field (e.g. `bytes`).
        field: &'static str,
        /// What is wrong.
        problem: Problem,
    },
    /// The schedule as a whole does not fit the ABI (too many tasks, no workers, ...).
    #[error("schedule, field `{field}`: {problem}")]
    Schedule {
        /// The field (e.g. `workers`, `tasks`).
        field: &'static str,
        /// What is wrong.
        problem: Problem,
    },
}
