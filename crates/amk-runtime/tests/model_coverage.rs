//! Model coverage (issue 7): the tiny Hugging Face checkpoints of `fixtures/tiny/` (one per
//! supported architecture and shape, made by `fixtures/tiny/make_fixtures.py` with
//! transformers' own model classes) decoded on the CPU.
//!
//! For every variant:
//! - the f32 CPU reference, fed the prompt ids one at a time as the runtime does and then
//!   greedy for 24 tokens, gives exactly transformers' fp32 tokens, and its logits of the first
//!   three decode steps (step 0: after the whole prompt) agree with transformers' to within
//!   `1e-4 * max(1, max |ref logit| of that step)` element by element, i.e. relative to the
//!   step's largest logit, with a floor of 1 so near-zero logits are not held to a tighter
//!   absolute bound than f32 summation-order noise allows;
//! - the default lowering's schedule (here on 7 workers, caches of 64 positions), proven by
//!   `amk-verify`, run by the CPU schedule executor with a different interleaving every step,
//!   gives the same tokens and bit-identical logits to the reference.
//!
//! The fixtures have no tokenizer: everything works on ids.

use amk_ir::Model;
use amk_runtime::cpu::CpuReference;
use amk_runtime::schedule_exec::ScheduleExecutor;
use amk_runtime::Backend;
use amk_schedule::{lower, ScheduleConfig};
use amk_verify::LaunchFacts;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `expected.json` of a fixture.
#[derive(serde::Deserialize)]
struct Expected {
    architecture: String,
    prompt_ids: Vec<u32>,
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
    min_margin: f32,
}

fn fixture(name: &str) -> (PathBuf, Expected) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny").join(name);
    let text = std::fs::read_to_string(dir.join("expected.json")).expect("expected.json reads");
    (dir, serde_json::from_str(&text).expect("expected.json parses"))
}

/// Feeds the prompt one token at a time, then decodes greedily: the new tokens, and the
/// logits of the first `logit_steps` of them.
fn decode(
    backend: &mut dyn Backend,
    prompt: &[u32],
    steps: usize,
    logit_steps: usize,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    backend.reset();
    let mut next = 0;
    for (pos, &t) in prompt.iter().enumerate() {
        next = backend.step(t, pos).expect("prompt step");
    }
    let (mut tokens, mut logits) = (Vec::new(), Vec::new());
    for pos in prompt.len()..prompt.len() + steps {
        tokens.push(next);
        if logits.len() < logit_steps {
            logits.push(backend.logits().expect("logits on the host").to_vec());
        }
        if tokens.len() == steps {
            break;
        }
        next = backend.step(next, pos).expect("decode step");
    }
    (tokens, logits)
}

fn check(name: &str) {
    let (dir, want) = fixture(name);
    assert!(!dir.join("tokenizer.json").exists(), "the fixtures decode by ids alone");
    let model = Model::open(&dir, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(model.config.architecture.hf_name(), want.architecture, "{name}");
    let steps = want.tokens.len();
    assert_eq!(steps, 24, "{name}");

    // The CPU reference against transformers.
    let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).expect("weights load");
    let (tokens, logits) = decode(&mut cpu, &want.prompt_ids, steps, want.logits.len());
    assert_eq!(tokens, want.tokens, "{name}: CPU reference tokens");
    let mut worst = 0f32;
    for (step, (ours, theirs)) in logits.iter().zip(&want.logits).enumerate() {
        assert_eq!(ours.len(), theirs.len(), "{name}: vocabulary");
        let scale = theirs.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = ours.iter().zip(theirs).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(diff / scale);
        assert!(
            diff <= 1e-4 * scale,
            "{name} step {step}: max |cpu - hf| = {diff:e}, max(1, max |hf|) = {scale}"
        );
    }

    // The verified schedule on the CPU schedule executor against the reference.
    // Unsplit attention, unfused MLP and output projection: the executor computes bit for bit
    // what the reference does.
    let knobs = ScheduleConfig {
        workers: 7,
        max_positions: 64,
        attn_splits: 1,
        fuse_down: false,
        o_by_head: false,
        ..Default::default()
    };
    let schedule = lower(&model.graph, &knobs).unwrap_or_else(|e| panic!("{name}: {e}"));
    let facts = LaunchFacts { sm_count: 132, blocks_per_sm: 1 };
    let verified = amk_verify::verify(&schedule, &facts).unwrap_or_else(|e| panic!("{name}: {e}"));
    let schedule = Arc::new(verified.into_schedule());
    let mut exec = ScheduleExecutor::from_model(&model, schedule, &mut |_, _| {}).unwrap();
    exec.check_regions = true;
    exec.seed = 7;
    let (exec_tokens, exec_logits) = decode(&mut exec, &want.prompt_ids, steps, logits.len());
    assert_eq!(exec_tokens, want.tokens, "{name}: schedule executor tokens");
    assert_eq!(exec_logits, logits, "{name}: schedule executor logits differ from the reference");

    // Attention split over positions (3 parts), the fused MLP and the head-split output
    // projection (atomic adds): same tokens, logits up to f32 reassociation.
    let knobs = ScheduleConfig { attn_splits: 3, fuse_down: true, o_by_head: true, ..knobs };
    let schedule = lower(&model.graph, &knobs).unwrap_or_else(|e| panic!("{name}: {e}"));
    let verified = amk_verify::verify(&schedule, &facts).unwrap_or_else(|e| panic!("{name}: {e}"));
    let schedule = Arc::new(verified.into_schedule());
    let mut exec = ScheduleExecutor::from_model(&model, schedule, &mut |_, _| {}).unwrap();
    exec.check_regions = true;
    let (split_tokens, split_logits) = decode(&mut exec, &want.prompt_ids, steps, logits.len());
    assert_eq!(split_tokens, want.tokens, "{name}: split-attention tokens");
    for (ours, reference) in split_logits.iter().zip(&logits) {
        let scale = reference.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = ours.iter().zip(reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-5 * scale, "{name}: split-attention logits differ by {diff:e}");
    }
    eprintln!(
        "{name}: 24 tokens exact; logits within {worst:.1e} of max(1, max |hf|) \
         (fixture margin {:.3})",
        want.min_margin
    );
}

#[test]
fn llama2() {
    check("llama2");
}

#[test]
fn llama3() {
    check("llama3");
}

#[test]
fn tinyllama() {
    check("tinyllama");
}

#[test]
fn smollm2_360m() {
    check("smollm2_360m");
}

#[test]
fn smollm2_1_7b() {
    check("smollm2_1_7b");
}

#[test]
fn mistral() {
    check("mistral");
}

#[test]
fn qwen2() {
    check("qwen2");
}

#[test]
fn qwen3() {
    check("qwen3");
}

/// Each fixture really exercises its feature: decoding with the feature switched off in the
/// config (the same checkpoint) departs from transformers, in the tokens or beyond 1e-3 of the
/// logits. (Mistral's window of 8 binds only from position 8, after the logged steps, so it
/// shows in the tokens.)
#[test]
fn features_are_load_bearing() {
    use amk_ir::config::ModelConfig;
    type SwitchOff = fn(&mut ModelConfig);
    let cases: [(&str, SwitchOff); 4] = [
        ("mistral", |c| c.sliding_window = None),
        ("llama3", |c| c.rope.llama3 = None),
        ("qwen2", |c| c.qkv_bias = false),
        ("qwen3", |c| c.qk_norm = false),
    ];
    for (name, switch_off) in cases {
        let (dir, want) = fixture(name);
        let model = Model::open(&dir, &mut |_| {}).unwrap();
        let mut config = model.config.clone();
        switch_off(&mut config);
        let graph = Arc::new(amk_ir::graph::DecodeGraph::build(&config));
        let mut cpu = CpuReference::new(graph, |spec| {
            model.checkpoint.load_f32(spec).map_err(|e| amk_runtime::RuntimeError::WeightLoad {
                name: spec.name.clone(),
                message: e.to_string(),
            })
        })
        .unwrap();
        let (tokens, logits) = decode(&mut cpu, &want.prompt_ids, 24, want.logits.len());
        let worst = logits.iter().zip(&want.logits).fold(0f32, |m, (ours, theirs)| {
            let scale = theirs.iter().fold(1f32, |m, v| m.max(v.abs()));
            ours.iter().zip(theirs).fold(m, |m, (a, b)| m.max((a - b).abs() / scale))
        });
        assert!(
            tokens != want.tokens || worst > 1e-3,
            "{name}: switching the feature off changes nothing (worst {worst:e})"
        );
        eprintln!(
            "{name} without its feature: {} of 24 tokens differ, logits off by {worst:.1e}",
            tokens.iter().zip(&want.tokens).filter(|(a, b)| a != b).count()
        );
    }
}

/// A copy of fixture `name` whose tensors went through `edit` (name, shape, bf16 bytes).
fn edited_copy(
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>),
) -> tempfile::TempDir {
    let (src, _) = fixture(name);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::BF16);
            (n, v.shape().to_vec(), v.data().to_vec())
        })
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, data)| {
            let v =
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, shape.clone(), data);
            (n.clone(), v.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, &None, &dir.path().join("model.safetensors")).unwrap();
    dir
}

/// Missing or misshapen q/k norms and biases are named (tensor, expected shape, directory),
/// never a panic; so is a llama3 rope without its parameters.
#[test]
fn bad_checkpoints_are_named() {
    let gone = "model.layers.1.self_attn.k_norm.weight";
    let dir = edited_copy("qwen3", |ts| ts.retain(|t| t.0 != gone));
    let err = Model::open(dir.path(), &mut |_| {}).unwrap_err().to_string();
    for needle in [gone, "missing", "[128]", &dir.path().display().to_string()] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }

    let name = "model.layers.0.self_attn.q_norm.weight";
    let dir = edited_copy("qwen3", |ts| {
        let t = ts.iter_mut().find(|t| t.0 == name).unwrap();
        t.1 = vec![64];
        t.2.truncate(128);
    });
    let err = Model::open(dir.path(), &mut |_| {}).unwrap_err().to_string();
    for needle in [name, "[64]", "[128]"] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }

    let gone = "model.layers.0.self_attn.v_proj.bias";
    let dir = edited_copy("qwen2", |ts| ts.retain(|t| t.0 != gone));
    let err = Model::open(dir.path(), &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains(gone) && err.contains("missing") && err.contains("[64]"), "{err}");

    let dir = edited_copy("llama3", |_| {});
    let config = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    v["rope_parameters"].as_object_mut().unwrap().remove("low_freq_factor");
    std::fs::write(&config, v.to_string()).unwrap();
    let err = Model::open(dir.path(), &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains(&config.display().to_string()), "{err}");
    assert!(err.contains("`rope_parameters.low_freq_factor`") && err.contains("missing"), "{err}");
}
