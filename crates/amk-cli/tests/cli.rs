//! The `amk` binary end to end: help texts, `generate` (JSON, streaming, prompt files, chat),
//! `inspect`, `import-gguf`, and clean failures on bad input, on tiny synthetic models written
//! into temporary directories. One test runs the real SmolLM2 model against the golden decode;
//! it fails (never skips) when the model has not been fetched.
//!
//! Every command runs with `AMK_CACHE_DIR` pointing into a temporary directory (except the real
//! model's test), so GGUF imports of bad files never touch the user's cache.

use amk_ir::synth::{write_checkpoint, SynthSpec};
use amk_ir::Model;
use amk_runtime::cpu::CpuReference;
use amk_runtime::{generate, GenerateOptions};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

mod common;
use common::{run_with_cache, s, Run};

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// Runs `amk` with a private, empty cache directory.
fn amk(args: &[&str]) -> Run {
    let cache = tempfile::tempdir().expect("tempdir");
    run_with_cache(Some(cache.path()), args)
}

/// A tiny synthetic model in a fresh temporary directory.
struct Synth {
    dir: tempfile::TempDir,
}

impl Synth {
    fn new(spec: &SynthSpec) -> Synth {
        let dir = tempfile::tempdir().expect("tempdir");
        write_checkpoint(spec, dir.path()).expect("synthetic checkpoint writes");
        Synth { dir }
    }

    fn tiny() -> Synth {
        Synth::new(&SynthSpec::tiny())
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Edits config.json as JSON.
    fn edit_config(&self, f: impl FnOnce(&mut Value)) {
        let path = self.file("config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }

    /// Rewrites model.safetensors after `f` edits its list of (name, dtype, shape, bytes).
    fn edit_tensors(&self, f: impl FnOnce(&mut Vec<RawTensor>)) {
        let path = self.file("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let mut tensors: Vec<RawTensor> = {
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut v: Vec<RawTensor> = st
                .tensors()
                .into_iter()
                .map(|(name, t)| RawTensor {
                    name,
                    dtype: t.dtype(),
                    shape: t.shape().to_vec(),
                    data: t.data().to_vec(),
                })
                .collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v
        };
        f(&mut tensors);
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|t| {
                let view = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                    .unwrap();
                (t.name.clone(), view)
            })
            .collect();
        safetensors::serialize_to_file(views, &None, &path).unwrap();
    }

    fn args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["generate", "--model", s(self.path()), "--backend", "cpu"];
        v.extend_from_slice(rest);
        v
    }
}

struct RawTensor {
    name: String,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// The byte-level synthetic tokenizer: id 3 + byte.
fn byte_ids(text: &str) -> Vec<u64> {
    text.bytes().map(|b| b as u64 + 3).collect()
}

/// Parses `--json` output: one object per line.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("{v} is not an array"))
        .iter()
        .map(|x| x.as_u64().unwrap_or_else(|| panic!("{x} is not a non-negative integer")))
        .collect()
}

/// Checks the documented fields of one `--json` record and their types.
fn check_record(rec: &Value, prompt: &str, max_new: usize, vocab: u64) -> Vec<u64> {
    let obj = rec.as_object().unwrap_or_else(|| panic!("{rec} is not an object"));
    assert_eq!(obj.get("prompt").and_then(Value::as_str), Some(prompt), "{rec}");
    let prompt_ids = ids(&obj["prompt_ids"]);
    assert!(!prompt_ids.is_empty(), "{rec}");
    let gen = ids(&obj["generated_ids"]);
    assert!(!gen.is_empty() && gen.len() <= max_new, "generated_ids length: {rec}");
    assert!(prompt_ids.iter().chain(&gen).all(|&t| t < vocab), "ids inside the vocab: {rec}");
    assert!(obj["text"].is_string(), "text is a string: {rec}");
    for f in ["ms_per_token", "tokens_per_s"] {
        let v = obj[f].as_f64().unwrap_or_else(|| panic!("{f} is not a number: {rec}"));
        assert!(v.is_finite() && v >= 0.0, "{f}: {rec}");
    }
    assert!(obj["ms_per_token"].as_f64().unwrap() > 0.0, "{rec}");
    let stop = obj["stop_reason"].as_str().expect("stop_reason is a string");
    assert!(["end_of_sequence", "max_new_tokens", "context_full"].contains(&stop), "{rec}");
    if stop == "max_new_tokens" {
        assert_eq!(gen.len(), max_new, "{rec}");
    }
    assert_eq!(obj["backend"].as_str(), Some("cpu"), "{rec}");
    gen
}

/// What the library itself generates for these ids (the CLI must agree).
fn library_generate(dir: &Path, prompt_ids: &[u64], max_new: usize) -> Vec<u64> {
    let model = Model::open(dir, &mut |_| {}).expect("model opens");
    let mut cpu = CpuReference::from_model(&model, &mut |_, _| {}).expect("weights load");
    let prompt: Vec<u32> = prompt_ids.iter().map(|&t| t as u32).collect();
    let options = GenerateOptions {
        max_new_tokens: max_new,
        stop_tokens: model.config.eos_token_ids.clone(),
    };
    let out = generate(&mut cpu, &prompt, &options, &mut |_| {}).expect("library generates");
    out.generated.into_iter().map(u64::from).collect()
}

// ---------------------------------------------------------------------------------------------
// Help.
// ---------------------------------------------------------------------------------------------

#[test]
fn help_texts_exit_zero_and_name_the_key_flags() {
    let cases: [(&[&str], &[&str]); 5] = [
        (&["--help"], &["generate", "inspect", "import-gguf", "GGUF", "AMK_CACHE_DIR"]),
        (&["help"], &["generate", "inspect", "import-gguf"]),
        (
            &["generate", "--help"],
            &[
                "--model",
                "--prompt",
                "--prompts-file",
                "--max-new-tokens",
                "--backend",
                "--json",
                "--chat",
                "cpu",
                "gpu",
                "auto",
                "generated_ids",
            ],
        ),
        (&["inspect", "--help"], &["--json", "MODEL", "parameter"]),
        (&["import-gguf", "--help"], &["--output", "--overwrite", "FILE", "Hugging Face"]),
    ];
    for (args, needles) in cases {
        let r = amk(args).ok();
        for n in needles {
            assert!(
                r.stdout.contains(n),
                "`amk {}` help lacks {n:?}:\n{}",
                args.join(" "),
                r.stdout
            );
        }
    }
    // --version too.
    let r = amk(&["--version"]).ok();
    assert!(r.stdout.starts_with("amk "), "{}", r.stdout);
}

#[test]
fn usage_errors_exit_non_zero_without_panicking() {
    let cases: [&[&str]; 5] = [
        &[],
        &["frobnicate"],
        &["generate", "--prompt", "hi"],
        &["generate", "--model", "x"],
        &["generate", "--model", "x", "--prompt", "a", "--prompts-file", "f.json"],
    ];
    for args in cases {
        let r = amk(args);
        assert!(matches!(r.code, Some(c) if c != 0), "`amk {}`:\n{}", args.join(" "), r.describe());
        assert!(!r.stderr.contains("panicked"), "{}", r.describe());
        assert!(r.stderr.contains("Usage"), "`amk {}`:\n{}", args.join(" "), r.describe());
    }
    // A bad --backend value lists the valid ones.
    let r = amk(&["generate", "--model", "x", "--prompt", "a", "--backend", "tpu"]);
    assert!(matches!(r.code, Some(c) if c != 0));
    assert!(r.stderr.contains("cpu") && r.stderr.contains("gpu"), "{}", r.describe());
}

// ---------------------------------------------------------------------------------------------
// generate.
// ---------------------------------------------------------------------------------------------

#[test]
fn generate_json_one_prompt_has_the_documented_fields_and_matches_the_library() {
    let m = Synth::tiny();
    let r = amk(&m.args(&["--prompt", "Hello, world", "--max-new-tokens", "6", "--json"])).ok();
    let recs = json_lines(&r.stdout);
    assert_eq!(recs.len(), 1, "one line per prompt:\n{}", r.stdout);
    let gen = check_record(&recs[0], "Hello, world", 6, 300);
    let prompt_ids = ids(&recs[0]["prompt_ids"]);
    assert_eq!(prompt_ids, byte_ids("Hello, world"), "byte-level ids, no BOS added");
    assert_eq!(gen, library_generate(m.path(), &prompt_ids, 6), "CLI and library agree");
    // --json keeps stdout machine-readable and stderr free of chatter.
    assert!(!r.stderr.contains("tokens/s"), "{}", r.describe());
}

#[test]
fn generate_stops_at_the_configs_eos_token_and_defaults_to_auto() {
    let m = Synth::tiny();
    // No --backend: auto runs the CPU reference; with --json nothing is said on stderr.
    let args = ["generate", "--model", s(m.path()), "--prompt", "abc", "--json"];
    let args = [&args[..], &["--max-new-tokens", "12"]].concat();
    let r = amk(&args).ok();
    assert_eq!(r.stderr, "", "{}", r.describe());
    let rec = &json_lines(&r.stdout)[0];
    let free = check_record(rec, "abc", 12, 300);
    // Make a token of the free run (first seen at index i >= 1) the model's eos.
    let i = (1..free.len()).find(|&i| !free[..i].contains(&free[i])).expect("two distinct tokens");
    m.edit_config(|v| v["eos_token_id"] = json!([free[i], 299]));
    let r = amk(&args).ok();
    let rec = &json_lines(&r.stdout)[0];
    let gen = check_record(rec, "abc", 12, 300);
    assert_eq!(rec["stop_reason"], "end_of_sequence", "{rec}");
    assert_eq!(gen, free[..=i].to_vec(), "stops at eos and includes it: {rec}");
    assert_eq!(gen, library_generate(m.path(), &ids(&rec["prompt_ids"]), 12));
}

#[test]
fn generate_prompts_file_with_a_list_of_strings() {
    let m = Synth::tiny();
    let f = m.file("prompts.json");
    let prompts = ["first prompt", "second", "<|im_start|>user\nhi<|im_end|>\n"];
    std::fs::write(&f, serde_json::to_string(&prompts).unwrap()).unwrap();
    let r = amk(&m.args(&["--prompts-file", s(&f), "--max-new-tokens", "3", "--json"])).ok();
    let recs = json_lines(&r.stdout);
    assert_eq!(recs.len(), 3, "one line per prompt:\n{}", r.stdout);
    for (rec, p) in recs.iter().zip(prompts) {
        check_record(rec, p, 3, 300);
    }
    assert_eq!(ids(&recs[1]["prompt_ids"]), byte_ids("second"));
    // Special tokens written in the prompt are recognised: <|im_start|> = 1, <|im_end|> = 2.
    let special = ids(&recs[2]["prompt_ids"]);
    let mut want = vec![1];
    want.extend(byte_ids("user\nhi"));
    want.push(2);
    want.extend(byte_ids("\n"));
    assert_eq!(special, want);
}

#[test]
fn generate_prompts_file_in_the_golden_format() {
    let m = Synth::tiny();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/smollm2_golden.json");
    let want: Value = serde_json::from_str(&std::fs::read_to_string(&golden).unwrap()).unwrap();
    let want: Vec<&str> = want["fp32_cpu"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["prompt"].as_str().unwrap())
        .collect();
    let r = amk(&m.args(&["--prompts-file", s(&golden), "--max-new-tokens", "2", "--json"])).ok();
    let recs = json_lines(&r.stdout);
    assert_eq!(recs.len(), want.len(), "{}", r.stdout);
    for (rec, p) in recs.iter().zip(&want) {
        check_record(rec, p, 2, 300);
    }

    // A plain list of {prompt: ...} objects (extra fields ignored).
    let f = m.file("objects.json");
    let list = json!([{"prompt": "alpha", "ids": [1, 2]}, {"prompt": "beta"}]);
    std::fs::write(&f, list.to_string()).unwrap();
    let r = amk(&m.args(&["--prompts-file", s(&f), "--max-new-tokens", "2", "--json"])).ok();
    let recs = json_lines(&r.stdout);
    assert_eq!(recs.len(), 2);
    check_record(&recs[0], "alpha", 2, 300);
    check_record(&recs[1], "beta", 2, 300);
}

#[test]
fn generate_prompts_file_object_uses_its_first_list_in_file_order() {
    let m = Synth::tiny();
    let f = m.file("object.json");
    std::fs::write(&f, r#"{"zeta": ["from zeta"], "alpha": ["from alpha"]}"#).unwrap();
    let r = amk(&m.args(&["--prompts-file", s(&f), "--max-new-tokens", "1", "--json"])).ok();
    let recs = json_lines(&r.stdout);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["prompt"], "from zeta", "the first list in the file is used");
}

#[test]
fn generate_streams_text_to_stdout_and_speed_to_stderr() {
    let m = Synth::tiny();
    let r = amk(&m.args(&["--prompt", "stream me", "--max-new-tokens", "5"])).ok();
    let j = amk(&m.args(&["--prompt", "stream me", "--max-new-tokens", "5", "--json"])).ok();
    let rec = &json_lines(&j.stdout)[0];
    // The streamed text is the JSON text, then a newline.
    assert_eq!(r.stdout, format!("{}\n", rec["text"].as_str().unwrap()), "{}", r.describe());
    assert!(r.stderr.contains("tokens/s"), "{}", r.describe());
    assert!(r.stderr.contains("[cpu]"), "{}", r.describe());
    assert!(r.stderr.contains("9 prompt tokens"), "{}", r.describe());
    assert!(!r.stderr.contains("error"), "{}", r.describe());

    // With several prompts, each gets a header line on stdout.
    let f = m.file("p.json");
    std::fs::write(&f, r#"["one", "two"]"#).unwrap();
    let r = amk(&m.args(&["--prompts-file", s(&f), "--max-new-tokens", "2"])).ok();
    assert!(r.stdout.contains("--- prompt 1: \"one\""), "{}", r.describe());
    assert!(r.stdout.contains("--- prompt 2: \"two\""), "{}", r.describe());
    assert_eq!(r.stderr.matches("tokens/s").count(), 2, "{}", r.describe());
}

#[test]
fn generate_streaming_text_round_trips_on_a_tokenizer_sized_vocab() {
    // vocab 259 = exactly the tokenizer's ids, so every generated id decodes to text: the
    // streamed text must then equal the bytes of the generated ids.
    let mut spec = SynthSpec::tiny();
    spec.vocab_size = 259;
    let m = Synth::new(&spec);
    let j = amk(&m.args(&["--prompt", "xyz", "--max-new-tokens", "8", "--json"])).ok();
    let rec = &json_lines(&j.stdout)[0];
    let gen = check_record(rec, "xyz", 8, 259);
    let r = amk(&m.args(&["--prompt", "xyz", "--max-new-tokens", "8"])).ok();
    assert_eq!(r.stdout, format!("{}\n", rec["text"].as_str().unwrap()));
    let bytes: Vec<u8> = gen.iter().filter(|&&t| t >= 3).map(|&t| (t - 3) as u8).collect();
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    if gen.iter().all(|&t| t >= 3) {
        assert_eq!(rec["text"].as_str().unwrap(), String::from_utf8_lossy(&bytes), "{rec}");
    } else {
        assert!(specials.iter().any(|sp| rec["text"].as_str().unwrap().contains(sp)), "{rec}");
    }
}

const CHAT_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\
                             <|im_end|>\n{% endfor %}{% if add_generation_prompt %}\
                             <|im_start|>assistant\n{% endif %}";

#[test]
fn generate_chat_wraps_the_prompt_in_the_template() {
    let m = Synth::tiny();
    let cfg = json!({"chat_template": CHAT_TEMPLATE, "bos_token": "<|im_start|>",
                     "eos_token": "<|im_end|>"});
    std::fs::write(m.file("tokenizer_config.json"), cfg.to_string()).unwrap();
    let r =
        amk(&m.args(&["--prompt", "hi there", "--chat", "--max-new-tokens", "3", "--json"])).ok();
    let recs = json_lines(&r.stdout);
    assert_eq!(recs.len(), 1);
    check_record(&recs[0], "hi there", 3, 300);
    let mut want = vec![1];
    want.extend(byte_ids("user\nhi there"));
    want.push(2);
    want.extend(byte_ids("\n"));
    want.push(1);
    want.extend(byte_ids("assistant\n"));
    assert_eq!(ids(&recs[0]["prompt_ids"]), want, "{}", recs[0]);

    // Streaming mode works with --chat too.
    let r = amk(&m.args(&["--prompt", "hi there", "--chat", "--max-new-tokens", "3"])).ok();
    assert!(r.stderr.contains("tokens/s"), "{}", r.describe());
}

#[test]
fn generate_chat_without_a_template_fails_clearly() {
    let m = Synth::tiny();
    amk(&m.args(&["--prompt", "hi", "--chat"])).fails_with(&[
        "--chat",
        "no chat template",
        "tokenizer_config.json",
        s(m.path()),
    ]);
    // A tokenizer_config.json without the field is the same.
    std::fs::write(m.file("tokenizer_config.json"), r#"{"bos_token": "<|im_start|>"}"#).unwrap();
    amk(&m.args(&["--prompt", "hi", "--chat"])).fails_with(&["--chat", "no chat template"]);
}

#[test]
fn generate_chat_with_a_broken_template_names_the_file() {
    let m = Synth::tiny();
    let cfg = json!({"chat_template": "{% for m in messages %}{{ m.content }"});
    std::fs::write(m.file("tokenizer_config.json"), cfg.to_string()).unwrap();
    amk(&m.args(&["--prompt", "hi", "--chat"])).fails_with(&["tokenizer_config.json", "template"]);
}

// ---------------------------------------------------------------------------------------------
// Bad models.
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_model_path() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("no-such-model");
    amk(&["generate", "--model", s(&p), "--prompt", "hi"])
        .fails_with(&[s(&p), "no such file or directory"]);
    amk(&["inspect", s(&p)]).fails_with(&[s(&p), "no such file or directory"]);
}

#[test]
fn directory_without_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("README.md"), "not a model").unwrap();
    let cfg = tmp.path().join("config.json");
    amk(&["generate", "--model", s(tmp.path()), "--prompt", "hi"]).fails_with(&[s(&cfg)]);
    amk(&["inspect", s(tmp.path())]).fails_with(&[s(&cfg)]);
}

#[test]
fn file_that_is_neither_a_directory_nor_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("model.bin");
    std::fs::write(&f, b"\x00\x01 definitely not a model").unwrap();
    amk(&["generate", "--model", s(&f), "--prompt", "hi"]).fails_with(&[s(&f), "GGUF"]);
}

#[test]
fn malformed_config_json_names_line_and_column() {
    let m = Synth::tiny();
    std::fs::write(m.file("config.json"), "{\n  \"hidden_size\": 64,\n  \"vocab_size\": ,\n}\n")
        .unwrap();
    let cfg = m.file("config.json");
    amk(&m.args(&["--prompt", "hi"])).fails_with(&[s(&cfg), "not valid JSON", "line 3", "column"]);
}

#[test]
fn unsupported_architecture_names_the_field() {
    let m = Synth::tiny();
    m.edit_config(|v| {
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        v["model_type"] = json!("gpt2");
    });
    let cfg = m.file("config.json");
    amk(&m.args(&["--prompt", "hi"])).fails_with(&[
        s(&cfg),
        "architectures",
        "GPT2LMHeadModel",
        "LlamaForCausalLM",
    ]);
    amk(&["inspect", s(m.path())]).fails_with(&["architectures", "GPT2LMHeadModel"]);
}

#[test]
fn llama3_rope_scaling_runs_and_its_parameters_are_named() {
    let m = Synth::tiny();
    m.edit_config(|v| {
        v["rope_parameters"] = json!({"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
    });
    amk(&m.args(&["--prompt", "hi", "--max-new-tokens", "2"])).ok();

    // The older spelling, rope_scaling, names its own fields.
    m.edit_config(|v| {
        v.as_object_mut().unwrap().remove("rope_parameters");
        v["rope_theta"] = json!(500000.0);
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0});
    });
    let cfg = m.file("config.json");
    amk(&m.args(&["--prompt", "hi"])).fails_with(&[
        s(&cfg),
        "rope_scaling.low_freq_factor",
        "missing",
    ]);
    m.edit_config(|v| v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0}));
    amk(&m.args(&["--prompt", "hi"])).fails_with(&["rope_scaling.rope_type", "yarn", "llama3"]);
}

#[test]
fn missing_required_config_field_is_named() {
    let m = Synth::tiny();
    m.edit_config(|v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    });
    amk(&m.args(&["--prompt", "hi"])).fails_with(&["config.json", "hidden_size", "missing"]);
}

#[test]
fn missing_tensor_is_named() {
    let m = Synth::tiny();
    let gone = "model.layers.1.mlp.up_proj.weight";
    m.edit_tensors(|ts| ts.retain(|t| t.name != gone));
    amk(&m.args(&["--prompt", "hi"])).fails_with(&[gone, "missing", "[160, 64]", s(m.path())]);
    amk(&["inspect", s(m.path())]).fails_with(&[gone, "missing"]);
}

#[test]
fn tensor_of_the_wrong_shape_is_named() {
    let m = Synth::tiny();
    let name = "model.layers.0.self_attn.q_proj.weight";
    m.edit_tensors(|ts| {
        let t = ts.iter_mut().find(|t| t.name == name).unwrap();
        t.shape = vec![32, 128]; // same size, wrong shape
    });
    let st = m.file("model.safetensors");
    amk(&m.args(&["--prompt", "hi"])).fails_with(&[name, "[64, 64]", "[32, 128]", s(&st)]);
}

#[test]
fn tensor_of_the_wrong_dtype_is_named() {
    let m = Synth::tiny();
    let name = "model.layers.0.input_layernorm.weight";
    m.edit_tensors(|ts| {
        let t = ts.iter_mut().find(|t| t.name == name).unwrap();
        t.dtype = safetensors::Dtype::I64;
        t.data = vec![0u8; t.shape.iter().product::<usize>() * 8];
    });
    let st = m.file("model.safetensors");
    amk(&m.args(&["--prompt", "hi"])).fails_with(&[name, "I64", "F32", s(&st)]);
}

#[test]
fn truncated_safetensors_is_reported() {
    let m = Synth::tiny();
    let st = m.file("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    for keep in [bytes.len() / 2, 100, 4, 0] {
        std::fs::write(&st, &bytes[..keep]).unwrap();
        amk(&m.args(&["--prompt", "hi"])).fails_with(&[s(&st)]);
    }
    // Truncated inside the data: the message says so.
    std::fs::write(&st, &bytes[..bytes.len() - 10]).unwrap();
    amk(&m.args(&["--prompt", "hi"])).fails_with(&[s(&st), "truncated"]);
    // Garbage of the right length.
    std::fs::write(&st, vec![0xABu8; bytes.len()]).unwrap();
    amk(&m.args(&["--prompt", "hi"])).fails_with(&[s(&st)]);
}

#[test]
fn garbage_and_truncated_gguf_files_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let mut header = b"GGUF".to_vec();
    header.extend_from_slice(&3u32.to_le_bytes()); // version
    header.extend_from_slice(&1000u64.to_le_bytes()); // tensor count
    header.extend_from_slice(&50u64.to_le_bytes()); // metadata kv count
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("magic-only.gguf", b"GGUF".to_vec()),
        ("truncated.gguf", header.clone()),
        ("garbage.gguf", {
            let mut v = header.clone();
            v.extend((0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
            v
        }),
        ("huge-counts.gguf", {
            let mut v = b"GGUF".to_vec();
            v.extend_from_slice(&3u32.to_le_bytes());
            v.extend_from_slice(&u64::MAX.to_le_bytes());
            v.extend_from_slice(&u64::MAX.to_le_bytes());
            v
        }),
    ];
    for (name, bytes) in cases {
        let f = tmp.path().join(name);
        std::fs::write(&f, bytes).unwrap();
        amk(&["generate", "--model", s(&f), "--prompt", "hi"]).fails_with(&[s(&f)]);
        let out = tmp.path().join(format!("{name}-out"));
        amk(&["import-gguf", s(&f), "-o", s(&out)]).fails_with(&[s(&f)]);
        assert!(!out.exists(), "a failed import leaves no output directory");
    }
}

#[test]
fn missing_or_broken_tokenizer_json_is_named() {
    let m = Synth::tiny();
    let tok = m.file("tokenizer.json");
    std::fs::remove_file(&tok).unwrap();
    amk(&m.args(&["--prompt", "hi"])).fails_with(&[s(&tok)]);
    // inspect still works without a tokenizer, and says so.
    let r = amk(&["inspect", s(m.path())]).ok();
    assert!(r.stdout.contains("tokenizer    none"), "{}", r.describe());
    std::fs::write(&tok, "{\"model\": 42}").unwrap();
    amk(&m.args(&["--prompt", "hi"])).fails_with(&[s(&tok)]);
}

#[test]
fn config_token_ids_outside_the_vocabulary_are_named() {
    let m = Synth::tiny();
    m.edit_config(|v| v["eos_token_id"] = json!([2, 300]));
    amk(&m.args(&["--prompt", "hi"])).fails_with(&["config.json", "eos_token_id", "300"]);
}

#[test]
fn sharded_checkpoint_with_a_missing_shard_is_named() {
    let m = Synth::tiny();
    std::fs::remove_file(m.file("model.safetensors")).unwrap();
    let index = json!({"metadata": {}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors"}});
    std::fs::write(m.file("model.safetensors.index.json"), index.to_string()).unwrap();
    amk(&m.args(&["--prompt", "hi"])).fails_with(&[
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model.embed_tokens.weight",
    ]);
    // No checkpoint at all.
    std::fs::remove_file(m.file("model.safetensors.index.json")).unwrap();
    amk(&m.args(&["--prompt", "hi"])).fails_with(&["model.safetensors", s(m.path())]);
}

#[test]
fn chat_template_that_raises_is_reported() {
    let m = Synth::tiny();
    let cfg = json!({"chat_template": "{{ raise_exception('only system messages, please') }}"});
    std::fs::write(m.file("tokenizer_config.json"), cfg.to_string()).unwrap();
    amk(&m.args(&["--prompt", "hi", "--chat"]))
        .fails_with(&["tokenizer_config.json", "only system messages, please"]);
}

// ---------------------------------------------------------------------------------------------
// Bad prompts and options.
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_prompt_is_an_error() {
    let m = Synth::tiny();
    amk(&m.args(&["--prompt", ""])).fails_with(&["empty"]);
    let f = m.file("p.json");
    std::fs::write(&f, r#"["fine", ""]"#).unwrap();
    amk(&m.args(&["--prompts-file", s(&f), "--json"])).fails_with(&["empty"]);
}

#[test]
fn prompt_longer_than_the_context_is_an_error() {
    let mut spec = SynthSpec::tiny();
    spec.max_position_embeddings = 16;
    let m = Synth::new(&spec);
    let cfg = m.file("config.json");
    let long = "this prompt is longer than sixteen bytes";
    amk(&m.args(&["--prompt", long])).fails_with(&[
        "max_position_embeddings",
        s(&cfg),
        "40 tokens",
        "16",
    ]);
    // Exactly 16 tokens fits and stops at the end of the context with one new token.
    let r = amk(&m.args(&["--prompt", "sixteen bytes!!!", "--json"])).ok();
    let rec = &json_lines(&r.stdout)[0];
    assert_eq!(ids(&rec["prompt_ids"]).len(), 16);
    if rec["stop_reason"] != "end_of_sequence" {
        assert_eq!(rec["stop_reason"], "context_full", "{rec}");
    }
    assert_eq!(ids(&rec["generated_ids"]).len(), 1, "{rec}");
    // 10 prompt tokens leave room for 7 new ones.
    let r = amk(&m.args(&["--prompt", "ten bytes!", "--json", "--max-new-tokens", "100"])).ok();
    let rec = &json_lines(&r.stdout)[0];
    if rec["stop_reason"] == "context_full" {
        assert_eq!(ids(&rec["generated_ids"]).len(), 7, "{rec}");
    }
}

#[test]
fn invalid_prompts_files_are_reported_with_their_path() {
    let m = Synth::tiny();
    let f = m.file("prompts.json");
    let cases: [(&str, &[&str]); 6] = [
        ("[\"a\",\n  nope]", &["not valid JSON", "line 2"]),
        ("[]", &["empty"]),
        ("[{\"text\": \"a\"}]", &["entry 0", "\"prompt\""]),
        ("[\"a\", 7]", &["entry 1"]),
        ("42", &["list of prompts"]),
        ("{\"model\": \"x\"}", &["no list of prompts"]),
    ];
    for (text, needles) in cases {
        std::fs::write(&f, text).unwrap();
        let mut all = vec![s(&f)];
        all.extend_from_slice(needles);
        amk(&m.args(&["--prompts-file", s(&f)])).fails_with(&all);
    }
    let gone = m.file("absent.json");
    amk(&m.args(&["--prompts-file", s(&gone)])).fails_with(&[s(&gone), "cannot read"]);
}

#[test]
fn backend_gpu_without_a_gpu_is_a_clear_error() {
    let m = Synth::tiny();
    amk(&["generate", "--model", s(m.path()), "--prompt", "hi", "--backend", "gpu"]).fails_with(&[
        "--backend gpu",
        "no GPU",
        "--backend cpu",
    ]);
    // auto falls back to the CPU reference and says so (outside --json).
    let r =
        amk(&["generate", "--model", s(m.path()), "--prompt", "hi", "--max-new-tokens", "2"]).ok();
    assert!(r.stderr.contains("CPU reference"), "{}", r.describe());
    assert!(r.stderr.contains("[cpu]"), "{}", r.describe());
}

#[test]
fn max_new_tokens_zero_prints_an_empty_generation() {
    let m = Synth::tiny();
    let r = amk(&m.args(&["--prompt", "hi", "--max-new-tokens", "0", "--json"])).ok();
    let rec = &json_lines(&r.stdout)[0];
    assert_eq!(rec["generated_ids"], json!([]));
    assert_eq!(rec["text"], "");
    assert_eq!(rec["stop_reason"], "max_new_tokens");
    let ms = rec["ms_per_token"].as_f64().expect("ms_per_token is a number");
    assert!(ms.is_finite() && ms >= 0.0, "{rec}");
}

// ---------------------------------------------------------------------------------------------
// inspect.
// ---------------------------------------------------------------------------------------------

#[test]
fn inspect_prints_architecture_parameters_bytes_and_graph() {
    let mut spec = SynthSpec::tiny();
    spec.tie_word_embeddings = false;
    spec.attention_bias = true;
    let m = Synth::new(&spec);
    let bytes = std::fs::read(m.file("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let params: usize = st.tensors().iter().map(|(_, t)| t.shape().iter().product::<usize>()).sum();

    let r = amk(&["inspect", s(m.path())]).ok();
    let out = &r.stdout;
    for needle in [
        "architecture LlamaForCausalLM".to_string(),
        "2 layers, hidden 64, mlp 160, 4 heads (2 kv) of dim 16, vocab 300".to_string(),
        format!("parameters   {params} in the checkpoint"),
        format!("F32: {}", params * 4),
        "graph".to_string(),
        "bias q/k/v true o true, qk-norm false, sliding window none, tied head false".to_string(),
        "tokenizer    259 tokens".to_string(),
        "no template".to_string(),
    ] {
        assert!(out.contains(&needle), "inspect lacks {needle:?}:\n{out}");
    }

    let r = amk(&["inspect", s(m.path()), "--json"]).ok();
    let v: Value = serde_json::from_str(&r.stdout).expect("inspect --json is one JSON value");
    assert_eq!(v["config"]["architecture"], "Llama");
    assert_eq!(v["config"]["hidden_size"], 64);
    assert_eq!(v["config"]["qkv_bias"], true);
    assert_eq!(v["config"]["o_bias"], true);
    assert_eq!(v["parameters"].as_u64(), Some(params as u64));
    assert_eq!(v["graph_parameters"].as_u64(), Some(params as u64), "untied: all read per token");
    assert_eq!(v["bytes_by_dtype"]["F32"].as_u64(), Some(params as u64 * 4));
    assert!(v["graph"]["nodes"].as_u64().unwrap() > 0);
    assert!(v["graph"]["edges"].as_u64().unwrap() > 0);
    // Weights: embed, 2 x (2 norms + 4 attn + 4 biases + 3 mlp), final norm, lm_head.
    assert_eq!(v["graph"]["weights"].as_u64(), Some(1 + 2 * 13 + 2));
    assert!(v["graph"]["summary"].is_string() || v["graph"]["summary"].is_object());
    assert_eq!(v["tokenizer_vocab"], 259);
    assert_eq!(v["chat_template"], false);
}

// ---------------------------------------------------------------------------------------------
// import-gguf.
// ---------------------------------------------------------------------------------------------

#[test]
fn import_gguf_refuses_to_overwrite_a_foreign_directory() {
    // Needs a valid GGUF to get as far as the output check; garbage fails earlier, naming the
    // input file (see garbage_and_truncated_gguf_files_are_reported).
    let gguf = amk_ir::cache::SMOLLM2.gguf_path();
    assert!(gguf.is_file(), "{}", amk_ir::cache::missing_model_hint(&amk_ir::cache::SMOLLM2));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mine");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("precious.txt"), "keep me").unwrap();
    amk(&["import-gguf", s(&gguf), "-o", s(&out)]).fails_with(&[s(&out), "overwrite"]);
    assert_eq!(std::fs::read_to_string(out.join("precious.txt")).unwrap(), "keep me");
}

// ---------------------------------------------------------------------------------------------
// The real model.
// ---------------------------------------------------------------------------------------------

#[test]
fn real_smollm2_matches_the_golden_decode_and_imports() {
    let sm = amk_ir::cache::SMOLLM2;
    let hf = sm.hf_dir();
    assert!(
        hf.join("config.json").is_file() && sm.gguf_path().is_file(),
        "{}",
        amk_ir::cache::missing_model_hint(&sm)
    );
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/smollm2_golden.json");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(golden).unwrap()).unwrap();
    let case = &golden["fp32_cpu"][0];
    let prompt = "The largest planet in the solar system is";
    assert_eq!(case["prompt"], prompt);
    let want: Vec<u64> = ids(&case["gen"]).into_iter().take(8).collect();

    // The real cache (no AMK_CACHE_DIR override): the model lives there.
    let r = run_with_cache(
        None,
        &[
            "generate",
            "--model",
            s(&hf),
            "--prompt",
            prompt,
            "--max-new-tokens",
            "8",
            "--json",
            "--backend",
            "cpu",
        ],
    )
    .ok();
    let recs = json_lines(&r.stdout);
    assert_eq!(recs.len(), 1);
    let gen = check_record(&recs[0], prompt, 8, 49152);
    assert_eq!(ids(&recs[0]["prompt_ids"]), ids(&case["ids"]), "golden prompt ids");
    assert_eq!(gen, want, "golden fp32_cpu decode");
    assert!(recs[0]["text"].as_str().unwrap().starts_with(" Jupiter"), "{}", recs[0]);

    // import-gguf of the real file into a fresh directory.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2-hf");
    let gguf = sm.gguf_path();
    let r = amk(&["import-gguf", s(&gguf), "-o", s(&out)]).ok();
    assert!(r.stdout.contains("imported"), "{}", r.describe());
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(out.join(f).is_file(), "{f} written by import-gguf");
    }
    // The import is a loadable model with the golden shape.
    let r = amk(&["inspect", s(&out), "--json"]).ok();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["config"]["vocab_size"], 49152);
    assert_eq!(v["config"]["num_layers"], 30);
    // Importing again over an earlier import is allowed without --overwrite.
    amk(&["import-gguf", s(&gguf), "-o", s(&out)]).ok();

    // A damaged import in the cache is imported again, not reported on every run.
    let cache = tmp.path().join("cache");
    let copy = tmp.path().join("copy.gguf");
    std::fs::copy(&gguf, &copy).unwrap();
    run_with_cache(Some(&cache), &["inspect", s(&copy)]).ok();
    let imported = std::fs::read_dir(cache.join("gguf")).unwrap().next().unwrap().unwrap().path();
    let weights = imported.join("model.safetensors");
    let full = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&weights).unwrap().set_len(1_000_000).unwrap();
    let r = run_with_cache(Some(&cache), &["inspect", s(&copy)]).ok();
    assert!(r.stderr.contains("does not open") && r.stderr.contains("again"), "{}", r.describe());
    assert_eq!(std::fs::metadata(&weights).unwrap().len(), full);
    std::fs::remove_file(&copy).unwrap();

    // Truncated copies of the real file fail cleanly, naming the file, wherever the cut is.
    let bytes = std::fs::read(&gguf).unwrap();
    for keep in [24, 1_000, 100_000, 1_000_000, 5_000_000, bytes.len() - 100] {
        let f = tmp.path().join(format!("cut-{keep}.gguf"));
        std::fs::write(&f, &bytes[..keep]).unwrap();
        amk(&["generate", "--model", s(&f), "--prompt", "hi"]).fails_with(&[s(&f)]);
        std::fs::remove_file(&f).unwrap();
    }
}
