//! `amk_ir::tokenizer` against the SmolLM2 fixture: the golden prompts encode to exactly the
//! ids transformers produced, generated ids decode (whole and streamed) to the golden text, and
//! bad inputs give errors naming the file.

use amk_ir::tokenizer::{Tokenizer, TokenizerError};
use std::path::Path;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/smollm2-hf");
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/smollm2_golden.json");

struct Case {
    prompt: String,
    ids: Vec<u32>,
    gen: Vec<u32>,
    text: String,
}

fn cases(key: &str) -> Vec<Case> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(GOLDEN).unwrap()).unwrap();
    let ids = |x: &serde_json::Value| -> Vec<u32> {
        x.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect()
    };
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: c["prompt"].as_str().unwrap().to_string(),
            ids: ids(&c["ids"]),
            gen: ids(&c["gen"]),
            text: c["text"].as_str().unwrap().to_string(),
        })
        .collect()
}

fn tok() -> Tokenizer {
    Tokenizer::from_dir(Path::new(DIR)).unwrap()
}

fn stream_all(t: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
    let mut s = t.stream(skip_special);
    let mut pieces: Vec<String> = ids.iter().filter_map(|&id| s.step(id).unwrap()).collect();
    pieces.extend(s.finish().unwrap());
    pieces
}

#[test]
fn golden_prompts_encode_exactly() {
    let t = tok();
    for key in ["fp32_cpu", "fp32_gpu", "bf16_gpu"] {
        for c in cases(key) {
            assert_eq!(t.encode(&c.prompt).unwrap(), c.ids, "{key}: {:?}", c.prompt);
        }
    }
}

#[test]
fn special_tokens_in_text_are_recognised_and_no_bos_is_added() {
    let t = tok();
    let ids = t.encode("<|im_start|>user\nhi<|im_end|>").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    assert_ne!(t.encode("hi").unwrap().first(), Some(&1));
}

#[test]
fn golden_generations_decode_to_the_text() {
    let t = tok();
    for c in cases("fp32_cpu") {
        assert_eq!(t.decode(&c.gen, false).unwrap(), c.text);
        let pieces = stream_all(&t, &c.gen, false);
        assert_eq!(pieces.concat(), c.text);
        assert!(pieces.len() > 1);
        let skipped = t.decode(&c.gen, true).unwrap();
        assert_eq!(stream_all(&t, &c.gen, true).concat(), skipped);
        assert!(!skipped.contains("<|im_end|>"));
    }
}

#[test]
fn streaming_never_splits_a_character() {
    let t = tok();
    let text = "Ça coûte 5€ — 日本語のテキスト 🦀🚀 naïve façade";
    let ids = t.encode(text).unwrap();
    assert_eq!(t.decode(&ids, false).unwrap(), text);
    let pieces = stream_all(&t, &ids, false);
    assert_eq!(pieces.concat(), text);
    for p in &pieces {
        assert!(!p.contains('\u{FFFD}'), "piece {p:?} holds a split character");
    }
    // Byte-level tokens for half a character stay held back until the character completes.
    let crab = t.encode("🦀").unwrap();
    assert!(crab.len() > 1, "expected the crab to take several byte tokens: {crab:?}");
    let mut s = t.stream(false);
    for &id in &crab[..crab.len() - 1] {
        assert_eq!(s.step(id).unwrap(), None);
    }
    assert_eq!(s.step(crab[crab.len() - 1]).unwrap().as_deref(), Some("🦀"));
    // An unfinished character is flushed as U+FFFD at the end rather than lost.
    let mut s = t.stream(false);
    assert_eq!(s.step(crab[0]).unwrap(), None);
    assert_eq!(s.finish().unwrap().as_deref(), Some("\u{FFFD}"));
}

#[test]
fn vocabulary_lookups() {
    let t = tok();
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(t.id_to_token(2).as_deref(), Some("<|im_end|>"));
    assert_eq!(t.id_to_token(10_000_000), None);
    assert!(t.is_special(2) && !t.is_special(504));
    // Ids beyond the vocabulary are skipped, not a panic.
    assert_eq!(t.decode(&[504, 10_000_000], false).unwrap(), t.decode(&[504], false).unwrap());
}

#[test]
fn tokenizer_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<TokenizerError>();
}

#[test]
fn empty_prompt_is_an_error() {
    let e = tok().encode("").unwrap_err();
    assert!(matches!(e, TokenizerError::EmptyPrompt));
    assert!(e.to_string().contains("empty"));
}

#[test]
fn missing_or_malformed_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(e, TokenizerError::Io { .. }));
    assert!(
        e.to_string().contains(&dir.path().join("tokenizer.json").display().to_string()),
        "{e}"
    );
    for body in ["{not json", "{}", "[]", r#"{"model": {"type": "BPE", "vocab": 3}}"#, ""] {
        let f = dir.path().join("tokenizer.json");
        std::fs::write(&f, body).unwrap();
        let e = Tokenizer::from_file(&f).unwrap_err();
        assert!(matches!(e, TokenizerError::Parse { .. }), "{body}: {e}");
        assert!(e.to_string().contains(&f.display().to_string()), "{e}");
    }
}
