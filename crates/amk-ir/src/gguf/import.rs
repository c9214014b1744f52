//! GGUF (llama architecture) to a Hugging Face model directory, equivalent to what
//! transformers produces when it loads the same GGUF file.

use super::error::GgufError;
use super::reader::{GgufFile, GgufTensorInfo};
use super::tokenizer::GgufVocab;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// File an import leaves in its output directory; a non-empty directory holding it may be
/// replaced by a new import without `overwrite`.
pub const IMPORT_MARKER: &str = ".amk-import.json";

/// Architectures [`import_gguf`] converts (`general.architecture`).
const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// How [`import_gguf_with`] treats an existing output directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Replace a non-empty output directory even if it is not a previous amk import.
    pub overwrite: bool,
}

/// Progress of an import, reported after the metadata files and after every tensor so a
/// caller can draw a progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportProgress {
    /// Tensors written to `model.safetensors` so far.
    pub tensors_done: usize,
    /// Tensors to write in all.
    pub tensors_total: usize,
    /// f32 tensor bytes written so far.
    pub bytes_done: u64,
    /// f32 tensor bytes to write in all.
    pub bytes_total: u64,
    /// Hugging Face name of the tensor just written (empty before the first).
    pub tensor: String,
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// The finished model directory.
    pub out_dir: PathBuf,
    /// Tensors in `model.safetensors`.
    pub tensors: usize,
    /// Total number of parameters.
    pub parameters: u64,
    /// Size of `model.safetensors` in bytes.
    pub safetensors_bytes: u64,
    /// Whether the model has no `output.weight` and reuses the embedding as its head.
    pub tie_word_embeddings: bool,
    /// `eos_token_id` list written to `config.json`.
    pub eos_token_ids: Vec<u32>,
}

/// Converts the llama-architecture GGUF file `gguf` into a Hugging Face directory `out_dir`
/// (`config.json`, `model.safetensors` in f32, tokenizer files), refusing to replace a
/// non-empty directory that is not a previous amk import.
pub fn import_gguf(
    gguf: &Path,
    out_dir: &Path,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<ImportSummary, GgufError> {
    import_gguf_with(gguf, out_dir, &ImportOptions::default(), progress)
}

/// [`import_gguf`] with options. The directory is built in a hidden sibling and renamed into
/// place at the end, so an interrupted import never leaves a half-written model behind.
pub fn import_gguf_with(
    gguf: &Path,
    out_dir: &Path,
    options: &ImportOptions,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<ImportSummary, GgufError> {
    let started = std::time::Instant::now();
    let g = GgufFile::open(gguf)?;
    let plan = Plan::new(&g)?;
    check_out_dir(out_dir, options)?;
    check_not_inside(gguf, out_dir)?;
    let (parent, name) = split_out_dir(out_dir)?;
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.amk-import-tmp-{pid}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)
            .map_err(|e| GgufError::io(&tmp, "remove a stale temporary directory", e))?;
    }
    fs::create_dir_all(&parent)
        .map_err(|e| GgufError::io(&parent, "create the parent directory", e))?;
    fs::create_dir(&tmp)
        .map_err(|e| GgufError::io(&tmp, "create the temporary output directory", e))?;
    let result = write_all(&g, &plan, &tmp, progress).and_then(|summary| {
        replace_dir(&tmp, out_dir, &parent, &name, pid)?;
        Ok(ImportSummary { out_dir: out_dir.to_path_buf(), ..summary })
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    if let Ok(s) = &result {
        tracing::info!(
            gguf = %gguf.display(),
            out = %s.out_dir.display(),
            tensors = s.tensors,
            seconds = started.elapsed().as_secs_f64(),
            "imported GGUF"
        );
    }
    result
}

/// llama hyper-parameters from the metadata.
struct Hparams {
    hidden: u64,
    ffn: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    eps: f32,
    rope_theta: f32,
    context: u64,
    vocab: u64,
}

/// Which RoPE un-permutation a tensor needs: the number of heads its rows are grouped in.
#[derive(Clone, Copy)]
enum Permute {
    None,
    Heads(u64),
}

struct Mapped<'a> {
    info: &'a GgufTensorInfo,
    permute: Permute,
}

/// Everything decided and checked before a byte is written.
struct Plan<'a> {
    hp: Hparams,
    vocab: GgufVocab<'a>,
    tensors: BTreeMap<String, Mapped<'a>>,
    tie: bool,
    attention_bias: bool,
}

fn unsupported(g: &GgufFile, key: &str, reason: String) -> GgufError {
    GgufError::Unsupported { path: g.path().to_path_buf(), key: key.into(), reason }
}

fn missing_key<'g>(g: &'g GgufFile, key: &str) -> impl Fn(GgufError) -> GgufError + 'g {
    let key = key.to_string();
    move |e| match e {
        GgufError::MissingKey { path, key: k, .. } if k == key => GgufError::MissingKey {
            path,
            key: k,
            hint: format!(
                " (required for {} models; the file was not written by a llama.cpp converter \
                 that amk understands)",
                g.get_str("general.architecture").unwrap_or("llama")
            ),
        },
        other => other,
    }
}

fn read_hparams(g: &GgufFile, n_tokens: usize) -> Result<Hparams, GgufError> {
    let arch = g.get_str("general.architecture").map_err(missing_key(g, "general.architecture"))?;
    if !SUPPORTED_ARCHITECTURES.contains(&arch) {
        return Err(GgufError::UnsupportedArchitecture {
            path: g.path().to_path_buf(),
            architecture: arch.to_string(),
            supported: SUPPORTED_ARCHITECTURES.join(", "),
        });
    }
    let req = |k: &str| -> Result<u64, GgufError> {
        let key = format!("{arch}.{k}");
        g.get_u64(&key).map_err(missing_key(g, &key))
    };
    let hidden = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    let kv_heads = match g.metadata().contains_key(&format!("{arch}.attention.head_count_kv")) {
        true => req("attention.head_count_kv")?,
        false => heads,
    };
    let positive = |key: &str, v: u64| -> Result<u64, GgufError> {
        if v == 0 {
            return Err(GgufError::WrongKeyType {
                path: g.path().to_path_buf(),
                key: format!("{arch}.{key}"),
                expected: "a positive integer".into(),
                found: "0".into(),
            });
        }
        Ok(v)
    };
    let hidden = positive("embedding_length", hidden)?;
    let heads = positive("attention.head_count", heads)?;
    let kv_heads = positive("attention.head_count_kv", kv_heads)?;
    if heads % kv_heads != 0 {
        return Err(unsupported(
            g,
            &format!("{arch}.attention.head_count_kv"),
            format!("{kv_heads} key/value heads do not divide {heads} attention heads"),
        ));
    }
    let key_length_key = format!("{arch}.attention.key_length");
    let head_dim = match g.metadata().contains_key(&key_length_key) {
        true => positive("attention.key_length", req("attention.key_length")?)?,
        false => {
            if hidden % heads != 0 {
                return Err(unsupported(
                    g,
                    &format!("{arch}.embedding_length"),
                    format!(
                        "{hidden} is not a multiple of {heads} heads and no key_length is given"
                    ),
                ));
            }
            hidden / heads
        }
    };
    for (key, what) in [
        ("attention.value_length", "value head size"),
        ("rope.dimension_count", "rotary dimension"),
    ] {
        let full = format!("{arch}.{key}");
        if g.metadata().contains_key(&full) {
            let v = req(key)?;
            if v != head_dim {
                return Err(unsupported(
                    g,
                    &full,
                    format!("{what} {v} differs from the head size {head_dim}; the HF llama layout cannot express it"),
                ));
            }
        }
    }
    if head_dim % 2 != 0 {
        return Err(unsupported(
            g,
            &key_length_key,
            format!("odd head size {head_dim} cannot use RoPE"),
        ));
    }
    let expert_key = format!("{arch}.expert_count");
    if g.metadata().contains_key(&expert_key) && g.get_u64(&expert_key)? > 0 {
        return Err(unsupported(
            g,
            &expert_key,
            "mixture-of-experts llama models are not supported".into(),
        ));
    }
    // RoPE scaling changes the model's positions; refuse anything but "none" / factor 1.
    let scaling_prefix = format!("{arch}.rope.scaling.");
    for (key, value) in g.metadata().range(scaling_prefix.clone()..) {
        if !key.starts_with(&scaling_prefix) {
            break;
        }
        let harmless = match key.strip_prefix(&scaling_prefix) {
            Some("type") => g.get_str(key)? == "none",
            Some("factor") => value.as_f64().is_some_and(|f| f == 1.0 || f == 0.0),
            _ => false,
        };
        if !harmless {
            return Err(unsupported(
                g,
                key,
                format!("RoPE scaling ({value:?}) is not supported by amk's llama import"),
            ));
        }
    }
    let eps_key = format!("{arch}.attention.layer_norm_rms_epsilon");
    let eps = g.get_f32(&eps_key).map_err(missing_key(g, &eps_key))?;
    let rope_theta = g.opt_f32(&format!("{arch}.rope.freq_base"))?.unwrap_or(10000.0);
    let vocab_key = format!("{arch}.vocab_size");
    let vocab = match g.metadata().contains_key(&vocab_key) {
        true => req("vocab_size")?,
        false => n_tokens as u64,
    };
    // Each layer has several tensors: a block count past the file's tensor count is corrupt
    // (and would otherwise be looped over, a billion times for a flipped byte).
    let layers = positive("block_count", req("block_count")?)?;
    if layers > g.tensors().len() as u64 {
        return Err(GgufError::Invalid {
            path: g.path().to_path_buf(),
            field: format!("{arch}.block_count"),
            reason: format!(
                "{layers} layers, but the file holds only {} tensors (each layer needs its own)",
                g.tensors().len()
            ),
        });
    }
    Ok(Hparams {
        hidden,
        ffn: positive("feed_forward_length", req("feed_forward_length")?)?,
        layers,
        heads,
        kv_heads,
        head_dim,
        eps,
        rope_theta,
        context: req("context_length")?,
        vocab,
    })
}

/// Maps a llama.cpp tensor name to its Hugging Face name and RoPE un-permutation.
fn hf_name(name: &str, hp: &Hparams) -> Option<(String, Permute)> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some((f.to_string(), Permute::None));
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.is_empty()
        || !layer.bytes().all(|b| b.is_ascii_digit())
        || (layer.len() > 1 && layer.starts_with('0'))
    {
        return None;
    }
    let n: u64 = layer.parse().ok()?;
    if n >= hp.layers {
        return None;
    }
    let (stem, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (hf, permute) = match (stem, kind) {
        ("attn_norm", "weight") => ("input_layernorm", Permute::None),
        ("ffn_norm", "weight") => ("post_attention_layernorm", Permute::None),
        ("attn_q", _) => ("self_attn.q_proj", Permute::Heads(hp.heads)),
        ("attn_k", _) => ("self_attn.k_proj", Permute::Heads(hp.kv_heads)),
        ("attn_v", _) => ("self_attn.v_proj", Permute::None),
        ("attn_output", _) => ("self_attn.o_proj", Permute::None),
        ("ffn_gate", "weight") => ("mlp.gate_proj", Permute::None),
        ("ffn_up", "weight") => ("mlp.up_proj", Permute::None),
        ("ffn_down", "weight") => ("mlp.down_proj", Permute::None),
        _ => return None,
    };
    Some((format!("model.layers.{n}.{hf}.{kind}"), permute))
}

/// The PyTorch shape a Hugging Face llama tensor must have.
fn expected_shape(hf: &str, hp: &Hparams) -> Vec<u64> {
    let q = hp.heads.saturating_mul(hp.head_dim);
    let kv = hp.kv_heads.saturating_mul(hp.head_dim);
    let suffix = hf.rsplit('.').next().unwrap_or("");
    let (rows, cols) = match hf {
        "model.embed_tokens.weight" | "lm_head.weight" => (hp.vocab, hp.hidden),
        "model.norm.weight" => return vec![hp.hidden],
        _ if hf.ends_with("layernorm.weight") => return vec![hp.hidden],
        _ if hf.contains(".q_proj.") => (q, hp.hidden),
        _ if hf.contains(".k_proj.") || hf.contains(".v_proj.") => (kv, hp.hidden),
        _ if hf.contains(".o_proj.") => (hp.hidden, q),
        _ if hf.contains(".gate_proj.") || hf.contains(".up_proj.") => (hp.ffn, hp.hidden),
        _ => (hp.hidden, hp.ffn),
    };
    if suffix == "bias" {
        vec![rows]
    } else {
        vec![rows, cols]
    }
}

impl<'a> Plan<'a> {
    fn new(g: &'a GgufFile) -> Result<Self, GgufError> {
        let vocab = GgufVocab::read(g)?;
        let hp = read_hparams(g, vocab.tokens.len())?;
        if (vocab.tokens.len() as u64) > hp.vocab {
            return Err(GgufError::Invalid {
                path: g.path().to_path_buf(),
                field: "metadata key 'tokenizer.ggml.tokens'".into(),
                reason: format!(
                    "{} tokens, more than the vocab_size {}",
                    vocab.tokens.len(),
                    hp.vocab
                ),
            });
        }
        let mut tensors = BTreeMap::new();
        let mut unknown = Vec::new();
        for info in g.tensors() {
            if info.name == "rope_freqs.weight" {
                return Err(unsupported(
                    g,
                    "tensor rope_freqs.weight",
                    "llama3-style RoPE frequency scaling is not supported".into(),
                ));
            }
            let Some((hf, permute)) = hf_name(&info.name, &hp) else {
                unknown.push(info.name.clone());
                continue;
            };
            if !info.ggml_type.is_supported() {
                return Err(GgufError::UnsupportedTensorType {
                    path: g.path().to_path_buf(),
                    tensor: info.name.clone(),
                    ggml_type: info.ggml_type.to_string(),
                    supported: super::reader::GgmlType::supported_list(),
                });
            }
            let want = expected_shape(&hf, &hp);
            if info.shape() != want {
                return Err(GgufError::ShapeMismatch {
                    path: g.path().to_path_buf(),
                    tensor: info.name.clone(),
                    expected: want,
                    found: info.shape(),
                });
            }
            tensors.insert(hf, Mapped { info, permute });
        }
        if !unknown.is_empty() {
            return Err(GgufError::UnknownTensors { path: g.path().to_path_buf(), names: unknown });
        }
        let present: BTreeSet<&str> = g.tensors().iter().map(|t| t.name.as_str()).collect();
        let attention_bias = (0..hp.layers).any(|i| {
            ["attn_q", "attn_k", "attn_v"]
                .iter()
                .any(|s| present.contains(format!("blk.{i}.{s}.bias").as_str()))
        });
        let mut required: Vec<(String, &str)> = vec![
            ("token_embd.weight".into(), "the token embedding"),
            ("output_norm.weight".into(), "the final norm"),
        ];
        for i in 0..hp.layers {
            for s in [
                "attn_norm.weight",
                "ffn_norm.weight",
                "attn_q.weight",
                "attn_k.weight",
                "attn_v.weight",
                "attn_output.weight",
                "ffn_gate.weight",
                "ffn_up.weight",
                "ffn_down.weight",
            ] {
                required.push((format!("blk.{i}.{s}"), "every layer needs it"));
            }
            if attention_bias {
                for s in ["attn_q.bias", "attn_k.bias", "attn_v.bias"] {
                    required.push((format!("blk.{i}.{s}"), "other layers have q/k/v biases"));
                }
            }
        }
        for (name, why) in required {
            if !present.contains(name.as_str()) {
                return Err(GgufError::MissingTensor {
                    path: g.path().to_path_buf(),
                    tensor: name,
                    why: why.into(),
                });
            }
        }
        let tie = !present.contains("output.weight");
        Ok(Plan { hp, vocab, tensors, tie, attention_bias })
    }

    fn config_json(&self, g: &GgufFile) -> Value {
        let hp = &self.hp;
        let mut c = Map::new();
        c.insert("architectures".into(), json!(["LlamaForCausalLM"]));
        c.insert("model_type".into(), json!("llama"));
        c.insert("hidden_size".into(), json!(hp.hidden));
        c.insert("intermediate_size".into(), json!(hp.ffn));
        c.insert("num_hidden_layers".into(), json!(hp.layers));
        c.insert("num_attention_heads".into(), json!(hp.heads));
        c.insert("num_key_value_heads".into(), json!(hp.kv_heads));
        c.insert("head_dim".into(), json!(hp.head_dim));
        c.insert("rms_norm_eps".into(), json!(f64::from(hp.eps)));
        c.insert(
            "rope_parameters".into(),
            json!({"rope_theta": f64::from(hp.rope_theta), "rope_type": "default"}),
        );
        c.insert("max_position_embeddings".into(), json!(hp.context));
        c.insert("vocab_size".into(), json!(hp.vocab));
        c.insert("tie_word_embeddings".into(), json!(self.tie));
        c.insert("attention_bias".into(), json!(self.attention_bias));
        c.insert("attention_dropout".into(), json!(0.0));
        c.insert("mlp_bias".into(), json!(false));
        c.insert("hidden_act".into(), json!("silu"));
        c.insert("torch_dtype".into(), json!("float32"));
        c.insert("use_cache".into(), json!(true));
        c.insert("bos_token_id".into(), json!(self.vocab.bos));
        c.insert("eos_token_id".into(), json!(self.vocab.end_of_generation_ids()));
        if let Some(p) = self.vocab.pad {
            c.insert("pad_token_id".into(), json!(p));
        }
        if let Some(u) = self.vocab.unk {
            c.insert("unk_token_id".into(), json!(u));
        }
        if let Ok(name) = g.get_str("general.name") {
            c.insert("_model_name_or_path".into(), json!(name));
        }
        Value::Object(c)
    }
}

fn check_out_dir(out_dir: &Path, options: &ImportOptions) -> Result<(), GgufError> {
    match fs::read_dir(out_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(GgufError::io(out_dir, "read the output directory", e)),
        Ok(mut entries) => {
            if entries.next().is_none()
                || options.overwrite
                || out_dir.join(IMPORT_MARKER).is_file()
            {
                Ok(())
            } else {
                Err(GgufError::OutputNotEmpty {
                    path: out_dir.to_path_buf(),
                    marker: IMPORT_MARKER,
                })
            }
        }
    }
}

/// Refuses an output directory that contains the GGUF file itself (the import replaces the
/// whole directory, so `--overwrite` would delete its own input).
fn check_not_inside(gguf: &Path, out_dir: &Path) -> Result<(), GgufError> {
    let (Ok(file), Ok(dir)) = (fs::canonicalize(gguf), fs::canonicalize(out_dir)) else {
        return Ok(()); // an output directory that does not exist yet holds nothing
    };
    if file.starts_with(&dir) {
        return Err(GgufError::OutputHoldsInput {
            out_dir: out_dir.to_path_buf(),
            gguf: gguf.to_path_buf(),
        });
    }
    Ok(())
}

fn split_out_dir(out_dir: &Path) -> Result<(PathBuf, String), GgufError> {
    let name = out_dir.file_name().and_then(|n| n.to_str()).ok_or_else(|| GgufError::Invalid {
        path: out_dir.to_path_buf(),
        field: "output directory".into(),
        reason: "it must end in a UTF-8 directory name (not '/', '.' or '..')".into(),
    })?;
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name.to_string()))
}

fn replace_dir(
    tmp: &Path,
    out_dir: &Path,
    parent: &Path,
    name: &str,
    pid: u32,
) -> Result<(), GgufError> {
    if out_dir.exists() {
        let old = parent.join(format!(".{name}.amk-import-old-{pid}"));
        if old.exists() {
            fs::remove_dir_all(&old)
                .map_err(|e| GgufError::io(&old, "remove a stale old directory", e))?;
        }
        fs::rename(out_dir, &old)
            .map_err(|e| GgufError::io(out_dir, "move the previous import aside", e))?;
        if let Err(e) = fs::rename(tmp, out_dir) {
            let _ = fs::rename(&old, out_dir);
            return Err(GgufError::io(out_dir, "move the new import into place", e));
        }
        fs::remove_dir_all(&old)
            .map_err(|e| GgufError::io(&old, "remove the previous import", e))?;
    } else {
        fs::rename(tmp, out_dir)
            .map_err(|e| GgufError::io(out_dir, "move the new import into place", e))?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<(), GgufError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| GgufError::Invalid {
        path: path.to_path_buf(),
        field: "JSON output".into(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    fs::write(path, text).map_err(|e| GgufError::io(path, "write", e))
}

fn write_all(
    g: &GgufFile,
    plan: &Plan<'_>,
    dir: &Path,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<ImportSummary, GgufError> {
    write_json(&dir.join("config.json"), &plan.config_json(g))?;
    write_json(&dir.join("tokenizer.json"), &plan.vocab.tokenizer_json(g)?)?;
    let template = g.opt_str("tokenizer.chat_template")?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &plan.vocab.tokenizer_config_json(template, plan.hp.context),
    )?;
    if let Some(t) = template {
        let p = dir.join("chat_template.jinja");
        fs::write(&p, t).map_err(|e| GgufError::io(&p, "write", e))?;
    }
    let (bytes, params) = write_safetensors(g, plan, &dir.join("model.safetensors"), progress)?;
    write_json(
        &dir.join(IMPORT_MARKER),
        &json!({"importer": "amk gguf", "format": 1, "source": g.path().display().to_string()}),
    )?;
    Ok(ImportSummary {
        out_dir: dir.to_path_buf(),
        tensors: plan.tensors.len(),
        parameters: params,
        safetensors_bytes: bytes,
        tie_word_embeddings: plan.tie,
        eos_token_ids: plan.vocab.end_of_generation_ids(),
    })
}

/// Streams every tensor as f32 into a safetensors file; returns (file bytes, parameters).
fn write_safetensors(
    g: &GgufFile,
    plan: &Plan<'_>,
    path: &Path,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<(u64, u64), GgufError> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for (hf, m) in &plan.tensors {
        let end = offset.saturating_add(m.info.n_elements.saturating_mul(4));
        header.insert(
            hf.clone(),
            json!({"dtype": "F32", "shape": m.info.shape(), "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let bytes_total = offset;
    let mut head = serde_json::to_vec(&Value::Object(header)).map_err(|e| GgufError::Invalid {
        path: path.to_path_buf(),
        field: "safetensors header".into(),
        reason: e.to_string(),
    })?;
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let file = fs::File::create(path).map_err(|e| GgufError::io(path, "create", e))?;
    let mut w = BufWriter::with_capacity(1 << 22, file);
    let werr = |e| GgufError::io(path, "write", e);
    w.write_all(&(head.len() as u64).to_le_bytes()).map_err(werr)?;
    w.write_all(&head).map_err(werr)?;
    let total = plan.tensors.len();
    progress(ImportProgress {
        tensors_done: 0,
        tensors_total: total,
        bytes_done: 0,
        bytes_total,
        tensor: String::new(),
    });
    let mut done_bytes = 0u64;
    for (i, (hf, m)) in plan.tensors.iter().enumerate() {
        let mut values = g.dequantize_info(m.info)?;
        if let Permute::Heads(n_head) = m.permute {
            values = unpermute(g, m.info, &values, n_head)?;
        }
        write_f32s(&mut w, &values).map_err(werr)?;
        done_bytes += values.len() as u64 * 4;
        progress(ImportProgress {
            tensors_done: i + 1,
            tensors_total: total,
            bytes_done: done_bytes,
            bytes_total,
            tensor: hf.clone(),
        });
    }
    w.flush().map_err(werr)?;
    let params = bytes_total / 4;
    Ok((8 + head.len() as u64 + bytes_total, params))
}

fn write_f32s(w: &mut impl Write, values: &[f32]) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        w.write_all(bytemuck::cast_slice(values))
    } else {
        for v in values {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    }
}

/// Undoes llama.cpp's RoPE row permutation exactly as transformers'
/// `reverse_permute_weights`: `w.reshape(n_head, dim, 2, cols).swapaxes(1, 2).reshape(rows, cols)`
/// with `dim = rows / n_head / 2`. Works for weights (`cols` columns) and biases (`cols` = 1).
fn unpermute(
    g: &GgufFile,
    info: &GgufTensorInfo,
    w: &[f32],
    n_head: u64,
) -> Result<Vec<f32>, GgufError> {
    let shape = info.shape();
    let rows = shape.first().copied().unwrap_or(0) as usize;
    let cols = shape.get(1).copied().unwrap_or(1) as usize;
    let n_head = n_head as usize;
    if n_head.checked_mul(2).is_none_or(|m| m == 0 || rows % m != 0)
        || rows.checked_mul(cols) != Some(w.len())
    {
        return Err(GgufError::Invalid {
            path: g.path().to_path_buf(),
            field: format!("tensor '{}'", info.name),
            reason: format!("{rows} rows cannot be split into {n_head} RoPE heads of even size"),
        });
    }
    Ok(unpermute_rows(w, rows, cols, n_head))
}

pub(crate) fn unpermute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let dim = rows / n_head / 2;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n_head {
        for a in 0..2 {
            for d in 0..dim {
                let src = (h * 2 * dim + d * 2 + a) * cols;
                out.extend_from_slice(w.get(src..src + cols).unwrap_or(&[]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_matches_numpy_swapaxes() {
        // 2 heads, dim 2 (4 rows per head), 1 column: numpy gives rows [0, 2, 1, 3, 4, 6, 5, 7].
        let w: Vec<f32> = (0..8).map(|i| i as f32).collect();
        assert_eq!(unpermute_rows(&w, 8, 1, 2), vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    }

    #[test]
    fn tensor_names_map_to_hf() {
        let hp = Hparams {
            hidden: 8,
            ffn: 16,
            layers: 2,
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            eps: 1e-5,
            rope_theta: 1e4,
            context: 16,
            vocab: 10,
        };
        let name = |n: &str| hf_name(n, &hp).map(|(s, _)| s);
        assert_eq!(
            name("blk.1.attn_q.bias").as_deref(),
            Some("model.layers.1.self_attn.q_proj.bias")
        );
        assert_eq!(
            name("blk.0.ffn_down.weight").as_deref(),
            Some("model.layers.0.mlp.down_proj.weight")
        );
        assert_eq!(name("blk.2.ffn_down.weight"), None);
        assert_eq!(name("blk.01.ffn_down.weight"), None);
        assert_eq!(name("blk.0.ffn_down.bias"), None);
        assert_eq!(name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(expected_shape("model.layers.0.self_attn.k_proj.weight", &hp), vec![4, 8]);
        assert_eq!(expected_shape("model.layers.0.mlp.down_proj.weight", &hp), vec![8, 16]);
    }
}
