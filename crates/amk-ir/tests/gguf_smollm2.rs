//! Imports the real SmolLM2-135M-Instruct Q4_1 GGUF and checks it against what Hugging Face
//! transformers 5.17 made of the same file (`fixtures/smollm2-hf`) and against values computed
//! with gguf-py. Fails (never skips) when the model has not been fetched.

use amk_ir::cache::{missing_model_hint, SMOLLM2};
use amk_ir::gguf::{import_gguf, GgufFile};
use serde_json::Value;
use std::path::Path;

const FIXTURE_TOKENIZER: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/smollm2-hf/tokenizer.json");
const FIXTURE_CONFIG: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/smollm2-hf/config.json");
const FIXTURE_TEMPLATE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/smollm2-hf/chat_template.jinja");

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Reads `name` from the imported safetensors as f32, `row` of a `[rows, cols]` matrix.
fn row(st: &safetensors::SafeTensors<'_>, name: &str, row: usize) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    let cols = if t.shape().len() == 2 { t.shape()[1] } else { t.shape()[0] };
    let data: Vec<f32> =
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    data[row * cols..(row + 1) * cols].to_vec()
}

#[test]
fn smollm2_import_matches_transformers() {
    let gguf = SMOLLM2.gguf_path();
    assert!(gguf.exists(), "{}", missing_model_hint(&SMOLLM2));

    let file = GgufFile::open(&gguf).expect("open");
    assert_eq!(file.version(), 3);
    assert_eq!(file.tensors().len(), 272);
    assert_eq!(file.get_str("general.architecture").expect("arch"), "llama");

    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("hf");
    let started = std::time::Instant::now();
    let mut last = None;
    let summary = import_gguf(&gguf, &out, &mut |p| last = Some(p)).expect("import");
    eprintln!("imported SmolLM2 in {:.2} s: {summary:?}", started.elapsed().as_secs_f64());
    let last = last.expect("progress reported");
    assert_eq!((last.tensors_done, last.tensors_total), (272, 272));
    assert_eq!(last.bytes_done, last.bytes_total);
    assert_eq!(summary.tensors, 272);
    assert!(summary.tie_word_embeddings);

    // tokenizer.json: JSON-equal to transformers' conversion.
    let ours = read_json(&out.join("tokenizer.json"));
    let theirs = read_json(Path::new(FIXTURE_TOKENIZER));
    if ours != theirs {
        for key in
            ["added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder", "model"]
        {
            assert!(ours[key] == theirs[key], "tokenizer.json differs in '{key}'");
        }
        panic!("tokenizer.json differs from the fixture in a top-level field");
    }
    let tok =
        tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).expect("tokenizers loads it");
    let enc = tok.encode("<|im_start|>user\nHello, world!<|im_end|>", false).expect("encode");
    assert_eq!(enc.get_ids().first(), Some(&1));
    assert_eq!(enc.get_ids().last(), Some(&2));

    // config.json: every model-shape field as transformers wrote it.
    let ours = read_json(&out.join("config.json"));
    let theirs = read_json(Path::new(FIXTURE_CONFIG));
    for key in [
        "attention_bias",
        "bos_token_id",
        "head_dim",
        "hidden_act",
        "hidden_size",
        "intermediate_size",
        "max_position_embeddings",
        "mlp_bias",
        "model_type",
        "num_attention_heads",
        "num_hidden_layers",
        "num_key_value_heads",
        "pad_token_id",
        "rms_norm_eps",
        "rope_parameters",
        "tie_word_embeddings",
        "unk_token_id",
        "vocab_size",
        "attention_dropout",
        "use_cache",
        "_model_name_or_path",
    ] {
        assert_eq!(ours[key], theirs[key], "config.json field '{key}'");
    }
    // Different on purpose: eos_token_id is the list of end-of-generation ids (transformers
    // writes the single metadata eos id 2); architectures and torch_dtype are added (they
    // are absent from the fixture).
    assert_eq!(ours["eos_token_id"], serde_json::json!([0, 2]));
    assert_eq!(theirs["eos_token_id"], serde_json::json!(2));
    assert_eq!(ours["architectures"], serde_json::json!(["LlamaForCausalLM"]));
    assert_eq!(ours["torch_dtype"], "float32");

    let template = std::fs::read_to_string(out.join("chat_template.jinja")).expect("template");
    let fixture_template = std::fs::read_to_string(FIXTURE_TEMPLATE).expect("fixture template");
    assert_eq!(template.trim_end(), fixture_template.trim_end());
    let tcfg = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(
        tcfg["chat_template"].as_str().map(str::trim_end),
        Some(fixture_template.trim_end())
    );
    assert_eq!(tcfg["bos_token"], "<|im_start|>");
    assert_eq!(tcfg["eos_token"], "<|im_end|>");
    assert_eq!(tcfg["unk_token"], "<|endoftext|>");

    // Weights. Expected bit patterns were computed once with gguf-py 0.x + numpy:
    //   t = GGUFReader(path).tensors[...]; w = gguf.quants.dequantize(t.data, t.tensor_type)
    //   q/k: w.reshape(n, rows // n // 2, 2, cols).swapaxes(2, 1).reshape(rows, cols)
    //   (n = 9 for attn_q, 3 for attn_k: transformers' reverse_permute_weights),
    //   then np.float32(...).view(np.uint32).
    let data = std::fs::read(out.join("model.safetensors")).expect("read safetensors");
    let st = safetensors::SafeTensors::deserialize(&data).expect("valid safetensors");
    assert_eq!(st.len(), 272);
    assert_eq!(st.tensor("model.embed_tokens.weight").expect("embed").shape(), &[49152, 576]);
    assert!(st.tensor("lm_head.weight").is_err());

    let e0 = row(&st, "model.embed_tokens.weight", 0);
    assert_eq!(bits(&e0[..4]), [0xbdda3400, 0x3d071400, 0x3d456c00, 0xbcbb0800]);
    assert_eq!(bits(&e0[572..]), [0xbc638000, 0xbc924000, 0xbe80fc00, 0x3cf3c000]);
    let e_last = row(&st, "model.embed_tokens.weight", 49151);
    assert_eq!(bits(&e_last[..4]), [0x3c3c8000, 0x3bbc8000, 0x3dc84800, 0xbdc84800]);
    assert_eq!(bits(&e_last[572..]), [0x3da02300, 0x3e03ab00, 0xbdf58b00, 0xbd2ad000]);

    let q = "model.layers.0.self_attn.q_proj.weight";
    let expect_q: [([u32; 4], [u32; 2]); 3] = [
        ([0xbdc54000, 0x3e212000, 0xbdc54000, 0xbf3b0000], [0x3f00f000, 0x3dfd0000]),
        ([0xbe230000, 0x3ecbc000, 0xbca30000, 0xbfa30000], [0x3e67d000, 0xbe441000]),
        ([0xbde00000, 0x3dd00000, 0xbea40000, 0xbea40000], [0x3ea87000, 0x3ea87000]),
    ];
    for (i, (head, tail)) in expect_q.iter().enumerate() {
        let r = row(&st, q, i);
        assert_eq!(bits(&r[..4]), head, "{q} row {i}");
        assert_eq!(bits(&r[574..]), tail, "{q} row {i}");
    }
    let k = "model.layers.0.self_attn.k_proj.weight";
    for (i, want) in [
        (0, [0xbe1f0000u32, 0x3eae3000, 0xbef8a000, 0xbea41000]),
        (1, [0x3e504000, 0x3dbb2000, 0x3e504000, 0xbe07d000]),
        (33, [0xbdcb0000, 0x3e6b1000, 0xbe6c2000, 0xbeb96000]),
        (191, [0x3c820000, 0xbede5000, 0x3c820000, 0xbf3bf800]),
    ] {
        assert_eq!(bits(&row(&st, k, i)[..4]), want, "{k} row {i}");
    }
    let v = row(&st, "model.layers.0.self_attn.v_proj.weight", 5);
    assert_eq!(bits(&v[..3]), [0x3cc98000, 0xbda40000, 0x3c3ca000]);
    let norm = row(&st, "model.layers.0.input_layernorm.weight", 0);
    assert_eq!(bits(&norm[..4]), [0x3c650000, 0x3cc30000, 0xbca20000, 0xbcf80000]);
    assert_eq!(bits(&norm[574..]), [0x3d4d0000, 0xbd1d0000]);
    assert_eq!(bits(&row(&st, "model.norm.weight", 0)[..3]), [0x3fe10000, 0x3fe90000, 0x3fe40000]);
    let down = "model.layers.29.mlp.down_proj.weight";
    assert_eq!(bits(&row(&st, down, 0)[..3]), [0xbe8bf000, 0x3e3ec000, 0x3e3ec000]);
    assert_eq!(bits(&row(&st, down, 575)[1533..]), [0x3e500000, 0xbdb80000, 0x3d680000]);

    // Direct dequantization (no un-permutation) of a Q4_1 tensor, raw GGUF row 1.
    let raw_q = file.dequantize("blk.0.attn_q.weight").expect("dequantize");
    assert_eq!(bits(&raw_q[576..580]), [0xbdf04000, 0xbdf04000, 0xbe457000, 0x3e853800]);
}
