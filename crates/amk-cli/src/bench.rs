//! `amk bench`: amk's megakernel against the baselines a user would pick instead (issue 6).
//!
//! On a machine with a CUDA GPU, for the real model (`--model` or `--gguf`) and synthetic
//! shapes (`--synth`), per precision and context: the megakernel's ms per token (median of the
//! per-launch CUDA-event times [`GpuBackend::time_decode`] gives for batches of launches queued
//! back to back, after the KV cache was filled to the context), the bytes each token streams and the fraction of
//! the device's measured read bandwidth that is. For the real model also the time from checkpoint to
//! ready kernel, stage by stage, with NVRTC's on-disk cache bypassed. `--baselines` runs
//! `bench/baselines.py` (PyTorch and transformers) as a subprocess on the same models and
//! merges its rows. Then `bench.json`, a table on stdout and `bench.svg`.
//!
//! Everything after the measurements (merging, bandwidth, speedups, the table and the plot) is
//! pure functions over [`Row`]s, tested without a GPU.

use crate::gpu::{
    backend_for, build_backend, kv_bytes_per_position, schedule_for, scratch_dir, verify_or_refuse,
    weight_bytes_as, GpuArgs, Precision,
};
use crate::stages::SynthPreset;
use amk_ir::Model;
use amk_runtime::gpu::GpuBackend;
use amk_runtime::quant::WeightPrecision;
use amk_runtime::Backend;
use amk_schedule::{PrecisionPlan, WeightFormat};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// DESIGN.md section 2's measured H100 read bandwidth (3.08 TB/s), the denominator of the
/// bandwidth fraction when no baseline run measured the device's bandwidth.
pub const DESIGN_COPY_GBPS: f64 = 3080.0;

/// Synthetic shapes `bench/baselines.py --shape` knows.
const SCRIPT_SHAPES: [&str; 3] = ["smollm2-135m", "smollm2-360m", "llama3-2-1b"];

/// Time amk's megakernel against PyTorch/transformers baselines (batch-1 greedy decode) and
/// write bench.json, bench.svg and a table.
///
/// Needs a CUDA GPU; --baselines also needs python3 with torch and transformers. Each amk point
/// is the median, over batches of 20 of --tokens launches queued back to back (launches overlap
/// on sm_90), of each batch's CUDA-event time per launch, after the
/// KV cache was filled to the context (tokens already cached when timing starts). Bytes per
/// token = weights in that precision + the KV cache read at that context (amk keeps f32 keys
/// and values; the baselines bf16); the bandwidth fraction is against the read bandwidth the
/// baseline script measured (`read_gbps`, else its copy's read rate), else DESIGN.md's 3080 GB/s. Speedups are
/// baseline ms / amk ms, per model and context, from the same run.
///
/// A full run can outlast a time limit: run pieces (--no-amk with --baselines, or
/// bench/baselines.py alone) and combine them with --merge.
///
/// Example: amk bench --model DIR --name smollm2-135m --synth smollm2-360m,llama3-2-1b
/// --baselines bench/baselines.py --out docs/bench
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The real model: a Hugging Face directory (or a .gguf file, imported once into amk's
    /// cache).
    #[arg(long, short)]
    pub model: Option<PathBuf>,
    /// The real model as a GGUF file, imported afresh into a temporary directory (the import is
    /// timed as the first stage of checkpoint to ready kernel).
    #[arg(long, conflicts_with = "model")]
    pub gguf: Option<PathBuf>,
    /// Name of the real model in the results [default: its folder or file name].
    #[arg(long)]
    pub name: Option<String>,
    /// Synthetic shapes to time too (seeded random weights; timing does not depend on values),
    /// comma-separated.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub synth: Vec<SynthPreset>,
    /// Weight precisions to time, comma-separated; one this build does not know is recorded as
    /// an error row and the others go on. An entry may add a per-op precision plan after `+`:
    /// `bf16+lm_head=int8` (classes: attention, mlp, lm_head; formats: bf16, int8), timed as
    /// the system `amk-bf16+lm_head=int8`.
    #[arg(long, value_delimiter = ',', default_value = "bf16")]
    pub precision: Vec<String>,
    /// Contexts (tokens in the KV cache when timing starts), comma-separated
    /// [default: 16,256,1024,4096; with --quick: 16,256].
    #[arg(long, value_delimiter = ',')]
    pub contexts: Option<Vec<usize>>,
    /// Tokens timed per point [default: 200; with --quick: 16].
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Launches run (and not timed) before each point.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Run this baseline script (bench/baselines.py) on the same models, contexts and token
    /// count, and merge its rows.
    #[arg(long)]
    pub baselines: Option<PathBuf>,
    /// Baseline systems to ask the script for, comma-separated [default: all it has:
    /// hf_eager, cublas_graph, compile_graph, hf_static_compile].
    #[arg(long, value_delimiter = ',')]
    pub baseline_systems: Vec<String>,
    /// The Python interpreter that runs --baselines.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Merge the rows of these JSON files (bench/baselines.py output or an earlier bench.json),
    /// comma-separated; for the same system, model and context a later file wins, and this
    /// run's rows win over all of them.
    #[arg(long, value_delimiter = ',')]
    pub merge: Vec<PathBuf>,
    /// Do not time amk (run or merge baselines, then write the report).
    #[arg(long)]
    pub no_amk: bool,
    /// Skip the checkpoint-to-ready-kernel timing.
    #[arg(long)]
    pub no_ready: bool,
    /// A smoke test: fewer tokens and contexts (and --quick for the baseline script).
    #[arg(long)]
    pub quick: bool,
    /// Directory for bench.json, bench.svg and baselines.json.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Knobs for lowering (RON ScheduleConfig).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Threads per block of the megakernel.
    #[arg(long, default_value_t = 512)]
    pub block_threads: u32,
    /// Seconds one launch may take before the run stops with the counters' values.
    #[arg(long, default_value_t = 10.0)]
    pub watchdog: f64,
}

/// One measured point: a system decoding one model at one context. Baseline rows come from
/// the script's JSON; fields this struct does not name are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// `amk-bf16`, `hf_eager`, ...: names starting with `amk` are amk's.
    pub system: String,
    pub model: String,
    pub context: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms_per_token: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Compile time where the system has one (torch.compile's first call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile_s: Option<f64>,
    /// Why there is no timing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Tokens the median was taken over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timed_tokens: Option<usize>,
    /// Weight bytes one token streams in this system's precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_bytes: Option<f64>,
    /// KV-cache bytes read per cached position (all layers, keys and values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_bytes_per_position: Option<f64>,
    /// Filled by [`annotate`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_token: Option<f64>,
    /// Filled by [`annotate`]: bytes per token over the time per token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gb_per_s: Option<f64>,
    /// Filled by [`annotate`]: `gb_per_s` over the copy bandwidth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frac_of_copy: Option<f64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Row {
    pub fn new(system: &str, model: &str, context: usize) -> Row {
        Row {
            system: system.to_owned(),
            model: model.to_owned(),
            context,
            ms_per_token: None,
            tokens_per_s: None,
            compile_s: None,
            error: None,
            timed_tokens: None,
            weight_bytes: None,
            kv_bytes_per_position: None,
            bytes_per_token: None,
            gb_per_s: None,
            frac_of_copy: None,
            extra: Map::new(),
        }
    }

    fn key(&self) -> (&str, &str, usize) {
        (&self.system, &self.model, self.context)
    }

    /// The time per token, when the row has a usable one.
    fn ms(&self) -> Option<f64> {
        self.ms_per_token.filter(|m| m.is_finite() && *m > 0.0)
    }
}

/// Whether `system` is one of amk's.
pub fn is_amk(system: &str) -> bool {
    system.starts_with("amk")
}

/// How much faster amk is than a baseline at one model and context: baseline ms / amk ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Speedup {
    pub model: String,
    pub context: usize,
    pub amk: String,
    pub baseline: String,
    pub speedup: f64,
}

/// What a results file (baselines.py's or an earlier bench.json) holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    pub rows: Vec<Row>,
    /// The device copy bandwidth it measured, if it did.
    pub copy_gbps: Option<f64>,
    /// Everything but the rows.
    pub meta: Map<String, Value>,
}

/// Parses a results file: a JSON object with a `rows` list.
pub fn parse_results(text: &str) -> Result<Results> {
    let value: Value = serde_json::from_str(text).context("not JSON")?;
    let Value::Object(mut meta) = value else { bail!("not a JSON object") };
    let rows = meta.remove("rows").context("no `rows` list")?;
    let rows: Vec<Row> = serde_json::from_value(rows).context("in `rows`")?;
    // An earlier bench.json may carry DESIGN.md's figure rather than a measurement.
    let measured = !meta
        .get("copy_gbps_source")
        .and_then(Value::as_str)
        .is_some_and(|s| s.starts_with("DESIGN"));
    // The ceiling for a kernel that only reads: baselines.py's read-only measurement when it
    // made one (a copy's read rate is half its traffic, so it would understate the ceiling).
    let copy_gbps = ["read_gbps", "copy_gbps"]
        .iter()
        .find_map(|k| meta.get(*k).and_then(Value::as_f64))
        .filter(|g| measured && g.is_finite() && *g > 0.0);
    Ok(Results { rows, copy_gbps, meta })
}

/// `base` with `newer` merged in: a newer row replaces the row of the same system, model and
/// context (in its place); other newer rows are appended.
pub fn merge_rows(base: Vec<Row>, newer: Vec<Row>) -> Vec<Row> {
    let mut out = base;
    for row in newer {
        match out.iter_mut().find(|r| r.key() == row.key()) {
            Some(slot) => *slot = row,
            None => out.push(row),
        }
    }
    out
}

/// Positions of KV cache a timed token reads on average: `context + tokens / 2`.
pub fn mean_positions(context: usize, timed_tokens: usize) -> f64 {
    context as f64 + timed_tokens as f64 / 2.0
}

/// Fills each timed row's bytes per token, effective GB/s and fraction of `copy_gbps`.
pub fn annotate(rows: &mut [Row], copy_gbps: f64) {
    for r in rows {
        let (Some(ms), Some(w)) = (r.ms(), r.weight_bytes) else { continue };
        let kv = r.kv_bytes_per_position.unwrap_or(0.0)
            * mean_positions(r.context, r.timed_tokens.unwrap_or(0));
        let bytes = w + kv;
        let gbps = bytes / (ms * 1e-3) / 1e9;
        r.bytes_per_token = Some(bytes);
        r.gb_per_s = Some(gbps);
        r.frac_of_copy = (copy_gbps > 0.0).then(|| gbps / copy_gbps);
    }
}

/// Every amk system's speedup over every baseline timed at the same model and context.
pub fn speedups(rows: &[Row]) -> Vec<Speedup> {
    let mut out = Vec::new();
    for a in rows.iter().filter(|r| is_amk(&r.system)) {
        let Some(amk_ms) = a.ms() else { continue };
        for b in rows.iter().filter(|r| !is_amk(&r.system)) {
            if b.model != a.model || b.context != a.context {
                continue;
            }
            if let Some(base_ms) = b.ms() {
                out.push(Speedup {
                    model: a.model.clone(),
                    context: a.context,
                    amk: a.system.clone(),
                    baseline: b.system.clone(),
                    speedup: base_ms / amk_ms,
                });
            }
        }
    }
    out
}

/// Distinct values in order of first appearance.
fn distinct<T: PartialEq + Clone>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Models in order of first appearance.
pub fn models_in_order(rows: &[Row]) -> Vec<String> {
    distinct(rows.iter().map(|r| r.model.clone()))
}

/// Systems in display order: amk's first, then the baselines as the script lists them, then
/// any other, each group in order of appearance.
pub fn systems_in_order<'a>(rows: impl Iterator<Item = &'a Row>) -> Vec<String> {
    const KNOWN: [&str; 4] = ["hf_eager", "hf_static_compile", "cublas_graph", "compile_graph"];
    let all = distinct(rows.map(|r| r.system.clone()));
    let rank = |s: &String| {
        if is_amk(s) {
            0
        } else {
            KNOWN.iter().position(|k| k == s).map_or(KNOWN.len() + 1, |i| i + 1)
        }
    };
    let mut ordered = all.clone();
    ordered.sort_by_key(|s| (rank(s), all.iter().position(|x| x == s)));
    ordered
}

/// The results as text: per model, ms per token (tokens/s, % of the copy bandwidth) for each
/// system and context, then amk's speedups, then every error.
pub fn table(rows: &[Row], speedups: &[Speedup], copy_gbps: f64, copy_source: &str) -> String {
    const NAME: usize = 28;
    const CELL: usize = 24;
    let mut s = String::new();
    for model in models_in_order(rows) {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.model == model).collect();
        let mut contexts = distinct(mine.iter().map(|r| r.context));
        contexts.sort_unstable();
        let _ = writeln!(
            s,
            "{model}: ms per token (tokens/s, % of the {copy_gbps:.0} GB/s read bandwidth, {copy_source})"
        );
        let _ = write!(s, "{:<NAME$}", "system");
        for c in &contexts {
            let _ = write!(s, "{:>CELL$}", format!("ctx {c}"));
        }
        s.push('\n');
        for system in systems_in_order(mine.iter().copied()) {
            let _ = write!(s, "{system:<NAME$}");
            for c in &contexts {
                let row = mine.iter().find(|r| r.system == system && r.context == *c);
                let cell = match row {
                    None => "-".to_owned(),
                    Some(r) => match r.ms() {
                        None => "error".to_owned(),
                        Some(ms) => {
                            let pct = r
                                .frac_of_copy
                                .map_or(String::new(), |f| format!(", {:.0}%", f * 100.0));
                            format!("{ms:.3} ({:.0}/s{pct})", 1e3 / ms)
                        }
                    },
                };
                let _ = write!(s, "{cell:>CELL$}");
            }
            s.push('\n');
        }
        let mine_sp: Vec<&Speedup> = speedups.iter().filter(|x| x.model == model).collect();
        for amk in distinct(mine_sp.iter().map(|x| x.amk.clone())) {
            let _ = writeln!(s, "speedup of {amk} (baseline ms / amk ms):");
            for base in systems_in_order(
                mine.iter().copied().filter(|r| mine_sp.iter().any(|x| x.baseline == r.system)),
            ) {
                let _ = write!(s, "{:<NAME$}", format!("  over {base}"));
                for c in &contexts {
                    let cell = mine_sp
                        .iter()
                        .find(|x| x.amk == amk && x.baseline == base && x.context == *c)
                        .map_or("-".to_owned(), |x| format!("{:.2}x", x.speedup));
                    let _ = write!(s, "{cell:>CELL$}");
                }
                s.push('\n');
            }
        }
        s.push('\n');
    }
    let errors: Vec<&Row> = rows.iter().filter(|r| r.ms().is_none()).collect();
    if !errors.is_empty() {
        let _ = writeln!(s, "errors:");
        for r in errors {
            let why = r.error.as_deref().unwrap_or("no time per token");
            let first = why.lines().next().unwrap_or("");
            let short: String = first.chars().take(160).collect();
            let _ = writeln!(s, "  {} {} ctx {}: {short}", r.model, r.system, r.context);
        }
    }
    s
}

/// XML text: `&`, `<`, `>` and `"` escaped.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A tick label: integers plainly, fractions with their one significant digit (0.5, 0.02).
fn tick_label(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let digits = (-v.log10().floor()).max(0.0) as usize;
        format!("{v:.digits$}")
    }
}

/// 1, 2 and 5 times each power of ten within [lo, hi] (log10 bounds).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut d = lo.floor() as i32;
    while f64::from(d) <= hi.ceil() {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(d);
            let l = v.log10();
            if l >= lo - 1e-9 && l <= hi + 1e-9 {
                out.push(v);
            }
        }
        d += 1;
    }
    out
}

/// ms per token against context, one panel per model, both axes logarithmic, one line per
/// system (amk's drawn thicker), a legend on the right.
///
/// Written by hand rather than with a plotting crate: the picture is a few polylines, axes and
/// labels, and the plotting crates pull in font loading and rendering (system font libraries
/// or bundled fonts) that a benchmark command has no use for. The SVG names a generic font
/// family; the viewer draws the text.
pub fn svg_plot(rows: &[Row]) -> String {
    const W: f64 = 860.0;
    const PANEL: f64 = 380.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 210.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 55.0;
    const COLORS: [&str; 10] = [
        "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#7f7f7f",
        "#bcbd22", "#e377c2",
    ];
    let timed: Vec<&Row> = rows.iter().filter(|r| r.ms().is_some() && r.context > 0).collect();
    let models = distinct(timed.iter().map(|r| r.model.clone()));
    let height = PANEL * models.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    if models.is_empty() {
        let _ = writeln!(s, r#"<text x="{LEFT}" y="{TOP}">no timings</text>"#);
    }
    for (i, model) in models.iter().enumerate() {
        let pts: Vec<&Row> = timed.iter().copied().filter(|r| &r.model == model).collect();
        let (x0, x1) = (LEFT, W - RIGHT);
        let (y0, y1) = (i as f64 * PANEL + TOP, (i + 1) as f64 * PANEL - BOTTOM);
        let lx = |c: usize| (c as f64).log10();
        let ly = |r: &Row| r.ms().unwrap_or(1.0).log10();
        let (mut cx0, mut cx1) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), r| (a.min(lx(r.context)), b.max(lx(r.context))));
        if cx1 - cx0 < 1e-9 {
            cx0 -= 0.5;
            cx1 += 0.5;
        }
        // Keep the first and last points off the frame.
        let pad = 0.04 * (cx1 - cx0);
        let (cx0, cx1) = (cx0 - pad, cx1 + pad);
        let (ly0, ly1) =
            pts.iter().fold((f64::MAX, f64::MIN), |(a, b), r| (a.min(ly(r)), b.max(ly(r))));
        let (ly0, mut ly1) = (ly0.floor(), ly1.ceil());
        if ly1 - ly0 < 1.0 {
            ly1 = ly0 + 1.0;
        }
        let px = |c: usize| x0 + (lx(c) - cx0) / (cx1 - cx0) * (x1 - x0);
        let py = |l: f64| y1 - (l - ly0) / (ly1 - ly0) * (y1 - y0);

        let _ = writeln!(
            s,
            r#"<text x="{x0}" y="{:.1}" font-size="15" font-weight="bold">{}: ms per token against context (log-log; lower is faster)</text>"#,
            y0 - 14.0,
            xml(model)
        );
        for v in log_ticks(ly0, ly1) {
            let y = py(v.log10());
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 - 6.0,
                y + 4.0,
                tick_label(v)
            );
        }
        let mut contexts = distinct(pts.iter().map(|r| r.context));
        contexts.sort_unstable();
        for c in &contexts {
            let x = px(*c);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}" stroke="#e0e0e0"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{c}</text>"##,
                y1 + 16.0
            );
        }
        let _ = writeln!(
            s,
            r#"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="black"/>"#,
            x1 - x0,
            y1 - y0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">context (tokens already in the KV cache)</text>"#,
            (x0 + x1) / 2.0,
            y1 + 38.0
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate({:.1} {:.1}) rotate(-90)" text-anchor="middle">ms per token</text>"#,
            x0 - 48.0,
            (y0 + y1) / 2.0
        );
        for (j, system) in systems_in_order(pts.iter().copied()).iter().enumerate() {
            let color = COLORS[j % COLORS.len()];
            let width = if is_amk(system) { 3 } else { 2 };
            let mut line: Vec<&Row> = pts.iter().copied().filter(|r| &r.system == system).collect();
            line.sort_by_key(|r| r.context);
            let coords: Vec<String> =
                line.iter().map(|r| format!("{:.1},{:.1}", px(r.context), py(ly(r)))).collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="{width}"/>"#,
                coords.join(" ")
            );
            for r in &line {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{} ctx {}: {:.3} ms</title></circle>"#,
                    px(r.context),
                    py(ly(r)),
                    xml(system),
                    r.context,
                    r.ms().unwrap_or(0.0)
                );
            }
            let ly_legend = y0 + 12.0 + 20.0 * j as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" y1="{ly_legend:.1}" x2="{:.1}" y2="{ly_legend:.1}" stroke="{color}" stroke-width="{width}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                x1 + 14.0,
                x1 + 40.0,
                x1 + 46.0,
                ly_legend + 4.0,
                xml(system)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// What `bench/baselines.py` is asked to measure.
#[derive(Debug, Clone, Copy)]
pub struct ScriptRun<'a> {
    pub script: &'a Path,
    /// Its JSON output.
    pub out: &'a Path,
    /// The real model's name and Hugging Face directory.
    pub real: Option<(&'a str, &'a Path)>,
    /// Synthetic shapes (those the script does not know are left out).
    pub shapes: &'a [String],
    pub contexts: &'a [usize],
    pub tokens: usize,
    /// Systems to run (empty: all).
    pub systems: &'a [String],
    pub quick: bool,
}

/// The arguments for `bench/baselines.py`.
pub fn baseline_command(run: &ScriptRun) -> Vec<String> {
    let join = |v: &[String]| v.join(",");
    let mut a = vec![
        run.script.display().to_string(),
        "--out".into(),
        run.out.display().to_string(),
        "--contexts".into(),
        join(&run.contexts.iter().map(usize::to_string).collect::<Vec<_>>()),
        "--tokens".into(),
        run.tokens.to_string(),
    ];
    if let Some((name, dir)) = run.real {
        a.extend(["--model".into(), dir.display().to_string(), "--model-name".into(), name.into()]);
    }
    let shapes: Vec<String> =
        run.shapes.iter().filter(|s| SCRIPT_SHAPES.contains(&s.as_str())).cloned().collect();
    if !shapes.is_empty() {
        a.extend(["--shape".into(), join(&shapes)]);
    }
    if !run.systems.is_empty() {
        a.extend(["--systems".into(), join(run.systems)]);
    }
    if run.quick {
        a.push("--quick".into());
    }
    a
}

/// The median of `times` (the upper one of an even count), if any.
pub fn median(times: &[f32]) -> Option<f64> {
    let mut t: Vec<f64> = times.iter().map(|&x| f64::from(x)).filter(|x| x.is_finite()).collect();
    if t.is_empty() {
        return None;
    }
    t.sort_by(f64::total_cmp);
    Some(t[t.len() / 2])
}

/// One stage of checkpoint to ready kernel.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: String,
    pub seconds: f64,
}

/// Checkpoint to ready kernel, stage by stage.
#[derive(Debug, Clone, Serialize)]
pub struct Ready {
    pub model: String,
    pub precision: String,
    pub arch: Option<String>,
    pub stages: Vec<Stage>,
    pub total_s: f64,
    pub error: Option<String>,
    pub note: &'static str,
}

const READY_NOTE: &str = "import: GGUF to a Hugging Face directory (only with --gguf); load: \
     config, checkpoint and decode graph; lower: schedule; verify: the static proof; codegen: \
     CUDA source and tables; nvrtc: compiling that source for this device with no kernel cache; \
     backend: GpuBackend::new with the kernel cached (code generation again, module load, \
     co-residency re-verification, weight upload). Codegen is counted twice (milliseconds).";

impl Ready {
    fn line(&self) -> String {
        let parts: Vec<String> =
            self.stages.iter().map(|s| format!("{} {:.2} s", s.name, s.seconds)).collect();
        let mut line = format!(
            "checkpoint to ready kernel ({}, {}): {} = {:.2} s",
            self.model,
            self.precision,
            parts.join(", "),
            self.total_s
        );
        if let Some(e) = &self.error {
            let _ = write!(line, " (stopped: {e})");
        }
        line
    }
}

/// `key` of a results file's metadata, unless absent or null.
fn meta_value(r: &Results, key: &str) -> Option<Value> {
    r.meta.get(key).filter(|v| !v.is_null()).cloned()
}

/// The newest non-null `key` among merged results (a later `--merge` file is newer).
fn carried(merged: &[Results], key: &str) -> Option<Value> {
    merged.iter().rev().find_map(|r| meta_value(r, key))
}

/// The checkpoint-to-ready line for a timing carried from a merged file.
fn ready_line_merged(ready: &Value) -> String {
    let total = ready.get("total_s").and_then(Value::as_f64);
    let model = ready.get("model").and_then(Value::as_str).unwrap_or("?");
    let precision = ready.get("precision").and_then(Value::as_str).unwrap_or("?");
    match total {
        Some(t) => format!(
            "checkpoint to ready kernel ({model}, {precision}): {t:.2} s (from a merged file)"
        ),
        None => format!(
            "checkpoint to ready kernel ({model}, {precision}): no total in the merged file"
        ),
    }
}

/// Temporary directories removed when dropped.
#[derive(Default)]
struct Scratch(Vec<PathBuf>);

impl Scratch {
    fn dir(&mut self, tag: &str) -> Result<PathBuf> {
        let d = scratch_dir(tag)?;
        self.0.push(d.clone());
        Ok(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn progress(msg: &str) {
    eprintln!("amk bench: {msg}");
}

/// The GPU arguments for one precision entry: its precision, and its plan if it has one
/// (else the knobs').
fn gpu_args(args: &BenchArgs, (precision, plan): (Precision, Option<PrecisionPlan>)) -> GpuArgs {
    GpuArgs {
        precision: Some(precision),
        config: args.config.clone(),
        watchdog: args.watchdog,
        block_threads: args.block_threads,
        plan,
        ..GpuArgs::default()
    }
}

/// Parses a precision entry, `bf16` or `bf16+lm_head=int8+attention=int8` (a per-op plan on
/// top of the knobs'), or says what this build knows.
fn parse_precision(name: &str) -> Result<(Precision, Option<PrecisionPlan>), String> {
    let mut parts = name.split('+');
    let base = parts.next().unwrap_or_default();
    let precision = Precision::from_str(base, true).map_err(|_| {
        let known: Vec<String> = Precision::value_variants()
            .iter()
            .filter_map(|p| p.to_possible_value().map(|v| v.get_name().to_owned()))
            .collect();
        format!("this amk build has no precision `{base}` (it knows: {})", known.join(", "))
    })?;
    let mut plan: Option<PrecisionPlan> = None;
    for part in parts {
        let (class, format) = part.split_once('=').unwrap_or((part, ""));
        let format = match format.to_ascii_lowercase().as_str() {
            "bf16" => WeightFormat::Bf16,
            "int8" => WeightFormat::Int8,
            _ => {
                return Err(format!(
                    "`{part}` in precision `{name}`: give a class a format, as \
                     `lm_head=int8` (formats: bf16, int8)"
                ))
            }
        };
        if precision == Precision::F32 {
            return Err(format!(
                "`{part}` in precision `{name}`: f32 builds hold every matrix in f32 (a plan \
                 goes on bf16 or int8)"
            ));
        }
        let p = plan.get_or_insert_with(PrecisionPlan::default);
        let slot = match class.to_ascii_lowercase().as_str() {
            "attention" => &mut p.attention,
            "mlp" => &mut p.mlp,
            "lm_head" => &mut p.lm_head,
            _ => {
                return Err(format!(
                    "`{part}` in precision `{name}`: no class `{class}` (classes: attention, \
                     mlp, lm_head)"
                ))
            }
        };
        if slot.replace(format).is_some() {
            return Err(format!("`{part}` in precision `{name}`: `{class}` is given twice"));
        }
    }
    Ok((precision, plan))
}

/// The stages after load, timed into `ready`; the backend is dropped at the end.
fn ready_stages(model: &Model, gargs: &GpuArgs, ready: &mut Ready) -> Result<()> {
    use amk_codegen_cuda::{Arch, CodegenOptions};
    let mut stage = |name: &str, t: Instant| {
        ready.stages.push(Stage { name: name.into(), seconds: t.elapsed().as_secs_f64() })
    };
    let t = Instant::now();
    let (schedule, facts) = schedule_for(model, gargs)?;
    stage("lower", t);
    let t = Instant::now();
    let verified = verify_or_refuse(&schedule, &facts)?;
    stage("verify", t);
    let arch = amk_runtime::gpu::device_arch(0)?;
    let parsed: Arch = arch.parse().map_err(|e| anyhow::anyhow!("device {arch}: {e}"))?;
    let t = Instant::now();
    let options = CodegenOptions {
        weight_dtype: gargs.weight_dtype(),
        arch: parsed,
        block_threads: gargs.block_threads,
        ..CodegenOptions::default()
    };
    amk_codegen_cuda::generate(&verified, &options)?;
    stage("codegen", t);
    // The backend's own source (and its kernel left in the cache for the timed build below).
    let source = backend_for(model, &verified, gargs, true)?.source().to_owned();
    let t = Instant::now();
    amk_runtime::gpu::compile_cached(&source, &arch, None)?;
    stage("nvrtc", t);
    let t = Instant::now();
    drop(backend_for(model, &verified, gargs, true)?);
    stage("backend", t);
    Ok(())
}

/// Opens the real model (importing `--gguf` afresh) and times checkpoint to ready kernel.
fn open_real(
    args: &BenchArgs,
    scratch: &mut Scratch,
    name: &str,
    time_ready: bool,
) -> Result<(Model, Option<Ready>)> {
    let mut stages = Vec::new();
    let dir = match (&args.gguf, &args.model) {
        (Some(gguf), _) => {
            let dir = scratch.dir("amk-bench-import")?.join("hf");
            progress(&format!("importing {}", gguf.display()));
            let t = Instant::now();
            amk_ir::gguf::import_gguf(gguf, &dir, &mut |_| {})
                .with_context(|| format!("importing {}", gguf.display()))?;
            stages.push(Stage { name: "import".into(), seconds: t.elapsed().as_secs_f64() });
            dir
        }
        (None, Some(path)) => path.clone(),
        (None, None) => bail!("no real model"),
    };
    let t = Instant::now();
    let model =
        Model::open(&dir, &mut |_| {}).with_context(|| format!("opening {}", dir.display()))?;
    stages.push(Stage { name: "load".into(), seconds: t.elapsed().as_secs_f64() });
    if !time_ready {
        return Ok((model, None));
    }
    let (precision, entry) = args
        .precision
        .iter()
        .find_map(|p| parse_precision(p).ok().map(|e| (e, p.to_lowercase())))
        .unwrap_or(((Precision::Bf16, None), "bf16".into()));
    let mut ready = Ready {
        model: name.into(),
        precision: entry,
        arch: amk_runtime::gpu::device_arch(0).ok(),
        stages,
        total_s: 0.0,
        error: None,
        note: READY_NOTE,
    };
    progress("timing checkpoint to ready kernel");
    if let Err(e) = ready_stages(&model, &gpu_args(args, precision), &mut ready) {
        ready.error = Some(format!("{e:#}"));
    }
    ready.total_s = ready.stages.iter().map(|s| s.seconds).sum();
    progress(&ready.line());
    Ok((model, Some(ready)))
}

/// One point: fill the cache to `context` (a greedy decode, queued), warm up, then time.
fn time_point(
    backend: &mut GpuBackend,
    context: usize,
    tokens: usize,
    warmup: usize,
) -> Result<Vec<f32>> {
    let need = context + tokens.max(warmup);
    if need > backend.max_positions() {
        bail!("needs {need} positions; the backend holds {}", backend.max_positions());
    }
    backend.reset();
    if context > 0 {
        backend.time_decode(1, 0, context)?;
    }
    if warmup > 0 {
        backend.time_decode(1, context as u32, warmup)?;
    }
    Ok(backend.time_decode(1, context as u32, tokens)?)
}

/// amk's rows for one model: every precision at every context. Failures become error rows.
fn time_amk(
    model: &Model,
    name: &str,
    args: &BenchArgs,
    contexts: &[usize],
    tokens: usize,
    device: &mut Option<String>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for pname in &args.precision {
        let system = format!("amk-{}", pname.to_lowercase());
        let failed = |why: String| -> Vec<Row> {
            contexts
                .iter()
                .map(|&c| Row { error: Some(why.clone()), ..Row::new(&system, name, c) })
                .collect()
        };
        let entry = match parse_precision(pname) {
            Ok(e) => e,
            Err(why) => {
                rows.extend(failed(why));
                continue;
            }
        };
        progress(&format!("{name}: building the {system} kernel"));
        let gargs = gpu_args(args, entry);
        let formats = match gargs.knobs() {
            Ok(k) => WeightPrecision { dtype: gargs.weight_dtype(), plan: k.precision },
            Err(e) => {
                rows.extend(failed(format!("{e:#}")));
                continue;
            }
        };
        let mut backend = match build_backend(model, &gargs, true) {
            Ok(b) => b,
            Err(e) => {
                rows.extend(failed(format!("{e:#}")));
                continue;
            }
        };
        device.get_or_insert_with(|| backend.fit().device.clone());
        let base = Row {
            timed_tokens: Some(tokens),
            weight_bytes: Some(weight_bytes_as(model, &formats) as f64),
            kv_bytes_per_position: Some(kv_bytes_per_position(model) as f64),
            ..Row::new(&system, name, 0)
        };
        for &context in contexts {
            let mut row = Row { context, ..base.clone() };
            match time_point(&mut backend, context, tokens, args.warmup) {
                Ok(times) => {
                    match median(&times) {
                        Some(ms) => {
                            row.ms_per_token = Some(ms);
                            row.tokens_per_s = Some(1e3 / ms);
                            row.extra.insert(
                            "timing".into(),
                            json!("CUDA events per batch of 20 queued launches, per launch, median"),
                        );
                            let min = times.iter().copied().fold(f32::INFINITY, f32::min);
                            row.extra.insert("min_ms".into(), json!(min));
                            progress(&format!(
                                "{name} {system} ctx {context}: {ms:.3} ms/token ({:.0} tokens/s)",
                                1e3 / ms
                            ));
                        }
                        None => row.error = Some("no launch was timed".into()),
                    }
                }
                Err(e) => {
                    progress(&format!("{name} {system} ctx {context}: {e:#}"));
                    row.error = Some(format!("{e:#}"));
                }
            }
            rows.push(row);
        }
    }
    rows
}

/// Runs the baseline script; its results, or why there are none.
fn run_baselines(command: &[String], python: &str, out: &Path) -> Result<Results> {
    progress(&format!("$ {python} {}", command.join(" ")));
    let _ = std::fs::remove_file(out);
    let status = std::process::Command::new(python)
        .args(command)
        .stdin(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot start {python}"))?;
    let text = std::fs::read_to_string(out);
    match (status.success(), text) {
        (true, Ok(text)) => {
            parse_results(&text).with_context(|| format!("reading {}", out.display()))
        }
        (false, Ok(text)) => {
            // A run cut short still wrote the rows it measured.
            progress(&format!("the baseline script failed ({status}); keeping what it wrote"));
            parse_results(&text).with_context(|| format!("reading {}", out.display()))
        }
        (_, Err(e)) => bail!("the baseline script ({status}) left no {}: {e}", out.display()),
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let contexts = args.contexts.clone().unwrap_or_else(|| {
        if args.quick {
            vec![16, 256]
        } else {
            vec![16, 256, 1024, 4096]
        }
    });
    let tokens = args.tokens.unwrap_or(if args.quick { 16 } else { 200 });
    if tokens == 0 || contexts.is_empty() {
        bail!("--tokens and --contexts must not be empty");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut scratch = Scratch::default();

    // Earlier results to merge.
    let mut merged: Vec<Results> = Vec::new();
    for path in &args.merge {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        merged.push(parse_results(&text).with_context(|| format!("in {}", path.display()))?);
    }

    // The models: the real one, then the synthetic shapes.
    let real_name = args.name.clone().or_else(|| {
        let p = args.gguf.as_ref().or(args.model.as_ref())?;
        let p = if p.is_dir() { p.clone() } else { p.with_extension("") };
        p.file_name().map(|n| n.to_string_lossy().into_owned())
    });
    let mut ready = None;
    let mut real: Option<(String, Model)> = None;
    if args.model.is_some() || args.gguf.is_some() {
        let name = real_name.clone().unwrap_or_else(|| "model".into());
        let (model, r) = open_real(&args, &mut scratch, &name, !args.no_amk && !args.no_ready)?;
        ready = r;
        real = Some((name, model));
    }
    let mut synth: Vec<(String, PathBuf)> = Vec::new();
    for preset in &args.synth {
        let name = preset.name();
        if args.no_amk {
            synth.push((name, PathBuf::new()));
            continue;
        }
        let dir = scratch.dir(&format!("amk-bench-{name}"))?;
        progress(&format!("writing the synthetic {name} checkpoint"));
        amk_ir::synth::write_checkpoint(&preset.spec(1), &dir)
            .with_context(|| format!("writing the synthetic {name} checkpoint"))?;
        synth.push((name, dir));
    }
    if real.is_none() && synth.is_empty() && args.merge.is_empty() {
        bail!("nothing to measure: give --model, --gguf, --synth or --merge");
    }

    // Baselines first, while no amk backend holds device memory.
    let mut baseline: Option<Results> = None;
    let mut baseline_error = None;
    if let Some(script) = &args.baselines {
        let shapes: Vec<String> = synth.iter().map(|(n, _)| n.clone()).collect();
        for s in shapes.iter().filter(|s| !SCRIPT_SHAPES.contains(&s.as_str())) {
            progress(&format!("the baseline script has no shape {s}; amk only"));
        }
        let out = args.out.join("baselines.json");
        let command = baseline_command(&ScriptRun {
            script,
            out: &out,
            real: real.as_ref().map(|(n, m)| (n.as_str(), m.dir.as_path())),
            shapes: &shapes,
            contexts: &contexts,
            tokens,
            systems: &args.baseline_systems,
            quick: args.quick,
        });
        match run_baselines(&command, &args.python, &out) {
            Ok(r) => baseline = Some(r),
            Err(e) => {
                progress(&format!("baselines: {e:#}"));
                baseline_error = Some(format!("{e:#}"));
            }
        }
    }

    // amk.
    let mut amk_rows = Vec::new();
    let mut device = None;
    if !args.no_amk {
        if let Some((name, model)) = &real {
            amk_rows.extend(time_amk(model, name, &args, &contexts, tokens, &mut device));
        }
        for (name, dir) in &synth {
            match Model::open(dir, &mut |_| {}) {
                Ok(model) => {
                    amk_rows.extend(time_amk(&model, name, &args, &contexts, tokens, &mut device))
                }
                Err(e) => amk_rows.extend(contexts.iter().map(|&c| Row {
                    error: Some(format!("opening the synthetic checkpoint: {e}")),
                    ..Row::new("amk", name, c)
                })),
            }
        }
    }

    // Merge, annotate, report.
    let mut rows = Vec::new();
    for r in &merged {
        rows = merge_rows(rows, r.rows.clone());
    }
    if let Some(b) = &baseline {
        rows = merge_rows(rows, b.rows.clone());
    }
    // Whether amk was to be timed and no point was: the report is still written, then the
    // run fails.
    let amk_failed = amk_rows
        .iter()
        .all(|r| r.error.is_some())
        .then(|| amk_rows.first().and_then(|r| r.error.clone()))
        .flatten();
    rows = merge_rows(rows, amk_rows);
    let (copy_gbps, copy_source) = baseline
        .iter()
        .chain(merged.iter().rev())
        .find_map(|r| r.copy_gbps)
        .map(|g| (g, "measured by bench/baselines.py".to_owned()))
        .unwrap_or((DESIGN_COPY_GBPS, "DESIGN.md's 3.08 TB/s, not measured in this run".into()));
    annotate(&mut rows, copy_gbps);
    let sp = speedups(&rows);
    let meta = |r: &Results| Value::Object(r.meta.clone());
    // What this run did not measure comes from the newest merged file that has it, so a
    // report assembled from pieces keeps the device, the checkpoint-to-ready timing and the
    // baselines' versions.
    let device = device.map(Value::from).or_else(|| carried(&merged, "device"));
    let ready_json = match &ready {
        Some(r) => Some(serde_json::to_value(r)?),
        None => carried(&merged, "ready"),
    };
    let (baselines_json, baseline_error) = if baseline.is_some() || baseline_error.is_some() {
        (baseline.as_ref().map(meta), baseline_error.map(Value::from))
    } else {
        // Both from the newest merged file that ran the baselines, so its versions and its
        // error are never paired with another file's.
        let source = merged.iter().rev().find(|r| {
            meta_value(r, "baselines").is_some() || meta_value(r, "baselines_error").is_some()
        });
        let get = |k: &str| source.and_then(|r| meta_value(r, k));
        (get("baselines"), get("baselines_error"))
    };
    let report = json!({
        "tool": "amk bench",
        "amk_version": env!("CARGO_PKG_VERSION"),
        "device": device,
        "contexts": contexts,
        "tokens": tokens,
        "warmup": args.warmup,
        "copy_gbps": copy_gbps,
        "copy_gbps_source": copy_source,
        "bytes_note": "bytes_per_token = weight_bytes + kv_bytes_per_position * (context + \
                       timed_tokens / 2); amk keeps f32 keys and values, the baselines bf16",
        "rows": rows,
        "speedups": sp,
        "ready": ready_json,
        "baselines": baselines_json,
        "baselines_error": baseline_error,
        "merged": args.merge.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
    });
    let json_path = args.out.join("bench.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let svg_path = args.out.join("bench.svg");
    std::fs::write(&svg_path, svg_plot(&rows))
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    println!();
    if let Some(d) = device.as_ref().and_then(Value::as_str) {
        println!("device: {d}");
    }
    print!("{}", table(&rows, &sp, copy_gbps, &copy_source));
    match (&ready, &ready_json) {
        (Some(r), _) => println!("{}", r.line()),
        (None, Some(r)) => println!("{}", ready_line_merged(r)),
        (None, None) => {}
    }
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    if let Some(first) = amk_failed {
        bail!("every amk measurement failed (the first: {first}); the report holds the errors");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What bench/baselines.py writes, by hand: extra fields, an error row, a copy bandwidth.
    const FAKE_BASELINES: &str = r#"{
      "tool": "bench/baselines.py", "torch": "2.11.0", "transformers": "5.17.0",
      "gpu": "NVIDIA H100 80GB HBM3", "copy_gbps": 1500.0, "read_gbps": 3000.0,
      "rows": [
        {"system": "hf_eager", "model": "m", "context": 16, "ms_per_token": 25.0,
         "tokens_per_s": 40.0, "timed_tokens": 200, "weight_bytes": 1000000000,
         "kv_bytes_per_position": 1000, "rep_ms": [25.0, 25.1], "first_tokens": [1, 2]},
        {"system": "cublas_graph", "model": "m", "context": 16, "ms_per_token": 2.0,
         "tokens_per_s": 500.0, "timed_tokens": 200, "weight_bytes": 1000000000,
         "kv_bytes_per_position": 1000},
        {"system": "compile_graph", "model": "m", "context": 16, "error": "InductorError: boom"},
        {"system": "hf_eager", "model": "m", "context": 256, "ms_per_token": 26.0,
         "timed_tokens": 200, "weight_bytes": 1000000000, "kv_bytes_per_position": 1000,
         "compile_s": null}
      ]
    }"#;

    fn amk(context: usize, ms: f64) -> Row {
        Row {
            ms_per_token: Some(ms),
            tokens_per_s: Some(1e3 / ms),
            timed_tokens: Some(200),
            weight_bytes: Some(2e9),
            kv_bytes_per_position: Some(2000.0),
            ..Row::new("amk-bf16", "m", context)
        }
    }

    fn fake() -> Vec<Row> {
        let base = parse_results(FAKE_BASELINES).unwrap();
        merge_rows(base.rows, vec![amk(16, 1.0), amk(256, 1.3)])
    }

    #[test]
    fn parses_the_script_output_and_keeps_unknown_fields() {
        let r = parse_results(FAKE_BASELINES).unwrap();
        assert_eq!(r.copy_gbps, Some(3000.0), "the read-only figure wins");
        assert_eq!(r.rows.len(), 4);
        assert_eq!(r.rows[0].extra["first_tokens"], json!([1, 2]));
        assert_eq!(r.rows[2].error.as_deref(), Some("InductorError: boom"));
        assert_eq!(r.rows[2].ms_per_token, None);
        assert_eq!(r.meta["gpu"], json!("NVIDIA H100 80GB HBM3"));
        assert!(!r.meta.contains_key("rows"));
        // Round trip: the extra fields come back out.
        let text = serde_json::to_string(&r.rows[0]).unwrap();
        assert!(text.contains("\"rep_ms\":[25.0,25.1]"), "{text}");
        assert!(!text.contains("gb_per_s"), "{text}");
        assert!(parse_results("[1]").is_err());
        assert!(parse_results("{\"copy_gbps\": 3}").is_err());
    }

    #[test]
    fn design_figure_in_an_earlier_report_is_not_a_measurement() {
        let text = r#"{"rows": [], "copy_gbps": 3080.0, "copy_gbps_source": "DESIGN.md's"}"#;
        assert_eq!(parse_results(text).unwrap().copy_gbps, None);
        let text = r#"{"rows": [], "copy_gbps": 1400.0, "copy_gbps_source": "measured"}"#;
        assert_eq!(parse_results(text).unwrap().copy_gbps, Some(1400.0));
    }

    #[test]
    fn newer_rows_replace_the_same_point() {
        let rows = fake();
        assert_eq!(rows.len(), 6);
        let again = merge_rows(rows.clone(), vec![amk(16, 0.5), Row::new("x", "m", 16)]);
        assert_eq!(again.len(), 7);
        let p = again.iter().position(|r| r.system == "amk-bf16" && r.context == 16).unwrap();
        assert_eq!(p, 4, "replaced in place");
        assert_eq!(again[p].ms_per_token, Some(0.5));
    }

    #[test]
    fn bandwidth_counts_weights_and_the_mean_cache_read() {
        let mut rows = fake();
        annotate(&mut rows, 1500.0);
        let a = rows.iter().find(|r| r.system == "amk-bf16" && r.context == 256).unwrap();
        // 2e9 weight bytes + 2000 B/position x (256 + 100) positions, in 1.3 ms.
        let bytes = 2e9 + 2000.0 * 356.0;
        assert_eq!(a.bytes_per_token, Some(bytes));
        let gbps = bytes / 1.3e-3 / 1e9;
        assert!((a.gb_per_s.unwrap() - gbps).abs() < 1e-6);
        assert!((a.frac_of_copy.unwrap() - gbps / 1500.0).abs() < 1e-9);
        let err = rows.iter().find(|r| r.system == "compile_graph").unwrap();
        assert_eq!(err.gb_per_s, None);
    }

    #[test]
    fn speedups_pair_amk_with_baselines_at_the_same_point() {
        let sp = speedups(&fake());
        let get = |b: &str, c: usize| {
            sp.iter().find(|s| s.baseline == b && s.context == c).map(|s| s.speedup)
        };
        assert_eq!(get("hf_eager", 16), Some(25.0));
        assert_eq!(get("cublas_graph", 16), Some(2.0));
        assert_eq!(get("hf_eager", 256), Some(26.0 / 1.3));
        assert_eq!(get("compile_graph", 16), None, "an error row has no speedup");
        assert_eq!(get("cublas_graph", 256), None, "not timed at 256");
        assert_eq!(sp.len(), 3);
        assert!(sp.iter().all(|s| s.amk == "amk-bf16" && s.model == "m"));
        // Another model's baseline is never compared.
        let mut rows = fake();
        rows.push(Row { ms_per_token: Some(9.0), ..Row::new("hf_eager", "other", 16) });
        assert_eq!(speedups(&rows).len(), 3);
    }

    #[test]
    fn table_lists_every_system_context_speedup_and_error() {
        let mut rows = fake();
        annotate(&mut rows, 1500.0);
        let t = table(&rows, &speedups(&rows), 1500.0, "measured");
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("m: ms per token"), "{t}");
        assert!(lines[1].contains("ctx 16") && lines[1].contains("ctx 256"), "{t}");
        assert!(lines[2].starts_with("amk-bf16"), "amk first: {t}");
        assert!(lines[2].contains("1.000 (1000/s, 133%)"), "{t}");
        assert!(t.contains("25.000 (40/s"), "{t}");
        assert!(t.contains("speedup of amk-bf16"), "{t}");
        assert!(t.contains("  over hf_eager"), "{t}");
        assert!(t.contains("25.00x") && t.contains("20.00x") && t.contains("2.00x"), "{t}");
        assert!(t.contains("errors:\n  m compile_graph ctx 16: InductorError: boom"), "{t}");
        let compile = lines.iter().find(|l| l.starts_with("compile_graph")).unwrap();
        assert!(compile.contains("error") && compile.trim_end().ends_with('-'), "{t}");
    }

    #[test]
    fn svg_has_one_panel_per_model_and_one_line_per_system() {
        let mut rows = fake();
        rows.push(Row { ms_per_token: Some(3.0), ..Row::new("hf_eager", "a<b", 16) });
        let svg = svg_plot(&rows);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("height=\"760\""), "two panels of 380");
        // m: amk-bf16, hf_eager, cublas_graph (compile_graph has no timing); a<b: hf_eager.
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 6);
        assert!(svg.contains("a&lt;b: ms per token"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // Log axes: ticks at 1, 2, 5, 10, 20 ms for m's 1..26 ms, and each context.
        for label in [">1</text>", ">2</text>", ">5</text>", ">10</text>", ">20</text>"] {
            assert!(svg.contains(label), "{label}");
        }
        assert!(svg.contains(">256</text>"));
        let empty = svg_plot(&[]);
        assert!(empty.contains("no timings") && empty.ends_with("</svg>\n"));
    }

    #[test]
    fn ticks_and_labels() {
        assert_eq!(log_ticks(0.0, 1.0), vec![1.0, 2.0, 5.0, 10.0]);
        let t = log_ticks(-1.0, 0.0);
        assert_eq!(t.len(), 4);
        assert_eq!(tick_label(t[0]), "0.1");
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(0.02), "0.02");
        assert_eq!(tick_label(20.0), "20");
    }

    #[test]
    fn median_and_mean_positions() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(3.0));
        assert_eq!(median(&[]), None);
        assert_eq!(mean_positions(256, 200), 356.0);
    }

    #[test]
    fn the_script_gets_the_same_models_contexts_and_tokens() {
        let shapes = vec!["smollm2-360m".to_owned(), "tiny".to_owned()];
        let a = baseline_command(&ScriptRun {
            script: Path::new("bench/baselines.py"),
            out: Path::new("out/baselines.json"),
            real: Some(("smollm2-135m", Path::new("/tmp/amkdev/hf"))),
            shapes: &shapes,
            contexts: &[16, 256],
            tokens: 200,
            systems: &[],
            quick: true,
        });
        assert_eq!(
            a.join(" "),
            "bench/baselines.py --out out/baselines.json --contexts 16,256 --tokens 200 \
             --model /tmp/amkdev/hf --model-name smollm2-135m --shape smollm2-360m --quick"
        );
        let b = baseline_command(&ScriptRun {
            script: Path::new("b.py"),
            out: Path::new("o.json"),
            real: None,
            shapes: &[],
            contexts: &[4096],
            tokens: 8,
            systems: &["hf_eager".into(), "cublas_graph".into()],
            quick: false,
        });
        assert_eq!(
            b.join(" "),
            "b.py --out o.json --contexts 4096 --tokens 8 --systems hf_eager,cublas_graph"
        );
    }

    #[test]
    fn precisions_this_build_lacks_are_reported_not_fatal() {
        assert_eq!(parse_precision("BF16"), Ok((Precision::Bf16, None)));
        let e = parse_precision("int3").unwrap_err();
        assert!(e.contains("`int3`") && e.contains("bf16"), "{e}");
        let (p, plan) = parse_precision("bf16+lm_head=int8+attention=INT8").unwrap();
        let plan = plan.expect("a plan");
        assert_eq!(p, Precision::Bf16);
        assert_eq!(
            (plan.attention, plan.mlp, plan.lm_head),
            (Some(WeightFormat::Int8), None, Some(WeightFormat::Int8))
        );
        for bad in [
            "bf16+head=int8",
            "bf16+mlp=int4",
            "bf16+mlp",
            "f32+lm_head=int8",
            "int8+mlp=bf16+MLP=bf16",
        ] {
            let e = parse_precision(bad).unwrap_err();
            assert!(e.contains(&format!("precision `{bad}`")), "{e}");
        }
    }

    #[test]
    fn gpu_defaults_are_the_command_lines() {
        let d = GpuArgs::default();
        assert_eq!((d.block_threads, d.watchdog, d.precision), (512, 10.0, None));
    }

    #[test]
    fn synth_preset_names_match_the_script() {
        assert_eq!(SynthPreset::Smollm2_360m.name(), "smollm2-360m");
        assert_eq!(SynthPreset::Llama3_2_1b.name(), "llama3-2-1b");
        for s in SCRIPT_SHAPES {
            assert!(SynthPreset::from_str(s, false).is_ok(), "{s}");
        }
    }
}
