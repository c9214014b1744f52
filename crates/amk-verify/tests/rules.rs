//! One passing case and one failing mutation per verifier rule, asserting the error's content.

use amk_schedule::schedule::*;
use amk_schedule::TaskOp;
use amk_verify::{
    schedule_hash, verify, AccessKind, ByteRange, InstrLoc, LaunchFacts, RegionPlace, VerifyError,
};

const FACTS: LaunchFacts = LaunchFacts { sm_count: 132, blocks_per_sm: 1 };

fn at(worker: u32, index: u32) -> InstrLoc {
    InstrLoc { worker, index }
}

/// Worker 0 runs `L0.prod` (a[0..32) -> b[0..32)) and signals `L0.prod.done`; worker 1 waits
/// for it and runs `L0.cons` (b[0..32) -> a[32..64)).
fn base() -> Schedule {
    let mut s = Schedule::new("rules");
    let a = s.add_buffer("a", BufferKind::Activation, 64);
    let b = s.add_buffer("b", BufferKind::Scratch, 64);
    let c = s.add_counter("L0.prod.done", CounterReset::Zeroed);
    let p = s.add_task(
        "L0.prod",
        TaskOp::Copy { src: Region::new(a, 0, 32), dst: Region::new(b, 0, 32) },
        vec![Region::new(a, 0, 32)],
        vec![Region::new(b, 0, 32)],
    );
    let q = s.add_task(
        "L0.cons",
        TaskOp::Copy { src: Region::new(b, 0, 32), dst: Region::new(a, 32, 32) },
        vec![Region::new(b, 0, 32)],
        vec![Region::new(a, 32, 32)],
    );
    s.workers = vec![
        Worker { instrs: vec![Instr::Run(p), Instr::Signal(c)] },
        Worker { instrs: vec![Instr::Wait { counter: c, at_least: 1 }, Instr::Run(q)] },
    ];
    s
}

fn errors(s: &Schedule, facts: &LaunchFacts) -> Vec<VerifyError> {
    verify(s, facts).expect_err("must reject").errors
}

#[test]
fn base_is_accepted_with_certificate() {
    let s = base();
    let v = verify(&s, &FACTS).expect("base is safe");
    let cert = v.certificate();
    assert_eq!(cert.workers, 2);
    assert_eq!(cert.instructions, 4);
    assert_eq!(cert.tasks, 2);
    assert_eq!(cert.counters, 1);
    assert_eq!(cert.happens_before_edges, 1);
    assert_eq!(cert.schedule_hash, schedule_hash(&s));
    assert!(cert.matches(&s));
    assert_eq!(v.name, "rules"); // deref to the schedule
    let mut edited = s.clone();
    edited.workers[1].instrs.swap(0, 1);
    assert!(!cert.matches(&edited));
    let json = serde_json::to_string(cert).unwrap();
    assert!(json.contains("schedule_hash"));
    assert!(cert.to_string().contains("2 workers"));
}

#[test]
fn no_workers() {
    let mut s = base();
    s.workers.clear();
    assert!(errors(&s, &FACTS).contains(&VerifyError::NoWorkers));
}

#[test]
fn task_id_out_of_range() {
    let mut s = base();
    s.workers[1].instrs[1] = Instr::Run(TaskId(9));
    let e = errors(&s, &FACTS);
    assert!(
        e.contains(&VerifyError::TaskIdOutOfRange { at: at(1, 1), task: 9, tasks: 2 }),
        "{e:?}"
    );
    // and the task it replaced is now never run
    assert!(e.contains(&VerifyError::TaskNotRun { task: "L0.cons".into() }));
}

#[test]
fn counter_id_out_of_range() {
    let mut s = base();
    s.workers[0].instrs[1] = Instr::Signal(CounterId(5));
    let e = errors(&s, &FACTS);
    assert!(
        e.contains(&VerifyError::CounterIdOutOfRange { at: at(0, 1), counter: 5, counters: 1 }),
        "{e:?}"
    );
}

#[test]
fn buffer_id_out_of_range() {
    let mut s = base();
    s.tasks[1].reads[0].buffer = BufferId(7);
    let e = errors(&s, &FACTS);
    assert!(e.contains(&VerifyError::BufferIdOutOfRange {
        task: "L0.cons".into(),
        place: RegionPlace::Read(0),
        buffer: 7,
        buffers: 2
    }));
    // the op's src is no longer inside a declared read
    assert!(e.iter().any(|x| matches!(x, VerifyError::OpRegionUndeclared { task, place: RegionPlace::OpRead(0), .. } if task == "L0.cons")), "{e:?}");
}

#[test]
fn empty_region() {
    let mut s = base();
    s.tasks[0].reads.push(Region::new(BufferId(0), 8, 0));
    let e = errors(&s, &FACTS);
    assert_eq!(
        e,
        vec![VerifyError::EmptyRegion {
            task: "L0.prod".into(),
            place: RegionPlace::Read(1),
            buffer: "a".into()
        }]
    );
}

#[test]
fn region_out_of_bounds_and_overflow() {
    let mut s = base();
    s.tasks[0].writes.push(Region::new(BufferId(1), 48, 32));
    s.tasks[1].writes.push(Region::new(BufferId(0), u64::MAX - 3, 8));
    let e = errors(&s, &FACTS);
    assert!(e.contains(&VerifyError::RegionOutOfBounds {
        task: "L0.prod".into(),
        place: RegionPlace::Write(1),
        buffer: "b".into(),
        range: ByteRange { offset: 48, len: 32 },
        buffer_bytes: 64
    }));
    assert!(e.iter().any(|x| matches!(x, VerifyError::RegionOutOfBounds { task, range, .. }
        if task == "L0.cons" && range.offset == u64::MAX - 3)));
}

#[test]
fn task_run_twice_or_never() {
    let mut s = base();
    s.workers[0].instrs.push(Instr::Run(TaskId(0)));
    s.workers[1].instrs.pop();
    let e = errors(&s, &FACTS);
    assert!(e.contains(&VerifyError::TaskRunMoreThanOnce {
        task: "L0.prod".into(),
        runs: vec![at(0, 0), at(0, 2)]
    }));
    assert!(e.contains(&VerifyError::TaskNotRun { task: "L0.cons".into() }));
}

#[test]
fn unsatisfiable_wait() {
    let mut s = base();
    s.workers[1].instrs[0] = Instr::Wait { counter: CounterId(0), at_least: 2 };
    let e = errors(&s, &FACTS);
    assert!(e.contains(&VerifyError::UnsatisfiableWait {
        at: at(1, 0),
        counter: "L0.prod.done".into(),
        at_least: 2,
        total_signals: 1
    }));
    // it is also reported as the deadlock it causes
    assert!(e.iter().any(|x| matches!(x, VerifyError::Deadlock { .. })));
}

#[test]
fn copy_regions() {
    let mut s = base();
    s.tasks[0].op =
        TaskOp::Copy { src: Region::new(BufferId(0), 0, 16), dst: Region::new(BufferId(1), 32, 8) };
    let e = errors(&s, &FACTS);
    assert!(
        e.contains(&VerifyError::OpRegionUndeclared {
            task: "L0.prod".into(),
            place: RegionPlace::OpWrite(0),
            buffer: "b".into(),
            range: ByteRange { offset: 32, len: 8 }
        }),
        "{e:?}"
    );
    assert!(e.contains(&VerifyError::CopyLengthMismatch {
        task: "L0.prod".into(),
        src_len: 16,
        dst_len: 8
    }));
}

#[test]
fn only_weights_take_a_format() {
    // A weight with a format passes; the same format on an activation is malformed.
    let mut s = base();
    let w = s.add_buffer("w", BufferKind::Weight, 64);
    s.buffers[w.index()].format = Some(WeightFormat::Int8);
    assert!(verify(&s, &FACTS).is_ok());
    s.buffers[0].format = Some(WeightFormat::Bf16);
    let e = errors(&s, &FACTS);
    assert_eq!(
        e,
        vec![VerifyError::FormatOnNonWeight { buffer: "a".into(), kind: "Activation".into() }]
    );
    assert!(e[0].is_malformed());
    assert!(e[0].to_string().contains("`a` (Activation) has a `format`"), "{}", e[0]);
}

#[test]
fn duplicate_names() {
    let mut s = base();
    s.tasks[1].name = "L0.prod".into();
    let e = errors(&s, &FACTS);
    assert!(e.contains(&VerifyError::DuplicateName {
        kind: NameKind::Task,
        name: "L0.prod".into(),
        first: 0,
        second: 1
    }));
}

#[test]
fn deadlock_cycle_is_reported_with_stuck_workers() {
    let mut s = base();
    // worker 0 now waits for a counter only worker 1 signals after its own wait.
    let back = s.add_counter("L0.cons.done", CounterReset::Zeroed);
    s.workers[0].instrs.insert(0, Instr::Wait { counter: back, at_least: 1 });
    s.workers[1].instrs.push(Instr::Signal(back));
    let e = errors(&s, &FACTS);
    let VerifyError::Deadlock { stuck, blocked, finished } = &e[0] else { panic!("{e:?}") };
    assert_eq!((*finished, blocked.len()), (0, 0));
    assert_eq!(stuck.len(), 2);
    assert_eq!(stuck[0].at, at(0, 0));
    assert_eq!(stuck[0].counter, "L0.cons.done");
    assert_eq!((stuck[0].at_least, stuck[0].value), (1, 0));
    assert_eq!(stuck[0].pending_signals, vec![at(1, 2)]);
    assert_eq!(stuck[1].at, at(1, 0));
    assert_eq!(stuck[1].counter, "L0.prod.done");
    assert_eq!(stuck[1].pending_signals, vec![at(0, 2)]);
    let text = verify(&s, &FACTS).unwrap_err().to_string();
    assert!(
        text.contains(
            "worker 0 instruction 0 waits for counter `L0.cons.done` >= 1, which stays at 0"
        ),
        "{text}"
    );
}

#[test]
fn dropped_wait_is_a_race_naming_both_tasks() {
    let mut s = base();
    s.workers[1].instrs.remove(0);
    let e = errors(&s, &FACTS);
    assert_eq!(e.len(), 1, "{e:?}");
    let VerifyError::Race { buffer, first, second } = &e[0] else { panic!("{e:?}") };
    assert_eq!(buffer, "b");
    assert_eq!(
        (first.task.as_str(), first.at, first.kind),
        ("L0.prod", at(0, 0), AccessKind::Write)
    );
    assert_eq!(
        (second.task.as_str(), second.at, second.kind),
        ("L0.cons", at(1, 0), AccessKind::Read)
    );
    assert_eq!(first.range, ByteRange { offset: 0, len: 32 });
    assert_eq!(second.range, ByteRange { offset: 0, len: 32 });
    let text = verify(&s, &FACTS).unwrap_err().to_string();
    assert!(
        text.contains("race on buffer `b`")
            && text.contains("`L0.prod`")
            && text.contains("`L0.cons`")
    );
}

#[test]
fn signal_before_task_is_a_race() {
    let mut s = base();
    s.workers[0].instrs.swap(0, 1);
    let e = errors(&s, &FACTS);
    assert!(
        matches!(&e[..], [VerifyError::Race { first, second, .. }] if first.task == "L0.prod" && second.task == "L0.cons")
    );
}

#[test]
fn partial_threshold_orders_only_what_it_must() {
    // Two unordered producers signal one counter; a wait for 1 orders neither (race), a wait
    // for 2 orders both (safe); a progress counter on ONE worker orders by ordinal.
    let mut s = base();
    let extra = s.add_task(
        "L0.prod2",
        TaskOp::Copy { src: Region::new(BufferId(0), 0, 8), dst: Region::new(BufferId(1), 32, 8) },
        vec![Region::new(BufferId(0), 0, 8)],
        vec![Region::new(BufferId(1), 32, 8)],
    );
    s.workers.push(Worker { instrs: vec![Instr::Run(extra), Instr::Signal(CounterId(0))] });
    assert!(matches!(&errors(&s, &FACTS)[..], [VerifyError::Race { .. }]));
    s.workers[1].instrs[0] = Instr::Wait { counter: CounterId(0), at_least: 2 };
    verify(&s, &FACTS).expect("full count orders both producers");
    // progress counter: both producers on worker 0, the consumer waits for the first only.
    let mut s = base();
    let extra = s.add_task(
        "L0.prod2",
        TaskOp::Copy { src: Region::new(BufferId(0), 0, 8), dst: Region::new(BufferId(1), 32, 8) },
        vec![Region::new(BufferId(0), 0, 8)],
        vec![Region::new(BufferId(1), 32, 8)],
    );
    s.workers[0].instrs.extend([Instr::Run(extra), Instr::Signal(CounterId(0))]);
    s.counters[0].reset = CounterReset::Epoch { signals_per_launch: 2 };
    verify(&s, &FACTS)
        .expect("the first of two program-ordered signals is ordered by a wait for 1");
}

#[test]
fn too_many_workers() {
    let s = base();
    verify(&s, &LaunchFacts { sm_count: 2, blocks_per_sm: 1 }).expect("fits exactly");
    let e = errors(&s, &LaunchFacts { sm_count: 1, blocks_per_sm: 1 });
    assert_eq!(
        e,
        vec![VerifyError::TooManyWorkers {
            workers: 2,
            sm_count: 1,
            blocks_per_sm: 1,
            capacity: 1
        }]
    );
    assert!(VerifyError::TooManyWorkers { workers: 2, sm_count: 1, blocks_per_sm: 1, capacity: 1 }
        .to_string()
        .contains("1 SMs x 1 blocks per SM = 1"));
}

#[test]
fn epoch_counter_must_receive_its_signals() {
    let mut s = base();
    s.counters[0].reset = CounterReset::Epoch { signals_per_launch: 1 };
    verify(&s, &FACTS).expect("exactly one signal per launch");
    s.counters[0].reset = CounterReset::Epoch { signals_per_launch: 2 };
    let e = errors(&s, &FACTS);
    assert_eq!(
        e,
        vec![VerifyError::EpochSignalMismatch {
            counter: "L0.prod.done".into(),
            signals_per_launch: 2,
            signals: 1
        }]
    );
}

#[test]
fn never_reset_counter_must_not_be_waited_on() {
    let mut s = base();
    let dbg = s.add_counter("debug.progress", CounterReset::Never);
    s.workers[0].instrs.push(Instr::Signal(dbg));
    verify(&s, &FACTS).expect("a never-reset counter nobody waits on is fine");
    s.counters[0].reset = CounterReset::Never;
    let e = errors(&s, &FACTS);
    assert_eq!(
        e,
        vec![VerifyError::NeverResetCounterWaited {
            counter: "L0.prod.done".into(),
            waits: vec![at(1, 0)]
        }]
    );
}

#[test]
fn weights_are_never_written() {
    let mut s = base();
    let w = s.add_buffer("model.w", BufferKind::Weight, 64);
    // Reading a weight is what weights are for.
    s.tasks[0].reads.push(Region::new(w, 0, 64));
    verify(&s, &FACTS).expect("a task may read weights");
    // A declared write or add to one is refused, with the task, place and range.
    s.tasks[1].writes.push(Region::new(w, 8, 8));
    s.tasks[0].adds.push(Region::new(w, 0, 4));
    let e = errors(&s, &FACTS);
    assert_eq!(
        e,
        vec![
            VerifyError::WeightWritten {
                task: "L0.prod".into(),
                place: RegionPlace::Add(0),
                buffer: "model.w".into(),
                range: ByteRange { offset: 0, len: 4 },
            },
            VerifyError::WeightWritten {
                task: "L0.cons".into(),
                place: RegionPlace::Write(1),
                buffer: "model.w".into(),
                range: ByteRange { offset: 8, len: 8 },
            },
        ]
    );
    assert!(!e[0].is_malformed());
    assert!(e[1].to_string().contains("weight buffer `model.w`"), "{}", e[1]);
}

#[test]
fn every_error_is_collected() {
    let mut s = base();
    s.workers[1].instrs.remove(0); // race
    s.tasks[0].reads.push(Region::new(BufferId(0), 60, 8)); // out of bounds
    s.workers.push(Worker { instrs: vec![Instr::Signal(CounterId(3))] }); // bad counter
    let r = verify(&s, &LaunchFacts { sm_count: 1, blocks_per_sm: 2 }).unwrap_err();
    let kinds: Vec<_> = r
        .errors
        .iter()
        .map(|e| format!("{e:?}").split([' ', '{']).next().unwrap().to_string())
        .collect();
    for k in ["RegionOutOfBounds", "CounterIdOutOfRange", "Race", "TooManyWorkers"] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    let json = r.to_json();
    let back: amk_verify::Rejection = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    let text = r.to_string();
    assert!(text.starts_with("schedule rejected: 5 error(s)"), "{text}"); // + the oob read races too
}

#[test]
fn layered_schedules_verify_and_mutations_are_caught() {
    use amk_verify::testing::{layered, LayeredSpec};
    let mut spec = LayeredSpec::smollm2().with_layers(2);
    spec.workers = 16;
    spec.vocab = 512;
    let s = layered(&spec);
    let facts = LaunchFacts { sm_count: 16, blocks_per_sm: 1 };
    verify(&s, &facts).expect("layered schedule is safe");
    // Drop the first wait of the worker that runs the first o-proj tile: a race on `attn`
    // or `resid` with that worker named.
    let o = s.task_by_name("L0.o.t0").unwrap();
    let (w, i) = s
        .workers
        .iter()
        .enumerate()
        .find_map(|(w, wk)| wk.instrs.iter().position(|x| *x == Instr::Run(o)).map(|i| (w, i)))
        .unwrap();
    let mut m = s.clone();
    assert!(matches!(m.workers[w].instrs[i - 1], Instr::Wait { .. }));
    m.workers[w].instrs.remove(i - 1);
    let e = errors(&m, &facts);
    assert!(e.iter().all(|x| matches!(x, VerifyError::Race { .. })), "{e:?}");
    assert!(
        e.iter().any(|x| matches!(x, VerifyError::Race { first, second, .. }
        if (first.task == "L0.o.t0" && first.at == at(w as u32, i as u32 - 1))
            || (second.task == "L0.o.t0" && second.at == at(w as u32, i as u32 - 1)))),
        "{e:?}"
    );
}

/// Two workers with no sync between them: worker 0 runs `L0.a`, worker 1 runs `L0.b`; each
/// copies its own bytes of `x` and touches `acc[0..16)` as `a` and `b` say.
fn two_unordered(a: AccessKind, b: AccessKind) -> Schedule {
    let mut s = Schedule::new("adds");
    let x = s.add_buffer("x", BufferKind::Activation, 64);
    let acc = s.add_buffer("acc", BufferKind::Activation, 16);
    for (w, (name, kind)) in [("L0.a", a), ("L0.b", b)].into_iter().enumerate() {
        let (src, dst) = (Region::new(x, 32 * w as u64, 8), Region::new(x, 32 * w as u64 + 8, 8));
        let t = s.add_task(name, TaskOp::Copy { src, dst }, vec![src], vec![dst]);
        let r = Region::new(acc, 0, 16);
        let task = &mut s.tasks[t.index()];
        match kind {
            AccessKind::Read => task.reads.push(r),
            AccessKind::Write => task.writes.push(r),
            AccessKind::Add => task.adds.push(r),
        }
        s.workers.push(Worker { instrs: vec![Instr::Run(t)] });
    }
    s
}

#[test]
fn atomic_adds_commute_without_order() {
    let s = two_unordered(AccessKind::Add, AccessKind::Add);
    verify(&s, &FACTS).expect("adds to the same bytes need no order");
    // The adds are written to schedule.ron and read back.
    let text = s.to_ron_string();
    assert!(text.contains("adds: [(\"acc\", 0, 16)]"), "{text}");
    assert_eq!(Schedule::from_ron_str(&text).unwrap(), s);
}

#[test]
fn an_add_races_with_an_unordered_read_or_write() {
    for (a, b) in [
        (AccessKind::Add, AccessKind::Read),
        (AccessKind::Read, AccessKind::Add),
        (AccessKind::Add, AccessKind::Write),
        (AccessKind::Write, AccessKind::Add),
    ] {
        let e = errors(&two_unordered(a, b), &FACTS);
        assert_eq!(e.len(), 1, "{a:?} {b:?}: {e:?}");
        let VerifyError::Race { buffer, first, second } = &e[0] else { panic!("{e:?}") };
        assert_eq!(buffer, "acc");
        assert_eq!((first.task.as_str(), first.kind), ("L0.a", a));
        assert_eq!((second.task.as_str(), second.kind), ("L0.b", b));
        let text = verify(&two_unordered(a, b), &FACTS).unwrap_err().to_string();
        assert!(text.contains("adds to bytes [0, 16)"), "{text}");
    }
}

/// Adds ordered after a write and before a read pass; the same adds with the read's wait
/// removed race with the read, even though every add is ordered after the write.
#[test]
fn adds_are_checked_against_reads_after_them() {
    let mut s = Schedule::new("adds-chain");
    let acc = s.add_buffer("acc", BufferKind::Activation, 16);
    let x = s.add_buffer("x", BufferKind::Activation, 64);
    let init = s.add_counter("L0.init.done", CounterReset::Zeroed);
    let added = s.add_counter("L0.add.done", CounterReset::Zeroed);
    let r = Region::new(acc, 0, 16);
    let zero = s.add_task(
        "L0.init",
        TaskOp::Copy { src: Region::new(x, 0, 16), dst: r },
        vec![Region::new(x, 0, 16)],
        vec![r],
    );
    let mut workers = vec![Worker { instrs: vec![Instr::Run(zero), Instr::Signal(init)] }];
    for k in 0..2u64 {
        let (src, dst) = (Region::new(x, 16 + 16 * k, 8), Region::new(x, 24 + 16 * k, 8));
        let t = s.add_task(format!("L0.add{k}"), TaskOp::Copy { src, dst }, vec![src], vec![dst]);
        s.tasks[t.index()].adds.push(r);
        workers.push(Worker {
            instrs: vec![
                Instr::Wait { counter: init, at_least: 1 },
                Instr::Run(t),
                Instr::Signal(added),
            ],
        });
    }
    let dst = Region::new(x, 56, 8);
    let read = s.add_task(
        "L0.read",
        TaskOp::Copy { src: Region::new(acc, 0, 8), dst },
        vec![r],
        vec![dst],
    );
    workers.push(Worker {
        instrs: vec![Instr::Wait { counter: added, at_least: 2 }, Instr::Run(read)],
    });
    s.workers = workers;
    verify(&s, &FACTS).expect("init, then both adds, then the read");
    // The read waits for one add only: the other may still be adding. (Which add signalled
    // is not known, so the verifier orders the read after neither, nor after the init.)
    let mut early = s.clone();
    early.workers[3].instrs[0] = Instr::Wait { counter: added, at_least: 1 };
    let e = errors(&early, &FACTS);
    let races: Vec<(&str, AccessKind)> = e
        .iter()
        .map(|e| match e {
            VerifyError::Race { first, second, .. } if second.task == "L0.read" => {
                (first.task.as_str(), first.kind)
            }
            _ => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(
        races,
        [
            ("L0.init", AccessKind::Write),
            ("L0.add0", AccessKind::Add),
            ("L0.add1", AccessKind::Add)
        ]
    );
}

/// A fused MLP's atomic adds must be declared, as adds or (stronger) as writes.
#[test]
fn undeclared_op_add_is_reported() {
    use amk_schedule::ops::ProjInput;
    let mut s = Schedule::new("mlp");
    let x = s.add_buffer("x", BufferKind::Activation, 16);
    let gate = s.add_buffer("gate", BufferKind::Weight, 32);
    let up = s.add_buffer("up", BufferKind::Weight, 32);
    let down = s.add_buffer("down", BufferKind::Weight, 32);
    let op = TaskOp::GatedMlp {
        input: ProjInput::Vector { buffer: x, len: 4 },
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
    assert_eq!(s.tasks[t.index()].adds, vec![Region::new(x, 0, 16)]);
    s.workers = vec![Worker { instrs: vec![Instr::Run(t)] }];
    verify(&s, &FACTS).expect("declared as an add");
    let mut as_write = s.clone();
    as_write.tasks[0].writes = std::mem::take(&mut as_write.tasks[0].adds);
    verify(&as_write, &FACTS).expect("declared as a write");
    let mut undeclared = s.clone();
    undeclared.tasks[0].adds.clear();
    let e = errors(&undeclared, &FACTS);
    assert!(
        e.iter().any(|e| matches!(e, VerifyError::OpRegionUndeclared { place: RegionPlace::OpAdd(0), buffer, .. } if buffer == "x")),
        "{e:?}"
    );
}
