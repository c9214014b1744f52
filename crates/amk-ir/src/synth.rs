//! Synthetic checkpoints: a Hugging Face directory with seeded random weights for any
//! llama-family shape (Llama, Mistral, Qwen2, Qwen3).
//!
//! Tests use tiny ones to exercise every stage without the real model; benchmarks use
//! full-size ones (e.g. Llama-3.2-1B-shaped) since timing does not depend on weight values.
//! The tokenizer is byte-level (one token per byte plus the ChatML specials), so any text
//! round-trips.

use crate::config::{Architecture, Llama3RopeScaling, ModelConfig};
use crate::graph::DecodeGraph;
use rayon::prelude::*;
use safetensors::tensor::TensorView;
use serde_json::json;
use std::path::Path;

/// The shape of a synthetic model, in `config.json` terms.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// `attention_bias` in `config.json` (what it implies depends on the architecture).
    pub attention_bias: bool,
    pub rope_theta: f64,
    pub seed: u64,
    /// The family written into `architectures` and `model_type`.
    pub architecture: Architecture,
    /// `rope_type: "llama3"` with these parameters, or plain RoPE.
    pub rope_llama3: Option<Llama3RopeScaling>,
    /// `sliding_window` (only Mistral honours it).
    pub sliding_window: Option<usize>,
}

impl SynthSpec {
    /// A tiny model: 2 layers, hidden 64, GQA 4:2, vocab 300 (covers the byte tokenizer).
    pub fn tiny() -> SynthSpec {
        SynthSpec {
            hidden_size: 64,
            intermediate_size: 160,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            vocab_size: 300,
            max_position_embeddings: 128,
            tie_word_embeddings: true,
            attention_bias: false,
            rope_theta: 10_000.0,
            seed: 1,
            architecture: Architecture::Llama,
            rope_llama3: None,
            sliding_window: None,
        }
    }

    /// The `config.json` of this shape.
    pub fn config_json(&self) -> serde_json::Value {
        let mut rope = json!({ "rope_theta": self.rope_theta, "rope_type": "default" });
        if let Some(s) = &self.rope_llama3 {
            rope = json!({
                "rope_theta": self.rope_theta,
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
        let mut config = json!({
            "architectures": [self.architecture.hf_name()],
            "model_type": self.architecture.model_type(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": 1e-5,
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": false,
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32",
            "sliding_window": self.sliding_window,
        });
        if matches!(self.architecture, Architecture::Qwen2 | Architecture::Qwen3) {
            config["use_sliding_window"] = json!(false);
        }
        config
    }
}

/// An error writing a synthetic model.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("writing {path}: {message}")]
    Write { path: String, message: String },
    #[error("the synthetic shape is not a valid model: {0}")]
    Config(#[from] crate::config::ConfigError),
}

/// SplitMix64: a tiny, well-distributed seeded generator (synthetic weights here, seeded
/// interleavings in the schedule executor), so neither needs an extra crate.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64 random bits as a value uniform in [-1, 1).
fn unit_of(bits: u64) -> f32 {
    (bits >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix(self.0)
    }

    /// The `n`-th output (from 0) of a generator seeded with `seed`, without the `n` before
    /// it: SplitMix's state only counts, so any stretch of the stream can be made in parallel.
    pub fn nth(seed: u64, n: u64) -> u64 {
        mix(seed.wrapping_add(n.wrapping_add(1).wrapping_mul(GAMMA)))
    }
}

/// Writes `config.json`, `model.safetensors` (F32) and a byte-level `tokenizer.json` into
/// `dir`, and returns the checked config. Projection weights are scaled by `1/sqrt(fan_in)`
/// and norm weights sit near 1, so activations stay in a realistic range.
pub fn write_checkpoint(spec: &SynthSpec, dir: &Path) -> Result<ModelConfig, SynthError> {
    let werr = |path: &Path, e: &dyn std::fmt::Display| SynthError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| werr(dir, &e))?;
    let config_path = dir.join("config.json");
    let config_text = serde_json::to_string_pretty(&spec.config_json()).unwrap_or_default();
    std::fs::write(&config_path, config_text).map_err(|e| werr(&config_path, &e))?;
    let config = ModelConfig::from_file(&config_path)?;
    let graph = DecodeGraph::build(&config);

    // One stream of random values over all weights in graph order, each value made from its
    // index on rayon's pool (a Llama-3.2-1B-sized model has 1.2 billion of them).
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    let mut first = 0u64;
    for w in &graph.weights {
        let is_norm = w.shape.len() == 1 && w.name.contains("norm");
        let scale = if w.shape.len() == 2 { 1.0 / (w.shape[1] as f32).sqrt() } else { 0.1 };
        let mut bytes = vec![0u8; w.numel() * 4];
        bytes.par_chunks_mut(4).enumerate().for_each(|(i, out)| {
            let u = unit_of(SplitMix::nth(spec.seed, first + i as u64));
            let v = if is_norm { 1.0 + 0.1 * u } else { scale * u };
            out.copy_from_slice(&v.to_le_bytes());
        });
        first += w.numel() as u64;
        tensors.push((w.name.clone(), bytes, w.shape.clone()));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, bytes, shape)| {
            TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| werr(&dir.join("model.safetensors"), &e))
        })
        .collect::<Result<_, _>>()?;
    let st_path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, &None, &st_path).map_err(|e| werr(&st_path, &e))?;

    let tok_path = dir.join("tokenizer.json");
    let tok_text =
        serde_json::to_string(&byte_level_tokenizer(spec.vocab_size)).unwrap_or_default();
    std::fs::write(&tok_path, tok_text).map_err(|e| werr(&tok_path, &e))?;
    Ok(config)
}

/// GPT-2's reversible map from bytes to printable characters, as byte-level BPE uses.
pub fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> =
        (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in printable.into_iter().zip(chars) {
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

/// A byte-level BPE `tokenizer.json` with no merges: ids 0..3 are `<|endoftext|>`,
/// `<|im_start|>`, `<|im_end|>`, then one token per byte. `vocab_size` must be at least 259;
/// ids past the bytes are left unused.
pub fn byte_level_tokenizer(vocab_size: usize) -> serde_json::Value {
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut vocab = serde_json::Map::new();
    for (i, s) in specials.iter().enumerate() {
        vocab.insert((*s).to_owned(), json!(i));
    }
    for (b, c) in bytes_to_unicode().into_iter().enumerate() {
        vocab.insert(c.to_string(), json!(specials.len() + b));
    }
    debug_assert!(vocab_size >= vocab.len());
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
}

#[cfg(test)]
mod tests {
    use super::SplitMix;

    /// Any output made from its index equals the stream's, so a checkpoint written in parallel
    /// holds the same weights as one written value after value.
    #[test]
    fn nth_is_the_stream() {
        for seed in [0u64, 1, 7, u64::MAX] {
            let mut rng = SplitMix(seed);
            for n in 0..1000 {
                assert_eq!(rng.next_u64(), SplitMix::nth(seed, n), "seed {seed}, output {n}");
            }
        }
    }
}
