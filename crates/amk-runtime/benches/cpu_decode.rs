//! CPU reference speed on the real model: one SmolLM2-135M decode step (f32, all cores), at
//! positions 16 and 128 of a cached sequence. Tokens/s = 1 / time per step. Needs
//! `cargo xtask fetch-model smollm2`. Run: `cargo bench -p amk-runtime --bench cpu_decode`.

use amk_ir::cache::{missing_model_hint, SMOLLM2};
use amk_ir::Model;
use amk_runtime::cpu::CpuReference;
use amk_runtime::Backend;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn decode_step(c: &mut Criterion) {
    let dir = SMOLLM2.hf_dir();
    assert!(dir.join("config.json").is_file(), "{}", missing_model_hint(&SMOLLM2));
    let model = Model::open(&dir, &mut |_| {}).expect("model opens");
    let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).expect("weights load");
    let mut group = c.benchmark_group("smollm2_cpu_f32");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    for context in [16usize, 128] {
        cpu.reset();
        for pos in 0..context {
            cpu.step((pos % 1000) as u32 + 100, pos).expect("step");
        }
        group.bench_function(format!("decode_step_ctx{context}"), |b| {
            // Re-decode the last position: same work every iteration, cache length fixed.
            b.iter(|| cpu.step(504, context - 1).expect("step"))
        });
    }
    group.finish();
}

criterion_group!(benches, decode_step);
criterion_main!(benches);
