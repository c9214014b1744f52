//! The knobs of a schedule, in one place, so a person or a search loop can change them and
//! re-lower (`amk schedule MODEL --config knobs.ron`).

use serde::{Deserialize, Serialize};

use crate::schedule::WeightFormat;

/// How tasks are placed on workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Assignment {
    /// Task k of the whole step goes to worker k mod W.
    RoundRobin,
    /// Each task, in order, goes to a worker with the fewest tasks in its phase (so a phase's
    /// tasks run in parallel), among those the one with the fewest weight bytes so far (lowest
    /// index on ties), balancing the weight stream across workers.
    BalancedBytes,
}

/// The order in which each phase's tasks are placed on workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOrder {
    /// As lowered (heads, then row tiles in order).
    AsLowered,
    /// Largest weight tile first (longest-processing-time placement): balances a phase that
    /// has more tasks than workers.
    LargestFirst,
}

/// Per-op weight precision: the format a bf16 or int8 build holds each class of weight
/// matrices in, where it is not the build's own (`None`). Vectors (norm weights, biases) keep
/// the build's format, and f32 builds (the exact mode) ignore the plan. The lowering records
/// each matrix's format on its buffer ([`crate::schedule::Buffer::format`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrecisionPlan {
    /// The query, key, value and output projections.
    pub attention: Option<WeightFormat>,
    /// The gate, up and down projections.
    pub mlp: Option<WeightFormat>,
    /// The LM head and the token embedding table (one matrix when they are tied).
    pub lm_head: Option<WeightFormat>,
}

impl PrecisionPlan {
    /// The format the plan gives the weight called `name` (Hugging Face's tensor names) of
    /// `rank` dimensions: `None` for vectors, other tensors and classes it leaves as built.
    pub fn format_of(&self, name: &str, rank: usize) -> Option<WeightFormat> {
        if rank != 2 {
            return None;
        }
        let projection = name.ends_with("_proj.weight");
        if projection && name.contains(".self_attn.") {
            self.attention
        } else if projection && name.contains(".mlp.") {
            self.mlp
        } else if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            self.lm_head
        } else {
            None
        }
    }

    /// Whether the plan changes nothing.
    pub fn is_as_built(&self) -> bool {
        *self == PrecisionPlan::default()
    }
}

/// Tiling, placement and launch knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Workers (thread blocks) of the persistent kernel.
    pub workers: u32,
    /// Blocks per SM the launch assumes (workers should not exceed SMs x this).
    pub blocks_per_sm: u32,
    /// SMs of the target GPU.
    pub sm_count: u32,
    /// Rows per task of the attention output projection (with `o_by_head`, head dimensions
    /// per task).
    pub o_rows: u32,
    /// Rows per task of the gate/up projections (each task computes both for its rows).
    pub mlp_rows: u32,
    /// Rows per task of the down projection.
    pub down_rows: u32,
    /// Rows per task of the LM head.
    pub head_rows: u32,
    /// How tasks are spread over workers.
    pub assignment: Assignment,
    /// The order each phase's tasks are placed in.
    pub task_order: TaskOrder,
    /// Fuse RMSNorm into every projection that reads the residual stream (each task
    /// recomputes it: no sync point), or run it as a task of its own with a phase after it.
    pub fuse_norm: bool,
    /// Fold the down projection into the gate/up tasks ([`crate::TaskOp::GatedMlp`]): each
    /// adds its rows' share of the down projection into the residual with atomic adds, so a
    /// layer has four phases, not five. The attention output projection then also stores a
    /// snapshot of the residual for the MLP's norm (with fused norms). The f32 sums' order
    /// over tasks is then not fixed.
    pub fuse_down: bool,
    /// Fold the attention output projection into the attention tasks
    /// ([`crate::TaskOp::AttentionOut`]): each head's task adds its share of the projection
    /// into the residual with atomic adds, so a layer has one phase fewer. Needs
    /// `attn_splits: 1` (a head's parts must be combined before the projection), so each
    /// head's attention runs on one worker: good at short contexts, slow at long ones.
    pub fuse_o: bool,
    /// Fold the query projection into the attention parts ([`crate::TaskOp::QueryAttention`]):
    /// each part projects its head's query itself and attends over the rows before the
    /// current position, while the key and value heads are projected in the same phase; the
    /// output projection's combine adds the current row. A layer then has one phase fewer,
    /// at the price of each head's query rows being computed once per part.
    pub fuse_q: bool,
    /// Split the attention output projection over heads ([`crate::TaskOp::HeadOut`]): each
    /// task combines one head's attention partials for `o_rows` of its dimensions and adds
    /// their share of the projection into the residual with atomic adds, instead of every
    /// row tile combining every head's partials. The residual then has one buffer per
    /// version, as with `fuse_o`. Ignored with `fuse_o` (no separate projection) or `fuse_q`
    /// (whose row tiles add the current row to every head), which take its place.
    pub o_by_head: bool,
    /// Per-head waits instead of whole-phase ones where the data allow: the qkv phase signals
    /// one counter per key/value head (its query heads, key and value), each attention part
    /// waits only for its key/value head's counter and signals its own head's, and (with
    /// `o_by_head`) each head-split output-projection task waits only for its head's parts.
    /// A head's work then starts when its inputs are ready, not when the slowest task of the
    /// phase before finishes. Ignored with `fuse_q`.
    pub head_waits: bool,
    /// Tagged hand-offs (needs `o_by_head`; ignored with `fuse_o` or `fuse_q`): the query,
    /// key and value heads go to per-layer [`crate::BufferKind::Tagged`] buffers, so an
    /// attention part polls its query and current row directly instead of waiting for a
    /// counter (whose release fence and acquire cost a round trip each) and then loading them.
    /// Attention parts then read only the cache rows before the position; an append task in
    /// the MLP phase copies the current rows into the caches.
    pub tagged: bool,
    /// Tasks each query, key and value head's projection is split into (1: one task per
    /// head). Part `p` of `P` computes the head's rows `[p * hl, (p + 1) * hl)` and
    /// `[head_dim / 2 + p * hl, ...)` with `hl = head_dim / (2P)` ([`crate::ops::HeadPart`]),
    /// so rope's pairs stay in one task; each part signals what the whole head's task did.
    /// The qkv phase's tasks are then P times shorter and P times as many; the current key
    /// and value rows then reach the caches through an append task after the layer's
    /// attention (as with `tagged`). Must divide `head_dim / 2`. Ignored (heads stay whole)
    /// with `fuse_q` (its query projection is inside the attention parts), `fuse_o` (its
    /// attention reads the current row from the caches) and per-head q/k norms (Qwen3's,
    /// which need the whole head).
    pub qkv_parts: u32,
    /// Positions the key/value caches hold; 0 means the model's max_position_embeddings.
    pub max_positions: u32,
    /// Parts each attention head is split into over cache positions (flash-decoding): more
    /// parts spread a long context over more workers; the output projection combines them.
    pub attn_splits: u32,
    /// How many upcoming tasks' weight tiles a worker may prefetch before waiting on their
    /// inputs (a code generation hint; it does not change the schedule's meaning).
    pub prefetch_depth: u32,
    /// Per-op weight precision (`precision: (lm_head: Some(Int8))` in a knob file): which
    /// classes of matrices a bf16 or int8 build holds in the other format. The kernel then
    /// compiles each task function for the formats its tasks use.
    pub precision: PrecisionPlan,
}

impl Default for ScheduleConfig {
    /// The best knobs `amk search` found for SmolLM2-135M on an H100 (bf16, context 256;
    /// `fixtures/search/smollm2-135m-h100/`): one worker per SM (132); the output projection
    /// split over heads, 16 head dimensions per task (36 tasks for 9 heads of 64), and 16-row
    /// fused MLP tiles (gate, up and their share of the down projection), so each phase
    /// spreads over many workers; each attention head split over 8 position ranges, with
    /// per-head waits between the qkv, attention and output-projection phases; tasks
    /// dealt round-robin over workers; 384-row LM-head tiles (128 of them for a 49152-token
    /// vocabulary, one per worker). `down_rows` only applies without `fuse_down`.
    fn default() -> Self {
        ScheduleConfig {
            workers: 132,
            blocks_per_sm: 1,
            sm_count: 132,
            o_rows: 16,
            mlp_rows: 16,
            down_rows: 16,
            head_rows: 384,
            assignment: Assignment::RoundRobin,
            task_order: TaskOrder::AsLowered,
            fuse_norm: true,
            fuse_down: true,
            fuse_o: false,
            fuse_q: false,
            o_by_head: true,
            head_waits: true,
            tagged: false,
            qkv_parts: 1,
            max_positions: 0,
            attn_splits: 8,
            prefetch_depth: 1,
            precision: PrecisionPlan::default(),
        }
    }
}

/// A knob file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("schedule config is not valid RON at line {line}, column {column}: {message}")]
    Ron { line: usize, column: usize, message: String },
    #[error("schedule config field `{field}` = {value} is invalid: {message}")]
    Invalid { field: &'static str, value: u64, message: String },
}

impl ScheduleConfig {
    /// Parses a knob file; absent fields take their defaults.
    pub fn from_ron(text: &str) -> Result<ScheduleConfig, ConfigError> {
        let c: ScheduleConfig = ron::from_str(text).map_err(|e| ConfigError::Ron {
            line: e.position.line,
            column: e.position.col,
            message: e.code.to_string(),
        })?;
        c.check()?;
        Ok(c)
    }

    /// Pretty RON of the knobs.
    pub fn to_ron(&self) -> String {
        ron::ser::to_string_pretty(self, ron::ser::PrettyConfig::new().struct_names(true))
            .unwrap_or_default()
    }

    /// Checks that every knob is usable.
    pub fn check(&self) -> Result<(), ConfigError> {
        let positive = [
            ("workers", self.workers),
            ("blocks_per_sm", self.blocks_per_sm),
            ("sm_count", self.sm_count),
            ("o_rows", self.o_rows),
            ("mlp_rows", self.mlp_rows),
            ("down_rows", self.down_rows),
            ("head_rows", self.head_rows),
            ("attn_splits", self.attn_splits),
            ("qkv_parts", self.qkv_parts),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    field,
                    value: 0,
                    message: "must be at least 1".into(),
                });
            }
        }
        if self.fuse_o && self.attn_splits != 1 {
            return Err(ConfigError::Invalid {
                field: "attn_splits",
                value: self.attn_splits as u64,
                message: "`fuse_o` needs one attention part per head (attn_splits: 1): the parts \
                          must be combined before the output projection"
                    .into(),
            });
        }
        if self.fuse_q && self.fuse_o {
            return Err(ConfigError::Invalid {
                field: "fuse_q",
                value: 1,
                message: "`fuse_q` and `fuse_o` cannot both be set: `fuse_q` combines the \
                          attention parts in the output projection, which `fuse_o` removes"
                    .into(),
            });
        }
        if self.workers > 1 << 16 {
            return Err(ConfigError::Invalid {
                field: "workers",
                value: self.workers as u64,
                message: "more than 65536 workers".into(),
            });
        }
        Ok(())
    }
}
