//! Lowering: the decode-step graph of a llama-family model to a schedule.
//!
//! Each layer becomes five phases of tasks, with the fusions that keep sync points few:
//! 1. `qkv`: one task per query, key and value head: RMSNorm of the residual recomputed by the
//!    task, the head's projection rows (and bias), Qwen3's per-head q/k RMSNorm, RoPE and (for
//!    keys and values) the cache append in the epilogue;
//! 2. `attn`: `attn_splits` tasks per query head, each over a chunk of its key/value head's
//!    cache rows (within the sliding window, for Mistral), writing a partial softmax;
//! 3. `o`: row tiles of the output projection, each combining the attention partials as it
//!    loads its input, the residual add in the epilogue;
//! 4. `up`: row tiles of gate and up projections with SiLU(gate) * up fused (RMSNorm again
//!    recomputed from the residual);
//! 5. `down`: row tiles of the down projection, the residual add in the epilogue.
//!
//! With `fuse_o` (and one attention part per head), phases 2 and 3 are one: each head's task
//! attends over all its rows and adds its share of the output projection to the residual with
//! atomic adds. The residual then has one buffer per version (see `resids` below), and the qkv
//! phase also copies the layer's input into the two versions the layer adds to.
//!
//! With `o_by_head`, phase 3's tasks are (head, dimensions) pairs instead of row tiles: each
//! combines one head's partials and adds its columns' share of the projection into the
//! residual with atomic adds (versioned residual buffers, as with `fuse_o`), so no task
//! combines every head's partials.
//!
//! With `fuse_q`, phases 1 and 2 are one: each attention part projects its own query head and
//! attends over the rows before the current position, while the key and value heads go to
//! `kv_new`; the output projection's combine adds the current row, and an append task copies
//! `kv_new` into the caches.
//!
//! With `fuse_down`, phases 4 and 5 are one: each gate/up tile also multiplies its rows by the
//! matching columns of the down projection and adds the result into the residual with atomic
//! adds (declared as `adds`, which commute). The MLP's norm then reads `resid_mlp`, a snapshot
//! of the residual the output projection stores beside its residual add, since the residual
//! itself changes under the MLP's adds.
//!
//! The step opens with the embedding lookup and ends with LM-head tiles that each fold their
//! maximum into `io`'s packed next token with an atomic max (the first also advances the
//! position): no reduction step, and nothing waits for the LM head within the launch.
//! Each phase signals one counter per task; a worker waits for the previous phase's counter
//! to reach its task count before its first task of a phase, so every task of a phase happens
//! after every task of the phase before. With `head_waits`, the qkv and attention phases have
//! one counter per key/value head and per head instead (`L3.qkv.kv0.done`, `L3.attn.h4.done`),
//! and the attention parts and head-split output-projection tasks wait only for the counter
//! their inputs come from. Counters are epoch-offset, so no reset is needed between launches.
//!
//! With `qkv_parts` P > 1, each query, key and value head of phase 1 is P tasks
//! (`L3.q.h2.p1`): part p computes the head rows `[p * hl, (p + 1) * hl)` and
//! `[hd / 2 + p * hl, hd / 2 + (p + 1) * hl)` with `hl = hd / (2P)`
//! ([`crate::ops::HeadPart`]), so rope's pairs stay in one task, and signals the counter the
//! whole head's task did (the counters' thresholds count the parts). The key
//! and value parts store the current rows to `L3.kv_new` rather than the caches (a cache
//! row's region is its head's whole range, so parts appending to one head would race): the
//! attention parts read their current row from there and, as with `tagged`, an append task
//! in the phase after the output projection copies the rows into the caches. Ignored with
//! `fuse_q`, `fuse_o` (whose attention reads the current row from the caches) and per-head
//! q/k norms (which need the whole head).
//!
//! With `tagged` (and `o_by_head`), the query heads and the current key/value rows go to
//! per-layer [`BufferKind::Tagged`] buffers: attention parts poll them instead of waiting for
//! the qkv phase (they wait only for the residual copies, long done when they start) and read
//! only the cache rows before the position; an append task in the MLP phase copies the
//! current rows into the caches, and the projections signal their counter (which only that
//! append waits for) after their worker's next task.

use crate::config::{Assignment, ScheduleConfig, TaskOrder};
use crate::ops::{
    attn_partial_len, Carry, CurrentRow, HeadNorm, HeadPart, NewRow, ProjInput, ProjOutput,
    RopeSpec, TaskOp, ELEM, IO_BYTES,
};
use crate::schedule::{
    BufferId, BufferKind, CounterId, CounterReset, Instr, Region, Schedule, TaskId, Worker,
};
use amk_ir::graph::DecodeGraph;

/// Why a graph cannot be lowered.
#[derive(Debug, thiserror::Error)]
pub enum LowerError {
    #[error(
        "the graph is not the llama decode pattern amk lowers (node {node} `{name}` differs from \
         what config.json implies); regenerate model.ir.ron with `amk` rather than editing its \
         structure"
    )]
    Pattern { node: usize, name: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("a tile does not fit: {0}")]
    Tiling(String),
    #[error("the lowering does not support {0}")]
    Unsupported(String),
}

/// Which of its phase's counters a task signals.
#[derive(Clone, Copy)]
enum Signals {
    One(usize),
    All,
    /// Counter `k`, but after the worker's next task (or before its next wait): for counters
    /// only the step's end waits for, so their release fence does not delay the task after.
    Late(usize),
    /// Nothing: a task of the step's last phase, which nothing in the launch waits for (the
    /// launch's end orders it before the next launch and the host).
    None,
}

/// Which counters a task waits for: all or one of the previous phase's, or named counters
/// of earlier phases (a task whose inputs are tagged, see [`BufferKind::Tagged`]).
#[derive(Clone)]
enum Needs {
    All,
    One(usize),
    Counters(Vec<CounterId>),
}

/// One phase under construction: its counters (one, or one per group of tasks) and its tasks
/// (in order) with their weight bytes and synchronization.
struct Phase {
    counters: Vec<CounterId>,
    tasks: Vec<(TaskId, u64, Signals, Needs)>,
}

struct Lowerer {
    s: Schedule,
    phases: Vec<Phase>,
}

impl Lowerer {
    fn buffer(&mut self, name: &str, kind: BufferKind, bytes: u64) -> BufferId {
        self.s.add_buffer(name, kind, bytes)
    }

    fn phase(&mut self, name: &str) {
        self.phase_groups(&[name.to_string()]);
    }

    /// The step's last phase: its tasks signal nothing.
    fn last_phase(&mut self) {
        self.phases.push(Phase { counters: Vec::new(), tasks: Vec::new() });
    }

    /// A phase with one counter per name (groups of its tasks).
    fn phase_groups(&mut self, names: &[String]) {
        // Epoch counts are filled in once the phase is complete.
        let counters = names
            .iter()
            .map(|n| self.s.add_counter(n, CounterReset::Epoch { signals_per_launch: 0 }))
            .collect();
        self.phases.push(Phase { counters, tasks: Vec::new() });
    }

    fn task(&mut self, name: String, op: TaskOp, weight_bytes: u64) {
        self.task_synced(name, op, weight_bytes, Signals::One(0), Needs::All);
    }

    /// The counters of the phase opened last.
    fn counters(&self) -> Vec<CounterId> {
        self.phases.last().map(|p| p.counters.clone()).unwrap_or_default()
    }

    fn task_synced(
        &mut self,
        name: String,
        op: TaskOp,
        bytes: u64,
        signals: Signals,
        needs: Needs,
    ) {
        let id = self.s.add_task_with_footprint(name, op);
        if let Some(p) = self.phases.last_mut() {
            // A phase of one counter has no groups: every task signals it.
            let signals = match signals {
                _ if p.counters.is_empty() => Signals::None,
                Signals::Late(_) if p.counters.len() == 1 => Signals::Late(0),
                _ if p.counters.len() == 1 => Signals::One(0),
                _ => signals,
            };
            p.tasks.push((id, bytes, signals, needs));
        }
    }
}

/// Splits `0..total` into tiles of `tile` (the last may be shorter).
fn tiles(total: u32, tile: u32) -> impl Iterator<Item = (u32, u32)> {
    (0..total.div_ceil(tile)).map(move |i| (i * tile, tile.min(total - i * tile)))
}

/// Lowers `graph` with the given knobs.
pub fn lower(graph: &DecodeGraph, config: &ScheduleConfig) -> Result<Schedule, LowerError> {
    config.check()?;
    let _span = tracing::info_span!("schedule").entered();
    // The lowering knows the llama pattern; make sure the graph is exactly that.
    let expected = DecodeGraph::build(&graph.config);
    if expected.graph.node_count() != graph.graph.node_count() || expected.weights != graph.weights
    {
        return Err(LowerError::Pattern { node: 0, name: "<graph size or weights>".into() });
    }
    for (a, b) in expected.graph.node_indices().zip(graph.graph.node_indices()) {
        if expected.graph[a] != graph.graph[b] || expected.operands(a) != graph.operands(b) {
            return Err(LowerError::Pattern { node: b.index(), name: graph.graph[b].name.clone() });
        }
    }

    let c = &graph.config;
    if c.mlp_bias {
        // GatedUp tasks have no bias operand; refusing beats silently dropping gate/up biases.
        return Err(LowerError::Unsupported(
            "MLP biases (config.json `mlp_bias: true`); the CPU reference runs such models".into(),
        ));
    }
    let u = |v: usize| -> Result<u32, LowerError> {
        u32::try_from(v).map_err(|_| LowerError::Tiling(format!("{v} does not fit in 32 bits")))
    };
    let (h, m, hd) = (u(c.hidden_size)?, u(c.intermediate_size)?, u(c.head_dim)?);
    let (nh, nkv, vocab) = (u(c.num_heads)?, u(c.num_kv_heads)?, u(c.vocab_size)?);
    let max_pos = if config.max_positions == 0 {
        u(c.max_position_embeddings)?
    } else {
        config.max_positions.min(u(c.max_position_embeddings)?)
    };
    let eps = c.rms_norm_eps;
    let rope = RopeSpec { head_dim: hd, theta: c.rope.theta, llama3: c.rope.llama3 };
    let window = match c.sliding_window {
        Some(w) => Some(u(w)?),
        None => None,
    };
    // Each q/k/v head as `qkv_parts` tasks that keep rope's pairs (j, j + hd / 2) together.
    if config.qkv_parts > 1 && ((hd / 2) % config.qkv_parts != 0 || hd % 2 != 0) {
        return Err(LowerError::Config(crate::config::ConfigError::Invalid {
            field: "qkv_parts",
            value: config.qkv_parts.into(),
            message: format!(
                "must divide head_dim / 2 = {} (head_dim {hd}): each part takes the same \
                 number of rope's row pairs",
                hd / 2
            ),
        }));
    }
    // Whole heads with `fuse_q` (the query projection is inside the attention parts), `fuse_o`
    // (its attention reads the current row from the caches, which parts cannot append to: see
    // `handoff` below) and per-head norms (they need the whole head).
    let qkv_parts = if config.fuse_q || config.fuse_o || c.qk_norm { 1 } else { config.qkv_parts };
    // Part `p` of a head's projection: its rows, name suffix and head part (`None` when whole).
    let head_parts = move || {
        (0..qkv_parts).map(move |part| {
            let split = (qkv_parts > 1).then_some(HeadPart { part, parts: qkv_parts });
            let suffix = if qkv_parts > 1 { format!(".p{part}") } else { String::new() };
            (hd / qkv_parts, suffix, split)
        })
    };

    let mut l = Lowerer {
        s: Schedule::new(format!("{} x{}", c.architecture.hf_name(), c.num_layers)),
        phases: Vec::new(),
    };
    let mut weight_ids = Vec::with_capacity(graph.weights.len());
    for w in &graph.weights {
        let id = l.buffer(&w.name, BufferKind::Weight, w.numel() as u64 * ELEM);
        l.s.buffers[id.index()].format = config.precision.format_of(&w.name, w.shape.len());
        weight_ids.push(id);
    }
    let wbuf = |name: &str| -> BufferId {
        let i = graph.weights.iter().position(|w| w.name == name).unwrap_or(usize::MAX);
        weight_ids.get(i).copied().unwrap_or(BufferId(u32::MAX))
    };
    let io = l.buffer("io", BufferKind::Io, IO_BYTES);
    let fuse_o = config.fuse_o;
    // Adds into the residual from the attention side (a fused or head-split output
    // projection) need one residual buffer per version.
    // (`o_by_head` gives way to `fuse_o` and `fuse_q`, which replace that projection.)
    let o_by_head = config.o_by_head && !fuse_o && !config.fuse_q;
    let head_waits = config.head_waits && !config.fuse_q;
    let versioned = fuse_o || o_by_head;
    // With head-split output projections and fused MLPs with fused norms, the output
    // projection adds only to `resid.{2L+1}`: the MLP's tasks, which load it for their norm,
    // carry its elements into `resid.{2L+2}` (zeroed in the qkv phase) beside their down
    // shares, so each output-projection task sends half the atomic adds.
    let carry = o_by_head && config.fuse_down && config.fuse_norm;
    // Tagged hand-offs replace the attention's counter waits (with head-split output
    // projections only, whose combine reads one head's partials).
    let tagged = config.tagged && o_by_head;
    if fuse_o && c.o_bias {
        // Each head's task adds its share of the projection; the bias would need one more.
        return Err(LowerError::Unsupported(
            "`fuse_o` with an attention output bias (config.json `o_bias`); lower it without \
             `fuse_o`"
                .into(),
        ));
    }
    // The residual stream. With `fuse_o` or `o_by_head`, one buffer per version: `resid.{2L}`
    // enters layer L, `resid.{2L+1}` adds its attention (the MLP's norm reads it),
    // `resid.{2L+2}` its attention and MLP (the qkv phase copies `resid.{2L}` into both first;
    // with `carry`, it zeroes `resid.{2L+2}` and the MLP carries `resid.{2L+1}` into it), so a
    // phase that adds to one never overlaps a phase that reads it. Otherwise one buffer,
    // `resid`.
    let versions = if versioned { 2 * c.num_layers + 1 } else { 1 };
    let resids: Vec<BufferId> = (0..versions)
        .map(|k| {
            let name = if versioned { format!("resid.{k}") } else { "resid".to_string() };
            l.buffer(&name, BufferKind::Activation, h as u64 * ELEM)
        })
        .collect();
    let resid = resids[0];
    let q = l.buffer("q", BufferKind::Activation, (nh * hd) as u64 * ELEM);
    let parts = config.attn_splits;
    let attn = (!fuse_o).then(|| {
        l.buffer(
            "attn_partials",
            BufferKind::Activation,
            (nh as u64 * parts as u64 * attn_partial_len(hd) as u64).saturating_mul(ELEM),
        )
    });
    // With `fuse_q`, the current position's key and value heads (keys first), projected in
    // the attention phase and appended to the caches in the next.
    let kv_new = config
        .fuse_q
        .then(|| l.buffer("kv_new", BufferKind::Activation, (2 * nkv * hd) as u64 * ELEM));
    let act = (!config.fuse_down).then(|| l.buffer("act", BufferKind::Activation, m as u64 * ELEM));
    // The residual as the output projection left it, for the MLP's fused norm while the MLP's
    // adds change `resid` (an unfused norm task reads it before the MLP phase instead).
    let resid_mlp = (config.fuse_down && config.fuse_norm && !versioned)
        .then(|| l.buffer("resid_mlp", BufferKind::Activation, h as u64 * ELEM));
    let logits = l.buffer("logits", BufferKind::Logits, vocab as u64 * ELEM);
    let cache_bytes = nkv as u64 * max_pos as u64 * hd as u64 * ELEM;
    // With unfused norms, each norm is one task writing `xn`, which the projections then read.
    let xn = (!config.fuse_norm).then(|| l.buffer("xn", BufferKind::Activation, h as u64 * ELEM));
    let norm_input = |l: &mut Lowerer,
                      phase: &str,
                      task: String,
                      weight: BufferId,
                      source: BufferId|
     -> ProjInput {
        match xn {
            None => ProjInput::RmsNormed { buffer: source, len: h, weight, eps },
            Some(xn) => {
                l.phase(phase);
                let op = TaskOp::RmsNorm { input: source, len: h, weight, eps, out: xn };
                l.task(task, op, h as u64 * ELEM);
                ProjInput::Vector { buffer: xn, len: h }
            }
        }
    };

    // The output projection's row tiles, each combining the attention partials (and, with
    // `fuse_q`, the current row) as it loads its input, the residual add in the epilogue.
    let o_projection = |l: &mut Lowerer, layer: usize, attn: BufferId, current| {
        let input =
            ProjInput::AttnPartials { buffer: attn, heads: nh, head_dim: hd, parts, current };
        let lw = |s: &str| wbuf(&format!("model.layers.{layer}.{s}"));
        for (first, rows) in tiles(h, config.o_rows) {
            let op = TaskOp::Projection {
                input,
                weight: lw("self_attn.o_proj.weight"),
                bias: c.o_bias.then(|| lw("self_attn.o_proj.bias")),
                first_row: first,
                rows,
                cols: nh * hd,
                head_norm: None,
                head_part: None,
                rope: None,
                io,
                output: match resid_mlp {
                    Some(copy) => ProjOutput::AccumulateCopy { buffer: resid, offset: first, copy },
                    None => ProjOutput::Accumulate { buffer: resid, offset: first },
                },
            };
            l.task(format!("L{layer}.o.r{first}"), op, (rows * nh * hd) as u64 * ELEM);
        }
    };

    // Tagged or split key/value heads: the layer's append task, pending for the phase after
    // its output projection, and the projections' counters it waits for.
    let mut append_after_o = None;
    l.phase("embed.done");
    let table = wbuf("model.embed_tokens.weight");
    l.task("embed".into(), TaskOp::Embed { table, hidden: h, io, out: resid }, h as u64 * ELEM);

    for layer in 0..c.num_layers {
        let lw = |s: &str| wbuf(&format!("model.layers.{layer}.{s}"));
        // The residual this layer reads, the one its MLP's norm reads, the one it leaves.
        let (x_in, x_mid, x_out) = if versioned {
            (resids[2 * layer], resids[2 * layer + 1], resids[2 * layer + 2])
        } else {
            (resid, resid_mlp.unwrap_or(resid), resid)
        };
        let k_cache = l.buffer(&format!("L{layer}.k_cache"), BufferKind::KvCache, cache_bytes);
        let v_cache = l.buffer(&format!("L{layer}.v_cache"), BufferKind::KvCache, cache_bytes);
        let qkv_bias = |s: &str| c.qkv_bias.then(|| lw(s));
        // The task that copies this layer's current key/value rows from `kv` into its caches.
        let append = |kv| TaskOp::AppendKv {
            kv,
            kv_heads: nkv,
            head_dim: hd,
            max_positions: max_pos,
            k_cache,
            v_cache,
            io,
        };
        // Qwen3: each q and k head normalised (after the bias, before rope) by its layer's
        // q_norm / k_norm weight.
        let head_norm = |tag: &str| {
            c.qk_norm.then(|| HeadNorm {
                weight: lw(&format!("self_attn.{tag}_norm.weight")),
                head_dim: hd,
                eps,
            })
        };

        let attn_in = norm_input(
            &mut l,
            &format!("L{layer}.attn_norm.done"),
            format!("L{layer}.attn_norm"),
            lw("input_layernorm.weight"),
            x_in,
        );
        let head_bytes = (hd * h) as u64 * ELEM;
        let kv_head_of = |head: u32| head / (nh / nkv);
        // The key heads (per-head norm and rope), then the value heads, each head's rows going
        // where `output(value, kv_head)` says.
        let kv_projections = |l: &mut Lowerer, output: &dyn Fn(bool, u32) -> ProjOutput| {
            for (value, proj, norm, rope) in
                [(false, "k_proj", head_norm("k"), Some(rope)), (true, "v_proj", None, None)]
            {
                let tag = if value { "v" } else { "k" };
                for kv_head in 0..nkv {
                    for (rows, suffix, head_part) in head_parts() {
                        let op = TaskOp::Projection {
                            input: attn_in,
                            weight: lw(&format!("self_attn.{proj}.weight")),
                            bias: qkv_bias(&format!("self_attn.{proj}.bias")),
                            first_row: kv_head * hd,
                            rows,
                            cols: h,
                            head_norm: norm,
                            head_part,
                            rope,
                            io,
                            output: output(value, kv_head),
                        };
                        let name = format!("L{layer}.{tag}.h{kv_head}{suffix}");
                        let signal =
                            if tagged { Signals::Late(1) } else { Signals::One(kv_head as usize) };
                        let bytes = (rows * h) as u64 * ELEM;
                        l.task_synced(name, op, bytes, signal, Needs::All);
                    }
                }
            }
        };
        if let (Some(kv_new), Some(attn)) = (kv_new, attn) {
            // One phase: each attention part projects its query head; the key and value heads
            // go to `kv_new`, which the output projection's combine and the append read.
            l.phase(&format!("L{layer}.attn.done"));
            for head in 0..nh {
                for part in 0..parts {
                    let op = TaskOp::QueryAttention {
                        input: attn_in,
                        weight: lw("self_attn.q_proj.weight"),
                        bias: qkv_bias("self_attn.q_proj.bias"),
                        cols: h,
                        head_norm: head_norm("q"),
                        rope,
                        head,
                        kv_head: kv_head_of(head),
                        head_dim: hd,
                        max_positions: max_pos,
                        window,
                        k_cache,
                        v_cache,
                        io,
                        part,
                        parts,
                        out: attn,
                        q_out: (part == 0).then_some(q),
                    };
                    l.task(format!("L{layer}.attn.h{head}.p{part}"), op, head_bytes);
                }
            }
            kv_projections(&mut l, &|value, kv_head| {
                let base = if value { nkv } else { 0 };
                ProjOutput::Store { buffer: kv_new, offset: (base + kv_head) * hd }
            });
            l.phase(&format!("L{layer}.o.done"));
            let current = Some(CurrentRow { q, kv: kv_new, kv_heads: nkv });
            o_projection(&mut l, layer, attn, current);
            l.task(format!("L{layer}.kv_append"), append(kv_new), 0);
        } else {
            // With tagged hand-offs: this layer's query heads and current key/value rows, each
            // written once per step. With key/value heads split into parts, the current rows
            // also go to a buffer of their own (not tagged, without tagged hand-offs) and an
            // append task copies them into the caches after the layer's attention: a cache
            // row's region is its head's whole range (the position is data), so parts of one
            // head appending their rows would race.
            let handoff = (tagged || qkv_parts > 1).then(|| {
                let tb = |l: &mut Lowerer, what: &str, values: u64| {
                    let kind = if tagged { BufferKind::Tagged } else { BufferKind::Activation };
                    l.buffer(&format!("L{layer}.{what}"), kind, values * ELEM)
                };
                let q = tagged.then(|| tb(&mut l, "q", (nh * hd) as u64));
                (q, tb(&mut l, "kv_new", (2 * nkv * hd) as u64))
            });
            let q = handoff.and_then(|t| t.0).unwrap_or(q);
            // Tagged: the residual copies signal a counter of their own, which the attention
            // parts wait for (long satisfied when they start), and the projections another,
            // which only the layer's append waits for.
            if tagged {
                let names = [format!("L{layer}.resid.done"), format!("L{layer}.qkv.done")];
                l.phase_groups(&names);
            } else if head_waits {
                let names: Vec<String> =
                    (0..nkv).map(|g| format!("L{layer}.qkv.kv{g}.done")).collect();
                l.phase_groups(&names);
            } else {
                l.phase(&format!("L{layer}.qkv.done"));
            }
            let qkv_counters = l.counters();
            // Tagged: the layer's current rows go into its caches in the phase after the
            // output projection, after every attention part (the output projection waited for
            // them) and every projection (which signal `qkv.done` late) of the layer.
            // Untagged, it waits for every projection counter (the output projection it comes
            // after already did, through the attention).
            append_after_o = handoff.map(|(_, kv)| {
                let qkv = if tagged { vec![qkv_counters[1]] } else { qkv_counters.clone() };
                (append(kv), qkv)
            });
            if versioned {
                // The two versions the attention and the MLP add to start as this layer's input
                // (with `carry`, the second as zero).
                for (tag, dst) in [("mid", x_mid), ("out", x_out)] {
                    let dst = Region::new(dst, 0, h as u64 * ELEM);
                    let op = if carry && dst.buffer == x_out {
                        TaskOp::Zero { dst }
                    } else {
                        TaskOp::Copy { src: Region::new(x_in, 0, h as u64 * ELEM), dst }
                    };
                    // Every group's attention may add to these: each waits for the copies.
                    let name = format!("L{layer}.resid.{tag}");
                    let signals = if tagged { Signals::One(0) } else { Signals::All };
                    l.task_synced(name, op, h as u64 * ELEM, signals, Needs::All);
                }
            }
            for head in 0..nh {
                for (rows, suffix, head_part) in head_parts() {
                    let op = TaskOp::Projection {
                        input: attn_in,
                        weight: lw("self_attn.q_proj.weight"),
                        bias: qkv_bias("self_attn.q_proj.bias"),
                        first_row: head * hd,
                        rows,
                        cols: h,
                        head_norm: head_norm("q"),
                        head_part,
                        rope: Some(rope),
                        io,
                        output: ProjOutput::Store { buffer: q, offset: head * hd },
                    };
                    let group = if tagged {
                        Signals::Late(1)
                    } else {
                        Signals::One(kv_head_of(head) as usize)
                    };
                    let name = format!("L{layer}.q.h{head}{suffix}");
                    let bytes = (rows * h) as u64 * ELEM;
                    l.task_synced(name, op, bytes, group, Needs::All);
                }
            }
            kv_projections(&mut l, &|value, kv_head| match handoff {
                Some((_, kv_new)) => {
                    let base = if value { nkv } else { 0 };
                    ProjOutput::Store { buffer: kv_new, offset: (base + kv_head) * hd }
                }
                None => ProjOutput::CacheRow {
                    cache: if value { v_cache } else { k_cache },
                    kv_head,
                    head_dim: hd,
                    max_positions: max_pos,
                },
            });

            if head_waits && attn.is_some() {
                let names: Vec<String> =
                    (0..nh).map(|h| format!("L{layer}.attn.h{h}.done")).collect();
                l.phase_groups(&names);
            } else {
                l.phase(&format!("L{layer}.attn.done"));
            }
            // What an attention task of `head` waits for: its key/value head's projections
            // (tagged: nothing, it polls them).
            let attn_needs = |head: u32| {
                if tagged {
                    Needs::Counters(vec![qkv_counters[0]])
                } else if head_waits {
                    Needs::One(kv_head_of(head) as usize)
                } else {
                    Needs::All
                }
            };
            match attn {
                None => {
                    // Whole heads, each adding its share of the output projection to both
                    // versions of the residual.
                    for head in 0..nh {
                        let op = TaskOp::AttentionOut {
                            q,
                            head,
                            kv_head: kv_head_of(head),
                            head_dim: hd,
                            max_positions: max_pos,
                            window,
                            k_cache,
                            v_cache,
                            io,
                            weight: lw("self_attn.o_proj.weight"),
                            cols: h,
                            weight_cols: nh * hd,
                            outs: [x_mid, x_out],
                        };
                        let name = format!("L{layer}.attn.h{head}");
                        l.task_synced(name, op, head_bytes, Signals::One(0), attn_needs(head));
                    }
                }
                Some(attn) => {
                    for head in 0..nh {
                        for part in 0..parts {
                            let op = TaskOp::Attention {
                                q,
                                head,
                                kv_head: kv_head_of(head),
                                head_dim: hd,
                                max_positions: max_pos,
                                window,
                                k_cache,
                                v_cache,
                                io,
                                part,
                                parts,
                                out: attn,
                                current: handoff.map(|(_, kv)| NewRow { kv, kv_heads: nkv }),
                            };
                            let name = format!("L{layer}.attn.h{head}.p{part}");
                            let signals = Signals::One(head as usize);
                            l.task_synced(name, op, 0, signals, attn_needs(head));
                        }
                    }
                    l.phase(&format!("L{layer}.o.done"));
                    if o_by_head {
                        // Each task: one head's partials, some of its dimensions, their
                        // columns of the projection added to the residual (both versions
                        // without `carry`).
                        for head in 0..nh {
                            for (first, dims) in tiles(hd, config.o_rows) {
                                // The first task of the layer also adds the bias.
                                let first_task = head == 0 && first == 0;
                                let op = TaskOp::HeadOut {
                                    bias: (c.o_bias && first_task)
                                        .then(|| lw("self_attn.o_proj.bias")),
                                    partials: attn,
                                    head,
                                    head_dim: hd,
                                    parts,
                                    first,
                                    dims,
                                    weight: lw("self_attn.o_proj.weight"),
                                    cols: h,
                                    weight_cols: nh * hd,
                                    out: x_mid,
                                    mirror: (!carry).then_some(x_out),
                                };
                                let name = format!("L{layer}.o.h{head}.d{first}");
                                // Tagged: the partials are polled; the wait is for the
                                // residual copies (signalled to every qkv counter).
                                let needs =
                                    if head_waits { Needs::One(head as usize) } else { Needs::All };
                                let bytes = (dims * h) as u64 * ELEM;
                                l.task_synced(name, op, bytes, Signals::One(0), needs);
                            }
                        }
                    } else {
                        o_projection(&mut l, layer, attn, None);
                    }
                }
            }
        }

        let mlp_in = norm_input(
            &mut l,
            &format!("L{layer}.mlp_norm.done"),
            format!("L{layer}.mlp_norm"),
            lw("post_attention_layernorm.weight"),
            x_mid,
        );
        // The append joins the first phase after the output projection's.
        let add_append = |l: &mut Lowerer, pending: &mut Option<(TaskOp, Vec<CounterId>)>| {
            if let Some((op, qkv)) = pending.take() {
                let before = l.phases.len().checked_sub(2).map(|p| l.phases[p].counters.clone());
                let mut needs = before.unwrap_or_default();
                needs.extend(qkv);
                let name = format!("L{layer}.kv_append");
                l.task_synced(name, op, 0, Signals::One(0), Needs::Counters(needs));
            }
        };
        if xn.is_some() {
            add_append(&mut l, &mut append_after_o);
        }
        let Some(act) = act else {
            l.phase(&format!("L{layer}.mlp.done"));
            add_append(&mut l, &mut append_after_o);
            // With `carry`, task k carries elements k * span.. of the residual it reads.
            let span = h.div_ceil(m.div_ceil(config.mlp_rows).max(1));
            for (k, (first, rows)) in tiles(m, config.mlp_rows).enumerate() {
                let carried = (k as u32).saturating_mul(span).min(h);
                let op = TaskOp::GatedMlp {
                    input: mlp_in,
                    gate: lw("mlp.gate_proj.weight"),
                    up: lw("mlp.up_proj.weight"),
                    down: lw("mlp.down_proj.weight"),
                    first_row: first,
                    rows,
                    cols: h,
                    inter: m,
                    out: x_out,
                    carry: carry
                        .then(|| Carry { first: carried, len: span.min(h - carried) })
                        .filter(|c| c.len > 0),
                };
                l.task(format!("L{layer}.mlp.r{first}"), op, 3 * (rows * h) as u64 * ELEM);
            }
            continue;
        };
        l.phase(&format!("L{layer}.up.done"));
        add_append(&mut l, &mut append_after_o);
        for (first, rows) in tiles(m, config.mlp_rows) {
            let op = TaskOp::GatedUp {
                input: mlp_in,
                gate: lw("mlp.gate_proj.weight"),
                up: lw("mlp.up_proj.weight"),
                first_row: first,
                rows,
                cols: h,
                out: act,
            };
            l.task(format!("L{layer}.up.r{first}"), op, 2 * (rows * h) as u64 * ELEM);
        }

        l.phase(&format!("L{layer}.down.done"));
        for (first, rows) in tiles(h, config.down_rows) {
            let op = TaskOp::Projection {
                input: ProjInput::Vector { buffer: act, len: m },
                weight: lw("mlp.down_proj.weight"),
                bias: None,
                first_row: first,
                rows,
                cols: m,
                head_norm: None,
                head_part: None,
                rope: None,
                io,
                output: ProjOutput::Accumulate { buffer: x_out, offset: first },
            };
            l.task(format!("L{layer}.down.r{first}"), op, (rows * m) as u64 * ELEM);
        }
    }

    let head_w = if c.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
    let head_in = norm_input(
        &mut l,
        "final_norm.done",
        "final_norm".into(),
        wbuf("model.norm.weight"),
        resids[versions - 1],
    );
    // The LM head ends the step: each tile folds its maximum into io's next token, and the
    // first also advances the position.
    l.last_phase();
    for (first, rows) in tiles(vocab, config.head_rows) {
        let op = TaskOp::HeadArgmax {
            input: head_in,
            weight: wbuf(head_w),
            first_row: first,
            rows,
            cols: h,
            logits,
            io,
            advance: first == 0,
        };
        l.task(format!("head.r{first}"), op, (rows * h) as u64 * ELEM);
    }

    Ok(place(l, config))
}

/// Places each phase's tasks on workers and writes the instruction lists.
fn place(mut l: Lowerer, config: &ScheduleConfig) -> Schedule {
    let w = config.workers as usize;
    let mut workers = vec![Worker::default(); w];
    let mut load = vec![0u64; w];
    let mut next_rr = 0usize;
    // The previous phase's counters with their signal counts.
    let mut prev: Vec<(CounterId, u32)> = Vec::new();
    // Per worker, the counters it has waited for so far: a later wait for one of them is
    // already satisfied (counters only grow within a launch), so it is left out.
    let mut waited: Vec<Vec<CounterId>> = vec![Vec::new(); w];
    // Per worker, late signals waiting for its next task to be placed.
    let mut late_signals: Vec<Vec<CounterId>> = vec![Vec::new(); w];
    for phase in &l.phases {
        // Tasks of one phase run in parallel only on distinct workers, so a phase is spread
        // first; bytes are balanced among the workers with the fewest tasks in the phase.
        let mut in_phase = vec![0u32; w];
        let mut order = phase.tasks.clone();
        if phase.counters.is_empty() && config.assignment == Assignment::RoundRobin {
            // The step's last phase goes to the last workers (with more tasks than workers, its
            // extra round to the last ones): the first ones then finish the step early, and
            // the next launch's first blocks, which the GPU starts first and which hold its
            // first tasks, start on their SMs while this launch ends.
            next_rr = (w - order.len() % w) % w;
        }
        if config.task_order == TaskOrder::LargestFirst {
            // Stable: equal tiles keep their lowered order.
            order.sort_by_key(|&(_, bytes, _, _)| std::cmp::Reverse(bytes));
        }
        for (task, bytes, signals, needs) in order.iter().cloned() {
            let wi = match config.assignment {
                Assignment::RoundRobin => {
                    next_rr = (next_rr + 1) % w;
                    (next_rr + w - 1) % w
                }
                Assignment::BalancedBytes => {
                    (0..w).min_by_key(|&i| (in_phase[i], load[i], i)).unwrap_or(0)
                }
            };
            in_phase[wi] += 1;
            load[wi] += bytes.max(1);
            let needed: Vec<(CounterId, u32)> = match needs {
                Needs::One(k) if prev.len() > 1 => prev.get(k).copied().into_iter().collect(),
                // Counters of earlier phases: their signal counts are known by now.
                Needs::Counters(cs) => cs
                    .into_iter()
                    .map(|c| match l.s.counters[c.index()].reset {
                        CounterReset::Epoch { signals_per_launch } => (c, signals_per_launch),
                        _ => (c, 0),
                    })
                    .collect(),
                // A previous phase of one counter has no groups: every task waits for it.
                _ => prev.clone(),
            };
            for (counter, count) in needed {
                if !waited[wi].contains(&counter) {
                    // Late signals go out before the worker blocks: the wait may need them.
                    let late = std::mem::take(&mut late_signals[wi]);
                    workers[wi].instrs.extend(late.into_iter().map(Instr::Signal));
                    workers[wi].instrs.push(Instr::Wait { counter, at_least: count });
                    waited[wi].push(counter);
                }
            }
            workers[wi].instrs.push(Instr::Run(task));
            let late = std::mem::take(&mut late_signals[wi]);
            match signals {
                Signals::One(k) => workers[wi].instrs.push(Instr::Signal(phase.counters[k])),
                Signals::All => {
                    for &c in &phase.counters {
                        workers[wi].instrs.push(Instr::Signal(c));
                    }
                }
                Signals::Late(k) => late_signals[wi].push(phase.counters[k]),
                Signals::None => {}
            }
            workers[wi].instrs.extend(late.into_iter().map(Instr::Signal));
        }
        prev = phase
            .counters
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                let count = phase
                    .tasks
                    .iter()
                    .filter(|t| {
                        matches!(t.2, Signals::All)
                            || matches!(t.2, Signals::One(j) | Signals::Late(j) if j == k)
                    })
                    .count() as u32;
                l.s.counters[c.index()].reset = CounterReset::Epoch { signals_per_launch: count };
                (c, count)
            })
            .collect();
    }
    for (worker, late) in workers.iter_mut().zip(late_signals) {
        worker.instrs.extend(late.into_iter().map(Instr::Signal));
    }
    l.s.workers = workers;
    l.s
}
