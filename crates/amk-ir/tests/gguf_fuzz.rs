//! Property-based fuzzing of the GGUF reader and importer: nothing panics on hostile input.
//!
//! What runs (about 5,300 cases, a few seconds in the dev profile, which optimizes this crate):
//! - 1,000 random byte strings and 1,000 random strings behind a valid `GGUF` v3 magic and
//!   version, parsed from memory;
//! - 3,000 mutations of the tiny valid model of `gguf_support` (1 to 8 random byte
//!   overwrites, biased towards the header, plus an optional truncation), parsed, and when the
//!   parse succeeds every tensor dequantized and the typed accessors exercised;
//! - 300 header mutations imported end to end into a temporary directory.
//!
//! A failing case is shrunk by proptest and printed; regressions would then go to
//! `proptest-regressions/` next to this file.

mod gguf_support;

use amk_ir::gguf::{import_gguf, GgufFile};
use gguf_support::TinyModel;
use proptest::prelude::*;
use std::sync::OnceLock;

fn tiny() -> &'static (Vec<u8>, usize) {
    static TINY: OnceLock<(Vec<u8>, usize)> = OnceLock::new();
    TINY.get_or_init(|| {
        let bytes = TinyModel::default().build().writer.to_bytes();
        let header_len =
            GgufFile::from_bytes(bytes.clone(), "tiny.gguf").map(|f| f.data_offset()).unwrap_or(0);
        (bytes, header_len as usize)
    })
}

fn exercise(bytes: Vec<u8>) {
    if let Ok(f) = GgufFile::from_bytes(bytes, "fuzz.gguf") {
        for key in [
            "general.architecture",
            "llama.block_count",
            "tokenizer.ggml.tokens",
            "general.alignment",
        ] {
            let _ = f.get_u32(key);
            let _ = f.get_f32(key);
            let _ = f.get_str(key);
            let _ = f.get_str_array(key);
            let _ = f.get_i32_array(key);
        }
        let names: Vec<String> = f.tensors().iter().map(|t| t.name.clone()).collect();
        for name in names {
            if let Ok(v) = f.dequantize(&name) {
                let info = f.tensor(&name).map(|t| t.n_elements).unwrap_or(0);
                assert_eq!(v.len() as u64, info, "{name}");
            }
        }
    }
}

/// A mutation: byte overwrites (position as a fraction, value) and an optional cut.
fn mutation() -> impl Strategy<Value = (Vec<(f64, bool, u8)>, Option<f64>)> {
    (
        prop::collection::vec((0.0..1.0f64, any::<bool>(), any::<u8>()), 1..8),
        prop::option::of(0.0..1.0f64),
    )
}

fn apply(edits: &[(f64, bool, u8)], cut: Option<f64>) -> Vec<u8> {
    let (bytes, header_len) = tiny();
    let mut b = bytes.clone();
    for &(pos, in_header, value) in edits {
        let span = if in_header { *header_len } else { b.len() };
        let i = ((pos * span as f64) as usize).min(b.len().saturating_sub(1));
        if let Some(x) = b.get_mut(i) {
            *x = value;
        }
    }
    if let Some(c) = cut {
        b.truncate((c * b.len() as f64) as usize);
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        exercise(bytes);
    }

    #[test]
    fn random_bytes_after_valid_magic_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut b = b"GGUF\x03\x00\x00\x00".to_vec();
        b.extend(bytes);
        exercise(b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_model_never_panics((edits, cut) in mutation()) {
        exercise(apply(&edits, cut));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_model_import_never_panics(edits in prop::collection::vec((0.0..1.0f64, Just(true), any::<u8>()), 1..4)) {
        let bytes = apply(&edits, None);
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("m.gguf");
        std::fs::write(&path, bytes).expect("write");
        let _ = import_gguf(&path, &tmp.path().join("out"), &mut |_| {});
    }
}
