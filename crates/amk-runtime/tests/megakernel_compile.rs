//! The generated megakernel compiles for sm_80, sm_90 and sm_120 with NVRTC, on a machine with
//! no GPU (NVRTC from PyPI: `nvidia-cuda-nvrtc==13.0.88`, its `nvidia/cu13/lib` on
//! `LD_LIBRARY_PATH`; `cargo xtask test` sets this up). For the default SmolLM2 schedule in
//! bf16 and f32, a synthetic GQA-4 / head_dim-128 / bias shape, the tiny architecture
//! variants, SmolLM2 with head-split q/k/v projections (`qkv_parts`) and SmolLM2 with mixed
//! per-op precision plans (bf16 and int8 matrices in one kernel), it reports
//! registers, shared memory and spills per target, and fails on any compile error.

use amk_codegen_cuda::{generate, Arch, CodegenOptions, WeightDType};
use amk_ir::config::{ModelConfig, RawConfig};
use amk_ir::graph::DecodeGraph;
use amk_runtime::gpu::{compile_cached, nvrtc_available, NVRTC_INSTALL_HINT};
use amk_schedule::{lower, ScheduleConfig};
use amk_verify::{verify, LaunchFacts};
use std::path::Path;

fn config(json: &str) -> ModelConfig {
    let p = Path::new("config.json");
    ModelConfig::from_raw(&RawConfig::from_json(json, p).unwrap(), p).unwrap()
}

#[test]
fn megakernel_compiles_for_every_target() {
    if let Err(why) = nvrtc_available() {
        panic!("NVRTC is needed to compile the generated CUDA: {why}\n{NVRTC_INSTALL_HINT}");
    }
    let smollm2 = config(include_str!("../../../fixtures/smollm2-hf/config.json"));
    let wide = config(
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 200, "intermediate_size": 344,
            "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
            "head_dim": 128, "vocab_size": 1000, "attention_bias": true,
            "tie_word_embeddings": false, "max_position_embeddings": 512}"#,
    );
    let facts = LaunchFacts { sm_count: 132, blocks_per_sm: 1 };
    let mut failures = Vec::new();
    // The issue-7 variants exercise per-head norm (qwen3), llama3 rope and sliding windows.
    let tiny: Vec<(String, ModelConfig)> = ["qwen3", "llama3", "mistral"]
        .iter()
        .map(|v| {
            let path =
                format!("{}/../../fixtures/tiny/{v}/config.json", env!("CARGO_MANIFEST_DIR"));
            (format!("tiny/{v}"), config(&std::fs::read_to_string(path).unwrap()))
        })
        .collect();
    let knobs = |ron: &str| ScheduleConfig::from_ron(ron).unwrap();
    let mut models = vec![
        ("smollm2".to_string(), smollm2.clone(), ScheduleConfig::default()),
        ("gqa4_hd128_bias".to_string(), wide, ScheduleConfig::default()),
    ];
    models.extend(tiny.into_iter().map(|(n, c)| (n, c, ScheduleConfig::default())));
    // Knob variants whose kernels compile code the default's leaves out: head-split q/k/v
    // projections, with the append of their key/value rows (and with tagged hand-offs).
    for ron in ["(qkv_parts: 2)", "(qkv_parts: 4, tagged: true)"] {
        models.push((format!("smollm2 {ron}"), smollm2.clone(), knobs(ron)));
    }
    // Mixed kernels (every task function compiled for bf16 and int8): a bf16 build with an
    // int8 LM head, and an int8 build with bf16 attention.
    let mixed = [
        ("(precision: (lm_head: Some(Int8)))", WeightDType::BF16),
        ("(precision: (attention: Some(Bf16)))", WeightDType::Int8),
    ];
    for (ron, _) in mixed {
        models.push((format!("smollm2 {ron}"), smollm2.clone(), knobs(ron)));
    }
    // Every (model, precision, target) to compile, generated here; compiled below on as many
    // threads as the machine has (NVRTC compiles independent programs concurrently), which
    // halves this test's time on CI's two cores.
    let mut jobs = Vec::new();
    for (name, cfg, knobs) in &models {
        let schedule = lower(&DecodeGraph::build(cfg), knobs).unwrap();
        let verified = verify(&schedule, &facts).unwrap();
        let variant = name.contains('(');
        // A mixed plan's variant compiles in its build's dtype alone.
        let build = mixed.iter().find(|(ron, _)| name.ends_with(ron)).map(|&(_, d)| d);
        for dtype in [WeightDType::BF16, WeightDType::F32, WeightDType::Int8] {
            if (dtype == WeightDType::Int8 && name.starts_with("tiny/"))
                || (variant && dtype != build.unwrap_or(WeightDType::BF16))
            {
                continue;
            }
            // Every target for the two main shapes in bf16 and f32; sm_90 alone for int8, the
            // tiny architectures and the knob variants (bf16 only), for compile time: the
            // variants' code is the same on every target.
            let every_target = dtype != WeightDType::Int8 && !variant && !name.starts_with("tiny/");
            let archs: &[Arch] =
                if every_target { &[Arch::Sm80, Arch::Sm90, Arch::Sm120] } else { &[Arch::Sm90] };
            for &arch in archs {
                let options = CodegenOptions {
                    weight_dtype: dtype,
                    arch,
                    block_threads: 512,
                    stage_weights: true,
                    trace: name == "smollm2" && arch == Arch::Sm90,
                };
                jobs.push((name.clone(), dtype, arch, generate(&verified, &options).unwrap()));
            }
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len());
    let mut results: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((_, _, arch, generated)) = jobs.get(k) else { break done };
                        done.push((k, compile_cached(&generated.source, arch.as_str(), None)));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    results.sort_by_key(|(k, _)| *k);
    for (k, result) in results {
        let (name, dtype, arch, generated) = &jobs[k];
        match result {
            Ok(compiled) => {
                let u = compiled.usage(&generated.launch.kernel).expect("ptxas report");
                println!(
                    "{name:<16} {:<5} {:<7} {:>3} registers, {:>5} B dynamic smem, {:>3} B stack, \
                     spills {} B stores / {} B loads",
                    dtype.as_str(),
                    arch.as_str(),
                    u.registers,
                    generated.launch.dynamic_smem_bytes,
                    u.stack_bytes,
                    u.spill_stores,
                    u.spill_loads
                );
                assert!(u.registers > 0 && u.registers <= 128, "{u:?}");
            }
            Err(e) => failures.push(format!("{name} {} {}: {e}", dtype.as_str(), arch.as_str())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
