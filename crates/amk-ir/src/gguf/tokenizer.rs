//! GGUF tokenizer metadata to Hugging Face `tokenizer.json` / `tokenizer_config.json`, as
//! transformers 5.17 converts it (checked against `fixtures/smollm2-hf`).

use super::error::GgufError;
use super::reader::GgufFile;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL`.
const TOKEN_TYPE_CONTROL: i32 = 3;
/// llama.cpp's `LLAMA_TOKEN_TYPE_USER_DEFINED`.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Texts of CONTROL tokens that end a turn or a document, as llama.cpp's end-of-generation
/// detection treats them.
pub(crate) const END_OF_GENERATION_TEXTS: &[&str] =
    &["<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>", "<|end|>"];

/// The tokenizer parts of the GGUF metadata the importer needs.
pub(crate) struct GgufVocab<'a> {
    pub tokens: &'a [String],
    pub token_types: Option<&'a [i32]>,
    pub merges: &'a [String],
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
}

impl<'a> GgufVocab<'a> {
    /// Reads and checks the tokenizer metadata; only byte-level BPE (`gpt2`) is supported.
    pub fn read(g: &'a GgufFile) -> Result<Self, GgufError> {
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(GgufError::Unsupported {
                path: g.path().to_path_buf(),
                key: "tokenizer model (tokenizer.ggml.model)".into(),
                reason: format!(
                    "'{model}' is not supported; amk imports only byte-level BPE tokenizers \
                     (tokenizer.ggml.model = \"gpt2\")"
                ),
            });
        }
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let merges = g.get_str_array("tokenizer.ggml.merges")?;
        let token_types = match g.metadata().contains_key("tokenizer.ggml.token_type") {
            true => Some(g.get_i32_array("tokenizer.ggml.token_type")?),
            false => None,
        };
        if let Some(tt) = token_types {
            if tt.len() != tokens.len() {
                return Err(GgufError::Invalid {
                    path: g.path().to_path_buf(),
                    field: "metadata key 'tokenizer.ggml.token_type'".into(),
                    reason: format!(
                        "it has {} entries but tokenizer.ggml.tokens has {}",
                        tt.len(),
                        tokens.len()
                    ),
                });
            }
        }
        let id = |key: &str| -> Result<Option<u32>, GgufError> {
            let v = g.opt_u32(key)?;
            match v {
                Some(i) if i as usize >= tokens.len() => Err(GgufError::WrongKeyType {
                    path: g.path().to_path_buf(),
                    key: key.into(),
                    expected: format!("a token id below the vocabulary size {}", tokens.len()),
                    found: i.to_string(),
                }),
                v => Ok(v),
            }
        };
        Ok(GgufVocab {
            tokens,
            token_types,
            merges,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            eot: id("tokenizer.ggml.eot_token_id")?,
            eom: id("tokenizer.ggml.eom_token_id")?,
        })
    }

    fn text(&self, id: Option<u32>) -> Option<&'a str> {
        id.and_then(|i| self.tokens.get(i as usize)).map(String::as_str)
    }

    fn token_type(&self, id: usize) -> Option<i32> {
        self.token_types.and_then(|t| t.get(id).copied())
    }

    /// End-of-generation ids: the metadata eos, eot and eom ids and every CONTROL token
    /// whose text is a known end-of-turn marker, sorted and deduplicated.
    pub fn end_of_generation_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = [self.eos, self.eot, self.eom].into_iter().flatten().collect();
        for (i, t) in self.tokens.iter().enumerate() {
            if self.token_type(i) == Some(TOKEN_TYPE_CONTROL)
                && END_OF_GENERATION_TEXTS.contains(&t.as_str())
            {
                ids.extend(u32::try_from(i).ok());
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Builds `tokenizer.json` as a JSON value.
    pub fn tokenizer_json(&self, g: &GgufFile) -> Result<Value, GgufError> {
        let invalid = |field: String, reason: String| GgufError::Invalid {
            path: g.path().to_path_buf(),
            field,
            reason,
        };
        // Later duplicates win, as in HF's `{word: i for i, word in enumerate(tokens)}`.
        let mut vocab = Map::new();
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(self.tokens.len());
        for (i, t) in self.tokens.iter().enumerate() {
            vocab.insert(t.clone(), json!(i));
            index.insert(t, i);
        }
        let mut merges = Vec::with_capacity(self.merges.len());
        for (i, m) in self.merges.iter().enumerate() {
            let field = || format!("metadata key 'tokenizer.ggml.merges' entry {i} ({m:?})");
            let mut parts = m.split(' ');
            let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(invalid(
                    field(),
                    "a merge must be two tokens separated by one space".into(),
                ));
            };
            // The tokenizers crate refuses merges whose parts or result are not in the vocab;
            // checking here names the entry.
            for piece in [a, b, &format!("{a}{b}")] {
                if !index.contains_key(piece) {
                    return Err(invalid(
                        field(),
                        format!("{piece:?} is not in tokenizer.ggml.tokens"),
                    ));
                }
            }
            merges.push(json!([a, b]));
        }

        // HF makes every CONTROL token an added special token. USER_DEFINED tokens are added
        // too but not special (our choice: HF's handling of them was not observed).
        let mut added = Vec::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let special = match self.token_type(i) {
                Some(TOKEN_TYPE_CONTROL) => true,
                Some(TOKEN_TYPE_USER_DEFINED) => false,
                _ => continue,
            };
            added.push(json!({
                "id": i,
                "content": t,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": special,
            }));
        }

        // The unknown token: the metadata's, else GPT-2's default if the vocab has it.
        let unk = self
            .text(self.unk)
            .or_else(|| index.contains_key("<|endoftext|>").then_some("<|endoftext|>"));

        // Everything below copies transformers 5.17's conversion verbatim, including choices
        // that look arbitrary for byte-level BPE (byte_fallback, fuse_unk, the SentencePiece
        // style decoder steps before ByteLevel) and the post-processor that adds no BOS even
        // when tokenizer.ggml.add_bos_token is true: the golden decodes were made this way.
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": []},
            "pre_tokenizer": {
                "type": "ByteLevel",
                "add_prefix_space": false,
                "trim_offsets": false,
                "use_regex": true
            },
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"Sequence": {"id": "B", "type_id": 1}}
                ],
                "special_tokens": {}
            },
            "decoder": {
                "type": "Sequence",
                "decoders": [
                    {"type": "ByteFallback"},
                    {"type": "Fuse"},
                    {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                    {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}
                ]
            },
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": unk,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": true,
                "byte_fallback": true,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": merges
            }
        }))
    }

    /// Builds `tokenizer_config.json`: special tokens by text from the metadata ids and the
    /// chat template. Unlike transformers 5.17 (which writes `<|im_start|>` as the eos of
    /// SmolLM2) it takes the eos text from `tokenizer.ggml.eos_token_id`.
    pub fn tokenizer_config_json(&self, chat_template: Option<&str>, max_length: u64) -> Value {
        let mut cfg = Map::new();
        cfg.insert("add_bos_token".into(), json!(false));
        cfg.insert("add_eos_token".into(), json!(false));
        cfg.insert("add_prefix_space".into(), json!(false));
        cfg.insert("clean_up_tokenization_spaces".into(), json!(true));
        cfg.insert("model_max_length".into(), json!(max_length));
        cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        for (name, id) in
            [("bos", self.bos), ("eos", self.eos), ("unk", self.unk), ("pad", self.pad)]
        {
            if let Some(text) = self.text(id) {
                cfg.insert(format!("{name}_token"), json!(text));
            }
        }
        if let Some(t) = chat_template {
            cfg.insert("chat_template".into(), json!(t));
        }
        Value::Object(cfg)
    }
}
