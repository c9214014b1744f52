//! The f32 CPU reference against an independent, deliberately naive f64 llama decode step.
//!
//! The naive model below reads the synthetic checkpoint straight from `model.safetensors` with
//! the `safetensors` crate and `config.json` with `serde_json` (nothing of amk's loader, graph
//! or kernels), and spells out Hugging Face's `LlamaForCausalLM` arithmetic with plain loops in
//! f64: RMSNorm, rotate-half RoPE, grouped-query attention, SiLU-gated MLP, residuals, final
//! norm and a tied or untied head, with q/k/v/o biases when `attention_bias` is set. It also
//! spells out what the other families change, reading `model_type`: Mistral's sliding window
//! (mask `kv_idx > q_idx - sliding_window`), Qwen2's q/k/v-only biases, Qwen3's per-head q/k
//! RMSNorm before RoPE, and Llama 3's `rope_type: "llama3"` frequencies (Meta's formula, in
//! f64). Every step of a 20-token sequence must agree with `CpuReference`'s logits to 1e-4 of
//! the largest logit, over shapes that cover head_dim 16/32/64/128, GQA ratios 1 to 4, hidden
//! sizes that are not multiples of 128, tied and untied heads, biases, and those features.
//!
//! The second half checks `generate`'s contract: stop tokens, the token budget, the end of the
//! context, bad prompts and tokens, and determinism across `reset`.

// The naive model indexes with plain loops on purpose: it should read like the maths.
#![allow(clippy::needless_range_loop)]

use amk_ir::config::{Architecture, Llama3RopeScaling};
use amk_ir::synth::{write_checkpoint, SynthSpec};
use amk_ir::Model;
use amk_runtime::cpu::CpuReference;
use amk_runtime::{generate, Backend, GenerateOptions, RuntimeError, StopReason};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// The naive f64 model.
// ---------------------------------------------------------------------------------------------

/// What the naive model reads from `config.json`.
struct NaiveConfig {
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    eps: f64,
    theta: f64,
    tied: bool,
    /// Biases on q, k and v; on o.
    qkv_bias: bool,
    o_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3).
    qk_norm: bool,
    /// Mistral's sliding window.
    window: Option<usize>,
    /// `rope_type: "llama3"`: (factor, low_freq_factor, high_freq_factor, original context).
    llama3: Option<(f64, f64, f64, f64)>,
}

impl NaiveConfig {
    fn read(path: &Path) -> NaiveConfig {
        let text = std::fs::read_to_string(path).expect("config.json reads");
        let v: serde_json::Value = serde_json::from_str(&text).expect("config.json parses");
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("config field {k}")) as usize;
        let theta = v["rope_parameters"]["rope_theta"]
            .as_f64()
            .or_else(|| v["rope_theta"].as_f64())
            .unwrap_or(10_000.0);
        let rp = &v["rope_parameters"];
        let llama3 = (rp["rope_type"] == "llama3").then(|| {
            let f = |k: &str| rp[k].as_f64().unwrap_or_else(|| panic!("rope_parameters.{k}"));
            (
                f("factor"),
                f("low_freq_factor"),
                f("high_freq_factor"),
                f("original_max_position_embeddings"),
            )
        });
        let model_type = v["model_type"].as_str().expect("model_type");
        let attention_bias = v["attention_bias"].as_bool().unwrap_or(false);
        // What each transformers class builds: LlamaAttention and Qwen3Attention biases follow
        // attention_bias (all four), Qwen2Attention has q/k/v biases and none on o,
        // MistralAttention none at all.
        let (qkv_bias, o_bias) = match model_type {
            "llama" | "qwen3" => (attention_bias, attention_bias),
            "qwen2" => (true, false),
            "mistral" => (false, false),
            other => panic!("model_type {other}"),
        };
        let window = match model_type {
            "mistral" => v["sliding_window"].as_u64().map(|w| w as usize),
            _ => None,
        };
        NaiveConfig {
            hidden: n("hidden_size"),
            inter: n("intermediate_size"),
            layers: n("num_hidden_layers"),
            heads: n("num_attention_heads"),
            kv_heads: n("num_key_value_heads"),
            head_dim: n("head_dim"),
            vocab: n("vocab_size"),
            eps: v["rms_norm_eps"].as_f64().expect("rms_norm_eps"),
            theta,
            tied: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            qkv_bias,
            o_bias,
            qk_norm: model_type == "qwen3",
            window,
            llama3,
        }
    }
}

/// A llama decode step in f64 with plain loops, holding its own key/value cache.
struct Naive {
    c: NaiveConfig,
    w: HashMap<String, (Vec<usize>, Vec<f64>)>,
    /// `[layer][position][kv_heads * head_dim]`.
    k_cache: Vec<Vec<Vec<f64>>>,
    v_cache: Vec<Vec<Vec<f64>>>,
}

impl Naive {
    fn load(dir: &Path) -> Naive {
        let c = NaiveConfig::read(&dir.join("config.json"));
        let bytes = std::fs::read(dir.join("model.safetensors")).expect("safetensors reads");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors parses");
        let mut w = HashMap::new();
        for (name, view) in st.tensors() {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "synthetic weights are F32");
            let data: Vec<f64> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect();
            w.insert(name.to_string(), (view.shape().to_vec(), data));
        }
        let k_cache = vec![Vec::new(); c.layers];
        let v_cache = vec![Vec::new(); c.layers];
        Naive { c, w, k_cache, v_cache }
    }

    fn t(&self, name: &str) -> &[f64] {
        &self.w.get(name).unwrap_or_else(|| panic!("tensor {name} is in the checkpoint")).1
    }

    fn has(&self, name: &str) -> bool {
        self.w.contains_key(name)
    }

    fn reset(&mut self) {
        for l in 0..self.c.layers {
            self.k_cache[l].clear();
            self.v_cache[l].clear();
        }
    }

    /// `W x (+ b)` with W `[rows, x.len()]` row-major.
    fn linear(&self, weight: &str, bias: Option<&str>, x: &[f64]) -> Vec<f64> {
        let (shape, w) = &self.w[weight];
        assert_eq!(shape.len(), 2);
        assert_eq!(shape[1], x.len(), "{weight} input width");
        let rows = shape[0];
        let mut out = vec![0.0; rows];
        for r in 0..rows {
            let mut s = 0.0;
            for (col, xv) in x.iter().enumerate() {
                s += w[r * x.len() + col] * xv;
            }
            out[r] = s;
        }
        if let Some(b) = bias {
            let b = self.t(b);
            assert_eq!(b.len(), rows, "{bias:?} length");
            for r in 0..rows {
                out[r] += b[r];
            }
        }
        out
    }

    /// [`Naive::rms_norm`] of each head of `x` on its own (Qwen3's q_norm / k_norm).
    fn head_norm(&self, weight: &str, x: &[f64]) -> Vec<f64> {
        x.chunks(self.c.head_dim).flat_map(|head| self.rms_norm(weight, head)).collect()
    }

    /// `w * x / sqrt(mean(x^2) + eps)`.
    fn rms_norm(&self, weight: &str, x: &[f64]) -> Vec<f64> {
        let w = self.t(weight);
        let mut ms = 0.0;
        for v in x {
            ms += v * v;
        }
        ms /= x.len() as f64;
        let inv = 1.0 / (ms + self.c.eps).sqrt();
        x.iter().zip(w).map(|(v, wv)| wv * (v * inv)).collect()
    }

    /// Hugging Face's `apply_rotary_pos_emb` on each head: `x * cos + rotate_half(x) * sin`
    /// with `cos`/`sin` of `cat(freqs, freqs)`, `freqs[i] = pos * inv_freq[i]`,
    /// `inv_freq[i] = 1 / theta^(2i/d)`, rescaled for Llama 3 as in Meta's reference: kept
    /// where the wavelength `2 pi / inv_freq` is under `original / high_freq_factor`, divided
    /// by `factor` where it is over `original / low_freq_factor`, and in between
    /// `(1 - s) * inv_freq / factor + s * inv_freq` with `s = (original / wavelength - low) /
    /// (high - low)`.
    fn rope(&self, x: &[f64], pos: usize) -> Vec<f64> {
        let d = self.c.head_dim;
        let half = d / 2;
        let mut cos = vec![0.0; d];
        let mut sin = vec![0.0; d];
        for i in 0..half {
            let mut inv_freq = 1.0 / self.c.theta.powf((2 * i) as f64 / d as f64);
            if let Some((factor, low, high, original)) = self.c.llama3 {
                let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
                if wavelen < original / high {
                    // High frequency: unchanged.
                } else if wavelen > original / low {
                    inv_freq /= factor;
                } else {
                    let s = (original / wavelen - low) / (high - low);
                    inv_freq = (1.0 - s) * inv_freq / factor + s * inv_freq;
                }
            }
            let angle = pos as f64 * inv_freq;
            cos[i] = angle.cos();
            cos[i + half] = angle.cos();
            sin[i] = angle.sin();
            sin[i + half] = angle.sin();
        }
        let mut out = vec![0.0; x.len()];
        for h in 0..x.len() / d {
            let head = &x[h * d..(h + 1) * d];
            // rotate_half: cat(-x2, x1).
            let mut rot = vec![0.0; d];
            for i in 0..half {
                rot[i] = -head[i + half];
                rot[i + half] = head[i];
            }
            for i in 0..d {
                out[h * d + i] = head[i] * cos[i] + rot[i] * sin[i];
            }
        }
        out
    }

    /// One decode step: feeds `token` at `pos` (the next position) and returns the logits.
    fn step(&mut self, token: usize, pos: usize) -> Vec<f64> {
        let c = &self.c;
        let (hidden, hd) = (c.hidden, c.head_dim);
        assert_eq!(self.k_cache[0].len(), pos, "the naive model decodes positions in order");
        let embed = self.t("model.embed_tokens.weight");
        let mut x: Vec<f64> = embed[token * hidden..(token + 1) * hidden].to_vec();
        let group = c.heads / c.kv_heads;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in 0..c.layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            let bias = |s: &str| c.qkv_bias.then(|| p(s));
            let h = self.rms_norm(&p("input_layernorm.weight"), &x);
            let mut q = self.linear(
                &p("self_attn.q_proj.weight"),
                bias("self_attn.q_proj.bias").as_deref(),
                &h,
            );
            let mut k = self.linear(
                &p("self_attn.k_proj.weight"),
                bias("self_attn.k_proj.bias").as_deref(),
                &h,
            );
            let v = self.linear(
                &p("self_attn.v_proj.weight"),
                bias("self_attn.v_proj.bias").as_deref(),
                &h,
            );
            if c.qk_norm {
                q = self.head_norm(&p("self_attn.q_norm.weight"), &q);
                k = self.head_norm(&p("self_attn.k_norm.weight"), &k);
            }
            let q = self.rope(&q, pos);
            let k = self.rope(&k, pos);
            self.k_cache[l].push(k);
            self.v_cache[l].push(v);
            let mut attn = vec![0.0; c.heads * hd];
            for head in 0..c.heads {
                let kvh = head / group;
                let qh = &q[head * hd..(head + 1) * hd];
                // transformers' masks: causal `kv_idx <= q_idx`, and with a sliding window
                // `kv_idx > q_idx - sliding_window`; masked scores get weight 0.
                let visible = |t: usize| c.window.is_none_or(|w| t as i64 > pos as i64 - w as i64);
                let mut scores = Vec::with_capacity(pos + 1);
                for t in 0..=pos {
                    if !visible(t) {
                        scores.push(f64::NEG_INFINITY);
                        continue;
                    }
                    let kt = &self.k_cache[l][t][kvh * hd..(kvh + 1) * hd];
                    let mut s = 0.0;
                    for i in 0..hd {
                        s += qh[i] * kt[i];
                    }
                    scores.push(s * scale);
                }
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                for t in 0..=pos {
                    let vt = &self.v_cache[l][t][kvh * hd..(kvh + 1) * hd];
                    for i in 0..hd {
                        attn[head * hd + i] += scores[t] / sum * vt[i];
                    }
                }
            }
            let o = self.linear(
                &p("self_attn.o_proj.weight"),
                c.o_bias.then(|| p("self_attn.o_proj.bias")).as_deref(),
                &attn,
            );
            for i in 0..hidden {
                x[i] += o[i];
            }
            let h = self.rms_norm(&p("post_attention_layernorm.weight"), &x);
            let gate = self.linear(&p("mlp.gate_proj.weight"), None, &h);
            let up = self.linear(&p("mlp.up_proj.weight"), None, &h);
            assert_eq!(gate.len(), c.inter);
            let act: Vec<f64> =
                gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let down = self.linear(&p("mlp.down_proj.weight"), None, &act);
            for i in 0..hidden {
                x[i] += down[i];
            }
        }
        let h = self.rms_norm("model.norm.weight", &x);
        let head = if c.tied { "model.embed_tokens.weight" } else { "lm_head.weight" };
        let logits = self.linear(head, None, &h);
        assert_eq!(logits.len(), c.vocab);
        logits
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

fn spec(
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    tied: bool,
    bias: bool,
) -> SynthSpec {
    SynthSpec {
        hidden_size: hidden,
        intermediate_size: hidden * 5 / 2 + 8,
        num_layers: 2,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        vocab_size: 320,
        max_position_embeddings: 64,
        tie_word_embeddings: tied,
        attention_bias: bias,
        rope_theta: 10_000.0,
        seed: (hidden * 131 + heads * 17 + kv_heads * 5 + head_dim) as u64,
        architecture: Architecture::Llama,
        rope_llama3: None,
        sliding_window: None,
    }
}

fn open(spec: &SynthSpec) -> (tempfile::TempDir, Model, CpuReference) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_checkpoint(spec, dir.path()).expect("synthetic checkpoint writes");
    let model = Model::open(dir.path(), &mut |_| {}).expect("synthetic model opens");
    let cpu = CpuReference::from_model(&model, &mut |_, _| {}).expect("weights load");
    (dir, model, cpu)
}

/// A fixed, non-trivial token sequence inside the vocabulary.
fn sequence(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % vocab) as u32).collect()
}

/// Compares the reference with the naive model at every step of a 20-token sequence.
fn check_against_naive(spec: &SynthSpec) {
    let (dir, model, mut cpu) = open(spec);
    let mut naive = Naive::load(dir.path());
    let c = &naive.c;
    assert_eq!(
        (c.hidden, c.heads, c.kv_heads, c.head_dim, c.tied),
        (
            spec.hidden_size,
            spec.num_heads,
            spec.num_kv_heads,
            spec.head_dim,
            spec.tie_word_embeddings
        ),
        "config.json describes the spec"
    );
    assert_eq!(
        c.window,
        spec.sliding_window.filter(|_| spec.architecture == Architecture::Mistral)
    );
    assert_eq!(c.llama3.is_some(), spec.rope_llama3.is_some());
    // The shape features this case is meant to exercise are really in the checkpoint.
    for (proj, biased) in [
        ("q_proj", c.qkv_bias),
        ("k_proj", c.qkv_bias),
        ("v_proj", c.qkv_bias),
        ("o_proj", c.o_bias),
    ] {
        let name = format!("model.layers.0.self_attn.{proj}.bias");
        assert_eq!(naive.has(&name), biased, "{name} present iff the architecture biases it");
        if biased {
            assert!(naive.t(&name).iter().any(|&b| b != 0.0), "{name} is not all zeros");
        }
    }
    for norm in ["q_norm", "k_norm"] {
        let name = format!("model.layers.1.self_attn.{norm}.weight");
        assert_eq!(naive.has(&name), c.qk_norm, "{name} present iff Qwen3");
    }
    assert_eq!(naive.has("lm_head.weight"), !spec.tie_word_embeddings, "lm_head iff untied");
    assert_eq!(model.config.tie_word_embeddings, spec.tie_word_embeddings);
    assert_eq!((model.config.qkv_bias, model.config.o_bias), (c.qkv_bias, c.o_bias));
    assert_eq!(model.config.qk_norm, c.qk_norm);

    let tokens = sequence(20, spec.vocab_size);
    cpu.reset();
    naive.reset();
    let mut worst = 0.0f64;
    for (pos, &tok) in tokens.iter().enumerate() {
        let next = cpu.step(tok, pos).expect("cpu step");
        let ours = cpu.logits().expect("cpu keeps logits");
        let want = naive.step(tok as usize, pos);
        assert_eq!(ours.len(), want.len());
        let max_abs = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let max_diff =
            ours.iter().zip(&want).fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()));
        assert!(max_abs > 1e-3, "logits are not degenerate (max |logit| {max_abs})");
        let rel = max_diff / max_abs;
        worst = worst.max(rel);
        assert!(
            rel < 1e-4,
            "{spec:?}\nstep {pos}: max |cpu - naive| = {max_diff:e}, max |logit| = {max_abs}, \
             relative {rel:e}"
        );
        // The returned token is the argmax of the logits it keeps (first on ties)...
        let argmax = ours
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
            )
            .0;
        assert_eq!(next as usize, argmax, "step {pos}: returned token is the argmax");
        // ...and the naive argmax unless the top two are closer than the tolerance.
        let mut sorted: Vec<(usize, f64)> = want.iter().copied().enumerate().collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
        if sorted[0].1 - sorted[1].1 > 1e-3 * max_abs {
            assert_eq!(next as usize, sorted[0].0, "step {pos}: greedy token");
        }
    }
    eprintln!(
        "{:?} hidden {} heads {}/{} head_dim {} tied {} bias {}/{} qk-norm {} window {:?} \
         llama3 {}: worst relative error {worst:e}",
        spec.architecture,
        spec.hidden_size,
        spec.num_heads,
        spec.num_kv_heads,
        spec.head_dim,
        spec.tie_word_embeddings,
        naive.c.qkv_bias,
        naive.c.o_bias,
        naive.c.qk_norm,
        naive.c.window,
        naive.c.llama3.is_some()
    );
}

// ---------------------------------------------------------------------------------------------
// Logits against the naive model.
// ---------------------------------------------------------------------------------------------

#[test]
fn naive_matches_head_dim_16_mha_tied() {
    // GQA ratio 1 (plain multi-head attention), tied head.
    check_against_naive(&spec(64, 4, 4, 16, true, false));
}

#[test]
fn naive_matches_head_dim_16_gqa2_tied_with_bias() {
    check_against_naive(&spec(64, 4, 2, 16, true, true));
}

#[test]
fn naive_matches_head_dim_64_gqa3_hidden_96_untied() {
    // Hidden 96 is not a multiple of 128 (nor of the dot product's 16 lanes' multiples of 32),
    // and q_dim = 384 differs from hidden.
    check_against_naive(&spec(96, 6, 2, 64, false, false));
}

#[test]
fn naive_matches_head_dim_128_gqa4_hidden_200_untied_with_bias() {
    // Hidden 200 leaves a remainder in every 16-lane dot product.
    check_against_naive(&spec(200, 8, 2, 128, false, true));
}

#[test]
fn naive_matches_tiny_preset() {
    check_against_naive(&SynthSpec::tiny());
}

#[test]
fn naive_matches_odd_sizes_single_kv_head() {
    // GQA ratio 4 with one kv head, odd hidden and intermediate sizes, another theta.
    let mut s = spec(72, 4, 1, 32, false, true);
    s.intermediate_size = 131;
    s.rope_theta = 500_000.0;
    s.num_layers = 3;
    check_against_naive(&s);
}

#[test]
fn naive_matches_mistral_sliding_window() {
    // A window of 5 over a 20-token sequence: from position 5 on, the oldest rows drop out.
    let mut s = spec(64, 4, 2, 16, false, false);
    s.architecture = Architecture::Mistral;
    s.sliding_window = Some(5);
    check_against_naive(&s);
    // A window of 1: each query sees only its own key.
    s.sliding_window = Some(1);
    s.seed += 1;
    check_against_naive(&s);
}

#[test]
fn naive_matches_qwen2_qkv_bias() {
    // Qwen2 biases q, k and v (not o) even with attention_bias false.
    let mut s = spec(96, 6, 2, 32, true, false);
    s.architecture = Architecture::Qwen2;
    check_against_naive(&s);
}

#[test]
fn naive_matches_qwen3_qk_norm() {
    // Per-head q/k RMSNorm; head_dim 32 with q_dim 128 != hidden 72.
    let mut s = spec(72, 4, 2, 32, true, false);
    s.architecture = Architecture::Qwen3;
    check_against_naive(&s);
    // With attention_bias, Qwen3 biases all four projections.
    let mut s = spec(64, 4, 1, 16, false, true);
    s.architecture = Architecture::Qwen3;
    check_against_naive(&s);
}

#[test]
fn naive_matches_llama3_rope() {
    // theta 500000, head_dim 32, original context 256: the 16 frequencies fall in all three
    // bands (kept, smoothed, divided by the factor).
    let mut s = spec(64, 2, 1, 32, false, false);
    s.rope_theta = 500_000.0;
    s.rope_llama3 = Some(Llama3RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 256.0,
    });
    check_against_naive(&s);
}

// ---------------------------------------------------------------------------------------------
// Stepping: rewinds and bad positions.
// ---------------------------------------------------------------------------------------------

#[test]
fn redecoding_an_earlier_position_reproduces_its_logits() {
    let (_dir, _model, mut cpu) = open(&SynthSpec::tiny());
    let tokens = sequence(12, 300);
    let mut first = Vec::new();
    for (pos, &t) in tokens.iter().enumerate() {
        cpu.step(t, pos).expect("step");
        first.push(cpu.logits().expect("logits").to_vec());
    }
    // Rewinding to position 5 and feeding the same tokens gives the same logits bit for bit.
    for (pos, &t) in tokens.iter().enumerate().skip(5) {
        cpu.step(t, pos).expect("re-step");
        assert_eq!(cpu.logits().expect("logits"), &first[pos][..], "position {pos}");
    }
}

#[test]
fn stepping_past_the_cache_or_the_context_is_an_error() {
    let mut s = SynthSpec::tiny();
    s.max_position_embeddings = 4;
    let (_dir, _model, mut cpu) = open(&s);
    // Position 1 before position 0 has been decoded.
    let err = cpu.step(5, 1).expect_err("gap in the cache");
    assert!(matches!(err, RuntimeError::Position { position: 1, filled: 0, max: 4 }), "{err:?}");
    for pos in 0..4 {
        cpu.step(5, pos).expect("inside the context");
    }
    let err = cpu.step(5, 4).expect_err("past the context");
    assert!(matches!(err, RuntimeError::Position { position: 4, max: 4, .. }), "{err:?}");
    assert!(err.to_string().contains("max_position_embeddings"), "{err}");
}

#[test]
fn token_outside_the_vocabulary_is_an_error() {
    let (_dir, _model, mut cpu) = open(&SynthSpec::tiny());
    let err = cpu.step(300, 0).expect_err("token == vocab_size");
    assert!(
        matches!(err, RuntimeError::TokenOutOfRange { token: 300, vocab_size: 300 }),
        "{err:?}"
    );
    let err = cpu.step(u32::MAX, 0).expect_err("huge token");
    assert!(matches!(err, RuntimeError::TokenOutOfRange { .. }), "{err:?}");
    // Through generate, in the middle of a prompt.
    let options = GenerateOptions { max_new_tokens: 4, stop_tokens: vec![] };
    let err = generate(&mut cpu, &[5, 6, 300, 7], &options, &mut |_| {}).expect_err("bad prompt");
    assert!(matches!(err, RuntimeError::TokenOutOfRange { token: 300, .. }), "{err:?}");
    assert!(err.to_string().contains("vocab"), "{err}");
    // The backend is still usable afterwards.
    generate(&mut cpu, &[5, 6, 7], &options, &mut |_| {}).expect("generation after an error");
}

#[test]
fn with_weights_rejects_wrong_weights_instead_of_panicking() {
    let (_dir, model, cpu) = open(&SynthSpec::tiny());
    let graph = Arc::new(model.graph.clone());
    let good: Vec<Arc<[f32]>> = cpu.weights().to_vec();
    CpuReference::with_weights(graph.clone(), good.clone())
        .expect("the right weights are accepted");

    let mut short = good.clone();
    short[0] = Arc::from(&good[0][..good[0].len() - 1]);
    let result = std::panic::catch_unwind(|| {
        CpuReference::with_weights(graph.clone(), short).map(|mut c| c.step(5, 0).map(|_| ()))
    });
    match result {
        Ok(Err(_)) => {}
        Ok(Ok(_)) => panic!("with_weights accepted a weight one element short"),
        Err(_) => panic!("with_weights accepted a weight one element short and step panicked"),
    }

    let mut missing = good.clone();
    missing.pop();
    let result = std::panic::catch_unwind(|| {
        CpuReference::with_weights(graph.clone(), missing).map(|mut c| c.step(5, 0).map(|_| ()))
    });
    assert!(matches!(result, Ok(Err(_))), "with_weights accepted one weight too few");
}

#[test]
fn new_reports_loader_size_mismatch() {
    let (_dir, model, _cpu) = open(&SynthSpec::tiny());
    let err =
        CpuReference::new(Arc::new(model.graph.clone()), |spec| Ok(vec![0.0; spec.numel() + 1]))
            .err()
            .expect("wrong-size weights are refused");
    assert!(matches!(err, RuntimeError::WeightSize { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// generate().
// ---------------------------------------------------------------------------------------------

fn run(
    cpu: &mut CpuReference,
    prompt: &[u32],
    max_new_tokens: usize,
    stop_tokens: Vec<u32>,
) -> (Vec<u32>, StopReason, Vec<u32>) {
    let options = GenerateOptions { max_new_tokens, stop_tokens };
    let mut streamed = Vec::new();
    let out = generate(cpu, prompt, &options, &mut |t| streamed.push(t)).expect("generate");
    (out.generated, out.stop, streamed)
}

#[test]
fn generate_matches_stepping_by_hand_and_streams_every_token() {
    let (_dir, _model, mut cpu) = open(&SynthSpec::tiny());
    let prompt = sequence(6, 300);
    let (gen, stop, streamed) = run(&mut cpu, &prompt, 10, vec![]);
    assert_eq!(stop, StopReason::MaxNewTokens);
    assert_eq!(gen.len(), 10);
    assert_eq!(streamed, gen, "on_token sees every generated token, in order");

    cpu.reset();
    let mut next = 0;
    for (pos, &t) in prompt.iter().enumerate() {
        next = cpu.step(t, pos).expect("step");
    }
    let mut by_hand = vec![next];
    for pos in prompt.len()..prompt.len() + 9 {
        next = cpu.step(next, pos).expect("step");
        by_hand.push(next);
    }
    assert_eq!(gen, by_hand);
}

#[test]
fn generate_stops_at_a_stop_token_and_includes_it() {
    let (_dir, _model, mut cpu) = open(&SynthSpec::tiny());
    let prompt = sequence(5, 300);
    let (free, _, _) = run(&mut cpu, &prompt, 16, vec![]);
    // A token whose first occurrence is not the first generated one.
    let i = (1..free.len())
        .find(|&i| !free[..i].contains(&free[i]))
        .expect("the free run produces at least two distinct tokens");
    let stop = free[i];
    let (gen, reason, streamed) = run(&mut cpu, &prompt, 16, vec![999, stop]);
    assert_eq!(reason, StopReason::EndOfSequence);
    assert_eq!(gen, free[..=i].to_vec(), "stops right after the stop token, keeping it");
    assert_eq!(streamed, gen);

    // A stop token as the very first generated token.
    let (gen, reason, _) = run(&mut cpu, &prompt, 16, vec![free[0]]);
    assert_eq!((gen, reason), (vec![free[0]], StopReason::EndOfSequence));
}

#[test]
fn generate_respects_max_new_tokens() {
    let (_dir, _model, mut cpu) = open(&SynthSpec::tiny());
    let prompt = sequence(4, 300);
    let (full, _, _) = run(&mut cpu, &prompt, 12, vec![]);
    for n in [1, 2, 7, 12] {
        let (gen, reason, _) = run(&mut cpu, &prompt, n, vec![]);
        assert_eq!(reason, StopReason::MaxNewTokens, "max_new_tokens {n}");
        assert_eq!(gen, full[..n].to_vec(), "max_new_tokens {n}");
    }
    let (gen, reason, streamed) = run(&mut cpu, &prompt, 0, vec![]);
    assert!(gen.is_empty() && streamed.is_empty());
    assert_eq!(reason, StopReason::MaxNewTokens);
}

#[test]
fn generate_stops_when_the_context_is_full() {
    let mut s = SynthSpec::tiny();
    s.max_position_embeddings = 16;
    let (_dir, _model, mut cpu) = open(&s);
    assert_eq!(cpu.max_positions(), 16);

    // 10 prompt positions leave 6 more to decode; the step at the last position still yields
    // a token, so 16 - 10 + 1 tokens come out.
    let prompt = sequence(10, 300);
    let (gen, reason, _) = run(&mut cpu, &prompt, 100, vec![]);
    assert_eq!(reason, StopReason::ContextFull);
    assert_eq!(gen.len(), 7);

    // A prompt that fills the context exactly yields the one token its last step predicts.
    let prompt = sequence(16, 300);
    let (gen, reason, _) = run(&mut cpu, &prompt, 100, vec![]);
    assert_eq!((gen.len(), reason), (1, StopReason::ContextFull));

    // The budget wins when both run out at once.
    let prompt = sequence(10, 300);
    let (gen, reason, _) = run(&mut cpu, &prompt, 7, vec![]);
    assert_eq!((gen.len(), reason), (7, StopReason::MaxNewTokens));
}

#[test]
fn generate_rejects_empty_and_too_long_prompts() {
    let mut s = SynthSpec::tiny();
    s.max_position_embeddings = 16;
    let (_dir, _model, mut cpu) = open(&s);
    let options = GenerateOptions { max_new_tokens: 4, stop_tokens: vec![] };

    let err = generate(&mut cpu, &[], &options, &mut |_| {}).expect_err("empty prompt");
    assert!(matches!(err, RuntimeError::EmptyPrompt), "{err:?}");

    let long = sequence(17, 300);
    let err = generate(&mut cpu, &long, &options, &mut |_| {}).expect_err("prompt too long");
    assert!(matches!(err, RuntimeError::PromptTooLong { prompt: 17, max: 16 }), "{err:?}");
    assert!(err.to_string().contains("max_position_embeddings"), "{err}");

    // Errors are reported before anything runs, whatever the budget.
    let zero = GenerateOptions { max_new_tokens: 0, stop_tokens: vec![] };
    assert!(matches!(generate(&mut cpu, &[], &zero, &mut |_| {}), Err(RuntimeError::EmptyPrompt)));
    assert!(matches!(
        generate(&mut cpu, &long, &zero, &mut |_| {}),
        Err(RuntimeError::PromptTooLong { .. })
    ));
}

#[test]
fn generate_is_deterministic_across_reset_and_other_prompts() {
    let (_dir, _model, mut cpu) = open(&SynthSpec::tiny());
    let a = sequence(7, 300);
    let b: Vec<u32> = (0..9).map(|i| (i * 11 + 40) % 300).collect();
    let (first, _, _) = run(&mut cpu, &a, 12, vec![]);
    let logits_a = cpu.logits().expect("logits").to_vec();
    // Another, longer prompt in between leaves more cached positions behind.
    let (other, _, _) = run(&mut cpu, &b, 20, vec![]);
    assert_ne!(first, other, "different prompts lead to different decodes on this model");
    let (again, _, _) = run(&mut cpu, &a, 12, vec![]);
    assert_eq!(first, again);
    assert_eq!(cpu.logits().expect("logits"), &logits_a[..], "bit-identical logits");

    // An explicit reset followed by stepping by hand agrees too.
    cpu.reset();
    let mut next = 0;
    for (pos, &t) in a.iter().enumerate() {
        next = cpu.step(t, pos).expect("step");
    }
    assert_eq!(next, first[0]);

    // A fresh backend on the same checkpoint agrees with the reused one.
    let (_dir2, _model2, mut fresh) = open(&SynthSpec::tiny());
    let (from_fresh, _, _) = run(&mut fresh, &a, 12, vec![]);
    assert_eq!(first, from_fresh);
}
