//! Shared by the integration tests: schedules lowered from synthetic models, and a decoder of
//! the device tables written from `kernels/abi.cuh` independently of the encoder.
#![allow(dead_code)]

use amk_ir::synth::{write_checkpoint, SynthSpec};
use amk_schedule::ops::{CurrentRow, HeadNorm, HeadPart, ProjInput, ProjOutput, RopeSpec, TaskOp};
use amk_schedule::schedule::{BufferId, CounterId, Instr, Region, Schedule, TaskId};
use amk_schedule::ScheduleConfig;
use amk_verify::{LaunchFacts, VerifiedSchedule};

/// The launch facts of an H100 SXM, one block per SM.
pub const FACTS: LaunchFacts = LaunchFacts { sm_count: 132, blocks_per_sm: 1 };

/// A synthetic checkpoint of `spec`, opened; it lives as long as the directory.
pub fn synth_model(spec: &SynthSpec) -> (tempfile::TempDir, amk_ir::Model) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_checkpoint(spec, dir.path()).expect("synthetic checkpoint");
    let model = amk_ir::Model::open(dir.path(), &mut |_| {}).expect("open the synthetic model");
    (dir, model)
}

/// The schedule of `spec` lowered onto `workers` workers (not yet verified).
pub fn lowered(spec: &SynthSpec, workers: u32) -> Schedule {
    let (_dir, model) = synth_model(spec);
    let config = ScheduleConfig { workers, ..Default::default() };
    amk_schedule::lower(&model.graph, &config).expect("lower")
}

/// `s`, verified.
pub fn verified(s: &Schedule) -> VerifiedSchedule {
    amk_verify::verify(s, &FACTS).unwrap_or_else(|e| panic!("the schedule verifies: {e:?}"))
}

/// The tiny synthetic model on 4 workers, verified.
pub fn tiny() -> VerifiedSchedule {
    verified(&lowered(&SynthSpec::tiny(), 4))
}

// ---- an independent decoder of abi.cuh's tables ----

const NONE: u32 = 0xFFFF_FFFF;
/// Words per task descriptor.
pub const WORDS: usize = 45;

/// Each task's descriptor, by task id, found through the run-ordered table: worker `w`'s
/// `k`-th `Run` reads descriptor `run_start[w] + k`.
pub fn descriptors_by_task<'a>(
    s: &Schedule,
    tasks: &'a [u32],
    run_start: &[u32],
) -> Vec<Option<&'a [u32]>> {
    assert_eq!(run_start.len(), s.workers.len() + 1);
    assert_eq!(run_start.last().map(|&x| x as usize * WORDS), Some(tasks.len()));
    let mut out = vec![None; s.tasks.len()];
    for (w, worker) in s.workers.iter().enumerate() {
        let mut k = run_start[w] as usize;
        for instr in &worker.instrs {
            if let Instr::Run(t) = instr {
                out[t.index()] = Some(&tasks[WORDS * k..WORDS * (k + 1)]);
                k += 1;
            }
        }
        assert_eq!(k, run_start[w + 1] as usize, "worker {w}'s descriptors");
    }
    out
}

/// Worker programs, decoded from `program` and `worker_start`.
pub fn decode_program(program: &[u32], worker_start: &[u32]) -> Vec<Vec<Instr>> {
    assert_eq!(program.len() % 2, 0, "2 words per instruction");
    let n = program.len() / 2;
    assert_eq!(worker_start.first(), Some(&0));
    assert_eq!(worker_start.last().map(|&x| x as usize), Some(n));
    worker_start
        .windows(2)
        .map(|w| {
            assert!(w[0] <= w[1], "worker_start is sorted");
            let mut runs = 0;
            (w[0] as usize..w[1] as usize)
                .map(|i| {
                    let (w0, w1) = (program[2 * i], program[2 * i + 1]);
                    let (op, id) = (w0 >> 28, w0 & 0x0FFF_FFFF);
                    match op {
                        0 => {
                            assert_eq!(
                                w1, runs,
                                "a Run's word 1 is its index among the worker's runs"
                            );
                            runs += 1;
                            Instr::Run(TaskId(id))
                        }
                        1 => {
                            assert_eq!(w1, 0, "Signal has no threshold");
                            Instr::Signal(CounterId(id))
                        }
                        2 => Instr::Wait { counter: CounterId(id), at_least: w1 },
                        _ => panic!("unknown opcode {op} at instruction {i}"),
                    }
                })
                .collect()
        })
        .collect()
}

fn opt(word: u32) -> Option<BufferId> {
    (word != NONE).then_some(BufferId(word))
}

fn input(d: &[u32]) -> ProjInput {
    match d[1] {
        0 => {
            assert_eq!((d[4], d[5]), (NONE, 0), "a vector input has no norm");
            ProjInput::Vector { buffer: BufferId(d[2]), len: d[3] }
        }
        1 => ProjInput::RmsNormed {
            buffer: BufferId(d[2]),
            len: d[3],
            weight: BufferId(d[4]),
            eps: f32::from_bits(d[5]),
        },
        2 => {
            assert_eq!(d[3] % d[5], 0, "attention partials cover whole heads: {d:?}");
            ProjInput::AttnPartials {
                buffer: BufferId(d[2]),
                heads: d[3] / d[5],
                head_dim: d[5],
                parts: d[4],
                current: (d[32] != 0).then(|| CurrentRow {
                    q: BufferId(d[30]),
                    kv: BufferId(d[31]),
                    kv_heads: d[32],
                }),
            }
        }
        k => panic!("unknown input kind {k}"),
    }
}

/// One task descriptor (45 words), decoded back to the op it encodes; also checks that every
/// word the kind does not use is 0.
pub fn decode_task(d: &[u32]) -> TaskOp {
    assert_eq!(d.len(), WORDS);
    if d[0] != 3 && d[0] != 11 {
        assert_eq!(&d[30..33], &[0, 0, 0], "a current row only on projection inputs: {d:?}");
    }
    let (op, used) = match d[0] {
        1 => (
            TaskOp::Copy {
                src: Region::new(BufferId(d[1]), d[2].into(), d[5].into()),
                dst: Region::new(BufferId(d[3]), d[4].into(), d[5].into()),
            },
            6,
        ),
        14 => {
            assert_eq!((d[1], d[2]), (0, 0), "a zero reads no source: {d:?}");
            (TaskOp::Zero { dst: Region::new(BufferId(d[3]), d[4].into(), d[5].into()) }, 6)
        }
        2 => (
            TaskOp::Embed {
                table: BufferId(d[1]),
                hidden: d[2],
                io: BufferId(d[3]),
                out: BufferId(d[4]),
            },
            5,
        ),
        3 => {
            let llama3 = match d[23] {
                0 => {
                    assert_eq!(&d[24..28], &[0, 0, 0, 0], "no llama3, no llama3 words");
                    None
                }
                1 => Some(amk_ir::config::Llama3RopeScaling {
                    factor: f32::from_bits(d[24]),
                    low_freq_factor: f32::from_bits(d[25]),
                    high_freq_factor: f32::from_bits(d[26]),
                    original_max_position_embeddings: f32::from_bits(d[27]),
                }),
                f => panic!("llama3 flag {f}"),
            };
            let head_norm = (d[21] != NONE).then(|| HeadNorm {
                weight: BufferId(d[21]),
                head_dim: d[12],
                eps: f32::from_bits(d[22]),
            });
            let rope = match d[11] {
                0 => {
                    let hd = if head_norm.is_some() { 0 } else { d[12] };
                    assert_eq!(&[hd, d[13], d[14]], &[0, 0, 0], "no rope, no rope words");
                    assert!(llama3.is_none(), "llama3 words without rope");
                    None
                }
                1 => Some(RopeSpec {
                    head_dim: d[12],
                    theta: f64::from_bits(u64::from(d[13]) | u64::from(d[14]) << 32),
                    llama3,
                }),
                r => panic!("rope flag {r}"),
            };
            if head_norm.is_none() {
                assert_eq!(d[22], 0, "no head norm, no eps");
            }
            if d[16] != 3 {
                assert_eq!(d[29], NONE, "a copy buffer only for accumulate-and-copy");
            }
            let output = match d[16] {
                0 | 1 | 3 | 4 => {
                    assert_eq!(&d[19..21], &[0, 0], "cache words only for a cache row");
                    let (buffer, offset) = (BufferId(d[17]), d[18]);
                    match d[16] {
                        // A store into a tagged buffer (value and tag per element).
                        0 | 4 => ProjOutput::Store { buffer, offset },
                        1 => ProjOutput::Accumulate { buffer, offset },
                        _ => ProjOutput::AccumulateCopy { buffer, offset, copy: BufferId(d[29]) },
                    }
                }
                2 => ProjOutput::CacheRow {
                    cache: BufferId(d[17]),
                    kv_head: d[18],
                    head_dim: d[19],
                    max_positions: d[20],
                },
                k => panic!("output kind {k}"),
            };
            let head_part = match d[34] {
                0 => {
                    assert_eq!(d[33], 0, "no head part, no part index: {d:?}");
                    None
                }
                parts => Some(HeadPart { part: d[33], parts }),
            };
            (
                TaskOp::Projection {
                    input: input(d),
                    weight: BufferId(d[6]),
                    bias: opt(d[7]),
                    first_row: d[8],
                    rows: d[9],
                    cols: d[10],
                    head_norm,
                    head_part,
                    rope,
                    io: BufferId(d[15]),
                    output,
                },
                35,
            )
        }
        11 => {
            // A query attention: the projection of its query head, then attention words.
            let mut p = d.to_vec();
            p[0] = 3;
            let q_out = (d[17] != NONE).then_some(BufferId(d[17]));
            if q_out.is_none() {
                p[17] = 0; // the decoder's projection needs a buffer: any will do
            }
            p[33..].iter_mut().for_each(|w| *w = 0);
            let TaskOp::Projection {
                input,
                weight,
                bias,
                first_row,
                cols,
                head_norm,
                rope,
                io,
                ..
            } = decode_task(&p)
            else {
                unreachable!()
            };
            let mut a = vec![0u32; WORDS];
            a[0] = 5;
            a[1..13].copy_from_slice(&d[33..45]);
            assert_eq!(a[1], NONE, "a query attention reads no query buffer: {d:?}");
            a[1] = 0;
            let TaskOp::Attention {
                head,
                kv_head,
                head_dim,
                max_positions,
                window,
                k_cache,
                v_cache,
                io: io2,
                part,
                parts,
                out,
                ..
            } = decode_task(&a)
            else {
                unreachable!()
            };
            assert_eq!(io, io2, "one io buffer: {d:?}");
            assert_eq!(first_row, head * head_dim, "the query rows are the head's: {d:?}");
            let rope = rope.expect("a query attention rotates its query");
            (
                TaskOp::QueryAttention {
                    input,
                    weight,
                    bias,
                    cols,
                    head_norm,
                    rope,
                    head,
                    kv_head,
                    head_dim,
                    max_positions,
                    window,
                    k_cache,
                    v_cache,
                    io,
                    part,
                    parts,
                    out,
                    q_out,
                },
                WORDS,
            )
        }
        13 => {
            assert_eq!(d[8], 0, "no int8 scales in f32 or bf16");
            (
                TaskOp::HeadOut {
                    bias: opt(d[13]),
                    partials: BufferId(d[1]),
                    head: d[2],
                    head_dim: d[3],
                    parts: d[4],
                    first: d[5],
                    dims: d[6],
                    weight: BufferId(d[7]),
                    cols: d[9],
                    weight_cols: d[10],
                    out: BufferId(d[11]),
                    mirror: opt(d[12]),
                },
                14,
            )
        }
        12 => (
            TaskOp::AppendKv {
                kv: BufferId(d[1]),
                kv_heads: d[2],
                head_dim: d[3],
                max_positions: d[4],
                k_cache: BufferId(d[5]),
                v_cache: BufferId(d[6]),
                io: BufferId(d[7]),
            },
            {
                assert!(d[8] <= 1, "word 8 says whether kv is tagged: {d:?}");
                9
            },
        ),
        4 => (
            TaskOp::GatedUp {
                input: input(d),
                gate: BufferId(d[6]),
                up: BufferId(d[7]),
                first_row: d[8],
                rows: d[9],
                cols: d[10],
                out: BufferId(d[11]),
            },
            12,
        ),
        9 => {
            assert_eq!((d[12], d[13], d[15]), (0, 0, 0), "no int8 scales in f32 or bf16");
            (
                TaskOp::GatedMlp {
                    input: input(d),
                    gate: BufferId(d[6]),
                    up: BufferId(d[7]),
                    down: BufferId(d[14]),
                    first_row: d[8],
                    rows: d[9],
                    cols: d[10],
                    inter: d[16],
                    out: BufferId(d[11]),
                    carry: (d[18] != 0)
                        .then(|| amk_schedule::ops::Carry { first: d[17], len: d[18] }),
                },
                19,
            )
        }
        10 => {
            assert_eq!(
                (d[9], d[11], d[12], d[14]),
                (NONE, 0, 1, 0),
                "one part, no partials: {d:?}"
            );
            (
                TaskOp::AttentionOut {
                    q: BufferId(d[1]),
                    head: d[2],
                    kv_head: d[3],
                    head_dim: d[4],
                    max_positions: d[5],
                    window: (d[10] != 0).then_some(d[10]),
                    k_cache: BufferId(d[6]),
                    v_cache: BufferId(d[7]),
                    io: BufferId(d[8]),
                    weight: BufferId(d[13]),
                    cols: d[15],
                    weight_cols: d[18],
                    outs: [BufferId(d[16]), BufferId(d[17])],
                },
                19,
            )
        }
        5 => (
            TaskOp::Attention {
                q: BufferId(d[1]),
                head: d[2],
                kv_head: d[3],
                head_dim: d[4],
                max_positions: d[5],
                window: (d[10] != 0).then_some(d[10]),
                k_cache: BufferId(d[6]),
                v_cache: BufferId(d[7]),
                io: BufferId(d[8]),
                part: d[11],
                parts: d[12],
                out: BufferId(d[9]),
                current: (d[13] != NONE)
                    .then(|| amk_schedule::ops::NewRow { kv: BufferId(d[13]), kv_heads: d[14] }),
            },
            16,
        ),
        6 => (
            TaskOp::HeadArgmax {
                input: input(d),
                weight: BufferId(d[6]),
                first_row: d[7],
                rows: d[8],
                cols: d[9],
                logits: BufferId(d[10]),
                io: BufferId(d[11]),
                advance: {
                    assert!(d[12] <= 1, "word 12 says whether the task advances: {d:?}");
                    d[12] == 1
                },
            },
            13,
        ),
        8 => {
            let ProjInput::RmsNormed { buffer, len, weight, eps } = input(d) else {
                panic!("an RMSNORM task's input is always the rms-normed kind: {d:?}")
            };
            (TaskOp::RmsNorm { input: buffer, len, weight, eps, out: BufferId(d[6]) }, 7)
        }
        k => panic!("unknown task kind {k}"),
    };
    assert!(d[used..].iter().all(|&w| w == 0), "unused words are 0: {d:?}");
    op
}
