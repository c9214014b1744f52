//! The Rust mirror of `kernels/abi.cuh`: every number the encoder writes into the device
//! tables, in one place. A unit test parses `abi.cuh` and checks each mirrored `#define`
//! against the constant here (and that abi.cuh defines no number this file lacks), so the
//! encoder and the device code cannot drift apart.

/// Words per instruction (`op << 28 | id`, then the wait threshold).
pub const INSTR_WORDS: usize = 2;
/// Words per task descriptor.
pub const TASK_WORDS: usize = 45;
/// "No buffer" (e.g. a projection without bias, a vector input without norm weight).
pub const NONE: u32 = 0xFFFF_FFFF;

/// Opcode of `Run(task)`.
pub const OP_RUN: u32 = 0;
/// Opcode of `Signal(counter)`.
pub const OP_SIGNAL: u32 = 1;
/// Opcode of `Wait(counter, at_least)`.
pub const OP_WAIT: u32 = 2;
/// Bit position of the opcode in instruction word 0.
pub const OP_SHIFT: u32 = 28;
/// The id bits of instruction word 0 (ids must be below `1 << OP_SHIFT`).
pub const ID_MASK: u32 = 0x0FFF_FFFF;

/// Task kind (descriptor word 0) of [`amk_schedule::TaskOp::Copy`].
pub const TASK_COPY: u32 = 1;
/// Task kind of [`amk_schedule::TaskOp::Embed`].
pub const TASK_EMBED: u32 = 2;
/// Task kind of [`amk_schedule::TaskOp::Projection`].
pub const TASK_PROJECTION: u32 = 3;
/// Task kind of [`amk_schedule::TaskOp::GatedUp`].
pub const TASK_GATED_UP: u32 = 4;
/// Task kind of [`amk_schedule::TaskOp::Attention`].
pub const TASK_ATTENTION: u32 = 5;
/// Task kind of [`amk_schedule::TaskOp::HeadArgmax`].
pub const TASK_HEAD_ARGMAX: u32 = 6;
/// Task kind of [`amk_schedule::TaskOp::RmsNorm`].
pub const TASK_RMSNORM: u32 = 8;
/// Task kind of [`amk_schedule::TaskOp::GatedMlp`].
pub const TASK_GATED_MLP: u32 = 9;
/// Task kind of [`amk_schedule::TaskOp::AttentionOut`].
pub const TASK_ATTENTION_OUT: u32 = 10;
/// Task kind of [`amk_schedule::TaskOp::QueryAttention`].
pub const TASK_QUERY_ATTENTION: u32 = 11;
/// Task kind of [`amk_schedule::TaskOp::AppendKv`].
pub const TASK_APPEND_KV: u32 = 12;
/// Task kind of [`amk_schedule::TaskOp::HeadOut`].
pub const TASK_HEAD_OUT: u32 = 13;
/// Task kind of [`amk_schedule::TaskOp::Zero`] (words as `COPY`'s destination).
pub const TASK_ZERO: u32 = 14;

/// Projection input kind: the vector as it is.
pub const IN_VECTOR: u32 = 0;
/// Projection input kind: RMS-normed vector.
pub const IN_RMSNORM: u32 = 1;
/// Projection input kind: attention partials, combined per head.
pub const IN_ATTN_PARTIALS: u32 = 2;

/// Projection output kind: store.
pub const OUT_STORE: u32 = 0;
/// Projection output kind: accumulate (residual add).
pub const OUT_ACCUMULATE: u32 = 1;
/// Projection output kind: append one cache row.
pub const OUT_CACHE_ROW: u32 = 2;
/// Projection output kind: accumulate, and store the sum in a second buffer too.
pub const OUT_ACCUMULATE_COPY: u32 = 3;
/// Projection output kind: store into a tagged buffer (value and launch tag per element).
pub const OUT_STORE_TAGGED: u32 = 4;

/// Attention flag bit (word [`word::attention::TAGGED`]): the query buffer is tagged.
pub const TAGGED_Q: u32 = 1;
/// Attention flag bit: the current row's key/value buffer is tagged.
pub const TAGGED_CURRENT: u32 = 2;

// The id bits and the opcode bits tile the word.
const _: () = assert!(ID_MASK == (1 << OP_SHIFT) - 1);
const _: () = assert!(OP_WAIT < (1 << (32 - OP_SHIFT)));

/// Every `#define` of abi.cuh this file mirrors, by its C name.
pub const MIRRORED: &[(&str, u64)] = &[
    ("AMK_INSTR_WORDS", INSTR_WORDS as u64),
    ("AMK_TASK_WORDS", TASK_WORDS as u64),
    ("AMK_NONE", NONE as u64),
    ("AMK_OP_RUN", OP_RUN as u64),
    ("AMK_OP_SIGNAL", OP_SIGNAL as u64),
    ("AMK_OP_WAIT", OP_WAIT as u64),
    ("AMK_OP_SHIFT", OP_SHIFT as u64),
    ("AMK_ID_MASK", ID_MASK as u64),
    ("AMK_TASK_COPY", TASK_COPY as u64),
    ("AMK_TASK_EMBED", TASK_EMBED as u64),
    ("AMK_TASK_PROJECTION", TASK_PROJECTION as u64),
    ("AMK_TASK_GATED_UP", TASK_GATED_UP as u64),
    ("AMK_TASK_ATTENTION", TASK_ATTENTION as u64),
    ("AMK_TASK_HEAD_ARGMAX", TASK_HEAD_ARGMAX as u64),
    ("AMK_TASK_RMSNORM", TASK_RMSNORM as u64),
    ("AMK_TASK_GATED_MLP", TASK_GATED_MLP as u64),
    ("AMK_TASK_ATTENTION_OUT", TASK_ATTENTION_OUT as u64),
    ("AMK_TASK_QUERY_ATTENTION", TASK_QUERY_ATTENTION as u64),
    ("AMK_TASK_APPEND_KV", TASK_APPEND_KV as u64),
    ("AMK_TASK_HEAD_OUT", TASK_HEAD_OUT as u64),
    ("AMK_TASK_ZERO", TASK_ZERO as u64),
    ("AMK_IN_VECTOR", IN_VECTOR as u64),
    ("AMK_IN_RMSNORM", IN_RMSNORM as u64),
    ("AMK_IN_ATTN_PARTIALS", IN_ATTN_PARTIALS as u64),
    ("AMK_OUT_STORE", OUT_STORE as u64),
    ("AMK_OUT_ACCUMULATE", OUT_ACCUMULATE as u64),
    ("AMK_OUT_CACHE_ROW", OUT_CACHE_ROW as u64),
    ("AMK_OUT_ACCUMULATE_COPY", OUT_ACCUMULATE_COPY as u64),
    ("AMK_OUT_STORE_TAGGED", OUT_STORE_TAGGED as u64),
    ("AMK_TAGGED_Q", TAGGED_Q as u64),
    ("AMK_TAGGED_CURRENT", TAGGED_CURRENT as u64),
];

/// Word indices of each task kind's descriptor (abi.cuh's "Word indices" table). Word 0 is
/// always the kind; unused words are 0.
pub mod word {
    /// Word 0: the task kind.
    pub const KIND: usize = 0;

    /// A projection input's five words start here (kind, buffer, len, norm weight, eps bits).
    pub mod input {
        /// Input kind ([`super::super::IN_VECTOR`] / [`super::super::IN_RMSNORM`]).
        pub const KIND: usize = 1;
        /// Input buffer.
        pub const BUFFER: usize = 2;
        /// Input length (elements).
        pub const LEN: usize = 3;
        /// Norm weight buffer or `AMK_NONE`; for attention partials, the parts per head.
        pub const NORM_WEIGHT: usize = 4;
        /// RMSNorm eps as f32 bits (0 for a plain vector); for attention partials, head_dim.
        pub const EPS: usize = 5;
        /// The current row of an attention-partials input: its query buffer, key/value buffer
        /// and key/value heads (all three 0 when it has none, and for every other input).
        pub const CURRENT_Q: usize = 30;
        /// The current row's key/value buffer (keys, then values).
        pub const CURRENT_KV: usize = 31;
        /// The current row's key/value heads.
        pub const CURRENT_KV_HEADS: usize = 32;
    }

    /// `COPY` words.
    pub mod copy {
        /// Source buffer.
        pub const SRC: usize = 1;
        /// Source byte offset.
        pub const SRC_OFFSET: usize = 2;
        /// Destination buffer.
        pub const DST: usize = 3;
        /// Destination byte offset.
        pub const DST_OFFSET: usize = 4;
        /// Bytes.
        pub const BYTES: usize = 5;
    }

    /// `EMBED` words.
    pub mod embed {
        /// Embedding table (weight).
        pub const TABLE: usize = 1;
        /// Hidden size (elements per row).
        pub const HIDDEN: usize = 2;
        /// io buffer.
        pub const IO: usize = 3;
        /// Output buffer.
        pub const OUT: usize = 4;
        /// Int8 weights: byte offset of the table's per-row f32 scales in its buffer, else 0.
        pub const TABLE_SCALES: usize = 5;
    }

    /// `PROJECTION` words (input at 1..=5).
    pub mod projection {
        /// Weight buffer.
        pub const WEIGHT: usize = 6;
        /// Bias buffer or `AMK_NONE`.
        pub const BIAS: usize = 7;
        /// First row.
        pub const FIRST_ROW: usize = 8;
        /// Rows.
        pub const ROWS: usize = 9;
        /// Columns (= input length).
        pub const COLS: usize = 10;
        /// 1 if rotary embedding is applied, else 0.
        pub const ROPE: usize = 11;
        /// Rope head_dim (0 without rope).
        pub const ROPE_HEAD_DIM: usize = 12;
        /// Low word of the f64 bits of theta.
        pub const THETA_LO: usize = 13;
        /// High word of the f64 bits of theta.
        pub const THETA_HI: usize = 14;
        /// io buffer.
        pub const IO: usize = 15;
        /// Output kind.
        pub const OUT_KIND: usize = 16;
        /// Output buffer (or cache).
        pub const OUT_BUFFER: usize = 17;
        /// Output offset in elements, or kv_head for a cache row.
        pub const OUT_OFFSET: usize = 18;
        /// Cache head_dim (cache row only).
        pub const OUT_HEAD_DIM: usize = 19;
        /// Cache max_positions (cache row only).
        pub const OUT_MAX_POSITIONS: usize = 20;
        /// Per-head RMSNorm weight buffer (Qwen3's q/k norm), or `AMK_NONE`.
        pub const HEAD_NORM: usize = 21;
        /// Its epsilon, as f32 bits.
        pub const HEAD_NORM_EPS: usize = 22;
        /// 1 if llama3 rope scaling applies, else 0.
        pub const LLAMA3: usize = 23;
        /// llama3 `factor` (f32 bits).
        pub const LLAMA3_FACTOR: usize = 24;
        /// llama3 `low_freq_factor` (f32 bits).
        pub const LLAMA3_LOW: usize = 25;
        /// llama3 `high_freq_factor` (f32 bits).
        pub const LLAMA3_HIGH: usize = 26;
        /// llama3 `original_max_position_embeddings` (f32 bits).
        pub const LLAMA3_ORIGINAL: usize = 27;
        /// Int8 weights: byte offset of the weight's per-row f32 scales in its buffer, else 0.
        pub const WEIGHT_SCALES: usize = 28;
        /// The second output buffer of an accumulate-and-copy output, else `AMK_NONE`.
        pub const OUT_COPY: usize = 29;
        /// A head part's index ([`amk_schedule::ops::HeadPart`]; `PROJECTION` only: a query
        /// attention's attention words start here).
        pub const HEAD_PART: usize = 33;
        /// A head part's number of parts of the head, 0 for a projection without a head part.
        pub const HEAD_PARTS: usize = 34;
    }

    /// `GATED_UP` words (input at 1..=5).
    pub mod gated_up {
        /// Gate weight.
        pub const GATE: usize = 6;
        /// Up weight.
        pub const UP: usize = 7;
        /// First row.
        pub const FIRST_ROW: usize = 8;
        /// Rows.
        pub const ROWS: usize = 9;
        /// Columns.
        pub const COLS: usize = 10;
        /// Output buffer.
        pub const OUT: usize = 11;
        /// Int8 weights: byte offset of the gate's per-row f32 scales, else 0.
        pub const GATE_SCALES: usize = 12;
        /// Int8 weights: byte offset of the up weight's per-row f32 scales, else 0.
        pub const UP_SCALES: usize = 13;
    }

    /// `GATED_MLP` words: those of `GATED_UP` (its output word is the buffer the down
    /// projection adds into), then the down projection's.
    pub mod gated_mlp {
        pub use super::gated_up::*;
        /// Down weight, held transposed (`[inter, cols]`), so a task's columns are its rows.
        pub const DOWN: usize = 14;
        /// Int8 weights: byte offset of the down weight's per-output f32 scales, else 0.
        pub const DOWN_SCALES: usize = 15;
        /// The intermediate size (down's columns in the checkpoint, its rows as held).
        pub const INTER: usize = 16;
        /// The first input element the task carries into its output (`carry`).
        pub const CARRY_FIRST: usize = 17;
        /// How many it carries (0: no carry).
        pub const CARRY_LEN: usize = 18;
    }

    /// `ATTENTION` words.
    pub mod attention {
        /// Query buffer.
        pub const Q: usize = 1;
        /// Query head.
        pub const HEAD: usize = 2;
        /// Key/value head.
        pub const KV_HEAD: usize = 3;
        /// Head dimension.
        pub const HEAD_DIM: usize = 4;
        /// Positions each cache holds.
        pub const MAX_POSITIONS: usize = 5;
        /// Key cache.
        pub const K_CACHE: usize = 6;
        /// Value cache.
        pub const V_CACHE: usize = 7;
        /// io buffer.
        pub const IO: usize = 8;
        /// Output buffer.
        pub const OUT: usize = 9;
        /// Sliding window in positions, 0 for none.
        pub const WINDOW: usize = 10;
        /// This task's part of the head's positions.
        pub const PART: usize = 11;
        /// Parts per head.
        pub const PARTS: usize = 12;
        /// The current row's key/value buffer, or `NONE` when the caches hold it
        /// (`ATTENTION` only).
        pub const CURRENT_KV: usize = 13;
        /// Its key/value heads (`ATTENTION` only).
        pub const CURRENT_KV_HEADS: usize = 14;
        /// Which buffers are tagged: `TAGGED_*` bits (`ATTENTION` only).
        pub const TAGGED: usize = 15;
    }

    /// `ATTENTION_OUT` words: those of `ATTENTION` (one part of one, no partials buffer:
    /// its output word is `AMK_NONE`), then the output projection's.
    pub mod attention_out {
        pub use super::attention::*;
        /// Output-projection weight, held transposed (`[weight_cols, cols]`).
        pub const WEIGHT: usize = 13;
        /// Int8 weights: byte offset of its per-output f32 scales, else 0.
        pub const WEIGHT_SCALES: usize = 14;
        /// Outputs (the model's hidden size).
        pub const COLS: usize = 15;
        /// The two buffers the head's share is added to.
        pub const OUT0: usize = 16;
        /// See [`OUT0`].
        pub const OUT1: usize = 17;
        /// The weight's checkpoint columns (heads times head_dim).
        pub const WEIGHT_COLS: usize = 18;
    }

    /// `QUERY_ATTENTION` words: a projection of its query head (words 1..=32, output word 17
    /// `NONE` when the task stores no copy of the query), then attention words from 33.
    pub mod query_attention {
        pub use super::projection::*;
        /// Attention word k (as [`super::attention`]) is at `ATTENTION_BASE + k`.
        pub const ATTENTION_BASE: usize = 32;
    }

    /// A key/value append.
    pub mod append_kv {
        /// The current row's keys, then values.
        pub const KV: usize = 1;
        /// Key/value heads.
        pub const KV_HEADS: usize = 2;
        /// Elements per head.
        pub const HEAD_DIM: usize = 3;
        /// Positions per cache head.
        pub const MAX_POSITIONS: usize = 4;
        /// Key cache.
        pub const K_CACHE: usize = 5;
        /// Value cache.
        pub const V_CACHE: usize = 6;
        /// The io buffer (the position).
        pub const IO: usize = 7;
        /// 1 if the key/value buffer is tagged, else 0.
        pub const TAGGED: usize = 8;
    }

    /// `HEAD_OUT` words.
    pub mod head_out {
        /// Attention partials.
        pub const PARTIALS: usize = 1;
        /// The head.
        pub const HEAD: usize = 2;
        /// Elements per head.
        pub const HEAD_DIM: usize = 3;
        /// Parts per head.
        pub const PARTS: usize = 4;
        /// The first of the task's head dimensions.
        pub const FIRST: usize = 5;
        /// The task's head dimensions.
        pub const DIMS: usize = 6;
        /// The output projection, held transposed.
        pub const WEIGHT: usize = 7;
        /// Its scales (int8: one per output).
        pub const WEIGHT_SCALES: usize = 8;
        /// Outputs (the projection's rows).
        pub const COLS: usize = 9;
        /// The projection's checkpoint columns.
        pub const WEIGHT_COLS: usize = 10;
        /// The buffer the share is added to.
        pub const OUT0: usize = 11;
        /// A second buffer that receives the same adds (`mirror`), or `NONE`.
        pub const OUT1: usize = 12;
        /// The output projection's bias, added once (or `NONE`).
        pub const BIAS: usize = 13;
    }

    /// `HEAD_ARGMAX` words (input at 1..=5).
    pub mod head_argmax {
        /// LM-head weight.
        pub const WEIGHT: usize = 6;
        /// First row.
        pub const FIRST_ROW: usize = 7;
        /// Rows.
        pub const ROWS: usize = 8;
        /// Columns.
        pub const COLS: usize = 9;
        /// Logits buffer.
        pub const LOGITS: usize = 10;
        /// io buffer, whose packed next token the task folds its maximum into.
        pub const IO: usize = 11;
        /// 1 if the task also advances the position, else 0.
        pub const ADVANCE: usize = 12;
        /// Int8 weights: byte offset of the weight's per-row f32 scales in its buffer, else 0.
        pub const WEIGHT_SCALES: usize = 13;
    }

    /// `RMSNORM` words (input at 1..=5, always the rms-normed kind).
    pub mod rms_norm {
        /// Output buffer.
        pub const OUT: usize = 6;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const ABI_CUH: &str = include_str!("../../../kernels/abi.cuh");

    /// `#define NAME VALUE` lines whose value is a plain decimal or hex number (optionally
    /// with a `u` suffix and a trailing `//` comment). Other defines (macros) are ignored.
    fn numeric_defines(text: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("#define") else { continue };
            let rest = rest.split("//").next().unwrap_or("").trim();
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let v = value.trim_end_matches(['u', 'U', 'l', 'L']);
            let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse::<u64>().ok(),
            };
            if let Some(p) = parsed {
                out.insert(name.to_string(), p);
            }
        }
        out
    }

    #[test]
    fn every_mirrored_define_matches_abi_cuh() {
        let defs = numeric_defines(ABI_CUH);
        for &(name, value) in MIRRORED {
            match defs.get(name) {
                Some(&v) => assert_eq!(v, value, "{name}: abi.cuh says {v}, abi.rs says {value}"),
                None => panic!("{name} is mirrored in abi.rs but not #defined in kernels/abi.cuh"),
            }
        }
    }

    #[test]
    fn abi_cuh_defines_no_number_abi_rs_lacks() {
        let mirrored: Vec<&str> = MIRRORED.iter().map(|&(n, _)| n).collect();
        for (name, value) in numeric_defines(ABI_CUH) {
            assert!(
                mirrored.contains(&name.as_str()),
                "kernels/abi.cuh defines {name} = {value}, which crates/amk-codegen-cuda/src/abi.rs \
                 does not mirror: add it there (and encode it) so host and device agree"
            );
        }
    }

    #[test]
    fn parser_reads_the_forms_abi_cuh_uses() {
        let d =
            numeric_defines("#define A 3u\n#define B 0xFFu // c\n#define C(x) x\n#define D 28\n");
        assert_eq!(d.get("A"), Some(&3));
        assert_eq!(d.get("B"), Some(&255));
        assert_eq!(d.get("D"), Some(&28));
        assert!(!d.contains_key("C(x)"));
    }
}
