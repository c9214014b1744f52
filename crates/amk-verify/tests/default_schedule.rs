//! The default schedule for SmolLM2-135M is the best one `amk search` found on the H100
//! (`fixtures/search/smollm2-135m-h100/`: the knobs, the certificate of the schedule they
//! lower to, and the logs of four searches: the first, its re-run after the kernel changed,
//! the one that found the fused MLP and the one that found the head-split output projection). Lowering the model's config with
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

#[test]
fn the_default_schedule_is_the_searched_best() {
    let dir = fixtures().join("search/smollm2-135m-h100");
    let knobs = std::fs::read_to_string(dir.join("knobs.ron")).expect("knobs.ron");
    let best = ScheduleConfig::from_ron(&knobs).expect("knobs.ron parses");
    assert_eq!(best, ScheduleConfig::default(), "ScheduleConfig::default() is the search's best");

    let log: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("search-log.json")).expect("log"))
            .expect("search-log.json parses");
    let (best_ms, default_ms) = (&log["best"]["ms_per_token"], &log["default"]["ms_per_token"]);
    // (search-log.json is the first search's; its best was the default until the fused MLP.)
    assert!(best_ms.as_f64() < default_ms.as_f64(), "{best_ms} vs {default_ms}");

    // The same search re-run after the kernel changed (confirm-log.json) started from these
    // knobs and found nothing faster: its best is its default, and its default is these knobs.
    let confirm: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("confirm-log.json")).expect("log"))
            .expect("confirm-log.json parses");
    assert_eq!(confirm["best"]["changed"], serde_json::json!({}), "the default stayed the best");
    assert_eq!(confirm["default"]["knobs"], log["best"]["knobs"], "it started from these knobs");
    assert_eq!(confirm["totals"]["wrong_tokens"], 0);

    // The search with the fused MLP (fused-log.json) started from the knobs the re-run
    // confirmed, and its best was timed again at the end, faster.
    let fused: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("fused-log.json")).expect("log"))
            .expect("fused-log.json parses");
    // (The older logs predate `fuse_down`: their knobs ran unfused.)
    let mut start = fused["default"]["knobs"].clone();
    let unfused = start.as_object_mut().and_then(|o| o.remove("fuse_down"));
    assert_eq!(unfused, Some(serde_json::json!(false)));
    assert_eq!(start, confirm["best"]["knobs"], "it started from the confirmed knobs");
    // (fused-log.json predates `fuse_q` and `o_by_head`: its knobs ran without them.)
    let mut fused_best = fused["best"]["knobs"].clone();
    if let Some(o) = fused_best.as_object_mut() {
        o.insert("fuse_q".into(), serde_json::json!(false));
        o.insert("o_by_head".into(), serde_json::json!(false));
    }
    let fused_best: ScheduleConfig = serde_json::from_value(fused_best).expect("knobs in the log");
    assert!(fused["confirmed"]["speedup"].as_f64() > Some(1.0), "{}", fused["confirmed"]);
    assert_eq!(fused["totals"]["wrong_tokens"], 0);

    // The search with the head-split output projection (head-log.json) started from that
    // best, and its best (timed again at the end, faster) is today's default.
    let head: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("head-log.json")).expect("log"))
            .expect("head-log.json parses");
    let head_start: ScheduleConfig =
        serde_json::from_value(head["default"]["knobs"].clone()).expect("knobs in the log");
    assert_eq!(head_start, fused_best, "it started from the fused MLP's best");
    let head_best: ScheduleConfig =
        serde_json::from_value(head["best"]["knobs"].clone()).expect("knobs in the log");
    assert_eq!(head_best, best, "its best is knobs.ron");
    assert!(head["confirmed"]["speedup"].as_f64() > Some(1.0), "{}", head["confirmed"]);
    assert_eq!(head["totals"]["wrong_tokens"], 0);

    let cert: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("certificate.json")).expect("cert"))
            .expect("certificate.json parses");
    let path = fixtures().join("smollm2-hf/config.json");
    let text = std::fs::read_to_string(&path).expect("config.json");
    let config =
        ModelConfig::from_raw(&RawConfig::from_json(&text, &path).unwrap(), &path).unwrap();
    let schedule = lower(&DecodeGraph::build(&config), &ScheduleConfig::default()).expect("lower");
    assert_eq!(cert["schedule_hash"].as_str(), Some(schedule_hash(&schedule).as_str()));
    verify(&schedule, &LaunchFacts { sm_count: 132, blocks_per_sm: 1 }).expect("verifies");
}
