//! The f32 CPU reference against Hugging Face: SmolLM2-135M-Instruct (the real model, fetched by
//! `cargo xtask fetch-model smollm2`) must reproduce every `fp32_cpu` greedy decode in
//! `fixtures/smollm2_golden.json` token for token, to the end, and its first-step logits must
//! match HF's top-5 values.

use amk_ir::cache::{missing_model_hint, SMOLLM2};
use amk_ir::Model;
use amk_runtime::cpu::CpuReference;
use amk_runtime::{generate, Backend, GenerateOptions};

#[derive(serde::Deserialize)]
struct Golden {
    fp32_cpu: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    prompt: String,
    ids: Vec<u32>,
    gen: Vec<u32>,
    steps: Vec<Step>,
}

#[derive(serde::Deserialize)]
struct Step {
    top5: Vec<(u32, f32)>,
}

#[test]
fn cpu_reference_reproduces_hf_fp32_cpu_token_for_token() {
    let gguf = SMOLLM2.gguf_path();
    assert!(gguf.is_file(), "{}", missing_model_hint(&SMOLLM2));
    let golden: Golden =
        serde_json::from_str(include_str!("../../../fixtures/smollm2_golden.json"))
            .expect("golden fixture parses");
    let model = Model::open(&gguf, &mut |_| {}).expect("model opens");
    let tokenizer = model.tokenizer().expect("tokenizer loads");
    let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).expect("weights load");
    let options =
        GenerateOptions { max_new_tokens: 64, stop_tokens: model.config.eos_token_ids.clone() };

    let mut failures = Vec::new();
    for case in &golden.fp32_cpu {
        let ids = tokenizer.encode(&case.prompt).expect("prompt encodes");
        assert_eq!(ids, case.ids, "prompt ids for {:?}", case.prompt);
        let out = generate(&mut cpu, &ids, &options, &mut |_| {}).expect("generation runs");
        let agree = out.generated.iter().zip(&case.gen).take_while(|(a, b)| a == b).count();
        println!(
            "{:<60} {:>3}/{:<3} tokens agree, {:.1} ms/token",
            format!("{:?}", case.prompt),
            agree,
            case.gen.len(),
            out.ms_per_token()
        );
        if out.generated != case.gen {
            failures.push(format!(
                "{:?}: first difference at step {agree}: got {:?}, HF {:?}",
                case.prompt,
                out.generated.get(agree),
                case.gen.get(agree)
            ));
        }
    }
    assert!(failures.is_empty(), "decodes differ from HF fp32_cpu:\n{}", failures.join("\n"));

    // First-step logits: HF's top-5 values within f32 summation noise.
    let case = &golden.fp32_cpu[0];
    cpu.reset();
    for (pos, &t) in case.ids.iter().enumerate() {
        cpu.step(t, pos).expect("step runs");
    }
    let logits = cpu.logits().expect("cpu keeps logits");
    for &(id, value) in &case.steps[0].top5 {
        let ours = logits[id as usize];
        assert!((ours - value).abs() < 2e-3, "logit of {id}: ours {ours}, HF {value}");
    }
}
