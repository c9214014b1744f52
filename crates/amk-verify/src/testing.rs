//! Synthetic schedules for tests and benchmarks (the real lowering lives in amk-schedule).
//!
//! - [`layered`]: large, model-shaped schedules (SmolLM2-135M, Llama-3.2-1B, scaled copies)
//!   with one sync phase per matvec / attention step, for benchmarks and scale tests.
//! - [`random_safe`]: small random schedules that are safe by construction (a random DAG of
//!   Copy tasks on random workers, made safe by signal/wait pairs, barriers and progress
//!   counters), and [`mutate`]: one adversarial mutation of a schedule, tagged by class.
//! - [`random_schedule`]: small schedules with random syncs (mostly unsafe).
//!
//! Everything is deterministic given the seed of the [`Rng`].

use crate::LaunchFacts;
use amk_schedule::schedule::{
    BufferId, BufferKind, CounterId, CounterReset, Instr, Region, Schedule, TaskId, Worker,
};
use amk_schedule::TaskOp;

/// A small deterministic PRNG (splitmix64), so corpora are reproducible without extra deps.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

// ------------------------------------------------------------------------------------------
// Layered, model-shaped schedules
// ------------------------------------------------------------------------------------------

/// The shape of a synthetic llama-family decode step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayeredSpec {
    /// Schedule name.
    pub name: String,
    /// Workers (blocks).
    pub workers: u32,
    /// Transformer layers.
    pub layers: u32,
    /// Hidden size.
    pub hidden: u32,
    /// Attention heads.
    pub heads: u32,
    /// KV heads.
    pub kv_heads: u32,
    /// Head dimension.
    pub head_dim: u32,
    /// MLP intermediate size.
    pub mlp: u32,
    /// Vocabulary size.
    pub vocab: u32,
    /// Output rows per matvec task in the layers.
    pub rows_per_tile: u32,
    /// Output rows per LM-head task.
    pub lm_rows_per_tile: u32,
    /// KV-cache positions.
    pub max_seq: u32,
}

impl LayeredSpec {
    /// SmolLM2-135M on an H100: 132 workers, 30 layers, hidden 576, 9 heads / 3 KV heads.
    pub fn smollm2() -> LayeredSpec {
        LayeredSpec {
            name: "smollm2-135m-synthetic".into(),
            workers: 132,
            layers: 30,
            hidden: 576,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            mlp: 1536,
            vocab: 49152,
            rows_per_tile: 8,
            lm_rows_per_tile: 64,
            max_seq: 2048,
        }
    }

    /// Llama-3.2-1B: 16 layers, hidden 2048, 32 heads / 8 KV heads, MLP 8192, vocab 128256.
    pub fn llama32_1b() -> LayeredSpec {
        LayeredSpec {
            name: "llama-3.2-1b-synthetic".into(),
            workers: 132,
            layers: 16,
            hidden: 2048,
            heads: 32,
            kv_heads: 8,
            head_dim: 64,
            mlp: 8192,
            vocab: 128256,
            rows_per_tile: 16,
            lm_rows_per_tile: 64,
            max_seq: 2048,
        }
    }

    /// The same shape with `layers` layers.
    pub fn with_layers(mut self, layers: u32) -> LayeredSpec {
        self.layers = layers;
        self
    }
}

fn copy_op(reads: &[Region], writes: &[Region]) -> TaskOp {
    let len = reads[0].len.min(writes[0].len);
    TaskOp::Copy {
        src: Region::new(reads[0].buffer, reads[0].offset, len),
        dst: Region::new(writes[0].buffer, writes[0].offset, len),
    }
}

/// Builds a layered schedule: embed, then per layer the phases qkv (row tiles; also append
/// K/V to the layer's cache), attention (one task per head), o-proj (row tiles, residual add),
/// gate/up (row tiles), down (row tiles, residual add), then LM-head tiles and an argmax. Each
/// phase's tasks are spread round-robin over all workers and each signals the phase's counter;
/// a worker waits for the full count of the previous phase before its first task of a phase.
/// The residual (f32) is read by every matvec task (whole for normed inputs, its own rows for
/// the residual add) and written by row slices. Safe by construction.
pub fn layered(spec: &LayeredSpec) -> Schedule {
    let mut s = Schedule::new(spec.name.clone());
    let nw = spec.workers.max(1) as usize;
    let h = u64::from(spec.hidden);
    let q = u64::from(spec.heads * spec.head_dim);
    let kv = u64::from(spec.kv_heads * spec.head_dim);
    let mlp = u64::from(spec.mlp);
    let (f32b, bf16b) = (4u64, 2u64);
    let tok = s.add_buffer("tok", BufferKind::Io, 8);
    let next = s.add_buffer("next_tok", BufferKind::Io, 8);
    let embed_w = s.add_buffer("embed", BufferKind::Weight, u64::from(spec.vocab) * h * bf16b);
    let resid = s.add_buffer("resid", BufferKind::Activation, h * f32b);
    let qkv = s.add_buffer("qkv", BufferKind::Activation, (q + 2 * kv) * f32b);
    let attn = s.add_buffer("attn", BufferKind::Activation, q * f32b);
    let act = s.add_buffer("mlp", BufferKind::Activation, mlp * f32b);
    let logits = s.add_buffer("logits", BufferKind::Logits, u64::from(spec.vocab) * f32b);
    let mut workers: Vec<Vec<Instr>> = vec![Vec::new(); nw];
    // (counter, signals) of the previous phase.
    let mut prev: Option<(CounterId, u32)> = None;
    let mut phase_no = 0usize;
    let mut phase = |s: &mut Schedule,
                     workers: &mut Vec<Vec<Instr>>,
                     name: String,
                     tasks: Vec<(String, Vec<Region>, Vec<Region>)>| {
        let c = s.add_counter(format!("{name}.done"), CounterReset::Zeroed);
        let n = tasks.len() as u32;
        let rot = (phase_no * 37) % nw;
        phase_no += 1;
        let mut waited = vec![false; nw];
        for (j, (tname, reads, writes)) in tasks.into_iter().enumerate() {
            let w = (j + rot) % nw;
            let op = copy_op(&reads, &writes);
            let t = s.add_task(tname, op, reads, writes);
            if let (false, Some((pc, pn))) = (waited[w], prev) {
                workers[w].push(Instr::Wait { counter: pc, at_least: pn });
            }
            waited[w] = true;
            workers[w].push(Instr::Run(t));
            workers[w].push(Instr::Signal(c));
        }
        prev = Some((c, n));
    };
    phase(
        &mut s,
        &mut workers,
        "embed".into(),
        vec![(
            "embed".into(),
            vec![Region::new(tok, 0, 8), Region::new(embed_w, 0, h * bf16b)],
            vec![Region::new(resid, 0, h * f32b)],
        )],
    );
    let tiles = |rows: u64, per: u32| -> Vec<(u64, u64)> {
        let per = u64::from(per.max(1));
        (0..rows.div_ceil(per)).map(|j| (j * per, per.min(rows - j * per))).collect()
    };
    let pos = u64::from(spec.max_seq.max(1) - 1);
    for l in 0..spec.layers {
        let wqkv = s.add_buffer(format!("L{l}.wqkv"), BufferKind::Weight, (q + 2 * kv) * h * bf16b);
        let wo = s.add_buffer(format!("L{l}.wo"), BufferKind::Weight, h * q * bf16b);
        let wgu = s.add_buffer(format!("L{l}.wgu"), BufferKind::Weight, 2 * mlp * h * bf16b);
        let wd = s.add_buffer(format!("L{l}.wdown"), BufferKind::Weight, h * mlp * bf16b);
        let cache = s.add_buffer(
            format!("L{l}.kv"),
            BufferKind::KvCache,
            u64::from(spec.max_seq) * 2 * kv * bf16b,
        );
        let row_slot = |r: u64| (pos * 2 * kv + (r - q)) * bf16b;
        let t: Vec<_> = tiles(q + 2 * kv, spec.rows_per_tile)
            .into_iter()
            .enumerate()
            .map(|(j, (r0, n))| {
                let mut writes = vec![Region::new(qkv, r0 * f32b, n * f32b)];
                let (k0, k1) = (r0.max(q), (r0 + n).max(q));
                if k1 > k0 {
                    writes.push(Region::new(cache, row_slot(k0), (k1 - k0) * bf16b));
                }
                let reads = vec![
                    Region::new(resid, 0, h * f32b),
                    Region::new(wqkv, r0 * h * bf16b, n * h * bf16b),
                ];
                (format!("L{l}.qkv.t{j}"), reads, writes)
            })
            .collect();
        phase(&mut s, &mut workers, format!("L{l}.qkv"), t);
        let hd = u64::from(spec.head_dim);
        let group = u64::from((spec.heads / spec.kv_heads.max(1)).max(1));
        let t: Vec<_> = (0..u64::from(spec.heads))
            .map(|hh| {
                let g = hh / group;
                let reads = vec![
                    Region::new(qkv, hh * hd * f32b, hd * f32b),
                    Region::new(qkv, (q + g * hd) * f32b, hd * f32b),
                    Region::new(qkv, (q + kv + g * hd) * f32b, hd * f32b),
                    Region::new(cache, 0, (pos + 1) * 2 * kv * bf16b),
                ];
                let writes = vec![Region::new(attn, hh * hd * f32b, hd * f32b)];
                (format!("L{l}.attn.h{hh}"), reads, writes)
            })
            .collect();
        phase(&mut s, &mut workers, format!("L{l}.attn"), t);
        let t: Vec<_> = tiles(h, spec.rows_per_tile)
            .into_iter()
            .enumerate()
            .map(|(j, (r0, n))| {
                let reads = vec![
                    Region::new(attn, 0, q * f32b),
                    Region::new(wo, r0 * q * bf16b, n * q * bf16b),
                    Region::new(resid, r0 * f32b, n * f32b),
                ];
                let writes = vec![Region::new(resid, r0 * f32b, n * f32b)];
                (format!("L{l}.o.t{j}"), reads, writes)
            })
            .collect();
        phase(&mut s, &mut workers, format!("L{l}.o"), t);
        let t: Vec<_> = tiles(mlp, spec.rows_per_tile)
            .into_iter()
            .enumerate()
            .map(|(j, (r0, n))| {
                let reads = vec![
                    Region::new(resid, 0, h * f32b),
                    Region::new(wgu, 2 * r0 * h * bf16b, 2 * n * h * bf16b),
                ];
                let writes = vec![Region::new(act, r0 * f32b, n * f32b)];
                (format!("L{l}.gu.t{j}"), reads, writes)
            })
            .collect();
        phase(&mut s, &mut workers, format!("L{l}.gu"), t);
        let t: Vec<_> = tiles(h, spec.rows_per_tile)
            .into_iter()
            .enumerate()
            .map(|(j, (r0, n))| {
                let reads = vec![
                    Region::new(act, 0, mlp * f32b),
                    Region::new(wd, r0 * mlp * bf16b, n * mlp * bf16b),
                    Region::new(resid, r0 * f32b, n * f32b),
                ];
                let writes = vec![Region::new(resid, r0 * f32b, n * f32b)];
                (format!("L{l}.down.t{j}"), reads, writes)
            })
            .collect();
        phase(&mut s, &mut workers, format!("L{l}.down"), t);
    }
    let t: Vec<_> = tiles(u64::from(spec.vocab), spec.lm_rows_per_tile)
        .into_iter()
        .enumerate()
        .map(|(j, (r0, n))| {
            let reads = vec![
                Region::new(resid, 0, h * f32b),
                Region::new(embed_w, r0 * h * bf16b, n * h * bf16b),
            ];
            let writes = vec![Region::new(logits, r0 * f32b, n * f32b)];
            (format!("lm_head.t{j}"), reads, writes)
        })
        .collect();
    phase(&mut s, &mut workers, "lm_head".into(), t);
    phase(
        &mut s,
        &mut workers,
        "argmax".into(),
        vec![(
            "argmax".into(),
            vec![Region::new(logits, 0, u64::from(spec.vocab) * f32b)],
            vec![Region::new(next, 0, 8)],
        )],
    );
    s.workers = workers.into_iter().map(|instrs| Worker { instrs }).collect();
    s
}

// ------------------------------------------------------------------------------------------
// Small random schedules and mutations (the adversarial corpus)
// ------------------------------------------------------------------------------------------

/// Size limits for [`random_safe`] and [`random_schedule`] (small enough for an exhaustive
/// interleaving explorer).
#[derive(Debug, Clone, Copy)]
pub struct SmallParams {
    /// Most workers.
    pub max_workers: usize,
    /// Most tasks (at least 2; [`random_safe`] caps it at 63).
    pub max_tasks: usize,
    /// Most buffers.
    pub max_buffers: usize,
    /// Only waits that are needed (no wait implied by the others).
    pub minimal: bool,
}

impl Default for SmallParams {
    fn default() -> Self {
        SmallParams { max_workers: 3, max_tasks: 6, max_buffers: 2, minimal: false }
    }
}

fn random_region(rng: &mut Rng, s: &Schedule) -> Region {
    let b = rng.below(s.buffers.len());
    let units = (s.buffers[b].bytes / 8) as usize;
    let off = rng.below(units);
    let len = rng.range(1, (units - off).min(3));
    Region::new(BufferId(b as u32), off as u64 * 8, len as u64 * 8)
}

fn random_tasks(rng: &mut Rng, s: &mut Schedule, p: &SmallParams) -> usize {
    for b in 0..rng.range(1, p.max_buffers) {
        let kind = [BufferKind::Activation, BufferKind::Scratch, BufferKind::KvCache][rng.below(3)];
        s.add_buffer(format!("b{b}"), kind, 8 * rng.range(3, 6) as u64);
    }
    let nt = rng.range(2, p.max_tasks);
    for t in 0..nt {
        let reads: Vec<Region> = (0..rng.range(1, 2)).map(|_| random_region(rng, s)).collect();
        let writes: Vec<Region> = (0..rng.range(1, 2)).map(|_| random_region(rng, s)).collect();
        let op = copy_op(&reads, &writes);
        let id = s.add_task(format!("L0.copy.t{t}"), op, reads, writes);
        // Some tasks also add to a region atomically (declared beyond the op's footprint, as
        // a fused MLP's are), so adds meet adds, reads and writes.
        if rng.chance(0.4) {
            let r = random_region(rng, s);
            s.tasks[id.index()].adds.push(r);
        }
    }
    nt
}

/// Whether two tasks' accesses conflict: overlapping bytes, unless both only read or both
/// only add (atomic adds commute).
fn conflict(s: &Schedule, a: usize, b: usize) -> bool {
    let (ta, tb) = (&s.tasks[a], &s.tasks[b]);
    let any = |x: &[Region], y: &[Region]| x.iter().any(|r| y.iter().any(|q| r.overlaps(q)));
    any(&ta.writes, &tb.writes)
        || any(&ta.writes, &tb.reads)
        || any(&ta.reads, &tb.writes)
        || any(&ta.adds, &tb.reads)
        || any(&ta.adds, &tb.writes)
        || any(&ta.reads, &tb.adds)
        || any(&ta.writes, &tb.adds)
}

/// A small random schedule that is safe by construction (deadlock-free, race-free,
/// launch-to-launch safe) and the launch facts it fits. Tasks are placed on random workers in
/// one global order; every conflicting pair on different workers is ordered by a per-task
/// done counter, a per-worker progress counter (threshold = the producer's ordinal), a
/// per-consumer fan-in counter or a barrier.
pub fn random_safe(rng: &mut Rng, p: &SmallParams) -> (Schedule, LaunchFacts) {
    let mut s = Schedule::new("random-safe");
    let p = &SmallParams { max_tasks: p.max_tasks.clamp(2, 63), ..*p };
    let nt = random_tasks(rng, &mut s, p);
    let nw = rng.range(1, p.max_workers);
    let owner: Vec<usize> = (0..nt).map(|_| rng.below(nw)).collect();
    let ordinal: Vec<u32> =
        (0..nt).map(|t| (0..=t).filter(|&u| owner[u] == owner[t]).count() as u32).collect();
    let barrier_at = if nw > 1 && rng.chance(0.3) { Some(rng.range(1, nt - 1)) } else { None };
    let minimal = p.minimal || rng.chance(0.8);
    // Per task: tasks known to happen before it (bitset) and the producers it must wait for.
    let plan = |barrier_at: Option<usize>| {
        let mut reach = vec![0u64; nt];
        let mut deps: Vec<Vec<usize>> = vec![Vec::new(); nt];
        let mut last_on = vec![None::<usize>; nw];
        for j in 0..nt {
            let mut known = 0u64;
            if let Some(prev) = last_on[owner[j]] {
                known |= reach[prev] | (1 << prev);
            }
            if let Some(b) = barrier_at {
                if j >= b {
                    known |= (1u64 << b) - 1;
                }
            }
            for i in (0..j).rev() {
                if owner[i] != owner[j] && conflict(&s, i, j) && (!minimal || known & (1 << i) == 0)
                {
                    deps[j].push(i);
                    known |= reach[i] | (1 << i);
                }
            }
            reach[j] = known;
            last_on[owner[j]] = Some(j);
        }
        deps
    };
    // A barrier only where some dependency crosses it (so each of its waits does work).
    let barrier_at = barrier_at.filter(|&b| {
        plan(None).iter().enumerate().any(|(j, d)| j >= b && d.iter().any(|&i| i < b))
    });
    let deps = plan(barrier_at);
    // Choose a mechanism per consumer / dependency.
    #[derive(Clone, Copy, PartialEq)]
    enum Via {
        Done,
        Progress,
    }
    let mut signals_after: Vec<Vec<CounterId>> = vec![Vec::new(); nt];
    let mut waits_before: Vec<Vec<(CounterId, u32)>> = vec![Vec::new(); nt];
    let mut done: Vec<Option<CounterId>> = vec![None; nt];
    let mut progress: Vec<Option<CounterId>> = vec![None; nw];
    for j in 0..nt {
        if deps[j].len() >= 2 && rng.chance(0.3) {
            let c = s.add_counter(format!("L0.t{j}.in"), CounterReset::Zeroed);
            for &i in &deps[j] {
                signals_after[i].push(c);
            }
            waits_before[j].push((c, deps[j].len() as u32));
            continue;
        }
        for &i in &deps[j].clone() {
            let via = if rng.chance(0.5) { Via::Done } else { Via::Progress };
            if via == Via::Done {
                let c = *done[i].get_or_insert_with(|| {
                    let c = s.add_counter(format!("L0.t{i}.done"), CounterReset::Zeroed);
                    signals_after[i].push(c);
                    c
                });
                waits_before[j].push((c, 1));
            } else {
                let w = owner[i];
                let c = *progress[w].get_or_insert_with(|| {
                    s.add_counter(format!("w{w}.progress"), CounterReset::Zeroed)
                });
                waits_before[j].push((c, ordinal[i]));
            }
        }
    }
    for (w, pc) in progress.iter().enumerate() {
        if let Some(c) = pc {
            for t in 0..nt {
                if owner[t] == w {
                    signals_after[t].push(*c);
                }
            }
        }
    }
    let barrier = barrier_at.map(|_| s.add_counter("L0.barrier", CounterReset::Zeroed));
    let debug = rng.chance(0.2).then(|| s.add_counter("debug.progress", CounterReset::Never));
    let mut workers: Vec<Vec<Instr>> = vec![Vec::new(); nw];
    for j in 0..=nt {
        if let (Some(b), Some(c)) = (barrier_at, barrier) {
            if j == b {
                for instrs in workers.iter_mut() {
                    instrs.push(Instr::Signal(c));
                    instrs.push(Instr::Wait { counter: c, at_least: nw as u32 });
                }
            }
        }
        if j == nt {
            break;
        }
        let w = owner[j];
        for &(counter, at_least) in &waits_before[j] {
            workers[w].push(Instr::Wait { counter, at_least });
        }
        workers[w].push(Instr::Run(TaskId(j as u32)));
        for &c in &signals_after[j] {
            workers[w].push(Instr::Signal(c));
        }
    }
    if let Some(c) = debug {
        workers[0].push(Instr::Signal(c));
    }
    s.workers = workers.into_iter().map(|instrs| Worker { instrs }).collect();
    // Some counters epoch-offset instead of zeroed.
    let totals = s.signal_counts();
    for (c, counter) in s.counters.iter_mut().enumerate() {
        if counter.reset == CounterReset::Zeroed && rng.chance(0.4) {
            counter.reset = CounterReset::Epoch { signals_per_launch: totals[c] as u32 };
        }
    }
    let facts = LaunchFacts { sm_count: (nw + rng.below(3)) as u32, blocks_per_sm: 1 };
    (s, facts)
}

/// A small schedule with random placement and random signals / waits (well-formed, mostly
/// unsafe).
pub fn random_schedule(rng: &mut Rng, p: &SmallParams) -> (Schedule, LaunchFacts) {
    let mut s = Schedule::new("random");
    let nt = random_tasks(rng, &mut s, p);
    let nw = rng.range(1, p.max_workers);
    let ncnt = rng.range(1, 3);
    for c in 0..ncnt {
        s.add_counter(format!("c{c}"), CounterReset::Zeroed);
    }
    let mut workers: Vec<Vec<Instr>> = vec![Vec::new(); nw];
    for t in 0..nt {
        workers[rng.below(nw)].push(Instr::Run(TaskId(t as u32)));
    }
    let nsig = rng.range(1, 4);
    for _ in 0..nsig {
        let w = rng.below(nw);
        let at = rng.range(0, workers[w].len());
        workers[w].insert(at, Instr::Signal(CounterId(rng.below(ncnt) as u32)));
    }
    s.workers = workers.into_iter().map(|instrs| Worker { instrs }).collect();
    let totals = s.signal_counts();
    for _ in 0..rng.range(0, 3) {
        let c = rng.below(ncnt);
        let w = rng.below(nw);
        let at = rng.range(0, s.workers[w].instrs.len());
        let k = rng.range(0, totals[c] as usize) as u32;
        s.workers[w].instrs.insert(at, Instr::Wait { counter: CounterId(c as u32), at_least: k });
    }
    let facts = LaunchFacts { sm_count: nw as u32, blocks_per_sm: 1 };
    (s, facts)
}

/// The mutation classes of the adversarial corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mutation {
    /// Remove one wait.
    DropWait,
    /// Lower one wait's threshold.
    LowerThreshold,
    /// Move a signal to before the task it follows.
    SignalBeforeTask,
    /// Swap two adjacent instructions of one worker.
    SwapAdjacent,
    /// Add a wait-for cycle (two workers, or a worker waiting for its own later signal).
    CyclicWait,
    /// Widen a region to overlap another worker's task's region.
    WidenRegion,
    /// Launch with one block fewer than workers.
    ExceedResidency,
    /// Make a waited-on counter never reset (reused across launches).
    NeverReset,
    /// Declare one signal per launch fewer than a waited-on epoch counter receives.
    EpochMiscount,
    /// Make a region run past its buffer (or overflow u64).
    OutOfBounds,
    /// Refer to a task / counter / buffer index that does not exist.
    UnknownId,
}

impl Mutation {
    /// Every class.
    pub const ALL: [Mutation; 11] = [
        Mutation::DropWait,
        Mutation::LowerThreshold,
        Mutation::SignalBeforeTask,
        Mutation::SwapAdjacent,
        Mutation::CyclicWait,
        Mutation::WidenRegion,
        Mutation::ExceedResidency,
        Mutation::NeverReset,
        Mutation::EpochMiscount,
        Mutation::OutOfBounds,
        Mutation::UnknownId,
    ];
}

fn instr_positions(s: &Schedule, f: impl Fn(&Instr) -> bool) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for (w, worker) in s.workers.iter().enumerate() {
        for (i, instr) in worker.instrs.iter().enumerate() {
            if f(instr) {
                v.push((w, i));
            }
        }
    }
    v
}

fn pick<T: Copy>(rng: &mut Rng, v: &[T]) -> Option<T> {
    (!v.is_empty()).then(|| v[rng.below(v.len())])
}

/// Applies one mutation of class `m` to `s` / `facts`; `None` if it does not apply (e.g. no
/// wait to drop).
pub fn mutate(
    rng: &mut Rng,
    m: Mutation,
    s: &Schedule,
    facts: &LaunchFacts,
) -> Option<(Schedule, LaunchFacts)> {
    let mut s = s.clone();
    let mut facts = *facts;
    match m {
        Mutation::DropWait => {
            let (w, i) = pick(rng, &instr_positions(&s, |x| matches!(x, Instr::Wait { .. })))?;
            s.workers[w].instrs.remove(i);
        }
        Mutation::LowerThreshold => {
            let pos =
                instr_positions(&s, |x| matches!(x, Instr::Wait { at_least, .. } if *at_least > 0));
            let (w, i) = pick(rng, &pos)?;
            if let Instr::Wait { at_least, .. } = &mut s.workers[w].instrs[i] {
                *at_least = rng.below(*at_least as usize) as u32;
            }
        }
        Mutation::SignalBeforeTask => {
            let mut cand = Vec::new();
            for (w, i) in instr_positions(&s, |x| matches!(x, Instr::Signal(_))) {
                if let Some(r) =
                    (0..i).rev().find(|&j| matches!(s.workers[w].instrs[j], Instr::Run(_)))
                {
                    cand.push((w, i, r));
                }
            }
            let (w, i, r) = pick(rng, &cand)?;
            let sig = s.workers[w].instrs.remove(i);
            s.workers[w].instrs.insert(r, sig);
        }
        Mutation::SwapAdjacent => {
            let pos = instr_positions(&s, |_| true);
            let cand: Vec<_> = pos
                .into_iter()
                .filter(|&(w, i)| {
                    let v = &s.workers[w].instrs;
                    i + 1 < v.len() && v[i] != v[i + 1]
                })
                .collect();
            let (w, i) = pick(rng, &cand)?;
            s.workers[w].instrs.swap(i, i + 1);
        }
        Mutation::CyclicWait => {
            let nw = s.workers.len();
            if nw >= 2 && rng.chance(0.5) {
                let a = rng.below(nw);
                let b = (a + 1 + rng.below(nw - 1)) % nw;
                let x = s.add_counter("cycle.x", CounterReset::Zeroed);
                let y = s.add_counter("cycle.y", CounterReset::Zeroed);
                let pa = rng.range(0, s.workers[a].instrs.len());
                s.workers[a].instrs.insert(pa, Instr::Wait { counter: x, at_least: 1 });
                let sa = rng.range(pa + 1, s.workers[a].instrs.len());
                s.workers[a].instrs.insert(sa, Instr::Signal(y));
                let pb = rng.range(0, s.workers[b].instrs.len());
                s.workers[b].instrs.insert(pb, Instr::Wait { counter: y, at_least: 1 });
                let sb = rng.range(pb + 1, s.workers[b].instrs.len());
                s.workers[b].instrs.insert(sb, Instr::Signal(x));
            } else {
                // A worker waits for the full count of a counter before its own signal to it.
                let totals = s.signal_counts();
                let (w, i) = pick(rng, &instr_positions(&s, |x| matches!(x, Instr::Signal(_))))?;
                let Instr::Signal(c) = s.workers[w].instrs[i] else { unreachable!() };
                let at = rng.range(0, i);
                s.workers[w]
                    .instrs
                    .insert(at, Instr::Wait { counter: c, at_least: totals[c.index()] as u32 });
            }
        }
        Mutation::WidenRegion => {
            let owner = |s: &Schedule, t: usize| {
                instr_positions(s, |x| *x == Instr::Run(TaskId(t as u32))).first().map(|p| p.0)
            };
            let mut cand = Vec::new();
            for t in 0..s.tasks.len() {
                for u in 0..s.tasks.len() {
                    if t == u || owner(&s, t) == owner(&s, u) {
                        continue;
                    }
                    let tu = &s.tasks[u];
                    // Their writes and adds conflict with our reads too.
                    let theirs = tu
                        .reads
                        .iter()
                        .map(|r| (*r, false))
                        .chain(tu.writes.iter().chain(&tu.adds).map(|r| (*r, true)));
                    for (r, their_write) in theirs {
                        for (k, q) in s.tasks[t].writes.iter().enumerate() {
                            if q.buffer == r.buffer && !q.overlaps(&r) {
                                cand.push((t, true, k, r));
                            }
                        }
                        if their_write {
                            for (k, q) in s.tasks[t].reads.iter().enumerate() {
                                if q.buffer == r.buffer && !q.overlaps(&r) {
                                    cand.push((t, false, k, r));
                                }
                            }
                        }
                    }
                }
            }
            let (t, write, k, r) = pick(rng, &cand)?;
            let task = &mut s.tasks[t];
            let q = if write { &mut task.writes[k] } else { &mut task.reads[k] };
            let lo = q.offset.min(r.offset);
            let hi = (q.offset + q.len).max(r.offset + r.len);
            *q = Region::new(q.buffer, lo, hi - lo);
        }
        Mutation::ExceedResidency => {
            facts = LaunchFacts {
                sm_count: s.workers.len().saturating_sub(1) as u32,
                blocks_per_sm: 1,
            };
        }
        Mutation::NeverReset => {
            let waited: Vec<CounterId> =
                instr_positions(&s, |x| matches!(x, Instr::Wait { at_least, .. } if *at_least > 0))
                    .into_iter()
                    .map(|(w, i)| match s.workers[w].instrs[i] {
                        Instr::Wait { counter, .. } => counter,
                        _ => unreachable!(),
                    })
                    .collect();
            let c = pick(rng, &waited)?;
            s.counters[c.index()].reset = CounterReset::Never;
        }
        Mutation::EpochMiscount => {
            let totals = s.signal_counts();
            let waited: Vec<usize> =
                instr_positions(&s, |x| matches!(x, Instr::Wait { at_least, .. } if *at_least > 0))
                    .into_iter()
                    .filter_map(|(w, i)| match s.workers[w].instrs[i] {
                        Instr::Wait { counter, .. } => Some(counter.index()),
                        _ => None,
                    })
                    .collect();
            let c = pick(rng, &waited)?;
            // One signal fewer than declared: from the second launch on, every wait on it is
            // satisfied one signal early. (Over-declaring makes waits stricter, and drifts
            // into a deadlock only after several launches.)
            let wrong = totals[c] as u32 - 1;
            s.counters[c].reset = CounterReset::Epoch { signals_per_launch: wrong };
        }
        Mutation::OutOfBounds => {
            let t = rng.below(s.tasks.len().max(1));
            let bytes: Vec<u64> = s.buffers.iter().map(|b| b.bytes).collect();
            let task = s.tasks.get_mut(t)?;
            let write = rng.chance(0.5);
            let list = if write { &mut task.writes } else { &mut task.reads };
            let k = rng.below(list.len().max(1));
            let q = list.get_mut(k)?;
            if rng.chance(0.7) {
                let size = *bytes.get(q.buffer.index())?;
                q.len = size.saturating_sub(q.offset) + 8;
            } else {
                q.offset = u64::MAX - 3;
            }
        }
        Mutation::UnknownId => match rng.below(3) {
            0 => {
                let (w, i) = pick(rng, &instr_positions(&s, |x| matches!(x, Instr::Run(_))))?;
                s.workers[w].instrs[i] = Instr::Run(TaskId(s.tasks.len() as u32 + 3));
            }
            1 => {
                let pos = instr_positions(&s, |x| !matches!(x, Instr::Run(_)));
                let (w, i) = pick(rng, &pos)?;
                let bad = CounterId(s.counters.len() as u32 + 1);
                s.workers[w].instrs[i] = match s.workers[w].instrs[i] {
                    Instr::Wait { at_least, .. } => Instr::Wait { counter: bad, at_least },
                    _ => Instr::Signal(bad),
                };
            }
            _ => {
                let t = rng.below(s.tasks.len().max(1));
                let nb = s.buffers.len() as u32;
                let q = s.tasks.get_mut(t)?.reads.first_mut()?;
                q.buffer = BufferId(nb + 2);
            }
        },
    }
    Some((s, facts))
}
