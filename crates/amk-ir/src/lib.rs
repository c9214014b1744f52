//! amk's model IR: one decode step of a llama-family model as a typed graph.
//!
//! Contract: everything downstream (scheduler, verifier, codegen, runtime) sees a model only
//! through this crate. A model comes in as a Hugging Face directory (`config.json`,
//! `*.safetensors`, `tokenizer.json`) or as a GGUF file, which [`gguf`] converts into such a
//! directory so one loader serves both. Importing checks every field and tensor it relies on
//! and reports what is wrong, where, and how to fix it; it never panics on bad input.

pub mod cache;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod gguf;
pub mod graph;
pub mod model;
pub mod synth;
pub mod tensor;
pub mod tokenizer;

pub use model::{Model, ModelError};
pub use tensor::{DType, WeightSpec};
