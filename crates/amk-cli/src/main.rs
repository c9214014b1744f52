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

/// Exit status when the output cannot be written to standard output (sysexits' EX_IOERR), so
/// that it is never taken for a result (`amk verify` gives 0, 1 and 2 meanings).
const EXIT_IO: i32 = 74;

/// Output that cannot be written ends the process cleanly instead of panicking in `println!`:
/// a reader that closed the pipe (`amk verify s.ron | head -1`) ends it as SIGPIPE ends other
/// Unix tools, silently; any other write error (a full disk) in a `print!` is one line on
/// stderr and [`EXIT_IO`]. (Commands that write through `writeln!` report such an error as any
/// other, with exit 1.)
fn handle_broken_stdout() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of SIGPIPE (Rust's runtime ignores it) before
    // any other thread exists; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if let Some(cause) = msg.strip_prefix("failed printing to stdout: ") {
            eprintln!("error: cannot write to standard output: {cause}");
            std::process::exit(EXIT_IO);
        }
        default(info)
    }));
}

fn main() -> ExitCode {
    handle_broken_stdout();
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
