//! `amk bench` without a GPU: merging earlier results, running a (stand-in) baseline script,
//! and writing bench.json, bench.svg and the table. The GPU measurements themselves need the
//! H100 (`amk bench --model ...`); everything around them is exercised here.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn amk(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_amk"))
        .args(args)
        .env_remove("AMK_LOG")
        .output()
        .expect("the amk binary runs");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8");
    (out.status.success(), text(out.stdout), text(out.stderr))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 paths")
}

/// The bench.json a run wrote into `out`.
fn report(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).unwrap()).unwrap()
}

const EARLIER: &str = r#"{"copy_gbps": 1450.0, "gpu": "H100", "rows": [
  {"system": "amk-bf16", "model": "m", "context": 16, "ms_per_token": 1.0, "timed_tokens": 200,
   "weight_bytes": 2.7e8, "kv_bytes_per_position": 46080},
  {"system": "hf_eager", "model": "m", "context": 16, "ms_per_token": 25.0, "timed_tokens": 200,
   "weight_bytes": 2.7e8, "kv_bytes_per_position": 23040},
  {"system": "compile_graph", "model": "m", "context": 16, "error": "InductorError: no"}
]}"#;

#[test]
fn merges_earlier_results_into_a_report_table_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let earlier = dir.path().join("earlier.json");
    std::fs::write(&earlier, EARLIER).unwrap();
    let out = dir.path().join("out");
    let (ok, stdout, stderr) =
        amk(&["bench", "--no-amk", "--merge", s(&earlier), "--out", s(&out)]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("m: ms per token"), "{stdout}");
    assert!(stdout.contains("1450 GB/s read bandwidth, measured"), "{stdout}");
    assert!(stdout.contains("  over hf_eager") && stdout.contains("25.00x"), "{stdout}");
    assert!(stdout.contains("m compile_graph ctx 16: InductorError: no"), "{stdout}");
    let report = report(&out);
    assert_eq!(report["rows"].as_array().unwrap().len(), 3);
    assert_eq!(report["speedups"][0]["speedup"], 25.0);
    assert_eq!(report["copy_gbps"], 1450.0);
    let gbps = report["rows"][0]["gb_per_s"].as_f64().unwrap();
    let expected = (2.7e8 + 46080.0 * 116.0) / 1e-3 / 1e9;
    assert!((gbps - expected).abs() < 1e-6, "{gbps} vs {expected}");
    let svg = std::fs::read_to_string(out.join("bench.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 2, "{svg}");
}

/// A report assembled from pieces keeps what only an earlier piece measured: the device, the
/// checkpoint-to-ready timing and the baselines' versions, each from the newest file with it.
#[test]
fn merging_keeps_the_device_ready_timing_and_baseline_versions() {
    let dir = tempfile::tempdir().unwrap();
    let older = dir.path().join("older.json");
    std::fs::write(
        &older,
        r#"{"device": "old GPU", "baselines": {"torch": "2.10"}, "rows": [],
            "ready": {"model": "m", "precision": "bf16", "total_s": 9.5, "stages": []}}"#,
    )
    .unwrap();
    let newer = dir.path().join("newer.json");
    std::fs::write(
        &newer,
        r#"{"device": "NVIDIA H100 80GB HBM3", "ready": null, "baselines": {"torch": "2.11"},
            "rows": [{"system": "amk-bf16", "model": "m", "context": 16, "ms_per_token": 0.5}]}"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let (ok, stdout, stderr) = amk(&[
        "bench",
        "--no-amk",
        "--merge",
        &format!("{},{}", s(&older), s(&newer)),
        "--out",
        s(&out),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let report = report(&out);
    assert_eq!(report["device"], "NVIDIA H100 80GB HBM3");
    assert_eq!(report["ready"]["total_s"], 9.5, "a null in the newer file does not hide it");
    assert_eq!(report["baselines"]["torch"], "2.11");
    assert!(stdout.contains("device: NVIDIA H100 80GB HBM3"), "{stdout}");
    assert!(
        stdout.contains("checkpoint to ready kernel (m, bf16): 9.50 s (from a merged file)"),
        "{stdout}"
    );
}

#[test]
fn runs_the_baseline_script_with_the_same_models_and_merges_it() {
    let dir = tempfile::tempdir().unwrap();
    // A stand-in for bench/baselines.py (run with `sh`, no torch needed): it records its
    // arguments and writes one row per context for the shape it was given.
    let script = dir.path().join("fake_baselines.sh");
    std::fs::write(
        &script,
        r#"echo "$@" > "$(dirname "$0")/args.txt"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift;;
    --shape) shape="$2"; shift;;
  esac
  shift
done
printf '{"copy_gbps": 1000.0, "torch": "fake", "rows": [
  {"system": "cublas_graph", "model": "%s", "context": 16, "ms_per_token": 3.0},
  {"system": "cublas_graph", "model": "%s", "context": 256, "ms_per_token": 3.5}]}' \
  "$shape" "$shape" > "$out"
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let (ok, stdout, stderr) = amk(&[
        "bench",
        "--no-amk",
        "--synth",
        "smollm2-360m,tiny",
        "--quick",
        "--baselines",
        s(&script),
        "--python",
        "sh",
        "--baseline-systems",
        "cublas_graph",
        "--out",
        s(&out),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let args = std::fs::read_to_string(dir.path().join("args.txt")).unwrap();
    assert!(
        args.contains("--contexts 16,256 --tokens 16")
            && args.contains("--shape smollm2-360m --systems cublas_graph --quick"),
        "{args}"
    );
    assert!(stderr.contains("the baseline script has no shape tiny"), "{stderr}");
    assert!(stdout.contains("smollm2-360m: ms per token"), "{stdout}");
    assert!(stdout.contains("1000 GB/s read bandwidth, measured"), "{stdout}");
    let report = report(&out);
    assert_eq!(report["rows"].as_array().unwrap().len(), 2);
    assert_eq!(report["baselines"]["torch"], "fake");
    assert!(out.join("baselines.json").is_file());
}

#[test]
fn a_failing_baseline_script_is_reported_and_the_report_still_written() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("broken.sh");
    std::fs::write(&script, "echo no torch here >&2; exit 3\n").unwrap();
    let out = dir.path().join("out");
    let (ok, stdout, stderr) = amk(&[
        "bench",
        "--no-amk",
        "--synth",
        "llama3-2-1b",
        "--baselines",
        s(&script),
        "--python",
        "sh",
        "--out",
        s(&out),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stderr.contains("no torch here") && stderr.contains("left no"), "{stderr}");
    let report = report(&out);
    assert!(report["baselines_error"].as_str().unwrap().contains("left no"));
    assert_eq!(report["copy_gbps_source"], "DESIGN.md's 3.08 TB/s, not measured in this run");
}

#[test]
fn nothing_to_measure_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = amk(&["bench", "--out", s(dir.path())]);
    assert!(!ok);
    assert!(stderr.contains("nothing to measure"), "{stderr}");
}

/// A run whose every amk point fails (here: no GPU) still writes its report, then exits
/// non-zero naming the first error, so a script cannot take it for a measurement.
#[test]
fn a_run_that_measured_nothing_fails() {
    if amk_runtime::gpu::cuda_available().is_ok() {
        return; // on a GPU machine the points are measured
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (ok, stdout, stderr) = amk(&["bench", "--synth", "tiny", "--quick", "--out", s(&out)]);
    assert!(!ok, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("every amk measurement failed") && stderr.contains("no GPU"),
        "{stderr}"
    );
    let report = report(&out);
    assert!(report["rows"].as_array().unwrap().iter().all(|r| r["error"].is_string()));
}
