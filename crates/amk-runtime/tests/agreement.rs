//! The agreement measures and the emulated-precision CPU reference on a tiny synthetic model:
//! `from_model_with` holds each weight as `quant::emulate` gives it (f32 unchanged, bf16
//! representable, int8 matrices on a per-row grid of 255 levels, vectors untouched), and the f32
//! reference agrees 100% with its own greedy decodes, with a tampered golden token counted.

use amk_ir::synth::{write_checkpoint, SynthSpec};
use amk_ir::Model;
use amk_runtime::agreement;
use amk_runtime::cpu::CpuReference;
use amk_runtime::gpu::WeightDType;
use amk_runtime::quant::{emulate_as, round_bf16, WeightPrecision};
use amk_runtime::{generate, GenerateOptions};
use amk_schedule::schedule::BufferKind;
use amk_schedule::{lower, PrecisionPlan, ScheduleConfig, WeightFormat};

fn tiny() -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_checkpoint(&SynthSpec::tiny(), dir.path()).expect("synthetic checkpoint");
    let model = Model::open(dir.path(), &mut |_| {}).expect("model opens");
    (dir, model)
}

fn load(model: &Model, precision: impl Into<WeightPrecision>) -> CpuReference {
    let mut calls = 0;
    let cpu = CpuReference::from_model_with(model, precision, &mut |done, total| {
        calls += 1;
        assert_eq!(done, calls);
        assert_eq!(total, model.graph.weights.len());
    })
    .expect("weights load");
    assert_eq!(calls, model.graph.weights.len(), "progress reported per weight");
    cpu
}

#[test]
fn emulated_weights_are_what_the_device_holds() {
    let (_dir, model) = tiny();
    let exact = CpuReference::from_model(&model, &mut |_, _| {}).unwrap();
    let f32 = load(&model, WeightDType::F32);
    let bf16 = load(&model, WeightDType::BF16);
    let int8 = load(&model, WeightDType::Int8);
    let specs = &model.graph.weights;
    let mut matrices = 0;
    for (i, spec) in specs.iter().enumerate() {
        let w = &exact.weights()[i];
        assert_eq!(&f32.weights()[i][..], &w[..], "{}: f32 is unchanged", spec.name);
        for (&x, &b) in w.iter().zip(bf16.weights()[i].iter()) {
            assert_eq!(b, round_bf16(x), "{}: bf16 rounds every weight", spec.name);
        }
        let q = &int8.weights()[i];
        if spec.shape.len() != 2 {
            assert_eq!(&q[..], &w[..], "{}: int8 keeps vectors in f32", spec.name);
            continue;
        }
        matrices += 1;
        for (row, qrow) in w.chunks(spec.shape[1]).zip(q.chunks(spec.shape[1])) {
            let max = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let scale = max / 127.0;
            for (&x, &y) in row.iter().zip(qrow) {
                assert!((x - y).abs() <= scale / 2.0 * 1.0001 + 1e-12, "{}: {x} -> {y}", spec.name);
                if scale > 0.0 {
                    let level = y / scale;
                    assert!(
                        (level - level.round()).abs() < 1e-3,
                        "{}: {y} off the grid",
                        spec.name
                    );
                }
            }
        }
    }
    assert!(matrices > 0);
}

#[test]
fn a_precision_plan_gives_each_weight_one_format_on_the_device_and_in_the_emulation() {
    use amk_codegen_cuda::{generate, Arch, CodegenOptions};
    let (_dir, model) = tiny();
    let exact = CpuReference::from_model(&model, &mut |_, _| {}).unwrap();
    let int8 = Some(WeightFormat::Int8);
    let bf16 = Some(WeightFormat::Bf16);
    let cases = [
        // (build, plan, whether the kernel mixes bf16 and int8 matrices)
        (WeightDType::BF16, PrecisionPlan { mlp: int8, lm_head: int8, ..Default::default() }, true),
        (
            WeightDType::Int8,
            PrecisionPlan { attention: bf16, lm_head: bf16, ..Default::default() },
            true,
        ),
        (WeightDType::BF16, PrecisionPlan { attention: bf16, ..Default::default() }, false),
        // Every matrix away from the build's format: still a mixed kernel (its vectors and
        // default instances are the build's).
        (WeightDType::BF16, PrecisionPlan { attention: int8, mlp: int8, lm_head: int8 }, true),
        (WeightDType::Int8, PrecisionPlan { attention: bf16, mlp: bf16, lm_head: bf16 }, true),
        (WeightDType::F32, PrecisionPlan { lm_head: int8, ..Default::default() }, false),
    ];
    for (dtype, plan, mixed) in cases {
        let precision = WeightPrecision { dtype, plan };
        let knobs = ScheduleConfig { precision: plan, ..ScheduleConfig::default() };
        let schedule = lower(&model.graph, &knobs).unwrap();
        let facts = amk_verify::LaunchFacts { sm_count: 132, blocks_per_sm: 1 };
        let verified = amk_verify::verify(&schedule, &facts).unwrap();
        let options = CodegenOptions {
            weight_dtype: dtype,
            arch: Arch::Sm90,
            block_threads: 512,
            stage_weights: true,
            trace: false,
        };
        let generated = generate(&verified, &options).unwrap();
        let define = format!("#define AMK_WEIGHT_MIXED {}\n", u8::from(mixed));
        assert!(generated.source.contains(&define), "{precision}: {define}");
        let cpu = load(&model, precision);
        let mut classes = std::collections::HashSet::new();
        for (b, &format) in schedule.buffers.iter().zip(&generated.tables.formats) {
            if b.kind != BufferKind::Weight {
                continue;
            }
            let i = model.graph.weights.iter().position(|w| w.name == b.name).unwrap();
            let spec = &model.graph.weights[i];
            // What codegen uploads is what the CPU reference emulates, weight by weight.
            assert_eq!(format, precision.format_of(spec), "{precision}: {}", b.name);
            let emulated = emulate_as(format, spec, exact.weights()[i].to_vec());
            assert_eq!(&cpu.weights()[i][..], &emulated[..], "{precision}: {}", b.name);
            classes.insert((spec.shape.len(), format));
        }
        // Vectors keep the build's format; f32 builds ignore the plan.
        assert!(!classes.contains(&(1, WeightDType::Int8)), "{precision}");
        if dtype == WeightDType::F32 {
            assert!(classes.iter().all(|&(_, f)| f == WeightDType::F32), "{precision}");
        }
    }
}

#[test]
fn the_f32_reference_agrees_fully_with_its_own_decodes() {
    let (_dir, model) = tiny();
    let mut cpu = load(&model, WeightDType::F32);
    let options =
        GenerateOptions { max_new_tokens: 16, stop_tokens: model.config.eos_token_ids.clone() };
    for prompt in [vec![70u32, 80, 90], vec![5], vec![200, 7, 7, 7, 9]] {
        let gen = generate(&mut cpu, &prompt, &options, &mut |_| {}).unwrap().generated;
        let tf = agreement::teacher_forced(&mut cpu, &prompt, &gen).unwrap();
        assert_eq!((tf.agree, tf.steps, tf.first_disagreement), (gen.len(), gen.len(), None));
        assert_eq!(agreement::prefix(&mut cpu, &prompt, &gen).unwrap(), gen.len());

        // A golden token replaced: free-running stops there; teacher forcing counts it and goes
        // on with the golden tokens.
        if gen.len() >= 3 {
            let mut tampered = gen.clone();
            tampered[1] = (tampered[1] + 1) % model.config.vocab_size as u32;
            let a = agreement::measure(&mut cpu, &prompt, &tampered, &mut || {}).unwrap();
            assert_eq!(a.prefix, 1);
            assert_eq!(a.teacher_forced.first_disagreement, Some(1));
            assert!(a.teacher_forced.agree < gen.len());
            assert_eq!(agreement::prefix(&mut cpu, &prompt, &tampered).unwrap(), 1);
        }
    }
}
