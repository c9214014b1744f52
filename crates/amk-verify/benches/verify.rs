//! Verification time. The real lowerings (`amk_schedule::lower` of SmolLM2-135M's config, and of
//! a Llama-3.2-1B-shaped config, default H100 knobs) and the model-shaped synthetic schedules of
//! `amk_verify::testing`: SmolLM2 (target < 100 ms), Llama-3.2-1B (target < 1 s), and SmolLM2
//! with 4x and 16x the layers and 4x and 16x the workers (about linear).
//! Run: `cargo bench -p amk-verify --bench verify`.

use amk_ir::config::{ModelConfig, RawConfig};
use amk_ir::graph::DecodeGraph;
use amk_schedule::{lower, ScheduleConfig};
use amk_verify::testing::{layered, LayeredSpec};
use amk_verify::{verify, LaunchFacts};
use criterion::{criterion_group, criterion_main, Criterion};
use std::path::Path;

fn config(json: &str) -> ModelConfig {
    let p = Path::new("config.json");
    ModelConfig::from_raw(&RawConfig::from_json(json, p).unwrap(), p).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    g.sample_size(10);

    let smollm2 = config(include_str!("../../../fixtures/smollm2-hf/config.json"));
    let llama1b = config(
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 64, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "vocab_size": 128256,
            "max_position_embeddings": 8192, "tie_word_embeddings": true}"#,
    );
    for (name, cfg, workers) in [
        ("lowered_smollm2", &smollm2, 132),
        ("lowered_smollm2_4x_workers", &smollm2, 528),
        ("lowered_llama32_1b", &llama1b, 132),
    ] {
        let knobs = ScheduleConfig { workers, ..ScheduleConfig::default() };
        let s = lower(&DecodeGraph::build(cfg), &knobs).expect("lowers");
        let facts = LaunchFacts { sm_count: 132, blocks_per_sm: workers.div_ceil(132) };
        let instrs: usize = s.workers.iter().map(|w| w.instrs.len()).sum();
        verify(&s, &facts).expect("the default lowering verifies");
        eprintln!("{name}: {} tasks, {instrs} instructions", s.tasks.len());
        g.bench_function(name, |b| b.iter(|| verify(&s, &facts).unwrap()));
    }

    let cases = [
        ("synthetic_smollm2_1x", LayeredSpec::smollm2()),
        ("synthetic_smollm2_4x_layers", LayeredSpec::smollm2().with_layers(120)),
        ("synthetic_smollm2_16x_layers", LayeredSpec::smollm2().with_layers(480)),
        ("synthetic_llama32_1b", LayeredSpec::llama32_1b()),
    ];
    let facts = LaunchFacts { sm_count: 132, blocks_per_sm: 1 };
    for (name, spec) in cases {
        let s = layered(&spec);
        let instrs: usize = s.workers.iter().map(|w| w.instrs.len()).sum();
        let cert = verify(&s, &facts).expect("synthetic schedule verifies").certificate().clone();
        eprintln!(
            "{name}: {} tasks, {instrs} instructions, {} hb edges",
            s.tasks.len(),
            cert.happens_before_edges
        );
        g.bench_function(name, |b| b.iter(|| verify(&s, &facts).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
