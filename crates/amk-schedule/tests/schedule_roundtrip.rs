//! `schedule.ron` round trips: to_ron_string -> from_ron_str is the identity.

use amk_schedule::schedule::*;
use amk_schedule::TaskOp;
use proptest::prelude::*;

fn sample() -> Schedule {
    let mut s = Schedule::new("tiny");
    let x = s.add_buffer("resid", BufferKind::Activation, 2304);
    let y = s.add_buffer("q", BufferKind::Scratch, 128);
    let c = s.add_counter("L0.qkv.done", CounterReset::Zeroed);
    let e = s.add_counter("L0.epoch", CounterReset::Epoch { signals_per_launch: 1 });
    s.add_counter("debug", CounterReset::Never);
    let t = s.add_task(
        "L0.qkv.h0",
        TaskOp::Copy { src: Region::new(x, 0, 64), dst: Region::new(y, 0, 64) },
        vec![Region::new(x, 0, 2304)],
        vec![Region::new(y, 0, 64)],
    );
    s.workers.push(Worker { instrs: vec![Instr::Run(t), Instr::Signal(c), Instr::Signal(e)] });
    s.workers.push(Worker { instrs: vec![Instr::Wait { counter: c, at_least: 1 }] });
    s
}

#[test]
fn sample_round_trips_and_reads_by_name() {
    let s = sample();
    let text = s.to_ron_string();
    assert!(text.contains(r#"Run("L0.qkv.h0"), // 0:0"#), "{text}");
    assert!(text.contains(r#"Wait("L0.qkv.done", 1), // 1:0"#), "{text}");
    assert!(text.contains(r#"reads: [("resid", 0, 2304)]"#), "{text}");
    assert!(text.contains("Epoch(signals_per_launch: 1)"), "{text}");
    assert_eq!(Schedule::from_ron_str(&text).unwrap(), s);
    assert_eq!(Schedule::from_ron_str(&text).unwrap().to_ron_string(), text);
}

#[test]
fn json_uses_indices() {
    let s = sample();
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains(r#"{"Run":0}"#), "{json}");
    let back: Schedule = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}

#[test]
fn out_of_range_ids_are_written_but_do_not_load() {
    let mut s = sample();
    s.workers[0].instrs[0] = Instr::Run(TaskId(9));
    let text = s.to_ron_string();
    match Schedule::from_ron_str(&text) {
        Err(ScheduleParseError::UnknownName { kind: NameKind::Task, name, .. }) => {
            assert_eq!(name, "<task #9 out of range>")
        }
        other => panic!("{other:?}"),
    }
}

fn name() -> impl Strategy<Value = String> {
    // Includes characters RON must escape.
    "[a-zA-Z0-9_.\"\\\\ /é-]{0,12}"
}

prop_compose! {
    fn region(nb: usize)(b in 0..nb.max(1), offset in 0u64..1 << 40, len in 0u64..1 << 20) -> Region {
        Region::new(BufferId(b as u32), offset, len)
    }
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (1usize..4, 0usize..4, 0usize..5, 0usize..4).prop_flat_map(|(nb, nc, nt, nw)| {
        let buffers = prop::collection::vec(
            (
                prop::sample::select(vec![
                    BufferKind::Weight,
                    BufferKind::Activation,
                    BufferKind::KvCache,
                    BufferKind::Logits,
                    BufferKind::Io,
                    BufferKind::Scratch,
                    BufferKind::Tagged,
                ]),
                any::<u64>(),
            ),
            nb,
        );
        let counters = prop::collection::vec(
            prop_oneof![
                Just(CounterReset::Zeroed),
                Just(CounterReset::Never),
                any::<u32>().prop_map(|n| CounterReset::Epoch { signals_per_launch: n }),
            ],
            nc,
        );
        let tasks = prop::collection::vec(
            (
                region(nb),
                region(nb),
                prop::collection::vec(region(nb), 0..3),
                prop::collection::vec(region(nb), 0..3),
            ),
            nt,
        );
        let instr = prop_oneof![
            (0..nt.max(1) as u32).prop_map(|t| Instr::Run(TaskId(t))),
            (0..nc.max(1) as u32).prop_map(|c| Instr::Signal(CounterId(c))),
            (0..nc.max(1) as u32, any::<u32>())
                .prop_map(|(c, k)| Instr::Wait { counter: CounterId(c), at_least: k }),
        ];
        let workers = prop::collection::vec(prop::collection::vec(instr, 0..6), nw);
        (name(), prop::collection::vec(name(), nb + nc + nt), buffers, counters, tasks, workers)
            .prop_map(move |(sname, names, buffers, counters, tasks, workers)| {
                // Unique names (the file refers by name): suffix the index.
                let mut s = Schedule::new(sname);
                for (i, (kind, bytes)) in buffers.into_iter().enumerate() {
                    s.add_buffer(format!("{}#{i}", names[i]), kind, bytes);
                }
                for (i, reset) in counters.into_iter().enumerate() {
                    s.add_counter(format!("{}#{i}", names[nb + i]), reset);
                }
                for (i, (src, dst, reads, writes)) in tasks.into_iter().enumerate() {
                    s.add_task(
                        format!("{}#{i}", names[nb + nc + i]),
                        TaskOp::Copy { src, dst },
                        reads,
                        writes,
                    );
                }
                // Only valid ids can be named; if there are no tasks/counters drop such instrs.
                s.workers = workers
                    .into_iter()
                    .map(|instrs| Worker {
                        instrs: instrs
                            .into_iter()
                            .filter(|i| match i {
                                Instr::Run(_) => nt > 0,
                                _ => nc > 0,
                            })
                            .collect(),
                    })
                    .collect();
                s
            })
    })
}

proptest! {
    #[test]
    fn to_ron_then_from_ron_is_identity(s in schedule()) {
        let text = s.to_ron_string();
        let back = Schedule::from_ron_str(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&back, &s);
        prop_assert_eq!(back.to_ron_string(), text);
    }
}
