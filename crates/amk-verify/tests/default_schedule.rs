//! The default schedule for SmolLM2-135M is the best one `amk search` found on the H100
//! (`fixtures/search/smollm2-135m-h100/`: the knobs, the certificate of the schedule they
//! lower to, and the logs of six searches: the first, its re-run after the kernel changed,
//! the ones that found the fused MLP, the head-split output projection and per-head waits,
//! and the re-run after the tenth pass changed the kernel and the step's end).
//! Lowering the model's config with
//! `ScheduleConfig::default()` must give exactly that schedule (same sha256), and it must
//! verify.

use amk_ir::config::{ModelConfig, RawConfig};
use amk_ir::graph::DecodeGraph;
use amk_schedule::{lower, ScheduleConfig};
use amk_verify::{schedule_hash, verify, LaunchFacts};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A JSON file of the fixture directory, parsed.
fn json(dir: &Path, name: &str) -> serde_json::Value {
    let bytes = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name} does not parse: {e}"))
}

/// The knobs a log records, with the knobs added after it (absent from it) off, as it ran.
fn as_ran(knobs: &serde_json::Value, later: &[&str]) -> ScheduleConfig {
    let mut knobs = knobs.clone();
    let o = knobs.as_object_mut().expect("knobs are an object");
    for k in later {
        assert!(o.insert((*k).into(), serde_json::json!(false)).is_none(), "the log has {k}");
    }
    serde_json::from_value(knobs).expect("knobs in the log")
}

#[test]
fn the_default_schedule_is_the_searched_best() {
    let dir = fixtures().join("search/smollm2-135m-h100");
    let knobs = std::fs::read_to_string(dir.join("knobs.ron")).expect("knobs.ron");
    let best = ScheduleConfig::from_ron(&knobs).expect("knobs.ron parses");
    assert_eq!(best, ScheduleConfig::default(), "ScheduleConfig::default() is the search's best");

    let log = json(&dir, "search-log.json");
    let (best_ms, default_ms) = (&log["best"]["ms_per_token"], &log["default"]["ms_per_token"]);
    // (search-log.json is the first search's; its best was the default until the fused MLP.)
    assert!(best_ms.as_f64() < default_ms.as_f64(), "{best_ms} vs {default_ms}");

    // The same search re-run after the kernel changed (confirm-log.json) started from these
    // knobs and found nothing faster: its best is its default, and its default is these knobs.
    let confirm = json(&dir, "confirm-log.json");
    assert_eq!(confirm["best"]["changed"], serde_json::json!({}), "the default stayed the best");
    assert_eq!(confirm["default"]["knobs"], log["best"]["knobs"], "it started from these knobs");
    assert_eq!(confirm["totals"]["wrong_tokens"], 0);

    // The search with the fused MLP (fused-log.json) started from the knobs the re-run
    // confirmed, and its best was timed again at the end, faster.
    let fused = json(&dir, "fused-log.json");
    // (The older logs predate `fuse_down`: their knobs ran unfused.)
    let mut start = fused["default"]["knobs"].clone();
    let unfused = start.as_object_mut().and_then(|o| o.remove("fuse_down"));
    assert_eq!(unfused, Some(serde_json::json!(false)));
    assert_eq!(start, confirm["best"]["knobs"], "it started from the confirmed knobs");
    // (fused-log.json predates `fuse_q` and `o_by_head`: its knobs ran without them.)
    let fused_best = as_ran(&fused["best"]["knobs"], &["fuse_q", "o_by_head", "head_waits"]);
    assert!(fused["confirmed"]["speedup"].as_f64() > Some(1.0), "{}", fused["confirmed"]);
    assert_eq!(fused["totals"]["wrong_tokens"], 0);

    // The search with the head-split output projection (head-log.json) started from that
    // best, and its best (timed again at the end, faster) is today's default.
    let head = json(&dir, "head-log.json");
    // (head-log.json predates `head_waits`.)
    let head_start = as_ran(&head["default"]["knobs"], &["head_waits"]);
    assert_eq!(head_start, fused_best, "it started from the fused MLP's best");
    let head_best = as_ran(&head["best"]["knobs"], &["head_waits"]);
    assert!(head["confirmed"]["speedup"].as_f64() > Some(1.0), "{}", head["confirmed"]);
    assert_eq!(head["totals"]["wrong_tokens"], 0);

    // The search with per-head waits (waits-log.json) started from that best (the log
    // predates `head_waits`, which it ran without), and its best (timed again at the end,
    // faster) is today's default.
    let waits = json(&dir, "waits-log.json");
    let waits_start: ScheduleConfig =
        serde_json::from_value(waits["default"]["knobs"].clone()).expect("knobs in the log");
    assert_eq!(waits_start, head_best, "it started from the head-split search's best");
    let waits_best: ScheduleConfig =
        serde_json::from_value(waits["best"]["knobs"].clone()).expect("knobs in the log");
    assert_eq!(waits_best, best, "its best is knobs.ron");
    assert!(waits["confirmed"]["speedup"].as_f64() > Some(1.0), "{}", waits["confirmed"]);
    assert_eq!(waits["totals"]["wrong_tokens"], 0);

    // The re-run after the tenth pass (launch-log.json) started from those knobs and kept
    // them: no candidate beat them by the search's margin.
    let launch = json(&dir, "launch-log.json");
    let launch_start: ScheduleConfig =
        serde_json::from_value(launch["default"]["knobs"].clone()).expect("knobs in the log");
    assert_eq!(launch_start, best, "it started from knobs.ron");
    let launch_best: ScheduleConfig =
        serde_json::from_value(launch["best"]["knobs"].clone()).expect("knobs in the log");
    assert_eq!(launch_best, best, "its best is knobs.ron");
    assert_eq!(launch["totals"]["wrong_tokens"], 0);
    assert_eq!(launch["totals"]["failed"], 0);

    let cert = json(&dir, "certificate.json");
    let path = fixtures().join("smollm2-hf/config.json");
    let text = std::fs::read_to_string(&path).expect("config.json");
    let config =
        ModelConfig::from_raw(&RawConfig::from_json(&text, &path).unwrap(), &path).unwrap();
    let schedule = lower(&DecodeGraph::build(&config), &ScheduleConfig::default()).expect("lower");
    assert_eq!(cert["schedule_hash"].as_str(), Some(schedule_hash(&schedule).as_str()));
    verify(&schedule, &LaunchFacts { sm_count: 132, blocks_per_sm: 1 }).expect("verifies");
}
