//! Ground truth: an exhaustive interleaving explorer for small schedules, with its own tiny
//! model of the semantics. It shares no code with the verifier: it reads only the public
//! fields of `Schedule`.
//!
//! Model: each `Run` is two steps (start, end); a task is "in flight" between them. `Signal`
//! adds one to its counter; `Wait(c, k)` may step only when the counter has reached the
//! threshold. A state is every worker's pc and in-flight flag (counter values follow from the
//! pcs). Every reachable state is visited (memoised). Unsafe if: a reachable state where not
//! all workers are done and none can step (deadlock); two tasks in flight on different workers
//! with overlapping bytes, one a write (race); more workers than resident blocks; and the same
//! for a SECOND launch that starts after the first completes, with counters carried over by
//! their reset policy (zeroed: back to 0; epoch: carried, thresholds offset by one epoch;
//! never: carried). Malformed schedules are unsafe by definition.
//!
//! Tagged buffers: a task in flight may end only once every task that writes bytes of a
//! tagged buffer it reads has ended (its reads wait for the values); accesses to tagged bytes
//! never race. That wait orders nothing else (no fence), so races on other buffers are also
//! looked for in a second exploration without it. Malformed: an add to a tagged buffer, a
//! tagged byte written by two tasks, a tagged byte read but written by none.

#![allow(dead_code)]

use amk_schedule::schedule::{BufferKind, CounterReset, Instr, Region, Schedule};
use amk_schedule::TaskOp;
use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Truth {
    Safe,
    Malformed(String),
    Deadlock { launch: u32 },
    Race { launch: u32, a: u32, b: u32 },
    Residency,
}

impl Truth {
    pub fn is_safe(&self) -> bool {
        *self == Truth::Safe
    }
    pub fn is_semantic(&self) -> bool {
        matches!(self, Truth::Deadlock { .. } | Truth::Race { .. })
    }
}

/// Byte interval [lo, hi) of a region, or None if it is empty / overflows.
fn span(offset: u64, len: u64) -> Option<(u64, u64)> {
    let hi = offset.checked_add(len)?;
    (len > 0).then_some((offset, hi))
}

fn malformed(s: &Schedule) -> Option<String> {
    if s.workers.is_empty() {
        return Some("no workers".into());
    }
    let nt = s.tasks.len();
    let nc = s.counters.len();
    let mut runs = vec![0u32; nt];
    for w in &s.workers {
        for i in &w.instrs {
            match *i {
                Instr::Run(t) => {
                    if t.0 as usize >= nt {
                        return Some("task id".into());
                    }
                    runs[t.0 as usize] += 1;
                }
                Instr::Signal(c) | Instr::Wait { counter: c, .. } => {
                    if c.0 as usize >= nc {
                        return Some("counter id".into());
                    }
                }
            }
        }
    }
    if runs.iter().any(|&r| r != 1) {
        return Some("task not run exactly once".into());
    }
    for names in [
        s.buffers.iter().map(|b| b.name.clone()).collect::<Vec<_>>(),
        s.counters.iter().map(|b| b.name.clone()).collect(),
        s.tasks.iter().map(|b| b.name.clone()).collect(),
    ] {
        let set: HashSet<_> = names.iter().collect();
        if set.len() != names.len() {
            return Some("duplicate name".into());
        }
    }
    for t in &s.tasks {
        for r in t.reads.iter().chain(&t.writes).chain(&t.adds) {
            let Some(b) = s.buffers.get(r.buffer.0 as usize) else {
                return Some("buffer id".into());
            };
            match span(r.offset, r.len) {
                Some((_, hi)) if hi <= b.bytes => {}
                _ => return Some("region bounds".into()),
            }
        }
        #[allow(unreachable_patterns)]
        let (src, dst) = match &t.op {
            TaskOp::Copy { src, dst } => (src, dst),
            _ => continue,
        };
        for r in [src, dst] {
            let Some(b) = s.buffers.get(r.buffer.0 as usize) else {
                return Some("buffer id".into());
            };
            match span(r.offset, r.len) {
                Some((_, hi)) if hi <= b.bytes => {}
                _ => return Some("region bounds".into()),
            }
        }
        let inside = |outer: &[Region], r: &Region| {
            outer.iter().any(|o| {
                o.buffer == r.buffer && o.offset <= r.offset && r.offset + r.len <= o.offset + o.len
            })
        };
        if !inside(&t.reads, src) || !inside(&t.writes, dst) || src.len != dst.len {
            return Some("copy regions".into());
        }
    }
    // Tagged buffers, byte by byte: who writes each byte.
    for (b, buf) in s.buffers.iter().enumerate() {
        if buf.kind != BufferKind::Tagged {
            continue;
        }
        assert!(buf.bytes <= 1 << 16, "explorer: tagged buffer too big");
        let mut writer: Vec<Option<usize>> = vec![None; buf.bytes as usize];
        for (t, task) in s.tasks.iter().enumerate() {
            if task.adds.iter().any(|r| r.buffer.0 as usize == b) {
                return Some("add to tagged".into());
            }
            for r in task.writes.iter().filter(|r| r.buffer.0 as usize == b) {
                for x in &mut writer[r.offset as usize..(r.offset + r.len) as usize] {
                    match x {
                        Some(u) if *u != t => return Some("tagged written twice".into()),
                        _ => *x = Some(t),
                    }
                }
            }
        }
        for task in &s.tasks {
            for r in task.reads.iter().filter(|r| r.buffer.0 as usize == b) {
                if writer[r.offset as usize..(r.offset + r.len) as usize].contains(&None) {
                    return Some("tagged read unwritten".into());
                }
            }
        }
    }
    None
}

fn tagged(s: &Schedule, r: &Region) -> bool {
    s.buffers[r.buffer.0 as usize].kind == BufferKind::Tagged
}

/// The tasks that write tagged bytes task `t` reads (maybe `t` itself).
fn tagged_writers(s: &Schedule, t: usize) -> Vec<usize> {
    let hit = |x: &Region, y: &Region| {
        x.buffer == y.buffer && x.offset < y.offset + y.len && y.offset < x.offset + x.len
    };
    (0..s.tasks.len())
        .filter(|&u| {
            s.tasks[t]
                .reads
                .iter()
                .filter(|r| tagged(s, r))
                .any(|r| s.tasks[u].writes.iter().any(|w| hit(r, w)))
        })
        .collect()
}

fn conflicts(s: &Schedule, a: usize, b: usize) -> bool {
    let (ta, tb) = (&s.tasks[a], &s.tasks[b]);
    // (Tagged bytes never race: each read waits for the one write.)
    let hit = |x: &Region, y: &Region| {
        x.buffer == y.buffer
            && x.offset < y.offset + y.len
            && y.offset < x.offset + x.len
            && !tagged(s, x)
    };
    // Atomic adds commute with each other and conflict with reads and writes.
    let any = |x: &[Region], y: &[Region]| x.iter().any(|a| y.iter().any(|b| hit(a, b)));
    any(&ta.writes, &tb.writes)
        || any(&ta.writes, &tb.reads)
        || any(&ta.reads, &tb.writes)
        || any(&ta.adds, &tb.reads)
        || any(&ta.adds, &tb.writes)
        || any(&ta.reads, &tb.adds)
        || any(&ta.writes, &tb.adds)
}

/// Explores one launch from counter values `base`, waits comparing against `offset + k`;
/// tagged reads wait for their writers if `tagged_waits`.
fn explore_launch(
    s: &Schedule,
    base: &[u64],
    offset: &[u64],
    launch: u32,
    tagged_waits: bool,
) -> Option<Truth> {
    let nw = s.workers.len();
    assert!(nw <= 8, "explorer: too many workers");
    let nc = s.counters.len();
    for w in &s.workers {
        assert!(w.instrs.len() < 127, "explorer: too many instructions");
    }
    // sig[w][i][c]: signals to c among the first i instructions of worker w.
    let sig: Vec<Vec<Vec<u64>>> = s
        .workers
        .iter()
        .map(|w| {
            let mut rows = vec![vec![0u64; nc]];
            for i in &w.instrs {
                let mut r = rows.last().unwrap().clone();
                if let Instr::Signal(c) = i {
                    r[c.0 as usize] += 1;
                }
                rows.push(r);
            }
            rows
        })
        .collect();
    // Where each task runs, and the tasks whose tagged writes it waits for.
    let mut at = vec![(0usize, 0usize); s.tasks.len()];
    for (w, worker) in s.workers.iter().enumerate() {
        for (i, instr) in worker.instrs.iter().enumerate() {
            if let Instr::Run(t) = instr {
                at[t.0 as usize] = (w, i);
            }
        }
    }
    let writers: Vec<Vec<usize>> = (0..s.tasks.len()).map(|t| tagged_writers(s, t)).collect();
    let pc_of = |st: u64, w: usize| ((st >> (8 * w)) & 0x7f) as usize;
    let fl_of = |st: u64, w: usize| (st >> (8 * w + 7)) & 1 == 1;
    let mut seen: HashSet<u64> = HashSet::new();
    let mut stack = vec![0u64];
    seen.insert(0);
    while let Some(st) = stack.pop() {
        // Races among in-flight tasks.
        let inflight: Vec<(usize, usize)> = (0..nw)
            .filter(|&w| fl_of(st, w))
            .map(|w| match s.workers[w].instrs[pc_of(st, w)] {
                Instr::Run(t) => (w, t.0 as usize),
                _ => unreachable!(),
            })
            .collect();
        for x in 0..inflight.len() {
            for y in x + 1..inflight.len() {
                if conflicts(s, inflight[x].1, inflight[y].1) {
                    return Some(Truth::Race {
                        launch,
                        a: inflight[x].1 as u32,
                        b: inflight[y].1 as u32,
                    });
                }
            }
        }
        let value = |c: usize| base[c] + (0..nw).map(|w| sig[w][pc_of(st, w)][c]).sum::<u64>();
        let mut all_done = true;
        let mut any = false;
        for w in 0..nw {
            let pc = pc_of(st, w);
            let instrs = &s.workers[w].instrs;
            if pc >= instrs.len() {
                continue;
            }
            all_done = false;
            let next = if fl_of(st, w) {
                // end of the task (once its tagged reads are written): clear flag, advance
                let Instr::Run(t) = instrs[pc] else { unreachable!() };
                let ended = |u: usize| pc_of(st, at[u].0) > at[u].1;
                (!tagged_waits || writers[t.0 as usize].iter().all(|&u| ended(u)))
                    .then(|| (st & !(0xffu64 << (8 * w))) | (((pc + 1) as u64) << (8 * w)))
            } else {
                match instrs[pc] {
                    Instr::Run(_) => Some(st | (1u64 << (8 * w + 7))),
                    Instr::Signal(_) => Some(st + (1u64 << (8 * w))),
                    Instr::Wait { counter, at_least } => {
                        let c = counter.0 as usize;
                        (value(c) >= offset[c] + u64::from(at_least))
                            .then(|| st + (1u64 << (8 * w)))
                    }
                }
            };
            if let Some(n) = next {
                any = true;
                if seen.insert(n) {
                    stack.push(n);
                }
            }
        }
        if !all_done && !any {
            return Some(Truth::Deadlock { launch });
        }
    }
    None
}

/// The ground truth for `s` launched twice with `capacity` co-resident blocks.
pub fn explore(s: &Schedule, capacity: u64) -> Truth {
    if let Some(why) = malformed(s) {
        return Truth::Malformed(why);
    }
    let nc = s.counters.len();
    let tagged = s.buffers.iter().any(|b| b.kind == BufferKind::Tagged);
    let launch = |base: &[u64], offset: &[u64], launch: u32| {
        explore_launch(s, base, offset, launch, true)
            .or_else(|| tagged.then(|| explore_launch(s, base, offset, launch, false)).flatten())
    };
    let zero = vec![0u64; nc];
    if let Some(t) = launch(&zero, &zero, 0) {
        return t;
    }
    // Launch 2: the first launch completed, so every signal ran once.
    let mut totals = vec![0u64; nc];
    for w in &s.workers {
        for i in &w.instrs {
            if let Instr::Signal(c) = i {
                totals[c.0 as usize] += 1;
            }
        }
    }
    let mut base = vec![0u64; nc];
    let mut offset = vec![0u64; nc];
    for (c, counter) in s.counters.iter().enumerate() {
        match counter.reset {
            CounterReset::Zeroed => {}
            CounterReset::Epoch { signals_per_launch } => {
                base[c] = totals[c];
                offset[c] = u64::from(signals_per_launch);
            }
            CounterReset::Never => base[c] = totals[c],
        }
    }
    if let Some(t) = launch(&base, &offset, 1) {
        return t;
    }
    if s.workers.len() as u64 > capacity {
        return Truth::Residency;
    }
    Truth::Safe
}
