//! `amk_ir::checkpoint` on good and bad safetensors checkpoints made in the test: every bad
//! input gives an error naming the file and tensor, never a panic, and F32/F16/BF16 convert
//! exactly (F16 and BF16 checked over all 65 536 bit patterns against `half`).

use amk_ir::checkpoint::{Checkpoint, CheckpointError, WeightProblem};
use amk_ir::WeightSpec;
use safetensors::{serialize_to_file, Dtype, View};
use std::path::{Path, PathBuf};

/// A tensor to write: dtype, shape, little-endian bytes.
struct T(&'static str, Dtype, Vec<usize>, Vec<u8>);

impl View for &T {
    fn dtype(&self) -> Dtype {
        self.1
    }
    fn shape(&self) -> &[usize] {
        &self.2
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.3)
    }
    fn data_len(&self) -> usize {
        self.3.len()
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write(path: &Path, tensors: &[T]) {
    serialize_to_file(tensors.iter().map(|t| (t.0, t)), &None, path).unwrap();
}

/// A raw safetensors file: length field, header text, data.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

fn sample(dir: &Path) -> PathBuf {
    let p = dir.join("model.safetensors");
    write(
        &p,
        &[
            T(
                "model.embed_tokens.weight",
                Dtype::F32,
                vec![2, 3],
                f32_bytes(&[1., 2., 3., 4., 5., 6.]),
            ),
            T(
                "norm.weight",
                Dtype::BF16,
                vec![4],
                vec![0x80, 0x3f, 0, 0x40, 0x40, 0x40, 0x80, 0x40],
            ),
            T("position_ids", Dtype::I64, vec![2], vec![0; 16]),
            T("q", Dtype::U8, vec![3], vec![1, 2, 3]),
        ],
    );
    p
}

fn open_err(dir: &Path) -> CheckpointError {
    Checkpoint::open(dir).expect_err("open should fail")
}

fn open_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<Checkpoint, CheckpointError>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    let r = Checkpoint::open(dir.path());
    (dir, r)
}

#[test]
fn opens_and_describes_a_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = sample(dir.path());
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.names(), ["model.embed_tokens.weight", "norm.weight", "position_ids", "q"]);
    let info = ck.get("model.embed_tokens.weight").unwrap();
    assert_eq!((info.dtype.as_str(), info.shape.as_slice(), info.nbytes), ("F32", &[2, 3][..], 24));
    assert_eq!(info.file, file);
    assert_eq!(info.amk_dtype(), Some(amk_ir::DType::F32));
    assert!(ck.get("nope").is_none());
    assert_eq!(ck.param_count(), 6 + 4 + 2 + 3);
    let by = ck.bytes_by_dtype();
    assert_eq!(by.get("F32"), Some(&24));
    assert_eq!(by.get("BF16"), Some(&8));
    assert_eq!(by.get("I64"), Some(&16));
    assert_eq!(by.get("U8"), Some(&3));
    assert_eq!(ck.bytes("q"), Some(&[1u8, 2, 3][..]));
    let v = ck.load_f32(&WeightSpec::new("norm.weight", [4])).unwrap();
    assert_eq!(v, [1.0, 2.0, 3.0, 4.0]);
    let v = ck.load_f32(&WeightSpec::new("model.embed_tokens.weight", [2, 3])).unwrap();
    assert_eq!(v, [1., 2., 3., 4., 5., 6.]);
    // The file path itself is accepted too.
    assert_eq!(Checkpoint::open(&file).unwrap().len(), 4);
}

#[test]
fn check_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    let ck = Checkpoint::open(dir.path()).unwrap();
    let specs = [
        WeightSpec::new("model.embed_tokens.weight", [3, 2]), // wrong shape
        WeightSpec::new("model.norm.weight", [4]),            // missing, `norm.weight` exists
        WeightSpec::new("position_ids", [2]),                 // I64
        WeightSpec::new("q", [3]),                            // U8
        WeightSpec::new("lm_head.weight", [2, 3]),            // missing
    ];
    let err = ck.check(&specs).unwrap_err();
    let CheckpointError::Mismatch { problems, .. } = &err else { panic!("{err}") };
    assert_eq!(problems.len(), 5, "{err}");
    assert!(
        matches!(&problems[1], WeightProblem::Missing { similar: Some(s), .. } if s == "norm.weight")
    );
    let msg = err.to_string();
    for needle in [
        "5 problems",
        "model.embed_tokens.weight",
        "expected shape [3, 2], found [2, 3]",
        "`model.norm.weight`: missing",
        "norm.weight",
        "position_ids",
        "found I64",
        "found U8",
        "lm_head.weight",
        "model.safetensors",
        "model.safetensors.index.json",
        "llama-family",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in:\n{msg}");
    }
    assert!(ck.check(&specs[2..2]).is_ok());
    assert!(ck.check(&[WeightSpec::new("norm.weight", [4])]).is_ok());
}

#[test]
fn load_f32_rejects_wrong_requests() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    let ck = Checkpoint::open(dir.path()).unwrap();
    let e = ck.load_f32(&WeightSpec::new("missing.weight", [1])).unwrap_err();
    assert!(
        matches!(e, CheckpointError::MissingTensor { .. })
            && e.to_string().contains("missing.weight")
    );
    let e = ck.load_f32(&WeightSpec::new("norm.weight", [2, 2])).unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, CheckpointError::ShapeMismatch { .. }), "{m}");
    assert!(
        m.contains("norm.weight")
            && m.contains("[4]")
            && m.contains("[2, 2]")
            && m.contains("model.safetensors"),
        "{m}"
    );
    for (name, shape, dt) in [("position_ids", 2, "I64"), ("q", 3, "U8")] {
        let e = ck.load_f32(&WeightSpec::new(name, [shape])).unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, CheckpointError::UnsupportedDType { .. }), "{m}");
        assert!(m.contains(name) && m.contains(dt) && m.contains("model.safetensors"), "{m}");
    }
}

#[test]
fn f16_and_bf16_convert_exactly_for_every_bit_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    write(
        &dir.path().join("model.safetensors"),
        &[
            T("h", Dtype::F16, vec![256, 256], bytes.clone()),
            T("b", Dtype::BF16, vec![65536], bytes),
        ],
    );
    let ck = Checkpoint::open(dir.path()).unwrap();
    let h = ck.load_f32(&WeightSpec::new("h", [256, 256])).unwrap();
    let b = ck.load_f32(&WeightSpec::new("b", [65536])).unwrap();
    for (i, &bit) in bits.iter().enumerate() {
        let want = half::f16::from_bits(bit).to_f32();
        assert!(
            h[i].to_bits() == want.to_bits() || (want.is_nan() && h[i].is_nan()),
            "f16 {bit:#x}"
        );
        let want = half::bf16::from_bits(bit).to_f32();
        assert!(
            b[i].to_bits() == want.to_bits() || (want.is_nan() && b[i].is_nan()),
            "bf16 {bit:#x}"
        );
    }
}

#[test]
fn unaligned_data_is_read_correctly() {
    // A header of odd length puts the data at an odd address in the map.
    let vals = [1.5f32, -2.25, 3.0e-8, f32::MAX, -0.0];
    let f32b = f32_bytes(&vals);
    let f16b: Vec<u8> = vals.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    let bf16b: Vec<u8> = vals.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
    for pad in 0..4 {
        let header = format!(
            r#"{{"a":{{"dtype":"F32","shape":[5],"data_offsets":[0,20]}},"b":{{"dtype":"F16","shape":[5],"data_offsets":[20,30]}},"c":{{"dtype":"BF16","shape":[5],"data_offsets":[30,40]}}}}{}"#,
            " ".repeat(pad)
        );
        let mut data = f32b.clone();
        data.extend(&f16b);
        data.extend(&bf16b);
        let (_d, ck) = open_bytes(&raw(&header, &data));
        let ck = ck.unwrap();
        assert_eq!(ck.load_f32(&WeightSpec::new("a", [5])).unwrap(), vals);
        let want: Vec<f32> = vals.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        assert_eq!(ck.load_f32(&WeightSpec::new("b", [5])).unwrap(), want);
        let want: Vec<f32> = vals.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
        assert_eq!(ck.load_f32(&WeightSpec::new("c", [5])).unwrap(), want);
    }
}

#[test]
fn truncated_files_fail_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(sample(dir.path())).unwrap();
    let header_len = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let cuts = [
        0,
        1,
        7,
        8,
        9,
        8 + header_len / 2,
        8 + header_len - 1,
        8 + header_len,
        8 + header_len + 5,
        full.len() - 1,
    ];
    for cut in cuts {
        let (d, r) = open_bytes(&full[..cut]);
        let e = r.expect_err(&format!("cut at {cut} should fail"));
        let m = e.to_string();
        assert!(
            m.contains(&d.path().join("model.safetensors").display().to_string()),
            "cut {cut}: {m}"
        );
        if cut < 8 {
            assert!(matches!(e, CheckpointError::TooShort { .. }), "cut {cut}: {m}");
        } else if cut < 8 + header_len {
            assert!(matches!(e, CheckpointError::HeaderBeyondFile { .. }), "cut {cut}: {m}");
            assert!(m.contains("truncated"), "{m}");
        }
    }
    // Trailing bytes are refused too.
    let mut long = full.clone();
    long.extend([0u8; 3]);
    let (_d, r) = open_bytes(&long);
    assert!(r.unwrap_err().to_string().contains("model.safetensors"));
}

#[test]
fn huge_header_length_fails_without_allocating() {
    for len in [1u64 << 60, u64::MAX, 100_000_001] {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend(b"{}");
        let (_d, r) = open_bytes(&bytes);
        let e = r.unwrap_err();
        assert!(matches!(e, CheckpointError::HeaderTooLarge { .. }), "{e}");
        assert!(e.to_string().contains("model.safetensors"), "{e}");
    }
    // Within the limit but past the end of the file.
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend(b"{}");
    let (_d, r) = open_bytes(&bytes);
    assert!(matches!(
        r.unwrap_err(),
        CheckpointError::HeaderBeyondFile { header_len: 1000, file_len: 10, .. }
    ));
}

#[test]
fn header_not_json_or_malformed() {
    for header in ["hello world!", "[1, 2, 3]", "{\"a\": ", "\u{feff}{}", "{\"a\":1}"] {
        let (_d, r) = open_bytes(&raw(header, &[]));
        let e = r.expect_err(header);
        let m = e.to_string();
        assert!(m.contains("model.safetensors"), "{header}: {m}");
    }
    let (_d, r) = open_bytes(&raw("hello world!", &[]));
    assert!(matches!(r.unwrap_err(), CheckpointError::HeaderNotJson { .. }));
    // Invalid UTF-8 in the header.
    let mut bytes = 4u64.to_le_bytes().to_vec();
    bytes.extend([0xff, 0xfe, b'{', b'}']);
    let (_d, r) = open_bytes(&bytes);
    assert!(r.unwrap_err().to_string().contains("model.safetensors"));

    let cases = [
        (r#"{"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}"#, "unknown dtype `F4`"),
        (r#"{"w":{"shape":[2],"data_offsets":[0,8]}}"#, "dtype"),
        (r#"{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, "shape"),
        (r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}}"#, "data_offsets"),
        (r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, "needs 12"),
        (r#"{"w":"F32"}"#, "expected an object"),
    ];
    for (header, needle) in cases {
        let (_d, r) = open_bytes(&raw(header, &[0; 8]));
        let e = r.expect_err(header);
        let m = e.to_string();
        assert!(matches!(e, CheckpointError::BadEntry { .. }), "{header}: {m}");
        assert!(
            m.contains(needle) && m.contains("`w`") && m.contains("model.safetensors"),
            "{header}: {m}"
        );
    }
}

#[test]
fn offsets_out_of_bounds_or_inconsistent() {
    let cases = [
        r#"{"w":{"dtype":"F32","shape":[250],"data_offsets":[0,1000]}}"#,
        r#"{"w":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,18446744073709551615]}}"#,
        r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]}}"#,
        r#"{"w":{"dtype":"U8","shape":[0],"data_offsets":[9,9]}}"#,
    ];
    for header in cases {
        let (_d, r) = open_bytes(&raw(header, &[0; 8]));
        let e = r.expect_err(header);
        assert!(matches!(e, CheckpointError::OffsetsOutOfBounds { .. }), "{header}: {e}");
        let m = e.to_string();
        assert!(m.contains("`w`") && m.contains("model.safetensors"), "{m}");
    }
    // Reversed offsets say so (they were reported as a truncated file).
    let (_d, r) =
        open_bytes(&raw(r#"{"w":{"dtype":"U8","shape":[4],"data_offsets":[8,4]}}"#, &[0; 8]));
    let m = r.expect_err("reversed").to_string();
    assert!(m.contains("`w`") && m.contains("end before they start"), "{m}");
    // A non-string metadata value names the field.
    let (_d, r) = open_bytes(&raw(r#"{"__metadata__":{"format":1}}"#, &[]));
    let m = r.expect_err("metadata").to_string();
    assert!(m.contains("`__metadata__` must be an object of string values"), "{m}");
    // In bounds but with a gap or an overlap: the safetensors crate's validation refuses it.
    for header in [
        r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#,
        r#"{"a":{"dtype":"U8","shape":[6],"data_offsets":[0,6]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#,
    ] {
        let (_d, r) = open_bytes(&raw(header, &[0; 8]));
        let m = r.expect_err(header).to_string();
        assert!(m.contains("model.safetensors") && m.contains("gap or an overlap"), "{m}");
    }
}

fn write_index(dir: &Path, body: &str) {
    std::fs::write(dir.join("model.safetensors.index.json"), body).unwrap();
}

fn two_shards(dir: &Path) {
    write(
        &dir.join("model-00001-of-00002.safetensors"),
        &[T("a", Dtype::F32, vec![2], f32_bytes(&[1., 2.]))],
    );
    write(
        &dir.join("model-00002-of-00002.safetensors"),
        &[T("b", Dtype::F16, vec![1], vec![0x00, 0x3c])],
    );
}

#[test]
fn sharded_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    two_shards(dir.path());
    write_index(
        dir.path(),
        r#"{"metadata":{"total_size":10},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#,
    );
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.names(), ["a", "b"]);
    assert_eq!(ck.files().len(), 2);
    assert_eq!(ck.get("b").unwrap().file, dir.path().join("model-00002-of-00002.safetensors"));
    assert_eq!(ck.load_f32(&WeightSpec::new("a", [2])).unwrap(), [1., 2.]);
    assert_eq!(ck.load_f32(&WeightSpec::new("b", [1])).unwrap(), [1.]);
    assert_eq!(ck.param_count(), 3);
}

#[test]
fn sharded_checkpoint_errors() {
    let dir = tempfile::tempdir().unwrap();
    two_shards(dir.path());
    let s1 = "model-00001-of-00002.safetensors";
    let cases: Vec<(String, &str)> = vec![
        (
            format!(r#"{{"weight_map":{{"a":"{s1}","b":"model-00003-of-00003.safetensors"}}}}"#),
            "does not exist",
        ),
        (format!(r#"{{"weight_map":{{"a":"{s1}","c":"{s1}"}}}}"#), "has no such tensor"),
        (
            r#"{"weight_map":{"a":"../model-00001-of-00002.safetensors"}}"#.into(),
            "not a plain file name",
        ),
        (r#"{"weight_map":{"a":"/etc/passwd"}}"#.into(), "not a plain file name"),
        (r#"{"weight_map":{"a":"sub/x.safetensors"}}"#.into(), "not a plain file name"),
        (r#"{"weight_map":{"a":".."}}"#.into(), "not a plain file name"),
        (r#"{"weight_map":{"a":3}}"#.into(), "not a file name string"),
        (r#"{"weight_map":{}}"#.into(), "empty"),
        (r#"{"metadata":{}}"#.into(), "weight_map"),
        ("not json".into(), "not valid JSON"),
    ];
    for (body, needle) in cases {
        write_index(dir.path(), &body);
        let e = open_err(dir.path());
        let m = e.to_string();
        assert!(m.contains(needle), "{body}: {m}");
        assert!(m.contains("model.safetensors.index.json"), "{body}: {m}");
    }
    write_index(dir.path(), &format!(r#"{{"weight_map":{{"a":"{s1}","c":"{s1}"}}}}"#));
    let e = open_err(dir.path());
    assert!(matches!(&e, CheckpointError::NotInShard { tensor, .. } if tensor == "c"), "{e}");
    write_index(dir.path(), r#"{"weight_map":{"a":"../x.safetensors"}}"#);
    assert!(matches!(open_err(dir.path()), CheckpointError::BadShardName { .. }));
}

#[test]
fn missing_checkpoint_gives_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_err(dir.path());
    let m = e.to_string();
    assert!(matches!(e, CheckpointError::NotFound { .. }));
    assert!(m.contains("model.safetensors.index.json") && m.contains("llama-family"), "{m}");
    std::fs::write(dir.path().join("pytorch_model.bin"), b"x").unwrap();
    assert!(open_err(dir.path()).to_string().contains("convert them to safetensors"));
    let e = open_err(&dir.path().join("nope"));
    assert!(e.to_string().contains("does not exist"), "{e}");
}

/// Not a benchmark, a guard: converting 4 Mi elements of each float type should take well
/// under a second in the test profile (amk-ir builds with opt-level 3).
#[test]
fn conversion_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let n = 1 << 22;
    let b16: Vec<u8> = (0..n).flat_map(|i: usize| ((i as u16) & 0x3bff).to_le_bytes()).collect();
    let b32: Vec<u8> = (0..n).flat_map(|i: usize| (i as f32).to_le_bytes()).collect();
    write(
        &dir.path().join("model.safetensors"),
        &[
            T("h", Dtype::F16, vec![n], b16.clone()),
            T("b", Dtype::BF16, vec![n], b16),
            T("f", Dtype::F32, vec![n], b32),
        ],
    );
    let ck = Checkpoint::open(dir.path()).unwrap();
    let mut buf = Vec::new();
    for name in ["h", "b", "f"] {
        let spec = WeightSpec::new(name, [n]);
        ck.load_f32_into(&spec, &mut buf).unwrap(); // warm the page cache
        let t = std::time::Instant::now();
        ck.load_f32_into(&spec, &mut buf).unwrap();
        let dt = t.elapsed();
        let bytes = ck.get(name).unwrap().nbytes as f64;
        eprintln!(
            "{name}: {:.1} MB in {dt:?} = {:.0} MB/s",
            bytes / 1e6,
            bytes / 1e6 / dt.as_secs_f64()
        );
        assert_eq!(buf.len(), n);
        assert!(dt.as_secs_f64() < 2.0, "{name} took {dt:?}");
    }
}

#[test]
fn checkpoint_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Checkpoint>();
    assert_send_sync::<CheckpointError>();
}

/// A weight holding a NaN or an infinity is refused by the loader backends use, naming the
/// tensor, the element and the file; `load_f32` itself converts every bit pattern exactly.
#[test]
fn non_finite_weights_are_refused() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        write(&p, &[T("w", Dtype::F32, vec![4], f32_bytes(&[1.0, 2.0, bad, 4.0]))]);
        let ck = Checkpoint::open(dir.path()).unwrap();
        let spec = WeightSpec::new("w", [4]);
        assert!(ck.load_f32(&spec).is_ok());
        let e = ck.load_weight(&spec).unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, CheckpointError::NonFinite { index: 2, .. }), "{m}");
        assert!(
            m.contains("`w`") && m.contains("element 2") && m.contains("model.safetensors"),
            "{m}"
        );
    }
}
