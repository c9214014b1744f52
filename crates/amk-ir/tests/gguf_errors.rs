//! Bad and hostile GGUF input: every error names the file and the field or tensor involved,
//! absurd counts fail without allocating (checked with a per-thread allocation tracker), and
//! truncation at every prefix of a small valid file gives an error, never a panic.

mod gguf_support;

use amk_ir::gguf::{import_gguf, GgufError, GgufFile};
use gguf_support::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Records the largest single allocation made by the current thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|m| {
        if size > m.get() {
            m.set(size)
        }
    });
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

const NAME: &str = "hostile.gguf";

fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(bytes, NAME)
}

fn parse_err(bytes: Vec<u8>) -> String {
    let err = parse(bytes).expect_err("must fail");
    let msg = err.to_string();
    assert!(msg.contains(NAME), "error does not name the file: {msg}");
    msg
}

/// A header with the given counts and nothing (or `rest`) after it.
fn header(version: u32, tensors: u64, kvs: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(kvs.to_le_bytes());
    b.extend(rest);
    b
}

fn tiny_bytes() -> Vec<u8> {
    TinyModel::default().build().writer.to_bytes()
}

#[test]
fn bad_magic_and_version() {
    let msg = parse_err(b"GGML\x03\x00\x00\x00".to_vec());
    assert!(msg.contains("magic") && msg.contains("GGUF"), "{msg}");
    let msg = parse_err(header(1, 0, 0, &[]));
    assert!(msg.contains("version 1"), "{msg}");
    let msg = parse_err(header(3u32.swap_bytes(), 0, 0, &[]));
    assert!(msg.contains("big-endian"), "{msg}");
    let msg = parse_err(Vec::new());
    assert!(msg.contains("magic") && msg.contains("truncated"), "{msg}");
    // A minimal valid file: no tensors, no metadata.
    let f = parse(header(3, 0, 0, &[])).expect("empty gguf is valid");
    assert!(f.tensors().is_empty() && f.metadata().is_empty());
}

#[test]
fn truncated_at_every_prefix() {
    let bytes = tiny_bytes();
    let full = parse(bytes.clone()).expect("full file parses");
    // Cutting anywhere before the last tensor's data ends must fail; past it (padding) may not.
    let needed =
        full.tensors().iter().map(|t| full.data_offset() + t.offset + t.n_bytes).max().unwrap_or(0);
    for len in 0..bytes.len() {
        let result = parse(bytes[..len].to_vec());
        if (len as u64) < needed {
            let msg = result.expect_err("truncated file must fail").to_string();
            assert!(msg.contains(NAME), "{msg}");
            assert!(
                msg.contains("truncated")
                    || msg.contains("outside the file")
                    || msg.contains("remain"),
                "prefix {len}: {msg}"
            );
        }
    }
    // One cut in the middle of the token list says which field it was reading.
    let f = parse(bytes[..2000].to_vec()).expect_err("cut").to_string();
    assert!(f.contains("tokenizer.ggml.tokens"), "{f}");
}

#[test]
fn absurd_counts_fail_fast_without_allocating() {
    let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
    for n in [u64::MAX, 1 << 40, 1 << 60] {
        cases.push((header(3, n, 0, &[]), "tensor_count"));
        cases.push((header(3, 0, n, &[0; 64]), "kv_count"));
        // Key string length.
        cases.push((
            header(3, 0, 1, &[&n.to_le_bytes()[..], &[0; 64]].concat()),
            "key of metadata entry 0",
        ));
        // String value length.
        let mut kv = Vec::new();
        kv.extend(1u64.to_le_bytes());
        kv.push(b'k');
        kv.extend(8u32.to_le_bytes());
        kv.extend(n.to_le_bytes());
        kv.extend([0; 64]);
        cases.push((header(3, 0, 1, &kv), "metadata key 'k'"));
        // Array length, for a string array and a u8 array.
        for elem in [8u32, 0] {
            let mut kv = Vec::new();
            kv.extend(1u64.to_le_bytes());
            kv.push(b'a');
            kv.extend(9u32.to_le_bytes());
            kv.extend(elem.to_le_bytes());
            kv.extend(n.to_le_bytes());
            kv.extend([0; 64]);
            cases.push((header(3, 0, 1, &kv), "array length"));
        }
        // Tensor name length.
        cases.push((
            header(3, 1, 0, &[&n.to_le_bytes()[..], &[0; 64]].concat()),
            "name of tensor info 0",
        ));
    }
    for (bytes, field) in cases {
        LARGEST.with(|m| m.set(0));
        let started = std::time::Instant::now();
        let result = GgufFile::from_bytes(bytes, NAME);
        let largest = LARGEST.with(|m| m.get());
        let msg = result.expect_err("absurd count must fail").to_string();
        assert!(msg.contains(NAME) && msg.contains(field), "expected '{field}' in: {msg}");
        assert!(largest < 64 * 1024, "allocated {largest} bytes for: {msg}");
        assert!(started.elapsed().as_millis() < 100, "slow: {msg}");
    }
}

#[test]
fn bad_tensor_infos() {
    let tensor = |name: &str, n_dims: u32, dims: &[u64], ty: u32, offset: u64| {
        let mut b = Vec::new();
        b.extend((name.len() as u64).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend(n_dims.to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        b.extend([0u8; 128]);
        header(3, 1, 0, &b)
    };
    let msg = parse_err(tensor("w", 0, &[], 0, 0));
    assert!(msg.contains("n_dims") && msg.contains("'w'"), "{msg}");
    let msg = parse_err(tensor("w", 5, &[1; 5], 0, 0));
    assert!(msg.contains("n_dims") && msg.contains("'w'"), "{msg}");
    let msg = parse_err(tensor("w", 4, &[1 << 20, 1 << 20, 1 << 20, 1 << 20], 0, 0));
    assert!(msg.contains("overflows") && msg.contains("'w'"), "{msg}");
    let msg = parse_err(tensor("w", 2, &[1 << 40, 1 << 20], 0, 0));
    assert!(msg.contains("outside the file") && msg.contains("'w'"), "{msg}");
    let msg = parse_err(tensor("w", 1, &[4], 0, u64::MAX - 31));
    assert!(msg.contains("outside the file") && msg.contains("'w'"), "{msg}");
    let msg = parse_err(tensor("w", 1, &[4], 0, 7));
    assert!(msg.contains("alignment") && msg.contains("'w'"), "{msg}");
    let msg = parse_err(tensor("w", 1, &[16], 8, 0));
    assert!(msg.contains("block size") && msg.contains("'w'"), "{msg}");
    let msg = parse_err(tensor("w", 1, &[4], 99, 0));
    assert!(msg.contains("99") && msg.contains("'w'"), "{msg}");

    // Data out of bounds in an otherwise valid model.
    let mut w = TinyModel::default().build().writer;
    let bytes = w.to_bytes();
    let last = w.tensors.len() - 1;
    w.tensors[last].data.truncate(4);
    let mut cut = w.to_bytes();
    cut.truncate(bytes.len().min(cut.len()) - 1);
    let msg = parse_err(cut);
    assert!(msg.contains("outside the file") && msg.contains("output_norm.weight"), "{msg}");
}

#[test]
fn bad_metadata_values() {
    let kv = |ty: u32, value: &[u8]| {
        let mut b = Vec::new();
        b.extend(3u64.to_le_bytes());
        b.extend(b"key");
        b.extend(ty.to_le_bytes());
        b.extend(value);
        header(3, 0, 1, &b)
    };
    let msg = parse_err(kv(13, &[0; 8]));
    assert!(msg.contains("'key'") && msg.contains("type code 13"), "{msg}");
    let msg = parse_err(kv(7, &[2]));
    assert!(msg.contains("'key'") && msg.contains("bool"), "{msg}");
    let msg = parse_err(kv(8, &[&2u64.to_le_bytes()[..], &[0xff, 0xfe]].concat()));
    assert!(msg.contains("'key'") && msg.contains("UTF-8"), "{msg}");
    // Nested arrays: fine when shallow, refused when deeper than the limit.
    let mut nested = Vec::new();
    for _ in 0..20 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    nested.extend(4u32.to_le_bytes());
    nested.extend(0u64.to_le_bytes());
    let msg = parse_err(kv(9, &nested[12..]));
    assert!(msg.contains("nested"), "{msg}");
    let shallow = &nested[nested.len() - 3 * 12..];
    let f = parse(kv(9, shallow)).expect("shallow nesting is fine");
    assert!(matches!(f.metadata().get("key"), Some(amk_ir::gguf::MetaValue::Array(_))));
    // Alignment must be a power of two.
    let msg = parse_err(header(
        3,
        0,
        1,
        &[
            &17u64.to_le_bytes()[..],
            b"general.alignment",
            &4u32.to_le_bytes(),
            &48u32.to_le_bytes(),
        ]
        .concat(),
    ));
    assert!(msg.contains("general.alignment"), "{msg}");
    // Duplicate keys.
    let one = [&3u64.to_le_bytes()[..], b"key", &4u32.to_le_bytes(), &1u32.to_le_bytes()].concat();
    let msg = parse_err(header(3, 0, 2, &[&one[..], &one[..]].concat()));
    assert!(msg.contains("'key'") && msg.contains("twice"), "{msg}");
}

/// Imports `writer`'s file and returns the error message, checking it names the file.
fn import_err(writer: &GgufWriter) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("model.gguf");
    std::fs::write(&path, writer.to_bytes()).expect("write");
    let err =
        import_gguf(&path, &tmp.path().join("out"), &mut |_| {}).expect_err("import must fail");
    let msg = err.to_string();
    assert!(msg.contains("model.gguf"), "error does not name the file: {msg}");
    assert!(!tmp.path().join("out").exists());
    msg
}

#[test]
fn import_rejects_unsupported_models() {
    let base = TinyModel::default().build().writer;

    let mut w = base.clone();
    w.set("general.architecture", Val::Str("qwen2".into()));
    let msg = import_err(&w);
    assert!(
        msg.contains("qwen2") && msg.contains("llama") && msg.contains("general.architecture"),
        "{msg}"
    );

    let mut w = base.clone();
    w.remove("llama.embedding_length");
    let msg = import_err(&w);
    assert!(msg.contains("missing metadata key 'llama.embedding_length'"), "{msg}");

    // A zero width is named as such (it was blamed on the rotary dimension's head size).
    let mut w = base.clone();
    w.set("llama.embedding_length", Val::U32(0));
    let msg = import_err(&w);
    assert!(msg.contains("llama.embedding_length") && msg.contains("positive"), "{msg}");

    let mut w = base.clone();
    w.set("llama.attention.head_count", Val::Str("four".into()));
    let msg = import_err(&w);
    assert!(msg.contains("llama.attention.head_count") && msg.contains("string"), "{msg}");

    let mut w = base.clone();
    w.set("tokenizer.ggml.model", Val::Str("llama".into()));
    let msg = import_err(&w);
    assert!(msg.contains("tokenizer.ggml.model") && msg.contains("gpt2"), "{msg}");

    let mut w = base.clone();
    w.set("llama.rope.scaling.type", Val::Str("linear".into()));
    let msg = import_err(&w);
    assert!(msg.contains("llama.rope.scaling.type"), "{msg}");

    let mut w = base.clone();
    let q5k = &mut w.tensors[1];
    let name = q5k.name.clone();
    q5k.ggml_type = 13;
    q5k.dims = vec![256];
    q5k.data = vec![0; 176];
    let msg = import_err(&w);
    assert!(msg.contains(&name) && msg.contains("Q5_K (13)") && msg.contains("Q4_1 (3)"), "{msg}");
    // GgufFile itself opens it; only dequantizing fails.
    let f = GgufFile::from_bytes(w.to_bytes(), "q5k.gguf").expect("open");
    let msg = f.dequantize(&name).expect_err("unsupported").to_string();
    assert!(msg.contains("q5k.gguf") && msg.contains("Q5_K (13)") && msg.contains(&name), "{msg}");

    let mut w = base.clone();
    w.tensor("blk.0.attn_rot_embd", &[4], F32, vec![0; 16]);
    let msg = import_err(&w);
    assert!(msg.contains("blk.0.attn_rot_embd") && msg.contains("unknown tensor"), "{msg}");

    let mut w = base.clone();
    let t = w.tensors.iter_mut().find(|t| t.name == "blk.0.ffn_norm.weight").expect("norm");
    t.dims = vec![32];
    t.data.truncate(128);
    let msg = import_err(&w);
    assert!(msg.contains("blk.0.ffn_norm.weight") && msg.contains("[64]"), "{msg}");

    let mut w = base.clone();
    w.set("tokenizer.ggml.merges", Val::StrArr(vec!["x y z".into()]));
    let msg = import_err(&w);
    assert!(msg.contains("tokenizer.ggml.merges") && msg.contains("entry 0"), "{msg}");

    // A corrupt layer count is refused at once, not looped over (the fuzz test found a
    // flipped byte giving a billion layers).
    let mut w = base.clone();
    w.set("llama.block_count", Val::U32(1_153_860_391));
    let msg = import_err(&w);
    assert!(msg.contains("llama.block_count") && msg.contains("1153860391 layers"), "{msg}");
}
