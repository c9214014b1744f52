//! Lowering each supported architecture (the configs of `fixtures/tiny/`): the per-head q/k
//! norms, sliding windows, q/k/v-only biases and llama3 rope reach the tasks, their weights
//! are declared as reads, and `schedule.ron` round-trips the new fields (and leaves them out
//! where unused, so llama schedules are written exactly as before).

use amk_ir::config::ModelConfig;
use amk_ir::graph::DecodeGraph;
use amk_schedule::ops::{ProjOutput, RopeSpec, TaskOp};
use amk_schedule::schedule::{Instr, Schedule};
use amk_schedule::{lower, LowerError, ScheduleConfig};
use std::path::Path;

fn graph(name: &str) -> DecodeGraph {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/tiny")
        .join(name)
        .join("config.json");
    DecodeGraph::build(&ModelConfig::from_file(&path).unwrap())
}

fn lowered(name: &str) -> Schedule {
    // Row tiles of the output projection (the tests below look at their bias and input).
    let config =
        ScheduleConfig { workers: 5, max_positions: 64, o_by_head: false, ..Default::default() };
    lower(&graph(name), &config).unwrap()
}

fn op<'a>(s: &'a Schedule, task: &str) -> &'a TaskOp {
    &s.tasks.iter().find(|t| t.name == task).unwrap_or_else(|| panic!("no task {task}")).op
}

fn buffer(s: &Schedule, name: &str) -> u32 {
    s.buffers.iter().position(|b| b.name == name).unwrap_or_else(|| panic!("no buffer {name}"))
        as u32
}

#[test]
fn every_fixture_lowers_and_round_trips() {
    for name in [
        "llama2",
        "llama3",
        "tinyllama",
        "smollm2_360m",
        "smollm2_1_7b",
        "mistral",
        "qwen2",
        "qwen3",
    ] {
        let s = lowered(name);
        let text = s.to_ron_string();
        let back = Schedule::from_ron_str(&text).unwrap();
        assert_eq!(back, s, "{name}");
        assert_eq!(back.to_ron_string(), text, "{name}");
        // Only what a model uses is written.
        assert_eq!(text.contains("head_norm"), name == "qwen3", "{name}");
        assert_eq!(text.contains("window"), name == "mistral", "{name}");
        assert_eq!(text.contains("llama3"), name == "llama3", "{name}");
        // Every task's declared regions cover its op's footprint (the lowering declares the
        // footprint itself).
        for t in &s.tasks {
            let f = t.op.footprint(|b| s.buffers[b.index()].bytes);
            assert_eq!((&f.reads, &f.writes, &f.adds), (&t.reads, &t.writes, &t.adds), "{name}");
        }
    }
}

#[test]
fn qwen3_q_and_k_heads_carry_their_norms() {
    let s = lowered("qwen3");
    for (task, norm) in [
        ("L1.q.h1", "model.layers.1.self_attn.q_norm.weight"),
        ("L1.k.h0", "model.layers.1.self_attn.k_norm.weight"),
    ] {
        let TaskOp::Projection { head_norm: Some(n), rope: Some(rope), bias, rows, .. } =
            op(&s, task)
        else {
            panic!("{task}: {:?}", op(&s, task))
        };
        assert_eq!(n.weight.0, buffer(&s, norm), "{task}");
        assert_eq!((n.head_dim, n.eps, *rows), (128, 1e-6, 128), "{task}");
        assert_eq!(*rope, RopeSpec { head_dim: 128, theta: 1e6, llama3: None });
        assert_eq!(*bias, None, "{task}");
        // The norm weight is declared as read.
        let t = s.tasks.iter().find(|t| t.name == task).unwrap();
        assert!(t.reads.iter().any(|r| r.buffer == n.weight && r.offset == 0 && r.len == 512));
    }
    let TaskOp::Projection { head_norm: None, rope: None, .. } = op(&s, "L0.v.h0") else {
        panic!("values are neither normalised nor rotated")
    };
}

#[test]
fn mistral_attention_has_its_window() {
    let s = lowered("mistral");
    for h in 0..3 {
        let TaskOp::Attention { window, kv_head, .. } = op(&s, &format!("L1.attn.h{h}.p0")) else {
            panic!()
        };
        assert_eq!((*window, *kv_head), (Some(8), 0));
    }
    let TaskOp::Attention { window: None, .. } = op(&lowered("llama2"), "L0.attn.h0.p0") else {
        panic!("llama attends to every position")
    };
}

#[test]
fn qwen2_biases_q_k_v_but_not_o() {
    let s = lowered("qwen2");
    for (task, bias) in [
        ("L0.q.h2", "model.layers.0.self_attn.q_proj.bias"),
        ("L0.k.h0", "model.layers.0.self_attn.k_proj.bias"),
        ("L0.v.h0", "model.layers.0.self_attn.v_proj.bias"),
    ] {
        let TaskOp::Projection { bias: Some(b), .. } = op(&s, task) else { panic!("{task}") };
        assert_eq!(b.0, buffer(&s, bias), "{task}");
    }
    let TaskOp::Projection { bias: None, output: ProjOutput::AccumulateCopy { .. }, .. } =
        op(&s, "L0.o.r0")
    else {
        panic!("o has no bias (and stores the residual snapshot of the fused MLP)")
    };
}

#[test]
fn llama3_rope_reaches_the_tasks() {
    let s = lowered("llama3");
    let TaskOp::Projection { rope: Some(rope), .. } = op(&s, "L0.k.h0") else { panic!() };
    let scaling = rope.llama3.expect("llama3 scaling");
    assert_eq!(scaling.factor, 8.0);
    assert_eq!(scaling.original_max_position_embeddings, 64.0);
    assert_eq!(rope.inv_freq(), graph("llama3").config.rope.inv_freq(128));
}

#[test]
fn mlp_bias_is_refused_not_dropped() {
    let mut g = graph("llama2");
    g.config.mlp_bias = true;
    let g = DecodeGraph::build(&g.config);
    let err = lower(&g, &ScheduleConfig::default()).unwrap_err();
    assert!(matches!(err, LowerError::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("mlp_bias"), "{err}");
}

/// `fuse_o` needs one attention part per head, and no output-projection bias (each head adds
/// its own share; the bias would need one more): both refused with what to change.
#[test]
fn fuse_o_needs_whole_heads_and_no_o_bias() {
    let knobs = ScheduleConfig { fuse_o: true, attn_splits: 4, ..ScheduleConfig::default() };
    let err = lower(&graph("llama2"), &knobs).unwrap_err().to_string();
    assert!(err.contains("attn_splits") && err.contains("fuse_o"), "{err}");
    let err = ScheduleConfig::from_ron("(fuse_o: true, attn_splits: 2)").unwrap_err().to_string();
    assert!(err.contains("attn_splits: 1"), "{err}");
    let knobs = ScheduleConfig { fuse_o: true, attn_splits: 1, ..ScheduleConfig::default() };
    let mut g = graph("llama2");
    g.config.o_bias = true;
    let g = DecodeGraph::build(&g.config);
    let err = lower(&g, &knobs).unwrap_err();
    assert!(matches!(err, LowerError::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("o_bias"), "{err}");
    // Without a bias: one version of the residual per half layer, no output-projection phase.
    let s = lower(&graph("llama2"), &knobs).unwrap();
    let layers = graph("llama2").config.num_layers;
    let versions = s.buffers.iter().filter(|b| b.name.starts_with("resid.")).count();
    assert_eq!(versions, 2 * layers + 1);
    assert!(s.counters.iter().all(|c| !c.name.ends_with(".o.done")));
    assert!(matches!(op(&s, "L0.attn.h0"), TaskOp::AttentionOut { .. }));
}

#[test]
fn a_graph_of_another_architecture_is_not_the_pattern() {
    // A Qwen3 graph whose config claims Llama: the norms are not where the lowering expects.
    let mut g = graph("qwen3");
    g.config.qk_norm = false;
    assert!(matches!(lower(&g, &ScheduleConfig::default()), Err(LowerError::Pattern { .. })));
}

/// `qkv_parts`: each q/k/v head becomes that many tasks, each a [`HeadPart`] of rope pairs,
/// named by part; the key/value parts store to the layer's `kv_new` (an append task copies
/// it into the caches); `head_part` round-trips in `schedule.ron` and is absent without a
/// split. Qwen3's per-head norms need whole heads: its heads stay whole.
#[test]
fn qkv_parts_split_each_head_into_rope_pair_parts() {
    use amk_schedule::ops::HeadPart;
    let g = graph("llama2");
    let (layers, heads, kv_heads) =
        (g.config.num_layers, g.config.num_heads, g.config.num_kv_heads);
    let whole = lower(&g, &ScheduleConfig { workers: 5, ..Default::default() }).unwrap();
    assert!(!whole.to_ron_string().contains("head_part"));
    for parts in [2u32, 4] {
        let knobs = ScheduleConfig { workers: 5, qkv_parts: parts, ..Default::default() };
        let s = lower(&g, &knobs).unwrap();
        let text = s.to_ron_string();
        assert!(text.contains("head_part"), "{parts}");
        assert_eq!(Schedule::from_ron_str(&text).unwrap(), s);
        // parts - 1 more tasks per q/k/v head, and one append per layer.
        let more = layers * (heads + 2 * kv_heads) * (parts as usize - 1) + layers;
        assert_eq!(s.tasks.len(), whole.tasks.len() + more, "{parts}");
        assert!(s.task_by_name("L1.q.h2").is_none());
        for (tag, head) in [("q", 2), ("k", 1), ("v", 0)] {
            for part in 0..parts {
                let name = format!("L1.{tag}.h{head}.p{part}");
                let TaskOp::Projection { first_row, rows, head_part, output, rope, .. } =
                    *op(&s, &name)
                else {
                    panic!("{name} is not a projection")
                };
                assert_eq!((first_row, rows), (head * 64, 64 / parts), "{name}");
                assert_eq!(head_part, Some(HeadPart { part, parts }), "{name}");
                assert_eq!(rope.is_some(), tag != "v", "{name}");
                if tag != "q" {
                    let kv_new = buffer(&s, "L1.kv_new");
                    let at = if tag == "v" { kv_heads as u32 + head } else { head } * 64;
                    assert_eq!(
                        output,
                        ProjOutput::Store {
                            buffer: amk_schedule::schedule::BufferId(kv_new),
                            offset: at
                        }
                    );
                }
            }
        }
        assert!(s.task_by_name("L1.kv_append").is_some());
    }
    // Qwen3: whole heads (the q/k norm needs them), and nothing else changes.
    let qwen3 = graph("qwen3");
    let knobs = ScheduleConfig { workers: 5, qkv_parts: 2, ..Default::default() };
    let split = lower(&qwen3, &knobs).unwrap();
    let whole = lower(&qwen3, &ScheduleConfig { workers: 5, ..Default::default() }).unwrap();
    assert_eq!(split, whole);
    // So does `fuse_q` (its query projection is in the attention parts).
    let knobs = ScheduleConfig { fuse_q: true, o_by_head: false, ..knobs };
    let whole = ScheduleConfig { qkv_parts: 1, ..knobs.clone() };
    assert_eq!(lower(&g, &knobs).unwrap(), lower(&g, &whole).unwrap());
}

/// A `qkv_parts` that does not divide head_dim / 2 (or is 0) is refused, naming the field.
#[test]
fn bad_qkv_parts_are_refused_naming_the_field() {
    use amk_schedule::config::ConfigError;
    for (model, parts) in [("llama2", 3), ("llama2", 64), ("tinyllama", 32), ("llama2", 0)] {
        let knobs = ScheduleConfig { qkv_parts: parts, ..ScheduleConfig::default() };
        let err = lower(&graph(model), &knobs).unwrap_err();
        assert!(
            matches!(err, LowerError::Config(ConfigError::Invalid { field: "qkv_parts", .. })),
            "{model} {parts}: {err:?}"
        );
        assert!(err.to_string().contains("qkv_parts"), "{err}");
    }
    let err = ScheduleConfig::from_ron("(qkv_parts: 0)").unwrap_err().to_string();
    assert!(err.contains("qkv_parts"), "{err}");
    // Old knob files (without the field) keep whole heads.
    assert_eq!(ScheduleConfig::from_ron("(workers: 8)").unwrap().qkv_parts, 1);
}

/// The default lowering's residual hand-off and step end: the qkv phase zeroes `resid.2`, the
/// head-split output projection adds only to `resid.1`, the fused MLP's tasks together carry
/// every element of `resid.1` into `resid.2` exactly once, and the step ends with LM-head
/// tiles on the last workers that fold their maxima into `io` (one advancing the position),
/// signalling nothing.
#[test]
fn the_mlp_carries_the_residual_and_the_lm_head_ends_the_step() {
    let g = graph("llama2");
    let s = lower(&g, &ScheduleConfig { workers: 12, ..Default::default() }).unwrap();
    let (mid, out) = (buffer(&s, "resid.1"), buffer(&s, "resid.2"));
    match op(&s, "L0.resid.out") {
        TaskOp::Zero { dst } => assert_eq!((dst.buffer.0, dst.offset), (out, 0)),
        other => panic!("{other:?}"),
    }
    let hidden = g.config.hidden_size as u32;
    let mut carried = vec![0u32; hidden as usize];
    for t in &s.tasks {
        match &t.op {
            TaskOp::HeadOut { out: o, mirror, .. } if t.name.starts_with("L0.") => {
                assert_eq!((o.0, *mirror), (mid, None), "{}", t.name);
            }
            TaskOp::GatedMlp { out: o, carry, input, .. } if t.name.starts_with("L0.") => {
                assert_eq!(o.0, out);
                assert_eq!(input.elements().map(|b| b.0), Some(mid));
                if let Some(c) = carry {
                    for e in &mut carried[c.first as usize..(c.first + c.len) as usize] {
                        *e += 1;
                    }
                }
            }
            _ => {}
        }
    }
    assert!(carried.iter().all(|&n| n == 1), "each element carried once: {carried:?}");

    let heads: Vec<usize> = (0..s.workers.len())
        .filter(|&w| {
            s.workers[w].instrs.iter().any(|i| {
                matches!(i, Instr::Run(t) if matches!(s.tasks[t.index()].op, TaskOp::HeadArgmax { .. }))
            })
        })
        .collect();
    let n = heads.len();
    assert_eq!(heads, (s.workers.len() - n..s.workers.len()).collect::<Vec<_>>());
    let advancing =
        s.tasks.iter().filter(|t| matches!(t.op, TaskOp::HeadArgmax { advance: true, .. })).count();
    assert_eq!(advancing, 1);
    for w in &s.workers {
        let run = |i: &Instr| matches!(i, Instr::Run(t) if matches!(s.tasks[t.index()].op, TaskOp::HeadArgmax { .. }));
        if let Some(k) = w.instrs.iter().position(run) {
            assert!(w.instrs[k..].iter().all(|i| !matches!(i, Instr::Signal(_))), "{:?}", w.instrs);
        }
    }
    assert!(s.counter_by_name("argmax.done").is_none() && s.counter_by_name("head.done").is_none());

    // More tiles than workers: the extra round goes to the last workers.
    let s =
        lower(&g, &ScheduleConfig { workers: 12, head_rows: 16, ..Default::default() }).unwrap();
    let tiles: Vec<usize> = s
        .workers
        .iter()
        .map(|w| {
            w.instrs
                .iter()
                .filter(|i| {
                    matches!(i, Instr::Run(t)
                        if matches!(s.tasks[t.index()].op, TaskOp::HeadArgmax { .. }))
                })
                .count()
        })
        .collect();
    let n = g.config.vocab_size.div_ceil(16);
    assert!(n % 12 != 0 && tiles.iter().sum::<usize>() == n, "{tiles:?}");
    assert!(tiles.windows(2).all(|p| p[0] <= p[1]) && tiles[0] < tiles[11], "{tiles:?}");
}
