//! Injection safety: names are text a person (or an attacker) wrote in `schedule.ron`; none of
//! it may reach the kernel source. The generated source must be byte-identical for two
//! schedules that differ only in names, and contain none of the names.

mod common;

use amk_codegen_cuda::{generate, CodegenOptions, WeightDType};

const PAYLOADS: [&str; 4] = [
    "*/ #include <x> /*",
    "\"); system(\"rm -rf /\"); //",
    "\n#define AMK_WORKERS 0\n",
    "}} __global__ void evil() { asm(\"trap;\"); }",
];

#[test]
fn no_name_reaches_the_source() {
    let clean = common::lowered(&amk_ir::synth::SynthSpec::tiny(), 4);
    let mut evil = clean.clone();
    let mut names = Vec::new();
    let mut rename = |kind: &str, i: usize, name: &mut String| {
        *name = format!("{}{kind}{i}", PAYLOADS[i % PAYLOADS.len()]);
        names.push(name.clone());
    };
    evil.name = format!("{}schedule", PAYLOADS[0]);
    for (i, b) in evil.buffers.iter_mut().enumerate() {
        rename("buffer", i, &mut b.name);
    }
    for (i, c) in evil.counters.iter_mut().enumerate() {
        rename("counter", i, &mut c.name);
    }
    for (i, t) in evil.tasks.iter_mut().enumerate() {
        rename("task", i, &mut t.name);
    }
    names.push(evil.name.clone());

    let (clean_v, evil_v) = (common::verified(&clean), common::verified(&evil));
    assert_ne!(clean_v.certificate().schedule_hash, evil_v.certificate().schedule_hash);
    for dtype in [WeightDType::BF16, WeightDType::F32] {
        let options = CodegenOptions { weight_dtype: dtype, ..Default::default() };
        let a = generate(&clean_v, &options).expect("clean generates");
        let b = generate(&evil_v, &options).expect("evil generates");
        for name in &names {
            assert!(!b.source.contains(name.as_str()), "the source contains the name {name:?}");
            assert!(!b.launch.to_ron().contains(name.as_str()), "launch.ron contains {name:?}");
        }
        for payload in PAYLOADS {
            let fragment = payload.trim();
            assert!(!b.source.contains(fragment), "the source contains {fragment:?}");
        }
        for fragment in ["#include <x>", "system(", "rm -rf", "evil", "trap;"] {
            assert!(!b.source.contains(fragment), "the source contains {fragment:?}");
        }
        // Names change nothing but the schedule hash.
        assert_eq!(a.source, b.source);
        assert_eq!(a.tables, b.tables);
        let mut launch = b.launch.clone();
        launch.schedule_hash = a.launch.schedule_hash.clone();
        assert_eq!(a.launch, launch);
    }
}
