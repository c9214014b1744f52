//! amk-runtime: runs a model's decode step, one token at a time.
//!
//! Contract: a [`Backend`] turns (token, position) into the next token greedily, keeping its own
//! key/value caches; [`generate`] drives any backend over a prompt and stops at an end-of-
//! sequence id, the token budget, or the context's end. [`cpu::CpuReference`] is the f32
//! reference every other backend is checked against.

pub mod agreement;
pub mod cpu;
pub mod gpu;
pub mod kernels;
pub mod quant;
pub mod schedule_exec;
pub mod trace;

use std::time::{Duration, Instant};

/// What can go wrong while running a model.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the model graph is not runnable: {0}")]
    Graph(String),
    #[error("weight `{name}` has {found} elements, the graph needs {expected}")]
    WeightSize { name: String, expected: usize, found: usize },
    #[error("loading weight `{name}`: {message}")]
    WeightLoad { name: String, message: String },
    #[error("token id {token} is outside the vocabulary (vocab_size {vocab_size})")]
    TokenOutOfRange { token: u32, vocab_size: usize },
    #[error(
        "position {position} cannot be decoded: {filled} positions are cached and the model's \
         context (max_position_embeddings) is {max}"
    )]
    Position { position: usize, filled: usize, max: usize },
    #[error("the prompt is empty; give at least one token")]
    EmptyPrompt,
    #[error(
        "the prompt has {prompt} tokens but the model's context (max_position_embeddings) holds \
         {max}; shorten the prompt"
    )]
    PromptTooLong { prompt: usize, max: usize },
    #[error("schedule execution failed: {0}")]
    Schedule(String),
    #[error("backend `{backend}` is not available: {reason}")]
    Unavailable { backend: &'static str, reason: String },
    #[error("gpu backend: {0}")]
    Gpu(Box<gpu::GpuError>),
}

/// A decode engine: one call, one token.
pub trait Backend {
    /// Short name for reports (`cpu`, `gpu`).
    fn name(&self) -> &'static str;
    /// The longest sequence the backend can hold.
    fn max_positions(&self) -> usize;
    /// Forgets the cached sequence.
    fn reset(&mut self);
    /// Feeds `token` at `position` (which must be at most the number of positions cached) and
    /// returns the greedy next token.
    fn step(&mut self, token: u32, position: usize) -> Result<u32, RuntimeError>;
    /// The logits of the last step, where the backend keeps them on the host.
    fn logits(&self) -> Option<&[f32]>;
}

/// Checks a step's token and position against the vocabulary and the positions a backend
/// holds (for backends whose caches are preallocated).
pub(crate) fn check_step(
    token: u32,
    position: usize,
    vocab_size: usize,
    max_positions: usize,
) -> Result<(), RuntimeError> {
    if token as usize >= vocab_size {
        return Err(RuntimeError::TokenOutOfRange { token, vocab_size });
    }
    if position >= max_positions {
        return Err(RuntimeError::Position { position, filled: position, max: max_positions });
    }
    Ok(())
}

/// How to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// At most this many new tokens (an end-of-sequence token counts and is included).
    pub max_new_tokens: usize,
    /// Ids that end generation.
    pub stop_tokens: Vec<u32>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndOfSequence,
    MaxNewTokens,
    ContextFull,
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    pub generated: Vec<u32>,
    pub stop: StopReason,
    /// Time spent feeding the prompt (its last step yields the first new token).
    pub prompt_time: Duration,
    /// Time spent on the steps that yielded the second new token onwards.
    pub decode_time: Duration,
}

impl Generation {
    /// Mean time per generated token over the whole run, prompt included.
    pub fn ms_per_token(&self) -> f64 {
        let n = self.generated.len().max(1) as f64;
        (self.prompt_time + self.decode_time).as_secs_f64() * 1000.0 / n
    }

    /// Decode speed: tokens per second after the first.
    pub fn decode_tokens_per_s(&self) -> f64 {
        let n = self.generated.len().saturating_sub(1) as f64;
        if n == 0.0 {
            return 0.0;
        }
        n / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Greedy decoding: feeds `prompt` then generates until a stop token, the budget or the context
/// runs out, calling `on_token` with each new token as soon as it is known.
pub fn generate(
    backend: &mut dyn Backend,
    prompt: &[u32],
    options: &GenerateOptions,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation, RuntimeError> {
    if prompt.is_empty() {
        return Err(RuntimeError::EmptyPrompt);
    }
    let max = backend.max_positions();
    if prompt.len() > max {
        return Err(RuntimeError::PromptTooLong { prompt: prompt.len(), max });
    }
    backend.reset();
    let mut generated = Vec::new();
    if options.max_new_tokens == 0 {
        return Ok(Generation {
            generated,
            stop: StopReason::MaxNewTokens,
            prompt_time: Duration::ZERO,
            decode_time: Duration::ZERO,
        });
    }
    let start = Instant::now();
    let mut next = 0;
    for (pos, &tok) in prompt.iter().enumerate() {
        next = backend.step(tok, pos)?;
    }
    let prompt_time = start.elapsed();
    let start = Instant::now();
    let mut pos = prompt.len();
    let stop = loop {
        generated.push(next);
        on_token(next);
        if options.stop_tokens.contains(&next) {
            break StopReason::EndOfSequence;
        }
        if generated.len() >= options.max_new_tokens {
            break StopReason::MaxNewTokens;
        }
        if pos >= max {
            break StopReason::ContextFull;
        }
        next = backend.step(next, pos)?;
        pos += 1;
    };
    Ok(Generation { generated, stop, prompt_time, decode_time: start.elapsed() })
}
