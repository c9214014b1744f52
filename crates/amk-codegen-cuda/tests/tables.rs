//! The device tables decode back to the schedule, instruction by instruction and task by task,
//! for bf16 and f32 weights (the decoder in `common` is written from `kernels/abi.cuh`, not
//! from the encoder).

mod common;

use amk_codegen_cuda::{generate, Arch, CodegenOptions, WeightDType};
use amk_ir::synth::SynthSpec;
use amk_schedule::schedule::{BufferKind, CounterReset};
use amk_verify::VerifiedSchedule;

fn check_tables(v: &VerifiedSchedule, dtype: WeightDType) {
    let options = CodegenOptions { weight_dtype: dtype, ..Default::default() };
    let g = generate(v, &options).expect("generates");
    let t = &g.tables;

    // Program: worker by worker, instruction by instruction.
    let programs = common::decode_program(&t.program, &t.worker_start);
    assert_eq!(programs.len(), v.workers.len());
    for (w, (decoded, worker)) in programs.iter().zip(&v.workers).enumerate() {
        assert_eq!(decoded.len(), worker.instrs.len(), "worker {w}");
        for (i, (a, b)) in decoded.iter().zip(&worker.instrs).enumerate() {
            assert_eq!(a, b, "worker {w}, instruction {i}");
        }
    }

    // Tasks: each descriptor decodes to the task's op.
    assert_eq!(t.tasks.len(), v.tasks.len() * common::WORDS, "each task runs once");
    let by_task = common::descriptors_by_task(v, &t.tasks, &t.run_start);
    for (i, (d, task)) in by_task.iter().zip(&v.tasks).enumerate() {
        let d = d.unwrap_or_else(|| panic!("task {i} `{}` has a descriptor", task.name));
        assert_eq!(common::decode_task(d), task.op, "task {i} `{}`", task.name);
    }

    // Counters: epoch counters carry their signals per launch.
    assert_eq!(t.per_launch.len(), v.counters.len());
    let signals = v.signal_counts();
    for (i, c) in v.counters.iter().enumerate() {
        let expected = match c.reset {
            CounterReset::Epoch { signals_per_launch } => {
                assert_eq!(u64::from(signals_per_launch), signals[i]);
                signals_per_launch
            }
            CounterReset::Zeroed | CounterReset::Never => 0,
        };
        assert_eq!(t.per_launch[i], expected, "counter `{}`", c.name);
    }

    // Buffers: weights at the device dtype, the rest as declared.
    assert_eq!(t.buffer_bytes.len(), v.buffers.len());
    for (b, &bytes) in v.buffers.iter().zip(&t.buffer_bytes) {
        let expected = match (b.kind, dtype) {
            (BufferKind::Weight, WeightDType::BF16) => b.bytes / 2,
            // A launch tag beside every value.
            (BufferKind::Tagged, _) => b.bytes * 2,
            _ => b.bytes,
        };
        assert_eq!(bytes, expected, "buffer `{}`", b.name);
    }

    // Launch: one block per worker.
    assert_eq!(g.launch.grid as usize, v.workers.len());
    assert_eq!(g.launch.block, 512);
    assert_eq!(g.launch.kernel, "amk_megakernel");
    assert_eq!(g.launch.weight_dtype, dtype);
    assert_eq!(g.launch.schedule_hash, v.certificate().schedule_hash);
    assert!(g.launch.dynamic_smem_bytes % 16 == 0);
}

#[test]
fn tiny_tables_decode_to_the_schedule_bf16() {
    check_tables(&common::tiny(), WeightDType::BF16);
}

#[test]
fn tiny_tables_decode_to_the_schedule_f32() {
    check_tables(&common::tiny(), WeightDType::F32);
}

#[test]
fn biased_untied_model_decodes_on_many_workers() {
    let spec = SynthSpec {
        attention_bias: true,
        tie_word_embeddings: false,
        num_layers: 3,
        ..SynthSpec::tiny()
    };
    let v = common::verified(&common::lowered(&spec, 7));
    // The biases reach the descriptors (not AMK_NONE).
    let g = generate(&v, &CodegenOptions::default()).expect("generates");
    let biased =
        g.tables.tasks.chunks(common::WORDS).filter(|d| d[0] == 3 && d[7] != u32::MAX).count();
    assert!(biased > 0);
    for dtype in [WeightDType::BF16, WeightDType::F32] {
        check_tables(&v, dtype);
    }
}

#[test]
fn tables_do_not_depend_on_arch_or_block_size() {
    let v = common::tiny();
    let a = generate(&v, &CodegenOptions::default()).expect("generates");
    let b = generate(
        &v,
        &CodegenOptions { arch: Arch::Sm80, block_threads: 256, ..Default::default() },
    )
    .expect("generates");
    assert_eq!(a.tables, b.tables);
    assert_eq!(b.launch.arch, "sm_80");
    assert_eq!(b.launch.block, 256);
    assert!(b.source.contains("\n#define AMK_BLOCK_THREADS 256\n"));
}

#[test]
fn shared_memory_covers_inputs_and_attention() {
    let v = common::tiny();
    // After the main area, scratch and the head: the buffer addresses (two words each, rounded
    // up to 4 words) and the longest worker's instructions and descriptors; the whole rounded
    // up to 32 words (the staging slots start on a 128-byte boundary).
    let control = {
        let t = generate(&v, &CodegenOptions::default()).expect("generates").tables;
        let longest = (0..v.workers.len())
            .map(|w| {
                let instrs = (t.worker_start[w + 1] - t.worker_start[w]) as u64;
                let runs = (t.run_start[w + 1] - t.run_start[w]) as u64;
                2 * instrs + common::WORDS as u64 * runs
            })
            .max()
            .unwrap_or(0);
        (2 * v.buffers.len() as u64).div_ceil(4) * 4 + longest
    };
    let base = |words: u64| 4 * words.div_ceil(32) * 32;
    // 512 threads = 16 warps; attention: 16 * (16 + 2) = 288 floats > 64 columns plus a
    // fused MLP's 24 rows; then 64 words of scratch and one 16-float head; no staging slots.
    let unstaged = CodegenOptions { stage_weights: false, ..Default::default() };
    let g = generate(&v, &unstaged).expect("generates");
    assert_eq!(u64::from(g.launch.dynamic_smem_bytes), base(288 + 64 + 16 + control));
    let g = generate(&v, &CodegenOptions { block_threads: 64, ..unstaged }).expect("generates");
    // 2 warps: attention 2 * 18 = 36 floats < 64 columns + 24 MLP rows.
    assert_eq!(u64::from(g.launch.dynamic_smem_bytes), base(88 + 64 + 16 + control));
    // Staged: two slots of the largest weight tile that fits (at most half of what remains).
    let g = generate(&v, &CodegenOptions::default()).expect("generates");
    let slot = g.source.lines().find_map(|l| l.strip_prefix("#define AMK_STAGE_BYTES "));
    let slot: u64 = slot.expect("stage define").parse().expect("a number");
    assert!(slot > 0 && slot % 16 == 0, "{slot}");
    assert_eq!(u64::from(g.launch.dynamic_smem_bytes), base(288 + 64 + 16 + control) + 2 * slot);
}

#[test]
fn block_threads_must_be_whole_warps_in_range() {
    let v = common::tiny();
    for bad in [0, 32, 48, 100, 1056, 2048] {
        let options = CodegenOptions { block_threads: bad, ..Default::default() };
        let err = generate(&v, &options).expect_err("refused");
        assert!(err.to_string().contains("block_threads"), "{err}");
    }
    for good in [64, 96, 1024] {
        let options = CodegenOptions { block_threads: good, ..Default::default() };
        generate(&v, &options).expect("accepted");
    }
}

#[test]
fn options_parse_and_print() {
    assert_eq!("sm_90".parse::<Arch>(), Ok(Arch::Sm90));
    assert_eq!("SM120".parse::<Arch>(), Ok(Arch::Sm120));
    assert_eq!(Arch::Sm80.as_str(), "sm_80");
    assert!("sm_75".parse::<Arch>().is_err());
    assert_eq!("bf16".parse::<WeightDType>(), Ok(WeightDType::BF16));
    assert_eq!("f32".parse::<WeightDType>(), Ok(WeightDType::F32));
    assert_eq!("int8".parse::<WeightDType>(), Ok(WeightDType::Int8));
    assert!("int4".parse::<WeightDType>().is_err());
    assert_eq!(CodegenOptions::default().block_threads, 512);
}

#[test]
fn unfused_norms_decode_to_rms_norm_tasks() {
    let (_dir, model) = common::synth_model(&SynthSpec::tiny());
    let knobs = amk_schedule::ScheduleConfig {
        workers: 5,
        fuse_norm: false,
        task_order: amk_schedule::config::TaskOrder::LargestFirst,
        ..Default::default()
    };
    let v = common::verified(&amk_schedule::lower(&model.graph, &knobs).expect("lower"));
    let g = generate(&v, &CodegenOptions::default()).expect("generates");
    // Two norms per layer plus the final one.
    let norms = g.tables.tasks.chunks(common::WORDS).filter(|d| d[0] == 8).count();
    assert_eq!(norms, 2 * 2 + 1);
    for dtype in [WeightDType::BF16, WeightDType::F32] {
        check_tables(&v, dtype);
    }
}

/// The model-coverage fixtures' features (Qwen3's per-head norm, llama3 rope scaling, Mistral's
/// window, Qwen2's q/k/v bias) reach the device words and decode back unchanged.
#[test]
fn architecture_variants_decode_to_the_schedule() {
    use amk_ir::config::ModelConfig;
    use amk_ir::graph::DecodeGraph;
    use amk_schedule::ops::TaskOp;
    use amk_schedule::{lower, ScheduleConfig};
    for variant in ["qwen3", "llama3", "mistral", "qwen2"] {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tiny")
            .join(variant)
            .join("config.json");
        let config = ModelConfig::from_file(&path).expect("fixture config");
        let knobs = ScheduleConfig { workers: 8, ..ScheduleConfig::default() };
        let s = lower(&DecodeGraph::build(&config), &knobs).expect("lowers");
        let features = s.tasks.iter().fold((0, 0, 0, 0), |(n, l, w, b), t| match &t.op {
            TaskOp::Projection { head_norm, rope, bias, .. } => (
                n + usize::from(head_norm.is_some()),
                l + usize::from(rope.is_some_and(|r| r.llama3.is_some())),
                w,
                b + usize::from(bias.is_some()),
            ),
            TaskOp::Attention { window, .. } => (n, l, w + usize::from(window.is_some()), b),
            _ => (n, l, w, b),
        });
        let expected_nonzero = match variant {
            "qwen3" => features.0,
            "llama3" => features.1,
            "mistral" => features.2,
            _ => features.3,
        };
        assert!(expected_nonzero > 0, "{variant}: its feature is not in the schedule");
        let v = common::verified(&s);
        check_tables(&v, WeightDType::BF16);
        check_tables(&v, WeightDType::F32);
    }
}

#[test]
fn a_worker_program_too_long_for_shared_memory_is_refused_with_its_size() {
    // Worker 0 waits 30,000 more times on a counter it already waited for: harmless to the
    // verifier, but its instructions no longer fit beside the kernel's shared memory.
    let mut s = common::tiny().schedule().clone();
    let wait = s.workers[0]
        .instrs
        .iter()
        .copied()
        .find(|i| matches!(i, amk_schedule::schedule::Instr::Wait { .. }))
        .expect("worker 0 waits");
    let at = s.workers[0].instrs.iter().position(|i| *i == wait).expect("found");
    for _ in 0..30_000 {
        s.workers[0].instrs.insert(at, wait);
    }
    let v = common::verified(&s);
    let err = generate(&v, &CodegenOptions::default()).expect_err("does not fit");
    let msg = err.to_string();
    assert!(msg.contains("longest worker's instructions and descriptors"), "{msg}");
    assert!(msg.contains("shared memory"), "{msg}");
}

/// A fused MLP (`fuse_down`): its descriptors decode back to the schedule, the output
/// projection's copy buffer and the down weights' transposition reach the tables, int8 down
/// weights keep one scale per output, and the kernel's shared memory holds the MLP's rows.
#[test]
fn fused_mlp_decodes_with_transposed_down_weights() {
    use amk_schedule::ops::{ProjOutput, TaskOp};
    for fuse_norm in [true, false] {
        let (_dir, model) = common::synth_model(&SynthSpec { num_layers: 2, ..SynthSpec::tiny() });
        let knobs = amk_schedule::ScheduleConfig {
            workers: 6,
            fuse_down: true,
            fuse_norm,
            mlp_rows: 24,
            // Row tiles of the output projection, which store the snapshot.
            o_by_head: false,
            ..Default::default()
        };
        let v = common::verified(&amk_schedule::lower(&model.graph, &knobs).expect("lower"));
        for dtype in [WeightDType::BF16, WeightDType::F32] {
            check_tables(&v, dtype);
        }
        let g = generate(&v, &CodegenOptions::default()).expect("generates");
        let mlps = g.tables.tasks.chunks(common::WORDS).filter(|d| d[0] == 9).count();
        let m = model.config.intermediate_size as u32;
        assert_eq!(mlps as u32, 2 * m.div_ceil(24));
        assert!(g.source.contains(&format!("#define AMK_MLP_ROWS {}\n", 24.min(m))));
        let copies = v
            .tasks
            .iter()
            .filter(|t| {
                matches!(t.op, TaskOp::Projection { output: ProjOutput::AccumulateCopy { .. }, .. })
            })
            .count();
        assert_eq!(copies > 0, fuse_norm, "the snapshot only feeds fused norms");
        for (i, b) in v.buffers.iter().enumerate() {
            let down = b.name.ends_with("mlp.down_proj.weight");
            let t = g.tables.transposed[i];
            assert_eq!(t.is_some(), down, "{}", b.name);
            if let Some(t) = t {
                assert_eq!((t.rows as usize, t.cols), (model.config.hidden_size, m));
            }
        }
        let int8 = CodegenOptions { weight_dtype: WeightDType::Int8, ..Default::default() };
        let g8 = generate(&v, &int8).expect("generates int8");
        let by_task = common::descriptors_by_task(&v, &g8.tables.tasks, &g8.tables.run_start);
        for (d, task) in by_task.iter().zip(&v.tasks) {
            if let TaskOp::GatedMlp { down, cols, .. } = task.op {
                let d = d.expect("descriptor");
                let mat = g8.tables.int8_matrices[down.index()].expect("int8 down");
                // Scales per checkpoint row, i.e. per output the task adds to.
                assert_eq!((mat.rows, mat.cols), (u64::from(cols), m));
                assert_eq!(u64::from(d[15]), mat.scales_offset);
            }
        }
    }
}

/// A down weight that a fused MLP reads (held transposed) may not also be read row-major.
#[test]
fn a_transposed_weight_read_row_major_is_refused() {
    use amk_schedule::ops::TaskOp;
    let (_dir, model) = common::synth_model(&SynthSpec::tiny());
    // (Row tiles of the output projection: a head-split one reads its weight transposed too.)
    let knobs = amk_schedule::ScheduleConfig {
        workers: 4,
        fuse_down: true,
        o_by_head: false,
        ..Default::default()
    };
    let mut s = amk_schedule::lower(&model.graph, &knobs).expect("lower");
    // Point an output projection at layer 0's down weight, re-declaring its reads.
    let down = s.buffers.iter().position(|b| b.name == "model.layers.0.mlp.down_proj.weight");
    let down = amk_schedule::schedule::BufferId(down.expect("down weight") as u32);
    let t = s.tasks.iter().position(|t| t.name.starts_with("L0.o.")).expect("o task");
    if let TaskOp::Projection { weight, .. } = &mut s.tasks[t].op {
        *weight = down;
    }
    let f = s.tasks[t].op.footprint(|b| s.buffers[b.index()].bytes);
    s.tasks[t].reads = f.reads;
    let v = common::verified(&s);
    let e = generate(&v, &CodegenOptions::default()).expect_err("refused").to_string();
    assert!(e.contains("model.layers.0.mlp.down_proj.weight") && e.contains("transposed"), "{e}");
}

/// A fused attention (`fuse_o`): whole-head tasks decode back to the schedule, the output
/// projection is held transposed ([heads * head_dim, hidden]) beside the fused MLP's down
/// weight, and int8 keeps one scale per output.
#[test]
fn fused_attention_decodes_with_a_transposed_output_projection() {
    use amk_schedule::ops::TaskOp;
    let (_dir, model) = common::synth_model(&SynthSpec { num_layers: 2, ..SynthSpec::tiny() });
    let knobs = amk_schedule::ScheduleConfig {
        workers: 6,
        fuse_o: true,
        attn_splits: 1,
        ..Default::default()
    };
    let v = common::verified(&amk_schedule::lower(&model.graph, &knobs).expect("lower"));
    for dtype in [WeightDType::BF16, WeightDType::F32] {
        check_tables(&v, dtype);
    }
    let g = generate(&v, &CodegenOptions::default()).expect("generates");
    let c = &model.config;
    let heads = g.tables.tasks.chunks(common::WORDS).filter(|d| d[0] == 10).count();
    assert_eq!(heads, c.num_layers * c.num_heads);
    for (i, b) in v.buffers.iter().enumerate() {
        let o = b.name.ends_with("self_attn.o_proj.weight");
        let down = b.name.ends_with("mlp.down_proj.weight");
        let t = g.tables.transposed[i];
        assert_eq!(t.is_some(), o || down, "{}", b.name);
        if let (true, Some(t)) = (o, t) {
            assert_eq!(
                (t.rows as usize, t.cols as usize),
                (c.hidden_size, c.num_heads * c.head_dim)
            );
        }
    }
    let int8 = CodegenOptions { weight_dtype: WeightDType::Int8, ..Default::default() };
    let g8 = generate(&v, &int8).expect("generates int8");
    let by_task = common::descriptors_by_task(&v, &g8.tables.tasks, &g8.tables.run_start);
    for (d, task) in by_task.iter().zip(&v.tasks) {
        if let TaskOp::AttentionOut { weight, cols, weight_cols, .. } = task.op {
            let mat = g8.tables.int8_matrices[weight.index()].expect("int8 output projection");
            assert_eq!((mat.rows, mat.cols), (u64::from(cols), weight_cols));
            assert_eq!(u64::from(d.expect("descriptor")[14]), mat.scales_offset);
        }
    }
}

/// The head-split output projection (`o_by_head`): its tasks decode back to the schedule,
/// with the output projection held transposed and int8 keeping one scale per output; and a
/// `fuse_q` schedule's query attentions, key/value heads, appends and current-row combines
/// decode back too (the kernel is then compiled with the query-attention code).
#[test]
fn head_split_and_query_attention_schedules_decode() {
    use amk_schedule::ops::TaskOp;
    let (_dir, model) = common::synth_model(&SynthSpec { num_layers: 2, ..SynthSpec::tiny() });
    let c = &model.config;
    for (o_by_head, fuse_q) in [(true, false), (false, true)] {
        let knobs = amk_schedule::ScheduleConfig {
            workers: 6,
            o_by_head,
            fuse_q,
            attn_splits: 2,
            o_rows: 8,
            ..Default::default()
        };
        let v = common::verified(&amk_schedule::lower(&model.graph, &knobs).expect("lower"));
        for dtype in [WeightDType::BF16, WeightDType::F32] {
            check_tables(&v, dtype);
        }
        let g = generate(&v, &CodegenOptions::default()).expect("generates");
        assert_eq!(g.source.contains("#define AMK_QUERY_ATTENTION 1"), fuse_q);
        let kinds = |k: u32| g.tables.tasks.chunks(common::WORDS).filter(|d| d[0] == k).count();
        if o_by_head {
            assert_eq!(kinds(13), c.num_layers * c.num_heads * c.head_dim.div_ceil(8));
            for (i, b) in v.buffers.iter().enumerate() {
                let transposed = b.name.ends_with("self_attn.o_proj.weight")
                    || b.name.ends_with("mlp.down_proj.weight");
                assert_eq!(g.tables.transposed[i].is_some(), transposed, "{}", b.name);
            }
            let int8 = CodegenOptions { weight_dtype: WeightDType::Int8, ..Default::default() };
            let g8 = generate(&v, &int8).expect("generates int8");
            let by_task = common::descriptors_by_task(&v, &g8.tables.tasks, &g8.tables.run_start);
            for (d, task) in by_task.iter().zip(&v.tasks) {
                if let TaskOp::HeadOut { weight, cols, weight_cols, .. } = task.op {
                    let mat = g8.tables.int8_matrices[weight.index()].expect("int8 projection");
                    assert_eq!((mat.rows, mat.cols), (u64::from(cols), weight_cols));
                    assert_eq!(u64::from(d.expect("descriptor")[8]), mat.scales_offset);
                }
            }
        } else {
            assert_eq!(kinds(11), c.num_layers * c.num_heads * 2);
            assert_eq!(kinds(12), c.num_layers);
            let current = g.tables.tasks.chunks(common::WORDS).filter(|d| d[0] == 3 && d[32] != 0);
            assert_eq!(current.count(), c.num_layers * c.hidden_size.div_ceil(8));
        }
    }
}

/// Head-split q/k/v projections (`qkv_parts`, with and without tagged hand-offs) decode back
/// to the schedule, their part and parts at words 33 and 34; the kernel compiles the
/// head-part code only for such schedules.
#[test]
fn head_part_schedules_decode() {
    use amk_schedule::ops::TaskOp;
    let (_dir, model) = common::synth_model(&SynthSpec { num_layers: 2, ..SynthSpec::tiny() });
    let whole = generate(&common::tiny(), &CodegenOptions::default()).expect("generates");
    assert!(whole.source.contains("#define AMK_HEAD_PARTS 0"));
    for (qkv_parts, tagged) in [(2, false), (4, true)] {
        let knobs = amk_schedule::ScheduleConfig {
            workers: 6,
            qkv_parts,
            tagged,
            attn_splits: 2,
            ..Default::default()
        };
        let v = common::verified(&amk_schedule::lower(&model.graph, &knobs).expect("lower"));
        let split = v
            .tasks
            .iter()
            .filter(|t| matches!(t.op, TaskOp::Projection { head_part: Some(_), .. }))
            .count();
        let c = &model.config;
        assert_eq!(split, c.num_layers * (c.num_heads + 2 * c.num_kv_heads) * qkv_parts as usize);
        for dtype in [WeightDType::BF16, WeightDType::F32] {
            check_tables(&v, dtype);
        }
        let g = generate(&v, &CodegenOptions::default()).expect("generates");
        assert!(g.source.contains("#define AMK_HEAD_PARTS 1"));
        // The appends and current rows need the tagged kernel code, tagged or not.
        assert!(g.source.contains("#define AMK_TAGGED 1"));
    }
}

/// The default lowering's carry (each fused MLP task adds some of the residual it read into
/// the zeroed next one) reaches the descriptors, and a carry past the input is refused with
/// the field named, even when the schedule verifies (its regions are in bounds).
#[test]
fn a_carry_reaches_the_tables_and_one_past_the_input_is_refused() {
    use amk_schedule::ops::{Carry, TaskOp};
    let (_dir, model) = common::synth_model(&SynthSpec { num_layers: 2, ..SynthSpec::tiny() });
    let knobs = amk_schedule::ScheduleConfig { workers: 6, ..Default::default() };
    let mut s = amk_schedule::lower(&model.graph, &knobs).expect("lower");
    let v = common::verified(&s);
    check_tables(&v, WeightDType::BF16);
    let carries =
        v.tasks.iter().filter(|t| matches!(t.op, TaskOp::GatedMlp { carry: Some(_), .. }));
    assert!(carries.count() > 0, "the default lowering carries the residual");

    let t = s.tasks.iter().position(|t| t.name.starts_with("L0.mlp.")).expect("an MLP task");
    let cols = model.config.hidden_size as u32;
    if let TaskOp::GatedMlp { carry, .. } = &mut s.tasks[t].op {
        *carry = Some(Carry { first: cols - 2, len: 4 });
    }
    // Declared reads and adds as the op's footprint asks, inside the (larger) buffers.
    let f = s.tasks[t].op.footprint(|b| s.buffers[b.index()].bytes);
    for b in [f.reads.clone(), f.adds.clone()].concat() {
        let buf = &mut s.buffers[b.buffer.index()];
        buf.bytes = buf.bytes.max(b.offset + b.len);
    }
    (s.tasks[t].reads, s.tasks[t].adds) = (f.reads, f.adds);
    let v = common::verified(&s);
    let e = generate(&v, &CodegenOptions::default()).expect_err("refused").to_string();
    assert!(e.contains("carry") && e.contains(&s.tasks[t].name), "{e}");
}
