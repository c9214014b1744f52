//! `amk`: the command-line front of the amk pipeline.
//!
//! Each subcommand is one stage or a whole run: `import-gguf` and `inspect` look at models,
//! `generate` runs one. Errors go to stderr with their cause chain and a non-zero exit.

mod agree;
mod bench;
mod generate;
mod golden;
mod gpu;
mod gpu_test;
mod inspect;
mod progress;
mod search;
mod stages;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// amk (AutoMegakernel): compiles llama-family models into one persistent CUDA kernel per
/// decode step, and runs them.
///
/// MODEL arguments accept a Hugging Face directory (config.json, model.safetensors or a sharded
/// index, tokenizer.json) or a GGUF file, which is imported once into amk's cache
/// (AMK_CACHE_DIR, default ~/.cache/amk). Set AMK_LOG=info (or debug) to see each stage's
/// timing.
#[derive(Debug, Parser)]
#[command(name = "amk", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Generate(generate::GenerateArgs),
    Inspect(inspect::InspectArgs),
    ImportGguf(inspect::ImportArgs),
    Ir(stages::IrArgs),
    Schedule(stages::ScheduleArgs),
    Verify(stages::VerifyArgs),
    Build(stages::BuildArgs),
    Synth(stages::SynthArgs),
    GpuTest(gpu_test::GpuTestArgs),
    Bench(bench::BenchArgs),
    Agree(agree::AgreeArgs),
    Search(search::SearchArgs),
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AMK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Each stage is a span; its closing line carries the time it took (`time.busy`).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Inspect(args) => inspect::run_inspect(args),
        Command::ImportGguf(args) => inspect::run_import(args),
        Command::Ir(args) => stages::run_ir(args),
        Command::Schedule(args) => stages::run_schedule(args),
        Command::Verify(args) => return stages::run_verify(args),
        Command::Build(args) => stages::run_build(args),
        Command::Synth(args) => stages::run_synth(args),
        Command::GpuTest(args) => gpu_test::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Agree(args) => agree::run(args),
        Command::Search(args) => search::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
