//! `amk search`: a search over the schedule's knobs (`ScheduleConfig`) and the launch options,
//! seeded by the defaults.
//!
//! Every candidate goes through the same pipeline: its knobs are checked
//! (`ScheduleConfig::check`: an unusable value is an *invalid* candidate), lowered, and proven
//! by `amk-verify` with the launch facts its knobs claim. A rejected candidate is counted and
//! logged with the verifier's first error, and never reaches the [`Evaluator`], so nothing
//! unproven is ever launched. An accepted one goes to the evaluator: on the GPU
//! ([`GpuEvaluator`]) it is built (which re-verifies with the compiled kernel's real
//! occupancy: a refusal there is counted as rejected too), decoded in exact f32 mode and
//! compared token for token with the f32 CPU reference, then timed in the requested precision.
//!
//! The strategy ([`Search`]): the seed (the defaults) first, then coordinate descent (each
//! knob in turn moves to its neighbouring values while that is faster; passes repeat until
//! one brings no gain), then random mutations (1-3 knobs) of the best few until one is faster,
//! which starts another descent from it; until the budget of candidates the verifier accepts,
//! the time limit, or the space around the best is exhausted. The same knobs are never tried
//! twice, and a candidate that lowers to a schedule already evaluated with the same launch
//! options is not built again (`same_kernel`). At the end the seed and the best are timed
//! once more, one after the other. Deterministic for a given `--seed` (timings aside).
//!
//! The knobs searched are [`KNOBS`], one table entry each (name, values, getter, setter).

use crate::gpu::{backend_for, GpuArgs, Precision};
use crate::stages::SynthPreset;
use amk_ir::graph::DecodeGraph;
use amk_ir::synth::SplitMix;
use amk_ir::Model;
use amk_runtime::gpu::{GpuBackend, GpuError};
use amk_runtime::{generate, Backend, GenerateOptions, RuntimeError};
use amk_schedule::config::{Assignment, TaskOrder};
use amk_schedule::{lower, PrecisionPlan, ScheduleConfig, WeightFormat};
use amk_verify::{verify, LaunchFacts, Rejection, VerifiedSchedule};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Search the schedule's knobs (workers, blocks per SM, attention splits, tile sizes, fusion,
/// task order and placement, prefetch depth, threads per block, weight staging) for the
/// fastest schedule.
///
/// Seeded by the defaults: coordinate descent over the knobs, then random mutations of the
/// best few, until --budget candidates passed the verifier or --time-limit seconds passed.
/// Every candidate is proven by the verifier before it may launch (rejected ones are counted,
/// never run); each accepted one is decoded in exact f32 mode and must give the f32 CPU
/// reference's tokens on a short prompt, then is timed in --precision at --context (median of
/// --timed-tokens launches queued back to back).
///
/// Writes into --out: schedule.ron and knobs.ron (the best; its launch options and time are in
/// the log and the first line of schedule.ron) and search-log.json (every candidate with its
/// outcome, the totals, default against best). Needs a CUDA GPU unless --dry-run.
///
/// Example: amk search /path/to/SmolLM2-135M-Instruct --budget 40 --out search-out
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Hugging Face model directory or .gguf file.
    #[arg(required_unless_present = "synth", conflicts_with = "synth")]
    pub model: Option<PathBuf>,
    /// Search on a synthetic model of this shape instead (seeded random weights; timing does
    /// not depend on weight values).
    #[arg(long, value_enum)]
    pub synth: Option<SynthPreset>,
    /// Weight precision timed (the token check always runs in exact f32).
    #[arg(long, value_enum, default_value = "bf16")]
    pub precision: Precision,
    /// Also search the per-op precision knobs (attention, MLP and LM head, each bf16 or int8).
    /// Off by default: a format other than --precision changes the model's output, and the
    /// token check runs in exact f32, where every matrix is f32, so it does not judge them.
    /// Check a plan it picks with `amk agree MODEL --precision P --config OUT/knobs.ron`.
    #[arg(long)]
    pub per_op_precision: bool,
    /// Tokens in the KV cache when timing starts.
    #[arg(long, default_value_t = 256)]
    pub context: usize,
    /// At most this many candidates that pass the verifier (each is built and timed on the
    /// GPU, about 3-6 s for SmolLM2); rejected and invalid ones do not count, up to 5x this
    /// many tried in all.
    #[arg(long, default_value_t = 40)]
    pub budget: usize,
    /// Stop starting new candidates after this many seconds of search.
    #[arg(long, default_value_t = 400.0)]
    pub time_limit: f64,
    /// Seed of the random mutations.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output directory.
    #[arg(long, default_value = "search-out")]
    pub out: PathBuf,
    /// Verify only: run the strategy without a GPU (nothing is launched) and report how many
    /// candidates would be timed. No timings, so the descent never moves.
    #[arg(long)]
    pub dry_run: bool,
    /// Start from these knobs (RON ScheduleConfig) instead of the defaults; they are the
    /// baseline the best is compared with.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// SMs of the target GPU (sm_count of the seed knobs; workers too, where the seed has
    /// one worker per SM) [default: the seed's, 132].
    #[arg(long)]
    pub sms: Option<u32>,
    /// Launches timed per candidate (the median is its time).
    #[arg(long, default_value_t = 200)]
    pub timed_tokens: usize,
    /// Launches run, not timed, before timing.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// New tokens of the exact-mode check against the CPU reference.
    #[arg(long, default_value_t = 16)]
    pub check_tokens: usize,
    /// A candidate replaces the best only when faster by at least this fraction (timing noise).
    #[arg(long, default_value_t = 0.005)]
    pub min_gain: f64,
    /// Seconds a launch may take before the candidate fails with the counters' values (and
    /// the search stops: the device may be unusable after a hang).
    #[arg(long, default_value_t = 10.0)]
    pub watchdog: f64,
}

// ---------------------------------------------------------------------------------------------
// Candidates and the knob table.

/// Launch options searched beside the schedule's knobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaunchChoice {
    /// Threads per block of the megakernel.
    pub block_threads: u32,
    /// Stage weight tiles in shared memory before waiting (`--no-stage` when false).
    pub stage: bool,
}

impl Default for LaunchChoice {
    /// What `amk generate` and `amk gpu-test` use when no option is given.
    fn default() -> Self {
        let g = GpuArgs::default();
        LaunchChoice { block_threads: g.block_threads, stage: !g.no_stage }
    }
}

/// One point of the search space: the schedule's knobs and the launch options.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub knobs: ScheduleConfig,
    pub launch: LaunchChoice,
    /// Whether the per-op precision knobs may move (`--per-op-precision`); not part of the
    /// point itself.
    pub precision_free: bool,
}

impl Candidate {
    /// Identity for memoisation: every field of both parts.
    fn key(&self) -> String {
        format!("{:?} {:?}", self.knobs, self.launch)
    }

    /// The knobs of the table whose values differ from `base`, in table order.
    pub fn changed_from(&self, base: &Candidate) -> BTreeMap<String, String> {
        KNOBS
            .iter()
            .filter(|k| (k.get)(self) != (k.get)(base))
            .map(|k| (k.name.to_owned(), (k.show)((k.get)(self))))
            .collect()
    }

    /// The GPU options that launch this candidate in `precision`.
    pub fn gpu_args(&self, precision: Precision, watchdog: f64) -> GpuArgs {
        GpuArgs {
            precision: Some(precision),
            watchdog,
            block_threads: self.launch.block_threads,
            no_stage: !self.launch.stage,
            ..GpuArgs::default()
        }
    }
}

/// One searched knob. Values are `u32` (enums and flags by index), so every knob moves the
/// same way: to the neighbouring value of its ordered domain, or to a random one.
pub struct Knob {
    pub name: &'static str,
    /// The values the search may give it, ascending (may depend on the candidate, e.g.
    /// workers on the SM count). A value outside it (from --config) still has neighbours.
    pub domain: fn(&Candidate) -> Vec<u32>,
    pub get: fn(&Candidate) -> u32,
    pub set: fn(&mut Candidate, u32),
    /// The value as the log shows it.
    pub show: fn(u32) -> String,
}

fn num(v: u32) -> String {
    v.to_string()
}

fn flag(v: u32) -> String {
    (v != 0).to_string()
}

fn assignment_name(v: u32) -> String {
    format!("{:?}", assignment_of(v))
}

fn assignment_of(v: u32) -> Assignment {
    if v == 0 {
        Assignment::RoundRobin
    } else {
        Assignment::BalancedBytes
    }
}

/// A per-op precision knob's value: 0 as built (`None`), 1 bf16, 2 int8.
fn format_index(f: Option<WeightFormat>) -> u32 {
    match f {
        None => 0,
        Some(WeightFormat::Bf16) => 1,
        Some(WeightFormat::Int8) => 2,
    }
}

fn format_of(v: u32) -> Option<WeightFormat> {
    match v {
        0 => None,
        1 => Some(WeightFormat::Bf16),
        _ => Some(WeightFormat::Int8),
    }
}

fn format_name(v: u32) -> String {
    format_of(v).map_or_else(|| "as built".to_owned(), |f| format!("{f:?}"))
}

/// A per-op precision knob's domain: bf16 and int8 once the seed's plan is spelled out
/// ([`explicit_plan`]) and the search may move them (`--per-op-precision`); nothing for a
/// class left as built (f32 searches, whose kernels hold every matrix in f32).
fn format_domain(c: &Candidate, f: Option<WeightFormat>) -> Vec<u32> {
    match f {
        Some(_) if c.precision_free => vec![1, 2],
        _ => Vec::new(),
    }
}

/// `plan` with every class's format spelled out for a `precision` build, so candidates that
/// hold the same formats lower to the same schedule (and the search times that kernel once).
/// f32 builds hold every matrix in f32: their plan is dropped, and its knobs stay still.
pub fn explicit_plan(plan: PrecisionPlan, precision: Precision) -> PrecisionPlan {
    let build = match precision {
        Precision::F32 => return PrecisionPlan::default(),
        Precision::Bf16 => WeightFormat::Bf16,
        Precision::Int8 => WeightFormat::Int8,
    };
    PrecisionPlan {
        attention: Some(plan.attention.unwrap_or(build)),
        mlp: Some(plan.mlp.unwrap_or(build)),
        lm_head: Some(plan.lm_head.unwrap_or(build)),
    }
}

fn order_name(v: u32) -> String {
    format!("{:?}", order_of(v))
}

fn order_of(v: u32) -> TaskOrder {
    if v == 0 {
        TaskOrder::AsLowered
    } else {
        TaskOrder::LargestFirst
    }
}

/// The knobs searched, in the order coordinate descent visits them. Adding a knob is one
/// entry. Not searched: `sm_count` (a fact of the device, `--sms`) and `max_positions` (cache
/// size, not speed). `workers` ranges up to twice `sm_count * blocks_per_sm`: the verifier
/// rejects more workers than co-resident blocks, and the rejection is counted (nothing is
/// pre-filtered but what `ScheduleConfig::check` refuses). Moving `blocks_per_sm` scales
/// `workers` with it.
pub static KNOBS: &[Knob] = &[
    Knob {
        name: "workers",
        domain: |c| {
            let s = c.knobs.sm_count.saturating_mul(c.knobs.blocks_per_sm);
            let mut v: Vec<u32> = [s / 4, s / 2, 3 * s / 4, s, 3 * s / 2, 2 * s]
                .into_iter()
                .filter(|&v| v > 0)
                .collect();
            v.dedup();
            v
        },
        get: |c| c.knobs.workers,
        set: |c, v| c.knobs.workers = v,
        show: num,
    },
    Knob {
        name: "blocks_per_sm",
        domain: |_| vec![1, 2, 3],
        get: |c| c.knobs.blocks_per_sm,
        // Keeps the workers per co-resident slot: 132 workers at 1 block per SM become 264 at
        // 2 (the move that can use a second block per SM).
        set: |c, v| {
            let old = u64::from(c.knobs.blocks_per_sm.max(1));
            let workers = u64::from(c.knobs.workers) * u64::from(v) / old;
            c.knobs.workers = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
            c.knobs.blocks_per_sm = v;
        },
        show: num,
    },
    Knob {
        name: "block_threads",
        domain: |_| vec![128, 256, 512, 1024],
        get: |c| c.launch.block_threads,
        set: |c, v| c.launch.block_threads = v,
        show: num,
    },
    Knob {
        name: "stage",
        domain: |_| vec![0, 1],
        get: |c| u32::from(c.launch.stage),
        set: |c, v| c.launch.stage = v != 0,
        show: flag,
    },
    Knob {
        name: "attn_splits",
        domain: |_| vec![1, 2, 4, 8, 16, 32],
        get: |c| c.knobs.attn_splits,
        set: |c, v| c.knobs.attn_splits = v,
        show: num,
    },
    Knob {
        name: "qkv_parts",
        domain: |_| vec![1, 2, 4],
        get: |c| c.knobs.qkv_parts,
        set: |c, v| c.knobs.qkv_parts = v,
        show: num,
    },
    Knob {
        name: "o_rows",
        domain: |_| vec![4, 8, 16, 32, 64],
        get: |c| c.knobs.o_rows,
        set: |c, v| c.knobs.o_rows = v,
        show: num,
    },
    Knob {
        name: "mlp_rows",
        domain: |_| vec![4, 8, 16, 24, 32, 64],
        get: |c| c.knobs.mlp_rows,
        set: |c, v| c.knobs.mlp_rows = v,
        show: num,
    },
    Knob {
        name: "down_rows",
        domain: |_| vec![4, 8, 16, 32, 64],
        get: |c| c.knobs.down_rows,
        set: |c, v| c.knobs.down_rows = v,
        show: num,
    },
    Knob {
        name: "head_rows",
        domain: |_| vec![64, 128, 192, 256, 384, 448, 512, 768, 1024, 1536],
        get: |c| c.knobs.head_rows,
        set: |c, v| c.knobs.head_rows = v,
        show: num,
    },
    Knob {
        name: "fuse_norm",
        domain: |_| vec![0, 1],
        get: |c| u32::from(c.knobs.fuse_norm),
        set: |c, v| c.knobs.fuse_norm = v != 0,
        show: flag,
    },
    Knob {
        name: "fuse_down",
        domain: |_| vec![0, 1],
        get: |c| u32::from(c.knobs.fuse_down),
        set: |c, v| c.knobs.fuse_down = v != 0,
        show: flag,
    },
    Knob {
        name: "fuse_q",
        domain: |_| vec![0, 1],
        get: |c| u32::from(c.knobs.fuse_q),
        set: |c, v| c.knobs.fuse_q = v != 0,
        show: flag,
    },
    Knob {
        name: "o_by_head",
        domain: |_| vec![0, 1],
        get: |c| u32::from(c.knobs.o_by_head),
        set: |c, v| c.knobs.o_by_head = v != 0,
        show: flag,
    },
    Knob {
        name: "head_waits",
        domain: |_| vec![0, 1],
        get: |c| u32::from(c.knobs.head_waits),
        set: |c, v| c.knobs.head_waits = v != 0,
        show: flag,
    },
    Knob {
        name: "tagged",
        domain: |_| vec![0, 1],
        get: |c| u32::from(c.knobs.tagged),
        set: |c, v| c.knobs.tagged = v != 0,
        show: flag,
    },
    Knob {
        name: "assignment",
        domain: |_| vec![0, 1],
        get: |c| match c.knobs.assignment {
            Assignment::RoundRobin => 0,
            Assignment::BalancedBytes => 1,
        },
        set: |c, v| c.knobs.assignment = assignment_of(v),
        show: assignment_name,
    },
    Knob {
        name: "task_order",
        domain: |_| vec![0, 1],
        get: |c| match c.knobs.task_order {
            TaskOrder::AsLowered => 0,
            TaskOrder::LargestFirst => 1,
        },
        set: |c, v| c.knobs.task_order = order_of(v),
        show: order_name,
    },
    Knob {
        name: "prefetch_depth",
        domain: |_| vec![0, 1, 2, 3, 4],
        get: |c| c.knobs.prefetch_depth,
        set: |c, v| c.knobs.prefetch_depth = v,
        show: num,
    },
    Knob {
        name: "attention_precision",
        domain: |c| format_domain(c, c.knobs.precision.attention),
        get: |c| format_index(c.knobs.precision.attention),
        set: |c, v| c.knobs.precision.attention = format_of(v),
        show: format_name,
    },
    Knob {
        name: "mlp_precision",
        domain: |c| format_domain(c, c.knobs.precision.mlp),
        get: |c| format_index(c.knobs.precision.mlp),
        set: |c, v| c.knobs.precision.mlp = format_of(v),
        show: format_name,
    },
    Knob {
        name: "lm_head_precision",
        domain: |c| format_domain(c, c.knobs.precision.lm_head),
        get: |c| format_index(c.knobs.precision.lm_head),
        set: |c, v| c.knobs.precision.lm_head = format_of(v),
        show: format_name,
    },
];

/// The neighbour of `c` one step along `knob`'s domain (`up` or down), if there is one.
fn neighbour(c: &Candidate, knob: &Knob, up: bool) -> Option<Candidate> {
    let current = (knob.get)(c);
    let mut domain = (knob.domain)(c);
    domain.push(current);
    domain.sort_unstable();
    domain.dedup();
    let i = domain.iter().position(|&v| v == current)?;
    let j = if up { i.checked_add(1)? } else { i.checked_sub(1)? };
    let value = *domain.get(j)?;
    let mut n = c.clone();
    (knob.set)(&mut n, value);
    Some(n)
}

// ---------------------------------------------------------------------------------------------
// Outcomes, the evaluator interface and the log's records.

/// What happened to a candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// `ScheduleConfig::check` or the lowering refused the knobs.
    Invalid { error: String },
    /// Not proven safe: by the verifier on the lowered schedule (`at: verifier`, never
    /// launched, never given to the evaluator), or when the compiled kernel's real occupancy
    /// was checked (`at: device`, refused before any launch).
    Rejected { at: RejectedAt, error: String },
    /// The evaluator could not build, run or time it.
    Failed { error: String },
    /// Exact mode did not give the CPU reference's tokens: never the best.
    WrongTokens { first_difference: usize, expected: Vec<u32>, got: Vec<u32> },
    /// Gave the reference's tokens, and took `ms` per token.
    Timed { ms: f64, detail: String },
    /// A dry run: proven safe, would have been timed.
    Verified,
    /// Proven safe, but lowered to the same schedule as candidate `of`, with the same launch
    /// options (e.g. a knob the lowering and code generation ignore): the same kernel, so it
    /// is not built or timed again; `of`'s outcome stands for it.
    SameKernel { of: usize },
}

/// Where a rejection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectedAt {
    Verifier,
    Device,
}

/// What an evaluator measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Median milliseconds per token.
    pub ms: f64,
    /// How the kernel fit, for the log.
    pub detail: String,
}

/// Why an evaluator gave no time.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalFailure {
    /// The device's occupancy check refused the kernel (counted as rejected by the verifier).
    Rejected(String),
    /// Exact mode disagreed with the reference.
    WrongTokens { first_difference: usize, expected: Vec<u32>, got: Vec<u32> },
    /// Anything else; the search goes on.
    Failed(String),
    /// The device may be unusable (a hang or a fault): recorded as failed, and the search
    /// stops.
    Fatal(String),
}

/// Times a verified candidate. Only ever given schedules the verifier accepted.
pub trait Evaluator {
    fn evaluate(
        &mut self,
        verified: &VerifiedSchedule,
        candidate: &Candidate,
    ) -> Result<Measured, EvalFailure>;
}

/// Which part of the strategy proposed a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Seed,
    Descent,
    Mutation,
}

/// One candidate tried, as the log records it.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub index: usize,
    pub phase: Phase,
    /// Knobs that differ from the seed's.
    pub changed: BTreeMap<String, String>,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Wall time of the whole pipeline for it (lower, verify, evaluate).
    pub seconds: f64,
    #[serde(skip)]
    pub candidate: Candidate,
}

impl Record {
    fn ms(&self) -> Option<f64> {
        match self.outcome {
            Outcome::Timed { ms, .. } => Some(ms),
            _ => None,
        }
    }
}

/// The log's counts. `tried = invalid + rejected_by_verifier + failed + wrong_tokens + timed +
/// would_time + same_kernel`; `passed_verifier = rejected_on_device + failed + wrong_tokens +
/// timed + would_time` = the candidates given to the evaluator (or, in a dry run, that would
/// be), which the budget counts; `same_kernel` ones passed the verifier too but cost nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub tried: usize,
    pub invalid: usize,
    pub rejected_by_verifier: usize,
    /// Of `rejected_by_verifier`, those refused with the compiled kernel's real occupancy.
    pub rejected_on_device: usize,
    pub passed_verifier: usize,
    pub failed: usize,
    pub wrong_tokens: usize,
    pub timed: usize,
    /// Dry run: passed the verifier, not launched.
    pub would_time: usize,
    /// Passed the verifier with the schedule and launch options of an earlier candidate.
    pub same_kernel: usize,
    /// Candidates proposed again and answered from memory (not tried twice).
    pub memo_hits: usize,
}

// ---------------------------------------------------------------------------------------------
// The strategy.

/// Limits and tuning of a search.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Candidates that pass the verifier, at most.
    pub budget: usize,
    /// Candidates tried in all (invalid and rejected included), at most.
    pub max_tried: usize,
    pub time_limit: Duration,
    pub seed: u64,
    /// Fraction by which a candidate must beat the best to replace it.
    pub min_gain: f64,
    /// Mutations start from one of this many best candidates.
    pub parents: usize,
    /// At the end, time the seed and the best once more, one after the other, so that
    /// "best against default" compares two measurements taken under the same conditions.
    pub confirm: bool,
}

impl Settings {
    pub fn new(budget: usize, time_limit: Duration, seed: u64) -> Settings {
        Settings {
            budget,
            max_tried: budget.saturating_mul(5),
            time_limit,
            seed,
            min_gain: 0.005,
            parents: 4,
            confirm: true,
        }
    }
}

/// What a search found.
#[derive(Debug, Clone)]
pub struct SearchResult {
    pub records: Vec<Record>,
    pub totals: Totals,
    /// Index into `records` of the fastest candidate with the reference's tokens.
    pub best: Option<usize>,
    /// Index of the seed's record (absent only when nothing could be tried).
    pub seed: Option<usize>,
    /// Why the search ended.
    pub stopped: String,
    pub seconds: f64,
    /// The seed and the best timed again at the end ([`Settings::confirm`]).
    pub confirmed: Option<Confirmed>,
}

/// The seed and the best, timed again one after the other after the search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confirmed {
    pub default_ms: f64,
    pub best_ms: f64,
    pub speedup: f64,
}

impl SearchResult {
    /// The seed's time, when it was timed.
    pub fn default_ms(&self) -> Option<f64> {
        self.seed.and_then(|i| self.records[i].ms())
    }

    /// The best's time.
    pub fn best_ms(&self) -> Option<f64> {
        self.best.and_then(|i| self.records[i].ms())
    }
}

enum Step {
    Improved,
    NotImproved,
    Stop,
}

/// Progress callback: each record as it is made, with the totals so far and the best's time.
pub type OnRecord<'p> = dyn FnMut(&Record, &Totals, Option<f64>) + 'p;

/// A search over [`KNOBS`] from a seed candidate.
pub struct Search<'g, 'e, 'p> {
    graph: &'g DecodeGraph,
    seed: Candidate,
    settings: Settings,
    evaluator: Option<&'e mut dyn Evaluator>,
    on_record: &'p mut OnRecord<'p>,
    rng: SplitMix,
    memo: HashMap<String, usize>,
    /// Schedule hash and launch options of every candidate that passed the verifier, to its
    /// record.
    kernels: HashMap<String, usize>,
    records: Vec<Record>,
    totals: Totals,
    best: Option<usize>,
    stopped: Option<String>,
    /// A device failure stopped the search: launch nothing more.
    fatal: bool,
    started: Instant,
}

impl<'g, 'e, 'p> Search<'g, 'e, 'p> {
    /// `evaluator: None` is a dry run (verification only).
    pub fn new(
        graph: &'g DecodeGraph,
        seed: Candidate,
        settings: Settings,
        evaluator: Option<&'e mut dyn Evaluator>,
        on_record: &'p mut OnRecord<'p>,
    ) -> Search<'g, 'e, 'p> {
        let rng = SplitMix(settings.seed);
        Search {
            graph,
            seed,
            settings,
            evaluator,
            on_record,
            rng,
            memo: HashMap::new(),
            kernels: HashMap::new(),
            records: Vec::new(),
            totals: Totals::default(),
            best: None,
            stopped: None,
            fatal: false,
            started: Instant::now(),
        }
    }

    /// Runs the strategy to the end and returns what it found.
    pub fn run(mut self) -> SearchResult {
        self.started = Instant::now();
        let seed = self.seed.clone();
        self.attempt(seed, Phase::Seed);
        while self.stopped.is_none() {
            self.descend();
            if self.stopped.is_some() || !self.evolve() {
                break;
            }
        }
        let seed_index = self.memo.get(&self.seed.key()).copied();
        let confirmed = self.confirm(seed_index);
        SearchResult {
            records: self.records,
            totals: self.totals,
            best: self.best,
            seed: seed_index,
            stopped: self.stopped.unwrap_or_else(|| "the search ended".into()),
            seconds: self.started.elapsed().as_secs_f64(),
            confirmed,
        }
    }

    /// Times the seed and the best again (when both were timed and differ).
    fn confirm(&mut self, seed: Option<usize>) -> Option<Confirmed> {
        let (seed, best) = (seed?, self.best?);
        if !self.settings.confirm || self.fatal || self.evaluator.is_none() || seed == best {
            return None;
        }
        self.records[seed].ms()?;
        let (seed, best) =
            (self.records[seed].candidate.clone(), self.records[best].candidate.clone());
        let mut time = |c: &Candidate| match self.pipeline(c, false) {
            (Outcome::Timed { ms, .. }, None) => Some(ms),
            _ => None,
        };
        let default_ms = time(&seed)?;
        let best_ms = time(&best)?;
        Some(Confirmed { default_ms, best_ms, speedup: default_ms / best_ms })
    }

    fn best_ms(&self) -> Option<f64> {
        self.best.and_then(|i| self.records[i].ms())
    }

    /// The candidate moves start from: the best, or the seed while nothing was timed.
    fn incumbent(&self) -> Candidate {
        self.best.map_or_else(|| self.seed.clone(), |i| self.records[i].candidate.clone())
    }

    /// Coordinate descent from the incumbent: each knob in turn steps up (then, if that did
    /// not help, down) for as long as each step is faster; passes repeat until one brings no
    /// gain.
    fn descend(&mut self) {
        loop {
            let mut gained = false;
            for knob in KNOBS {
                for up in [true, false] {
                    let mut moved = false;
                    while let Some(next) = neighbour(&self.incumbent(), knob, up) {
                        match self.attempt(next, Phase::Descent) {
                            Step::Improved => moved = true,
                            Step::NotImproved => break,
                            Step::Stop => return,
                        }
                    }
                    if moved {
                        gained = true;
                        break;
                    }
                }
            }
            if !gained {
                return;
            }
        }
    }

    /// Random mutations (1-3 knobs to random values of their domains) of one of the best few,
    /// until one is faster than the best (true) or the search stops or finds nothing new
    /// (false).
    fn evolve(&mut self) -> bool {
        let mut misses = 0;
        loop {
            let parents = self.parents();
            let parent = &parents[self.below(parents.len())];
            let child = self.mutate(parent);
            if self.memo.contains_key(&child.key()) {
                self.totals.memo_hits += 1;
                misses += 1;
                if misses > 1000 {
                    self.stopped = Some("no untried candidate near the best".into());
                    return false;
                }
                continue;
            }
            misses = 0;
            match self.attempt(child, Phase::Mutation) {
                Step::Improved => return true,
                Step::NotImproved => {}
                Step::Stop => return false,
            }
        }
    }

    /// The best few timed candidates, fastest first (or the seed).
    fn parents(&self) -> Vec<Candidate> {
        let mut timed: Vec<(f64, usize)> =
            self.records.iter().filter_map(|r| Some((r.ms()?, r.index))).collect();
        timed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let parents: Vec<Candidate> = timed
            .iter()
            .take(self.settings.parents.max(1))
            .map(|&(_, i)| self.records[i].candidate.clone())
            .collect();
        if parents.is_empty() {
            vec![self.seed.clone()]
        } else {
            parents
        }
    }

    fn below(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n.max(1) as u64) as usize
    }

    fn mutate(&mut self, parent: &Candidate) -> Candidate {
        let count = 1 + self.below(3);
        let mut order: Vec<usize> = (0..KNOBS.len()).collect();
        let mut child = parent.clone();
        for i in 0..count.min(order.len()) {
            let j = i + self.below(order.len() - i);
            order.swap(i, j);
            let knob = &KNOBS[order[i]];
            let current = (knob.get)(&child);
            let options: Vec<u32> =
                (knob.domain)(&child).into_iter().filter(|&v| v != current).collect();
            if !options.is_empty() {
                let v = options[self.below(options.len())];
                (knob.set)(&mut child, v);
            }
        }
        child
    }

    fn stop_reason(&self) -> Option<String> {
        if let Some(why) = &self.stopped {
            return Some(why.clone());
        }
        if self.totals.passed_verifier >= self.settings.budget {
            return Some(format!(
                "budget of {} candidates past the verifier reached",
                self.settings.budget
            ));
        }
        if self.totals.tried >= self.settings.max_tried {
            return Some(format!("{} candidates tried in all", self.settings.max_tried));
        }
        if self.started.elapsed() >= self.settings.time_limit {
            return Some(format!(
                "time limit of {:.0} s reached",
                self.settings.time_limit.as_secs_f64()
            ));
        }
        None
    }

    /// Puts one candidate through the pipeline (unless it was tried before) and says whether
    /// it is the new best.
    fn attempt(&mut self, candidate: Candidate, phase: Phase) -> Step {
        let key = candidate.key();
        if self.memo.contains_key(&key) {
            self.totals.memo_hits += 1;
            return Step::NotImproved;
        }
        if let Some(why) = self.stop_reason() {
            self.stopped = Some(why);
            return Step::Stop;
        }
        let started = Instant::now();
        let (outcome, fatal) = self.pipeline(&candidate, true);
        let t = &mut self.totals;
        t.tried += 1;
        match &outcome {
            Outcome::Invalid { .. } => t.invalid += 1,
            Outcome::Rejected { at, .. } => {
                t.rejected_by_verifier += 1;
                if *at == RejectedAt::Device {
                    t.rejected_on_device += 1;
                    t.passed_verifier += 1;
                }
            }
            Outcome::Failed { .. } => {
                t.failed += 1;
                t.passed_verifier += 1;
            }
            Outcome::WrongTokens { .. } => {
                t.wrong_tokens += 1;
                t.passed_verifier += 1;
            }
            Outcome::Timed { .. } => {
                t.timed += 1;
                t.passed_verifier += 1;
            }
            Outcome::Verified => {
                t.would_time += 1;
                t.passed_verifier += 1;
            }
            Outcome::SameKernel { .. } => t.same_kernel += 1,
        }
        let index = self.records.len();
        let record = Record {
            index,
            phase,
            changed: candidate.changed_from(&self.seed),
            outcome,
            seconds: started.elapsed().as_secs_f64(),
            candidate,
        };
        let improved = match (record.ms(), self.best_ms()) {
            (Some(ms), Some(best)) => ms < best * (1.0 - self.settings.min_gain),
            (Some(_), None) => true,
            (None, _) => false,
        };
        self.records.push(record);
        self.memo.insert(key, index);
        if improved {
            self.best = Some(index);
        }
        let best_ms = self.best_ms();
        (self.on_record)(&self.records[index], &self.totals, best_ms);
        if let Some(why) = fatal {
            self.stopped = Some(why);
            self.fatal = true;
            return Step::Stop;
        }
        if let (Phase::Seed, Outcome::Failed { error }) = (phase, &self.records[index].outcome) {
            // The defaults do not even run (e.g. a precision the kernel does not implement):
            // every other candidate would fail the same way.
            self.stopped = Some(format!("the seed failed: {error}"));
            return Step::Stop;
        }
        if improved {
            Step::Improved
        } else {
            Step::NotImproved
        }
    }

    /// Check, lower, verify, evaluate (unless `dedupe` and the same kernel was evaluated
    /// before). The second value, when present, stops the search.
    fn pipeline(&mut self, candidate: &Candidate, dedupe: bool) -> (Outcome, Option<String>) {
        if let Err(e) = candidate.knobs.check() {
            return (Outcome::Invalid { error: e.to_string() }, None);
        }
        let schedule = match lower(self.graph, &candidate.knobs) {
            Ok(s) => s,
            Err(e) => return (Outcome::Invalid { error: e.to_string() }, None),
        };
        let facts = LaunchFacts {
            sm_count: candidate.knobs.sm_count,
            blocks_per_sm: candidate.knobs.blocks_per_sm,
        };
        let verified = match verify(&schedule, &facts) {
            Ok(v) => v,
            Err(rejection) => {
                let error = first_error(&rejection);
                return (Outcome::Rejected { at: RejectedAt::Verifier, error }, None);
            }
        };
        if dedupe {
            let kernel = format!("{} {:?}", verified.certificate().schedule_hash, candidate.launch);
            if let Some(&of) = self.kernels.get(&kernel) {
                return (Outcome::SameKernel { of }, None);
            }
            self.kernels.insert(kernel, self.records.len());
        }
        let Some(evaluator) = self.evaluator.as_deref_mut() else {
            return (Outcome::Verified, None);
        };
        match evaluator.evaluate(&verified, candidate) {
            Ok(m) if m.ms.is_finite() && m.ms > 0.0 => {
                (Outcome::Timed { ms: m.ms, detail: m.detail }, None)
            }
            Ok(m) => (
                Outcome::Failed { error: format!("measured {} ms: not a positive time", m.ms) },
                None,
            ),
            Err(EvalFailure::Rejected(error)) => {
                (Outcome::Rejected { at: RejectedAt::Device, error }, None)
            }
            Err(EvalFailure::WrongTokens { first_difference, expected, got }) => {
                (Outcome::WrongTokens { first_difference, expected, got }, None)
            }
            Err(EvalFailure::Failed(error)) => (Outcome::Failed { error }, None),
            Err(EvalFailure::Fatal(error)) => {
                let why = format!("stopped after a device failure: {error}");
                (Outcome::Failed { error }, Some(why))
            }
        }
    }
}

/// The verifier's first error, on one line, and how many more there were.
fn first_error(rejection: &Rejection) -> String {
    let Some(first) = rejection.errors.first() else {
        return rejection.to_string().lines().next().unwrap_or_default().to_owned();
    };
    let text = first.to_string();
    let line = text.lines().next().unwrap_or_default();
    match rejection.errors.len() {
        1 => line.to_owned(),
        n => format!("{line} (and {} more)", n - 1),
    }
}

// ---------------------------------------------------------------------------------------------
// The GPU evaluator.

/// Builds, checks and times candidates on the GPU.
pub struct GpuEvaluator<'m> {
    pub model: &'m Model,
    /// The precision timed.
    pub precision: Precision,
    pub watchdog: f64,
    pub context: usize,
    pub timed_tokens: usize,
    pub warmup: usize,
    /// The exact-mode check: this prompt must continue with `expected` (the f32 CPU
    /// reference's greedy tokens, no stop tokens).
    pub prompt: Vec<u32>,
    pub expected: Vec<u32>,
}

/// What a GPU error means for the search.
fn classify_gpu(e: &GpuError) -> EvalFailure {
    match e {
        GpuError::NotCoResident { .. } | GpuError::Rejected { .. } => {
            EvalFailure::Rejected(one_line(&e.to_string()))
        }
        GpuError::Hang { .. } | GpuError::Fault { .. } | GpuError::Wedged(_) => {
            EvalFailure::Fatal(one_line(&e.to_string()))
        }
        _ => EvalFailure::Failed(one_line(&e.to_string())),
    }
}

fn classify_anyhow(e: &anyhow::Error) -> EvalFailure {
    match e.chain().find_map(|c| c.downcast_ref::<GpuError>()) {
        Some(g) => classify_gpu(g),
        None => EvalFailure::Failed(one_line(&format!("{e:#}"))),
    }
}

fn classify_runtime(e: &RuntimeError) -> EvalFailure {
    match e {
        RuntimeError::Gpu(g) => classify_gpu(g),
        other => EvalFailure::Failed(one_line(&other.to_string())),
    }
}

fn one_line(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 400 {
        format!("{}...", s.chars().take(400).collect::<String>())
    } else {
        s
    }
}

impl GpuEvaluator<'_> {
    fn build(
        &self,
        verified: &VerifiedSchedule,
        c: &Candidate,
        p: Precision,
    ) -> Result<GpuBackend, EvalFailure> {
        backend_for(self.model, verified, &c.gpu_args(p, self.watchdog), true)
            .map_err(|e| classify_anyhow(&e))
    }

    /// Fills the cache to the context, warms up, then times launches queued back to back
    /// (as `amk bench` does); the median in ms.
    fn time(&self, backend: &mut GpuBackend) -> Result<f64, EvalFailure> {
        let need = self.context + self.timed_tokens.max(self.warmup);
        if need > backend.max_positions() {
            return Err(EvalFailure::Failed(format!(
                "timing at context {} needs {need} positions; the backend holds {}",
                self.context,
                backend.max_positions()
            )));
        }
        let gpu = |e: GpuError| classify_gpu(&e);
        backend.reset();
        if self.context > 0 {
            backend.time_decode(1, 0, self.context).map_err(gpu)?;
        }
        if self.warmup > 0 {
            backend.time_decode(1, self.context as u32, self.warmup).map_err(gpu)?;
        }
        let times = backend.time_decode(1, self.context as u32, self.timed_tokens).map_err(gpu)?;
        crate::bench::median(&times)
            .ok_or_else(|| EvalFailure::Failed("no finite launch time".into()))
    }
}

impl Evaluator for GpuEvaluator<'_> {
    fn evaluate(
        &mut self,
        verified: &VerifiedSchedule,
        candidate: &Candidate,
    ) -> Result<Measured, EvalFailure> {
        // Exact mode first: a candidate that changes the tokens is never timed.
        let mut exact = self.build(verified, candidate, Precision::F32)?;
        let options =
            GenerateOptions { max_new_tokens: self.expected.len(), stop_tokens: Vec::new() };
        let g = generate(&mut exact, &self.prompt, &options, &mut |_| {})
            .map_err(|e| classify_runtime(&e))?;
        if g.generated != self.expected {
            let first_difference =
                g.generated.iter().zip(&self.expected).take_while(|(a, b)| a == b).count();
            return Err(EvalFailure::WrongTokens {
                first_difference,
                expected: self.expected.clone(),
                got: g.generated,
            });
        }
        let mut timed = if self.precision == Precision::F32 {
            exact
        } else {
            drop(exact);
            self.build(verified, candidate, self.precision)?
        };
        let ms = self.time(&mut timed)?;
        let f = timed.fit();
        let detail = format!(
            "{} ({}): {} registers, {} B smem, {} threads, {} blocks/SM",
            f.device,
            f.arch,
            f.registers,
            u64::from(f.static_smem_bytes) + u64::from(f.dynamic_smem_bytes),
            f.block_threads,
            f.blocks_per_sm
        );
        Ok(Measured { ms, detail })
    }
}

// ---------------------------------------------------------------------------------------------
// The command.

/// The prompt of the exact-mode check: a fixed text through the model's tokenizer, or fixed
/// ids when it has none.
fn check_prompt(model: &Model) -> Vec<u32> {
    const TEXT: &str = "The quick brown fox jumps over the lazy dog. Once upon a time,";
    let vocab = model.config.vocab_size.max(2) as u64;
    let ids = model.tokenizer().ok().and_then(|t| t.encode(TEXT).ok()).unwrap_or_default();
    if !ids.is_empty() && ids.iter().all(|&i| u64::from(i) < vocab) {
        return ids;
    }
    (0..12u64).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

fn open_model(args: &SearchArgs) -> Result<(Model, String, Option<PathBuf>)> {
    if let Some(preset) = args.synth {
        let dir = crate::gpu::scratch_dir("amk-search-synth")?;
        amk_ir::synth::write_checkpoint(&preset.spec(1), &dir)
            .with_context(|| format!("writing the synthetic {} checkpoint", preset.name()))?;
        let model =
            Model::open(&dir, &mut |_| {}).with_context(|| format!("opening {}", dir.display()))?;
        return Ok((model, format!("synthetic {}", preset.name()), Some(dir)));
    }
    let path = args.model.clone().context("give MODEL or --synth")?;
    let mut bar = crate::progress::ImportBar::new();
    let model = Model::open(&path, &mut |p| bar.update(&p))
        .with_context(|| format!("opening model {}", path.display()))?;
    bar.finish();
    Ok((model, path.display().to_string(), None))
}

fn precision_name(p: Precision) -> String {
    format!("{p:?}").to_lowercase()
}

pub fn run(args: SearchArgs) -> Result<()> {
    let wall = Instant::now();
    if args.budget == 0 {
        bail!("--budget must be at least 1");
    }
    if !(args.time_limit >= 0.0 && args.time_limit.is_finite()) {
        bail!("--time-limit must be a number of seconds, at least 0");
    }
    if !(0.0..1.0).contains(&args.min_gain) {
        bail!("--min-gain must be in [0, 1)");
    }
    if !args.dry_run {
        amk_runtime::gpu::cuda_available().map_err(|why| {
            anyhow::anyhow!(
                "amk search times candidates on a CUDA GPU and none is usable here ({why}); \
                 --dry-run runs the strategy with the verifier only"
            )
        })?;
        if args.timed_tokens == 0 {
            bail!("--timed-tokens must be at least 1");
        }
        if args.check_tokens == 0 {
            bail!("--check-tokens must be at least 1");
        }
    }
    let mut seed_knobs = crate::gpu::read_knobs(args.config.as_deref())?;
    if let Some(sms) = args.sms {
        // One worker per SM stays one worker per SM.
        if seed_knobs.workers == seed_knobs.sm_count {
            seed_knobs.workers = sms;
        }
        seed_knobs.sm_count = sms;
    }
    seed_knobs.check().context("the seed knobs")?;
    if args.per_op_precision {
        seed_knobs.precision = explicit_plan(seed_knobs.precision, args.precision);
    }
    let seed = Candidate {
        knobs: seed_knobs,
        launch: LaunchChoice::default(),
        precision_free: args.per_op_precision,
    };

    let (model, model_name, scratch) = open_model(&args)?;
    let result = search_model(&args, &model, &model_name, seed, wall);
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn search_model(
    args: &SearchArgs,
    model: &Model,
    model_name: &str,
    seed: Candidate,
    wall: Instant,
) -> Result<()> {
    let max = model.config.max_position_embeddings;
    let need = args.context + args.timed_tokens.max(args.warmup);
    if !args.dry_run && need > max {
        bail!(
            "--context {} plus {} launches needs {need} positions; the model holds {max}",
            args.context,
            args.timed_tokens.max(args.warmup)
        );
    }
    // The exact-mode reference, once.
    let mut evaluator = None;
    let mut reference = serde_json::Value::Null;
    if !args.dry_run {
        let prompt = check_prompt(model);
        if prompt.len() + args.check_tokens > max {
            bail!("the check prompt and --check-tokens do not fit the model's {max} positions");
        }
        eprintln!("amk search: computing the f32 CPU reference's tokens");
        let mut cpu = amk_runtime::cpu::CpuReference::from_model(model, &mut |_, _| {})?;
        let options = GenerateOptions { max_new_tokens: args.check_tokens, stop_tokens: vec![] };
        let expected = generate(&mut cpu, &prompt, &options, &mut |_| {})
            .context("decoding the check prompt on the CPU reference")?
            .generated;
        drop(cpu);
        reference = serde_json::json!({ "prompt_ids": prompt, "tokens": expected });
        evaluator = Some(GpuEvaluator {
            model,
            precision: args.precision,
            watchdog: args.watchdog,
            context: args.context,
            timed_tokens: args.timed_tokens,
            warmup: args.warmup,
            prompt,
            expected,
        });
    }
    let evaluator = evaluator.as_mut().map(|e| e as &mut dyn Evaluator);
    search_and_write(args, model, model_name, seed, evaluator, reference, wall)?;
    Ok(())
}

/// Runs the search with `evaluator` (None: a dry run), writes the outputs and prints the
/// summary.
fn search_and_write(
    args: &SearchArgs,
    model: &Model,
    model_name: &str,
    seed: Candidate,
    evaluator: Option<&mut dyn Evaluator>,
    reference: serde_json::Value,
    wall: Instant,
) -> Result<SearchResult> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let setup_s = wall.elapsed().as_secs_f64();
    let bar = ProgressBar::new(args.budget as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "searching {bar:30.cyan/blue} {pos}/{len} past the verifier, {elapsed} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    let mut on_record = |r: &Record, t: &Totals, best: Option<f64>| {
        bar.set_position(t.passed_verifier as u64);
        let best = best.map_or_else(|| "-".into(), |ms| format!("{ms:.4} ms"));
        bar.set_message(format!(
            "best {best}; {} tried, {} rejected, {} invalid; last: {}",
            t.tried,
            t.rejected_by_verifier,
            t.invalid,
            outcome_short(&r.outcome)
        ));
    };
    let mut settings =
        Settings::new(args.budget, Duration::from_secs_f64(args.time_limit), args.seed);
    settings.min_gain = args.min_gain;
    let search =
        Search::new(&model.graph, seed.clone(), settings.clone(), evaluator, &mut on_record);
    let result = search.run();
    bar.finish_and_clear();

    let log = log_json(args, model_name, &seed, &settings, &result, reference, setup_s, wall);
    let log_path = args.out.join("search-log.json");
    write(&log_path, &serde_json::to_string_pretty(&log)?)?;
    let mut written = vec![log_path];
    if let Some(best) = result.best.map(|i| &result.records[i]) {
        // The best again, to write it (lowering is deterministic).
        let schedule = lower(&model.graph, &best.candidate.knobs)?;
        let ms = best.ms().unwrap_or(f64::NAN);
        let header = format!(
            "// amk search: {ms:.4} ms/token ({}, context {}), default {}; launch: \
             block_threads {}, stage {}; knobs in knobs.ron\n",
            precision_name(args.precision),
            args.context,
            result.default_ms().map_or_else(|| "not timed".into(), |d| format!("{d:.4} ms")),
            best.candidate.launch.block_threads,
            best.candidate.launch.stage,
        );
        let path = args.out.join("schedule.ron");
        write(&path, &(header + &schedule.to_ron_string()))?;
        written.push(path);
        let path = args.out.join("knobs.ron");
        write(&path, &best.candidate.knobs.to_ron())?;
        written.push(path);
    }
    print_summary(args, model_name, &result, setup_s, &written);
    Ok(result)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn outcome_short(o: &Outcome) -> String {
    match o {
        Outcome::Invalid { .. } => "invalid".into(),
        Outcome::Rejected { at: RejectedAt::Verifier, .. } => "rejected by the verifier".into(),
        Outcome::Rejected { at: RejectedAt::Device, .. } => "rejected on the device".into(),
        Outcome::Failed { .. } => "failed".into(),
        Outcome::WrongTokens { .. } => "wrong tokens".into(),
        Outcome::Timed { ms, .. } => format!("{ms:.4} ms"),
        Outcome::Verified => "verified".into(),
        Outcome::SameKernel { of } => format!("same kernel as #{of}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn log_json(
    args: &SearchArgs,
    model_name: &str,
    seed: &Candidate,
    settings: &Settings,
    result: &SearchResult,
    reference: serde_json::Value,
    setup_s: f64,
    wall: Instant,
) -> serde_json::Value {
    let default_ms = result.default_ms();
    let best = result.best.map(|i| {
        let r = &result.records[i];
        serde_json::json!({
            "index": r.index,
            "ms_per_token": r.ms(),
            "changed": r.changed,
            "launch": r.candidate.launch,
            "knobs": r.candidate.knobs,
            "speedup_vs_default": default_ms.zip(r.ms()).map(|(d, b)| d / b),
        })
    });
    let knobs: Vec<serde_json::Value> = KNOBS
        .iter()
        .map(|k| {
            let values: Vec<String> = (k.domain)(seed).into_iter().map(k.show).collect();
            serde_json::json!({ "name": k.name, "values": values })
        })
        .collect();
    serde_json::json!({
        "model": model_name,
        "precision": precision_name(args.precision),
        "context": args.context,
        "dry_run": args.dry_run,
        "seed": settings.seed,
        "budget": settings.budget,
        "max_tried": settings.max_tried,
        "time_limit_s": settings.time_limit.as_secs_f64(),
        "min_gain": settings.min_gain,
        "timed_tokens": args.timed_tokens,
        "warmup": args.warmup,
        "stopped": result.stopped,
        "totals": result.totals,
        "setup_s": setup_s,
        "search_s": result.seconds,
        "wall_s": wall.elapsed().as_secs_f64(),
        "default": {
            "index": result.seed,
            "ms_per_token": default_ms,
            "knobs": seed.knobs,
            "launch": seed.launch,
        },
        "best": best,
        "confirmed": result.confirmed,
        "reference": reference,
        "knob_values": knobs,
        "candidates": result.records,
    })
}

fn describe_changed(changed: &BTreeMap<String, String>) -> String {
    if changed.is_empty() {
        return "(default)".into();
    }
    changed.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

fn print_summary(
    args: &SearchArgs,
    model_name: &str,
    result: &SearchResult,
    setup_s: f64,
    written: &[PathBuf],
) {
    let t = &result.totals;
    println!(
        "amk search on {model_name} ({}, context {}){}: {} tried in {:.1} s (setup {:.1} s); \
         stopped: {}",
        precision_name(args.precision),
        args.context,
        if args.dry_run { ", dry run" } else { "" },
        t.tried,
        result.seconds,
        setup_s,
        result.stopped
    );
    println!(
        "  {} invalid knobs, {} rejected by the verifier ({} on the device), {} the same kernel \
         as an earlier one, {} evaluated: {} failed, {} wrong tokens, {} timed{}",
        t.invalid,
        t.rejected_by_verifier,
        t.rejected_on_device,
        t.same_kernel,
        t.passed_verifier,
        t.failed,
        t.wrong_tokens,
        t.timed,
        if args.dry_run { format!(", {} would be timed", t.would_time) } else { String::new() }
    );
    if !args.dry_run {
        let default = result.default_ms();
        match default {
            Some(ms) => println!("  default: {ms:.4} ms/token"),
            None => println!(
                "  default: not timed ({})",
                result
                    .seed
                    .map_or("not tried".into(), |i| outcome_short(&result.records[i].outcome))
            ),
        }
        if let Some(r) = result.best.map(|i| &result.records[i]) {
            let ms = result.best_ms().unwrap_or(f64::NAN);
            let speedup = default.map_or_else(String::new, |d| format!(" ({:.3}x)", d / ms));
            println!("  best:    {ms:.4} ms/token{speedup}: {}", describe_changed(&r.changed));
            if let Some(c) = &result.confirmed {
                println!(
                    "  timed again at the end: default {:.4} ms, best {:.4} ms ({:.3}x)",
                    c.default_ms, c.best_ms, c.speedup
                );
            }
            let mut timed: Vec<&Record> =
                result.records.iter().filter(|r| r.ms().is_some()).collect();
            timed.sort_by(|a, b| a.ms().unwrap_or(0.0).total_cmp(&b.ms().unwrap_or(0.0)));
            println!("\n  {:>4}  {:>9}  {:>7}  changed knobs", "#", "ms/token", "speedup");
            for r in timed.iter().take(10) {
                let ms = r.ms().unwrap_or(f64::NAN);
                let sp = default.map_or_else(|| "-".into(), |d| format!("{:.3}x", d / ms));
                println!("  {:>4}  {ms:>9.4}  {sp:>7}  {}", r.index, describe_changed(&r.changed));
            }
            let launch = &r.candidate.launch;
            println!(
                "\n  run it: amk generate --model {} --backend gpu --precision {} \
                 --schedule {} --config {} --block-threads {}{} --prompt TEXT",
                args.model.as_ref().map_or_else(|| "MODEL".into(), |p| p.display().to_string()),
                precision_name(args.precision),
                args.out.join("schedule.ron").display(),
                args.out.join("knobs.ron").display(),
                launch.block_threads,
                if launch.stage { "" } else { " --no-stage" }
            );
        }
    }
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    println!("  wrote {}", names.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;
    use amk_ir::synth::{write_checkpoint, SynthSpec};
    use std::collections::HashSet;

    fn tiny_graph() -> DecodeGraph {
        let dir = tempfile::tempdir().unwrap();
        let config = write_checkpoint(&SynthSpec::tiny(), dir.path()).unwrap();
        DecodeGraph::build(&config)
    }

    /// A small device: 8 SMs, so 12 and 16 workers are rejected at 1 block per SM.
    fn seed() -> Candidate {
        Candidate {
            precision_free: false,
            knobs: ScheduleConfig { workers: 8, sm_count: 8, ..ScheduleConfig::default() },
            launch: LaunchChoice::default(),
        }
    }

    /// A deterministic cost of the kernel (the schedule and the launch options, as a real
    /// GPU's time would be: prefetch_depth changes neither, so it costs nothing): separable,
    /// each knob's best value known, some
    /// values fail in each way an evaluator can (the cheapest mlp_rows gives wrong tokens,
    /// the cheapest block_threads fails, 1024 threads do not fit).
    struct Fake {
        seen: Vec<Candidate>,
        weights: [f64; 4],
        calls: usize,
    }

    impl Fake {
        fn new(weights: [f64; 4]) -> Fake {
            Fake { seen: Vec::new(), weights, calls: 0 }
        }

        fn cost(&self, c: &Candidate) -> f64 {
            let k = &c.knobs;
            let l = |v: u32, best: f64| (f64::from(v).log2() - best).abs();
            let w = self.weights;
            1.0 + w[0] * l(k.o_rows, 3.0)
                // Down tiles only exist without the fused MLP, which is cheaper here.
                + if k.fuse_down { 0.0 } else { 0.1 + w[1] * l(k.down_rows, 5.0) }
                + w[2] * l(k.head_rows, 7.0)
                + w[3] * l(k.workers, 2.0)
                + 0.02 * l(k.mlp_rows, 6.0)
                + 0.02 * l(c.launch.block_threads, 7.0)
                + if c.launch.stage { 0.0 } else { 0.05 }
                + if k.fuse_norm { 0.0 } else { 0.1 }
                + if k.fuse_q { 0.0 } else { 0.04 }
        }
    }

    impl Evaluator for Fake {
        fn evaluate(
            &mut self,
            verified: &VerifiedSchedule,
            c: &Candidate,
        ) -> Result<Measured, EvalFailure> {
            self.calls += 1;
            // Only proven schedules arrive: the certificate is the schedule's, and the
            // lowering of these knobs is what was proven.
            assert!(verified.certificate().matches(verified.schedule()));
            let again = lower(&tiny_graph_cached(), &c.knobs).unwrap();
            assert_eq!(amk_verify::schedule_hash(&again), verified.certificate().schedule_hash);
            assert!(verified.workers.len() as u64 <= verified.certificate().facts.capacity());
            self.seen.push(c.clone());
            if c.launch.block_threads == 1024 {
                return Err(EvalFailure::Rejected("needs more registers than an SM has".into()));
            }
            if c.launch.block_threads == 128 {
                return Err(EvalFailure::Failed("codegen refuses 128 threads".into()));
            }
            if c.knobs.mlp_rows == 64 {
                return Err(EvalFailure::WrongTokens {
                    first_difference: 3,
                    expected: vec![1, 2, 3, 4],
                    got: vec![1, 2, 3, 5],
                });
            }
            Ok(Measured { ms: self.cost(c), detail: String::new() })
        }
    }

    fn tiny_graph_cached() -> DecodeGraph {
        use std::sync::OnceLock;
        static GRAPH: OnceLock<DecodeGraph> = OnceLock::new();
        GRAPH.get_or_init(tiny_graph).clone()
    }

    fn search(fake: Option<&mut Fake>, settings: Settings) -> SearchResult {
        let graph = tiny_graph_cached();
        let mut sink = |_: &Record, _: &Totals, _: Option<f64>| {};
        let s =
            Search::new(&graph, seed(), settings, fake.map(|f| f as &mut dyn Evaluator), &mut sink);
        s.run()
    }

    fn settings(budget: usize, seed: u64) -> Settings {
        Settings { confirm: false, ..Settings::new(budget, Duration::from_secs(600), seed) }
    }

    /// Every invariant of a finished search with the fake evaluator.
    fn check_invariants(result: &SearchResult, fake: &Fake, budget: usize) {
        let t = &result.totals;
        // Counts add up.
        assert_eq!(
            t.tried,
            t.invalid
                + t.rejected_by_verifier
                + t.failed
                + t.wrong_tokens
                + t.timed
                + t.would_time
                + t.same_kernel
        );
        assert_eq!(t.tried, result.records.len());
        assert_eq!(
            t.passed_verifier,
            t.rejected_on_device + t.failed + t.wrong_tokens + t.timed + t.would_time
        );
        // The budget is respected; the evaluator saw exactly what passed the verifier.
        assert!(t.passed_verifier <= budget, "{t:?}");
        assert_eq!(fake.calls, t.passed_verifier - t.would_time);
        // Memoisation: no candidate evaluated or recorded twice, no kernel evaluated twice.
        let keys: HashSet<String> = fake.seen.iter().map(Candidate::key).collect();
        assert_eq!(keys.len(), fake.seen.len());
        let kernel = |c: &Candidate| {
            let s = lower(&tiny_graph_cached(), &c.knobs).unwrap();
            format!("{} {:?}", amk_verify::schedule_hash(&s), c.launch)
        };
        let kernels: HashSet<String> = fake.seen.iter().map(kernel).collect();
        assert_eq!(kernels.len(), fake.seen.len());
        let recorded: HashSet<String> = result.records.iter().map(|r| r.candidate.key()).collect();
        assert_eq!(recorded.len(), result.records.len());
        // Rejected and invalid candidates never reached the evaluator.
        for r in &result.records {
            let reached = keys.contains(&r.candidate.key());
            match &r.outcome {
                Outcome::Invalid { .. } | Outcome::Rejected { at: RejectedAt::Verifier, .. } => {
                    assert!(!reached, "{r:?}");
                    let facts = LaunchFacts {
                        sm_count: r.candidate.knobs.sm_count,
                        blocks_per_sm: r.candidate.knobs.blocks_per_sm,
                    };
                    let proven = lower(&tiny_graph_cached(), &r.candidate.knobs)
                        .ok()
                        .and_then(|s| verify(&s, &facts).ok());
                    assert!(proven.is_none(), "{r:?}");
                }
                Outcome::SameKernel { of } => {
                    assert!(!reached, "{r:?}");
                    let earlier = &result.records[*of].candidate;
                    assert!(*of < r.index && keys.contains(&earlier.key()));
                    assert_eq!(kernel(earlier), kernel(&r.candidate));
                }
                _ => assert!(reached, "{r:?}"),
            }
        }
        // The best is timed, has the reference's tokens, and is no slower than the default.
        if let Some(b) = result.best {
            let best = result.records[b].ms().expect("best is timed");
            for r in &result.records {
                // Nothing timed beat the best by more than the minimum gain.
                if let Some(ms) = r.ms() {
                    assert!(best * (1.0 - 0.005) <= ms + 1e-12, "{r:?}");
                }
            }
            if let Some(d) = result.default_ms() {
                assert!(best <= d);
            }
        }
        assert_eq!(result.seed, Some(0));
        assert_eq!(result.records[0].phase, Phase::Seed);
        assert!(result.records[0].changed.is_empty());
    }

    #[test]
    fn the_knob_table_round_trips_and_its_domains_hold_the_defaults() {
        let c = Candidate {
            knobs: ScheduleConfig::default(),
            launch: LaunchChoice::default(),
            precision_free: true,
        };
        let mut names = HashSet::new();
        for k in KNOBS {
            assert!(names.insert(k.name), "{} twice", k.name);
            let domain = (k.domain)(&c);
            if k.name.ends_with("_precision") {
                // The default plan leaves every class as built: those knobs stay still
                // until the search spells the seed's plan out (explicit_plan).
                assert!(domain.is_empty(), "{}: {domain:?}", k.name);
                continue;
            }
            assert!(domain.contains(&(k.get)(&c)), "{}: default not in {domain:?}", k.name);
            assert!(domain.windows(2).all(|w| w[0] < w[1]), "{}: {domain:?}", k.name);
            for v in domain {
                let mut d = c.clone();
                (k.set)(&mut d, v);
                assert_eq!((k.get)(&d), v, "{}", k.name);
                let changed = d.changed_from(&c);
                assert_eq!(changed.contains_key(k.name), (k.get)(&c) != v, "{}", k.name);
                // Only blocks_per_sm moves another knob (workers) with it.
                let others = changed.keys().filter(|n| *n != k.name).count();
                assert_eq!(others, usize::from(k.name == "blocks_per_sm" && (k.get)(&c) != v));
            }
        }
    }

    #[test]
    fn neighbours_step_along_the_domain_and_stop_at_its_ends() {
        let c = seed();
        let workers = &KNOBS[0];
        assert_eq!(workers.name, "workers");
        assert_eq!((workers.domain)(&c), vec![2, 4, 6, 8, 12, 16]);
        assert_eq!(neighbour(&c, workers, true).unwrap().knobs.workers, 12);
        assert_eq!(neighbour(&c, workers, false).unwrap().knobs.workers, 6);
        let mut top = c.clone();
        top.knobs.workers = 16;
        assert!(neighbour(&top, workers, true).is_none());
        // A value outside the domain (from --config) still has neighbours.
        let mut odd = c.clone();
        odd.knobs.workers = 7;
        assert_eq!(neighbour(&odd, workers, true).unwrap().knobs.workers, 8);
        assert_eq!(neighbour(&odd, workers, false).unwrap().knobs.workers, 6);
    }

    #[test]
    fn precision_knobs_move_between_bf16_and_int8_once_the_plan_is_spelled_out() {
        let plan = PrecisionPlan { lm_head: Some(WeightFormat::Int8), ..PrecisionPlan::default() };
        // f32 builds drop the plan; bf16 and int8 builds spell out every class.
        assert_eq!(explicit_plan(plan, Precision::F32), PrecisionPlan::default());
        let bf16 = explicit_plan(plan, Precision::Bf16);
        assert_eq!(
            (bf16.attention, bf16.mlp, bf16.lm_head),
            (Some(WeightFormat::Bf16), Some(WeightFormat::Bf16), Some(WeightFormat::Int8))
        );
        let int8 = explicit_plan(PrecisionPlan::default(), Precision::Int8);
        assert_eq!(int8.attention, Some(WeightFormat::Int8));
        let mut c = seed();
        c.knobs.precision = bf16;
        let head = KNOBS.iter().find(|k| k.name == "lm_head_precision").unwrap();
        // They stay still unless the search is asked to move them (--per-op-precision).
        assert!((head.domain)(&c).is_empty());
        assert!(neighbour(&c, head, false).is_none());
        c.precision_free = true;
        assert_eq!((head.domain)(&c), vec![1, 2]);
        let down = neighbour(&c, head, false).unwrap();
        assert_eq!(down.knobs.precision.lm_head, Some(WeightFormat::Bf16));
        assert!(neighbour(&c, head, true).is_none());
        assert_eq!(
            down.changed_from(&c).get("lm_head_precision").map(String::as_str),
            Some("Bf16")
        );
        // The spelled-out plan lowers, every matrix's buffer carrying its class's format (the
        // head's Int8).
        let graph = tiny_graph_cached();
        let s = lower(&graph, &c.knobs).expect("lowers");
        for b in s.buffers.iter().filter(|b| b.format.is_some()) {
            let rank = graph.weights.iter().find(|w| w.name == b.name).unwrap().shape.len();
            assert_eq!(b.format, c.knobs.precision.format_of(&b.name, rank), "{}", b.name);
        }
        let head_buffer = s.buffers.iter().find(|b| b.name == "model.embed_tokens.weight");
        assert_eq!(head_buffer.and_then(|b| b.format), Some(WeightFormat::Int8));
    }

    #[test]
    fn blocks_per_sm_moves_keep_the_workers_per_slot() {
        let bps = KNOBS.iter().find(|k| k.name == "blocks_per_sm").unwrap();
        let up = neighbour(&seed(), bps, true).unwrap();
        assert_eq!((up.knobs.blocks_per_sm, up.knobs.workers), (2, 16));
        let mut half = seed();
        half.knobs.workers = 5;
        (bps.set)(&mut half, 3);
        assert_eq!((half.knobs.blocks_per_sm, half.knobs.workers), (3, 15));
        (bps.set)(&mut half, 1);
        assert_eq!((half.knobs.blocks_per_sm, half.knobs.workers), (1, 5));
        // The workers' values follow the co-resident slots.
        assert_eq!((KNOBS[0].domain)(&up), vec![4, 8, 12, 16, 24, 32]);
    }

    #[test]
    fn the_seed_and_the_best_are_timed_again_at_the_end() {
        let mut fake = Fake::new([0.1, 0.07, 0.03, 0.02]);
        let result = search(Some(&mut fake), Settings::new(20, Duration::from_secs(600), 1));
        let c = result.confirmed.clone().expect("timed again");
        assert_eq!(c.default_ms, result.default_ms().unwrap());
        assert_eq!(c.best_ms, result.best_ms().unwrap());
        assert!(c.speedup > 1.0);
        // Two more evaluations, not records, outside the budget's count.
        assert_eq!(fake.calls, result.totals.passed_verifier + 2);
        assert_eq!(result.records.len(), result.totals.tried);
        // Not after a dry run.
        let dry = search(None, Settings::new(5, Duration::from_secs(600), 1));
        assert!(dry.confirmed.is_none());
    }

    #[test]
    fn the_verifier_rejects_more_workers_than_co_resident_blocks() {
        // What the search relies on to produce rejections without pre-filtering them.
        let graph = tiny_graph_cached();
        let mut c = seed();
        c.knobs.workers = 12;
        let s = lower(&graph, &c.knobs).unwrap();
        let r = verify(&s, &LaunchFacts { sm_count: 8, blocks_per_sm: 1 }).unwrap_err();
        assert!(first_error(&r).contains("co-residency"), "{}", first_error(&r));
        assert!(verify(&s, &LaunchFacts { sm_count: 8, blocks_per_sm: 2 }).is_ok());
    }

    #[test]
    fn descent_finds_the_separable_optimum_and_logs_every_outcome() {
        let mut fake = Fake::new([0.1, 0.07, 0.03, 0.05]);
        let result = search(Some(&mut fake), settings(60, 1));
        check_invariants(&result, &fake, 60);
        let best = &result.records[result.best.unwrap()].candidate;
        assert_eq!(best.knobs.o_rows, 8);
        // The fused MLP stays (it is cheaper), so down_rows changes nothing and stays.
        assert!(best.knobs.fuse_down);
        assert_eq!(best.knobs.down_rows, 16);
        assert_eq!(best.knobs.head_rows, 128);
        assert_eq!(best.knobs.workers, 4);
        assert_eq!(best.knobs.mlp_rows, 32);
        assert_eq!(best.launch.block_threads, 256);
        assert!(best.knobs.fuse_norm && best.launch.stage && best.knobs.fuse_q);
        assert!(result.best_ms().unwrap() < result.default_ms().unwrap());
        let t = &result.totals;
        // The descent stepped workers up from 8 to 12 on 8 SMs x 1 block: rejected, not run.
        assert!(t.rejected_by_verifier > t.rejected_on_device, "{t:?}");
        assert!(t.rejected_on_device >= 1 && t.failed >= 1 && t.wrong_tokens >= 1, "{t:?}");
        let rejected = result
            .records
            .iter()
            .find(|r| matches!(r.outcome, Outcome::Rejected { at: RejectedAt::Verifier, .. }))
            .unwrap();
        let Outcome::Rejected { error, .. } = &rejected.outcome else { unreachable!() };
        assert!(error.contains("co-residency"), "{error}");
        // Wrong tokens are never the best.
        assert_ne!(best.knobs.mlp_rows, 64);
        // prefetch_depth changes neither the schedule nor the kernel: never built again.
        assert!(t.same_kernel >= 1, "{t:?}");
        assert!(result.records.iter().any(|r| r.changed.contains_key("prefetch_depth")
            && matches!(r.outcome, Outcome::SameKernel { .. })));
    }

    #[test]
    fn the_budget_counts_what_passed_the_verifier() {
        for budget in [1, 2, 5, 13] {
            let mut fake = Fake::new([0.1, 0.07, 0.03, 0.02]);
            let result = search(Some(&mut fake), settings(budget, 3));
            check_invariants(&result, &fake, budget);
            assert_eq!(result.totals.passed_verifier, budget);
            assert!(result.stopped.contains("budget"), "{}", result.stopped);
        }
    }

    #[test]
    fn a_time_limit_of_zero_tries_nothing() {
        let mut fake = Fake::new([0.1, 0.0, 0.0, 0.0]);
        let result = search(Some(&mut fake), Settings::new(10, Duration::ZERO, 1));
        assert_eq!(result.totals.tried, 0);
        assert_eq!(fake.calls, 0);
        assert!(result.best.is_none() && result.seed.is_none());
        assert!(result.stopped.contains("time limit"), "{}", result.stopped);
    }

    #[test]
    fn a_fatal_failure_stops_the_search() {
        struct Hangs(usize);
        impl Evaluator for Hangs {
            fn evaluate(
                &mut self,
                _: &VerifiedSchedule,
                _: &Candidate,
            ) -> Result<Measured, EvalFailure> {
                self.0 += 1;
                if self.0 == 3 {
                    return Err(EvalFailure::Fatal("launch 7 did not finish".into()));
                }
                Ok(Measured { ms: 2.0 - self.0 as f64 * 0.1, detail: String::new() })
            }
        }
        let graph = tiny_graph_cached();
        let mut e = Hangs(0);
        let mut sink = |_: &Record, _: &Totals, _: Option<f64>| {};
        let result = Search::new(&graph, seed(), settings(30, 1), Some(&mut e), &mut sink).run();
        assert_eq!(e.0, 3);
        assert_eq!(result.totals.failed, 1);
        assert!(result.stopped.contains("device failure"), "{}", result.stopped);
        assert!(matches!(result.records.last().unwrap().outcome, Outcome::Failed { .. }));
    }

    #[test]
    fn a_failing_seed_stops_the_search() {
        struct Fails(usize);
        impl Evaluator for Fails {
            fn evaluate(
                &mut self,
                _: &VerifiedSchedule,
                _: &Candidate,
            ) -> Result<Measured, EvalFailure> {
                self.0 += 1;
                Err(EvalFailure::Failed("int8 is not implemented".into()))
            }
        }
        let graph = tiny_graph_cached();
        let mut e = Fails(0);
        let mut sink = |_: &Record, _: &Totals, _: Option<f64>| {};
        let result = Search::new(&graph, seed(), settings(30, 1), Some(&mut e), &mut sink).run();
        assert_eq!((e.0, result.totals.tried, result.totals.failed), (1, 1, 1));
        assert!(result.stopped.contains("seed failed: int8"), "{}", result.stopped);
        assert!(result.best.is_none());
    }

    #[test]
    fn gpu_errors_are_classified_for_the_log() {
        use amk_runtime::gpu::KernelFit;
        let fit = KernelFit {
            device: "H100".into(),
            arch: "sm_90".into(),
            registers: 128,
            static_smem_bytes: 288,
            dynamic_smem_bytes: 154_112,
            local_bytes: 0,
            spill_stores: 0,
            spill_loads: 0,
            block_threads: 512,
            blocks_per_sm: 1,
            sm_count: 132,
            workers: 264,
        };
        let refused = GpuError::Rejected { fit: fit.clone(), rejection: "co-residency".into() };
        assert!(matches!(classify_gpu(&refused), EvalFailure::Rejected(_)));
        let refused = GpuError::NotCoResident { reason: "smem".into(), fit };
        assert!(matches!(classify_gpu(&refused), EvalFailure::Rejected(_)));
        let hang = GpuError::Hang {
            launch: 3,
            epoch: 3,
            watchdog: Duration::from_secs(10),
            counters: None,
        };
        assert!(matches!(classify_gpu(&hang), EvalFailure::Fatal(_)));
        let wedged = GpuError::Wedged("an earlier hang".into());
        assert!(matches!(classify_gpu(&wedged), EvalFailure::Fatal(_)));
        assert!(matches!(
            classify_gpu(&GpuError::Codegen("1024 threads".into())),
            EvalFailure::Failed(_)
        ));
        // Through anyhow (as backend_for returns it), with context around it, and through the
        // runtime's error (as generate returns it).
        let through = || -> Result<()> { Err(GpuError::Wedged("x".into()))? };
        let e = through().context("building").unwrap_err();
        assert!(matches!(classify_anyhow(&e), EvalFailure::Fatal(_)));
        let e = anyhow::anyhow!("no GPU error in here");
        assert!(matches!(classify_anyhow(&e), EvalFailure::Failed(_)));
        let e = RuntimeError::Gpu(Box::new(GpuError::Wedged("x".into())));
        assert!(matches!(classify_runtime(&e), EvalFailure::Fatal(_)));
        assert!(matches!(classify_runtime(&RuntimeError::EmptyPrompt), EvalFailure::Failed(_)));
        assert_eq!(one_line("a\n  b\tc"), "a b c");
    }

    /// The command's outputs with the fake in place of the GPU: the best schedule.ron parses
    /// (its comment line included), verifies, and is the lowering of knobs.ron; the log has
    /// the best, the default and the confirmation.
    #[test]
    fn the_best_schedule_knobs_and_log_are_written() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            search: SearchArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(&SynthSpec::tiny(), &dir.path().join("m")).unwrap();
        let model = Model::open(&dir.path().join("m"), &mut |_| {}).unwrap();
        let out = dir.path().join("out");
        let args = Cli::parse_from([
            "amk",
            "m",
            "--budget",
            "25",
            "--sms",
            "8",
            "--out",
            out.to_str().unwrap(),
        ])
        .search;
        let mut fake = Fake::new([0.1, 0.07, 0.03, 0.02]);
        let result = search_and_write(
            &args,
            &model,
            "tiny",
            seed(),
            Some(&mut fake),
            serde_json::Value::Null,
            Instant::now(),
        )
        .unwrap();
        let best = &result.records[result.best.unwrap()];

        let text = std::fs::read_to_string(out.join("schedule.ron")).unwrap();
        assert!(text.starts_with("// amk search: "), "{}", &text[..100]);
        let schedule = amk_schedule::Schedule::from_ron_str(&text).unwrap();
        let knobs =
            ScheduleConfig::from_ron(&std::fs::read_to_string(out.join("knobs.ron")).unwrap())
                .unwrap();
        assert_eq!(knobs, best.candidate.knobs);
        let lowered = lower(&model.graph, &knobs).unwrap();
        assert_eq!(schedule.to_ron_string(), lowered.to_ron_string());
        let facts = LaunchFacts { sm_count: knobs.sm_count, blocks_per_sm: knobs.blocks_per_sm };
        assert!(verify(&schedule, &facts).is_ok());

        let log: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("search-log.json")).unwrap())
                .unwrap();
        assert_eq!(log["best"]["index"], best.index);
        assert_eq!(log["best"]["ms_per_token"], best.ms().unwrap());
        assert_eq!(log["best"]["launch"]["block_threads"], best.candidate.launch.block_threads);
        let speedup = log["best"]["speedup_vs_default"].as_f64().unwrap();
        assert!(speedup > 1.0);
        assert_eq!(log["default"]["index"], 0);
        assert_eq!(log["confirmed"]["speedup"], speedup);
        assert_eq!(log["candidates"].as_array().unwrap().len(), result.totals.tried);
        assert_eq!(log["totals"]["passed_verifier"], 25);
    }

    #[test]
    fn a_dry_run_verifies_without_evaluating() {
        let result = search(None, settings(12, 1));
        let t = &result.totals;
        assert_eq!(t.would_time, 12);
        assert_eq!(t.passed_verifier, 12);
        assert_eq!(t.timed, 0);
        assert!(t.rejected_by_verifier >= 1, "{t:?}");
        assert!(result.best.is_none());
        assert_eq!(
            t.tried,
            t.invalid
                + t.rejected_by_verifier
                + t.failed
                + t.wrong_tokens
                + t.timed
                + t.would_time
                + t.same_kernel
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_search() {
        let keys = |seed| {
            let mut fake = Fake::new([0.01, 0.02, 0.0, 0.03]);
            let r = search(Some(&mut fake), settings(25, seed));
            r.records.iter().map(|r| r.candidate.key()).collect::<Vec<_>>()
        };
        assert_eq!(keys(7), keys(7));
    }

    /// Property: for random cost functions, seeds and budgets, every invariant holds (counts
    /// add up, budget, memoisation, only verified candidates evaluated, best <= default).
    #[test]
    fn invariants_hold_for_random_costs_seeds_and_budgets() {
        let mut rng = SplitMix(0x5EA2C4);
        for _ in 0..12 {
            let mut w = [0.0; 4];
            for x in &mut w {
                *x = (rng.next_u64() % 1000) as f64 / 5000.0;
            }
            let budget = 1 + (rng.next_u64() % 30) as usize;
            let seed = rng.next_u64();
            let mut fake = Fake::new(w);
            let result = search(Some(&mut fake), settings(budget, seed));
            check_invariants(&result, &fake, budget);
        }
    }

    #[test]
    fn the_log_serialises_outcomes_with_their_tags() {
        let mut fake = Fake::new([0.1, 0.07, 0.03, 0.02]);
        let result = search(Some(&mut fake), settings(30, 2));
        let json = serde_json::to_value(&result.records).unwrap();
        let outcomes: HashSet<&str> =
            json.as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
        assert!(outcomes.contains("timed") && outcomes.contains("rejected"), "{outcomes:?}");
        let timed = json.as_array().unwrap().iter().find(|r| r["outcome"] == "timed").unwrap();
        assert!(timed["ms"].as_f64().unwrap() > 0.0);
        assert_eq!(serde_json::to_value(&result.totals).unwrap()["tried"], result.records.len());
    }
}
