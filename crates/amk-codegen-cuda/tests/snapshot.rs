//! Golden-file (snapshot) tests of the generated `megakernel.cu` and `launch.ron` for the tiny
//! synthetic model lowered onto 4 workers.
//!
//! The goldens live in `crates/amk-codegen-cuda/tests/golden/`. After an intended change (to
//! the encoder, the lowering, or the device code in `kernels/`, which the source embeds),
//! regenerate them with
//!
//! ```text
//! AMK_UPDATE_GOLDEN=1 cargo test -p amk-codegen-cuda --test snapshot
//! ```
//!
//! and review the diff.

mod common;

use amk_codegen_cuda::{generate, write_artifacts, CodegenOptions, LaunchSpec, WeightDType};
use amk_schedule::ops::TaskOp;
use amk_schedule::schedule::BufferId;
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `actual` with the golden file `name`, or rewrites it under `AMK_UPDATE_GOLDEN=1`.
fn check_golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("AMK_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("golden dir")).expect("create golden dir");
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read golden {}: {e}; create it with \
             `AMK_UPDATE_GOLDEN=1 cargo test -p amk-codegen-cuda --test snapshot`",
            path.display()
        )
    });
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the generated text, first at line {}:\n  golden:    {:?}\n  generated: {:?}\n\
             if the change is intended, run \
             `AMK_UPDATE_GOLDEN=1 cargo test -p amk-codegen-cuda --test snapshot` and review the diff",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line),
        );
    }
}

#[test]
fn tiny_bf16_artifacts_match_the_goldens() {
    let v = common::tiny();
    let g = generate(&v, &CodegenOptions::default()).expect("generates");
    let dir = tempfile::tempdir().expect("tempdir");
    write_artifacts(&g, dir.path()).expect("write artifacts");
    let source = std::fs::read_to_string(dir.path().join("megakernel.cu")).expect("source");
    let launch = std::fs::read_to_string(dir.path().join("launch.ron")).expect("launch");
    assert_eq!(source, g.source);
    assert_eq!(LaunchSpec::from_ron(&launch).expect("launch.ron parses"), g.launch);
    check_golden("tiny_w4_bf16/megakernel.cu", &source);
    check_golden("tiny_w4_bf16/launch.ron", &launch);
}

#[test]
fn tiny_f32_launch_matches_the_golden() {
    let v = common::tiny();
    let options = CodegenOptions { weight_dtype: WeightDType::F32, ..Default::default() };
    let g = generate(&v, &options).expect("generates");
    check_golden("tiny_w4_f32/launch.ron", &g.launch.to_ron());
    // The f32 source differs from the bf16 one only in AMK_WEIGHT_BF16 and the size of the
    // weight-staging slots (f32 tiles are twice as large).
    let bf16 = generate(&v, &CodegenOptions::default()).expect("generates").source;
    let without_stage = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.starts_with("#define AMK_STAGE_BYTES "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        without_stage(&g.source.replacen(
            "#define AMK_WEIGHT_BF16 0\n",
            "#define AMK_WEIGHT_BF16 1\n",
            1
        )),
        without_stage(&bf16)
    );
}

#[test]
fn the_prologue_holds_the_schedules_numbers() {
    let v = common::tiny();
    let g = generate(&v, &CodegenOptions::default()).expect("generates");
    let expected = format!(
        "#define AMK_WEIGHT_BF16 1\n#define AMK_WEIGHT_INT8 0\n#define AMK_WEIGHT_MIXED 0\n#define AMK_FMTS_PROJECTION 0\n#define AMK_FMTS_GATED 0\n#define AMK_FMTS_HEAD_OUT 0\n#define AMK_FMTS_ATTENTION_OUT 0\n#define AMK_FMTS_QUERY_ATTENTION 0\n#define AMK_FMTS_HEAD_ARGMAX 0\n#define AMK_FMTS_EMBED 0\n#define AMK_BLOCK_THREADS 512\n\
         #define AMK_MAX_COLS 64\n\
         #define AMK_MAX_HEAD_DIM 16\n#define AMK_MLP_ROWS 16\n#define AMK_WORKERS 4\n#define AMK_TASKS {}\n\
         #define AMK_COUNTERS {}\n",
        v.tasks.len(),
        v.counters.len()
    );
    assert!(g.source.contains(&expected), "{}", &g.source[..600.min(g.source.len())]);
    // The device code follows, verbatim.
    for (name, text) in amk_codegen_cuda::KERNEL_FILES {
        assert!(g.source.contains(&format!("// ---- kernels/{name} ----\n")));
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).expect("non-empty file");
        assert!(g.source.contains(last), "{name} is embedded");
    }
    assert!(g.source.contains("amk_megakernel("));
}

/// Int8 weights: the source differs from bf16's only in the dtype defines and the staging
/// slot size; every matrix operand's scales word points past its values, 16-byte aligned,
/// and the buffer holds its rows' scales; vectors stay f32.
#[test]
fn tiny_int8_launch_matches_the_golden() {
    let v = common::tiny();
    let options = CodegenOptions { weight_dtype: WeightDType::Int8, ..Default::default() };
    let g = generate(&v, &options).expect("generates");
    check_golden("tiny_w4_int8/launch.ron", &g.launch.to_ron());
    let bf16 = generate(&v, &CodegenOptions::default()).expect("generates").source;
    let defines_only = |s: &str| -> String {
        s.lines()
            .filter(|l| {
                !l.starts_with("#define AMK_STAGE_BYTES ") && !l.starts_with("#define AMK_WEIGHT_")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(g.source.contains("#define AMK_WEIGHT_BF16 0\n#define AMK_WEIGHT_INT8 1\n"));
    assert_eq!(defines_only(&g.source), defines_only(&bf16));

    let s = v.schedule();
    let t = &g.tables;
    let mut matrices = 0;
    for (i, b) in s.buffers.iter().enumerate() {
        match t.int8_matrices[i] {
            Some(m) => {
                matrices += 1;
                let n = b.bytes / 4;
                assert_eq!(m.rows * u64::from(m.cols), n, "{}", b.name);
                assert_eq!(m.scales_offset, n.div_ceil(16) * 16, "{}", b.name);
                assert_eq!(t.buffer_bytes[i], m.scales_offset + 4 * m.rows, "{}", b.name);
            }
            None => assert_eq!(t.buffer_bytes[i], b.bytes, "{} stays f32", b.name),
        }
    }
    // Embedding (tied LM head), and per layer q, k, v, o, gate, up, down.
    let layers = s.buffers.iter().filter(|b| b.name.ends_with(".k_cache")).count();
    assert_eq!(matrices, 1 + 7 * layers);
    let by_task = common::descriptors_by_task(s, &t.tasks, &t.run_start);
    for (id, task) in s.tasks.iter().enumerate() {
        let d = by_task[id].expect("descriptor");
        let check = |buffer: BufferId, word: usize| {
            let m = t.int8_matrices[buffer.index()].expect("a matrix operand is an int8 matrix");
            assert_eq!(u64::from(d[word]), m.scales_offset, "{} word {word}", task.name);
        };
        match task.op {
            TaskOp::Embed { table, .. } => check(table, 5),
            TaskOp::Projection { weight, .. } => check(weight, 28),
            TaskOp::GatedUp { gate, up, .. } => {
                check(gate, 12);
                check(up, 13);
            }
            TaskOp::GatedMlp { gate, up, down, .. } => {
                check(gate, 12);
                check(up, 13);
                check(down, 15);
            }
            TaskOp::HeadArgmax { weight, .. } => check(weight, 13),
            _ => {}
        }
    }
}
