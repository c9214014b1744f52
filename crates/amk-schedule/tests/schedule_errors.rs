//! Loading malformed `schedule.ron` text: syntax errors with line and column, unknown names,
//! duplicate names; hand-written files in any field order load.

use amk_schedule::schedule::*;

const GOOD: &str = r#"
// a hand-written schedule
Schedule(
    name: "hand",
    workers: [
        [Run("L0.copy"), Signal("L0.copy.done")],
        [Wait("L0.copy.done", 1), Run("L0.copy2")],
    ],
    tasks: [
        (name: "L0.copy", op: Copy(src: ("a", 0, 8), dst: ("b", 0, 8)), reads: [("a", 0, 8)], writes: [("b", 0, 8)]),
        (name: "L0.copy2", op: Copy(src: ("b", 0, 8), dst: ("a", 8, 8)), reads: [("b", 0, 8)], writes: [("a", 8, 8)]),
    ],
    counters: [(name: "L0.copy.done", reset: Zeroed)],
    buffers: [
        (name: "a", kind: Activation, bytes: 16),
        (name: "b", kind: Scratch, bytes: 8),
    ],
)
"#;

#[test]
fn hand_written_file_in_any_field_order_loads() {
    let s = Schedule::from_ron_str(GOOD).unwrap();
    assert_eq!(s.workers.len(), 2);
    assert_eq!(s.workers[1].instrs[0], Instr::Wait { counter: CounterId(0), at_least: 1 });
    assert_eq!(s.workers[1].instrs[1], Instr::Run(TaskId(1)));
    assert_eq!(s.tasks[1].writes[0], Region::new(BufferId(0), 8, 8));
    assert_eq!(Schedule::from_ron_str(&s.to_ron_string()).unwrap(), s);
}

fn err(text: &str) -> ScheduleParseError {
    Schedule::from_ron_str(text).expect_err("must fail")
}

#[test]
fn syntax_error_has_line_and_column() {
    let bad = GOOD.replace(r#"Signal("L0.copy.done")],"#, r#"Signal("L0.copy.done"),,],"#);
    match err(&bad) {
        ScheduleParseError::Syntax { line, column, message } => {
            assert_eq!(line, 6, "{message}");
            assert!(column > 30, "{column}");
        }
        e => panic!("{e:?}"),
    }
    let e = err("Schedule(name: 3)");
    assert!(matches!(e, ScheduleParseError::Syntax { line: 1, .. }), "{e:?}");
    assert!(e.to_string().starts_with("schedule.ron:1:"), "{e}");
}

#[test]
fn unknown_names_are_named() {
    for (from, to, kind, name, line) in [
        (r#"Run("L0.copy2")"#, r#"Run("L0.cpy2")"#, NameKind::Task, "L0.cpy2", 7),
        (r#"Wait("L0.copy.done", 1)"#, r#"Wait("L0.done", 1)"#, NameKind::Counter, "L0.done", 7),
        (r#"writes: [("a", 8, 8)]"#, r#"writes: [("c", 8, 8)]"#, NameKind::Buffer, "c", 11),
        (r#"src: ("a", 0, 8)"#, r#"src: ("zz", 0, 8)"#, NameKind::Buffer, "zz", 10),
    ] {
        let bad = GOOD.replacen(from, to, 1);
        match err(&bad) {
            ScheduleParseError::UnknownName { kind: k, name: n, line: l, .. } => {
                assert_eq!((k, n.as_str(), l), (kind, name, line));
            }
            e => panic!("{e:?}"),
        }
        let msg = err(&bad).to_string();
        assert!(msg.contains(&format!("unknown {kind} `{name}`")), "{msg}");
    }
}

#[test]
fn indices_instead_of_names_are_rejected() {
    let bad = GOOD.replace(r#"Run("L0.copy2")"#, "Run(1)");
    let e = err(&bad);
    assert!(matches!(e, ScheduleParseError::Syntax { .. }), "{e:?}");
    assert!(e.to_string().contains("by its name"), "{e}");
}

#[test]
fn duplicate_names_are_rejected() {
    let bad = GOOD.replace(r#"(name: "b", kind: Scratch"#, r#"(name: "a", kind: Scratch"#);
    assert_eq!(
        err(&bad),
        ScheduleParseError::DuplicateName {
            kind: NameKind::Buffer,
            name: "a".into(),
            first: 0,
            second: 1
        }
    );
}
