//! `amk agree`: the quality of lower weight precisions against the golden fp32 decodes.
//!
//! For each precision, every `fp32_cpu` decode of the golden file is measured twice over (see
//! `amk_runtime::agreement`): teacher-forced top-1 agreement (the golden sequence fed back,
//! each argmax compared with the golden next token) and prefix agreement (leading tokens of the
//! free-running greedy decode equal to the golden ones), the latter beside Hugging Face's own
//! bf16 GPU figure (`bf16_gpu[..].agrees_with_fp32_cpu_for`) when the file has it.

use crate::generate::BackendChoice;
use crate::gpu::{GpuArgs, Precision};
use crate::progress::{weight_bar, ImportBar};
use amk_ir::Model;
use amk_runtime::agreement::{self, percent, Agreement};
use amk_runtime::cpu::CpuReference;
use amk_runtime::quant::WeightPrecision;
use amk_runtime::Backend;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Measure how well lower weight precisions agree with the golden fp32 greedy decodes.
///
/// For each precision and each `fp32_cpu` decode in the golden file: teacher-forced top-1
/// agreement (the golden tokens are fed back one by one and each argmax is compared with the
/// golden next token; every golden step counts) and prefix agreement (how many leading tokens
/// of the free-running greedy decode equal the golden ones), printed beside Hugging Face's own
/// bf16 GPU prefix from the same file. On the CPU a lower precision is emulated: the weights
/// are rounded (bf16) or quantized per output channel (int8) exactly as the GPU stores them,
/// and the arithmetic stays f32.
#[derive(Debug, Args)]
pub struct AgreeArgs {
    /// Hugging Face model directory or .gguf file: the model the golden decodes come from.
    pub model: PathBuf,
    /// The golden decodes: a JSON object whose `fp32_cpu` list holds objects with `prompt`,
    /// `ids` (the prompt's token ids) and `gen` (the greedy continuation's ids); an optional
    /// `bf16_gpu` list supplies `agrees_with_fp32_cpu_for` [default: the copy of
    /// fixtures/smollm2_golden.json built into amk, SmolLM2-135M-Instruct's].
    #[arg(long)]
    pub golden: Option<PathBuf>,
    /// Weight precisions to measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32,bf16,int8")]
    pub precision: Vec<Precision>,
    /// Where to run: the CPU reference (lower precisions emulated in f32 arithmetic), the GPU
    /// megakernel, or the GPU when one is usable.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Also write the measurements as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Exit non-zero when any precision's teacher-forced agreement (over all golden steps) is
    /// below this percentage.
    #[arg(long, value_name = "PCT")]
    pub min_teacher_forced: Option<f64>,
    /// Knobs for lowering the GPU schedule (RON ScheduleConfig); the defaults otherwise.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// One reference decode from the golden file.
#[derive(Debug, Clone)]
struct GoldenCase {
    prompt: String,
    ids: Vec<u32>,
    gen: Vec<u32>,
    /// Hugging Face's bf16 GPU decode: leading tokens equal to this fp32 decode.
    hf_bf16_prefix: Option<usize>,
}

/// The JSON report (`--json`).
#[derive(Debug, serde::Serialize)]
struct Report {
    model: String,
    golden: String,
    /// The golden list measured against.
    reference: &'static str,
    golden_steps: usize,
    hf_bf16_gpu_prefix_sum: Option<usize>,
    runs: Vec<RunReport>,
}

/// One precision's measurements, or why it could not be measured.
#[derive(Debug, serde::Serialize)]
struct RunReport {
    precision: String,
    backend: Option<&'static str>,
    /// The CPU emulated this precision in f32 arithmetic.
    emulated: bool,
    error: Option<String>,
    prompts: Vec<PromptReport>,
    steps: usize,
    teacher_forced_agree: usize,
    teacher_forced_percent: f64,
    prefix_sum: usize,
}

#[derive(Debug, serde::Serialize)]
struct PromptReport {
    prompt: String,
    #[serde(flatten)]
    agreement: Agreement,
    hf_bf16_gpu_prefix: Option<usize>,
}

fn precision_name(p: Precision) -> String {
    p.to_possible_value().map_or_else(|| format!("{p:?}"), |v| v.get_name().to_owned())
}

/// `value` as a list of token ids; `field` names it in errors.
fn token_ids(value: Option<&Value>, field: &str) -> Result<Vec<u32>> {
    let list = match value {
        Some(Value::Array(list)) => list,
        Some(other) => bail!("`{field}` is not a list of token ids (found {})", kind(other)),
        None => bail!("`{field}` is missing (a list of token ids)"),
    };
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64().and_then(|t| u32::try_from(t).ok()).ok_or_else(|| {
                anyhow!("`{field}[{i}]` is not a token id (a non-negative integer): found {v}")
            })
        })
        .collect()
}

/// A JSON value's kind, for error messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The `fp32_cpu` decodes of a golden file, each with Hugging Face's bf16 prefix (from the
/// `bf16_gpu` entry with the same prompt ids) when there is one.
fn parse_golden(text: &str) -> Result<Vec<GoldenCase>> {
    let top: Value = serde_json::from_str(text).context("not valid JSON")?;
    let top = match top {
        Value::Object(top) => top,
        other => {
            bail!("the top level is {}, expected an object with an `fp32_cpu` list", kind(&other))
        }
    };
    let cases = match top.get("fp32_cpu") {
        Some(Value::Array(cases)) if !cases.is_empty() => cases,
        Some(Value::Array(_)) => bail!("`fp32_cpu` is empty"),
        Some(other) => bail!("`fp32_cpu` is {}, expected a list of decodes", kind(other)),
        None => bail!(
            "no `fp32_cpu` field (the reference decodes: objects with `prompt`, `ids` and `gen`)"
        ),
    };
    let mut hf_bf16 = Vec::new();
    match top.get("bf16_gpu") {
        None | Some(Value::Null) => {}
        Some(Value::Array(entries)) => {
            for (i, e) in entries.iter().enumerate() {
                let ids = token_ids(e.get("ids"), &format!("bf16_gpu[{i}].ids"))?;
                let agrees = match e.get("agrees_with_fp32_cpu_for") {
                    Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                        anyhow!(
                            "`bf16_gpu[{i}].agrees_with_fp32_cpu_for` is not a non-negative \
                             integer: found {v}"
                        )
                    })?,
                    None => bail!("`bf16_gpu[{i}].agrees_with_fp32_cpu_for` is missing"),
                };
                hf_bf16.push((ids, agrees));
            }
        }
        Some(other) => bail!("`bf16_gpu` is {}, expected a list of decodes", kind(other)),
    }
    let mut out = Vec::with_capacity(cases.len());
    for (i, case) in cases.iter().enumerate() {
        if !case.is_object() {
            bail!("`fp32_cpu[{i}]` is {}, expected an object", kind(case));
        }
        let prompt = match case.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            None => format!("fp32_cpu[{i}]"),
            Some(other) => bail!("`fp32_cpu[{i}].prompt` is {}, expected a string", kind(other)),
        };
        let ids = token_ids(case.get("ids"), &format!("fp32_cpu[{i}].ids"))?;
        if ids.is_empty() {
            bail!("`fp32_cpu[{i}].ids` is empty: a prompt needs at least one token");
        }
        let gen = token_ids(case.get("gen"), &format!("fp32_cpu[{i}].gen"))?;
        let hf_bf16_prefix = hf_bf16.iter().find(|(h, _)| *h == ids).map(|&(_, a)| a);
        out.push(GoldenCase { prompt, ids, gen, hf_bf16_prefix });
    }
    Ok(out)
}

/// Reads and checks the golden file (`None`: the built-in one); returns its cases and its name.
fn read_golden(path: Option<&Path>) -> Result<(Vec<GoldenCase>, String)> {
    let (text, name) = crate::golden::read(path)?;
    let cases = parse_golden(&text).with_context(|| format!("golden file {name} is malformed"))?;
    Ok((cases, name))
}

/// Checks that the golden decodes fit the model: ids inside the vocabulary, prompt and golden
/// tokens inside the context. Warns when the tokenizer encodes a prompt differently (the golden
/// file may belong to another model).
fn check_against_model(cases: &[GoldenCase], model: &Model, golden: &str) -> Result<()> {
    let vocab = model.config.vocab_size;
    let max = model.config.max_position_embeddings;
    for (i, c) in cases.iter().enumerate() {
        for (field, list) in [("ids", &c.ids), ("gen", &c.gen)] {
            if let Some((j, t)) = list.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
                bail!(
                    "golden file {}: `fp32_cpu[{i}].{field}[{j}]` = {t} is outside the model's \
                     vocabulary (vocab_size {vocab}); is it the golden file of another model?",
                    golden
                );
            }
        }
        let needed = agreement::teacher_forced_steps(c.ids.len(), c.gen.len());
        if needed > max {
            bail!(
                "golden file {}: `fp32_cpu[{i}]` needs {needed} positions (prompt and golden \
                 tokens) but the model's context (max_position_embeddings) is {max}",
                golden
            );
        }
    }
    if let Ok(tokenizer) = model.tokenizer() {
        for (i, c) in cases.iter().enumerate() {
            if tokenizer.encode(&c.prompt).ok().is_some_and(|ids| ids != c.ids) {
                eprintln!(
                    "amk: warning: the model's tokenizer encodes fp32_cpu[{i}].prompt differently \
                     from its `ids` (the golden ids are used); is {} the golden file of this \
                     model?",
                    golden
                );
            }
        }
    }
    Ok(())
}

/// The backend measuring `precision` (on the CPU, each weight in its format of `formats`), and
/// whether it emulates the precision on the CPU.
fn make_backend(
    model: &Model,
    (precision, formats): (Precision, WeightPrecision),
    gpu: bool,
    config: Option<&PathBuf>,
) -> Result<(Box<dyn Backend>, bool)> {
    if gpu {
        let args =
            GpuArgs { precision: Some(precision), config: config.cloned(), ..GpuArgs::default() };
        return Ok((Box::new(crate::gpu::build_backend(model, &args, false)?), false));
    }
    let bar = weight_bar(model.graph.weights.len(), "loading weights");
    let cpu = CpuReference::from_model_with(model, formats, &mut |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    Ok((Box::new(cpu), precision != Precision::F32))
}

/// A bar over decode steps.
fn step_bar(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30.cyan/blue}} {{pos}}/{{len}} steps ({{per_sec}}, {{eta}} left)"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Measures one precision over every golden decode.
fn measure_all(
    backend: &mut dyn Backend,
    cases: &[GoldenCase],
    name: &str,
) -> Result<Vec<PromptReport>> {
    let total: usize =
        cases.iter().map(|c| agreement::teacher_forced_steps(c.ids.len(), c.gen.len())).sum();
    let bar = step_bar(total, name);
    let mut out = Vec::with_capacity(cases.len());
    for (i, c) in cases.iter().enumerate() {
        let a = agreement::measure(backend, &c.ids, &c.gen, &mut || bar.inc(1))
            .with_context(|| format!("fp32_cpu[{i}] ({:?})", truncate(&c.prompt, 40)))?;
        out.push(PromptReport {
            prompt: c.prompt.clone(),
            agreement: a,
            hf_bf16_gpu_prefix: c.hf_bf16_prefix,
        });
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Prints one precision's table.
fn print_table(run: &RunReport, cases: &[GoldenCase]) {
    let steps: usize = cases.iter().map(|c| c.gen.len()).sum();
    let hf = hf_sum(cases);
    let how = if run.emulated { ", weights emulated in f32 arithmetic" } else { "" };
    println!(
        "{} on {}{how}: {} prompts, {steps} golden steps (fp32_cpu)",
        run.precision,
        run.backend.unwrap_or("?"),
        cases.len()
    );
    println!("  {:<44} {:>16} {:>9} {:>12}", "prompt", "teacher-forced", "prefix", "HF bf16 gpu");
    for (p, c) in run.prompts.iter().zip(cases) {
        let tf = &p.agreement.teacher_forced;
        println!(
            "  {:<44} {:>16} {:>9} {:>12}",
            shown(&c.prompt, 44),
            format!("{}/{} {:5.1}%", tf.agree, tf.steps, tf.percent()),
            format!("{}/{}", p.agreement.prefix, c.gen.len()),
            c.hf_bf16_prefix.map_or_else(|| "-".to_owned(), |h| format!("{h}/{}", c.gen.len())),
        );
    }
    println!(
        "  {:<44} {:>16} {:>9} {:>12}",
        "total",
        format!("{}/{} {:5.1}%", run.teacher_forced_agree, run.steps, run.teacher_forced_percent),
        format!("{}/{steps}", run.prefix_sum),
        hf.map_or_else(|| "-".to_owned(), |h| format!("{h}/{steps}")),
    );
    println!();
}

/// Hugging Face's bf16 GPU prefixes summed, when every decode has one.
fn hf_sum(cases: &[GoldenCase]) -> Option<usize> {
    cases.iter().map(|c| c.hf_bf16_prefix).sum()
}

pub fn run(args: AgreeArgs) -> Result<()> {
    if let Some(min) = args.min_teacher_forced {
        if !(0.0..=100.0).contains(&min) {
            bail!("--min-teacher-forced {min}: give a percentage between 0 and 100");
        }
    }
    let (cases, golden_name) = read_golden(args.golden.as_deref())?;
    let mut bar = ImportBar::new();
    let model = Model::open(&args.model, &mut |p| bar.update(&p))
        .with_context(|| format!("opening model {}", args.model.display()))?;
    bar.finish();
    check_against_model(&cases, &model, &golden_name)?;

    let gpu_ok = amk_runtime::gpu::cuda_available();
    let use_gpu = match args.backend {
        BackendChoice::Gpu => true,
        BackendChoice::Cpu => false,
        BackendChoice::Auto => gpu_ok.is_ok(),
    };
    if let Err(why) = &gpu_ok {
        match args.backend {
            BackendChoice::Auto => {
                eprintln!("amk: no usable GPU ({why}); measuring on the CPU reference")
            }
            BackendChoice::Gpu => return Err(crate::gpu::no_gpu_for_backend(why)),
            BackendChoice::Cpu => {}
        }
    }
    if !use_gpu && args.precision.iter().any(|&p| p != Precision::F32) {
        eprintln!(
            "amk: note: on the CPU, bf16 and int8 are emulated in f32 arithmetic: the weights \
             are rounded or quantized as the GPU stores them"
        );
    }

    let golden_steps: usize = cases.iter().map(|c| c.gen.len()).sum();
    let mut runs = Vec::new();
    let mut seen = Vec::new();
    for &precision in &args.precision {
        if seen.contains(&precision) {
            continue;
        }
        seen.push(precision);
        // With a per-op plan in --config, the name says which classes it moves:
        // `bf16 (lm_head int8)`. (A knob file that does not parse is reported when measuring.)
        let formats = crate::gpu::weight_precision(precision, args.config.as_deref());
        let name = match &formats {
            Ok(formats) => formats.to_string(),
            Err(_) => precision_name(precision),
        };
        let mut run = RunReport {
            precision: name.clone(),
            backend: None,
            emulated: false,
            error: None,
            prompts: Vec::new(),
            steps: golden_steps,
            teacher_forced_agree: 0,
            teacher_forced_percent: 0.0,
            prefix_sum: 0,
        };
        let measured = formats
            .and_then(|f| make_backend(&model, (precision, f), use_gpu, args.config.as_ref()))
            .and_then(|(mut b, emulated)| {
                run.backend = Some(b.name());
                run.emulated = emulated;
                measure_all(b.as_mut(), &cases, &name)
            });
        match measured {
            Ok(prompts) => {
                run.teacher_forced_agree =
                    prompts.iter().map(|p| p.agreement.teacher_forced.agree).sum();
                run.teacher_forced_percent = percent(run.teacher_forced_agree, golden_steps);
                run.prefix_sum = prompts.iter().map(|p| p.agreement.prefix).sum();
                run.prompts = prompts;
                print_table(&run, &cases);
            }
            Err(e) => {
                let msg = format!("{e:#}");
                eprintln!("amk: {name}: cannot measure: {msg}");
                run.error = Some(msg);
            }
        }
        runs.push(run);
    }

    if runs.len() > 1 {
        println!("summary against fp32_cpu ({golden_steps} golden steps)");
        // Names with a per-op plan (`bf16 (lm_head int8)`) are longer than 12.
        let w = runs.iter().map(|r| r.precision.len()).max().unwrap_or(0).max(12);
        println!("  {:<w$} {:>16} {:>12}", "precision", "teacher-forced", "prefix sum");
        for r in &runs {
            match &r.error {
                None => println!(
                    "  {:<w$} {:>16} {:>12}",
                    r.precision,
                    format!(
                        "{}/{} {:5.1}%",
                        r.teacher_forced_agree, r.steps, r.teacher_forced_percent
                    ),
                    format!("{}/{golden_steps}", r.prefix_sum)
                ),
                Some(_) => println!("  {:<w$} {:>16} {:>12}", r.precision, "error", "error"),
            }
        }
        if let Some(h) = hf_sum(&cases) {
            println!("  {:<w$} {:>16} {:>12}", "HF bf16 gpu", "-", format!("{h}/{golden_steps}"));
        }
    }

    if let Some(path) = &args.json {
        let report = Report {
            model: args.model.display().to_string(),
            golden: golden_name.clone(),
            reference: "fp32_cpu",
            golden_steps,
            hf_bf16_gpu_prefix_sum: hf_sum(&cases),
            runs,
        };
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        check_outcome(&report.runs, args.min_teacher_forced)
    } else {
        check_outcome(&runs, args.min_teacher_forced)
    }
}

/// Fails when a precision could not be measured or falls below `--min-teacher-forced`.
fn check_outcome(runs: &[RunReport], min: Option<f64>) -> Result<()> {
    let failed: Vec<String> = runs
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.precision)))
        .collect();
    if !failed.is_empty() {
        bail!("some precisions could not be measured:\n  {}", failed.join("\n  "));
    }
    if let Some(min) = min {
        let low: Vec<String> = runs
            .iter()
            .filter(|r| r.teacher_forced_percent < min)
            .map(|r| format!("{} {:.1}%", r.precision, r.teacher_forced_percent))
            .collect();
        if !low.is_empty() {
            bail!("teacher-forced agreement below --min-teacher-forced {min}%: {}", low.join(", "));
        }
    }
    Ok(())
}

/// `s` quoted and escaped as Rust's `{:?}` writes it, cut to at most `n` characters.
fn shown(s: &str, n: usize) -> String {
    let quoted = format!("{s:?}");
    if quoted.chars().count() <= n {
        return quoted;
    }
    let mut t: String = quoted.chars().take(n.saturating_sub(4)).collect();
    t.push_str("...\"");
    t
}

/// The first `n` characters of `s`.
fn truncate(s: &str, n: usize) -> String {
    let mut t: String = s.chars().take(n).collect();
    if s.chars().count() > n {
        t.push_str("...");
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", parse_golden(text).unwrap_err())
    }

    #[test]
    fn golden_fields_are_named_in_errors() {
        assert!(err("{").contains("not valid JSON"));
        assert!(err("[]").contains("expected an object"));
        assert!(err("{}").contains("no `fp32_cpu` field"));
        assert!(err(r#"{"fp32_cpu": []}"#).contains("`fp32_cpu` is empty"));
        assert!(err(r#"{"fp32_cpu": [{"ids": [1]}]}"#).contains("`fp32_cpu[0].gen` is missing"));
        assert!(err(r#"{"fp32_cpu": [{"ids": [1], "gen": [2, -3]}]}"#)
            .contains("`fp32_cpu[0].gen[1]` is not a token id"));
        assert!(err(r#"{"fp32_cpu": [{"ids": "x", "gen": []}]}"#)
            .contains("`fp32_cpu[0].ids` is not a list"));
        assert!(
            err(r#"{"fp32_cpu": [{"ids": [], "gen": []}]}"#).contains("`fp32_cpu[0].ids` is empty")
        );
        assert!(err(r#"{"fp32_cpu": [{"ids": [1], "gen": []}], "bf16_gpu": [{"ids": [1]}]}"#)
            .contains("`bf16_gpu[0].agrees_with_fp32_cpu_for` is missing"));
    }

    #[test]
    fn hf_bf16_prefix_is_matched_by_prompt_ids() {
        let cases = parse_golden(
            r#"{"fp32_cpu": [{"prompt": "a", "ids": [1, 2], "gen": [3]},
                             {"prompt": "b", "ids": [4], "gen": [5, 6]}],
                "bf16_gpu": [{"ids": [4], "agrees_with_fp32_cpu_for": 1}]}"#,
        )
        .unwrap();
        assert_eq!(cases.len(), 2);
        assert_eq!((cases[0].hf_bf16_prefix, cases[1].hf_bf16_prefix), (None, Some(1)));
        assert_eq!(cases[1].gen, vec![5, 6]);
        assert_eq!(hf_sum(&cases), None);
    }
}
