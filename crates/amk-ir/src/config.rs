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

    /// Parses the text of a `config.json`; `path` is only used in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
        serde_json::from_str(text).map_err(|e| ConfigError::Json {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })
    }
}

/// The model families amk lowers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    /// `LlamaForCausalLM` (model_type `llama`): SmolLM2, TinyLlama, Llama 2 style models.
    Llama,
}

impl Architecture {
    /// The Hugging Face class name.
    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
        }
    }
}

/// Rotary position embedding parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RopeConfig {
    /// The base `theta` of the inverse frequencies.
    pub theta: f64,
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
    pub attention_bias: bool,
    pub mlp_bias: bool,
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
            attention_bias: raw.attention_bias.unwrap_or(false),
            mlp_bias: raw.mlp_bias.unwrap_or(false),
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
        const SUPPORTED: &str = "LlamaForCausalLM (model_type \"llama\")";
        match (&raw.architectures, &raw.model_type) {
            (Some(archs), _) if !archs.is_empty() => {
                if archs.len() != 1 {
                    return Err(self.unsupported("architectures", format!("{archs:?}"), SUPPORTED));
                }
                match archs[0].as_str() {
                    "LlamaForCausalLM" => Ok(Architecture::Llama),
                    other => {
                        Err(self.unsupported("architectures", format!("{other:?}"), SUPPORTED))
                    }
                }
            }
            (_, Some(model_type)) => match model_type.as_str() {
                "llama" => Ok(Architecture::Llama),
                other => Err(self.unsupported("model_type", format!("{other:?}"), SUPPORTED)),
            },
            _ => Err(ConfigError::Missing { path: self.path.to_owned(), field: "architectures" }),
        }
    }

    /// Reads `rope_parameters` (transformers 5) or the older `rope_theta` + `rope_scaling`.
    fn rope(&self, raw: &RawConfig) -> Result<RopeConfig, ConfigError> {
        let (theta, rope_type, type_field) = match &raw.rope_parameters {
            Some(serde_json::Value::Object(params)) => {
                let theta = match params.get("rope_theta") {
                    Some(v) => Some(v.as_f64().ok_or_else(|| {
                        self.invalid("rope_parameters.rope_theta", format!("{v} is not a number"))
                    })?),
                    None => raw.rope_theta,
                };
                let rope_type = match params.get("rope_type").or_else(|| params.get("type")) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(v) => {
                        return Err(self
                            .invalid("rope_parameters.rope_type", format!("{v} is not a string")))
                    }
                };
                (theta, rope_type, "rope_parameters.rope_type")
            }
            Some(serde_json::Value::Null) | None => {
                let rope_type = match &raw.rope_scaling {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::Object(s)) => Some(
                        s.get("rope_type")
                            .or_else(|| s.get("type"))
                            .and_then(|t| t.as_str())
                            .unwrap_or("<missing rope_type>")
                            .to_owned(),
                    ),
                    Some(v) => {
                        return Err(self.invalid("rope_scaling", format!("{v} is not an object")))
                    }
                };
                (raw.rope_theta, rope_type, "rope_scaling.rope_type")
            }
            Some(v) => return Err(self.invalid("rope_parameters", format!("{v} is not an object"))),
        };
        if let Some(t) = rope_type {
            if t != "default" {
                return Err(self.unsupported(
                    type_field,
                    format!("{t:?}"),
                    "\"default\" rotary embeddings (no scaling) for now",
                ));
            }
        }
        let theta = theta.unwrap_or(10_000.0);
        if !(theta.is_finite() && theta > 1.0) {
            return Err(self.invalid("rope_theta", format!("{theta}; expected a number > 1")));
        }
        Ok(RopeConfig { theta })
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
                        serde_json::json!({"rope_type": "llama3", "rope_theta": 5e5}),
                    );
                }),
                "`rope_parameters.rope_type` = \"llama3\" is not supported",
            ),
            (
                edit(|m| {
                    m.remove("rope_parameters");
                    m.insert("rope_scaling".into(), serde_json::json!({"type": "linear"}));
                }),
                "`rope_scaling.rope_type` = \"linear\"",
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
            (edit(|m| drop(m.insert("hidden_size".into(), "wide".into()))), "not valid JSON"),
            ("{\"hidden_size\": 5,".to_owned(), "line 1, column 18"),
        ];
        for (text, expected) in cases {
            let err = check(&text).unwrap_err().to_string();
            assert!(err.contains("config.json"), "{err}");
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
    }

    #[test]
    fn missing_architecture_and_model_type() {
        let err = check(&edit(|m| drop(m.remove("model_type")))).unwrap_err().to_string();
        assert!(err.contains("`architectures` is missing"), "{err}");
    }
}
