//! `amk agree` end to end on a tiny synthetic model, with golden decodes written by the f32 CPU
//! reference itself: f32 agrees 100%, the lower precisions' figures equal the library's, a
//! tampered golden token is counted, `--min-teacher-forced` fails below its bar, and bad golden
//! files are named with their field. Also `amk generate --backend cpu --precision int8`.

use amk_ir::synth::{write_checkpoint, SynthSpec};
use amk_ir::Model;
use amk_runtime::agreement;
use amk_runtime::cpu::CpuReference;
use amk_runtime::gpu::WeightDType;
use amk_runtime::{generate, GenerateOptions};
use serde_json::{json, Value};
use std::path::Path;

mod common;
use common::{run_with_cache, s, Run};

/// Runs `amk` with a private cache directory and no GPU (the CPU is measured).
fn amk(cache: &Path, args: &[&str]) -> Run {
    run_with_cache(Some(cache), args)
}

const PROMPTS: [&str; 3] = ["The largest planet", "def f(x):", "Water"];

/// A tiny synthetic model and a golden file of its own f32 greedy decodes (up to 12 tokens
/// each), with a `bf16_gpu` list claiming a prefix of 3 for every prompt.
struct Fixture {
    dir: tempfile::TempDir,
    model: Model,
    cases: Vec<(Vec<u32>, Vec<u32>)>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        write_checkpoint(&SynthSpec::tiny(), &dir.path().join("model")).expect("synthetic model");
        let model = Model::open(&dir.path().join("model"), &mut |_| {}).expect("model opens");
        let tokenizer = model.tokenizer().expect("tokenizer");
        let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).expect("weights load");
        let options =
            GenerateOptions { max_new_tokens: 12, stop_tokens: model.config.eos_token_ids.clone() };
        let mut cases = Vec::new();
        let mut fp32 = Vec::new();
        let mut bf16 = Vec::new();
        for p in PROMPTS {
            let ids = tokenizer.encode(p).expect("prompt encodes");
            let gen = generate(&mut cpu, &ids, &options, &mut |_| {}).expect("decodes").generated;
            fp32.push(
                json!({"prompt": p, "ids": ids, "gen": gen, "agrees_with_fp32_cpu_for": gen.len()}),
            );
            bf16.push(json!({"prompt": p, "ids": ids, "gen": [], "agrees_with_fp32_cpu_for": 3}));
            cases.push((ids, gen));
        }
        let f = Fixture { dir, model, cases };
        f.write_golden("golden.json", &json!({"fp32_cpu": fp32, "bf16_gpu": bf16}));
        f
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn write_golden(&self, name: &str, v: &Value) {
        std::fs::write(self.path(name), serde_json::to_string_pretty(v).unwrap()).unwrap();
    }

    fn golden_steps(&self) -> usize {
        self.cases.iter().map(|(_, g)| g.len()).sum()
    }

    /// `amk agree` on the model with `golden` and `rest`.
    fn agree(&self, golden: &str, rest: &[&str]) -> Run {
        let model = self.path("model");
        let golden = self.path(golden);
        let cache = self.path("cache");
        let mut args = vec!["agree", s(&model), "--golden", s(&golden), "--backend", "cpu"];
        args.extend_from_slice(rest);
        amk(&cache, &args)
    }

    fn report(&self, name: &str) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.path(name)).unwrap()).unwrap()
    }
}

#[test]
fn f32_agrees_fully_and_lower_precisions_match_the_library() {
    let f = Fixture::new();
    let out = f.path("report.json");
    let r = f
        .agree(
            "golden.json",
            &["--precision", "f32,bf16,int8", "--json", s(&out), "--min-teacher-forced", "0"],
        )
        .ok();
    assert!(r.stderr.contains("f32 arithmetic"), "the emulation note:\n{}", r.describe());
    assert!(r.stdout.contains("total"), "{}", r.describe());
    assert!(r.stdout.contains("HF bf16 gpu"), "{}", r.describe());
    // HF's claimed prefix of 3 per prompt, summed.
    assert!(r.stdout.contains(&format!("9/{}", f.golden_steps())), "{}", r.describe());

    let report = f.report("report.json");
    let steps = f.golden_steps();
    assert_eq!(report["golden_steps"], steps);
    assert_eq!(report["hf_bf16_gpu_prefix_sum"], 9);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);

    let f32_run = &runs[0];
    assert_eq!(f32_run["precision"], "f32");
    assert_eq!(f32_run["backend"], "cpu");
    assert_eq!(f32_run["emulated"], false);
    assert_eq!(f32_run["teacher_forced_agree"], steps);
    assert_eq!(f32_run["teacher_forced_percent"], 100.0);
    assert_eq!(f32_run["prefix_sum"], steps);
    for (p, (_, gen)) in f32_run["prompts"].as_array().unwrap().iter().zip(&f.cases) {
        assert_eq!(p["teacher_forced"]["steps"], gen.len());
        assert_eq!(p["teacher_forced"]["agree"], gen.len());
        assert_eq!(p["teacher_forced"]["first_disagreement"], Value::Null);
        assert_eq!(p["prefix"], gen.len());
        assert_eq!(p["hf_bf16_gpu_prefix"], 3);
    }

    // The CLI's figures for bf16 and int8 are the library's on the emulated reference.
    for (run, dtype, name) in
        [(&runs[1], WeightDType::BF16, "bf16"), (&runs[2], WeightDType::Int8, "int8")]
    {
        assert_eq!(run["precision"], name);
        assert_eq!(run["emulated"], true);
        let mut cpu = CpuReference::from_model_with(&f.model, dtype, &mut |_, _| {}).unwrap();
        let mut agree = 0;
        for (p, (ids, gen)) in run["prompts"].as_array().unwrap().iter().zip(&f.cases) {
            let tf = agreement::teacher_forced(&mut cpu, ids, gen).unwrap();
            let prefix = agreement::prefix(&mut cpu, ids, gen).unwrap();
            assert_eq!(p["teacher_forced"]["agree"], tf.agree, "{name}");
            assert_eq!(p["prefix"], prefix, "{name}");
            agree += tf.agree;
        }
        assert_eq!(run["teacher_forced_agree"], agree, "{name}");
    }
}

#[test]
fn a_tampered_golden_token_is_counted_and_the_bar_fails() {
    let f = Fixture::new();
    let (_, gen) = &f.cases[0];
    assert!(gen.len() >= 4, "the synthetic decode is long enough: {gen:?}");
    let mut tampered = gen.clone();
    let k = 2;
    tampered[k] = (tampered[k] + 1) % 300;
    let mut fp32 = Vec::new();
    for (i, (ids_i, gen_i)) in f.cases.iter().enumerate() {
        let g = if i == 0 { &tampered } else { gen_i };
        fp32.push(json!({"prompt": PROMPTS[i], "ids": ids_i, "gen": g}));
    }
    f.write_golden("tampered.json", &json!({"fp32_cpu": fp32}));
    let out = f.path("tampered-report.json");
    let r = f
        .agree(
            "tampered.json",
            &["--precision", "f32", "--json", s(&out), "--min-teacher-forced", "100"],
        )
        .fails_with(&["--min-teacher-forced", "f32"]);
    // The tables still print, without an HF column's figures (no bf16_gpu list).
    assert!(r.stdout.contains("total"), "{}", r.describe());

    let report = f.report("tampered-report.json");
    let run = &report["runs"][0];
    let p = &run["prompts"][0];
    assert_eq!(p["prefix"], k);
    assert_eq!(p["teacher_forced"]["first_disagreement"], k);
    let agree = p["teacher_forced"]["agree"].as_u64().unwrap() as usize;
    assert!(agree < gen.len(), "{p}");
    assert_eq!(run["prefix_sum"], f.golden_steps() - (gen.len() - k));
    assert_eq!(p["hf_bf16_gpu_prefix"], Value::Null);
}

#[test]
fn bad_golden_files_are_named_with_their_field() {
    let f = Fixture::new();
    f.agree("absent.json", &["--precision", "f32"]).fails_with(&["absent.json", "cannot read"]);

    std::fs::write(f.path("syntax.json"), "{\"fp32_cpu\": [").unwrap();
    f.agree("syntax.json", &["--precision", "f32"]).fails_with(&["syntax.json", "JSON"]);

    f.write_golden("nolist.json", &json!({"fp16": []}));
    f.agree("nolist.json", &["--precision", "f32"]).fails_with(&["nolist.json", "fp32_cpu"]);

    f.write_golden(
        "badid.json",
        &json!({"fp32_cpu": [{"prompt": "a", "ids": [70], "gen": [1, "x"]}]}),
    );
    f.agree("badid.json", &["--precision", "f32"]).fails_with(&[
        "badid.json",
        "`fp32_cpu[0].gen[1]`",
        "token id",
    ]);

    f.write_golden("noids.json", &json!({"fp32_cpu": [{"prompt": "a", "gen": [1]}]}));
    f.agree("noids.json", &["--precision", "f32"])
        .fails_with(&["noids.json", "`fp32_cpu[0].ids` is missing"]);

    f.write_golden(
        "vocab.json",
        &json!({"fp32_cpu": [{"prompt": "a", "ids": [70], "gen": [5, 300]}]}),
    );
    f.agree("vocab.json", &["--precision", "f32"]).fails_with(&[
        "vocab.json",
        "`fp32_cpu[0].gen[1]`",
        "vocab_size 300",
    ]);

    f.write_golden(
        "hf.json",
        &json!({"fp32_cpu": [{"prompt": "a", "ids": [70], "gen": [5]}],
                "bf16_gpu": [{"ids": [70], "agrees_with_fp32_cpu_for": -1}]}),
    );
    f.agree("hf.json", &["--precision", "f32"])
        .fails_with(&["hf.json", "`bf16_gpu[0].agrees_with_fp32_cpu_for`"]);

    f.agree("golden.json", &["--precision", "f32", "--min-teacher-forced", "120"])
        .fails_with(&["--min-teacher-forced"]);
}

#[test]
fn generate_on_the_cpu_emulates_int8_and_bf16() {
    let f = Fixture::new();
    let model = f.path("model");
    let cache = f.path("cache");
    let (ids, _) = &f.cases[0];
    for (name, dtype) in [("int8", WeightDType::Int8), ("bf16", WeightDType::BF16)] {
        let r = amk(
            &cache,
            &[
                "generate",
                "--model",
                s(&model),
                "--backend",
                "cpu",
                "--precision",
                name,
                "--prompt",
                PROMPTS[0],
                "--max-new-tokens",
                "8",
                "--json",
            ],
        )
        .ok();
        let rec: Value = serde_json::from_str(r.stdout.trim()).expect("one JSON record");
        let mut cpu = CpuReference::from_model_with(&f.model, dtype, &mut |_, _| {}).unwrap();
        let options = GenerateOptions {
            max_new_tokens: 8,
            stop_tokens: f.model.config.eos_token_ids.clone(),
        };
        let want = generate(&mut cpu, ids, &options, &mut |_| {}).unwrap().generated;
        assert_eq!(rec["generated_ids"], json!(want), "{name}");

        // Without --json the note says what the CPU does.
        let r = amk(
            &cache,
            &[
                "generate",
                "--model",
                s(&model),
                "--backend",
                "cpu",
                "--precision",
                name,
                "--prompt",
                PROMPTS[0],
                "--max-new-tokens",
                "2",
            ],
        )
        .ok();
        assert!(r.stderr.contains(&format!("emulating {name}")), "{}", r.describe());
    }
}

#[test]
fn help_names_the_flags() {
    let cache = tempfile::tempdir().unwrap();
    let r = amk(cache.path(), &["agree", "--help"]).ok();
    for n in [
        "MODEL",
        "--golden",
        "fixtures/smollm2_golden.json",
        "--precision",
        "f32,bf16,int8",
        "--backend",
        "--json",
        "--min-teacher-forced",
        "teacher-forced",
    ] {
        assert!(r.stdout.contains(n), "`amk agree --help` lacks {n:?}:\n{}", r.stdout);
    }
}

/// Without `--golden` the copy built into the binary is read, wherever amk runs (the test's
/// working directory has no `fixtures/`): on a tiny model its SmolLM2 ids are refused by name.
#[test]
fn the_default_golden_file_is_built_in() {
    let f = Fixture::new();
    let model = f.path("model");
    let r = amk(&f.path("cache"), &["agree", s(&model), "--backend", "cpu"]);
    assert_eq!(r.code, Some(1), "{}", r.describe());
    assert!(
        r.stderr.contains("golden file the built-in fixtures/smollm2_golden.json")
            && r.stderr.contains("outside the model's vocabulary"),
        "{}",
        r.describe()
    );
}
