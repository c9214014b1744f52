//! The pipeline's stages one at a time: `amk ir`, `amk schedule`, `amk verify`. Each reads the
//! previous stage's artifact and writes its own, so a person or a search loop can edit
//! `schedule.ron` by hand, re-verify it and go on.

use crate::progress::ImportBar;
use amk_ir::graph::DecodeGraph;
use amk_ir::Model;
use amk_schedule::{lower, Schedule, ScheduleConfig};
use amk_verify::{verify, LaunchFacts};
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Write a model's decode-step graph as model.ir.ron.
#[derive(Debug, Args)]
pub struct IrArgs {
    /// Hugging Face model directory or .gguf file.
    pub model: PathBuf,
    /// Where to write the graph.
    #[arg(short, long, default_value = "model.ir.ron")]
    pub output: PathBuf,
}

/// Lower a model (or its model.ir.ron) to a schedule of tasks on workers, schedule.ron.
///
/// The schedule is not trusted by anything downstream until `amk verify` proves it.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Hugging Face model directory, .gguf file, or a model.ir.ron written by `amk ir`.
    pub model: PathBuf,
    /// Knobs (RON ScheduleConfig: workers, blocks_per_sm, sm_count, o_rows, mlp_rows, down_rows,
    /// head_rows, assignment, max_positions, prefetch_depth); absent fields keep defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to write the schedule.
    #[arg(short, long, default_value = "schedule.ron")]
    pub output: PathBuf,
}

/// Prove a schedule deadlock-free, race-free, co-resident and launch-to-launch safe.
///
/// Exit status: 0 when proven safe (the certificate is printed), 1 when unsafe (every
/// counterexample is printed: stuck workers with their waits, or racing tasks with their byte
/// ranges), 2 when the input is malformed (unreadable file, RON syntax with line and column,
/// unknown names, ids or regions out of range).
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The schedule.ron to check.
    pub schedule: PathBuf,
    /// Print the certificate or the rejection as JSON.
    #[arg(long)]
    pub json: bool,
    /// Streaming multiprocessors of the target device.
    #[arg(long, default_value_t = 132)]
    pub sms: u32,
    /// Blocks of the compiled kernel that fit on one SM at once.
    #[arg(long, default_value_t = 1)]
    pub blocks_per_sm: u32,
}

/// Reads a graph: from model.ir.ron, or built from a model.
fn load_graph(path: &Path) -> Result<DecodeGraph> {
    if path.extension().is_some_and(|e| e == "ron") {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return DecodeGraph::from_ron(&text).with_context(|| format!("in {}", path.display()));
    }
    let mut bar = ImportBar::new();
    let model = Model::open(path, &mut |p| bar.update(&p))
        .with_context(|| format!("opening model {}", path.display()))?;
    bar.finish();
    Ok(model.graph)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

pub fn run_ir(args: IrArgs) -> Result<()> {
    let graph = load_graph(&args.model)?;
    write(&args.output, &graph.to_ron())?;
    eprintln!("wrote {}: {}", args.output.display(), graph.summary());
    Ok(())
}

pub fn run_schedule(args: ScheduleArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            ScheduleConfig::from_ron(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => ScheduleConfig::default(),
    };
    let graph = load_graph(&args.model)?;
    let schedule = lower(&graph, &config)?;
    write(&args.output, &schedule.to_ron_string())?;
    let instrs: usize = schedule.workers.iter().map(|w| w.instrs.len()).sum();
    eprintln!(
        "wrote {}: {} workers, {} tasks, {} counters, {} instructions; check it with `amk verify {}`",
        args.output.display(),
        schedule.workers.len(),
        schedule.tasks.len(),
        schedule.counters.len(),
        instrs,
        args.output.display()
    );
    Ok(())
}

/// `amk verify` decides its own exit status (0, 1 or 2).
pub fn run_verify(args: VerifyArgs) -> ExitCode {
    let text = match std::fs::read_to_string(&args.schedule) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", args.schedule.display());
            return ExitCode::from(2);
        }
    };
    let schedule = match Schedule::from_ron_str(&text) {
        Ok(s) => s,
        Err(e) => {
            // The parser's messages say `schedule.ron:LINE:COLUMN`; name the real file.
            let msg = e.to_string().replacen("schedule.ron", &args.schedule.display().to_string(), 1);
            if args.json {
                println!("{}", serde_json::json!({ "malformed": msg }));
            }
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    let facts = LaunchFacts { sm_count: args.sms, blocks_per_sm: args.blocks_per_sm };
    let started = std::time::Instant::now();
    let result = verify(&schedule, &facts);
    let elapsed = started.elapsed();
    match result {
        Ok(verified) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(verified.certificate()).unwrap_or_default()
                );
            } else {
                println!("{}: {}", args.schedule.display(), verified.certificate());
                eprintln!("verified in {:.1} ms", elapsed.as_secs_f64() * 1e3);
            }
            ExitCode::SUCCESS
        }
        Err(rejection) => {
            if args.json {
                println!("{}", rejection.to_json());
            } else {
                println!("{}: {rejection}", args.schedule.display());
            }
            if rejection.errors.iter().all(|e| e.is_malformed()) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
