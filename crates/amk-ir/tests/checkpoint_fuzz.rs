//! Property tests of the safetensors header path: whatever the bytes, `Checkpoint::open` and
//! `load_f32` return a value or an error, never panic, and what they accept reads back
//! consistently.
//!
//! What ran (each test, per `cargo test`, with proptest's deterministic-by-default runner):
//! - `random_bytes`: 1 500 files of 0–600 random bytes, half with a plausible length field;
//! - `mutated_valid_file`: 2 000 valid 4-tensor files with 1–8 random byte overwrites, an
//!   optional truncation or extension, and an optional random length field;
//! - `structured_headers`: 2 000 headers built from random entries (every safetensors dtype
//!   and unknown ones, random shapes, offsets near 0 or near `u64::MAX`, random data length).
//! - `consistent_headers`: 2 000 well-formed files (random dtypes, shapes, header padding),
//!   a fifth with the data section 1–2 bytes short or long; the well-formed ones must open.
//!
//! Together they take 2–4 s in the test profile on an idle 2-core machine and have found no failure.
//! Offsets near `u64::MAX`, which would overflow `buffer_end + 8 + n` inside the safetensors
//! crate's validation, are refused by amk's own pre-check first; fixed examples are in
//! `checkpoint_errors.rs`.

use amk_ir::checkpoint::Checkpoint;
use amk_ir::WeightSpec;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A directory per test (tests run in parallel), reused across cases so that each case costs
/// one file write.
fn scratch(test: &str) -> PathBuf {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    let root = ROOT.get_or_init(|| tempfile::tempdir().unwrap());
    let dir = root.path().join(test);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `bytes` to a fresh file in `dir` (rewriting one file in place makes ext4 wait for
/// the previous write-back, milliseconds per case), opens it, and loads every tensor it
/// accepts.
fn exercise(dir: &Path, bytes: &[u8]) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let file = dir.join(format!("{}.safetensors", COUNTER.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&file, bytes).unwrap();
    let result = Checkpoint::open(&file);
    check_outcome(&file, result);
    std::fs::remove_file(&file).unwrap();
}

fn check_outcome(file: &Path, result: Result<Checkpoint, amk_ir::checkpoint::CheckpointError>) {
    match result {
        Ok(ck) => {
            let names: Vec<String> = ck.names().iter().map(|s| s.to_string()).collect();
            for name in names {
                let info = ck.get(&name).unwrap();
                assert_eq!(ck.bytes(&name).map(|b| b.len() as u64), Some(info.nbytes));
                let spec = WeightSpec::new(name.clone(), info.shape.clone());
                // Keep the allocation small: the fuzzer may claim large zero-byte shapes.
                if info.numel() > 1 << 20 {
                    continue;
                }
                match ck.load_f32(&spec) {
                    Ok(v) => assert_eq!(v.len() as u64, info.numel()),
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
                let _ = ck.check(&[spec, WeightSpec::new("absent", [1])]).unwrap_err();
            }
            let _ = (ck.param_count(), ck.bytes_by_dtype());
        }
        Err(e) => {
            let m = e.to_string();
            let name = file.display().to_string();
            assert!(m.contains(&name), "error does not name the file: {m}");
        }
    }
}

fn valid_file() -> Vec<u8> {
    let header = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[3],"data_offsets":[16,22]},"c":{"dtype":"BF16","shape":[1,3],"data_offsets":[22,28]},"d":{"dtype":"I64","shape":[1],"data_offsets":[28,36]}}"#;
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend((0..36u8).map(|i| i.wrapping_mul(37)));
    v
}

const DTYPES: [&str; 17] = [
    "BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
    "I64", "U64", "F64", "F4", "f32",
];

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..64, (0u64..4).prop_map(|d| u64::MAX - d), any::<u64>()]
}

fn entry() -> impl Strategy<Value = String> {
    (
        0usize..DTYPES.len(),
        prop::collection::vec(prop_oneof![0u64..5, Just(u64::MAX), any::<u64>()], 0..4),
        offset(),
        offset(),
    )
        .prop_map(|(d, shape, s, e)| {
            let shape: Vec<String> = shape.iter().map(|x| x.to_string()).collect();
            format!(
                r#"{{"dtype":"{}","shape":[{}],"data_offsets":[{s},{e}]}}"#,
                DTYPES[d],
                shape.join(",")
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(
        mut bytes in prop::collection::vec(any::<u8>(), 0..600),
        plausible in any::<bool>(),
    ) {
        if plausible && bytes.len() >= 8 {
            let n = (bytes.len() as u64 - 8) / 2;
            bytes[..8].copy_from_slice(&n.to_le_bytes());
        }
        exercise(&scratch("random_bytes"), &bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_valid_file(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in prop::option::of(any::<prop::sample::Index>()),
        extend in prop::collection::vec(any::<u8>(), 0..3),
        length in prop::option::of(any::<u64>()),
    ) {
        let mut bytes = valid_file();
        for (at, val) in edits {
            let i = at.index(bytes.len());
            bytes[i] = val;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()));
        }
        bytes.extend(extend);
        if let (Some(len), true) = (length, bytes.len() >= 8) {
            bytes[..8].copy_from_slice(&len.to_le_bytes());
        }
        exercise(&scratch("mutated_valid_file"), &bytes);
    }

    #[test]
    fn structured_headers(
        entries in prop::collection::vec(entry(), 0..4),
        data_len in prop_oneof![0usize..64, Just(0)],
    ) {
        let names = ["w", "x", "y", "z"];
        let body: Vec<String> = entries.iter().zip(names).map(|(e, n)| format!(r#""{n}":{e}"#)).collect();
        let header = format!("{{{}}}", body.join(","));
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0x3cu8, data_len));
        exercise(&scratch("structured_headers"), &bytes);
    }

    #[test]
    fn consistent_headers(
        tensors in prop::collection::vec((0usize..15, prop::collection::vec(0usize..5, 0..3)), 0..5),
        delta in prop_oneof![4 => Just(0i64), 1 => -2i64..3],
        pad in 0usize..9,
    ) {
        let sizes = [1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8];
        let mut off = 0usize;
        let mut body = Vec::new();
        for (i, (d, shape)) in tensors.iter().enumerate() {
            let n = shape.iter().product::<usize>() * sizes[*d];
            let dims: Vec<String> = shape.iter().map(|x| x.to_string()).collect();
            body.push(format!(
                r#""t{i}":{{"dtype":"{}","shape":[{}],"data_offsets":[{off},{}]}}"#,
                DTYPES[*d], dims.join(","), off + n
            ));
            off += n;
        }
        let header = format!("{{{}}}{}", body.join(","), " ".repeat(pad));
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        let data_len = (off as i64 + delta).max(0) as usize;
        bytes.extend((0..data_len).map(|i| (i * 29) as u8));
        exercise(&scratch("consistent_headers"), &bytes);
        if delta == 0 {
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
            prop_assert_eq!(meta.tensors().len(), tensors.len());
            let dir = scratch("consistent_headers_ok");
            let file = dir.join("model.safetensors");
            std::fs::write(&file, &bytes).unwrap();
            let ck = Checkpoint::open(&dir);
            std::fs::remove_file(&file).unwrap();
            prop_assert_eq!(ck.unwrap().len(), tensors.len());
        }
    }
}

#[test]
fn the_unmutated_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.safetensors"), valid_file()).unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.names(), ["a", "b", "c", "d"]);
    assert_eq!(ck.load_f32(&WeightSpec::new("a", [2, 2])).unwrap().len(), 4);
}
