//! `config.json`: the raw Hugging Face fields, and the checked configuration amk builds on.
//!
//! [`RawConfig`] mirrors the file (every field optional, unknown fields ignored) so that a
//! missing field is reported by name instead of as a serde error; [`ModelConfig::from_raw`]
//! turns it into a [`ModelConfig`] whose every value amk can honour, or says which field it
//! cannot.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Largest dimension amk accepts for any single size field; far above any real model, it
/// keeps products of sizes inside `usize` and stops absurd files before they allocate.
const MAX_DIM: u64 = 1 << 24;
/// Largest layer count accepted (same reason).
const MAX_LAYERS: u64 = 4096;

/// An error in `config.json`, naming the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is not valid JSON (line {line}, column {column}): {message}", path.display())]
    Json { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: required field `{field}` is missing", path.display())]
    Missing { path: PathBuf, field: &'static str },
    #[error("{}: field `{field}` is invalid: {message}", path.display())]
    Invalid { path: PathBuf, field: String, message: String },
    #[error("{}: field `{field}` = {value} is not supported; amk supports {supported}", path.display())]
    Unsupported { path: PathBuf, field: String, value: String, supported: String },
}

/// `eos_token_id` may be one id or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(i64),
    Many(Vec<i64>),
}

/// The fields of a Hugging Face `config.json` that amk reads, as they appear in the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawConfig {
    pub architectures: Option<Vec<String>>,
    pub model_type: Option<String>,
    pub hidden_size: Option<u64>,
    pub intermediate_size: Option<u64>,
    pub num_hidden_layers: Option<u64>,
    pub num_attention_heads: Option<u64>,
    pub num_key_value_heads: Option<u64>,
    pub head_dim: Option<u64>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    pub rope_parameters: Option<serde_json::Value>,
    pub tie_word_embeddings: Option<bool>,
    pub vocab_size: Option<u64>,
    pub max_position_embeddings: Option<u64>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    /// Mistral's sliding attention window (`null`: full attention).
    pub sliding_window: Option<u64>,
    /// Qwen2/Qwen3: whether `sliding_window` applies (to the layers past `max_window_layers`).
    pub use_sliding_window: Option<bool>,
    /// Qwen2/Qwen3 (transformers 5): each layer's attention kind.
    pub layer_types: Option<Vec<String>>,
    pub hidden_act: Option<String>,
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
}

impl RawConfig {
    /// Reads and parses `config.json`; JSON errors carry line and column.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
        Self::from_json(&text, path)
    }

    /// Parses the text of a `config.json`; `path` is only used in errors. Syntax errors carry
    /// line and column; a value of the wrong type or range names its field as well
    /// (serde_path_to_error tracks where the deserializer was).
    pub fn from_json(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
        let json = |e: serde_json::Error| ConfigError::Json {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let raw = serde_path_to_error::deserialize::<_, RawConfig>(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            if !inner.is_data() {
                return json(inner);
            }
            // A top-level list or scalar (serde reads a list into a struct by position). A
            // duplicate key also has the path ".", and keeps serde's message.
            if !text.trim_start().starts_with('{') {
                return ConfigError::Invalid {
                    path: path.to_owned(),
                    field: "(top level)".into(),
                    message: "config.json must be a JSON object of fields".into(),
                };
            }
            let (line, column) = (inner.line(), inner.column());
            let message = inner.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
            ConfigError::Invalid {
                path: path.to_owned(),
                field,
                message: format!("{message} (line {line}, column {column})"),
            }
        })?;
        de.end().map_err(json)?;
        Ok(raw)
    }
}

/// The model families amk lowers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    /// `LlamaForCausalLM` (model_type `llama`): Llama 2 and 3.x, SmolLM2, TinyLlama. Biases on
    /// q, k, v and o when `attention_bias`; on the MLP when `mlp_bias`.
    Llama,
    /// `MistralForCausalLM` (model_type `mistral`): the llama block without biases, with an
    /// optional sliding attention window (`sliding_window`).
    Mistral,
    /// `Qwen2ForCausalLM` (model_type `qwen2`): biases on q, k and v (never on o), whatever
    /// `attention_bias` says.
    Qwen2,
    /// `Qwen3ForCausalLM` (model_type `qwen3`): per-head RMSNorm of q and k before RoPE; biases
    /// on q, k, v and o only when `attention_bias`.
    Qwen3,
}

impl Architecture {
    /// Every supported family, in the order errors list them.
    pub const ALL: [Architecture; 4] =
        [Architecture::Llama, Architecture::Mistral, Architecture::Qwen2, Architecture::Qwen3];

    /// The Hugging Face class name.
    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// The `model_type` of `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }

    fn from_hf_name(name: &str) -> Option<Architecture> {
        Architecture::ALL.into_iter().find(|a| a.hf_name() == name)
    }

    fn from_model_type(model_type: &str) -> Option<Architecture> {
        Architecture::ALL.into_iter().find(|a| a.model_type() == model_type)
    }

    /// The supported list, as errors print it.
    pub fn supported_list() -> String {
        let names: Vec<String> = Architecture::ALL
            .iter()
            .map(|a| format!("{} (model_type {:?})", a.hf_name(), a.model_type()))
            .collect();
        names.join(", ")
    }
}

/// Rotary position embedding parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RopeConfig {
    /// The base `theta` of the inverse frequencies.
    pub theta: f64,
    /// Llama 3.x frequency scaling (`rope_type: "llama3"`), or `None` for plain RoPE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llama3: Option<Llama3RopeScaling>,
}

/// The parameters of `rope_type: "llama3"` (Llama 3.1 and later): low frequencies are divided
/// by `factor`, high ones kept, the band between interpolated smoothly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: f32,
}

impl RopeConfig {
    /// The `head_dim / 2` inverse frequencies of rotary embeddings, as Hugging Face's float32
    /// `inv_freq` buffer holds them: `i`-th = `1 / theta^(2i / head_dim)` (computed in f64 and
    /// rounded to f32, which reproduces the real checkpoints' decodes), then, for `llama3`,
    /// `_compute_llama3_parameters` step by step in f32.
    ///
    /// Every executor (CPU reference, CPU schedule executor, GPU tables) takes its table from
    /// here, so they cannot drift apart.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let base: Vec<f32> = (0..head_dim / 2)
            .map(|i| (1.0 / self.theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        match &self.llama3 {
            None => base,
            Some(s) => base.into_iter().map(|f| s.scale(f)).collect(),
        }
    }
}

impl Llama3RopeScaling {
    /// One inverse frequency through transformers' `_compute_llama3_parameters`, in PyTorch's
    /// float32 arithmetic: Python scalars (the wavelength bounds, `high - low`) are computed in
    /// f64 and rounded to f32 where they meet the tensor, and `scalar / tensor` is
    /// `tensor.reciprocal() * scalar`, as `Tensor.__rtruediv__` evaluates it.
    fn scale(&self, inv_freq: f32) -> f32 {
        let (factor, low, high, orig) = (
            self.factor,
            self.low_freq_factor,
            self.high_freq_factor,
            self.original_max_position_embeddings,
        );
        let low_freq_wavelen = (orig as f64 / low as f64) as f32;
        let high_freq_wavelen = (orig as f64 / high as f64) as f32;
        let two_pi = (2.0 * std::f64::consts::PI) as f32;
        let wavelen = inv_freq.recip() * two_pi;
        let inv_freq_llama = if wavelen > low_freq_wavelen { inv_freq / factor } else { inv_freq };
        let smooth = (wavelen.recip() * orig - low) / ((high as f64 - low as f64) as f32);
        let smoothed = (1.0 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama;
        // `~(wavelen < high) * ~(wavelen > low)`; the same for the finite values here.
        let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
        if medium {
            smoothed
        } else {
            inv_freq_llama
        }
    }
}

/// A checked model configuration: every value here is one amk can honour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope: RopeConfig,
    pub tie_word_embeddings: bool,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    /// Biases on the q, k and v projections (Llama and Qwen3: `attention_bias`; Qwen2: always).
    pub qkv_bias: bool,
    /// A bias on the o projection (Llama and Qwen3: `attention_bias`; Qwen2, Mistral: never).
    pub o_bias: bool,
    /// Biases on gate, up and down (Llama's `mlp_bias`; the other families have none).
    pub mlp_bias: bool,
    /// Sliding attention window (Mistral): the query at position `p` attends to positions
    /// `k` with `p - k < W`, i.e. `max(0, p + 1 - W)..=p`. `None`: full causal attention.
    pub sliding_window: Option<usize>,
    /// Per-head RMSNorm of q and k after their projections, before RoPE (Qwen3), with
    /// weights `self_attn.q_norm.weight` / `k_norm.weight` of `[head_dim]` and `rms_norm_eps`.
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    /// Ids that end generation (a config may list several).
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Reads `config.json` and checks it.
    pub fn from_file(path: &Path) -> Result<ModelConfig, ConfigError> {
        ModelConfig::from_raw(&RawConfig::from_file(path)?, path)
    }

    /// Checks a raw config; `path` names the file in errors.
    pub fn from_raw(raw: &RawConfig, path: &Path) -> Result<ModelConfig, ConfigError> {
        let ctx = Ctx { path };
        let architecture = ctx.architecture(raw)?;

        let hidden_size = ctx.dim("hidden_size", raw.hidden_size)?;
        let intermediate_size = ctx.dim("intermediate_size", raw.intermediate_size)?;
        let num_layers = ctx.required("num_hidden_layers", raw.num_hidden_layers)?;
        if num_layers == 0 || num_layers > MAX_LAYERS {
            return Err(ctx.invalid(
                "num_hidden_layers",
                format!("{num_layers} layers; expected 1..={MAX_LAYERS}"),
            ));
        }
        let num_heads = ctx.dim("num_attention_heads", raw.num_attention_heads)?;
        let num_kv_heads = match raw.num_key_value_heads {
            Some(n) => ctx.dim("num_key_value_heads", Some(n))?,
            None => num_heads,
        };
        if num_heads % num_kv_heads != 0 {
            return Err(ctx.invalid(
                "num_key_value_heads",
                format!(
                    "{num_kv_heads} does not divide num_attention_heads = {num_heads}; grouped-query \
                     attention needs a whole number of query heads per key/value head"
                ),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) => ctx.dim("head_dim", Some(d))?,
            None => {
                if hidden_size % num_heads != 0 {
                    return Err(ctx.invalid(
                        "head_dim",
                        format!(
                            "absent, and hidden_size {hidden_size} is not a multiple of \
                             num_attention_heads {num_heads}; give head_dim explicitly"
                        ),
                    ));
                }
                hidden_size / num_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(ctx.invalid(
                "head_dim",
                format!("{head_dim} is odd; rotary embeddings rotate pairs of dimensions"),
            ));
        }

        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0 && rms_norm_eps < 1.0) {
            return Err(
                ctx.invalid("rms_norm_eps", format!("{rms_norm_eps}; expected 0 < eps < 1"))
            );
        }

        let rope = ctx.rope(raw)?;
        let sliding_window = ctx.sliding_window(raw, architecture)?;
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias, mlp_bias) = match architecture {
            Architecture::Llama => (attention_bias, attention_bias, raw.mlp_bias.unwrap_or(false)),
            // transformers' MistralAttention and MistralMLP have no biases at all.
            Architecture::Mistral => (false, false, false),
            Architecture::Qwen2 => (true, false, false),
            Architecture::Qwen3 => (attention_bias, attention_bias, false),
        };

        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(ctx.unsupported("hidden_act", format!("{act:?}"), "\"silu\""));
            }
        }

        let vocab_size = ctx.dim("vocab_size", raw.vocab_size)?;
        let max_position_embeddings = match raw.max_position_embeddings {
            Some(n) => ctx.dim("max_position_embeddings", Some(n))?,
            None => 2048,
        };

        let token = |field: &'static str, id: i64| -> Result<u32, ConfigError> {
            if id < 0 || id as u64 >= vocab_size as u64 {
                return Err(ctx.invalid(
                    field,
                    format!("token id {id} is outside the vocabulary (vocab_size {vocab_size})"),
                ));
            }
            Ok(id as u32)
        };
        let bos_token_id = match &raw.bos_token_id {
            None => None,
            Some(TokenIds::One(id)) => Some(token("bos_token_id", *id)?),
            Some(TokenIds::Many(ids)) => match ids.first() {
                Some(id) => Some(token("bos_token_id", *id)?),
                None => None,
            },
        };
        let mut eos_token_ids = match &raw.eos_token_id {
            None => Vec::new(),
            Some(TokenIds::One(id)) => vec![token("eos_token_id", *id)?],
            Some(TokenIds::Many(ids)) => {
                ids.iter().map(|id| token("eos_token_id", *id)).collect::<Result<_, _>>()?
            }
        };
        eos_token_ids.sort_unstable();
        eos_token_ids.dedup();

        Ok(ModelConfig {
            architecture,
            hidden_size,
            intermediate_size,
            num_layers: num_layers as usize,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: rms_norm_eps as f32,
            rope,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            vocab_size,
            max_position_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias,
            sliding_window,
            qk_norm: architecture == Architecture::Qwen3,
            bos_token_id,
            eos_token_ids,
        })
    }

    /// Width of the query projection (`num_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of each of the key and value projections (`num_kv_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Whether `token` ends generation.
    pub fn is_eos(&self, token: u32) -> bool {
        self.eos_token_ids.contains(&token)
    }
}

/// Error construction with the file path at hand.
struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn invalid(&self, field: impl Into<String>, message: String) -> ConfigError {
        ConfigError::Invalid { path: self.path.to_owned(), field: field.into(), message }
    }

    fn unsupported(&self, field: impl Into<String>, value: String, supported: &str) -> ConfigError {
        ConfigError::Unsupported {
            path: self.path.to_owned(),
            field: field.into(),
            value,
            supported: supported.to_owned(),
        }
    }

    fn required(&self, field: &'static str, value: Option<u64>) -> Result<u64, ConfigError> {
        value.ok_or(ConfigError::Missing { path: self.path.to_owned(), field })
    }

    fn dim(&self, field: &'static str, value: Option<u64>) -> Result<usize, ConfigError> {
        let v = self.required(field, value)?;
        if v == 0 || v > MAX_DIM {
            return Err(self.invalid(field, format!("{v}; expected 1..={MAX_DIM}")));
        }
        Ok(v as usize)
    }

    fn architecture(&self, raw: &RawConfig) -> Result<Architecture, ConfigError> {
        let supported = Architecture::supported_list();
        match (&raw.architectures, &raw.model_type) {
            (Some(archs), _) if !archs.is_empty() => {
                if archs.len() != 1 {
                    return Err(self.unsupported(
                        "architectures",
                        format!("{archs:?}"),
                        &supported,
                    ));
                }
                Architecture::from_hf_name(&archs[0]).ok_or_else(|| {
                    self.unsupported("architectures", format!("{:?}", archs[0]), &supported)
                })
            }
            (_, Some(model_type)) => Architecture::from_model_type(model_type).ok_or_else(|| {
                self.unsupported("model_type", format!("{model_type:?}"), &supported)
            }),
            _ => Err(ConfigError::Missing { path: self.path.to_owned(), field: "architectures" }),
        }
    }

    /// The sliding window the architecture honours: Mistral's `sliding_window`; Qwen2 and
    /// Qwen3 only with `use_sliding_window`, which amk refuses (their window covers only some
    /// layers); Llama has none.
    fn sliding_window(
        &self,
        raw: &RawConfig,
        arch: Architecture,
    ) -> Result<Option<usize>, ConfigError> {
        match arch {
            Architecture::Llama => Ok(None),
            Architecture::Mistral => match raw.sliding_window {
                None => Ok(None),
                Some(w) => Ok(Some(self.dim("sliding_window", Some(w))?)),
            },
            Architecture::Qwen2 | Architecture::Qwen3 => {
                if raw.use_sliding_window == Some(true) {
                    return Err(self.unsupported(
                        "use_sliding_window",
                        "true".into(),
                        &format!(
                            "full attention in every layer (use_sliding_window: false) for {}",
                            arch.hf_name()
                        ),
                    ));
                }
                if let Some(types) = &raw.layer_types {
                    if let Some((i, t)) =
                        types.iter().enumerate().find(|(_, t)| t.as_str() != "full_attention")
                    {
                        return Err(self.unsupported(
                            format!("layer_types[{i}]"),
                            format!("{t:?}"),
                            "\"full_attention\" in every layer",
                        ));
                    }
                }
                Ok(None)
            }
        }
    }

    /// Reads `rope_parameters` (transformers 5) or the older `rope_theta` + `rope_scaling`:
    /// `rope_type` `"default"` (or none) and `"llama3"`, whose four parameters are read from
    /// the same object.
    fn rope(&self, raw: &RawConfig) -> Result<RopeConfig, ConfigError> {
        let (params, prefix) = match &raw.rope_parameters {
            Some(serde_json::Value::Object(params)) => (Some(params), "rope_parameters"),
            Some(serde_json::Value::Null) | None => match &raw.rope_scaling {
                None | Some(serde_json::Value::Null) => (None, "rope_scaling"),
                Some(serde_json::Value::Object(s)) => (Some(s), "rope_scaling"),
                Some(v) => {
                    return Err(self.invalid("rope_scaling", format!("{v} is not an object")))
                }
            },
            Some(v) => return Err(self.invalid("rope_parameters", format!("{v} is not an object"))),
        };
        let field = |name: &str| format!("{prefix}.{name}");
        let mut theta = raw.rope_theta;
        let mut rope_type = None;
        if let Some(params) = params {
            // transformers 5 keeps theta inside rope_parameters; rope_scaling never held it.
            if prefix == "rope_parameters" {
                if let Some(v) = params.get("rope_theta") {
                    theta = Some(v.as_f64().ok_or_else(|| {
                        self.invalid(field("rope_theta"), format!("{v} is not a number"))
                    })?);
                }
            }
            rope_type = match params.get("rope_type").or_else(|| params.get("type")) {
                None | Some(serde_json::Value::Null) if prefix == "rope_parameters" => None,
                None | Some(serde_json::Value::Null) => Some("<missing rope_type>".to_owned()),
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(v) => {
                    return Err(self.invalid(field("rope_type"), format!("{v} is not a string")))
                }
            };
        }
        let theta = theta.unwrap_or(10_000.0);
        if !(theta.is_finite() && theta > 1.0) {
            return Err(self.invalid("rope_theta", format!("{theta}; expected a number > 1")));
        }
        let llama3 = match (rope_type.as_deref(), params) {
            (None | Some("default"), _) => None,
            (Some("llama3"), Some(params)) => {
                let num = |name: &str| -> Result<f32, ConfigError> {
                    let v = params.get(name).filter(|v| !v.is_null()).ok_or_else(|| {
                        self.invalid(
                            field(name),
                            "is missing; rope_type \"llama3\" needs it".into(),
                        )
                    })?;
                    match v.as_f64() {
                        Some(x) if x.is_finite() && x > 0.0 && x < 1e30 => Ok(x as f32),
                        _ => Err(self.invalid(field(name), format!("{v}; expected a number > 0"))),
                    }
                };
                let s = Llama3RopeScaling {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position_embeddings: num("original_max_position_embeddings")?,
                };
                if s.high_freq_factor <= s.low_freq_factor {
                    return Err(self.invalid(
                        field("high_freq_factor"),
                        format!(
                            "{} is not above low_freq_factor = {}; the smoothing band between \
                             them would be empty or inverted",
                            s.high_freq_factor, s.low_freq_factor
                        ),
                    ));
                }
                Some(s)
            }
            (Some(t), _) => {
                return Err(self.unsupported(
                    field("rope_type"),
                    format!("{t:?}"),
                    "rope_type \"default\" (no scaling) and \"llama3\"",
                ))
            }
        };
        Ok(RopeConfig { theta, llama3 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2_json() -> &'static str {
        include_str!("../../../fixtures/smollm2-hf/config.json")
    }

    fn check(text: &str) -> Result<ModelConfig, ConfigError> {
        let p = Path::new("config.json");
        ModelConfig::from_raw(&RawConfig::from_json(text, p)?, p)
    }

    fn edit(f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(smollm2_json()).unwrap();
        f(v.as_object_mut().unwrap());
        v.to_string()
    }

    #[test]
    fn smollm2_fixture_config() {
        let c = check(smollm2_json()).unwrap();
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!((c.hidden_size, c.intermediate_size, c.num_layers), (576, 1536, 30));
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (9, 3, 64));
        assert_eq!(c.rope.theta, 100_000.0);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.vocab_size, 49152);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert_eq!(c.bos_token_id, Some(1));
        assert_eq!(c.rms_norm_eps, 9.999999747378752e-06_f64 as f32);
    }

    #[test]
    fn legacy_rope_theta_and_eos_list() {
        let c = check(&edit(|m| {
            m.remove("rope_parameters");
            m.insert("rope_theta".into(), 500000.0.into());
            m.insert("eos_token_id".into(), serde_json::json!([2, 0, 2]));
        }))
        .unwrap();
        assert_eq!(c.rope.theta, 500000.0);
        assert_eq!(c.eos_token_ids, vec![0, 2]);
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(String, &str)> = vec![
            (edit(|m| drop(m.remove("hidden_size"))), "`hidden_size` is missing"),
            (
                edit(|m| {
                    drop(m.insert("architectures".into(), serde_json::json!(["GPT2LMHeadModel"])))
                }),
                "`architectures` = \"GPT2LMHeadModel\" is not supported",
            ),
            (
                edit(|m| drop(m.insert("model_type".into(), "gpt2".into()))),
                "`model_type` = \"gpt2\" is not supported",
            ),
            (
                edit(|m| {
                    m.insert(
                        "rope_parameters".into(),
                        serde_json::json!({"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0}),
                    );
                }),
                "`rope_parameters.rope_type` = \"yarn\" is not supported; amk supports rope_type \
                 \"default\" (no scaling) and \"llama3\"",
            ),
            (
                edit(|m| {
                    m.insert(
                        "rope_parameters".into(),
                        serde_json::json!({"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                            "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
                    );
                }),
                "`rope_parameters.original_max_position_embeddings` is invalid: is missing",
            ),
            (
                edit(|m| {
                    m.insert(
                        "rope_parameters".into(),
                        serde_json::json!({"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                            "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                            "original_max_position_embeddings": 8192}),
                    );
                }),
                "`rope_parameters.high_freq_factor` is invalid",
            ),
            (
                edit(|m| {
                    m.insert(
                        "rope_parameters".into(),
                        serde_json::json!({"rope_type": "llama3", "rope_theta": 5e5,
                            "factor": "eight", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192}),
                    );
                }),
                "`rope_parameters.factor` is invalid",
            ),
            (
                edit(|m| {
                    m.remove("rope_parameters");
                    m.insert("rope_scaling".into(), serde_json::json!({"type": "linear"}));
                }),
                "`rope_scaling.rope_type` = \"linear\"",
            ),
            (
                edit(|m| {
                    m.remove("rope_parameters");
                    m.insert("rope_scaling".into(), serde_json::json!({"rope_type": "llama3"}));
                }),
                "`rope_scaling.factor` is invalid: is missing",
            ),
            (edit(|m| drop(m.insert("num_key_value_heads".into(), 4.into()))), "does not divide"),
            (edit(|m| drop(m.insert("hidden_act".into(), "gelu".into()))), "`hidden_act`"),
            (edit(|m| drop(m.insert("vocab_size".into(), 0.into()))), "`vocab_size` is invalid"),
            (
                edit(|m| drop(m.insert("num_hidden_layers".into(), (1u64 << 40).into()))),
                "`num_hidden_layers` is invalid",
            ),
            (
                edit(|m| drop(m.insert("eos_token_id".into(), 49152.into()))),
                "outside the vocabulary",
            ),
            (edit(|m| drop(m.insert("head_dim".into(), 63.into()))), "`head_dim` is invalid"),
            (
                edit(|m| drop(m.insert("hidden_size".into(), "wide".into()))),
                "field `hidden_size` is invalid: invalid type: string \"wide\"",
            ),
            (edit(|m| drop(m.insert("hidden_size".into(), (-64).into()))), "`hidden_size`"),
            ("[]".to_owned(), "must be a JSON object"),
            ("[1, 2]".to_owned(), "must be a JSON object"),
            (
                "{\"hidden_size\": 64, \"hidden_size\": 64}".to_owned(),
                "duplicate field `hidden_size`",
            ),
            ("{\"hidden_size\": 5,".to_owned(), "line 1, column 18"),
        ];
        for (text, expected) in cases {
            let err = check(&text).unwrap_err().to_string();
            assert!(err.contains("config.json"), "{err}");
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
    }

    /// The config of a tiny Hugging Face fixture (`fixtures/tiny/<name>/config.json`).
    fn tiny(name: &str) -> ModelConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tiny")
            .join(name)
            .join("config.json");
        ModelConfig::from_file(&path).unwrap()
    }

    fn tiny_json(name: &str) -> serde_json::Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tiny")
            .join(name)
            .join("config.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn check_value(v: &serde_json::Value) -> Result<ModelConfig, ConfigError> {
        check(&v.to_string())
    }

    #[test]
    fn llama_fixtures() {
        let c = tiny("llama2");
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (3, 3, 64));
        assert_eq!(c.rope, RopeConfig { theta: 10_000.0, llama3: None });
        assert!(!c.tie_word_embeddings && !c.qkv_bias && !c.o_bias && !c.mlp_bias && !c.qk_norm);
        assert_eq!(c.sliding_window, None);

        // Llama 3.x: rope_parameters with rope_type llama3, explicit head_dim != hidden/heads.
        let c = tiny("llama3");
        assert_eq!((c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim), (256, 4, 1, 128));
        let s = Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64.0,
        };
        assert_eq!(c.rope, RopeConfig { theta: 500_000.0, llama3: Some(s) });

        // The older spelling: rope_theta + rope_scaling (with `type` for `rope_type`).
        let mut v = tiny_json("llama3");
        let m = v.as_object_mut().unwrap();
        m.remove("rope_parameters");
        m.insert("rope_theta".into(), 500_000.0.into());
        m.insert(
            "rope_scaling".into(),
            serde_json::json!({"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        );
        assert_eq!(check_value(&v).unwrap().rope, c.rope);

        for (name, heads, kv, hd, tied) in [
            ("tinyllama", 8, 2, 32, false),
            ("smollm2_360m", 3, 1, 64, true),
            ("smollm2_1_7b", 2, 2, 64, true),
        ] {
            let c = tiny(name);
            assert_eq!(c.architecture, Architecture::Llama, "{name}");
            assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (heads, kv, hd), "{name}");
            assert_eq!(c.tie_word_embeddings, tied, "{name}");
            assert_eq!(c.rope.llama3, None, "{name}");
        }

        // Llama with attention_bias: all four projections; mlp_bias is its own flag.
        let mut v = tiny_json("llama2");
        v["attention_bias"] = true.into();
        v["sliding_window"] = 4.into(); // Llama has no window: ignored, as transformers does.
        let c = check_value(&v).unwrap();
        assert!(c.qkv_bias && c.o_bias && !c.mlp_bias);
        assert_eq!(c.sliding_window, None);
    }

    #[test]
    fn mistral_fixture_and_window() {
        let c = tiny("mistral");
        assert_eq!(c.architecture, Architecture::Mistral);
        assert_eq!(c.sliding_window, Some(8));
        assert!(!c.qkv_bias && !c.o_bias && !c.mlp_bias && !c.qk_norm);

        let mut v = tiny_json("mistral");
        v["sliding_window"] = serde_json::Value::Null;
        assert_eq!(check_value(&v).unwrap().sliding_window, None, "null: full attention");
        v.as_object_mut().unwrap().remove("sliding_window");
        assert_eq!(check_value(&v).unwrap().sliding_window, None, "absent: full attention");
        // Mistral's modules have no biases whatever the config says.
        v["attention_bias"] = true.into();
        v["mlp_bias"] = true.into();
        let c = check_value(&v).unwrap();
        assert!(!c.qkv_bias && !c.o_bias && !c.mlp_bias);
        v["sliding_window"] = 0.into();
        let err = check_value(&v).unwrap_err().to_string();
        assert!(err.contains("`sliding_window` is invalid"), "{err}");
        // Found by model_type alone too.
        v["sliding_window"] = 4096.into();
        v.as_object_mut().unwrap().remove("architectures");
        let c = check_value(&v).unwrap();
        assert_eq!((c.architecture, c.sliding_window), (Architecture::Mistral, Some(4096)));
    }

    #[test]
    fn qwen2_fixture_biases_and_refusals() {
        let c = tiny("qwen2");
        assert_eq!(c.architecture, Architecture::Qwen2);
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (3, 1, 64));
        assert!(c.qkv_bias && !c.o_bias && !c.mlp_bias && !c.qk_norm);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.sliding_window, None);

        let mut v = tiny_json("qwen2");
        // q/k/v biases whatever attention_bias says; a window without use_sliding_window is
        // ignored (real Qwen2.5 configs carry sliding_window: 32768 with it false).
        v["attention_bias"] = false.into();
        v["sliding_window"] = 32768.into();
        let c = check_value(&v).unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        assert_eq!(c.sliding_window, None);

        v["use_sliding_window"] = true.into();
        let err = check_value(&v).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        assert!(err.contains("`use_sliding_window` = true is not supported"), "{err}");
        assert!(err.contains("Qwen2ForCausalLM"), "{err}");

        v["use_sliding_window"] = false.into();
        v["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]);
        let err = check_value(&v).unwrap_err().to_string();
        assert!(err.contains("`layer_types[1]` = \"sliding_attention\" is not supported"), "{err}");
    }

    #[test]
    fn qwen3_fixture_qk_norm_and_refusals() {
        let c = tiny("qwen3");
        assert_eq!(c.architecture, Architecture::Qwen3);
        assert_eq!((c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim), (196, 2, 1, 128));
        assert!(c.qk_norm && !c.qkv_bias && !c.o_bias && !c.mlp_bias);
        assert_eq!(c.rms_norm_eps, 1e-6);

        let mut v = tiny_json("qwen3");
        v["attention_bias"] = true.into();
        let c = check_value(&v).unwrap();
        assert!(c.qkv_bias && c.o_bias, "Qwen3's attention_bias covers q, k, v and o");

        v["use_sliding_window"] = true.into();
        let err = check_value(&v).unwrap_err().to_string();
        assert!(err.contains("`use_sliding_window` = true is not supported"), "{err}");
        assert!(err.contains("Qwen3ForCausalLM"), "{err}");
    }

    #[test]
    fn unsupported_architecture_lists_the_supported_ones() {
        let supported = "LlamaForCausalLM (model_type \"llama\"), MistralForCausalLM (model_type \
                         \"mistral\"), Qwen2ForCausalLM (model_type \"qwen2\"), Qwen3ForCausalLM \
                         (model_type \"qwen3\")";
        let cases = [
            (
                serde_json::json!(["Qwen3MoeForCausalLM"]),
                None,
                "`architectures` = \"Qwen3MoeForCausalLM\"",
            ),
            (
                serde_json::json!(["GemmaForCausalLM"]),
                Some("gemma"),
                "`architectures` = \"GemmaForCausalLM\"",
            ),
            (serde_json::json!([]), Some("phi3"), "`model_type` = \"phi3\""),
            (
                serde_json::json!(["LlamaForCausalLM", "MistralForCausalLM"]),
                None,
                "`architectures` = [\"LlamaForCausalLM\", \"MistralForCausalLM\"]",
            ),
        ];
        for (archs, model_type, expected) in cases {
            let mut v = tiny_json("llama2");
            v["architectures"] = archs;
            if let Some(t) = model_type {
                v["model_type"] = t.into();
            }
            let err = check_value(&v).unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
            assert!(err.contains(&format!("amk supports {supported}")), "{err}");
        }
    }

    #[test]
    fn llama3_inv_freq_follows_transformers() {
        // Llama 3.1's parameters over head_dim 128, theta 500000: low frequencies (wavelength
        // over 8192) are divided by 8, high ones (under 2048) kept, the band between smoothed.
        let s = Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let plain = RopeConfig { theta: 500_000.0, llama3: None }.inv_freq(128);
        let scaled = RopeConfig { theta: 500_000.0, llama3: Some(s) }.inv_freq(128);
        assert_eq!(plain.len(), 64);
        let two_pi = 2.0 * std::f64::consts::PI;
        let (mut high, mut medium, mut low) = (0, 0, 0);
        for (&p, &q) in plain.iter().zip(&scaled) {
            let wavelen = two_pi / p as f64;
            if wavelen < 2048.0 {
                assert_eq!(q, p);
                high += 1;
            } else if wavelen > 8192.0 {
                assert_eq!(q, p / 8.0);
                low += 1;
            } else {
                let smooth = (8192.0 / wavelen - 1.0) / 3.0;
                let want = (1.0 - smooth) * p as f64 / 8.0 + smooth * p as f64;
                assert!((q as f64 - want).abs() <= 1e-6 * want, "{q} vs {want}");
                assert!(q < p && q > p / 8.0);
                medium += 1;
            }
        }
        assert!(high > 0 && medium > 0 && low > 0, "{high} {medium} {low}");
        // The plain table is 1/theta^(2i/d) rounded from f64, as before.
        assert_eq!(plain[1], (1.0 / 500_000f64.powf(2.0 / 128.0)) as f32);
    }

    #[test]
    fn missing_architecture_and_model_type() {
        let err = check(&edit(|m| drop(m.remove("model_type")))).unwrap_err().to_string();
        assert!(err.contains("`architectures` is missing"), "{err}");
    }
}
