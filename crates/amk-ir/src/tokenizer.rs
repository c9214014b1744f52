//! The model's tokenizer: a thin wrapper over the `tokenizers` crate reading the Hugging Face
//! `tokenizer.json`, with errors that name the file and a streaming decoder for the CLI.
//!
//! Encoding follows the file exactly: special tokens written in the text (`<|im_start|>`) are
//! recognised, and a BOS token is added only if the file's own post-processor adds one.

use std::path::{Path, PathBuf};

/// Name of the tokenizer file in a Hugging Face model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Largest `tokenizer.json` read; real ones are a few MB to a few tens of MB.
const MAX_TOKENIZER_LEN: u64 = 1 << 30;

/// An error loading or using the tokenizer; every variant that concerns the file names it.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be read.
    #[error(
        "cannot read {}: {source}; amk needs the Hugging Face tokenizer.json that came with the \
         model, beside config.json",
        file.display()
    )]
    Io { file: PathBuf, source: std::io::Error },
    /// The file is not a tokenizer the `tokenizers` crate understands.
    #[error(
        "{} is not a valid Hugging Face tokenizer.json: {detail}; re-download it or re-export it \
         with transformers' tokenizer.save_pretrained",
        file.display()
    )]
    Parse { file: PathBuf, detail: String },
    /// The prompt is empty, so there is no token to start decoding from.
    #[error("the prompt is empty; give at least one character of text to start generation from")]
    EmptyPrompt,
    /// The prompt encoded to no tokens at all.
    #[error("the prompt {prompt:?} encodes to no tokens with {}; give some text", file.display())]
    NoTokens { file: PathBuf, prompt: String },
    /// Encoding failed inside the tokenizer.
    #[error("{}: cannot encode the prompt: {detail}", file.display())]
    Encode { file: PathBuf, detail: String },
    /// Decoding failed inside the tokenizer.
    #[error("{}: cannot decode token ids: {detail}", file.display())]
    Decode { file: PathBuf, detail: String },
}

/// A loaded `tokenizer.json`: encodes prompts to ids and decodes generated ids to text.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    file: PathBuf,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("file", &self.file)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        Self::from_file(&dir.join(TOKENIZER_FILE))
    }

    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let file = path.to_path_buf();
        let io = |source| TokenizerError::Io { file: file.clone(), source };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_TOKENIZER_LEN {
            return Err(TokenizerError::Parse {
                file,
                detail: format!(
                    "the file is {len} bytes, more than the {MAX_TOKENIZER_LEN} accepted"
                ),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        // The tokenizers crate is not ours; a panic on a hostile file becomes an error here.
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes));
        match parsed {
            Ok(Ok(inner)) => {
                // Computed once: the crate rebuilds its whole vocabulary map on every query.
                let vocab = inner.get_vocab(true);
                let max_id = vocab.values().max().map_or(0, |&m| m as usize + 1);
                let vocab_size = max_id.max(vocab.len());
                Ok(Tokenizer { inner, file, vocab_size })
            }
            Ok(Err(e)) => Err(TokenizerError::Parse { file, detail: e.to_string() }),
            Err(_) => Err(TokenizerError::Parse {
                file,
                detail: "the tokenizers crate panicked while reading it".into(),
            }),
        }
    }

    /// The file this tokenizer was read from.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Encodes a prompt. Special tokens written in the text are recognised; the file's
    /// post-processor decides whether a BOS is added. An empty prompt is an error.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        if text.is_empty() {
            return Err(TokenizerError::EmptyPrompt);
        }
        let enc = self.inner.encode(text, true).map_err(|e| TokenizerError::Encode {
            file: self.file.clone(),
            detail: e.to_string(),
        })?;
        let ids = enc.get_ids().to_vec();
        if ids.is_empty() {
            return Err(TokenizerError::NoTokens { file: self.file.clone(), prompt: text.into() });
        }
        Ok(ids)
    }

    /// Decodes ids to text, keeping or dropping special tokens. Ids outside the vocabulary are
    /// skipped, as the `tokenizers` crate does.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Decode { file: self.file.clone(), detail: e.to_string() })
    }

    /// Starts an incremental decoder that turns ids into text one at a time for streaming.
    pub fn stream(&self, skip_special: bool) -> StreamDecoder<'_> {
        StreamDecoder { tok: self, skip_special, ids: Vec::new(), prefix_offset: 0, read_offset: 0 }
    }

    /// Number of token ids (one past the largest id, added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id of a token string (special tokens included), if it exists.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id, if it exists.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is a special (added, `special: true`) token such as `<|im_end|>`.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_vocabulary()
            .get_added_tokens_decoder()
            .get(&id)
            .map(|t| t.special)
            .unwrap_or(false)
    }
}

/// Incremental decoder: feed ids one at a time, get back only the new text, never a split
/// multi-byte character. Concatenating every piece (and [`StreamDecoder::finish`]) gives the
/// same text as [`Tokenizer::decode`] on all ids.
///
/// It decodes a short window of recent ids (context plus the new ones) and emits the part
/// past what the context alone decodes to, holding text back while it ends in an incomplete
/// UTF-8 sequence (U+FFFD), the scheme text-generation servers use.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    /// Start of the context window within `ids`.
    prefix_offset: usize,
    /// End of the ids whose text has been emitted.
    read_offset: usize,
}

impl StreamDecoder<'_> {
    /// Adds one id; returns the text it completes, or `None` if it must wait for more ids.
    pub fn step(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        self.emit(false)
    }

    /// Flushes text still held back at the end of generation (an incomplete UTF-8 sequence
    /// comes out as U+FFFD), so that nothing is lost.
    pub fn finish(&mut self) -> Result<Option<String>, TokenizerError> {
        self.emit(true)
    }

    fn emit(&mut self, flush: bool) -> Result<Option<String>, TokenizerError> {
        let ctx = self.ids.get(self.prefix_offset..self.read_offset).unwrap_or(&[]);
        let all = self.ids.get(self.prefix_offset..).unwrap_or(&[]);
        if all.len() == ctx.len() {
            return Ok(None);
        }
        let prefix = self.tok.decode(ctx, self.skip_special)?;
        let text = self.tok.decode(all, self.skip_special)?;
        if text.ends_with('\u{FFFD}') && !flush {
            return Ok(None);
        }
        let new = match text.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_string(),
            // The decoder rewrote the context (rare: cleanup rules); emit past the common part.
            None => {
                let common = prefix
                    .char_indices()
                    .zip(text.chars())
                    .take_while(|((_, a), b)| a == b)
                    .last()
                    .map(|((i, c), _)| i + c.len_utf8())
                    .unwrap_or(0);
                text.get(common..).unwrap_or_default().to_string()
            }
        };
        // Slide the window: the ids just emitted become the next step's context.
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        if self.prefix_offset > 0 {
            self.ids.drain(..self.prefix_offset);
            self.read_offset -= self.prefix_offset;
            self.prefix_offset = 0;
        }
        Ok(if new.is_empty() { None } else { Some(new) })
    }
}
