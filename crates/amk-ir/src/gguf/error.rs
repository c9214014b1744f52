//! The one error type of GGUF reading and import.

use std::path::PathBuf;

/// Everything that can go wrong reading or importing a GGUF file. Every variant names the
/// file and the field, metadata key or tensor involved, so the message alone says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The operating system refused a read, write, rename or mapping.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: String,
        #[source]
        source: std::io::Error,
    },

    /// The first four bytes are not `GGUF`.
    #[error(
        "{}: not a GGUF file: the magic is {found:02x?} ({:?}), expected \"GGUF\"; \
         pass a llama.cpp .gguf file",
        path.display(),
        String::from_utf8_lossy(found)
    )]
    BadMagic { path: PathBuf, found: [u8; 4] },

    /// The header's version is not 2 or 3.
    #[error("{}: unsupported GGUF version {version}{hint}; supported versions are 2 and 3", path.display())]
    UnsupportedVersion { path: PathBuf, version: u32, hint: String },

    /// The file ended inside a field.
    #[error(
        "{}: truncated file: it ends at byte {file_len} inside {field}, which needs {needed} \
         byte(s) from offset {offset}; the file is incomplete (re-download it)",
        path.display()
    )]
    Truncated { path: PathBuf, field: String, offset: u64, needed: u64, file_len: u64 },

    /// A header field holds a value that cannot be right (an absurd count, a bad type code,
    /// invalid UTF-8, a misaligned offset, ...).
    #[error("{}: {field} is invalid: {reason}", path.display())]
    Invalid { path: PathBuf, field: String, reason: String },

    /// A tensor's data range does not lie inside the file.
    #[error(
        "{}: tensor '{tensor}' has its data at bytes {start}..{end}, outside the file \
         ({file_len} bytes); the file is truncated or corrupt",
        path.display()
    )]
    TensorOutOfBounds { path: PathBuf, tensor: String, start: u64, end: u64, file_len: u64 },

    /// A tensor is stored in a ggml type amk cannot dequantize.
    #[error(
        "{}: tensor '{tensor}' is stored as {ggml_type}, which amk cannot dequantize; supported \
         types: {supported}; re-quantize the model to one of them (e.g. llama-quantize ... Q8_0)",
        path.display()
    )]
    UnsupportedTensorType { path: PathBuf, tensor: String, ggml_type: String, supported: String },

    /// A required metadata key is absent.
    #[error("{}: missing metadata key '{key}'{hint}", path.display())]
    MissingKey { path: PathBuf, key: String, hint: String },

    /// A metadata key holds a value of the wrong type or an unusable value.
    #[error("{}: metadata key '{key}' should be {expected}, but it is {found}", path.display())]
    WrongKeyType { path: PathBuf, key: String, expected: String, found: String },

    /// The model architecture is not one amk can import.
    #[error(
        "{}: unsupported architecture '{architecture}' (general.architecture); supported: {supported}",
        path.display()
    )]
    UnsupportedArchitecture { path: PathBuf, architecture: String, supported: String },

    /// The model uses a feature amk cannot honour (rope scaling, partial rotary, a tokenizer
    /// model other than byte-level BPE, ...).
    #[error("{}: unsupported {key}: {reason}", path.display())]
    Unsupported { path: PathBuf, key: String, reason: String },

    /// The file holds tensors the importer does not know where to put.
    #[error(
        "{}: unknown tensor name(s) {names:?}: amk does not know how to map them to the Hugging \
         Face llama layout and will not silently drop weights",
        path.display()
    )]
    UnknownTensors { path: PathBuf, names: Vec<String> },

    /// A tensor the model needs is absent.
    #[error("{}: missing tensor '{tensor}' ({why})", path.display())]
    MissingTensor { path: PathBuf, tensor: String, why: String },

    /// A tensor's shape disagrees with the metadata.
    #[error(
        "{}: tensor '{tensor}' has shape {found:?} (PyTorch order), expected {expected:?} from \
         the metadata",
        path.display()
    )]
    ShapeMismatch { path: PathBuf, tensor: String, expected: Vec<u64>, found: Vec<u64> },

    /// The output directory holds something that is not a previous amk import.
    #[error(
        "{}: output directory is not empty and is not a previous amk import (no {marker}); \
         choose another directory or pass --overwrite",
        path.display()
    )]
    OutputNotEmpty { path: PathBuf, marker: &'static str },

    /// The output directory holds the GGUF file being imported: replacing the directory would
    /// delete it.
    #[error(
        "{}: the output directory holds the GGUF file being imported ({}), which replacing it \
         would delete; choose an output directory that does not contain it",
        out_dir.display(),
        gguf.display()
    )]
    OutputHoldsInput { out_dir: PathBuf, gguf: PathBuf },
}

impl GgufError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: impl Into<String>,
        source: std::io::Error,
    ) -> Self {
        GgufError::Io { path: path.into(), action: action.into(), source }
    }
}
