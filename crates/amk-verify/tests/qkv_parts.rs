//! Schedules lowered with `qkv_parts` (each q/k/v head split into parts of rope pairs) verify
//! for SmolLM2-135M and every tiny fixture, with and without per-head waits and tagged
//! hand-offs; their counters count the parts (a wait one short of them races), and the
//! append that takes the current key/value rows into the caches is ordered after the
//! layer's attention (without its waits it races with the attention's cache reads).

use amk_ir::config::{ModelConfig, RawConfig};
use amk_ir::graph::DecodeGraph;
use amk_schedule::config::{Assignment, TaskOrder};
use amk_schedule::schedule::{CounterReset, Instr, Schedule};
use amk_schedule::{lower, ScheduleConfig, TaskOp};
use amk_verify::{verify, LaunchFacts, VerifyError};
use std::path::Path;

const FACTS: LaunchFacts = LaunchFacts { sm_count: 132, blocks_per_sm: 1 };

fn model(path: &Path) -> DecodeGraph {
    let text = std::fs::read_to_string(path).expect("config.json");
    let config = ModelConfig::from_raw(&RawConfig::from_json(&text, path).unwrap(), path).unwrap();
    DecodeGraph::build(&config)
}

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn races(s: &Schedule) -> Vec<(String, String, String)> {
    let e = verify(s, &FACTS).expect_err("must reject").errors;
    assert!(e.iter().all(|x| matches!(x, VerifyError::Race { .. })), "{e:?}");
    e.iter()
        .filter_map(|x| match x {
            VerifyError::Race { buffer, first, second } => {
                Some((buffer.clone(), first.task.clone(), second.task.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn smollm2_with_qkv_parts_verifies_and_its_counters_count_the_parts() {
    let g = model(&fixtures().join("smollm2-hf/config.json"));
    let c = &g.config;
    for parts in [2u32, 4] {
        for (head_waits, tagged) in [(true, false), (false, false), (true, true)] {
            let knobs = ScheduleConfig {
                qkv_parts: parts,
                head_waits,
                tagged,
                ..ScheduleConfig::default()
            };
            let s = lower(&g, &knobs).unwrap();
            let whole = lower(&g, &ScheduleConfig { qkv_parts: 1, ..knobs.clone() }).unwrap();
            let whole = whole.tasks.len();
            let what = format!("{knobs:?}");
            verify(&s, &FACTS).unwrap_or_else(|e| panic!("{what}: {e}"));
            // parts tasks per q/k/v head, plus each layer's append (tagged has it already).
            let heads = c.num_heads + 2 * c.num_kv_heads;
            let appends = if tagged { 0 } else { c.num_layers };
            let more = c.num_layers * heads * (parts as usize - 1) + appends;
            assert_eq!(s.tasks.len(), whole + more, "{what}");
            for name in ["L3.q.h2.p1", "L3.k.h1.p0", "L3.v.h2.p1", "L3.kv_append"] {
                assert!(s.task_by_name(name).is_some(), "{what}: no {name}");
            }
            assert!(s.task_by_name("L3.q.h2").is_none(), "{what}");
            if !head_waits || tagged {
                continue;
            }
            // Each key/value head's counter counts its query heads', key's and value's parts
            // (and the two residual copies, which signal every counter of the phase).
            let kv0 = s.counter_by_name("L0.qkv.kv0.done").unwrap();
            let per_kv = (c.num_heads / c.num_kv_heads + 2) as u32 * parts + 2;
            assert_eq!(
                s.counters[kv0.index()].reset,
                CounterReset::Epoch { signals_per_launch: per_kv },
                "{what}"
            );
            // A wait one signal short lets an attention part run beside a head part it reads.
            let mut m = s.clone();
            for w in &mut m.workers {
                for i in &mut w.instrs {
                    if let Instr::Wait { counter, at_least } = i {
                        if *counter == kv0 {
                            *at_least -= 1;
                        }
                    }
                }
            }
            let r = races(&m);
            assert!(
                r.iter().any(|(_, a, b)| [a, b].iter().any(|t| t.starts_with("L0.attn.h"))
                    && [a, b].iter().any(|t| t.contains(".h0.p"))),
                "{what}: {r:?}"
            );
            // Without its waits, the append races with the attention's cache reads.
            let mut m = s.clone();
            let append = m.task_by_name("L0.kv_append").unwrap();
            for w in &mut m.workers {
                let Some(at) = w.instrs.iter().position(|i| *i == Instr::Run(append)) else {
                    continue;
                };
                let mut k = at;
                while k > 0 && matches!(w.instrs[k - 1], Instr::Wait { .. }) {
                    k -= 1;
                    w.instrs.remove(k);
                }
            }
            let r = races(&m);
            assert!(
                r.iter()
                    .any(|(b, x, y)| b == "L0.k_cache"
                        && [x, y].contains(&&"L0.kv_append".to_string())),
                "{what}: {r:?}"
            );
        }
    }
}

#[test]
fn tiny_fixtures_with_qkv_parts_verify() {
    let mut models = 0;
    for dir in std::fs::read_dir(fixtures().join("tiny")).unwrap() {
        let path = dir.unwrap().path().join("config.json");
        if !path.exists() {
            continue;
        }
        models += 1;
        let g = model(&path);
        for (parts, workers, attn_splits, head_waits, tagged, assignment, task_order) in [
            (2, 132, 8, true, false, Assignment::RoundRobin, TaskOrder::AsLowered),
            (4, 16, 3, false, true, Assignment::BalancedBytes, TaskOrder::LargestFirst),
            (2, 5, 1, true, true, Assignment::BalancedBytes, TaskOrder::AsLowered),
            (4, 7, 2, true, false, Assignment::RoundRobin, TaskOrder::LargestFirst),
        ] {
            let knobs = ScheduleConfig {
                qkv_parts: parts,
                workers,
                attn_splits,
                head_waits,
                tagged,
                assignment,
                task_order,
                max_positions: 64,
                ..ScheduleConfig::default()
            };
            let s = lower(&g, &knobs).expect("lower");
            let split = s
                .tasks
                .iter()
                .any(|t| matches!(t.op, TaskOp::Projection { head_part: Some(_), .. }));
            // Qwen3's q/k norms keep heads whole.
            assert_eq!(split, !g.config.qk_norm, "{path:?}");
            verify(&s, &FACTS).unwrap_or_else(|e| panic!("{path:?} {knobs:?}: {e}"));
        }
    }
    assert!(models >= 5, "{models} tiny models");
}
