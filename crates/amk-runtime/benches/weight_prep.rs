//! Preparing weights for a lower precision on the CPU, the part of building an int8 backend (and
//! of `amk agree`'s int8 emulation) that grows with the model: per-row int8 quantization of one
//! Llama-3.2-1B-sized MLP matrix (8192 x 2048) and of one SmolLM2-135M MLP matrix (1536 x 576).
//! Throughput is in weights. Run: `cargo bench -p amk-runtime --bench weight_prep`.

use amk_runtime::quant::quantize_rows;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn quantize(c: &mut Criterion) {
    let mut group = c.benchmark_group("int8_quantize_rows");
    group.sample_size(10);
    for (rows, cols) in [(1536usize, 576usize), (8192, 2048)] {
        // Deterministic, non-uniform values (a hash of the index), so clipping has work to do.
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i.wrapping_mul(2_654_435_761) % 2001) as f32 / 1000.0 - 1.0).powi(3))
            .collect();
        group.throughput(Throughput::Elements((rows * cols) as u64));
        group.bench_function(format!("{rows}x{cols}"), |b| {
            b.iter(|| quantize_rows(black_box(&w), cols))
        });
    }
    group.finish();
}

criterion_group!(benches, quantize);
criterion_main!(benches);
