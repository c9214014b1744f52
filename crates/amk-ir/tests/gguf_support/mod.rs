//! A small GGUF writer for tests, and a tiny llama model built with it (2 layers, hidden 64,
//! 4 heads, 2 kv heads, a byte-level BPE vocabulary of 265 tokens).
//!
//! Expected values are computed here independently of amk's reader: every quantization
//! parameter is a small dyadic rational, so `d * q + m` is exact and can be computed in f64;
//! q/k rows are generated in Hugging Face order and then put in GGUF order with llama.cpp's
//! *forward* permutation (`reshape(n_head, 2, dim, cols).swapaxes(1, 2)`), so the importer's
//! inverse permutation is checked against an independent implementation.

#![allow(dead_code)]

use std::collections::BTreeMap;

/// A metadata value to write.
#[derive(Clone, Debug)]
pub enum Val {
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArr(Vec<String>),
    I32Arr(Vec<i32>),
    /// A value of any type code with raw bytes, for malformed headers.
    Raw(u32, Vec<u8>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl Val {
    fn type_code(&self) -> u32 {
        match self {
            Val::U32(_) => 4,
            Val::I32(_) => 5,
            Val::F32(_) => 6,
            Val::Bool(_) => 7,
            Val::Str(_) => 8,
            Val::StrArr(_) | Val::I32Arr(_) => 9,
            Val::U64(_) => 10,
            Val::Raw(t, _) => *t,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Val::U32(v) => out.extend(v.to_le_bytes()),
            Val::I32(v) => out.extend(v.to_le_bytes()),
            Val::U64(v) => out.extend(v.to_le_bytes()),
            Val::F32(v) => out.extend(v.to_le_bytes()),
            Val::Bool(v) => out.push(u8::from(*v)),
            Val::Str(s) => put_str(out, s),
            Val::StrArr(v) => {
                out.extend(8u32.to_le_bytes());
                out.extend((v.len() as u64).to_le_bytes());
                for s in v {
                    put_str(out, s);
                }
            }
            Val::I32Arr(v) => {
                out.extend(5u32.to_le_bytes());
                out.extend((v.len() as u64).to_le_bytes());
                for x in v {
                    out.extend(x.to_le_bytes());
                }
            }
            Val::Raw(_, bytes) => out.extend(bytes),
        }
    }
}

/// ggml type codes.
pub const F32: u32 = 0;
pub const F16: u32 = 1;
pub const Q4_0: u32 = 2;
pub const Q4_1: u32 = 3;
pub const Q8_0: u32 = 8;
pub const BF16: u32 = 30;

/// A tensor to write: ggml dims (fastest first), type code and raw data.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
}

/// Builds GGUF files byte by byte.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    pub version: u32,
    pub alignment: usize,
    pub kvs: Vec<(String, Val)>,
    pub tensors: Vec<RawTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter { version: 3, alignment: 32, kvs: Vec::new(), tensors: Vec::new() }
    }

    /// Sets (or replaces) a metadata key.
    pub fn set(&mut self, key: &str, v: Val) -> &mut Self {
        self.kvs.retain(|(k, _)| k != key);
        self.kvs.push((key.to_string(), v));
        self
    }

    /// Removes a metadata key.
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.kvs.retain(|(k, _)| k != key);
        self
    }

    pub fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.push(RawTensor { name: name.into(), dims: dims.to_vec(), ggml_type, data });
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut out, k);
            out.extend(v.type_code().to_le_bytes());
            v.write(&mut out);
        }
        let align = |n: usize| n.div_ceil(self.alignment) * self.alignment;
        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ggml_type.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset = align(offset + t.data.len());
        }
        out.resize(align(out.len()), 0);
        for t in &self.tensors {
            out.extend(&t.data);
            out.resize(align(out.len()), 0);
        }
        out
    }
}

/// Deterministic pseudo-random numbers (xorshift), so tests need no seed plumbing.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A small signed dyadic rational k / 2^shift with |k| < 64.
    pub fn dyadic(&mut self, shift: i32) -> f64 {
        (self.below(127) as f64 - 63.0) / f64::powi(2.0, shift)
    }
}

/// f16 bits of an f64 that f16 represents exactly (small dyadic rationals), computed by hand.
pub fn f16_bits(x: f64) -> u16 {
    if x == 0.0 {
        return 0;
    }
    let sign = if x < 0.0 { 0x8000 } else { 0 };
    let mut m = x.abs();
    let mut e = 0i32;
    while m >= 2.0 {
        m /= 2.0;
        e += 1;
    }
    while m < 1.0 {
        m *= 2.0;
        e -= 1;
    }
    assert!((-14..=15).contains(&e), "{x} is outside f16's normal range");
    let frac = (m - 1.0) * 1024.0;
    assert_eq!(frac.fract(), 0.0, "{x} is not exact in f16");
    sign | (((e + 15) as u16) << 10) | frac as u16
}

/// One row of `cols` values of `ggml_type`: (raw bytes, exact values).
pub fn gen_row(rng: &mut Rng, ggml_type: u32, cols: usize) -> (Vec<u8>, Vec<f64>) {
    let mut bytes = Vec::new();
    let mut vals = Vec::new();
    match ggml_type {
        F32 => {
            for _ in 0..cols {
                let v = rng.dyadic(7) + rng.dyadic(15);
                bytes.extend((v as f32).to_le_bytes());
                vals.push(v);
            }
        }
        F16 => {
            for _ in 0..cols {
                let v = rng.dyadic(8);
                bytes.extend(f16_bits(v).to_le_bytes());
                vals.push(v);
            }
        }
        BF16 => {
            for _ in 0..cols {
                let v = rng.dyadic(5);
                bytes.extend((((v as f32).to_bits() >> 16) as u16).to_le_bytes());
                vals.push(v);
            }
        }
        Q8_0 | Q4_0 | Q4_1 => {
            assert_eq!(cols % 32, 0);
            for _ in 0..cols / 32 {
                let d = rng.dyadic(9);
                bytes.extend(f16_bits(d).to_le_bytes());
                let m = rng.dyadic(6);
                if ggml_type == Q4_1 {
                    bytes.extend(f16_bits(m).to_le_bytes());
                }
                if ggml_type == Q8_0 {
                    for _ in 0..32 {
                        let q = rng.below(256) as u8 as i8;
                        bytes.push(q as u8);
                        vals.push(d * f64::from(q));
                    }
                } else {
                    let q: Vec<u8> = (0..32).map(|_| rng.below(16) as u8).collect();
                    // byte j: element j in the low nibble, element j + 16 in the high nibble.
                    for j in 0..16 {
                        bytes.push(q[j] | (q[j + 16] << 4));
                    }
                    for &qv in &q {
                        vals.push(match ggml_type {
                            Q4_0 => d * (f64::from(qv) - 8.0),
                            _ => d * f64::from(qv) + m,
                        });
                    }
                }
            }
        }
        other => panic!("no generator for type {other}"),
    }
    (bytes, vals)
}

/// GPT-2's byte-to-unicode table: the text of the byte-level token for each byte.
pub fn byte_chars() -> Vec<String> {
    let mut bs: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![String::new(); 256];
    for (b, c) in bs.iter().zip(cs) {
        out[*b as usize] = char::from_u32(c).map(String::from).unwrap_or_default();
    }
    out
}

pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
pub const MERGES: [&str; 6] = ["Ġ t", "h e", "Ġt he", "l l", "ll o", "Ġ w"];

/// Options of the tiny model.
#[derive(Clone, Debug)]
pub struct TinyModel {
    /// Without `output.weight` (the head reuses the embedding).
    pub tied: bool,
    /// With q/k/v biases.
    pub biases: bool,
    pub seed: u64,
}

impl Default for TinyModel {
    fn default() -> Self {
        TinyModel { tied: true, biases: false, seed: 0x9e37_79b9_7f4a_7c15 }
    }
}

pub const HIDDEN: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = 16;
pub const FFN: usize = 128;
pub const LAYERS: usize = 2;

/// A built tiny model: the writer (to mutate for bad-input tests) and the expected HF
/// tensors, by HF name, as (PyTorch shape, values in row-major order).
pub struct Built {
    pub writer: GgufWriter,
    pub expected: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    pub vocab: usize,
}

impl TinyModel {
    pub fn tokens() -> Vec<String> {
        let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
        tokens.extend(byte_chars());
        tokens.extend(MERGES.iter().map(|m| m.replace(' ', "")));
        tokens
    }

    pub fn build(&self) -> Built {
        let mut rng = Rng(self.seed);
        let tokens = Self::tokens();
        let vocab = tokens.len();
        let mut token_types = vec![1i32; vocab];
        token_types[..SPECIALS.len()].fill(3);

        let mut w = GgufWriter::new();
        w.set("general.architecture", Val::Str("llama".into()))
            .set("general.name", Val::Str("tiny test llama".into()))
            .set("llama.block_count", Val::U32(LAYERS as u32))
            .set("llama.context_length", Val::U32(256))
            .set("llama.embedding_length", Val::U32(HIDDEN as u32))
            .set("llama.feed_forward_length", Val::U32(FFN as u32))
            .set("llama.attention.head_count", Val::U32(HEADS as u32))
            .set("llama.attention.head_count_kv", Val::U32(KV_HEADS as u32))
            .set("llama.rope.freq_base", Val::F32(10000.0))
            .set("llama.attention.layer_norm_rms_epsilon", Val::F32(1e-5))
            .set("llama.rope.dimension_count", Val::U32(HEAD_DIM as u32))
            .set("tokenizer.ggml.model", Val::Str("gpt2".into()))
            .set("tokenizer.ggml.pre", Val::Str("smollm".into()))
            .set("tokenizer.ggml.tokens", Val::StrArr(tokens))
            .set("tokenizer.ggml.token_type", Val::I32Arr(token_types))
            .set(
                "tokenizer.ggml.merges",
                Val::StrArr(MERGES.iter().map(|s| s.to_string()).collect()),
            )
            .set("tokenizer.ggml.bos_token_id", Val::U32(1))
            .set("tokenizer.ggml.eos_token_id", Val::U32(1))
            .set("tokenizer.ggml.unknown_token_id", Val::U32(0))
            .set("tokenizer.ggml.padding_token_id", Val::U32(2))
            .set("tokenizer.ggml.add_bos_token", Val::Bool(true))
            .set(
                "tokenizer.chat_template",
                Val::Str("{% for m in messages %}{{ m['content'] }}{% endfor %}".into()),
            );

        let mut expected = BTreeMap::new();
        let mut add = |w: &mut GgufWriter,
                       rng: &mut Rng,
                       gguf: &str,
                       hf: &str,
                       shape: &[usize],
                       ty: u32,
                       permute_heads: Option<usize>| {
            let (rows, cols) = if shape.len() == 2 { (shape[0], shape[1]) } else { (1, shape[0]) };
            let mut hf_rows = Vec::new();
            for _ in 0..rows {
                hf_rows.push(gen_row(rng, ty, cols));
            }
            if shape.len() == 1 && permute_heads.is_some() {
                // A permuted bias: every element is a "row" of one.
                let (bytes, vals) = hf_rows.remove(0);
                let esize = bytes.len() / vals.len();
                hf_rows = vals
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (bytes[i * esize..(i + 1) * esize].to_vec(), vec![*v]))
                    .collect();
            }
            let n = hf_rows.len();
            // llama.cpp's forward permutation: gguf[h, d, a] = hf[h, a, d].
            let gguf_order: Vec<usize> = match permute_heads {
                None => (0..n).collect(),
                Some(heads) => {
                    let dim = n / heads / 2;
                    let mut order = vec![0; n];
                    for h in 0..heads {
                        for a in 0..2 {
                            for d in 0..dim {
                                order[h * 2 * dim + d * 2 + a] = h * 2 * dim + a * dim + d;
                            }
                        }
                    }
                    order
                }
            };
            let mut data = Vec::new();
            for &r in &gguf_order {
                data.extend(&hf_rows[r].0);
            }
            let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
            w.tensor(gguf, &dims, ty, data);
            let vals: Vec<f32> =
                hf_rows.iter().flat_map(|(_, v)| v.iter().map(|&x| x as f32)).collect();
            expected.insert(hf.to_string(), (shape.to_vec(), vals));
        };

        add(
            &mut w,
            &mut rng,
            "token_embd.weight",
            "model.embed_tokens.weight",
            &[vocab, HIDDEN],
            Q8_0,
            None,
        );
        for l in 0..LAYERS {
            let g = |s: &str| format!("blk.{l}.{s}");
            let h = |s: &str| format!("model.layers.{l}.{s}");
            let qd = HEADS * HEAD_DIM;
            let kvd = KV_HEADS * HEAD_DIM;
            add(
                &mut w,
                &mut rng,
                &g("attn_norm.weight"),
                &h("input_layernorm.weight"),
                &[HIDDEN],
                F32,
                None,
            );
            add(
                &mut w,
                &mut rng,
                &g("attn_q.weight"),
                &h("self_attn.q_proj.weight"),
                &[qd, HIDDEN],
                Q4_1,
                Some(HEADS),
            );
            add(
                &mut w,
                &mut rng,
                &g("attn_k.weight"),
                &h("self_attn.k_proj.weight"),
                &[kvd, HIDDEN],
                Q4_0,
                Some(KV_HEADS),
            );
            add(
                &mut w,
                &mut rng,
                &g("attn_v.weight"),
                &h("self_attn.v_proj.weight"),
                &[kvd, HIDDEN],
                Q8_0,
                None,
            );
            if self.biases {
                add(
                    &mut w,
                    &mut rng,
                    &g("attn_q.bias"),
                    &h("self_attn.q_proj.bias"),
                    &[qd],
                    F32,
                    Some(HEADS),
                );
                add(
                    &mut w,
                    &mut rng,
                    &g("attn_k.bias"),
                    &h("self_attn.k_proj.bias"),
                    &[kvd],
                    F32,
                    Some(KV_HEADS),
                );
                add(
                    &mut w,
                    &mut rng,
                    &g("attn_v.bias"),
                    &h("self_attn.v_proj.bias"),
                    &[kvd],
                    F16,
                    None,
                );
            }
            add(
                &mut w,
                &mut rng,
                &g("attn_output.weight"),
                &h("self_attn.o_proj.weight"),
                &[HIDDEN, qd],
                F16,
                None,
            );
            add(
                &mut w,
                &mut rng,
                &g("ffn_norm.weight"),
                &h("post_attention_layernorm.weight"),
                &[HIDDEN],
                F32,
                None,
            );
            add(
                &mut w,
                &mut rng,
                &g("ffn_gate.weight"),
                &h("mlp.gate_proj.weight"),
                &[FFN, HIDDEN],
                Q4_1,
                None,
            );
            add(
                &mut w,
                &mut rng,
                &g("ffn_up.weight"),
                &h("mlp.up_proj.weight"),
                &[FFN, HIDDEN],
                BF16,
                None,
            );
            add(
                &mut w,
                &mut rng,
                &g("ffn_down.weight"),
                &h("mlp.down_proj.weight"),
                &[HIDDEN, FFN],
                F32,
                None,
            );
        }
        add(&mut w, &mut rng, "output_norm.weight", "model.norm.weight", &[HIDDEN], F32, None);
        if !self.tied {
            add(&mut w, &mut rng, "output.weight", "lm_head.weight", &[vocab, HIDDEN], F16, None);
        }
        Built { writer: w, expected, vocab }
    }
}
