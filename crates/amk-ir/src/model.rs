//! Opening a model from a path a user typed: a Hugging Face directory, or a GGUF file that is
//! imported once into the cache and then opened as a Hugging Face directory.

use crate::cache;
use crate::chat::{ChatError, ChatTemplate};
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::config::{ConfigError, ModelConfig};
use crate::gguf::{self, GgufError, ImportProgress};
use crate::graph::{DecodeGraph, GraphError};
use crate::tokenizer::{Tokenizer, TokenizerError};
use std::path::{Path, PathBuf};

/// Any error opening a model, naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "{}: no such file or directory; give a Hugging Face model directory (with config.json) \
         or a .gguf file",
        path.display()
    )]
    NotFound { path: PathBuf },
    #[error(
        "{} is a file but not a GGUF file (it does not start with `GGUF`); give a Hugging Face \
         model directory or a .gguf file",
        path.display()
    )]
    NotAModel { path: PathBuf },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(
        "{}: the tokenizer has {tokenizer} tokens but config.json says vocab_size = {config}; \
         they come from different models",
        path.display()
    )]
    VocabMismatch { path: PathBuf, tokenizer: usize, config: usize },
}

/// A model ready for the pipeline: its checked config, decode graph and checkpoint, all
/// tensors the graph reads present with the right shapes.
#[derive(Debug)]
pub struct Model {
    /// The Hugging Face directory the model was read from (the import, for a GGUF file).
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub graph: DecodeGraph,
    pub checkpoint: Checkpoint,
}

impl Model {
    /// Opens `path`, importing a GGUF file into the cache first (once; later opens reuse the
    /// import). `on_import` sees the import's progress.
    pub fn open(
        path: &Path,
        on_import: &mut dyn FnMut(ImportProgress),
    ) -> Result<Model, ModelError> {
        let (dir, cached) = resolve(path, on_import)?;
        match Self::open_dir(&dir) {
            // An earlier import in the cache whose files are damaged (truncated, say) is
            // derived data: import the GGUF again rather than fail on every run. A model the
            // checks refuse is refused again, without a re-import.
            Err(e) if cached && damaged(&e) => {
                tracing::warn!(
                    "the cached import {} does not open ({e}); importing {} again",
                    dir.display(),
                    path.display()
                );
                import(path, &dir, on_import)?;
                Self::open_dir(&dir)
            }
            other => other,
        }
    }

    /// Opens a Hugging Face directory.
    pub fn open_dir(dir: &Path) -> Result<Model, ModelError> {
        let _span = tracing::info_span!("import", dir = %dir.display()).entered();
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let graph = DecodeGraph::build(&config);
        let checkpoint = Checkpoint::open(dir)?;
        checkpoint.check(&graph.weights)?;
        Ok(Model { dir: dir.to_owned(), config, graph, checkpoint })
    }

    /// The model's tokenizer, checked against the config's vocabulary.
    pub fn tokenizer(&self) -> Result<Tokenizer, ModelError> {
        let tok = Tokenizer::from_dir(&self.dir)?;
        if tok.vocab_size() > self.config.vocab_size {
            return Err(ModelError::VocabMismatch {
                path: tok.path().to_owned(),
                tokenizer: tok.vocab_size(),
                config: self.config.vocab_size,
            });
        }
        Ok(tok)
    }

    /// The model's chat template, if it has one.
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>, ModelError> {
        Ok(ChatTemplate::from_dir(&self.dir)?)
    }
}

/// Whether opening a directory failed on its files' integrity (unreadable, truncated or
/// corrupt), rather than on what a well-formed model says.
fn damaged(e: &ModelError) -> bool {
    use crate::checkpoint::CheckpointError as C;
    match e {
        ModelError::Config(c) => matches!(c, ConfigError::Io { .. } | ConfigError::Json { .. }),
        ModelError::Checkpoint(c) => matches!(
            c,
            C::NotFound { .. }
                | C::Io { .. }
                | C::TooShort { .. }
                | C::HeaderTooLarge { .. }
                | C::HeaderBeyondFile { .. }
                | C::HeaderNotJson { .. }
                | C::BadEntry { .. }
                | C::OffsetsOutOfBounds { .. }
                | C::Invalid { .. }
        ),
        _ => false,
    }
}

/// True if the file starts with GGUF's magic.
fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok()
        && &magic == b"GGUF"
}

/// Where a GGUF file's import lives in the cache: the known model's folder, or one keyed by
/// the file's name, size and modification time (so an edited file is imported again).
pub fn import_dir_for(gguf: &Path) -> PathBuf {
    let canonical = gguf.canonicalize().unwrap_or_else(|_| gguf.to_owned());
    for m in cache::KNOWN_MODELS {
        if m.gguf_path().canonicalize().ok().as_deref() == Some(canonical.as_path()) {
            return m.hf_dir();
        }
    }
    let meta = std::fs::metadata(gguf).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let stem = gguf.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let stem: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    cache::cache_dir().join("gguf").join(format!("{stem}-{size:x}-{mtime:x}"))
}

/// Turns a user's path into a Hugging Face directory, importing a GGUF file if needed; the flag
/// says whether the directory is an earlier import found in the cache.
fn resolve(
    path: &Path,
    on_import: &mut dyn FnMut(ImportProgress),
) -> Result<(PathBuf, bool), ModelError> {
    if path.is_dir() {
        return Ok((path.to_owned(), false));
    }
    if !path.exists() {
        return Err(ModelError::NotFound { path: path.to_owned() });
    }
    if !is_gguf(path) {
        return Err(ModelError::NotAModel { path: path.to_owned() });
    }
    let out = import_dir_for(path);
    if out.join(gguf::IMPORT_MARKER).is_file() && out.join("config.json").is_file() {
        return Ok((out, true));
    }
    import(path, &out, on_import)?;
    Ok((out, false))
}

/// Imports the GGUF file `path` into the cache directory `out`, in its own span.
fn import(
    path: &Path,
    out: &Path,
    on_import: &mut dyn FnMut(ImportProgress),
) -> Result<(), ModelError> {
    let _span = tracing::info_span!("import_gguf", file = %path.display()).entered();
    gguf::import_gguf(path, out, on_import)?;
    Ok(())
}
