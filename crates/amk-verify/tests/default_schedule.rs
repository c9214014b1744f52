//! The default schedule for SmolLM2-135M is the best one `amk search` found on the H100
//! (`fixtures/search/smollm2-135m-h100/`: the knobs, the search log and the certificate of the
//! schedule it timed, and the log of the same search re-run after the kernel changed). Lowering the model's config with `ScheduleConfig::default()` must give
//! exactly that schedule (same sha256), and it must verify.

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
    assert!(best_ms.as_f64() < default_ms.as_f64(), "{best_ms} vs {default_ms}");

    // The same search re-run after the kernel changed (confirm-log.json) started from these
    // knobs and found nothing faster: its best is its default, and its default is these knobs.
    let confirm: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("confirm-log.json")).expect("log"))
            .expect("confirm-log.json parses");
    assert_eq!(confirm["best"]["changed"], serde_json::json!({}), "the default stayed the best");
    assert_eq!(confirm["default"]["knobs"], log["best"]["knobs"], "it started from these knobs");
    assert_eq!(confirm["totals"]["wrong_tokens"], 0);

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
