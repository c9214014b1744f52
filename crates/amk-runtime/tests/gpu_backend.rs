//! The GPU backend's refusals that need no GPU: without a driver it says so (no panic), and a
//! hang report names every counter with its value relative to the launch.

use amk_ir::synth::{write_checkpoint, SynthSpec};
use amk_ir::Model;
use amk_runtime::gpu::{self, CounterState, GpuBackend, GpuError, GpuOptions};
use amk_schedule::{lower, ScheduleConfig};
use amk_verify::LaunchFacts;
use std::time::Duration;

#[test]
fn without_cuda_the_backend_is_refused_cleanly() {
    if gpu::cuda_available().is_ok() {
        eprintln!("CUDA is available: this test only checks the refusal on GPU-less machines");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    write_checkpoint(&SynthSpec::tiny(), dir.path()).expect("synthetic checkpoint");
    let model = Model::open(dir.path(), &mut |_| {}).expect("model opens");
    let config = ScheduleConfig { workers: 4, ..Default::default() };
    let schedule = lower(&model.graph, &config).expect("lowering");
    let verified = amk_verify::verify(&schedule, &LaunchFacts { sm_count: 4, blocks_per_sm: 1 })
        .expect("the default lowering verifies");
    match GpuBackend::new(&model, &verified, GpuOptions::default()) {
        Err(GpuError::Unavailable(reason)) => assert!(reason.contains("libcuda"), "{reason}"),
        Err(other) => panic!("expected `Unavailable`, got {other}"),
        Ok(_) => panic!("a GPU backend came up on a machine without CUDA"),
    }
}

#[test]
fn a_hang_report_lists_every_counter() {
    let counter = |name: &str, value, relative, per_launch| CounterState {
        name: name.into(),
        value,
        relative,
        per_launch,
    };
    let err = GpuError::Hang {
        launch: 7,
        epoch: 7,
        watchdog: Duration::from_secs(10),
        counters: Some(vec![counter("L0.qkv.done", 31, 3, 4), counter("L0.o.done", 56, 8, 8)]),
    };
    let text = err.to_string();
    assert!(text.contains("launch 7 (epoch 7) did not finish within 10s"), "{text}");
    assert!(text.contains("1 of 2 counters short"), "{text}");
    assert!(text.contains("L0.qkv.done = 3/4 (raw 31)"), "{text}");
    assert!(text.contains("L0.o.done = 8/8 (raw 56)"), "{text}");
}
