//! What a task computes. The verifier looks only at a task's declared regions; the executors
//! (the CPU schedule executor and the generated CUDA) look at its op, and [`TaskOp::footprint`]
//! gives the regions an op touches so a schedule's declarations can be checked against it.
//!
//! Every activation is f32. Offsets and lengths inside ops count elements (4 bytes each);
//! regions count bytes. Weight buffers are described as f32 too: a backend that uploads bf16
//! or int8 weights scales every weight region by the same factor, which keeps bounds and
//! disjointness as verified.
//!
//! The `io` buffer ([`io`]) holds the token being decoded, its position, and the next token as
//! a packed argmax: each [`TaskOp::HeadArgmax`] folds its rows' maximum into it with one
//! atomic max, and one of them advances the position; the next launch's [`TaskOp::Embed`]
//! reads the token from it. So a launch ends with its LM head, with no reduction step, and the
//! next launch reads its input from device memory.

use crate::schedule::{BufferId, Region};
use amk_ir::config::{Llama3RopeScaling, RopeConfig};
use serde::{Deserialize, Serialize};

/// Bytes of one element of every buffer (f32 activations, f32-described weights, u32 io).
pub const ELEM: u64 = 4;
/// Bytes of the io buffer: token, position and the packed next token ([`io`]).
pub const IO_BYTES: u64 = 16;

/// The io buffer's layout and its packed argmax, shared by every executor and the host.
pub mod io {
    /// Byte offset of the token this step decodes (u32), written by the embedding.
    pub const TOKEN: u64 = 0;
    /// Byte offset of this step's position (u32).
    pub const POSITION: u64 = 4;
    /// Byte offset of the next token as a packed argmax (u64, little-endian): the high word
    /// orders the logit (its f32 bits made to sort as unsigned), the low word is the token's
    /// complement, so the largest packed value is the largest logit and, among equal ones,
    /// the lowest token (first index on ties, as the reference's argmax).
    pub const NEXT: u64 = 8;

    /// `value` and `index` packed so that the u64 maximum is the argmax; `None` for NaN,
    /// which never wins (-0.0 counts as +0.0, as the float comparison has them equal).
    pub fn pack_max(value: f32, index: u32) -> Option<u64> {
        if value.is_nan() {
            return None;
        }
        let bits = (value + 0.0).to_bits();
        let key = if bits >> 31 == 1 { !bits } else { bits | 0x8000_0000 };
        Some((u64::from(key) << 32) | u64::from(!index))
    }

    /// The packed form of a token fed by the host (a prompt token): no logit goes with it.
    pub fn pack_input(token: u32) -> u64 {
        (u64::from(u32::MAX) << 32) | u64::from(!token)
    }

    /// The token a packed argmax names; 0 when nothing was folded in (every logit NaN), as
    /// an argmax over no candidates gives.
    pub fn next_token(next: u64) -> u32 {
        let low = next as u32;
        if low == 0 {
            0
        } else {
            !low
        }
    }
}

/// The input vector of a projection.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ProjInput {
    /// The first `len` elements of `buffer`, as they are.
    Vector { buffer: BufferId, len: u32 },
    /// `rms_norm(buffer[..len]) * weight`, recomputed by each task from the residual stream
    /// (RMSNorm fused into the projection: no sync point for the norm).
    RmsNormed { buffer: BufferId, len: u32, weight: BufferId, eps: f32 },
    /// The attention output of `heads` heads, combined by each task from the partial results
    /// of [`TaskOp::Attention`] tasks (`parts` per head, laid out as [`attn_partial_index`]):
    /// element `h * head_dim + j` is `sum_p acc_p[j] e^(m_p - M) / sum_p l_p e^(m_p - M)` with
    /// `M = max_p m_p` over the parts that saw a position (split attention's combine step
    /// fused into the output projection: no sync point for it). With `current`, each head's
    /// row at the current position is one more part, after the others: `m = q . k / sqrt(hd)`,
    /// `l = 1`, `acc = v` (the parts then cover only the rows before it; see
    /// [`TaskOp::QueryAttention`]).
    AttnPartials {
        buffer: BufferId,
        heads: u32,
        head_dim: u32,
        parts: u32,
        /// Absent from `schedule.ron` when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<CurrentRow>,
    },
}

/// Elements `first..first + len` of a fused MLP's input residual, which the task adds into
/// its output ([`TaskOp::GatedMlp`]'s `carry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Carry {
    pub first: u32,
    pub len: u32,
}

/// The current position's query, key and value heads, for an attention-partials input whose
/// parts attend only to the rows before it: query head `h` is `q[h * hd..][..hd]`, its key
/// `kv[g * hd..][..hd]` and its value `kv[(kv_heads + g) * hd..][..hd]` with
/// `g = h / (heads / kv_heads)` (grouped-query attention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrentRow {
    pub q: BufferId,
    pub kv: BufferId,
    pub kv_heads: u32,
}

/// The current position's key and value heads in a buffer of their own (keys first): key
/// head `g` is `kv[g * hd..][..hd]`, its value `kv[(kv_heads + g) * hd..][..hd]`. An attention
/// that reads its current row from here does not depend on the cache append of this launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRow {
    pub kv: BufferId,
    pub kv_heads: u32,
}

impl CurrentRow {
    /// The key/value head query head `head` of `heads` reads, if the head counts are valid.
    pub fn kv_head(&self, head: u32, heads: u32) -> Option<u32> {
        if self.kv_heads == 0 || heads % self.kv_heads != 0 {
            return None;
        }
        Some(head / (heads / self.kv_heads))
    }
}

/// Elements of one attention partial: `m`, `l`, then `head_dim` accumulators.
pub fn attn_partial_len(head_dim: u32) -> u32 {
    head_dim.saturating_add(2)
}

/// Element index of the partial of `head`'s `part` (of `parts`) in an attention-partials buffer:
/// `[heads][parts][head_dim + 2]`.
pub fn attn_partial_index(head: u32, part: u32, parts: u32, head_dim: u32) -> u64 {
    (head as u64 * parts as u64 + part as u64) * attn_partial_len(head_dim) as u64
}

/// The cache rows part `part` of `parts` covers when a query attends to rows `start..end`:
/// chunks of `ceil(n / parts)` rows in order (trailing parts may be empty). Every executor
/// splits the same way.
pub fn attn_part_rows(start: usize, end: usize, part: u32, parts: u32) -> (usize, usize) {
    let n = end.saturating_sub(start);
    let chunk = n.div_ceil(parts.max(1) as usize);
    let a = (start + part as usize * chunk).min(end);
    let b = (a + chunk).min(end);
    (a, b)
}

impl ProjInput {
    /// Number of elements of the input vector.
    pub fn len(&self) -> u32 {
        match *self {
            ProjInput::Vector { len, .. } | ProjInput::RmsNormed { len, .. } => len,
            ProjInput::AttnPartials { heads, head_dim, .. } => heads.saturating_mul(head_dim),
        }
    }

    /// The buffer whose elements the input is (as they are or normed); `None` for attention
    /// partials, which are combined first.
    pub fn elements(&self) -> Option<BufferId> {
        match *self {
            ProjInput::Vector { buffer, .. } | ProjInput::RmsNormed { buffer, .. } => Some(buffer),
            ProjInput::AttnPartials { .. } => None,
        }
    }

    /// Whether the input is empty (never, in a lowered schedule).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn footprint(&self, reads: &mut Vec<Region>) {
        match *self {
            ProjInput::Vector { buffer, len } => reads.push(elems(buffer, 0, len)),
            ProjInput::RmsNormed { buffer, len, weight, .. } => {
                reads.push(elems(buffer, 0, len));
                reads.push(elems(weight, 0, len));
            }
            ProjInput::AttnPartials { buffer, heads, head_dim, parts, current } => {
                let len = (heads as u64)
                    .saturating_mul(parts as u64)
                    .saturating_mul(attn_partial_len(head_dim) as u64);
                reads.push(Region::new(buffer, 0, len.saturating_mul(ELEM)));
                if let Some(c) = current {
                    reads.push(Region::new(c.q, 0, row_bytes(heads, head_dim)));
                    reads.push(Region::new(
                        c.kv,
                        0,
                        row_bytes(c.kv_heads.saturating_mul(2), head_dim),
                    ));
                }
            }
        }
    }
}

/// Where a projection's rows go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ProjOutput {
    /// `buffer[offset + i] = y[i]`.
    Store { buffer: BufferId, offset: u32 },
    /// `buffer[offset + i] += y[i]`: the residual add fused into the epilogue.
    Accumulate { buffer: BufferId, offset: u32 },
    /// `buffer[offset + i] += y[i]`, the sum also stored at `copy[offset + i]`: a snapshot of
    /// the residual stream for tasks that read it while others add to `buffer`
    /// ([`TaskOp::GatedMlp`]).
    AccumulateCopy { buffer: BufferId, offset: u32, copy: BufferId },
    /// The rows are one key or value head, appended to a cache laid out
    /// `[num_kv_heads, max_positions, head_dim]` at the current position (KV append fused).
    CacheRow { cache: BufferId, kv_head: u32, head_dim: u32, max_positions: u32 },
}

/// Rotary embedding applied to a projection's rows (whole heads), at the current position.
/// The frequencies are [`RopeSpec::inv_freq`] (one table for every executor).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeSpec {
    pub head_dim: u32,
    pub theta: f64,
    /// Llama 3.x frequency scaling; absent from `schedule.ron` when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llama3: Option<Llama3RopeScaling>,
}

impl RopeSpec {
    /// The model-level rope parameters this spec carries.
    pub fn config(&self) -> RopeConfig {
        RopeConfig { theta: self.theta, llama3: self.llama3 }
    }

    /// The `head_dim / 2` inverse frequencies ([`RopeConfig::inv_freq`]).
    pub fn inv_freq(&self) -> Vec<f32> {
        self.config().inv_freq(self.head_dim as usize)
    }
}

/// Per-head RMSNorm of a projection's rows (whole heads), applied after the bias and before
/// rope: each head `y[h] = y[h] / sqrt(mean(y[h]^2) + eps) * weight[..head_dim]` (Qwen3's
/// q_norm / k_norm).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadNorm {
    pub weight: BufferId,
    pub head_dim: u32,
    pub eps: f32,
}

/// Part `part` of `parts` of one head of a [`TaskOp::Projection`] (`ScheduleConfig::qkv_parts`):
/// a head split into tasks that keep rope's pairs together. Hugging Face's rotate_half pairs
/// head row `j` with `j + head_dim / 2`, so with `rows` the task's rows (`head_dim =
/// rows * parts`, `rows` even) and `hl = rows / 2`, the task's local row `i < hl` is head row
/// `part * hl + i` and local row `i >= hl` is head row `head_dim / 2 + part * hl + (i - hl)`.
/// The projection's `first_row` is then the head's first row, its weight and bias rows are
/// `first_row +` those head rows, rope rotates the local pairs `(i, i + hl)` with frequency
/// index `part * hl + i`, and its outputs go to the same head-relative positions (`offset +`
/// head row, or the cache row's element). A per-head norm needs the whole head, so a split
/// projection has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadPart {
    pub part: u32,
    pub parts: u32,
}

/// Why a projection's [`HeadPart`] cannot be run, naming the op field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {message}")]
pub struct HeadPartError {
    pub field: &'static str,
    pub message: String,
}

impl HeadPart {
    /// The head dimension of a part of `rows` rows: `rows * parts` (u64: never overflows).
    pub fn head_dim(&self, rows: u32) -> u64 {
        rows as u64 * self.parts as u64
    }

    /// The task's two runs of head rows, as (first head row, count): local rows `0..rows / 2`,
    /// then `rows / 2..rows`. Saturating, so absurd hand-edited values give out-of-bounds
    /// regions rather than overflow.
    pub fn ranges(&self, rows: u32) -> [(u64, u64); 2] {
        let hl = (rows / 2) as u64;
        let at = (self.part as u64).saturating_mul(hl);
        let half = self.head_dim(rows) / 2;
        [(at, hl), (half.saturating_add(at), rows as u64 - hl)]
    }

    /// The head row of the task's local row `i` (`i < rows`).
    pub fn head_row(&self, i: u32, rows: u32) -> u64 {
        let [(a, n), (b, _)] = self.ranges(rows);
        let i = i as u64;
        if i < n {
            a + i
        } else {
            b + (i - n)
        }
    }
}

/// The computation of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum TaskOp {
    /// Copies the bytes of `src` to `dst` (same length).
    Copy { src: Region, dst: Region },
    /// Sets the bytes of `dst` to zero (a sum that tasks then add into).
    Zero { dst: Region },
    /// `out[..hidden] = table[token]` with the token read from `io`'s packed next token
    /// ([`io::next_token`]); the token is also stored as the step's, and the packed word
    /// cleared for this step's LM head to fold its maxima into.
    Embed { table: BufferId, hidden: u32, io: BufferId, out: BufferId },
    /// Rows `first_row..first_row + rows` of `weight @ input (+ bias)` (weight `[*, cols]`),
    /// optionally normalised per head (`head_norm`, rows are whole heads), optionally rotated
    /// (rope), then stored, accumulated or appended to a cache. With `head_part`, the rows are
    /// instead one part of the head starting at `first_row`, as [`HeadPart`] lays out.
    Projection {
        input: ProjInput,
        weight: BufferId,
        bias: Option<BufferId>,
        first_row: u32,
        rows: u32,
        cols: u32,
        /// Absent from `schedule.ron` when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head_norm: Option<HeadNorm>,
        /// The task's part of one head (rope's pairs kept together); absent from
        /// `schedule.ron` when `None` (rows `first_row..first_row + rows`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head_part: Option<HeadPart>,
        rope: Option<RopeSpec>,
        io: BufferId,
        output: ProjOutput,
    },
    /// Rows of `silu(gate @ input) * (up @ input)` into `out[first_row..]`: the SiLU-gated MLP's
    /// first half with its activation fused.
    GatedUp {
        input: ProjInput,
        gate: BufferId,
        up: BufferId,
        first_row: u32,
        rows: u32,
        cols: u32,
        out: BufferId,
    },
    /// Rows `first_row..first_row + rows` of the whole SiLU-gated MLP: the [`TaskOp::GatedUp`]
    /// rows `a = silu(gate @ input) * (up @ input)` (kept by the task), then
    /// `out[..cols] += down[:, first_row..first_row + rows] @ a` (down `[cols, inter]`) with
    /// atomic adds, declared as [`crate::schedule::Task::adds`]: the down projection split
    /// over the gate/up tiles, so it needs no phase of its own. The sum's order over tasks is
    /// not fixed, so f32 results may differ in the last bits from run to run. With `carry`,
    /// the task also adds its input's elements `first..first + len`, as loaded (before the
    /// norm), into the same elements of `out`: the MLP's tasks together carry the residual
    /// they read into a zeroed `out`, so the step before them adds to one buffer, not two.
    GatedMlp {
        input: ProjInput,
        gate: BufferId,
        up: BufferId,
        down: BufferId,
        first_row: u32,
        rows: u32,
        cols: u32,
        /// Columns of `down` (rows of gate and up: the MLP's intermediate size).
        inter: u32,
        out: BufferId,
        /// Absent from `schedule.ron` when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        carry: Option<Carry>,
    },
    /// Part `part` of `parts` of one query head attending over cache rows `0..=position` of
    /// its key/value head, or with a sliding `window` W over rows
    /// `max(0, position + 1 - W)..=position`; the part covers the rows [`attn_part_rows`]
    /// gives. It writes the partial softmax of its rows at [`attn_partial_index`] in `out`:
    /// `m = max s_t`, `l = sum e^(s_t - m)`, `acc = sum e^(s_t - m) v_t` with
    /// `s_t = q[head] . k_t / sqrt(head_dim)` (`m = -inf`, `l = 0`, `acc = 0` for no rows);
    /// [`ProjInput::AttnPartials`] combines the parts (split attention, flash-decoding style).
    Attention {
        q: BufferId,
        head: u32,
        kv_head: u32,
        head_dim: u32,
        max_positions: u32,
        /// Absent from `schedule.ron` when `None` (full causal attention).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<u32>,
        k_cache: BufferId,
        v_cache: BufferId,
        io: BufferId,
        /// This task's part and the head's number of parts (`part < parts`).
        part: u32,
        parts: u32,
        out: BufferId,
        /// Where the current position's key and value rows come from when not from the
        /// caches (rows before the position still do). Absent from `schedule.ron` when
        /// `None`: the caches already hold the current row.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<NewRow>,
    },
    /// One query head's whole attention (as [`TaskOp::Attention`] with a single part) followed
    /// by its share of the attention output projection: `o = softmax(q k^T / sqrt(head_dim)) v`
    /// over the head's rows, then `outs[k][..cols] += weight[:, head * head_dim..][..head_dim]
    /// @ o` for both buffers of `outs`, with atomic adds (weight `[cols, weight_cols]`): the
    /// output projection split over heads, so it needs no phase of its own. Both sums are the
    /// residual stream: the one the MLP's norm reads and the one the MLP then adds to.
    AttentionOut {
        q: BufferId,
        head: u32,
        kv_head: u32,
        head_dim: u32,
        max_positions: u32,
        /// Absent from `schedule.ron` when `None` (full causal attention).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<u32>,
        k_cache: BufferId,
        v_cache: BufferId,
        io: BufferId,
        weight: BufferId,
        /// Rows of `weight` (the model's hidden size).
        cols: u32,
        /// Columns of `weight` (heads times head_dim).
        weight_cols: u32,
        outs: [BufferId; 2],
    },
    /// The output projection split over heads: head `head`'s attention output, combined
    /// from its `parts` partials as [`ProjInput::AttnPartials`] combines them, restricted to
    /// its dimensions `first..first + dims`, times the matching columns of the output
    /// projection: `out[..cols] += weight[:, head * head_dim + first..][..dims] @
    /// o[first..first + dims]`, and the same into `mirror` when set, with atomic adds (weight
    /// `[cols, weight_cols]`, held transposed by the device). Each task reads one head's
    /// partials, not every head's, which is what a row tile of the projection must combine.
    /// With `bias` (set on one task of a layer), that task also adds `bias[..cols]` to both.
    HeadOut {
        /// Absent from `schedule.ron` when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias: Option<BufferId>,
        partials: BufferId,
        head: u32,
        head_dim: u32,
        parts: u32,
        first: u32,
        dims: u32,
        weight: BufferId,
        /// Rows of `weight` (the model's hidden size).
        cols: u32,
        /// Columns of `weight` (heads times head_dim).
        weight_cols: u32,
        out: BufferId,
        /// A second residual version that receives the same adds. Absent from
        /// `schedule.ron` when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mirror: Option<BufferId>,
    },
    /// Part `part` of `parts` of one query head's attention, its query projected by the task
    /// itself: rows `head * head_dim..` of `weight @ input (+ bias)`, normed per head and
    /// rotated as a [`TaskOp::Projection`] of that head would be, then attention as
    /// [`TaskOp::Attention`] but over the cache rows before the current position only. The
    /// current row's key and value are projected in the same phase, so the combine adds that
    /// row ([`ProjInput::AttnPartials`] with `current`) and [`TaskOp::AppendKv`] appends it
    /// later: the query projection and the attention then need no sync point between them.
    /// `q_out` (set on one part per head) also receives the rotated query head at
    /// `q_out[head * head_dim..]`, for that combine.
    QueryAttention {
        input: ProjInput,
        weight: BufferId,
        bias: Option<BufferId>,
        /// Columns of `weight` (the input's length).
        cols: u32,
        /// Absent from `schedule.ron` when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head_norm: Option<HeadNorm>,
        rope: RopeSpec,
        head: u32,
        kv_head: u32,
        head_dim: u32,
        max_positions: u32,
        /// Absent from `schedule.ron` when `None` (full causal attention).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<u32>,
        k_cache: BufferId,
        v_cache: BufferId,
        io: BufferId,
        part: u32,
        parts: u32,
        out: BufferId,
        /// Absent from `schedule.ron` when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        q_out: Option<BufferId>,
    },
    /// Appends the current position's key and value rows of every key/value head to the
    /// caches (laid out `[kv_heads, max_positions, head_dim]`): `k_cache[g][position] =
    /// kv[g * head_dim..]` and `v_cache[g][position] = kv[(kv_heads + g) * head_dim..]`.
    AppendKv {
        kv: BufferId,
        kv_heads: u32,
        head_dim: u32,
        max_positions: u32,
        k_cache: BufferId,
        v_cache: BufferId,
        io: BufferId,
    },
    /// Rows of the LM head: stores those logits and folds the (value, index) of their maximum
    /// into `io`'s packed next token with an atomic max (declared as an add: maxima commute
    /// like sums); with `advance` (one task of the step), also writes position + 1.
    HeadArgmax {
        input: ProjInput,
        weight: BufferId,
        first_row: u32,
        rows: u32,
        cols: u32,
        logits: BufferId,
        io: BufferId,
        advance: bool,
    },
    /// `out[..len] = rms_norm(input[..len]) * weight`: RMSNorm as a task of its own, for
    /// schedules that do not fuse it into every projection (`ScheduleConfig::fuse_norm`).
    RmsNorm { input: BufferId, len: u32, weight: BufferId, eps: f32, out: BufferId },
}

/// A region of `len` elements from element `first`.
pub fn elems(buffer: BufferId, first: u32, len: u32) -> Region {
    Region::new(buffer, first as u64 * ELEM, len as u64 * ELEM)
}

/// The fields the attention ops share: which query head attends over which key/value head's
/// cache rows, at the position `io` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnGeometry {
    /// Where the query head is read; `None` when the task projects it itself
    /// ([`TaskOp::QueryAttention`]).
    pub q: Option<BufferId>,
    pub head: u32,
    pub kv_head: u32,
    pub head_dim: u32,
    pub max_positions: u32,
    pub window: Option<u32>,
    pub k_cache: BufferId,
    pub v_cache: BufferId,
    pub io: BufferId,
    /// Whether the rows end before the current position (the current row is combined later).
    pub past_only: bool,
}

/// The byte regions an op touches ([`TaskOp::footprint`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Regions it may read.
    pub reads: Vec<Region>,
    /// Regions it may write.
    pub writes: Vec<Region>,
    /// Regions it may add to atomically (and touches in no other way).
    pub adds: Vec<Region>,
}

/// Bytes of `rows` rows of `cols` elements. Saturates rather than overflowing on absurd
/// hand-edited values, so such a region is simply out of bounds for the verifier.
fn row_bytes(rows: u32, cols: u32) -> u64 {
    (rows as u64).saturating_mul(cols as u64).saturating_mul(ELEM)
}

/// Buffer sizes for footprints that do not depend on them (a plain fn, so the recursive
/// call in [`TaskOp::footprint`] instantiates one copy).
fn no_sizes(_: BufferId) -> u64 {
    0
}

/// The position word of `io`, which attention and rope read.
fn io_region(io: BufferId) -> Region {
    Region::new(io, io::POSITION, ELEM)
}

impl AttnGeometry {
    /// The regions an attention reads: its query head, its key/value head's whole cache range
    /// (a window or a part only narrows the rows read) and `io`.
    fn footprint(&self, reads: &mut Vec<Region>) {
        let hd = self.head_dim;
        if let Some(q) = self.q {
            reads.push(Region::new(q, row_bytes(self.head, hd), hd as u64 * ELEM));
        }
        let per_head = row_bytes(self.max_positions, hd);
        let at = (self.kv_head as u64).saturating_mul(per_head);
        reads.push(Region::new(self.k_cache, at, per_head));
        reads.push(Region::new(self.v_cache, at, per_head));
        reads.push(io_region(self.io));
    }
}

impl TaskOp {
    /// The geometry of an [`TaskOp::Attention`], [`TaskOp::AttentionOut`] or
    /// [`TaskOp::QueryAttention`] task; `None` for other ops.
    pub fn attn_geometry(&self) -> Option<AttnGeometry> {
        match *self {
            TaskOp::Attention {
                q,
                head,
                kv_head,
                head_dim,
                max_positions,
                window,
                k_cache,
                v_cache,
                io,
                ..
            }
            | TaskOp::AttentionOut {
                q,
                head,
                kv_head,
                head_dim,
                max_positions,
                window,
                k_cache,
                v_cache,
                io,
                ..
            } => Some(AttnGeometry {
                q: Some(q),
                head,
                kv_head,
                head_dim,
                max_positions,
                window,
                k_cache,
                v_cache,
                io,
                past_only: false,
            }),
            TaskOp::QueryAttention {
                head,
                kv_head,
                head_dim,
                max_positions,
                window,
                k_cache,
                v_cache,
                io,
                ..
            } => Some(AttnGeometry {
                q: None,
                head,
                kv_head,
                head_dim,
                max_positions,
                window,
                k_cache,
                v_cache,
                io,
                past_only: true,
            }),
            _ => None,
        }
    }

    /// The query projection of a [`TaskOp::QueryAttention`] as the [`TaskOp::Projection`] of
    /// its head it equals (whose footprint, encoding and arithmetic it shares). Its output
    /// stores the head into `q_out`; without `q_out` the task stores nothing, and the output
    /// names `out` only as a placeholder. `None` for other ops.
    pub fn query_projection(&self) -> Option<TaskOp> {
        let TaskOp::QueryAttention {
            input,
            weight,
            bias,
            cols,
            head_norm,
            rope,
            head,
            head_dim,
            io,
            out,
            q_out,
            ..
        } = *self
        else {
            return None;
        };
        let offset = head.saturating_mul(head_dim);
        Some(TaskOp::Projection {
            input,
            weight,
            bias,
            first_row: offset,
            rows: head_dim,
            cols,
            head_norm,
            head_part: None,
            rope: Some(rope),
            io,
            output: ProjOutput::Store { buffer: q_out.unwrap_or(out), offset },
        })
    }

    /// Checks a [`TaskOp::Projection`]'s [`HeadPart`] against its other fields, so that no
    /// executor computes a malformed split: `part < parts`, an even number of rows (at least
    /// 2), a head dimension `rows * parts` that fits 32 bits and equals the rope's and the
    /// cache row's, and no per-head norm (it needs the whole head). `Ok` for other ops and for
    /// projections without a head part.
    pub fn check_head_part(&self) -> Result<(), HeadPartError> {
        let TaskOp::Projection { rows, head_norm, head_part: Some(p), rope, output, .. } = *self
        else {
            return Ok(());
        };
        let err = |field, message: String| Err(HeadPartError { field, message });
        if p.parts == 0 {
            return err("head_part.parts", "is 0; a head has at least one part".into());
        }
        if p.part >= p.parts {
            return err("head_part.part", format!("is {}, not below parts ({})", p.part, p.parts));
        }
        if rows < 2 || rows % 2 != 0 {
            return err(
                "rows",
                format!(
                    "is {rows}; a head part holds pairs of head rows (j, j + head_dim / 2), so \
                     its rows must be even and at least 2"
                ),
            );
        }
        let hd = p.head_dim(rows);
        if hd > u32::MAX as u64 {
            return err(
                "head_part.parts",
                format!("makes a head of rows * parts = {hd} rows, which does not fit 32 bits"),
            );
        }
        if head_norm.is_some() {
            return err(
                "head_norm",
                "normalises whole heads; a projection with a `head_part` cannot have one".into(),
            );
        }
        if let Some(r) = rope {
            if u64::from(r.head_dim) != hd {
                return err(
                    "rope.head_dim",
                    format!(
                        "is {}, but {rows} rows in {} parts make a head of {hd}; they must be \
                         equal",
                        r.head_dim, p.parts
                    ),
                );
            }
        }
        if let ProjOutput::CacheRow { head_dim, .. } = output {
            if u64::from(head_dim) != hd {
                return err(
                    "output.head_dim",
                    format!(
                        "is {head_dim}, but {rows} rows in {} parts make a head of {hd}; they \
                         must be equal",
                        p.parts
                    ),
                );
            }
        }
        Ok(())
    }

    /// A short name of the op's kind.
    pub fn kind_name(&self) -> &'static str {
        match self {
            TaskOp::Copy { .. } => "copy",
            TaskOp::Zero { .. } => "zero",
            TaskOp::Embed { .. } => "embed",
            TaskOp::Projection { .. } => "projection",
            TaskOp::GatedUp { .. } => "gated_up",
            TaskOp::GatedMlp { .. } => "gated_mlp",
            TaskOp::Attention { .. } => "attention",
            TaskOp::AttentionOut { .. } => "attention_out",
            TaskOp::QueryAttention { .. } => "query_attention",
            TaskOp::HeadOut { .. } => "head_out",
            TaskOp::AppendKv { .. } => "append_kv",
            TaskOp::HeadArgmax { .. } => "head_argmax",
            TaskOp::RmsNorm { .. } => "rms_norm",
        }
    }

    /// The byte regions the op may read, write and add to, from its fields and the size of
    /// each buffer (`buffer_bytes`). A task's declared regions must cover these; data-dependent
    /// rows (the embedding row, the cache row at the current position) are covered by their
    /// whole range, and a column block of a matrix by the rows it spans.
    pub fn footprint(&self, buffer_bytes: impl Fn(BufferId) -> u64) -> Footprint {
        let (mut r, mut w, mut adds) = (Vec::new(), Vec::new(), Vec::new());
        match *self {
            TaskOp::Copy { src, dst } => {
                r.push(src);
                w.push(dst);
            }
            TaskOp::Zero { dst } => w.push(dst),
            TaskOp::Embed { table, hidden, io, out } => {
                r.push(Region::new(io, io::NEXT, 8));
                // The row depends on the token: the whole table may be read.
                r.push(Region::new(table, 0, buffer_bytes(table)));
                w.push(Region::new(io, io::TOKEN, ELEM));
                w.push(Region::new(io, io::NEXT, 8));
                w.push(elems(out, 0, hidden));
            }
            TaskOp::Projection {
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
            } => {
                input.footprint(&mut r);
                // The task's runs of rows, relative to `first_row` (two for a head part).
                let runs: Vec<(u64, u64)> = match head_part {
                    None => vec![(0, rows as u64)],
                    Some(p) => p.ranges(rows).to_vec(),
                };
                let rows_at = |buffer: BufferId, base: u32, (at, n): (u64, u64)| {
                    let first = (base as u64).saturating_add(at);
                    Region::new(buffer, first.saturating_mul(ELEM), n.saturating_mul(ELEM))
                };
                for &(at, n) in &runs {
                    let first = (first_row as u64).saturating_add(at);
                    let row = (cols as u64).saturating_mul(ELEM);
                    r.push(Region::new(weight, first.saturating_mul(row), n.saturating_mul(row)));
                }
                if let Some(b) = bias {
                    r.extend(runs.iter().map(|&run| rows_at(b, first_row, run)));
                }
                if let Some(n) = head_norm {
                    r.push(elems(n.weight, 0, n.head_dim));
                }
                if rope.is_some() || matches!(output, ProjOutput::CacheRow { .. }) {
                    r.push(io_region(io));
                }
                match output {
                    ProjOutput::Store { buffer, offset } => {
                        w.extend(runs.iter().map(|&run| rows_at(buffer, offset, run)))
                    }
                    ProjOutput::Accumulate { buffer, offset } => {
                        r.extend(runs.iter().map(|&run| rows_at(buffer, offset, run)));
                        w.extend(runs.iter().map(|&run| rows_at(buffer, offset, run)));
                    }
                    ProjOutput::AccumulateCopy { buffer, offset, copy } => {
                        r.extend(runs.iter().map(|&run| rows_at(buffer, offset, run)));
                        w.extend(runs.iter().map(|&run| rows_at(buffer, offset, run)));
                        w.extend(runs.iter().map(|&run| rows_at(copy, offset, run)));
                    }
                    ProjOutput::CacheRow { cache, kv_head, head_dim, max_positions } => {
                        let per_head = row_bytes(max_positions, head_dim);
                        w.push(Region::new(
                            cache,
                            (kv_head as u64).saturating_mul(per_head),
                            per_head,
                        ));
                    }
                }
            }
            TaskOp::GatedUp { input, gate, up, first_row, rows, cols, out } => {
                input.footprint(&mut r);
                let off = row_bytes(first_row, cols);
                let len = row_bytes(rows, cols);
                r.push(Region::new(gate, off, len));
                r.push(Region::new(up, off, len));
                w.push(elems(out, first_row, rows));
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
                input.footprint(&mut r);
                // (Executors refuse a carry from attention partials.)
                if let (Some(Carry { first, len }), Some(b)) = (carry, input.elements()) {
                    r.push(elems(b, first, len));
                    adds.push(elems(out, first, len));
                }
                let off = row_bytes(first_row, cols);
                let len = row_bytes(rows, cols);
                r.push(Region::new(gate, off, len));
                r.push(Region::new(up, off, len));
                // Columns first_row.. of every row of down: from row 0's first to the last
                // row's last.
                let span = row_bytes(cols.saturating_sub(1), inter)
                    .saturating_add((rows as u64).saturating_mul(ELEM));
                r.push(Region::new(down, (first_row as u64).saturating_mul(ELEM), span));
                adds.push(elems(out, 0, cols));
            }
            TaskOp::Attention { head, kv_head, head_dim, part, parts, out, current, .. } => {
                if let Some(g) = self.attn_geometry() {
                    g.footprint(&mut r);
                }
                if let Some(NewRow { kv, kv_heads }) = current {
                    r.push(elems(kv, kv_head.saturating_mul(head_dim), head_dim));
                    let v = kv_heads.saturating_add(kv_head).saturating_mul(head_dim);
                    r.push(elems(kv, v, head_dim));
                }
                let at = attn_partial_index(head, part, parts, head_dim).saturating_mul(ELEM);
                w.push(Region::new(out, at, attn_partial_len(head_dim) as u64 * ELEM));
            }
            TaskOp::QueryAttention { head, head_dim, part, parts, out, q_out, .. } => {
                if let Some(p) = self.query_projection() {
                    // A projection's regions do not depend on buffer sizes.
                    let f = p.footprint(no_sizes as fn(BufferId) -> u64);
                    r.extend(f.reads);
                    if q_out.is_some() {
                        w.extend(f.writes);
                    }
                }
                if let Some(g) = self.attn_geometry() {
                    g.footprint(&mut r);
                }
                let at = attn_partial_index(head, part, parts, head_dim).saturating_mul(ELEM);
                w.push(Region::new(out, at, attn_partial_len(head_dim) as u64 * ELEM));
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
                let per_head = (parts as u64).saturating_mul(attn_partial_len(head_dim) as u64);
                let at = (head as u64).saturating_mul(per_head).saturating_mul(ELEM);
                r.push(Region::new(partials, at, per_head.saturating_mul(ELEM)));
                // Columns head * head_dim + first.. of every row of the weight: from row 0's
                // first to the last row's last.
                let c0 = (head as u64).saturating_mul(head_dim as u64).saturating_add(first as u64);
                let span = row_bytes(cols.saturating_sub(1), weight_cols)
                    .saturating_add(dims as u64 * ELEM);
                r.push(Region::new(weight, c0.saturating_mul(ELEM), span));
                if let Some(b) = bias {
                    r.push(elems(b, 0, cols));
                }
                for out in std::iter::once(out).chain(mirror) {
                    adds.push(elems(out, 0, cols));
                }
            }
            TaskOp::AppendKv { kv, kv_heads, head_dim, max_positions, k_cache, v_cache, io } => {
                r.push(Region::new(kv, 0, row_bytes(kv_heads.saturating_mul(2), head_dim)));
                r.push(io_region(io));
                // The row depends on the position: each cache's whole range may be written.
                let all = row_bytes(kv_heads, head_dim).saturating_mul(max_positions as u64);
                w.push(Region::new(k_cache, 0, all));
                w.push(Region::new(v_cache, 0, all));
            }
            TaskOp::AttentionOut { head, head_dim, weight, cols, weight_cols, outs, .. } => {
                if let Some(g) = self.attn_geometry() {
                    g.footprint(&mut r);
                }
                // Columns head * head_dim.. of every row of the weight: from row 0's first to
                // the last row's last.
                let first = row_bytes(head, head_dim);
                let span = row_bytes(cols.saturating_sub(1), weight_cols)
                    .saturating_add(head_dim as u64 * ELEM);
                r.push(Region::new(weight, first, span));
                for out in outs {
                    adds.push(elems(out, 0, cols));
                }
            }
            TaskOp::HeadArgmax { input, weight, first_row, rows, cols, logits, io, advance } => {
                input.footprint(&mut r);
                r.push(Region::new(weight, row_bytes(first_row, cols), row_bytes(rows, cols)));
                w.push(elems(logits, first_row, rows));
                adds.push(Region::new(io, io::NEXT, 8));
                if advance {
                    r.push(io_region(io));
                    w.push(io_region(io));
                }
            }
            TaskOp::RmsNorm { input, len, weight, eps: _, out } => {
                r.push(elems(input, 0, len));
                r.push(elems(weight, 0, len));
                w.push(elems(out, 0, len));
            }
        }
        Footprint { reads: r, writes: w, adds }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A q head's part: 16-dim heads of a 32-column input, head 2 (rows 32..48), with bias.
    fn part_op(part: u32, parts: u32, output: ProjOutput) -> TaskOp {
        TaskOp::Projection {
            input: ProjInput::Vector { buffer: BufferId(0), len: 32 },
            weight: BufferId(1),
            bias: Some(BufferId(2)),
            first_row: 32,
            rows: 16 / parts,
            cols: 32,
            head_norm: None,
            head_part: Some(HeadPart { part, parts }),
            rope: Some(RopeSpec { head_dim: 16, theta: 1e4, llama3: None }),
            io: BufferId(3),
            output,
        }
    }

    #[test]
    fn a_head_part_keeps_rope_pairs_together() {
        // 16 rows in 4 parts: part 1 is head rows 2, 3 and their partners 10, 11.
        let p = HeadPart { part: 1, parts: 4 };
        assert_eq!(p.ranges(4), [(2, 2), (10, 2)]);
        let rows: Vec<u64> = (0..4).map(|i| p.head_row(i, 4)).collect();
        assert_eq!(rows, [2, 3, 10, 11]);
        // Every head row belongs to exactly one part, and local pairs (i, i + 2) are head
        // pairs (j, j + 8).
        let mut seen = [0; 16];
        for part in 0..4 {
            let p = HeadPart { part, parts: 4 };
            for i in 0..4 {
                seen[p.head_row(i, 4) as usize] += 1;
            }
            for i in 0..2 {
                assert_eq!(p.head_row(i + 2, 4), p.head_row(i, 4) + 8);
            }
        }
        assert_eq!(seen, [1; 16]);
    }

    #[test]
    fn a_head_part_footprint_is_its_two_runs_of_rows() {
        let f = part_op(1, 4, ProjOutput::Store { buffer: BufferId(4), offset: 32 })
            .footprint(no_sizes);
        let row = 32 * ELEM;
        // Weight rows 34, 35 and 42, 43; bias and output elements likewise.
        assert!(f.reads.contains(&Region::new(BufferId(1), 34 * row, 2 * row)));
        assert!(f.reads.contains(&Region::new(BufferId(1), 42 * row, 2 * row)));
        assert!(f.reads.contains(&elems(BufferId(2), 34, 2)));
        assert!(f.reads.contains(&elems(BufferId(2), 42, 2)));
        assert!(!f.reads.iter().any(|r| r.buffer == BufferId(1) && r.len > 2 * row));
        assert_eq!(f.writes, [elems(BufferId(4), 34, 2), elems(BufferId(4), 42, 2)]);

        let f = part_op(0, 2, ProjOutput::Accumulate { buffer: BufferId(4), offset: 0 })
            .footprint(no_sizes);
        assert_eq!(f.writes, [elems(BufferId(4), 0, 4), elems(BufferId(4), 8, 4)]);
        assert!(f.reads.contains(&elems(BufferId(4), 8, 4)));

        // A cache row's region stays the head's whole range (the position is data).
        let cache =
            ProjOutput::CacheRow { cache: BufferId(5), kv_head: 1, head_dim: 16, max_positions: 8 };
        let f = part_op(1, 2, cache).footprint(no_sizes);
        assert_eq!(f.writes, [Region::new(BufferId(5), 16 * 8 * ELEM, 16 * 8 * ELEM)]);

        // Without a head part, one run of rows, as before.
        let mut whole = part_op(0, 1, ProjOutput::Store { buffer: BufferId(4), offset: 32 });
        if let TaskOp::Projection { head_part, .. } = &mut whole {
            *head_part = None;
        }
        let f = whole.footprint(no_sizes);
        assert!(f.reads.contains(&Region::new(BufferId(1), 32 * row, 16 * row)));
        assert_eq!(f.writes, [elems(BufferId(4), 32, 16)]);
    }

    #[test]
    fn malformed_head_parts_are_refused_naming_the_field() {
        let store = ProjOutput::Store { buffer: BufferId(4), offset: 32 };
        assert_eq!(part_op(1, 2, store).check_head_part(), Ok(()));
        let field = |op: TaskOp| op.check_head_part().map_err(|e| e.field);
        assert_eq!(field(part_op(2, 2, store)), Err("head_part.part"));
        let mut op = part_op(0, 2, store);
        if let TaskOp::Projection { head_part: Some(p), rows, .. } = &mut op {
            p.parts = 0;
            *rows = 16;
        }
        assert_eq!(field(op), Err("head_part.parts"));
        // 16 rows in 3 parts is not a whole number of pairs each.
        let mut op = part_op(0, 2, store);
        if let TaskOp::Projection { rows, head_part: Some(p), .. } = &mut op {
            *rows = 5;
            p.parts = 3;
        }
        assert_eq!(field(op), Err("rows"));
        // rows * parts must be the rope's head_dim.
        assert_eq!(field(part_op(0, 4, store).with_rows(2)), Err("rope.head_dim"));
        let mut op = part_op(0, 2, store);
        if let TaskOp::Projection { head_part: Some(p), .. } = &mut op {
            p.parts = u32::MAX;
            p.part = 1;
        }
        assert_eq!(field(op), Err("head_part.parts"));
        let mut op = part_op(0, 2, store);
        if let TaskOp::Projection { head_norm, .. } = &mut op {
            *head_norm = Some(HeadNorm { weight: BufferId(6), head_dim: 16, eps: 1e-6 });
        }
        assert_eq!(field(op), Err("head_norm"));
        let cache =
            ProjOutput::CacheRow { cache: BufferId(5), kv_head: 0, head_dim: 32, max_positions: 8 };
        assert_eq!(field(part_op(0, 2, cache)), Err("output.head_dim"));
        // Other ops and whole projections have nothing to check.
        let zero = TaskOp::Zero { dst: Region::new(BufferId(0), 0, 4) };
        assert_eq!(zero.check_head_part(), Ok(()));
    }

    impl TaskOp {
        fn with_rows(mut self, n: u32) -> TaskOp {
            if let TaskOp::Projection { rows, .. } = &mut self {
                *rows = n;
            }
            self
        }
    }
}
