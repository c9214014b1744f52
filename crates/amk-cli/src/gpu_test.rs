//! `amk gpu-test`: the GPU checks, runnable from the prebuilt binary on a machine with a GPU and
//! no Rust toolchain (`cargo xtask gpu-test` wraps it where both exist).
//!
//! 1. Exact mode (f32 weights): every `fp32_cpu` golden decode, token for token, to the end.
//! 2. bf16 mode: per prompt, how long it agrees with `fp32_cpu`, beside Hugging Face's own bf16
//!    run; the sum must be at least HF's.
//! 3. Safety: a schedule with one wait removed is refused before launch; a schedule that claims
//!    more co-resident blocks than the compiled kernel gets is refused with the occupancy
//!    numbers.
//! 4. Launch count: exactly one launch per decoded token, by the backend's own counter.
//! 5. Speed: bf16 ms per token at contexts 16, 256 and 1024 (median of many steps after warm-up,
//!    host wall clock around each synchronous launch) and the weight bandwidth it implies.

use crate::gpu::{
    build_backend, kv_bytes_per_position, scratch_dir, verify_or_refuse, weight_bytes, GpuArgs,
    Precision,
};
use amk_ir::Model;
use amk_runtime::gpu::{GpuBackend, GpuOptions};
use amk_runtime::{generate, Backend, GenerateOptions};
use amk_schedule::schedule::Instr;
use amk_schedule::{lower, ScheduleConfig};
use amk_verify::LaunchFacts;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

/// Run the GPU checks (exact and bf16 golden decodes, unsafe and non-fitting schedules refused,
/// one launch per token, speed at three contexts) and print a table; exit non-zero if any
/// check fails.
#[derive(Debug, Args)]
pub struct GpuTestArgs {
    /// Hugging Face model directory or .gguf file (SmolLM2-135M-Instruct for the golden checks).
    #[arg(long, short, required_unless_present_any = ["synthetic", "fixtures"])]
    pub model: Option<PathBuf>,
    /// Only run the model-coverage fixtures in exact mode: each subdirectory of this folder
    /// (fixtures/tiny) holding a checkpoint and the `expected.json` transformers produced; the
    /// greedy tokens must match to the end.
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
    /// Only compare the GPU's exact, bf16 and int8 modes, and four per-op precision plans
    /// (bf16 with int8 MLPs and LM head, and with every matrix int8; int8 with bf16 attention
    /// and LM head, and with every matrix bf16), with the CPU
    /// reference (holding the same weights) on synthetic models of several shapes (seeded
    /// random weights; no checkpoint).
    #[arg(long)]
    pub synthetic: bool,
    /// The golden decodes [default: the copy of fixtures/smollm2_golden.json built into amk].
    #[arg(long)]
    pub golden: Option<PathBuf>,
    /// Tokens timed per context.
    #[arg(long, default_value_t = 200)]
    pub timed_tokens: usize,
    /// Skip the golden decodes and refusal checks: only time --precision (default bf16) at
    /// contexts 16, 256, 1024. Without it --precision is not used: the checks run f32, then
    /// time bf16 and int8 (--synthetic compares all three).
    #[arg(long)]
    pub speed_only: bool,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

#[derive(serde::Deserialize)]
struct Golden {
    fp32_cpu: Vec<Case>,
    bf16_gpu: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    prompt: String,
    ids: Vec<u32>,
    gen: Vec<u32>,
    agrees_with_fp32_cpu_for: usize,
}

fn agree(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Decodes every golden prompt; returns per prompt (generated, agreement with fp32_cpu,
/// launches during it).
fn decode_all(
    backend: &mut GpuBackend,
    golden: &Golden,
    stop: &[u32],
) -> Result<Vec<(Vec<u32>, usize, u64)>> {
    let options = GenerateOptions { max_new_tokens: 64, stop_tokens: stop.to_vec() };
    let mut out = Vec::new();
    for case in &golden.fp32_cpu {
        let before = backend.launch_count();
        let g = generate(backend, &case.ids, &options, &mut |_| {})?;
        let launches = backend.launch_count() - before;
        let a = agree(&g.generated, &case.gen);
        out.push((g.generated, a, launches));
    }
    Ok(out)
}

/// GPU exact, bf16 and int8 modes against the CPU reference holding the same weights (f32, the
/// bf16-rounded values, or the dequantized int8 rows) on synthetic models: same tokens, logits
/// within 1e-4 of the largest logit, at every step.
fn synthetic(args: &GpuTestArgs) -> Result<()> {
    use amk_ir::synth::{write_checkpoint, SynthSpec};
    use amk_runtime::cpu::CpuReference;
    let smollm2_shaped = SynthSpec {
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 4,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        vocab_size: 49152,
        max_position_embeddings: 2048,
        ..SynthSpec::tiny()
    };
    let specs = [
        ("tiny (GQA 2, head_dim 16)", SynthSpec::tiny()),
        (
            "bias, untied, GQA 3, head_dim 64",
            SynthSpec {
                hidden_size: 96,
                num_heads: 6,
                num_kv_heads: 2,
                head_dim: 64,
                tie_word_embeddings: false,
                attention_bias: true,
                seed: 7,
                ..SynthSpec::tiny()
            },
        ),
        ("SmolLM2-shaped, 4 layers", smollm2_shaped),
    ];
    // Per-op precision plans: mixed kernels, with every class of matrices in each format.
    use amk_schedule::{PrecisionPlan, WeightFormat};
    let int8_mlp_and_head = PrecisionPlan {
        mlp: Some(WeightFormat::Int8),
        lm_head: Some(WeightFormat::Int8),
        ..PrecisionPlan::default()
    };
    let bf16_attention_and_head = PrecisionPlan {
        attention: Some(WeightFormat::Bf16),
        lm_head: Some(WeightFormat::Bf16),
        ..PrecisionPlan::default()
    };
    // Every matrix in the other format than the build's.
    let all = |f| PrecisionPlan { attention: Some(f), mlp: Some(f), lm_head: Some(f) };
    let modes = [
        (Precision::F32, None),
        (Precision::Bf16, None),
        (Precision::Int8, None),
        (Precision::Bf16, Some(int8_mlp_and_head)),
        (Precision::Int8, Some(bf16_attention_and_head)),
        (Precision::Bf16, Some(all(WeightFormat::Int8))),
        (Precision::Int8, Some(all(WeightFormat::Bf16))),
    ];
    let mut failed = 0;
    let mut checks = 0;
    for ((name, spec), (precision, plan)) in
        specs.iter().flat_map(|s| modes.map(|m| (s.clone(), m)))
    {
        checks += 1;
        let dir = scratch_dir("amk-gpu-test")?;
        write_checkpoint(&spec, &dir)?;
        let model = Model::open(&dir, &mut |_| {})?;
        let mut gargs = args.gpu.clone();
        gargs.precision = Some(precision);
        if let Some(plan) = plan {
            // The knobs given (or the defaults) with this plan, from a file as a user gives it.
            let knobs = ScheduleConfig {
                precision: plan,
                ..crate::gpu::read_knobs(args.gpu.config.as_deref())?
            };
            let path = dir.join("knobs.ron");
            std::fs::write(&path, knobs.to_ron())
                .with_context(|| format!("cannot write {}", path.display()))?;
            gargs.config = Some(path);
        }
        // The reference holds the same weights the device does (int8: dequantized rows).
        let formats = crate::gpu::weight_precision(precision, gargs.config.as_deref())?;
        let mut cpu = CpuReference::from_model_with(&model, formats, &mut |_, _| {})?;
        let mut gpu = match build_backend(&model, &gargs, true) {
            Ok(gpu) => gpu,
            // Knobs that refuse a shape (e.g. `fuse_o` with an output bias) skip it, saying why.
            Err(e)
                if matches!(
                    e.downcast_ref::<amk_schedule::LowerError>(),
                    Some(amk_schedule::LowerError::Unsupported(_))
                ) =>
            {
                checks -= 1;
                println!("{:<42} skip  {e:#}", format!("{name}, {formats}"));
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut worst = 0f32;
        let mut mismatch = None;
        let mut tok_c = 5u32;
        let mut tok_g = 5u32;
        for pos in 0..24 {
            tok_c = cpu.step(tok_c, pos)?;
            tok_g = gpu.step(tok_g, pos)?;
            let (lc, lg) = (cpu.logits().unwrap_or(&[]), gpu.logits().unwrap_or(&[]));
            let scale = lc.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let diff = lc.iter().zip(lg).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
            worst = worst.max(if lc.len() == lg.len() { diff } else { f32::INFINITY });
            if tok_c != tok_g && mismatch.is_none() {
                mismatch = Some(pos);
            }
            if mismatch.is_some() {
                break;
            }
        }
        // The same 24 steps as launches queued back to back (overlapped where the GPU has
        // programmatic dependent launch), as the speed checks run them, then again with every
        // launch hinting a wrong position (the kernel must refill its rope table): both must
        // end at the reference's last token.
        let queued = match mismatch {
            None => {
                gpu.reset();
                let exact = gpu.decode_queued(5, 0, 24)?;
                gpu.reset();
                gpu.skew_position_hints(3);
                let skewed = gpu.decode_queued(5, 0, 24);
                gpu.skew_position_hints(0);
                Some((exact, skewed?))
            }
            Some(_) => None,
        };
        let queued_ok = queued.is_none_or(|(q, s)| q == tok_c && s == tok_c);
        let ok = mismatch.is_none() && worst < 1e-4 && queued_ok;
        if !ok {
            failed += 1;
        }
        println!(
            "{:<42} {:<5} max logit error {worst:.2e} of the largest; {}; {}",
            format!("{name}, {formats}"),
            if ok { "ok" } else { "FAIL" },
            match (mismatch, queued) {
                (Some(p), _) => format!("tokens differ at step {p}"),
                (None, Some((q, _))) if q != tok_c => {
                    format!("24 tokens agree, but 24 queued launches end at {q}, not {tok_c}")
                }
                (None, Some((_, s))) if s != tok_c => format!(
                    "24 tokens agree, but with wrong position hints queued launches end at {s}, \
                     not {tok_c}"
                ),
                _ => "24 tokens agree, also queued, also with wrong position hints".into(),
            },
            gpu.fit()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("{} passed, {failed} failed", checks - failed);
    if failed > 0 {
        bail!("{failed} synthetic GPU check(s) failed");
    }
    Ok(())
}

/// What `fixtures/tiny/*/expected.json` holds that this check reads.
#[derive(serde::Deserialize)]
struct FixtureExpected {
    architecture: String,
    prompt_ids: Vec<u32>,
    tokens: Vec<u32>,
}

/// GPU exact mode on each model-coverage fixture: transformers' greedy tokens, to the end.
fn fixtures(args: &GpuTestArgs, root: &std::path::Path) -> Result<()> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("cannot list {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!("{}: no subdirectory holds an expected.json", root.display());
    }
    let mut failed = 0;
    println!("{:<14} {:<20} {:<6} result", "fixture", "architecture", "status");
    for dir in &dirs {
        let name = dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let path = dir.join("expected.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let want: FixtureExpected = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a fixture's expected.json", path.display()))?;
        let outcome = (|| -> Result<(Vec<u32>, String)> {
            let model = Model::open(dir, &mut |_| {})?;
            let mut gargs = args.gpu.clone();
            gargs.precision = Some(Precision::F32);
            let mut gpu = build_backend(&model, &gargs, true)?;
            let options =
                GenerateOptions { max_new_tokens: want.tokens.len(), stop_tokens: Vec::new() };
            let g = generate(&mut gpu, &want.prompt_ids, &options, &mut |_| {})?;
            Ok((g.generated, gpu.fit().to_string()))
        })();
        let (ok, result) = match outcome {
            Ok((got, fit)) => {
                let a = agree(&got, &want.tokens);
                (a == want.tokens.len(), format!("{a}/{} tokens; {fit}", want.tokens.len()))
            }
            Err(e) => (false, format!("error: {e:#}")),
        };
        failed += usize::from(!ok);
        let status = if ok { "ok" } else { "FAIL" };
        println!("{name:<14} {:<20} {status:<6} {result}", want.architecture);
    }
    println!("{} passed, {failed} failed", dirs.len() - failed);
    if failed > 0 {
        bail!("{failed} fixture(s) differ from transformers on the GPU");
    }
    Ok(())
}

/// Times `backend` at contexts 16, 256 and 1024 (`timed` launches queued back to back, CUDA
/// events between batches of [`amk_runtime::gpu::TIMING_BATCH`]; the median of the batches'
/// times per launch) and adds one row per context; returns the JSON records.
fn time_contexts(
    backend: &mut GpuBackend,
    model: &Model,
    precision: Precision,
    timed: usize,
    rows: &mut Vec<(String, String, bool)>,
) -> Result<Vec<serde_json::Value>> {
    let name = precision.weight_dtype().as_str();
    let mut speeds = Vec::new();
    for ctx in [16usize, 256, 1024] {
        backend.reset();
        let mut tok = 504u32;
        for pos in 0..ctx {
            tok = backend.step(tok.min(49000), pos)?;
        }
        let mut times: Vec<f64> = backend
            .time_decode(tok.min(49000), ctx as u32, timed)?
            .into_iter()
            .map(f64::from)
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let positions = (ctx + timed / 2) as u64;
        let bytes = weight_bytes(model, precision.weight_elem_bytes())
            + kv_bytes_per_position(model) * positions;
        let gbps = bytes as f64 / (median * 1e-3) / 1e9;
        rows.push((
            format!("{name} speed, context {ctx}"),
            format!("{median:.3} ms/token, {:.0} tokens/s, {gbps:.0} GB/s", 1e3 / median),
            true,
        ));
        let mut speed =
            serde_json::json!({"context": ctx, "ms_per_token": median, "gb_per_s": gbps});
        if let Some(stamps) = backend.read_trace()? {
            // The last timed launch's timestamps.
            let schedule = backend.verified().schedule();
            let traced = amk_runtime::trace::analyze(schedule, backend.worker_start(), &stamps)?;
            println!("\ntrace, {name}, context {ctx}:\n{traced}");
            speed["trace"] = serde_json::to_value(&traced)?;
        }
        speeds.push(speed);
    }
    Ok(speeds)
}

pub fn run(args: GpuTestArgs) -> Result<()> {
    amk_runtime::gpu::cuda_available()
        .map_err(|why| anyhow::anyhow!("amk gpu-test needs a CUDA GPU: {why}"))?;
    if args.synthetic {
        return synthetic(&args);
    }
    if let Some(root) = &args.fixtures {
        return fixtures(&args, root);
    }
    let model_path = args.model.clone().context("--model is required")?;
    let model = Model::open(&model_path, &mut |_| {})
        .with_context(|| format!("opening {}", model_path.display()))?;
    let stop = model.config.eos_token_ids.clone();
    let mut rows: Vec<(String, String, bool)> = Vec::new();
    let mut report = serde_json::Map::new();

    let mut bf16_args = args.gpu.clone();
    bf16_args.precision = Some(Precision::Bf16);
    let mut bf16_backend = build_backend(&model, &bf16_args, false)?;
    let fit = bf16_backend.fit().clone();
    let mut launches_ok = true;
    if !args.speed_only {
        let (text, golden_name) = crate::golden::read(args.golden.as_deref())?;
        let golden: Golden = serde_json::from_str(&text)
            .with_context(|| format!("{golden_name} is not a golden-decode file"))?;
        // 1. Exact mode.
        let mut exact_args = args.gpu.clone();
        exact_args.precision = Some(Precision::F32);
        let mut exact = build_backend(&model, &exact_args, false)?;
        let results = decode_all(&mut exact, &golden, &stop)?;
        for (case, (gen, a, launches)) in golden.fp32_cpu.iter().zip(&results) {
            let ok = gen == &case.gen;
            // Every prompt token is one launch, and each generated token after the first.
            let expected = (case.ids.len() + gen.len() - 1) as u64;
            launches_ok &= *launches == expected;
            rows.push((
                format!("exact f32: {:.40}", format!("{:?}", case.prompt)),
                format!(
                    "{a}/{} tokens; {launches} launches for {} tokens",
                    case.gen.len(),
                    expected
                ),
                ok,
            ));
        }
        report.insert("exact_agree".into(), results.iter().map(|r| r.1).collect::<Vec<_>>().into());
        drop(exact);

        // 2. bf16 mode against HF's own bf16 run.
        let results = decode_all(&mut bf16_backend, &golden, &stop)?;
        let ours: usize = results.iter().map(|r| r.1).sum();
        let hf: usize = golden.bf16_gpu.iter().map(|c| c.agrees_with_fp32_cpu_for).sum();
        for (case, (_, a, _)) in golden.bf16_gpu.iter().zip(&results) {
            rows.push((
                format!("bf16: {:.40}", format!("{:?}", case.prompt)),
                format!("agrees {a} (HF bf16: {})", case.agrees_with_fp32_cpu_for),
                true,
            ));
        }
        rows.push(("bf16: total agreement".into(), format!("{ours} (HF bf16: {hf})"), ours >= hf));
        report.insert("bf16_agree".into(), results.iter().map(|r| r.1).collect::<Vec<_>>().into());
        report.insert("hf_bf16_agree".into(), hf.into());

        // 4. Launch count.
        rows.push((
            "one launch per token".into(),
            "launch counter = tokens fed".into(),
            launches_ok,
        ));
    }

    let mut bf16 = Some(bf16_backend);
    // 5. Speed: bf16, then int8 (or only the precision asked for, with --speed-only).
    let speed_precisions = match args.gpu.precision {
        Some(p) if args.speed_only => vec![p],
        _ => vec![Precision::Bf16, Precision::Int8],
    };
    for precision in speed_precisions {
        let mut backend = if precision == Precision::Bf16 {
            bf16.take().context("the bf16 backend is timed once")?
        } else {
            let mut a = args.gpu.clone();
            a.precision = Some(precision);
            build_backend(&model, &a, false)?
        };
        let name = precision.weight_dtype().as_str();
        let speeds = time_contexts(&mut backend, &model, precision, args.timed_tokens, &mut rows)?;
        report.insert(format!("speed_{name}"), speeds.into());
    }
    drop(bf16);

    if !args.speed_only {
        // 3a. An unsafe schedule (one wait removed) is refused before launch.
        let knobs = crate::gpu::read_knobs(args.gpu.config.as_deref())?;
        let mut unsafe_schedule = lower(&model.graph, &knobs)?;
        let removed = unsafe_schedule.workers.iter_mut().enumerate().find_map(|(w, worker)| {
            let i = worker.instrs.iter().position(|x| matches!(x, Instr::Wait { .. }))?;
            worker.instrs.remove(i);
            Some((w, i))
        });
        let facts = LaunchFacts { sm_count: knobs.sm_count, blocks_per_sm: knobs.blocks_per_sm };
        let refused = verify_or_refuse(&unsafe_schedule, &facts);
        let (w, i) = removed.unwrap_or((0, 0));
        rows.push((
            format!("unsafe schedule (wait {i} of worker {w} removed)"),
            match &refused {
                Ok(_) => "ACCEPTED".into(),
                Err(e) => {
                    format!("refused before launch: {:.90}", e.to_string().replace('\n', " "))
                }
            },
            refused.is_err(),
        ));

        // 3b. A schedule that claims two blocks per SM where the kernel fits one.
        let greedy = ScheduleConfig {
            workers: fit.sm_count * (fit.blocks_per_sm + 1),
            blocks_per_sm: fit.blocks_per_sm + 1,
            sm_count: fit.sm_count,
            ..knobs.clone()
        };
        let big = lower(&model.graph, &greedy)?;
        let claimed = verify_or_refuse(
            &big,
            &LaunchFacts { sm_count: greedy.sm_count, blocks_per_sm: greedy.blocks_per_sm },
        )?;
        let options = GpuOptions {
            weight_dtype: args.gpu.weight_dtype(),
            block_threads: args.gpu.block_threads,
            ..GpuOptions::default()
        };
        let outcome = GpuBackend::new(&model, &claimed, options);
        rows.push((
            format!("{} workers, {} blocks/SM claimed", greedy.workers, greedy.blocks_per_sm),
            match &outcome {
                Ok(_) => "ACCEPTED".into(),
                Err(e) => format!("refused: {:.110}", e.to_string().replace('\n', " ")),
            },
            outcome.is_err(),
        ));
        drop(outcome);
    }

    println!("\namk gpu-test on {}", fit);
    println!("{:<52} {:<6} result", "check", "status");
    let mut failed = 0;
    for (name, result, ok) in &rows {
        if !ok {
            failed += 1;
        }
        println!("{name:<52} {:<6} {result}", if *ok { "ok" } else { "FAIL" });
    }
    println!("{} passed, {failed} failed", rows.len() - failed);
    if let Some(path) = &args.json_out {
        report.insert("fit".into(), serde_json::to_value(&fit)?);
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if failed > 0 {
        bail!("{failed} GPU check(s) failed");
    }
    Ok(())
}
