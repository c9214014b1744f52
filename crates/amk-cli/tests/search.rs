//! `amk search` from the command line on a tiny synthetic model: a dry run (the strategy with
//! the verifier only, nothing launched) writes a log whose counts add up, counts candidates the
//! verifier rejects, respects the budget, and is the same for the same seed; without a GPU the
//! real search fails with a clear message; bad options fail without panicking.

use amk_ir::synth::{write_checkpoint, SynthSpec};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn amk(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_amk")).args(args).output().expect("amk runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_log(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("search-log.json")).expect("search-log.json");
    serde_json::from_str(&text).expect("the log is JSON")
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn dry_run_writes_a_log_whose_counts_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_checkpoint(&SynthSpec::tiny(), &model).unwrap();
    let out = dir.path().join("out");
    let (code, stdout, stderr) = amk(&[
        "search",
        model.to_str().unwrap(),
        "--dry-run",
        "--budget",
        "10",
        "--sms",
        "8",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("10 would be timed"), "{stdout}");
    assert!(stdout.contains("rejected by the verifier"), "{stdout}");

    let log = read_log(&out);
    assert_eq!(log["dry_run"], true);
    assert_eq!(log["budget"], 10);
    let t = &log["totals"];
    let tried = n(&t["tried"]);
    let parts = [
        "invalid",
        "rejected_by_verifier",
        "failed",
        "wrong_tokens",
        "timed",
        "would_time",
        "same_kernel",
    ];
    assert_eq!(tried, parts.iter().map(|p| n(&t[*p])).sum::<u64>(), "{t}");
    assert_eq!(n(&t["would_time"]), 10, "{t}");
    assert_eq!(n(&t["passed_verifier"]), 10, "{t}");
    assert_eq!(n(&t["timed"]), 0, "{t}");
    // On 8 SMs at 1 block each, the descent's first step (12 workers) is refused.
    assert!(n(&t["rejected_by_verifier"]) >= 1, "{t}");

    let candidates = log["candidates"].as_array().unwrap();
    assert_eq!(candidates.len() as u64, tried);
    assert_eq!(candidates[0]["phase"], "seed");
    assert_eq!(candidates[0]["outcome"], "verified");
    assert_eq!(candidates[0]["changed"], serde_json::json!({}));
    let rejected = candidates.iter().find(|c| c["outcome"] == "rejected").expect("a rejection");
    assert_eq!(rejected["at"], "verifier");
    assert!(rejected["error"].as_str().unwrap().contains("co-residency"), "{rejected}");
    assert_eq!(rejected["changed"]["workers"], "12");
    // Every candidate is different (memoised).
    let mut seen: Vec<String> = candidates.iter().map(|c| c["changed"].to_string()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), candidates.len());
    assert!(log["best"].is_null());
    assert_eq!(log["default"]["knobs"]["sm_count"], 8);
    assert!(log["knob_values"].as_array().unwrap().iter().any(|k| k["name"] == "head_rows"));
    // A dry run times nothing, so there is no best schedule to write.
    assert!(!out.join("schedule.ron").exists());

    // The same seed gives the same candidates.
    let out2 = dir.path().join("out2");
    let (code, stdout, stderr) = amk(&[
        "search",
        model.to_str().unwrap(),
        "--dry-run",
        "--budget",
        "10",
        "--sms",
        "8",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let again = read_log(&out2);
    let outcomes = |l: &Value| -> Vec<(String, String)> {
        l["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["changed"].to_string(), c["outcome"].to_string()))
            .collect()
    };
    assert_eq!(outcomes(&log), outcomes(&again));
}

#[test]
fn without_a_gpu_the_search_refuses_clearly_and_bad_options_fail() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_checkpoint(&SynthSpec::tiny(), &model).unwrap();
    let m = model.to_str().unwrap();
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    if amk_runtime::gpu::cuda_available().is_err() {
        let (code, stdout, stderr) = amk(&["search", m, "--out", o]);
        assert_ne!(code, 0, "{stdout}");
        assert!(stderr.contains("GPU") && stderr.contains("--dry-run"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let (code, _, stderr) = amk(&["search", m, "--dry-run", "--budget", "0", "--out", o]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--budget"), "{stderr}");
    let (code, _, stderr) =
        amk(&["search", dir.path().join("missing").to_str().unwrap(), "--dry-run", "--out", o]);
    assert_ne!(code, 0);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let knobs = dir.path().join("knobs.ron");
    std::fs::write(&knobs, "(workers: 0)").unwrap();
    let (code, _, stderr) =
        amk(&["search", m, "--dry-run", "--config", knobs.to_str().unwrap(), "--out", o]);
    assert_ne!(code, 0);
    assert!(stderr.contains("workers"), "{stderr}");
    let (code, _, _) = amk(&["search", "--help"]);
    assert_eq!(code, 0);
}
