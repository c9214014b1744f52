//! GGUF import: reads llama.cpp's GGUF v2/v3 files and converts llama-family models into a
//! Hugging Face directory (`config.json`, `model.safetensors`, `tokenizer.json`, ...).
//!
//! The file is untrusted. [`GgufFile`] checks every count, length and offset in the header
//! against the bytes actually present before it allocates anything, and reports where a bad
//! or truncated file went wrong; nothing here panics on file data. Dequantization matches
//! gguf-py's `dequantize` bit for bit, and [`import_gguf`] reproduces what Hugging Face
//! transformers does when it loads a GGUF checkpoint (names, RoPE row un-permutation, config
//! and tokenizer), so a GGUF import and the matching HF checkpoint load into the same model.

mod dequant;
mod error;
mod import;
mod reader;
mod tokenizer;

pub use error::GgufError;
pub use import::{
    import_gguf, import_gguf_with, ImportOptions, ImportProgress, ImportSummary, IMPORT_MARKER,
};
pub use reader::{GgmlType, GgufFile, GgufTensorInfo, MetaArray, MetaValue};
