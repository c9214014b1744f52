//! Tagged buffers (`BufferKind::Tagged`): a passing case and a failing mutation for every rule
//! (no adds, one writing task per byte, every read byte written, a read waits for its writer,
//! a tagged read orders nothing else), lowered models with `tagged: true`, and a cross-check
//! against the exhaustive explorer.

mod ground_truth;

use amk_ir::config::{ModelConfig, RawConfig};
use amk_ir::graph::DecodeGraph;
use amk_schedule::schedule::*;
use amk_schedule::{lower, ScheduleConfig, TaskOp};
use amk_verify::testing::Rng;
use amk_verify::{verify, BlockedRun, ByteRange, InstrLoc, LaunchFacts, RegionPlace, VerifyError};
use ground_truth::explore;
use std::path::Path;

const FACTS: LaunchFacts = LaunchFacts { sm_count: 132, blocks_per_sm: 1 };

fn at(worker: u32, index: u32) -> InstrLoc {
    InstrLoc { worker, index }
}

fn range(offset: u64, len: u64) -> ByteRange {
    ByteRange { offset, len }
}

const SRC: BufferId = BufferId(0);
const T: BufferId = BufferId(1);
const OUT: BufferId = BufferId(2);

/// Worker 0 runs `L0.a` (src[0..32) -> t[0..32)); worker 1 runs `L0.b` (t[0..32) ->
/// out[0..32)) with no wait: its read of the tagged `t` waits for the values.
fn base() -> Schedule {
    let mut s = Schedule::new("tagged");
    assert_eq!(s.add_buffer("src", BufferKind::Activation, 64), SRC);
    assert_eq!(s.add_buffer("t", BufferKind::Tagged, 64), T);
    assert_eq!(s.add_buffer("out", BufferKind::Activation, 64), OUT);
    let a = copy(&mut s, "L0.a", Region::new(SRC, 0, 32), Region::new(T, 0, 32));
    let b = copy(&mut s, "L0.b", Region::new(T, 0, 32), Region::new(OUT, 0, 32));
    s.workers =
        vec![Worker { instrs: vec![Instr::Run(a)] }, Worker { instrs: vec![Instr::Run(b)] }];
    s
}

fn copy(s: &mut Schedule, name: &str, src: Region, dst: Region) -> TaskId {
    s.add_task(name, TaskOp::Copy { src, dst }, vec![src], vec![dst])
}

fn errors(s: &Schedule) -> Vec<VerifyError> {
    verify(s, &FACTS).expect_err("must reject").errors
}

fn deadlock(e: &[VerifyError]) -> (&[amk_verify::StuckWorker], &[BlockedRun], usize) {
    match e.iter().find(|x| matches!(x, VerifyError::Deadlock { .. })) {
        Some(VerifyError::Deadlock { stuck, blocked, finished }) => (stuck, blocked, *finished),
        _ => panic!("no deadlock in {e:?}"),
    }
}

#[test]
fn a_tagged_read_needs_no_wait() {
    let s = base();
    let v = verify(&s, &FACTS).expect("the read waits for the tagged values");
    assert_eq!(v.certificate().happens_before_edges, 0);
    // The kind survives schedule.ron.
    let text = s.to_ron_string();
    assert!(text.contains("(name: \"t\", kind: Tagged, bytes: 64)"), "{text}");
    assert_eq!(Schedule::from_ron_str(&text).unwrap(), s);
    // With the reader on worker 0, the greedy run holds it at its Run until worker 1 has run
    // the writer.
    let mut swapped = s.clone();
    swapped.workers.swap(0, 1);
    verify(&swapped, &FACTS).expect("any worker order");
    // Several readers and a reader of part of the bytes.
    let mut more = s.clone();
    let c = copy(&mut more, "L0.c", Region::new(T, 8, 8), Region::new(OUT, 32, 8));
    more.workers.push(Worker { instrs: vec![Instr::Run(c)] });
    verify(&more, &FACTS).expect("reads never conflict");
}

#[test]
fn adds_to_a_tagged_buffer_are_rejected() {
    let mut s = base();
    s.tasks[0].adds.push(Region::new(T, 32, 16));
    assert_eq!(
        errors(&s),
        vec![VerifyError::TaggedAdd {
            task: "L0.a".into(),
            place: RegionPlace::Add(0),
            buffer: "t".into(),
            range: range(32, 16),
        }]
    );
    let text = verify(&s, &FACTS).unwrap_err().to_string();
    assert!(
        text.contains(
            "task `L0.a` adds[0] adds to bytes [32, 48) (offset 32, len 16) of tagged buffer `t`"
        ),
        "{text}"
    );
    // An op's add declared as a write is still an add on the device.
    use amk_schedule::ops::ProjInput;
    let mut s = Schedule::new("mlp");
    let x = s.add_buffer("x", BufferKind::Tagged, 16);
    let input = s.add_buffer("in", BufferKind::Activation, 16);
    let [gate, up, down] = ["gate", "up", "down"].map(|n| s.add_buffer(n, BufferKind::Weight, 32));
    let op = TaskOp::GatedMlp {
        input: ProjInput::Vector { buffer: input, len: 4 },
        gate,
        up,
        down,
        first_row: 0,
        rows: 2,
        cols: 4,
        inter: 2,
        out: x,
        carry: None,
    };
    let t = s.add_task_with_footprint("L0.mlp", op);
    s.tasks[t.index()].writes = std::mem::take(&mut s.tasks[t.index()].adds);
    s.workers = vec![Worker { instrs: vec![Instr::Run(t)] }];
    let e = errors(&s);
    assert_eq!(
        e,
        vec![VerifyError::TaggedAdd {
            task: "L0.mlp".into(),
            place: RegionPlace::OpAdd(0),
            buffer: "x".into(),
            range: range(0, 16),
        }]
    );
    assert!(e.iter().all(VerifyError::is_malformed));
}

#[test]
fn two_writers_of_a_tagged_byte_are_rejected_once() {
    let mut s = base();
    let c = copy(&mut s, "L0.c", Region::new(SRC, 32, 16), Region::new(T, 16, 16));
    s.workers.push(Worker { instrs: vec![Instr::Run(c)] });
    // Reported by the write-once rule only (not also as a race on `t`).
    assert_eq!(
        errors(&s),
        vec![VerifyError::TaggedWrittenTwice {
            buffer: "t".into(),
            first: "L0.a".into(),
            second: "L0.c".into(),
            range: range(16, 16),
        }]
    );
    let text = verify(&s, &FACTS).unwrap_err().to_string();
    assert!(
        text.contains("tasks `L0.a` and `L0.c` both write bytes [16, 32) (offset 16, len 16) of tagged buffer `t`"),
        "{text}"
    );
    // Even ordered by a counter: write-once is per launch, not per interleaving.
    let done = s.add_counter("L0.a.done", CounterReset::Zeroed);
    s.workers[0].instrs.push(Instr::Signal(done));
    s.workers[2].instrs.insert(0, Instr::Wait { counter: done, at_least: 1 });
    assert!(matches!(&errors(&s)[..], [VerifyError::TaggedWrittenTwice { .. }]));
    // One task may declare overlapping writes of its own bytes.
    let mut own = base();
    own.tasks[0].writes.push(Region::new(T, 8, 40));
    verify(&own, &FACTS).expect("one writing task");
}

#[test]
fn a_read_of_unwritten_tagged_bytes_waits_forever() {
    let mut s = base();
    s.tasks[1].reads[0] = Region::new(T, 16, 32); // [32, 48) is written by nobody
    s.tasks[1].op = TaskOp::Copy { src: Region::new(T, 16, 32), dst: Region::new(OUT, 0, 32) };
    let e = errors(&s);
    assert_eq!(
        e[0],
        VerifyError::TaggedUnwrittenRead {
            task: "L0.b".into(),
            place: RegionPlace::Read(0),
            buffer: "t".into(),
            range: range(32, 16),
        }
    );
    // ... and the deadlock it causes.
    let (stuck, blocked, finished) = deadlock(&e);
    assert_eq!((stuck.len(), finished), (0, 1));
    assert_eq!(
        blocked,
        [BlockedRun {
            at: at(1, 0),
            task: "L0.b".into(),
            buffer: "t".into(),
            range: range(32, 16),
            writer: None,
            writer_at: None,
        }]
    );
    let text = verify(&s, &FACTS).unwrap_err().to_string();
    assert!(text.contains("which no task writes: the read would wait forever"), "{text}");
    assert!(
        text.contains("worker 1 instruction 0 runs task `L0.b`, which reads bytes [32, 48) (offset 32, len 16) of tagged buffer `t`, which no task writes"),
        "{text}"
    );
}

#[test]
fn a_writer_behind_its_reader_on_one_worker_deadlocks() {
    let mut s = base();
    s.workers = vec![Worker { instrs: vec![Instr::Run(TaskId(1)), Instr::Run(TaskId(0))] }];
    let e = errors(&s);
    assert_eq!(e.len(), 1, "{e:?}");
    let (stuck, blocked, finished) = deadlock(&e);
    assert_eq!((stuck.len(), finished), (0, 0));
    assert_eq!(
        blocked,
        [BlockedRun {
            at: at(0, 0),
            task: "L0.b".into(),
            buffer: "t".into(),
            range: range(0, 32),
            writer: Some("L0.a".into()),
            writer_at: Some(at(0, 1)),
        }]
    );
    let text = e[0].to_string();
    assert!(
        text.contains(
            "worker 0 instruction 0 runs task `L0.b`, which reads bytes [0, 32) (offset 0, len 32) \
             of tagged buffer `t` before task `L0.a` writes them at worker 0 instruction 1, \
             later on the same worker (run `L0.a` first)"
        ),
        "{text}"
    );
    // A task that reads its own tagged writes waits for itself.
    let mut own = base();
    own.tasks[0].reads.push(Region::new(T, 0, 8));
    let e = errors(&own);
    let (_, blocked, _) = deadlock(&e);
    assert_eq!(blocked[0].writer_at, Some(blocked[0].at));
    assert!(e[0].to_string().contains("which it writes itself"), "{}", e[0]);
    // The blocked run survives the JSON round trip.
    let r = verify(&s, &FACTS).unwrap_err();
    let back: amk_verify::Rejection = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(back, r);
}

#[test]
fn a_cycle_of_tagged_reads_deadlocks() {
    // `L0.a` reads u (written by `L0.b`) and writes t; `L0.b` reads t and writes u.
    let mut s = base();
    let u = s.add_buffer("u", BufferKind::Tagged, 32);
    s.tasks[0].reads = vec![Region::new(u, 0, 32)];
    s.tasks[0].op = TaskOp::Copy { src: Region::new(u, 0, 32), dst: Region::new(T, 0, 32) };
    s.tasks[1].writes = vec![Region::new(u, 0, 32)];
    s.tasks[1].op = TaskOp::Copy { src: Region::new(T, 0, 32), dst: Region::new(u, 0, 32) };
    let e = errors(&s);
    assert_eq!(e.len(), 1, "{e:?}");
    let (stuck, blocked, finished) = deadlock(&e);
    assert_eq!((stuck.len(), finished), (0, 0));
    let waits: Vec<_> = blocked
        .iter()
        .map(|b| (b.at, b.task.as_str(), b.buffer.as_str(), b.writer.as_deref(), b.writer_at))
        .collect();
    assert_eq!(
        waits,
        [
            (at(0, 0), "L0.a", "u", Some("L0.b"), Some(at(1, 0))),
            (at(1, 0), "L0.b", "t", Some("L0.a"), Some(at(0, 0))),
        ]
    );
    let text = e[0].to_string();
    assert!(
        text.starts_with("deadlock: every interleaving gets stuck (0 workers finish, 2 are stuck)")
    );
    assert!(text
        .contains("before task `L0.b` writes them at worker 1 instruction 0, which has not run"));

    // A cycle through a counter: worker 0 waits for a signal worker 1 gives after a Run that
    // waits for worker 0's tagged write.
    let mut s = base();
    let c = s.add_counter("L0.b.done", CounterReset::Zeroed);
    s.workers[0].instrs.insert(0, Instr::Wait { counter: c, at_least: 1 });
    s.workers[1].instrs.push(Instr::Signal(c));
    let e = errors(&s);
    let (stuck, blocked, _) = deadlock(&e);
    assert_eq!((stuck[0].at, stuck[0].pending_signals.as_slice()), (at(0, 0), &[at(1, 1)][..]));
    assert_eq!((blocked[0].at, blocked[0].writer_at), (at(1, 0), Some(at(0, 1))));
    let text = e[0].to_string();
    assert!(
        text.contains("waits for counter `L0.b.done` >= 1, which stays at 0; its remaining signals are behind stuck workers at worker 1 instruction 1"),
        "{text}"
    );
}

#[test]
fn a_tagged_read_orders_nothing_else() {
    // `L0.a` also writes x[0..32); `L0.b` also reads it, with no counter between them.
    let mut s = base();
    let x = s.add_buffer("x", BufferKind::Activation, 32);
    s.tasks[0].writes.push(Region::new(x, 0, 32));
    s.tasks[1].reads.push(Region::new(x, 0, 32));
    let e = errors(&s);
    assert_eq!(e.len(), 1, "{e:?}");
    let VerifyError::Race { buffer, first, second } = &e[0] else { panic!("{e:?}") };
    assert_eq!(buffer, "x");
    assert_eq!((first.task.as_str(), first.at), ("L0.a", at(0, 0)));
    assert_eq!((second.task.as_str(), second.at), ("L0.b", at(1, 0)));
    // A counter orders them.
    let done = s.add_counter("L0.a.done", CounterReset::Zeroed);
    s.workers[0].instrs.push(Instr::Signal(done));
    s.workers[1].instrs.insert(0, Instr::Wait { counter: done, at_least: 1 });
    verify(&s, &FACTS).expect("ordered by the counter");
    // Nor does a tagged read order what follows it on the reader's worker against the writer's.
    let mut s = base();
    let x = s.add_buffer("x", BufferKind::Activation, 32);
    s.tasks[0].writes.push(Region::new(x, 0, 32));
    let after = copy(&mut s, "L0.after", Region::new(x, 0, 32), Region::new(OUT, 32, 32));
    s.workers[1].instrs.push(Instr::Run(after));
    assert!(
        matches!(&errors(&s)[..], [VerifyError::Race { second, .. }] if second.task == "L0.after")
    );
}

fn model(path: &Path) -> DecodeGraph {
    let text = std::fs::read_to_string(path).expect("config.json");
    let config = ModelConfig::from_raw(&RawConfig::from_json(&text, path).unwrap(), path).unwrap();
    DecodeGraph::build(&config)
}

/// SmolLM2-135M lowered with tagged hand-offs verifies, with and without per-head waits, and
/// its counters still matter (without the waits for the residual copies, the copies race with
/// the output projection's adds); the tiny fixture models verify under a few placements.
#[test]
fn lowered_tagged_schedules_verify() {
    use amk_schedule::config::{Assignment, TaskOrder};
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let smollm2 = model(&fixtures.join("smollm2-hf/config.json"));
    for head_waits in [true, false] {
        let knobs = ScheduleConfig { tagged: true, head_waits, ..ScheduleConfig::default() };
        let s = lower(&smollm2, &knobs).expect("lower");
        let tagged: Vec<&str> = s
            .buffers
            .iter()
            .filter(|b| b.kind == BufferKind::Tagged)
            .map(|b| b.name.as_str())
            .take(2)
            .collect();
        assert_eq!(tagged, ["L0.q", "L0.kv_new"]);
        verify(&s, &FACTS).unwrap_or_else(|e| panic!("head_waits {head_waits}: {e}"));

        // The projections are polled, not waited for, so nothing but the waits for the
        // residual copies' counter orders the copies before the output projection's adds.
        let copies = s.counter_by_name("L0.resid.done").unwrap();
        let mut m = s.clone();
        for w in &mut m.workers {
            w.instrs.retain(|i| !matches!(i, Instr::Wait { counter, .. } if *counter == copies));
        }
        let e = errors(&m);
        assert!(e.iter().all(|x| matches!(x, VerifyError::Race { .. })), "{e:?}");
        // (The output projection adds to resid.1; the MLP carries it into the zeroed resid.2.)
        let raced = |buffer: &str, copy: &str, adder: &str| {
            e.iter().any(|x| {
                matches!(x, VerifyError::Race { buffer: b, first, second }
                if b == buffer && first.task == copy && second.task.starts_with(adder))
            })
        };
        assert!(
            raced("resid.1", "L0.resid.mid", "L0.o.")
                && raced("resid.2", "L0.resid.out", "L0.mlp."),
            "{e:?}"
        );
    }
    let mut models = 0;
    for dir in std::fs::read_dir(fixtures.join("tiny")).unwrap() {
        let path = dir.unwrap().path().join("config.json");
        if !path.exists() {
            continue;
        }
        models += 1;
        let g = model(&path);
        for (workers, attn_splits, head_waits, assignment, task_order) in [
            (132, 8, true, Assignment::RoundRobin, TaskOrder::AsLowered),
            (16, 3, false, Assignment::BalancedBytes, TaskOrder::LargestFirst),
            (5, 1, true, Assignment::BalancedBytes, TaskOrder::AsLowered),
        ] {
            let knobs = ScheduleConfig {
                tagged: true,
                workers,
                attn_splits,
                head_waits,
                assignment,
                task_order,
                max_positions: 64,
                ..ScheduleConfig::default()
            };
            let s = lower(&g, &knobs).expect("lower");
            assert!(s.buffers.iter().any(|b| b.kind == BufferKind::Tagged));
            verify(&s, &FACTS).unwrap_or_else(|e| panic!("{path:?} {knobs:?}: {e}"));
        }
    }
    assert!(models >= 5, "{models} tiny models");
}

/// A random small schedule with one tagged buffer of 8-byte slots: each task copies a weight
/// into its own slot of `t` (sometimes into another's, or into `x`) and reads some slots of `t`
/// and maybe `x`; tasks are spread over workers with random signals and waits.
fn random_tagged(rng: &mut Rng) -> Schedule {
    let mut s = Schedule::new("tagged-random");
    let nt = rng.range(2, 5);
    let w = s.add_buffer("w", BufferKind::Weight, 8);
    let t = s.add_buffer("t", BufferKind::Tagged, 8 * nt as u64 + 8);
    let x = s.add_buffer("x", BufferKind::Activation, 16);
    let slot = |k: usize| Region::new(t, 8 * k as u64, 8);
    let mut tasks = Vec::new();
    for k in 0..nt {
        let dst = match rng.below(20) {
            0 => slot(rng.below(nt + 1)),
            1 => Region::new(x, 8 * rng.below(2) as u64, 8),
            _ => slot(k),
        };
        let id = s.add_task(
            format!("L0.t{k}"),
            TaskOp::Copy { src: Region::new(w, 0, 8), dst },
            vec![Region::new(w, 0, 8)],
            vec![dst],
        );
        let task = &mut s.tasks[id.index()];
        for _ in 0..rng.below(3) {
            // Mostly another task's slot; sometimes its own, or the one nobody owns.
            task.reads.push(slot(match rng.below(20) {
                0 => k,
                1 => nt,
                _ => (k + 1 + rng.below(nt - 1)) % nt,
            }));
        }
        match rng.below(4) {
            0 => task.reads.push(Region::new(x, 8 * rng.below(2) as u64, 8)),
            1 => task.writes.push(Region::new(x, 8 * rng.below(2) as u64, 8)),
            _ => {}
        }
        if rng.chance(0.02) {
            task.adds.push(slot(rng.below(nt + 1)));
        }
        tasks.push(id);
    }
    let nw = rng.range(1, 3);
    s.workers = vec![Worker::default(); nw];
    let order: Vec<_> = {
        let mut v = tasks.clone();
        for i in (1..v.len()).rev() {
            v.swap(i, rng.below(i + 1));
        }
        v
    };
    for id in order {
        s.workers[rng.below(nw)].instrs.push(Instr::Run(id));
    }
    for c in 0..rng.below(3) {
        let c = s.add_counter(format!("c{c}"), CounterReset::Zeroed);
        let signals = rng.range(1, 2);
        for _ in 0..signals {
            let w = rng.below(nw);
            let i = rng.below(s.workers[w].instrs.len() + 1);
            s.workers[w].instrs.insert(i, Instr::Signal(c));
        }
        let w = rng.below(nw);
        let i = rng.below(s.workers[w].instrs.len() + 1);
        s.workers[w]
            .instrs
            .insert(i, Instr::Wait { counter: c, at_least: rng.range(1, signals) as u32 });
    }
    s
}

/// No false accepts against the exhaustive explorer (which models tagged reads on its own),
/// and under 1% false rejects; every kind of truth is well represented.
#[test]
fn tagged_schedules_agree_with_the_explorer() {
    use ground_truth::Truth;
    let mut counts = [0usize; 4]; // safe, malformed, deadlock, race
    let mut false_rejects = Vec::new();
    for i in 0..10_000u64 {
        let s = random_tagged(&mut Rng::new(0x7A66ED ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let truth = explore(&s, FACTS.capacity());
        counts[match truth {
            Truth::Safe => 0,
            Truth::Malformed(_) => 1,
            Truth::Deadlock { .. } => 2,
            _ => 3,
        }] += 1;
        match (verify(&s, &FACTS), truth.is_safe()) {
            (Ok(_), false) => panic!("false accept ({truth:?}):\n{}", s.to_ron_string()),
            (Err(e), true) => false_rejects.push(format!("{e}\n{}", s.to_ron_string())),
            _ => {}
        }
    }
    println!("safe, malformed, deadlock, race: {counts:?}; {} false rejects", false_rejects.len());
    assert!(counts.iter().all(|&n| n > 300), "{counts:?}");
    assert!(false_rejects.len() * 100 < counts[0], "{}", false_rejects.join("\n\n"));
}
