//! The kernel source: a prologue of numeric `#define`s, then the hand-written device code of
//! `kernels/`, embedded at compile time. Nothing from the schedule but computed numbers ever
//! reaches this text.

use std::fmt::Write;

/// The device code files concatenated after the prologue, in order: `(name, text)`. Paths are
/// relative to the workspace's `kernels/` directory.
pub const KERNEL_FILES: &[(&str, &str)] = &[
    ("abi.cuh", include_str!("../../../kernels/abi.cuh")),
    ("megakernel.cuh", include_str!("../../../kernels/megakernel.cuh")),
];

/// The numbers the prologue defines (all computed from the verified schedule and options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prologue {
    pub weight_bf16: bool,
    pub weight_int8: bool,
    /// Some matrices are int8 and others bf16 (a per-op precision plan): each task's format
    /// is then picked at run time from its descriptor.
    pub weight_mixed: bool,
    /// In a mixed kernel, the formats each task function's tasks use (the `AMK_FMTS_*`
    /// defines' order; bit 0 bf16, bit 1 int8): a function is compiled for those alone, and
    /// picks per task only when it has both (a mixed kernel compiled every function twice
    /// measured 25 us a step slower). 0 everywhere in other kernels.
    pub formats: [u8; FORMAT_KINDS],
    pub block_threads: u32,
    /// At least 1, so device array sizes stay positive.
    pub max_cols: u32,
    /// At least 1, so device array sizes stay positive.
    pub max_head_dim: u32,
    /// Most rows of a fused MLP task (0 without one): their activations follow its input.
    pub mlp_rows: u32,
    pub workers: u32,
    pub tasks: u32,
    pub counters: u32,
    /// Schedule buffers: the kernel keeps their device addresses in shared memory.
    pub buffers: u32,
    /// The most words one worker's instructions and descriptors take: the kernel copies its
    /// own into shared memory when it starts.
    pub worker_words: u32,
    /// Bytes of each of the two weight-staging slots (a multiple of 16; 0 = no staging).
    pub stage_bytes: u32,
    /// Record a timestamp before every instruction (see kernels/megakernel.cuh).
    pub trace: bool,
    /// Compile the query-attention code (`fuse_q` schedules only: other kernels stay as
    /// small as before, which their speed depends on).
    pub query_attention: bool,
    /// Compile the tagged-buffer and current-row code (`tagged` schedules only, for the same
    /// reason).
    pub tagged: bool,
    /// Compile the head-part projection code (`qkv_parts` schedules only, for the same
    /// reason).
    pub head_parts: bool,
}

/// How many task functions a mixed kernel compiles per format: the `AMK_FMTS_*` defines of
/// [`PROLOGUE_DEFINES`], in their order, say which formats each needs
/// (kernels/megakernel.cuh, `AMK_BY_FORMAT`).
pub const FORMAT_KINDS: usize = 7;

/// Names of the prologue's defines, in order.
pub const PROLOGUE_DEFINES: [&str; 24] = [
    "AMK_WEIGHT_BF16",
    "AMK_WEIGHT_INT8",
    "AMK_WEIGHT_MIXED",
    "AMK_FMTS_PROJECTION",
    "AMK_FMTS_GATED",
    "AMK_FMTS_HEAD_OUT",
    "AMK_FMTS_ATTENTION_OUT",
    "AMK_FMTS_QUERY_ATTENTION",
    "AMK_FMTS_HEAD_ARGMAX",
    "AMK_FMTS_EMBED",
    "AMK_BLOCK_THREADS",
    "AMK_MAX_COLS",
    "AMK_MAX_HEAD_DIM",
    "AMK_MLP_ROWS",
    "AMK_WORKERS",
    "AMK_TASKS",
    "AMK_COUNTERS",
    "AMK_BUFFERS",
    "AMK_WORKER_WORDS",
    "AMK_STAGE_BYTES",
    "AMK_TRACE",
    "AMK_QUERY_ATTENTION",
    "AMK_TAGGED",
    "AMK_HEAD_PARTS",
];

/// Words of shared scratch after the main area (block reductions: two words per warp).
pub(crate) const SMEM_SCRATCH_WORDS: u64 = 64;

impl Prologue {
    /// `(name, value)` of each define, in [`PROLOGUE_DEFINES`] order.
    pub fn defines(&self) -> [(&'static str, u64); 24] {
        let f = self.formats.map(u64::from);
        let values = [
            u64::from(self.weight_bf16),
            u64::from(self.weight_int8),
            u64::from(self.weight_mixed),
            f[0],
            f[1],
            f[2],
            f[3],
            f[4],
            f[5],
            f[6],
            self.block_threads.into(),
            self.max_cols.into(),
            self.max_head_dim.into(),
            self.mlp_rows.into(),
            self.workers.into(),
            self.tasks.into(),
            self.counters.into(),
            self.buffers.into(),
            self.worker_words.into(),
            self.stage_bytes.into(),
            u64::from(self.trace),
            u64::from(self.query_attention),
            u64::from(self.tagged),
            u64::from(self.head_parts),
        ];
        let mut out = [("", 0); 24];
        for (i, (name, value)) in PROLOGUE_DEFINES.iter().zip(values).enumerate() {
            out[i] = (name, value);
        }
        out
    }

    /// Dynamic shared memory the kernel needs, in bytes: `4 * AMK_SMEM_FLOATS` of
    /// `kernels/megakernel.cuh`, i.e. a main area large enough for the largest projection
    /// input (`AMK_MAX_COLS` floats, rounded up to 16 bytes) plus a fused MLP's row
    /// activations (`AMK_MLP_ROWS` floats), or attention's per-warp partials
    /// (`warps * (AMK_MAX_HEAD_DIM + 2)` floats), rounded up to 16 bytes,
    /// then 64 words of reduction scratch, one head of rows (rounded up to 16 bytes), the
    /// buffer addresses (two words each), the worker's instructions and descriptors (each
    /// rounded up to 16 bytes), then the two weight-staging slots. A unit test checks the
    /// kernel still says so.
    pub fn dynamic_smem_bytes(&self) -> u64 {
        self.base_smem_bytes() + 2 * u64::from(self.stage_bytes)
    }

    /// [`Prologue::dynamic_smem_bytes`] without the staging slots.
    pub fn base_smem_bytes(&self) -> u64 {
        let warps = u64::from(self.block_threads / 32);
        let hd = u64::from(self.max_head_dim);
        let attn = warps * (hd + 2);
        // The projection input's planes span the longest row rounded up to 16 columns.
        let main = (u64::from(self.max_cols).div_ceil(16) * 16 + u64::from(self.mlp_rows))
            .max(attn)
            .div_ceil(4)
            * 4;
        let buffers = (2 * u64::from(self.buffers)).div_ceil(4) * 4;
        let program = u64::from(self.worker_words);
        // The staging slots start on a 128-byte boundary (see the kernel's layout).
        4 * (main + SMEM_SCRATCH_WORDS + hd.div_ceil(4) * 4 + buffers + program).div_ceil(32) * 32
    }
}

/// The whole `megakernel.cu`: prologue, then each of [`KERNEL_FILES`].
pub(crate) fn render(p: &Prologue) -> String {
    let body: usize = KERNEL_FILES.iter().map(|(_, t)| t.len() + 64).sum();
    let mut out = String::with_capacity(1024 + body);
    out.push_str(
        "// megakernel.cu: generated by amk-codegen-cuda; do not edit (regenerate it instead).\n\
         // The prologue holds only numbers computed from a verified schedule; the device code\n\
         // after it is kernels/abi.cuh and kernels/megakernel.cuh, embedded verbatim. The schedule\n\
         // itself reaches the kernel as tables (instructions and task descriptors, see abi.cuh).\n",
    );
    for (name, value) in p.defines() {
        let _ = writeln!(out, "#define {name} {value}");
    }
    for (name, text) in KERNEL_FILES {
        let _ = writeln!(out, "\n// ---- kernels/{name} ----");
        for line in text.lines() {
            out.push_str(&inline_line(line));
            out.push('\n');
        }
    }
    out
}

/// One line of an embedded file: `#pragma once` and `#include "x"` of another embedded file
/// become comments, since every embedded file is already part of this one translation unit
/// (NVRTC gets no include path for them).
fn inline_line(line: &str) -> std::borrow::Cow<'_, str> {
    let t = line.trim();
    if t == "#pragma once" {
        return "// #pragma once (this file is inlined)".into();
    }
    if let Some(rest) = t.strip_prefix("#include") {
        let target = rest.trim().trim_matches('"');
        let quoted = rest.trim().starts_with('"');
        let embedded = KERNEL_FILES.iter().any(|(n, _)| *n == target);
        if quoted && embedded {
            return format!("// #include \"{target}\" (inlined in this file)").into();
        }
    }
    line.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prologue() -> Prologue {
        Prologue {
            weight_bf16: true,
            weight_int8: false,
            weight_mixed: false,
            formats: [0; FORMAT_KINDS],
            block_threads: 512,
            max_cols: 160,
            max_head_dim: 16,
            mlp_rows: 0,
            workers: 4,
            tasks: 7,
            counters: 3,
            buffers: 5,
            worker_words: 70,
            stage_bytes: 0,
            trace: false,
            query_attention: false,
            tagged: false,
            head_parts: false,
        }
    }

    #[test]
    fn the_format_defines_follow_the_weight_ones_in_kind_order() {
        // encode::kind_formats fills them in this order.
        let kinds: Vec<&str> = PROLOGUE_DEFINES[3..3 + FORMAT_KINDS].to_vec();
        let expected = ["PROJECTION", "GATED", "HEAD_OUT", "ATTENTION_OUT", "QUERY_ATTENTION"]
            .into_iter()
            .chain(["HEAD_ARGMAX", "EMBED"])
            .map(|k| format!("AMK_FMTS_{k}"))
            .collect::<Vec<_>>();
        assert_eq!(kinds, expected);
        assert!(!PROLOGUE_DEFINES[3 + FORMAT_KINDS].starts_with("AMK_FMTS_"));
    }

    #[test]
    fn prologue_is_numbers_only() {
        let src = render(&prologue());
        let defines: Vec<&str> = src
            .lines()
            .take_while(|l| !l.starts_with("// ---- kernels/"))
            .filter(|l| l.starts_with("#define"))
            .collect();
        assert_eq!(defines.len(), PROLOGUE_DEFINES.len());
        for (line, name) in defines.iter().zip(PROLOGUE_DEFINES) {
            let mut parts = line.split_whitespace();
            assert_eq!(parts.next(), Some("#define"));
            assert_eq!(parts.next(), Some(name));
            let value = parts.next().unwrap_or_default();
            assert!(value.bytes().all(|b| b.is_ascii_digit()), "{line}");
            assert_eq!(parts.next(), None);
        }
        assert!(src.contains(
            "#define AMK_WEIGHT_BF16 1\n#define AMK_WEIGHT_INT8 0\n#define AMK_WEIGHT_MIXED 0\n#define AMK_FMTS_PROJECTION 0\n#define AMK_FMTS_GATED 0\n#define AMK_FMTS_HEAD_OUT 0\n#define AMK_FMTS_ATTENTION_OUT 0\n#define AMK_FMTS_QUERY_ATTENTION 0\n#define AMK_FMTS_HEAD_ARGMAX 0\n#define AMK_FMTS_EMBED 0\n#define AMK_BLOCK_THREADS 512\n"
        ));
    }

    #[test]
    fn smem_matches_the_kernels_formula() {
        // 512 threads = 16 warps: attention needs 16 * 18 = 288 floats > 160 columns;
        // then 64 words of scratch, one 16-float head, 5 buffer addresses (10 words, 12
        // rounded) and 70 program words, the sum rounded up to 32 words (128 bytes).
        let base = |words: u64| 4 * words.div_ceil(32) * 32;
        assert_eq!(prologue().dynamic_smem_bytes(), base(288 + 64 + 16 + 12 + 70));
        assert_eq!(prologue().dynamic_smem_bytes() % 128, 0);
        let wide = Prologue { max_cols: 2049, ..prologue() };
        assert_eq!(wide.dynamic_smem_bytes(), base(2064 + 64 + 16 + 12 + 70));
        let mlp = Prologue { mlp_rows: 130, ..prologue() };
        assert_eq!(mlp.dynamic_smem_bytes(), base(292 + 64 + 16 + 12 + 70));
        let staged = Prologue { stage_bytes: 4096, ..prologue() };
        assert_eq!(staged.dynamic_smem_bytes(), base(288 + 64 + 16 + 12 + 70) + 2 * 4096);
    }

    /// The shared-memory layout defines, verbatim from kernels/megakernel.cuh: when the
    /// kernel changes them, update `Prologue::dynamic_smem_bytes` and this test together.
    #[test]
    fn smem_formula_mirrors_megakernel_cuh() {
        let (_, mk) = KERNEL_FILES.iter().find(|(n, _)| *n == "megakernel.cuh").expect("embedded");
        let normalized: Vec<String> =
            mk.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
        for expected in [
            "#define AMK_WARPS (AMK_BLOCK_THREADS / 32)",
            "#define AMK_ATTN_FLOATS (AMK_WARPS * (AMK_MAX_HEAD_DIM + 2))",
            "#define AMK_SMEM_X_ACT ((AMK_MAX_COLS + 15) / 16 * 16 + AMK_MLP_ROWS)",
            "#define AMK_SMEM_MAIN ((((AMK_SMEM_X_ACT > AMK_ATTN_FLOATS) ? AMK_SMEM_X_ACT : AMK_ATTN_FLOATS) + 3) / 4 * 4)",
            "#define AMK_SMEM_HEAD_OFFSET (AMK_SMEM_MAIN + 64)",
            "#define AMK_SMEM_BUFFERS_OFFSET (AMK_SMEM_HEAD_OFFSET + (AMK_MAX_HEAD_DIM + 3) / 4 * 4)",
            "#define AMK_SMEM_PROGRAM_OFFSET (AMK_SMEM_BUFFERS_OFFSET + (2 * AMK_BUFFERS + 3) / 4 * 4)",
            "#define AMK_SMEM_STAGE_OFFSET ((AMK_SMEM_PROGRAM_OFFSET + AMK_WORKER_WORDS + 31) / 32 * 32)",
            "#define AMK_SMEM_FLOATS (AMK_SMEM_STAGE_OFFSET + 2 * (AMK_STAGE_BYTES / 4))",
        ] {
            assert!(
                normalized.iter().any(|l| l == expected),
                "kernels/megakernel.cuh no longer says `{expected}`: update \
                 Prologue::dynamic_smem_bytes to its new shared-memory layout"
            );
        }
    }

    #[test]
    fn kernel_files_do_not_define_prologue_numbers_unguarded() {
        for (name, text) in KERNEL_FILES {
            let lines: Vec<&str> = text.lines().map(str::trim).collect();
            for (i, line) in lines.iter().enumerate() {
                for def in PROLOGUE_DEFINES {
                    let defines_it = line
                        .strip_prefix("#define")
                        .is_some_and(|r| r.split_whitespace().next() == Some(def));
                    let guarded = i > 0 && lines[i - 1] == format!("#ifndef {def}");
                    assert!(
                        !defines_it || guarded,
                        "kernels/{name} defines {def}, which the generated prologue defines"
                    );
                }
            }
        }
    }

    #[test]
    fn embedded_includes_and_pragma_once_are_inlined() {
        assert_eq!(inline_line("#pragma once"), "// #pragma once (this file is inlined)");
        assert_eq!(
            inline_line("  #include \"abi.cuh\""),
            "// #include \"abi.cuh\" (inlined in this file)"
        );
        assert_eq!(inline_line("#include <cuda_bf16.h>"), "#include <cuda_bf16.h>");
        assert_eq!(inline_line("#include \"other.cuh\""), "#include \"other.cuh\"");
        let src = render(&prologue());
        assert!(!src.lines().any(|l| l.trim() == "#pragma once"));
    }
}
