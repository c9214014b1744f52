//! The schedule executor against the CPU reference: for the default lowering, every
//! interleaving gives the reference's logits and tokens; a schedule that under-declares its
//! accesses or loses a signal is caught.

use amk_ir::config::{Architecture, Llama3RopeScaling};
use amk_ir::synth::{write_checkpoint, SynthSpec};
use amk_ir::Model;
use amk_runtime::cpu::CpuReference;
use amk_runtime::schedule_exec::{ExecError, Policy, ScheduleExecutor};
use amk_runtime::{generate, Backend, GenerateOptions};
use amk_schedule::schedule::{BufferKind, Instr};
use amk_schedule::{lower, Schedule, ScheduleConfig};
use std::sync::Arc;

fn tiny(spec: SynthSpec) -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_checkpoint(&spec, dir.path()).expect("synthetic checkpoint");
    let model = Model::open(dir.path(), &mut |_| {}).expect("model opens");
    (dir, model)
}

/// A tiny model with Llama 3.x rope scaling (its frequency bands), seeded.
fn llama3_rope(seed: u64) -> SynthSpec {
    SynthSpec {
        rope_theta: 500_000.0,
        rope_llama3: Some(Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 128.0,
        }),
        seed,
        ..SynthSpec::tiny()
    }
}

fn config(workers: u32) -> ScheduleConfig {
    ScheduleConfig {
        workers,
        o_rows: 24,
        mlp_rows: 40,
        down_rows: 32,
        head_rows: 64,
        // Unsplit attention and the unfused MLP compute bit for bit what the reference does
        // (split attention and the fused MLP's atomic adds reassociate f32 sums: they are
        // checked with a tolerance in `split_attention_matches_the_reference` and
        // `fused_down_matches_the_reference`; the head-split output projection's adds in
        // `head_split_o_matches_the_reference`).
        attn_splits: 1,
        fuse_down: false,
        o_by_head: false,
        ..Default::default()
    }
}

/// Steps the reference and the executor through `tokens` from position 0: the same next token
/// at every step, and logits within 1e-5 of the largest (the same f32 sums in another order).
fn assert_matches_up_to_rounding(
    cpu: &mut CpuReference,
    exec: &mut ScheduleExecutor,
    tokens: &[u32],
    what: &str,
) {
    cpu.reset();
    for (pos, &t) in tokens.iter().enumerate() {
        let (a, b) = (cpu.step(t, pos).unwrap(), exec.step(t, pos).unwrap());
        assert_eq!(a, b, "{what}, position {pos}");
        let (x, y) = (cpu.logits().unwrap(), exec.logits().unwrap());
        let scale = x.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = x.iter().zip(y).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-5 * scale, "{what}, position {pos}: {diff:e}");
    }
}

/// Verifies `s`, then runs it on the executor under the lowest-first, highest-first and a
/// random (`seed`) policy, each against the reference with [`assert_matches_up_to_rounding`].
fn assert_verified_and_every_policy_matches(
    model: &Model,
    cpu: &mut CpuReference,
    s: Schedule,
    seed: u64,
    what: &str,
) {
    let facts = amk_verify::LaunchFacts { sm_count: 132, blocks_per_sm: 1 };
    amk_verify::verify(&s, &facts).unwrap_or_else(|e| panic!("{what}: {e}"));
    let s = Arc::new(s);
    let tokens = [7, 90, 150, 3, 44, 5, 61, 20];
    for policy in [Policy::LowestFirst, Policy::HighestFirst, Policy::Random(seed)] {
        let mut exec = ScheduleExecutor::from_model(model, s.clone(), &mut |_, _| {}).unwrap();
        exec.check_regions = true;
        exec.policy = Some(policy);
        assert_matches_up_to_rounding(cpu, &mut exec, &tokens, &format!("{what} {policy:?}"));
    }
}

#[test]
fn every_interleaving_matches_the_reference() {
    let shapes = [
        SynthSpec::tiny(),
        SynthSpec {
            num_heads: 6,
            num_kv_heads: 2,
            head_dim: 16,
            hidden_size: 96,
            tie_word_embeddings: false,
            attention_bias: true,
            seed: 7,
            ..SynthSpec::tiny()
        },
        SynthSpec { num_heads: 4, num_kv_heads: 4, num_layers: 3, seed: 9, ..SynthSpec::tiny() },
        // Issue 7's features: a sliding window that binds within the 12 steps, q/k/v-only
        // biases, per-head q/k norms (with all four biases), llama3 rope.
        SynthSpec {
            architecture: Architecture::Mistral,
            sliding_window: Some(3),
            seed: 11,
            ..SynthSpec::tiny()
        },
        SynthSpec { architecture: Architecture::Qwen2, seed: 12, ..SynthSpec::tiny() },
        SynthSpec {
            architecture: Architecture::Qwen3,
            attention_bias: true,
            seed: 13,
            ..SynthSpec::tiny()
        },
        llama3_rope(14),
    ];
    for spec in shapes {
        let (_dir, model) = tiny(spec.clone());
        let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).unwrap();
        for workers in [1, 3, 16] {
            let schedule = Arc::new(lower(&model.graph, &config(workers)).unwrap());
            let mut exec = ScheduleExecutor::from_model(&model, schedule, &mut |_, _| {}).unwrap();
            assert!(exec.check_regions || !cfg!(debug_assertions));
            exec.check_regions = true;
            for seed in 0..4u64 {
                exec.seed = seed;
                cpu.reset();
                exec.reset();
                let tokens: Vec<u32> =
                    (0..12).map(|i| (i * 37 + seed as u32 * 11) % 250 + 3).collect();
                for (pos, &t) in tokens.iter().enumerate() {
                    let a = cpu.step(t, pos).unwrap();
                    let b = exec.step(t, pos).unwrap();
                    assert_eq!(a, b, "{spec:?} workers {workers} seed {seed} pos {pos}");
                    assert_eq!(cpu.logits().unwrap(), exec.logits().unwrap(), "logits, pos {pos}");
                }
            }
        }
    }
}

#[test]
fn explicit_policies_agree() {
    let (_dir, model) = tiny(SynthSpec::tiny());
    let schedule = Arc::new(lower(&model.graph, &config(5)).unwrap());
    let mut results = Vec::new();
    for policy in [Policy::LowestFirst, Policy::HighestFirst, Policy::Random(1), Policy::Random(2)]
    {
        let mut exec =
            ScheduleExecutor::from_model(&model, schedule.clone(), &mut |_, _| {}).unwrap();
        exec.policy = Some(policy);
        let mut logits = Vec::new();
        for (pos, t) in [5u32, 80, 200, 17].into_iter().enumerate() {
            exec.step(t, pos).unwrap();
            logits.push(exec.logits().unwrap().to_vec());
        }
        results.push(logits);
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
}

/// A schedule with one `Signal` removed: a worker waits forever, and the executor says which.
#[test]
fn lost_signal_is_a_reported_deadlock() {
    let (_dir, model) = tiny(SynthSpec::tiny());
    let mut s: Schedule = lower(&model.graph, &config(3)).unwrap();
    let (w, i) = s
        .workers
        .iter()
        .enumerate()
        .find_map(|(w, wk)| {
            wk.instrs.iter().position(|x| matches!(x, Instr::Signal(_))).map(|i| (w, i))
        })
        .unwrap();
    s.workers[w].instrs.remove(i);
    let mut exec = ScheduleExecutor::from_model(&model, Arc::new(s), &mut |_, _| {}).unwrap();
    exec.check_regions = true;
    let err = exec.launch(Policy::Random(3)).unwrap_err();
    let ExecError::Deadlock { stuck, .. } = &err else { panic!("expected a deadlock, got {err}") };
    assert!(!stuck.is_empty());
    assert!(err.to_string().contains("embed.done"), "{err}");
}

/// A task whose declared write region is one word short is caught at the access.
#[test]
fn undeclared_access_is_caught() {
    let (_dir, model) = tiny(SynthSpec::tiny());
    let mut s = lower(&model.graph, &config(2)).unwrap();
    let t = s.tasks.iter().position(|t| t.name == "L0.o.r0").unwrap();
    s.tasks[t].writes[0].len -= 4;
    let mut exec = ScheduleExecutor::from_model(&model, Arc::new(s), &mut |_, _| {}).unwrap();
    exec.check_regions = true;
    let err = exec.launch(Policy::LowestFirst).unwrap_err().to_string();
    assert!(err.contains("L0.o.r0") && err.contains("writes") && err.contains("resid"), "{err}");
}

/// The real model: the default (H100) schedule, run by the executor with a different
/// interleaving at every launch, reproduces the golden fp32 decodes token for token.
#[test]
fn smollm2_default_schedule_reproduces_golden_tokens() {
    use amk_ir::cache::{missing_model_hint, SMOLLM2};
    #[derive(serde::Deserialize)]
    struct Golden {
        fp32_cpu: Vec<Case>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        ids: Vec<u32>,
        gen: Vec<u32>,
    }
    let dir = SMOLLM2.hf_dir();
    assert!(dir.join("config.json").is_file(), "{}", missing_model_hint(&SMOLLM2));
    let golden: Golden =
        serde_json::from_str(include_str!("../../../fixtures/smollm2_golden.json")).unwrap();
    let model = Model::open(&dir, &mut |_| {}).unwrap();
    let schedule = Arc::new(lower(&model.graph, &ScheduleConfig::default()).unwrap());
    let mut exec = ScheduleExecutor::from_model(&model, schedule, &mut |_, _| {}).unwrap();
    exec.check_regions = true;
    let options =
        GenerateOptions { max_new_tokens: 64, stop_tokens: model.config.eos_token_ids.clone() };
    for (i, case) in golden.fp32_cpu.iter().enumerate() {
        exec.seed = 1000 + i as u64;
        let out = generate(&mut exec, &case.ids, &options, &mut |_| {}).unwrap();
        assert_eq!(out.generated, case.gen, "golden prompt {i}");
    }
}

/// The knobs that change a schedule's shape (unfused norms, placement order, round-robin
/// placement) keep its meaning: same tokens and logits as the reference, and it verifies.
#[test]
fn knob_variants_match_the_reference() {
    use amk_schedule::config::{Assignment, TaskOrder};
    let (_dir, model) = tiny(SynthSpec { num_layers: 3, seed: 5, ..SynthSpec::tiny() });
    let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).unwrap();
    for (fuse_norm, task_order, assignment) in [
        (false, TaskOrder::AsLowered, Assignment::BalancedBytes),
        (true, TaskOrder::LargestFirst, Assignment::BalancedBytes),
        (false, TaskOrder::LargestFirst, Assignment::RoundRobin),
    ] {
        let knobs = ScheduleConfig { fuse_norm, task_order, assignment, ..config(6) };
        let s = lower(&model.graph, &knobs).unwrap();
        let facts = amk_verify::LaunchFacts { sm_count: 132, blocks_per_sm: 1 };
        amk_verify::verify(&s, &facts).unwrap_or_else(|e| panic!("{knobs:?}: {e}"));
        let mut exec = ScheduleExecutor::from_model(&model, Arc::new(s), &mut |_, _| {}).unwrap();
        exec.check_regions = true;
        cpu.reset();
        for (pos, t) in [7u32, 90, 150, 3, 44].into_iter().enumerate() {
            assert_eq!(cpu.step(t, pos).unwrap(), exec.step(t, pos).unwrap(), "{knobs:?}");
            assert_eq!(cpu.logits().unwrap(), exec.logits().unwrap(), "{knobs:?}");
        }
    }
}

/// Attention split over positions (flash-decoding partials combined by the output projection)
/// keeps the reference's tokens, with logits equal up to f32 reassociation, for parts that
/// leave some of them empty at short contexts, and under a sliding window.
#[test]
fn split_attention_matches_the_reference() {
    for (spec, window) in [
        (SynthSpec { num_layers: 2, seed: 21, ..SynthSpec::tiny() }, None),
        (
            SynthSpec {
                num_layers: 2,
                seed: 22,
                architecture: Architecture::Mistral,
                sliding_window: Some(5),
                ..SynthSpec::tiny()
            },
            Some(5),
        ),
    ] {
        let (_dir, model) = tiny(spec.clone());
        assert_eq!(model.config.sliding_window, window);
        let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).unwrap();
        for parts in [2, 3, 7] {
            let knobs = ScheduleConfig { attn_splits: parts, ..config(9) };
            let s = lower(&model.graph, &knobs).unwrap();
            let facts = amk_verify::LaunchFacts { sm_count: 132, blocks_per_sm: 1 };
            amk_verify::verify(&s, &facts).unwrap_or_else(|e| panic!("{parts} parts: {e}"));
            let mut exec =
                ScheduleExecutor::from_model(&model, Arc::new(s), &mut |_, _| {}).unwrap();
            exec.check_regions = true;
            let tokens = [7, 90, 150, 3, 44, 5, 61, 200, 17, 9];
            assert_matches_up_to_rounding(&mut cpu, &mut exec, &tokens, &format!("{parts} parts"));
        }
    }
}

/// The down projection folded into the gate/up tasks (atomic adds into the residual, the
/// output projection's residual snapshot feeding the MLP's norm) keeps the reference's tokens,
/// with logits equal up to f32 reassociation, with fused and unfused norms, under every
/// executor policy (each launch runs the adds in a different order).
#[test]
fn fused_down_matches_the_reference() {
    let (_dir, model) = tiny(SynthSpec { num_layers: 3, seed: 31, ..SynthSpec::tiny() });
    let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).unwrap();
    for (fuse_norm, mlp_rows) in [(true, 8), (false, 5), (true, 64)] {
        let knobs = ScheduleConfig { fuse_down: true, fuse_norm, mlp_rows, ..config(9) };
        let s = lower(&model.graph, &knobs).unwrap();
        assert!(s.tasks.iter().all(|t| !t.name.contains(".down.")), "{knobs:?}");
        assert!(s.tasks.iter().any(|t| !t.adds.is_empty()), "{knobs:?}");
        assert_eq!(s.buffers.iter().any(|b| b.name == "resid_mlp"), fuse_norm);
        let facts = amk_verify::LaunchFacts { sm_count: 132, blocks_per_sm: 1 };
        amk_verify::verify(&s, &facts).unwrap_or_else(|e| panic!("{knobs:?}: {e}"));
        let mut exec = ScheduleExecutor::from_model(&model, Arc::new(s), &mut |_, _| {}).unwrap();
        exec.check_regions = true;
        let tokens = [7, 90, 150, 3, 44, 5, 61];
        assert_matches_up_to_rounding(&mut cpu, &mut exec, &tokens, &format!("{knobs:?}"));
    }
}

/// The attention output projection folded into whole-head attention tasks (atomic adds into
/// two versions of the residual, copied from the layer's input by the qkv phase) keeps the
/// reference's tokens, with logits equal up to f32 reassociation, with and without the fused
/// MLP and fused norms, under a sliding window too.
#[test]
fn fused_o_matches_the_reference() {
    for (spec, window) in [
        (SynthSpec { num_layers: 3, seed: 41, ..SynthSpec::tiny() }, None),
        (
            SynthSpec {
                num_layers: 2,
                seed: 42,
                architecture: Architecture::Mistral,
                sliding_window: Some(4),
                ..SynthSpec::tiny()
            },
            Some(4),
        ),
    ] {
        let (_dir, model) = tiny(spec);
        assert_eq!(model.config.sliding_window, window);
        let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).unwrap();
        for (fuse_down, fuse_norm) in [(true, true), (false, true), (true, false)] {
            let knobs =
                ScheduleConfig { fuse_o: true, attn_splits: 1, fuse_down, fuse_norm, ..config(9) };
            let s = lower(&model.graph, &knobs).unwrap();
            assert!(s.tasks.iter().all(|t| !t.name.contains(".o.")), "{knobs:?}");
            let layers = model.config.num_layers;
            assert_eq!(
                s.buffers.iter().filter(|b| b.name.starts_with("resid.")).count(),
                2 * layers + 1
            );
            let facts = amk_verify::LaunchFacts { sm_count: 132, blocks_per_sm: 1 };
            amk_verify::verify(&s, &facts).unwrap_or_else(|e| panic!("{knobs:?}: {e}"));
            let mut exec =
                ScheduleExecutor::from_model(&model, Arc::new(s), &mut |_, _| {}).unwrap();
            exec.check_regions = true;
            let tokens = [7, 90, 150, 3, 44, 5, 61, 20];
            assert_matches_up_to_rounding(&mut cpu, &mut exec, &tokens, &format!("{knobs:?}"));
        }
    }
}

/// The query projection folded into the attention parts (each part projects its head's query
/// and attends over the rows before the position; the output projection's combine adds the
/// current row from the key/value heads the same phase projected, and a later task appends
/// them) keeps the reference's tokens, with logits equal up to f32 reassociation: across the
/// architecture features (grouped and per-head key/value heads, biases, Qwen3's q/k norms,
/// llama3 rope, a sliding window that binds), with one or several parts, fused and unfused
/// norms and MLPs, under every executor policy.
#[test]
fn fused_q_matches_the_reference() {
    let specs = [
        SynthSpec { num_layers: 3, seed: 51, ..SynthSpec::tiny() },
        SynthSpec {
            num_heads: 6,
            num_kv_heads: 2,
            head_dim: 16,
            hidden_size: 96,
            tie_word_embeddings: false,
            attention_bias: true,
            seed: 52,
            ..SynthSpec::tiny()
        },
        SynthSpec {
            architecture: Architecture::Mistral,
            sliding_window: Some(3),
            seed: 53,
            ..SynthSpec::tiny()
        },
        SynthSpec {
            architecture: Architecture::Qwen3,
            num_kv_heads: 4,
            seed: 54,
            ..SynthSpec::tiny()
        },
        SynthSpec {
            rope_llama3: Some(Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 16.0,
            }),
            seed: 55,
            ..SynthSpec::tiny()
        },
    ];
    for spec in specs {
        let (_dir, model) = tiny(spec.clone());
        let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).unwrap();
        for (attn_splits, fuse_down, fuse_norm) in
            [(1, false, true), (3, true, true), (2, true, false)]
        {
            let knobs =
                ScheduleConfig { fuse_q: true, attn_splits, fuse_down, fuse_norm, ..config(9) };
            let s = lower(&model.graph, &knobs).unwrap();
            assert!(s.tasks.iter().all(|t| !t.name.contains(".q.")), "{knobs:?}");
            assert!(
                s.counters.iter().all(|c| !c.name.contains(".qkv.")),
                "no qkv phase: {knobs:?}"
            );
            let what = format!("{spec:?} {knobs:?}");
            assert_verified_and_every_policy_matches(&model, &mut cpu, s, 3, &what);
        }
    }
}

/// Three shapes for the attention-side knobs (seeds `seed..seed + 3`): three layers; grouped
/// heads with biases and an untied head; a sliding window that binds within the steps.
fn attention_shapes(seed: u64) -> [SynthSpec; 3] {
    [
        SynthSpec { num_layers: 3, seed, ..SynthSpec::tiny() },
        SynthSpec {
            num_heads: 6,
            num_kv_heads: 2,
            head_dim: 16,
            hidden_size: 96,
            tie_word_embeddings: false,
            attention_bias: true,
            seed: seed + 1,
            ..SynthSpec::tiny()
        },
        SynthSpec {
            architecture: Architecture::Mistral,
            sliding_window: Some(3),
            seed: seed + 2,
            ..SynthSpec::tiny()
        },
    ]
}

/// The output projection split over heads (each task combines one head's partials for some of
/// its dimensions and adds their columns' share into two residual versions with atomic adds)
/// keeps the reference's tokens, with logits equal up to f32 reassociation: with one or
/// several parts, head dimensions split or whole, fused and unfused MLPs and norms, grouped
/// heads and a sliding window, under every executor policy.
#[test]
fn head_split_o_matches_the_reference() {
    for spec in attention_shapes(61) {
        let (_dir, model) = tiny(spec.clone());
        let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).unwrap();
        for (attn_splits, o_rows, fuse_down, fuse_norm) in
            [(1, 16, false, true), (3, 5, true, true), (2, 8, true, false)]
        {
            let knobs = ScheduleConfig {
                o_by_head: true,
                attn_splits,
                o_rows,
                fuse_down,
                fuse_norm,
                ..config(9)
            };
            let s = lower(&model.graph, &knobs).unwrap();
            let layers = model.config.num_layers;
            assert_eq!(
                s.buffers.iter().filter(|b| b.name.starts_with("resid.")).count(),
                2 * layers + 1
            );
            let head_outs = s.tasks.iter().filter(|t| t.op.kind_name() == "head_out").count();
            let biased = s
                .tasks
                .iter()
                .filter(|t| matches!(t.op, amk_schedule::TaskOp::HeadOut { bias: Some(_), .. }))
                .count();
            assert_eq!(biased, if model.config.o_bias { layers } else { 0 }, "{knobs:?}");
            let per_head = model.config.head_dim.div_ceil(o_rows as usize);
            assert_eq!(head_outs, layers * model.config.num_heads * per_head, "{knobs:?}");
            let what = format!("{spec:?} {knobs:?}");
            assert_verified_and_every_policy_matches(&model, &mut cpu, s, 5, &what);
        }
    }
}

/// Per-head waits (`head_waits`): the qkv and attention phases get one counter per key/value
/// head and per head, attention parts wait only for their key/value head's projections and
/// head-split output-projection tasks only for their head's parts; the schedule verifies and
/// every interleaving computes what the reference does.
#[test]
fn head_waits_match_the_reference() {
    let specs = [
        SynthSpec { seed: 71, ..SynthSpec::tiny() },
        SynthSpec {
            num_heads: 6,
            num_kv_heads: 2,
            head_dim: 16,
            hidden_size: 96,
            attention_bias: true,
            seed: 72,
            ..SynthSpec::tiny()
        },
    ];
    for spec in specs {
        let (_dir, model) = tiny(spec.clone());
        let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).unwrap();
        let (layers, heads) = (model.config.num_layers, model.config.num_heads);
        let kv_heads = model.config.num_kv_heads;
        for (o_by_head, attn_splits, fuse_down) in
            [(true, 3, true), (false, 2, false), (true, 1, true)]
        {
            let knobs = ScheduleConfig {
                head_waits: true,
                o_by_head,
                attn_splits,
                fuse_down,
                o_rows: 8,
                ..config(9)
            };
            let s = lower(&model.graph, &knobs).unwrap();
            let named = |part: &str| s.counters.iter().filter(|c| c.name.contains(part)).count();
            assert_eq!(named(".qkv.kv"), layers * kv_heads, "{knobs:?}");
            assert_eq!(named(".attn.h"), layers * heads, "{knobs:?}");
            // An attention part waits for one key/value head's counter, never another phase's.
            for w in &s.workers {
                let mut waits = Vec::new();
                for i in &w.instrs {
                    match i {
                        Instr::Wait { counter, .. } => {
                            waits.push(s.counters[counter.index()].name.clone())
                        }
                        Instr::Run(t) => {
                            let task = &s.tasks[t.index()];
                            if task.op.kind_name() == "attention" {
                                let layer = task.name.split('.').next().unwrap_or("");
                                assert!(
                                    waits.iter().any(|c| c.starts_with(&format!("{layer}.qkv.kv"))),
                                    "{} ran after waits {waits:?}",
                                    task.name
                                );
                            }
                        }
                        Instr::Signal(_) => {}
                    }
                }
            }
            let what = format!("{spec:?} {knobs:?}");
            assert_verified_and_every_policy_matches(&model, &mut cpu, s, 11, &what);
        }
    }
}

/// Tagged hand-offs (`tagged`): queries and current key/value rows go through per-layer
/// tagged buffers, attention parts wait only for the residual copies, and each layer's cache
/// append runs in its MLP phase; the schedule verifies and every interleaving computes what
/// the reference does, over steps that cross every attention part's row range.
#[test]
fn tagged_handoffs_match_the_reference() {
    for spec in attention_shapes(81) {
        let (_dir, model) = tiny(spec.clone());
        let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).unwrap();
        let layers = model.config.num_layers;
        for (head_waits, attn_splits, fuse_down) in
            [(true, 3, true), (false, 2, false), (true, 1, true)]
        {
            let knobs = ScheduleConfig {
                tagged: true,
                o_by_head: true,
                head_waits,
                attn_splits,
                fuse_down,
                o_rows: 8,
                ..config(9)
            };
            let s = lower(&model.graph, &knobs).unwrap();
            let tagged = s.buffers.iter().filter(|b| b.kind == BufferKind::Tagged).count();
            assert_eq!(tagged, 2 * layers, "{knobs:?}");
            let appends = s.tasks.iter().filter(|t| t.op.kind_name() == "append_kv").count();
            assert_eq!(appends, layers, "{knobs:?}");
            // No attention part waits for the projections (it polls them), only for the
            // residual copies.
            for w in &s.workers {
                for pair in w.instrs.windows(2) {
                    if let [Instr::Wait { counter, .. }, Instr::Run(t)] = pair {
                        let task = &s.tasks[t.index()];
                        let counter = &s.counters[counter.index()].name;
                        assert!(
                            task.op.kind_name() != "attention" || counter.ends_with(".resid.done"),
                            "{} waits for `{counter}`",
                            task.name,
                        );
                    }
                }
            }
            let what = format!("{spec:?} {knobs:?}");
            assert_verified_and_every_policy_matches(&model, &mut cpu, s, 11, &what);
        }
    }
}

/// Head-split projections (`qkv_parts`): each q/k/v head as 2 or 4 tasks of rope pairs
/// (their key/value rows reaching the caches through an append task). With the exact knobs
/// (whole attention, unfused MLP) every interleaving gives the reference's logits bit for
/// bit, the parts computing each row as the whole head's task does; with per-head waits,
/// tagged hand-offs, split attention and the fused MLP, the tokens and the logits up to f32
/// reassociation; under every executor policy. Qwen3's per-head norms keep heads whole.
#[test]
fn qkv_parts_match_the_reference() {
    let exact_shapes = [
        SynthSpec { seed: 91, ..SynthSpec::tiny() },
        SynthSpec {
            num_heads: 6,
            num_kv_heads: 2,
            head_dim: 16,
            hidden_size: 96,
            tie_word_embeddings: false,
            attention_bias: true,
            seed: 92,
            ..SynthSpec::tiny()
        },
        llama3_rope(93),
        SynthSpec { architecture: Architecture::Qwen2, seed: 94, ..SynthSpec::tiny() },
        SynthSpec { architecture: Architecture::Qwen3, seed: 95, ..SynthSpec::tiny() },
    ];
    let facts = amk_verify::LaunchFacts { sm_count: 132, blocks_per_sm: 1 };
    for spec in exact_shapes {
        let (_dir, model) = tiny(spec.clone());
        let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).unwrap();
        let qk_norm = model.config.qk_norm;
        for (qkv_parts, head_waits, workers) in [(2, true, 9), (4, false, 5), (4, true, 16)] {
            let knobs = ScheduleConfig { qkv_parts, head_waits, ..config(workers) };
            let s = lower(&model.graph, &knobs).unwrap();
            let what = format!("{spec:?} {knobs:?}");
            let split = s.tasks.iter().filter(|t| t.name.contains(".q.h0.p")).count();
            let expected = model.config.num_layers * qkv_parts as usize;
            assert_eq!(split, if qk_norm { 0 } else { expected }, "{what}");
            amk_verify::verify(&s, &facts).unwrap_or_else(|e| panic!("{what}: {e}"));
            let s = Arc::new(s);
            for policy in [Policy::LowestFirst, Policy::HighestFirst, Policy::Random(7)] {
                let mut exec =
                    ScheduleExecutor::from_model(&model, s.clone(), &mut |_, _| {}).unwrap();
                exec.check_regions = true;
                exec.policy = Some(policy);
                cpu.reset();
                for (pos, t) in [7u32, 90, 150, 3, 44, 5, 61, 20].into_iter().enumerate() {
                    let (a, b) = (cpu.step(t, pos).unwrap(), exec.step(t, pos).unwrap());
                    assert_eq!(a, b, "{what} {policy:?} position {pos}");
                    let (x, y) = (cpu.logits().unwrap(), exec.logits().unwrap());
                    assert_eq!(x, y, "{what} {policy:?} position {pos}: logits");
                }
            }
        }
    }
    for spec in attention_shapes(96) {
        let (_dir, model) = tiny(spec.clone());
        let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).unwrap();
        for (qkv_parts, head_waits, tagged, attn_splits, fuse_down) in [
            (2, true, false, 3, true),
            (4, true, true, 2, true),
            (2, false, true, 1, false),
            (4, false, false, 2, true),
        ] {
            let knobs = ScheduleConfig {
                qkv_parts,
                head_waits,
                tagged,
                o_by_head: true,
                attn_splits,
                fuse_down,
                o_rows: 8,
                ..config(9)
            };
            let s = lower(&model.graph, &knobs).unwrap();
            let what = format!("{spec:?} {knobs:?}");
            assert!(s.task_by_name("L0.k.h0.p1").is_some(), "{what}");
            assert_verified_and_every_policy_matches(&model, &mut cpu, s, 13, &what);
        }
    }
}
