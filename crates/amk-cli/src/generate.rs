//! `amk generate`: greedy decoding of one or more prompts.

use crate::progress::{weight_bar, ImportBar};
use amk_ir::chat::ChatMessage;
use amk_ir::Model;
use amk_runtime::cpu::CpuReference;
use amk_runtime::schedule_exec::ScheduleExecutor;
use amk_runtime::{generate, Backend, GenerateOptions, StopReason};
use amk_schedule::schedule::BufferKind;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Generate text greedily (argmax at every step) from a prompt.
///
/// Streams the text to stdout as it is produced and ends with tokens/s on stderr. With --json,
/// prints one JSON object per prompt and line instead: {"prompt", "prompt_ids",
/// "generated_ids", "text", "ms_per_token", ...}; scripts and benchmarks rely on these fields.
/// The prompt is tokenized as written: special tokens such as <|im_start|> are recognised and
/// no BOS token is added unless the model's tokenizer.json adds one; --chat wraps it in the
/// model's chat template instead.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Hugging Face model directory or .gguf file.
    #[arg(long, short)]
    pub model: PathBuf,
    /// The prompt text.
    #[arg(long, short, required_unless_present = "prompts_file", conflicts_with = "prompts_file")]
    pub prompt: Option<String>,
    /// A JSON file holding a list of prompts: strings, or objects with a "prompt" field (such
    /// as fixtures/smollm2_golden.json's lists, or an object whose first list is used).
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// Stop after this many new tokens (an end-of-sequence token counts).
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Where to run: the CPU (the f32 reference, or the schedule executor with --schedule), the
    /// GPU megakernel, or the GPU when one is usable. Options that tune the GPU kernel (--trace,
    /// --no-stage, --no-overlap, --block-threads, --watchdog) are ignored on the CPU, with a
    /// note.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Print one JSON object per prompt instead of streaming text: `ms_per_token` is the whole
    /// run's wall time (prompt included) per generated token, `tokens_per_s` the decode speed
    /// after the first new token.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gpu: crate::gpu::GpuArgs,
    /// Wrap each prompt as a user message in the model's chat template (from
    /// tokenizer_config.json, chat_template.jinja or the GGUF metadata).
    #[arg(long)]
    pub chat: bool,
}

/// Which backend runs the decode steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The f32 CPU reference (exact; reproduces Hugging Face's fp32 decodes).
    Cpu,
    /// The CUDA megakernel.
    Gpu,
    /// The GPU when one is usable, else the CPU reference.
    Auto,
}

/// One line of `--json` output.
#[derive(Debug, serde::Serialize)]
struct JsonRecord<'a> {
    prompt: &'a str,
    prompt_ids: &'a [u32],
    generated_ids: &'a [u32],
    text: String,
    ms_per_token: f64,
    tokens_per_s: f64,
    stop_reason: StopReason,
    backend: &'static str,
}

/// The top level of a prompts file: a list, or an object whose first list (in file order,
/// which `serde_json::Value` would not keep) holds the prompts.
enum PromptsJson {
    List(Vec<serde_json::Value>),
    ObjectWithList(Option<Vec<serde_json::Value>>),
    Other,
}

impl<'de> serde::Deserialize<'de> for PromptsJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PromptsJson;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of prompts or an object holding one")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element()? {
                    items.push(v);
                }
                Ok(PromptsJson::List(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut first = None;
                while let Some((_, v)) = map.next_entry::<String, serde_json::Value>()? {
                    if first.is_none() {
                        if let serde_json::Value::Array(items) = v {
                            first = Some(items);
                        }
                    }
                }
                Ok(PromptsJson::ObjectWithList(first))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(PromptsJson::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(PromptsJson::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(PromptsJson::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(PromptsJson::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(PromptsJson::Other)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(PromptsJson::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads `--prompts-file`.
fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read prompts file {}", path.display()))?;
    let value: PromptsJson = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let list = match &value {
        PromptsJson::List(items) => items,
        PromptsJson::ObjectWithList(Some(items)) => items,
        PromptsJson::ObjectWithList(None) => {
            bail!("{}: the object holds no list of prompts", path.display())
        }
        PromptsJson::Other => bail!("{}: expected a list of prompts", path.display()),
    };
    let mut prompts = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        match item {
            serde_json::Value::String(s) => prompts.push(s.clone()),
            serde_json::Value::Object(o) => match o.get("prompt").and_then(|p| p.as_str()) {
                Some(s) => prompts.push(s.to_owned()),
                None => bail!("{}: entry {i} has no string field \"prompt\"", path.display()),
            },
            _ => bail!("{}: entry {i} is neither a string nor an object", path.display()),
        }
    }
    if prompts.is_empty() {
        bail!("{}: the list of prompts is empty", path.display());
    }
    Ok(prompts)
}

/// The GPU-only options given with values other than their defaults (`--config` counts only
/// without `--schedule`, which the CPU can run, and the CPU reference emulates its precision
/// plan).
fn gpu_only_options(gpu: &crate::gpu::GpuArgs) -> Vec<&'static str> {
    let d = crate::gpu::GpuArgs::default();
    let mut v = Vec::new();
    if gpu.config.is_some() && gpu.schedule.is_none() {
        v.push("--config (except its precision plan)");
    }
    if gpu.trace {
        v.push("--trace");
    }
    if gpu.no_stage {
        v.push("--no-stage");
    }
    if gpu.no_overlap {
        v.push("--no-overlap");
    }
    if gpu.block_threads != d.block_threads {
        v.push("--block-threads");
    }
    if gpu.watchdog != d.watchdog {
        v.push("--watchdog");
    }
    v
}

/// Builds the requested backend.
fn make_backend(args: &GenerateArgs, model: &Model, quiet: bool) -> Result<Box<dyn Backend>> {
    let gpu_ok = amk_runtime::gpu::cuda_available();
    let use_gpu = match args.backend {
        BackendChoice::Gpu => true,
        BackendChoice::Cpu => false,
        BackendChoice::Auto => gpu_ok.is_ok(),
    };
    if use_gpu {
        if let Err(why) = gpu_ok {
            return Err(crate::gpu::no_gpu_for_backend(why));
        }
        return Ok(Box::new(crate::gpu::build_backend(model, &args.gpu, quiet)?));
    }
    if args.backend == BackendChoice::Auto && !quiet {
        if let Err(why) = gpu_ok {
            eprintln!("amk: no usable GPU ({why}); running on the CPU");
        }
    }
    let ignored = gpu_only_options(&args.gpu);
    if !ignored.is_empty() && !quiet {
        eprintln!("amk: cpu: ignoring what tunes the GPU kernel: {}", ignored.join(", "));
    }
    // The CPU is f32 unless a precision is asked for explicitly; then it emulates it (weights
    // rounded or quantized as the GPU stores them, f32 arithmetic).
    let precision = args.gpu.precision.unwrap_or(crate::gpu::Precision::F32);
    // With --schedule the matrices' formats are the schedule's buffers', not the knobs' plan.
    let formats = match args.gpu.schedule {
        Some(_) => precision.weight_dtype().into(),
        None => crate::gpu::weight_precision(precision, args.gpu.config.as_deref())?,
    };
    if precision != crate::gpu::Precision::F32 && !quiet {
        let plan =
            if args.gpu.schedule.is_some() { ", matrices in the schedule's formats" } else { "" };
        eprintln!(
            "amk: cpu: emulating {formats} weights{plan} (rounded or quantized as the GPU stores \
             them) in f32 arithmetic"
        );
    }
    if args.gpu.schedule.is_some() {
        // A given schedule runs on the CPU schedule executor, after the same proof a launch
        // needs: an edited schedule is never run unverified, on either backend.
        let (schedule, facts) = crate::gpu::schedule_for(model, &args.gpu)?;
        let verified = crate::gpu::verify_or_refuse(&schedule, &facts)?;
        if !quiet {
            eprintln!("amk: cpu: running the verified schedule on the CPU schedule executor");
        }
        let schedule = std::sync::Arc::new(verified.schedule().clone());
        let weights = schedule.buffers.iter().filter(|b| b.kind == BufferKind::Weight).count();
        let bar = weight_bar(weights, "loading weights");
        let exec = ScheduleExecutor::from_model_with(
            model,
            schedule,
            precision.weight_dtype(),
            &mut |done, _| bar.set_position(done as u64),
        )?;
        bar.finish_and_clear();
        return Ok(Box::new(exec));
    }
    if !quiet && precision == crate::gpu::Precision::F32 {
        eprintln!("amk: cpu: the f32 CPU reference (the model graph, interpreted)");
    }
    let bar = weight_bar(model.graph.weights.len(), "loading weights");
    let cpu = CpuReference::from_model_with(model, formats, &mut |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    Ok(Box::new(cpu))
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let prompts = match (&args.prompt, &args.prompts_file) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(file)) => read_prompts(file)?,
        (None, None) => bail!("give --prompt TEXT or --prompts-file FILE.json"),
    };
    let mut bar = ImportBar::new();
    let model = Model::open(&args.model, &mut |p| bar.update(&p))
        .with_context(|| format!("opening model {}", args.model.display()))?;
    bar.finish();
    let tokenizer = model.tokenizer()?;
    let template = if args.chat {
        match model.chat_template()? {
            Some(t) => Some(t),
            None => bail!(
                "--chat: {} has no chat template (tokenizer_config.json `chat_template` or \
                 chat_template.jinja); pass the prompt without --chat",
                model.dir.display()
            ),
        }
    } else {
        None
    };

    // Tokenize every prompt before the (slow) weight load, so bad input fails fast.
    let mut encoded = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        // Which prompt, for errors: the prompts file's entry, or the --prompt text.
        let which = || match &args.prompts_file {
            Some(f) => format!("{} entry {i} ({prompt:?})", f.display()),
            None => format!("--prompt {prompt:?}"),
        };
        let text = match &template {
            Some(t) => t
                .render(&[ChatMessage::new("user", prompt.as_str())], true)
                .with_context(|| format!("rendering the chat template for {}", which()))?,
            None => prompt.clone(),
        };
        if text.is_empty() && template.is_some() {
            bail!(
                "{}: the model's chat template rendered it as an empty string; check the \
                 template (tokenizer_config.json `chat_template` or chat_template.jinja)",
                which()
            );
        }
        let ids = tokenizer.encode(&text).with_context(|| format!("tokenizing {}", which()))?;
        let max = model.config.max_position_embeddings;
        if ids.len() > max {
            bail!(
                "the prompt {:?} is {} tokens long but the model's context \
                 (max_position_embeddings in {}) holds {max}; shorten it",
                truncate(prompt, 60),
                ids.len(),
                model.dir.join("config.json").display()
            );
        }
        encoded.push(ids);
    }

    let mut backend = make_backend(&args, &model, args.json)?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        stop_tokens: model.config.eos_token_ids.clone(),
    };
    let stdout = std::io::stdout();
    for (i, (prompt, ids)) in prompts.iter().zip(&encoded).enumerate() {
        let mut stream = tokenizer.stream(false);
        let mut out = stdout.lock();
        if !args.json && prompts.len() > 1 {
            writeln!(out, "--- prompt {}: {prompt:?}", i + 1)?;
        }
        let mut stream_err = None;
        let result = generate(backend.as_mut(), ids, &options, &mut |tok| {
            if args.json || stream_err.is_some() {
                return;
            }
            match stream.step(tok) {
                Ok(Some(piece)) => {
                    let _ = out.write_all(piece.as_bytes());
                    let _ = out.flush();
                }
                Ok(None) => {}
                Err(e) => stream_err = Some(e),
            }
        })?;
        if let Some(e) = stream_err {
            return Err(e.into());
        }
        if args.json {
            let record = JsonRecord {
                prompt,
                prompt_ids: ids,
                generated_ids: &result.generated,
                text: tokenizer.decode(&result.generated, false)?,
                ms_per_token: result.ms_per_token(),
                tokens_per_s: result.decode_tokens_per_s(),
                stop_reason: result.stop,
                backend: backend.name(),
            };
            writeln!(out, "{}", serde_json::to_string(&record)?)?;
        } else {
            if let Some(rest) = stream.finish()? {
                out.write_all(rest.as_bytes())?;
            }
            writeln!(out)?;
            out.flush()?;
            eprintln!(
                "[{}] {} prompt tokens in {:.2} s, {} new tokens, {:.1} tokens/s ({}, {:.1} ms/token)",
                backend.name(),
                ids.len(),
                result.prompt_time.as_secs_f64(),
                result.generated.len(),
                result.decode_tokens_per_s(),
                match result.stop {
                    StopReason::EndOfSequence => "stopped at end of sequence",
                    StopReason::MaxNewTokens => "stopped at --max-new-tokens",
                    StopReason::ContextFull => "stopped at the end of the context",
                },
                result.ms_per_token()
            );
        }
    }
    Ok(())
}

/// The first `n` characters of `s`, for error messages.
fn truncate(s: &str, n: usize) -> String {
    let mut t: String = s.chars().take(n).collect();
    if s.chars().count() > n {
        t.push_str("...");
    }
    t
}
