//! Import of tiny synthetic llama GGUFs (see `gguf_support`): config values, tensor names,
//! shapes and values (every supported type, q/k un-permutation), tied and untied heads,
//! biases, the tokenizer, progress reporting and output-directory handling.

mod gguf_support;

use amk_ir::gguf::{
    import_gguf, import_gguf_with, GgmlType, GgufError, GgufFile, ImportOptions, IMPORT_MARKER,
};
use gguf_support::*;
use serde_json::{json, Value};
use std::path::Path;

fn write_gguf(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, bytes).expect("write gguf");
    path
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
}

fn check_tensors(out: &Path, built: &Built) {
    let data = std::fs::read(out.join("model.safetensors")).expect("safetensors");
    let st = safetensors::SafeTensors::deserialize(&data).expect("valid safetensors");
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    let want: Vec<String> = built.expected.keys().cloned().collect();
    assert_eq!(names, want);
    for (name, (shape, values)) in &built.expected {
        let t = st.tensor(name).expect("tensor");
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        assert_eq!(t.shape(), shape.as_slice(), "{name}");
        let got: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let got_bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        let want_bits: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got_bits, want_bits, "{name} values");
    }
}

#[test]
fn tiny_tied_model_imports() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let built = TinyModel::default().build();
    let gguf = write_gguf(tmp.path(), &built.writer.to_bytes());
    let out = tmp.path().join("out");
    let mut events = Vec::new();
    let summary = import_gguf(&gguf, &out, &mut |p| events.push(p)).expect("import");
    assert!(summary.tie_word_embeddings);
    assert_eq!(summary.tensors, built.expected.len());
    assert_eq!(summary.eos_token_ids, vec![0, 1, 2]);
    assert_eq!(events.first().map(|e| e.tensors_done), Some(0));
    let last = events.last().expect("progress");
    assert_eq!(last.tensors_done, built.expected.len());
    assert_eq!(last.bytes_done, last.bytes_total);
    assert!(events.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));

    let cfg = read_json(&out.join("config.json"));
    let want = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": f64::from(1e-5f32),
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "max_position_embeddings": 256, "vocab_size": built.vocab, "tie_word_embeddings": true,
        "attention_bias": false, "mlp_bias": false, "bos_token_id": 1,
        // metadata eos 1 (as SmolLM2's buggy metadata might say), plus CONTROL end markers.
        "eos_token_id": [0, 1, 2], "torch_dtype": "float32", "hidden_act": "silu",
        "pad_token_id": 2, "unk_token_id": 0,
    });
    for (k, v) in want.as_object().expect("object") {
        assert_eq!(&cfg[k], v, "config.json '{k}'");
    }
    check_tensors(&out, &built);
    assert!(out.join(IMPORT_MARKER).is_file());
    let template = std::fs::read_to_string(out.join("chat_template.jinja")).expect("template");
    assert!(template.contains("messages"));
    let tcfg = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tcfg["chat_template"].as_str(), Some(template.as_str()));
    assert_eq!(tcfg["bos_token"], "<|im_start|>");
    assert_eq!(tcfg["unk_token"], "<|endoftext|>");
    assert_eq!(tcfg["pad_token"], "<|im_end|>");

    // No temporary siblings left behind.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn tiny_untied_model_with_biases_imports() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let built = TinyModel { tied: false, biases: true, seed: 7 }.build();
    let gguf = write_gguf(tmp.path(), &built.writer.to_bytes());
    let out = tmp.path().join("out");
    let summary = import_gguf(&gguf, &out, &mut |_| {}).expect("import");
    assert!(!summary.tie_word_embeddings);
    let cfg = read_json(&out.join("config.json"));
    assert_eq!(cfg["tie_word_embeddings"], false);
    assert_eq!(cfg["attention_bias"], true);
    assert!(built.expected.contains_key("lm_head.weight"));
    assert!(built.expected.contains_key("model.layers.1.self_attn.k_proj.bias"));
    check_tensors(&out, &built);
}

#[test]
fn gguf_v2_and_custom_alignment_read() {
    let mut built = TinyModel::default().build();
    built.writer.version = 2;
    built.writer.alignment = 64;
    built.writer.set("general.alignment", Val::U32(64));
    let file = GgufFile::from_bytes(built.writer.to_bytes(), "v2.gguf").expect("parse");
    assert_eq!(file.version(), 2);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    let embd = file.tensor("token_embd.weight").expect("embd");
    assert_eq!(embd.ggml_type, GgmlType::Q8_0);
    assert_eq!(embd.shape(), vec![built.vocab as u64, 64]);
    let values = file.dequantize("token_embd.weight").expect("dequantize");
    assert_eq!(values, built.expected["model.embed_tokens.weight"].1);
    assert_eq!(file.get_u32("llama.block_count").expect("u32"), 2);
    assert_eq!(file.get_str_array("tokenizer.ggml.merges").expect("merges").len(), 6);
    let err = file.get_u32("general.name").expect_err("wrong type");
    let msg = err.to_string();
    assert!(
        msg.contains("general.name") && msg.contains("v2.gguf") && msg.contains("unsigned"),
        "{msg}"
    );
    let err = file.get_str("no.such.key").expect_err("missing");
    assert!(matches!(err, GgufError::MissingKey { .. }), "{err}");
}

#[test]
fn tokenizer_loads_and_round_trips() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let built = TinyModel::default().build();
    let gguf = write_gguf(tmp.path(), &built.writer.to_bytes());
    let out = tmp.path().join("out");
    import_gguf(&gguf, &out, &mut |_| {}).expect("import");
    let tok =
        tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).expect("load tokenizer.json");
    let text = "<|im_start|>user\nhello the world, ünïcode ✓<|im_end|>";
    let enc = tok.encode(text, false).expect("encode");
    let ids = enc.get_ids();
    // No BOS is added (like transformers); specials are single tokens; merges apply.
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    let tokens = TinyModel::tokens();
    let id_of = |t: &str| tokens.iter().position(|x| x == t).expect("token") as u32;
    assert!(ids.contains(&id_of("Ġthe")), "{:?}", enc.get_tokens());
    assert!(ids.contains(&id_of("llo")), "{:?}", enc.get_tokens());
    assert_eq!(tok.decode(ids, false).expect("decode"), text);
    assert_eq!(tok.decode(ids, true).expect("decode"), "user\nhello the world, ünïcode ✓");
    let added: Vec<Value> = read_json(&out.join("tokenizer.json"))["added_tokens"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(added.len(), 3);
}

#[test]
fn output_directory_rules() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let built = TinyModel::default().build();
    let gguf = write_gguf(tmp.path(), &built.writer.to_bytes());

    // A foreign non-empty directory is refused, and left alone.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).expect("mkdir");
    std::fs::write(foreign.join("notes.txt"), "mine").expect("write");
    let err = import_gguf(&gguf, &foreign, &mut |_| {}).expect_err("must refuse");
    assert!(matches!(err, GgufError::OutputNotEmpty { .. }), "{err}");
    assert!(err.to_string().contains("foreign"), "{err}");
    assert!(foreign.join("notes.txt").exists());

    // ... unless told to overwrite.
    import_gguf_with(&gguf, &foreign, &ImportOptions { overwrite: true }, &mut |_| {})
        .expect("overwrite");
    assert!(!foreign.join("notes.txt").exists());
    assert!(foreign.join("config.json").exists());

    // Not even with --overwrite when the directory holds the GGUF file itself: replacing the
    // directory would delete the input.
    let holder = tmp.path().join("holder");
    std::fs::create_dir(&holder).expect("mkdir");
    let inside = holder.join("model.gguf");
    std::fs::copy(&gguf, &inside).expect("copy");
    let err = import_gguf_with(&inside, &holder, &ImportOptions { overwrite: true }, &mut |_| {})
        .expect_err("must refuse");
    assert!(matches!(err, GgufError::OutputHoldsInput { .. }), "{err}");
    assert!(inside.exists(), "the input survives");
    assert!(err.to_string().contains("holds the GGUF file"), "{err}");

    // A previous import is replaced without asking; an empty directory is fine.
    import_gguf(&gguf, &foreign, &mut |_| {}).expect("re-import");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    import_gguf(&gguf, &empty, &mut |_| {}).expect("into empty dir");

    // A failing import leaves neither the output nor a temporary directory.
    let mut bad = TinyModel::default().build().writer;
    bad.set("general.architecture", Val::Str("llama".into()));
    bad.tensors.retain(|t| t.name != "blk.1.ffn_up.weight");
    let bad_path = tmp.path().join("bad.gguf");
    std::fs::write(&bad_path, bad.to_bytes()).expect("write");
    let out = tmp.path().join("never");
    let err = import_gguf(&bad_path, &out, &mut |_| {}).expect_err("missing tensor");
    assert!(err.to_string().contains("blk.1.ffn_up.weight"), "{err}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
