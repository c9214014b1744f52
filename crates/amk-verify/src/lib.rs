//! amk-verify: the static proof that a schedule is safe to launch.
//!
//! # Contract
//!
//! [`verify`] either returns a [`VerifiedSchedule`] (the only way to make one; codegen takes
//! `&VerifiedSchedule`) or a [`Rejection`] listing EVERY error found, each with task / counter
//! / buffer names and worker / instruction indices. It never panics on a malformed in-memory
//! schedule (ids out of range, regions out of bounds) and never skips a check for size.
//! Accepting means, for the semantics of DESIGN.md section 3 (Run = a task's reads, writes and
//! adds, Signal = release-increment after them, Wait = acquire until the counter reaches its
//! threshold):
//!
//! 1. **Well-formed**: at least one worker; all ids in range; every task run exactly once;
//!    regions non-empty and inside their buffer (no u64 overflow); no wait above the total
//!    number of signals its counter can receive; a Copy's src / dst inside the task's declared
//!    reads / writes, of equal length; names unique (the file refers by name); a `format`
//!    (per-op precision) only on weight buffers. Tagged buffers
//!    (`BufferKind::Tagged`, whose reads block until the values carry this launch's tag):
//!    nothing adds to them, no byte is written by two tasks, every byte read is written.
//! 2. **Deadlock-free**: a `Run` whose task reads tagged bytes goes only once their writer
//!    has run; that and the counters are monotone, so a greedy run decides it for all
//!    interleavings. A counterexample lists each stuck worker and its instruction: the wait
//!    and the counter's value there, or the tagged bytes its task reads and where their
//!    writer sits.
//! 3. **Race-free**: happens-before = program order + signal→wait edges (signal `s` precedes
//!    `Wait(c, k)` iff fewer than `k` signals to `c` can occur without `s`), closed to a
//!    fixpoint; any two accesses to overlapping bytes from different workers are ordered by
//!    it, unless both are reads or both are atomic adds (a task's `adds`: f32 adds commute,
//!    so their order changes at most the rounding). An add conflicts with any read or write.
//!    A tagged read adds no edge (it orders only the values it reads); tagged buffers need no
//!    check, as each read follows the one write of its bytes.
//! 4. **Co-resident**: workers <= `sm_count * blocks_per_sm`.
//! 5. **Launch-to-launch safe**: epoch-offset counters receive exactly their declared signals
//!    per launch; never-reset counters are not waited on; no task writes or adds to a weight
//!    buffer (weights are uploaded once and read by every launch). (Tagged buffers need
//!    nothing: the tag tells one launch's values from the last one's.)
//!
//! The [`Certificate`] records what was proven and the sha256 of the canonical
//! `schedule.ron`, so the runtime can check ([`Certificate::matches`]) that it launches the
//! schedule that was verified.

#![warn(missing_docs)]

mod error;
pub mod testing;
mod verify;

pub use error::{
    Access, AccessKind, BlockedRun, ByteRange, InstrLoc, RegionPlace, Rejection, StuckWorker,
    VerifyError,
};

use amk_schedule::schedule::Schedule;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// What the launch can guarantee: how many blocks are co-resident. `blocks_per_sm` must be
/// the occupancy the COMPILED kernel really gets (registers, shared memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LaunchFacts {
    /// Streaming multiprocessors on the device (132 on an H100 SXM).
    pub sm_count: u32,
    /// Blocks of this kernel resident per SM.
    pub blocks_per_sm: u32,
}

impl LaunchFacts {
    /// Blocks that can be resident at once.
    pub fn capacity(&self) -> u64 {
        u64::from(self.sm_count) * u64::from(self.blocks_per_sm)
    }
}

/// What a successful verification proved, printable and serializable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Workers (blocks) in the schedule.
    pub workers: usize,
    /// Instructions over all workers.
    pub instructions: u64,
    /// Counters.
    pub counters: usize,
    /// Tasks.
    pub tasks: usize,
    /// Signal→wait happens-before edges derived (at the fixpoint).
    pub happens_before_edges: u64,
    /// sha256 (hex) of the canonical `schedule.ron` ([`Schedule::to_ron_string`]).
    pub schedule_hash: String,
    /// The launch facts the proof assumed.
    pub facts: LaunchFacts,
}

impl Certificate {
    /// Whether `schedule` is the schedule this certificate was issued for (hash compare).
    pub fn matches(&self, schedule: &Schedule) -> bool {
        schedule_hash(schedule) == self.schedule_hash
    }
}

impl fmt::Display for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "verified: {} workers (<= {} SMs x {} blocks), {} instructions, {} tasks, {} counters, \
             {} happens-before edges; deadlock-free, race-free, launch-to-launch safe; schedule sha256 {}",
            self.workers,
            self.facts.sm_count,
            self.facts.blocks_per_sm,
            self.instructions,
            self.tasks,
            self.counters,
            self.happens_before_edges,
            self.schedule_hash
        )
    }
}

/// The sha256 (lowercase hex) of the canonical `schedule.ron` text of `schedule`.
pub fn schedule_hash(schedule: &Schedule) -> String {
    let digest = Sha256::digest(schedule.to_ron_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A schedule together with the proof that it is safe. Only [`verify`] makes one; it derefs
/// to the (immutable) schedule.
#[derive(Debug, Clone)]
pub struct VerifiedSchedule {
    schedule: Schedule,
    certificate: Certificate,
}

impl VerifiedSchedule {
    /// The verified schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    /// The proof's summary.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }
    /// Gives up the proof and returns the schedule (e.g. to edit it and verify again).
    pub fn into_schedule(self) -> Schedule {
        self.schedule
    }
}

impl std::ops::Deref for VerifiedSchedule {
    type Target = Schedule;
    fn deref(&self) -> &Schedule {
        &self.schedule
    }
}

/// Proves `schedule` safe to launch under `facts` (see the crate docs for what is proven), or
/// returns every error found.
pub fn verify(schedule: &Schedule, facts: &LaunchFacts) -> Result<VerifiedSchedule, Rejection> {
    let _span = tracing::info_span!(
        "verify",
        workers = schedule.workers.len(),
        sms = facts.sm_count,
        blocks_per_sm = facts.blocks_per_sm
    )
    .entered();
    let mut errors = Vec::new();
    let outcome = verify::check_all(schedule, (facts.sm_count, facts.blocks_per_sm), &mut errors);
    if !errors.is_empty() {
        return Err(Rejection { errors });
    }
    let certificate = Certificate {
        workers: schedule.workers.len(),
        instructions: schedule.workers.iter().map(|w| w.instrs.len() as u64).sum(),
        counters: schedule.counters.len(),
        tasks: schedule.tasks.len(),
        happens_before_edges: outcome.happens_before_edges,
        schedule_hash: schedule_hash(schedule),
        facts: *facts,
    };
    Ok(VerifiedSchedule { schedule: schedule.clone(), certificate })
}
