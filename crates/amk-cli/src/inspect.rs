//! `amk inspect` and `amk import-gguf`.

use crate::progress::ImportBar;
use amk_ir::gguf::{import_gguf_with, ImportOptions};
use amk_ir::Model;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

/// Print a model's configuration, parameter count, bytes per dtype and decode-graph summary.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Hugging Face model directory or .gguf file.
    pub model: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Convert a GGUF file (llama architecture; F32, F16, BF16, Q8_0, Q4_0, Q4_1 tensors) into a
/// Hugging Face directory: config.json, model.safetensors (f32), tokenizer.json and
/// tokenizer_config.json. The result loads like any Hugging Face checkpoint.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The .gguf file.
    pub file: PathBuf,
    /// Output directory (created; written atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace OUTPUT even if it holds something other than an earlier amk import.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run_import(args: ImportArgs) -> Result<()> {
    let mut bar = ImportBar::new();
    let summary = import_gguf_with(
        &args.file,
        &args.output,
        &ImportOptions { overwrite: args.overwrite },
        &mut |p| bar.update(&p),
    )?;
    bar.finish();
    println!(
        "imported {} into {}: {} tensors, {} parameters, {:.1} MB of f32 weights, eos ids {:?}",
        args.file.display(),
        summary.out_dir.display(),
        summary.tensors,
        summary.parameters,
        summary.safetensors_bytes as f64 / 1e6,
        summary.eos_token_ids
    );
    Ok(())
}

pub fn run_inspect(args: InspectArgs) -> Result<()> {
    let mut bar = ImportBar::new();
    let model = Model::open(&args.model, &mut |p| bar.update(&p))
        .with_context(|| format!("opening {}", args.model.display()))?;
    bar.finish();
    let params = model.checkpoint.param_count();
    let bytes = model.checkpoint.bytes_by_dtype();
    let graph_params: usize = model.graph.weights.iter().map(|w| w.numel()).sum();
    let tokenizer = model.tokenizer().ok();
    let chat = model.chat_template().ok().flatten().is_some();
    if args.json {
        let out = serde_json::json!({
            "model": args.model,
            "dir": model.dir,
            "config": model.config,
            "parameters": params,
            "graph_parameters": graph_params,
            "bytes_by_dtype": bytes,
            "graph": {
                "nodes": model.graph.graph.node_count(),
                "edges": model.graph.graph.edge_count(),
                "weights": model.graph.weights.len(),
                "summary": model.graph.summary(),
            },
            "tokenizer_vocab": tokenizer.as_ref().map(|t| t.vocab_size()),
            "chat_template": chat,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let c = &model.config;
    println!("model        {}", args.model.display());
    println!("directory    {}", model.dir.display());
    println!("architecture {}", c.architecture.hf_name());
    println!(
        "shape        {} layers, hidden {}, mlp {}, {} heads ({} kv) of dim {}, vocab {}",
        c.num_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.vocab_size
    );
    let scaling = match &c.rope.llama3 {
        Some(s) => format!(
            " (llama3: factor {}, low/high freq factor {}/{}, original context {})",
            s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position_embeddings
        ),
        None => String::new(),
    };
    let window = c.sliding_window.map_or("none".to_string(), |w| w.to_string());
    println!(
        "attention    rope theta {}{scaling}, rms eps {:e}, context {}, bias q/k/v {} o {}, \
         qk-norm {}, sliding window {window}, tied head {}",
        c.rope.theta,
        c.rms_norm_eps,
        c.max_position_embeddings,
        c.qkv_bias,
        c.o_bias,
        c.qk_norm,
        c.tie_word_embeddings
    );
    let bos = c.bos_token_id.map_or_else(|| "none".to_owned(), |b| b.to_string());
    let eos: Vec<String> = c.eos_token_ids.iter().map(u32::to_string).collect();
    println!("tokens       bos {bos}, eos {}", eos.join(", "));
    println!(
        "parameters   {params} in the checkpoint ({:.1} M), {graph_params} read per token",
        params as f64 / 1e6
    );
    for (dtype, n) in &bytes {
        println!("bytes        {dtype}: {n} ({:.1} MB)", *n as f64 / 1e6);
    }
    println!("graph        {}", model.graph.summary());
    match &tokenizer {
        Some(t) => println!("tokenizer    {} tokens", t.vocab_size()),
        None => println!("tokenizer    none (tokenizer.json missing or unreadable)"),
    }
    println!("chat         {}", if chat { "template present (use --chat)" } else { "no template" });
    Ok(())
}
