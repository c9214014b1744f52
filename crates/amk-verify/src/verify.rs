//! The checks: well-formedness (with the rules of tagged buffers), deadlock freedom (greedy
//! run), happens-before (vector clocks over waits, closed to a fixpoint), race freedom
//! (per-buffer sweep over byte segments in greedy-run order), co-residency and
//! launch-to-launch safety.
//!
//! Tagged buffers ([`BufferKind::Tagged`]): a `Run` whose task reads tagged bytes blocks until
//! the task that writes them has run; that blocking is part of the greedy run but adds no
//! happens-before edge (a tagged read orders only the values it reads). Those buffers need no
//! race check: nothing adds to them, each byte has one writing task, and every read of it
//! follows that write.

use crate::error::{
    Access, AccessKind, BlockedRun, ByteRange, InstrLoc, RegionPlace, StuckWorker, VerifyError,
};
use amk_schedule::schedule::{
    BufferId, BufferKind, CounterReset, Instr, NameKind, Region, Schedule,
};
use amk_schedule::TaskOp;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

const NONE: u32 = u32::MAX;

fn loc(w: usize, i: usize) -> InstrLoc {
    InstrLoc { worker: w as u32, index: i as u32 }
}

fn task_name(s: &Schedule, t: usize) -> String {
    s.tasks.get(t).map(|x| x.name.clone()).unwrap_or_else(|| format!("<task #{t}>"))
}

fn counter_name(s: &Schedule, c: usize) -> String {
    s.counters.get(c).map(|x| x.name.clone()).unwrap_or_else(|| format!("<counter #{c}>"))
}

fn buffer_name(s: &Schedule, b: usize) -> String {
    s.buffers.get(b).map(|x| x.name.clone()).unwrap_or_else(|| format!("<buffer #{b}>"))
}

/// Facts the analysis produced besides errors.
pub(crate) struct Outcome {
    pub happens_before_edges: u64,
}

/// Runs every check, appending every error found to `errors`.
pub(crate) fn check_all(
    s: &Schedule,
    capacity: (u32, u32),
    errors: &mut Vec<VerifyError>,
) -> Outcome {
    let totals = s.signal_counts();
    well_formed(s, &totals, errors);
    let handoffs = tagged(s, errors);
    let run = greedy(s, &handoffs);
    deadlock(s, &run, &handoffs, errors);
    let hb = HappensBefore::build(s, &run);
    races(s, &run, &hb, errors);
    residency(s, capacity, errors);
    launch_to_launch(s, &totals, errors);
    Outcome { happens_before_edges: hb.edge_total }
}

// ------------------------------------------------------------------------------------------
// 1. Well-formedness
// ------------------------------------------------------------------------------------------

fn check_region(
    s: &Schedule,
    task: usize,
    place: RegionPlace,
    r: &Region,
    errors: &mut Vec<VerifyError>,
) {
    let Some(buf) = s.buffers.get(r.buffer.index()) else {
        errors.push(VerifyError::BufferIdOutOfRange {
            task: task_name(s, task),
            place,
            buffer: r.buffer.0,
            buffers: s.buffers.len(),
        });
        return;
    };
    if r.len == 0 {
        errors.push(VerifyError::EmptyRegion {
            task: task_name(s, task),
            place,
            buffer: buf.name.clone(),
        });
    }
    let in_bounds = matches!(r.end(), Some(end) if end <= buf.bytes);
    if !in_bounds {
        errors.push(VerifyError::RegionOutOfBounds {
            task: task_name(s, task),
            place,
            buffer: buf.name.clone(),
            range: ByteRange { offset: r.offset, len: r.len },
            buffer_bytes: buf.bytes,
        });
    }
}

fn duplicate_names<'a>(
    kind: NameKind,
    names: impl Iterator<Item = &'a str>,
    errors: &mut Vec<VerifyError>,
) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, n) in names.enumerate() {
        if let Some(&first) = seen.get(n) {
            errors.push(VerifyError::DuplicateName { kind, name: n.to_string(), first, second: i });
        } else {
            seen.insert(n, i);
        }
    }
}

fn well_formed(s: &Schedule, totals: &[u64], errors: &mut Vec<VerifyError>) {
    if s.workers.is_empty() {
        errors.push(VerifyError::NoWorkers);
    }
    duplicate_names(NameKind::Buffer, s.buffers.iter().map(|b| b.name.as_str()), errors);
    for b in s.buffers.iter().filter(|b| b.format.is_some() && b.kind != BufferKind::Weight) {
        errors.push(VerifyError::FormatOnNonWeight {
            buffer: b.name.clone(),
            kind: format!("{:?}", b.kind),
        });
    }
    duplicate_names(NameKind::Counter, s.counters.iter().map(|c| c.name.as_str()), errors);
    duplicate_names(NameKind::Task, s.tasks.iter().map(|t| t.name.as_str()), errors);

    let nt = s.tasks.len();
    let nc = s.counters.len();
    let mut first_run: Vec<Option<InstrLoc>> = vec![None; nt];
    let mut extra_runs: HashMap<usize, Vec<InstrLoc>> = HashMap::new();
    for (w, worker) in s.workers.iter().enumerate() {
        for (i, instr) in worker.instrs.iter().enumerate() {
            match *instr {
                Instr::Run(t) => {
                    if t.index() >= nt {
                        errors.push(VerifyError::TaskIdOutOfRange {
                            at: loc(w, i),
                            task: t.0,
                            tasks: nt,
                        });
                    } else if let Some(first) = first_run[t.index()] {
                        extra_runs.entry(t.index()).or_insert_with(|| vec![first]).push(loc(w, i));
                    } else {
                        first_run[t.index()] = Some(loc(w, i));
                    }
                }
                Instr::Signal(c) | Instr::Wait { counter: c, .. } if c.index() >= nc => {
                    errors.push(VerifyError::CounterIdOutOfRange {
                        at: loc(w, i),
                        counter: c.0,
                        counters: nc,
                    });
                }
                Instr::Wait { counter, at_least } => {
                    let total = totals[counter.index()];
                    if u64::from(at_least) > total {
                        errors.push(VerifyError::UnsatisfiableWait {
                            at: loc(w, i),
                            counter: counter_name(s, counter.index()),
                            at_least,
                            total_signals: total,
                        });
                    }
                }
                Instr::Signal(_) => {}
            }
        }
    }
    for (t, first) in first_run.iter().enumerate() {
        if first.is_none() {
            errors.push(VerifyError::TaskNotRun { task: task_name(s, t) });
        }
    }
    let mut extra: Vec<_> = extra_runs.into_iter().collect();
    extra.sort_by_key(|(t, _)| *t);
    for (t, runs) in extra {
        errors.push(VerifyError::TaskRunMoreThanOnce { task: task_name(s, t), runs });
    }

    for (t, task) in s.tasks.iter().enumerate() {
        for (i, r) in task.reads.iter().enumerate() {
            check_region(s, t, RegionPlace::Read(i as u32), r, errors);
        }
        for (i, r) in task.writes.iter().enumerate() {
            check_region(s, t, RegionPlace::Write(i as u32), r, errors);
        }
        for (i, r) in task.adds.iter().enumerate() {
            check_region(s, t, RegionPlace::Add(i as u32), r, errors);
        }
        // The op's own footprint must be in bounds and covered by the declared regions (the
        // race check sees only declarations). An op's add may be declared as a write, which
        // orders it against everything.
        let bytes = |b: BufferId| s.buffers.get(b.index()).map_or(0, |x| x.bytes);
        let op = task.op.footprint(bytes);
        let adds_or_writes: Vec<Region> = task.adds.iter().chain(&task.writes).copied().collect();
        for (list, declared, place) in [
            (&op.reads, &task.reads, RegionPlace::OpRead as fn(u32) -> RegionPlace),
            (&op.writes, &task.writes, RegionPlace::OpWrite as fn(u32) -> RegionPlace),
            (&op.adds, &adds_or_writes, RegionPlace::OpAdd as fn(u32) -> RegionPlace),
        ] {
            for (i, r) in list.iter().enumerate() {
                if r.len == 0 {
                    continue;
                }
                check_region(s, t, place(i as u32), r, errors);
                if !declared.iter().any(|d| d.contains(r)) {
                    errors.push(VerifyError::OpRegionUndeclared {
                        task: task.name.clone(),
                        place: place(i as u32),
                        buffer: buffer_name(s, r.buffer.index()),
                        range: ByteRange { offset: r.offset, len: r.len },
                    });
                }
            }
        }
        if let TaskOp::Copy { src, dst } = &task.op {
            if src.len != dst.len {
                errors.push(VerifyError::CopyLengthMismatch {
                    task: task.name.clone(),
                    src_len: src.len,
                    dst_len: dst.len,
                });
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// 1b. Tagged buffers
// ------------------------------------------------------------------------------------------

/// A piece of a task's tagged read: bytes `[offset, offset + len)` of `buffer`, written by task
/// `writer` (`NONE`: by no task). The reader's `Run` blocks until the writer has run.
#[derive(Clone, Copy)]
pub(crate) struct Handoff {
    writer: u32,
    buffer: u32,
    offset: u64,
    len: u64,
}

fn is_tagged(s: &Schedule, b: BufferId) -> bool {
    s.buffers.get(b.index()).is_some_and(|x| x.kind == BufferKind::Tagged)
}

/// Checks the rules of tagged buffers (nothing adds to them, no byte has two writing tasks,
/// every byte read has a writer) and returns, per task, the hand-offs of its tagged reads.
fn tagged(s: &Schedule, errors: &mut Vec<VerifyError>) -> Vec<Vec<Handoff>> {
    let mut handoffs = vec![Vec::new(); s.tasks.len()];
    if !s.buffers.iter().any(|b| b.kind == BufferKind::Tagged) {
        return handoffs;
    }
    // Per tagged buffer, its writes `(offset, end, task)`; an add is an error of its own.
    let mut writes: Vec<Vec<(u64, u64, u32)>> = vec![Vec::new(); s.buffers.len()];
    let bytes = |b: BufferId| s.buffers.get(b.index()).map_or(0, |x| x.bytes);
    for (t, task) in s.tasks.iter().enumerate() {
        // Declared adds, and op adds declared as writes (on the device they are still adds).
        let op_adds = task.op.footprint(bytes).adds;
        let declared = task.adds.iter().enumerate().map(|(i, r)| (RegionPlace::Add(i as u32), r));
        let undeclared = op_adds
            .iter()
            .enumerate()
            .filter(|(_, r)| r.len > 0 && !task.adds.iter().any(|d| d.contains(r)))
            .map(|(i, r)| (RegionPlace::OpAdd(i as u32), r));
        for (place, r) in declared.chain(undeclared) {
            if is_tagged(s, r.buffer) {
                errors.push(VerifyError::TaggedAdd {
                    task: task.name.clone(),
                    place,
                    buffer: buffer_name(s, r.buffer.index()),
                    range: ByteRange { offset: r.offset, len: r.len },
                });
            }
        }
        for r in &task.writes {
            if r.len > 0 && is_tagged(s, r.buffer) {
                let end = r.offset.saturating_add(r.len);
                writes[r.buffer.index()].push((r.offset, end, t as u32));
            }
        }
    }
    // Write-once: a sweep in offset order over the writes that reach the current offset.
    // `reach[j]` = the furthest end among writes `0..=j` (for the readers' lookups below).
    let mut reach: Vec<Vec<u64>> = vec![Vec::new(); s.buffers.len()];
    for (b, ws) in writes.iter_mut().enumerate() {
        ws.sort_unstable();
        let mut open: Vec<(u64, u64, u32)> = Vec::new();
        let mut reported: HashSet<(u32, u32)> = HashSet::new();
        for &(offset, end, t) in ws.iter() {
            open.retain(|&(_, e, _)| e > offset);
            for &(_, e, u) in &open {
                if u != t && reported.insert((u.min(t), u.max(t))) {
                    errors.push(VerifyError::TaggedWrittenTwice {
                        buffer: buffer_name(s, b),
                        first: task_name(s, u as usize),
                        second: task_name(s, t as usize),
                        range: ByteRange { offset, len: e.min(end) - offset },
                    });
                }
            }
            open.push((offset, end, t));
        }
        reach[b] = ws
            .iter()
            .scan(0, |m, w| {
                *m = w.1.max(*m);
                Some(*m)
            })
            .collect();
    }
    // Every read: the writers of its bytes, and the bytes no task writes.
    for (t, task) in s.tasks.iter().enumerate() {
        for (i, r) in task.reads.iter().enumerate() {
            if r.len == 0 || !is_tagged(s, r.buffer) {
                continue;
            }
            // (Bytes past the buffer's end are reported as out of bounds.)
            let (b, lo) = (r.buffer.index(), r.offset);
            let hi = r.offset.saturating_add(r.len).min(s.buffers[b].bytes);
            if lo >= hi {
                continue;
            }
            let (ws, reach) = (&writes[b], &reach[b]);
            let mut pieces = Vec::new();
            let mut j = ws.partition_point(|w| w.0 < hi);
            while j > 0 && reach[j - 1] > lo {
                j -= 1;
                let (offset, end, writer) = ws[j];
                if end > lo {
                    let offset = offset.max(lo);
                    pieces.push(Handoff {
                        writer,
                        buffer: b as u32,
                        offset,
                        len: end.min(hi) - offset,
                    });
                }
            }
            pieces.sort_unstable_by_key(|h| h.offset);
            // The gaps between the pieces: unwritten, so the read waits for them forever.
            let mut gaps = Vec::new();
            let mut covered = lo;
            for h in &pieces {
                if h.offset > covered {
                    gaps.push((covered, h.offset));
                }
                covered = covered.max(h.offset + h.len);
            }
            if covered < hi {
                gaps.push((covered, hi));
            }
            for (offset, end) in gaps {
                let len = end - offset;
                errors.push(VerifyError::TaggedUnwrittenRead {
                    task: task.name.clone(),
                    place: RegionPlace::Read(i as u32),
                    buffer: buffer_name(s, b),
                    range: ByteRange { offset, len },
                });
                pieces.push(Handoff { writer: NONE, buffer: b as u32, offset, len });
            }
            handoffs[t].extend(pieces);
        }
    }
    handoffs
}

// ------------------------------------------------------------------------------------------
// 2. Deadlock: the greedy run
// ------------------------------------------------------------------------------------------

/// The result of the greedy run: how far each worker got, the order in which instructions
/// ran (a linear extension of every sound happens-before), the final counter values and which
/// tasks ran. Instructions with out-of-range ids act as no-ops (they are reported as
/// malformed). A worker stops at a wait below its threshold and at a `Run` whose tagged reads
/// have a writer that has not run (or none).
pub(crate) struct GreedyRun {
    pub pc: Vec<usize>,
    pub order: Vec<InstrLoc>,
    pub values: Vec<u64>,
    pub ran: Vec<bool>,
}

pub(crate) fn greedy(s: &Schedule, handoffs: &[Vec<Handoff>]) -> GreedyRun {
    let nw = s.workers.len();
    let nc = s.counters.len();
    let nt = s.tasks.len();
    let total: usize = s.workers.iter().map(|w| w.instrs.len()).sum();
    let mut pc = vec![0usize; nw];
    let mut values = vec![0u64; nc];
    let mut blocked: Vec<BinaryHeap<Reverse<(u32, u32)>>> = Vec::new();
    blocked.resize_with(nc, BinaryHeap::new);
    let mut ran = vec![false; nt];
    // Per task: its first hand-off whose writer may not have run; the workers whose `Run`
    // waits for it to run.
    let mut next = vec![0usize; nt];
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); nt];
    let mut ready: Vec<usize> = (0..nw).rev().collect();
    let mut order = Vec::with_capacity(total);
    while let Some(w) = ready.pop() {
        let instrs = &s.workers[w].instrs;
        while pc[w] < instrs.len() {
            match instrs[pc[w]] {
                Instr::Run(t) if t.index() < nt => {
                    let (t, hs) = (t.index(), &handoffs[t.index()]);
                    while hs
                        .get(next[t])
                        .is_some_and(|h| h.writer != NONE && ran[h.writer as usize])
                    {
                        next[t] += 1;
                    }
                    if let Some(h) = hs.get(next[t]) {
                        if h.writer != NONE {
                            readers[h.writer as usize].push(w);
                        }
                        break;
                    }
                    ran[t] = true;
                    ready.append(&mut readers[t]);
                }
                Instr::Run(_) => {}
                Instr::Signal(c) => {
                    if c.index() < nc {
                        let v = &mut values[c.index()];
                        *v += 1;
                        let heap = &mut blocked[c.index()];
                        while let Some(&Reverse((k, ww))) = heap.peek() {
                            if u64::from(k) <= *v {
                                heap.pop();
                                ready.push(ww as usize);
                            } else {
                                break;
                            }
                        }
                    }
                }
                Instr::Wait { counter, at_least } => {
                    if counter.index() < nc && values[counter.index()] < u64::from(at_least) {
                        blocked[counter.index()].push(Reverse((at_least, w as u32)));
                        break;
                    }
                }
            }
            order.push(loc(w, pc[w]));
            pc[w] += 1;
        }
    }
    GreedyRun { pc, order, values, ran }
}

fn deadlock(
    s: &Schedule,
    run: &GreedyRun,
    handoffs: &[Vec<Handoff>],
    errors: &mut Vec<VerifyError>,
) {
    let stuck_workers: Vec<usize> =
        (0..s.workers.len()).filter(|&w| run.pc[w] < s.workers[w].instrs.len()).collect();
    if stuck_workers.is_empty() {
        return;
    }
    // Where each task's first `Run` is (to say where a missing tagged write sits).
    let mut run_at: Vec<Option<InstrLoc>> = vec![None; s.tasks.len()];
    for (w, worker) in s.workers.iter().enumerate() {
        for (i, instr) in worker.instrs.iter().enumerate() {
            if let Instr::Run(t) = instr {
                if let Some(at @ None) = run_at.get_mut(t.index()) {
                    *at = Some(loc(w, i));
                }
            }
        }
    }
    let mut stuck = Vec::new();
    let mut blocked = Vec::new();
    for &w in &stuck_workers {
        let i = run.pc[w];
        let (counter, at_least) = match s.workers[w].instrs[i] {
            Instr::Wait { counter, at_least } => (counter, at_least),
            Instr::Run(t) => {
                let h = handoffs[t.index()]
                    .iter()
                    .find(|h| h.writer == NONE || !run.ran[h.writer as usize])
                    .expect("greedy runs stop at a Run only for a writer that has not run");
                let writer = (h.writer != NONE).then_some(h.writer as usize);
                blocked.push(BlockedRun {
                    at: loc(w, i),
                    task: task_name(s, t.index()),
                    buffer: buffer_name(s, h.buffer as usize),
                    range: ByteRange { offset: h.offset, len: h.len },
                    writer: writer.map(|u| task_name(s, u)),
                    writer_at: writer.and_then(|u| run_at[u]),
                });
                continue;
            }
            Instr::Signal(_) => unreachable!("greedy runs stop only at waits and runs"),
        };
        let mut pending = Vec::new();
        for &v in &stuck_workers {
            let instrs = &s.workers[v].instrs;
            if let Some(j) =
                (run.pc[v]..instrs.len()).find(|&j| instrs[j] == Instr::Signal(counter))
            {
                pending.push(loc(v, j));
            }
        }
        stuck.push(StuckWorker {
            at: loc(w, i),
            counter: counter_name(s, counter.index()),
            at_least,
            value: run.values[counter.index()],
            pending_signals: pending,
        });
    }
    let finished = s.workers.len() - stuck_workers.len();
    errors.push(VerifyError::Deadlock { stuck, blocked, finished });
}

// ------------------------------------------------------------------------------------------
// 3. Happens-before
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Sig {
    w: u32,
    idx: u32,
    /// Id of the last executed wait at or before it on its worker (`NONE` if none).
    base: u32,
}

#[derive(Clone, Copy)]
struct WaitInfo {
    w: u32,
    idx: u32,
    counter: u32,
    at_least: u32,
}

#[derive(Clone, PartialEq, Eq)]
enum Edges {
    None,
    All,
    List(Vec<u32>),
}

/// Happens-before over the executed prefix of the greedy run, as vector clocks stored at
/// waits (the only points where a worker learns anything). Waits are numbered in greedy
/// order, so every clock a wait depends on has a smaller number.
///
/// `vc(W)[x]` = how many instructions of worker `x` happen-before-or-equal wait `W`.
pub(crate) struct HappensBefore {
    nw: usize,
    /// Per worker: (instruction index, wait id) of its executed waits, in program order.
    waits_of: Vec<Vec<(u32, u32)>>,
    vcs: Vec<u32>,
    pub edge_total: u64,
}

impl HappensBefore {
    fn row(&self, gid: u32) -> &[u32] {
        let g = gid as usize * self.nw;
        &self.vcs[g..g + self.nw]
    }

    /// The id of the last executed wait at or before instruction `idx` of worker `w`.
    fn wait_at_or_before(&self, w: usize, idx: u32) -> u32 {
        let ws = &self.waits_of[w];
        let p = ws.partition_point(|&(i, _)| i <= idx);
        if p == 0 {
            NONE
        } else {
            ws[p - 1].1
        }
    }

    /// Whether instruction `a` (worker `aw`, index `ai`) happens-before-or-equals the
    /// instruction whose last wait is `b_gid` on worker `bw` at index `bi`.
    fn ordered(&self, aw: u32, ai: u32, bw: u32, bi: u32, b_gid: u32) -> bool {
        if aw == bw {
            return ai <= bi;
        }
        b_gid != NONE && self.row(b_gid)[aw as usize] > ai
    }

    pub(crate) fn build(s: &Schedule, run: &GreedyRun) -> HappensBefore {
        let nw = s.workers.len();
        let nc = s.counters.len();
        // Number waits in greedy order; collect executed signals and waits per counter.
        let mut waits_of: Vec<Vec<(u32, u32)>> = vec![Vec::new(); nw];
        let mut infos: Vec<WaitInfo> = Vec::new();
        let mut sigs: Vec<Vec<Sig>> = vec![Vec::new(); nc];
        let mut cwaits: Vec<Vec<u32>> = vec![Vec::new(); nc];
        let mut last_wait = vec![NONE; nw];
        for l in &run.order {
            let (w, i) = (l.worker as usize, l.index);
            match s.workers[w].instrs[i as usize] {
                Instr::Signal(c) if c.index() < nc => {
                    sigs[c.index()].push(Sig { w: w as u32, idx: i, base: last_wait[w] })
                }
                Instr::Wait { counter, at_least } if counter.index() < nc => {
                    let gid = infos.len() as u32;
                    infos.push(WaitInfo { w: w as u32, idx: i, counter: counter.0, at_least });
                    waits_of[w].push((i, gid));
                    cwaits[counter.index()].push(gid);
                    last_wait[w] = gid;
                }
                _ => {}
            }
        }
        let mut hb = HappensBefore { nw, waits_of, vcs: vec![0; infos.len() * nw], edge_total: 0 };
        let mut edges = vec![Edges::None; infos.len()];
        let mut prev_total = None;
        loop {
            hb.compute_clocks(s, run, &infos, &sigs, &edges);
            let total = hb.compute_edges(&infos, &sigs, &cwaits, &mut edges);
            // Edges only grow (monotone), so an unchanged count means a fixpoint.
            if prev_total == Some(total) {
                hb.edge_total = total;
                return hb;
            }
            prev_total = Some(total);
        }
    }

    fn compute_clocks(
        &mut self,
        s: &Schedule,
        run: &GreedyRun,
        infos: &[WaitInfo],
        sigs: &[Vec<Sig>],
        edges: &[Edges],
    ) {
        let nw = self.nw;
        let nc = s.counters.len();
        // Running join of the clocks of the signals to a counter seen so far, for counters
        // that some wait takes whole (`Edges::All`).
        let mut wants_join = vec![false; nc];
        for (g, e) in edges.iter().enumerate() {
            if *e == Edges::All {
                wants_join[infos[g].counter as usize] = true;
            }
        }
        let mut join: HashMap<usize, Vec<u32>> = HashMap::new();
        let mut last_wait = vec![NONE; nw];
        let mut gid = 0usize;
        for l in &run.order {
            let (w, i) = (l.worker as usize, l.index);
            match s.workers[w].instrs[i as usize] {
                Instr::Signal(c) if c.index() < nc && wants_join[c.index()] => {
                    let j = join.entry(c.index()).or_insert_with(|| vec![0; nw]);
                    let b = last_wait[w];
                    if b != NONE {
                        let row = &self.vcs[b as usize * nw..(b as usize + 1) * nw];
                        for (x, v) in j.iter_mut().zip(row) {
                            *x = (*x).max(*v);
                        }
                    }
                    j[w] = j[w].max(i + 1);
                }
                Instr::Wait { counter, .. } if counter.index() < nc => {
                    let (done, rest) = self.vcs.split_at_mut(gid * nw);
                    let row = &mut rest[..nw];
                    let prev = last_wait[w];
                    if prev != NONE {
                        row.copy_from_slice(&done[prev as usize * nw..(prev as usize + 1) * nw]);
                    } else {
                        row.fill(0);
                    }
                    match &edges[gid] {
                        Edges::None => {}
                        Edges::All => {
                            if let Some(j) = join.get(&counter.index()) {
                                for (x, v) in row.iter_mut().zip(j) {
                                    *x = (*x).max(*v);
                                }
                            }
                        }
                        Edges::List(list) => {
                            for &si in list {
                                let sg = sigs[counter.index()][si as usize];
                                if sg.base != NONE {
                                    let b = sg.base as usize * nw;
                                    for (x, v) in row.iter_mut().zip(&done[b..b + nw]) {
                                        *x = (*x).max(*v);
                                    }
                                }
                                let o = &mut row[sg.w as usize];
                                *o = (*o).max(sg.idx + 1);
                            }
                        }
                    }
                    row[w] = i + 1;
                    last_wait[w] = gid as u32;
                    gid += 1;
                }
                _ => {}
            }
        }
        debug_assert_eq!(gid, infos.len());
    }

    /// `vc(s)[x]` for a signal.
    fn sig_vc(&self, sg: &Sig, x: usize) -> u32 {
        if sg.w as usize == x {
            sg.idx + 1
        } else if sg.base == NONE {
            0
        } else {
            self.vcs[sg.base as usize * self.nw + x]
        }
    }

    /// Recomputes every wait's incoming signal edges from the current clocks: signal `s`
    /// happens-before `Wait(c, k)` iff fewer than `k` signals to `c` can occur without `s`,
    /// i.e. `|after(s) ∪ after(W)| > n - k` where `after(x)` are the signals to `c` that
    /// happen-after `x` (with `s` itself in `after(s)`). Returns the total edge count.
    fn compute_edges(
        &self,
        infos: &[WaitInfo],
        sigs: &[Vec<Sig>],
        cwaits: &[Vec<u32>],
        edges: &mut [Edges],
    ) -> u64 {
        let mut total = 0u64;
        for (c, waits) in cwaits.iter().enumerate() {
            let ss = &sigs[c];
            let n = ss.len();
            // Sorted columns vc(s')[x] over all signals s' to c, per worker x, on demand;
            // `count_after(x, i)` = how many signals to c happen after instruction i of x.
            let mut cols: HashMap<usize, Vec<u32>> = HashMap::new();
            let mut count_after = |x: usize, i: u32| -> usize {
                let col = cols.entry(x).or_insert_with(|| {
                    let mut v: Vec<u32> = ss.iter().map(|sg| self.sig_vc(sg, x)).collect();
                    v.sort_unstable();
                    v
                });
                col.len() - col.partition_point(|&v| v <= i)
            };
            // |after(s)| per signal, computed lazily.
            let mut after_s: Vec<Option<usize>> = vec![None; n];
            for &g in waits {
                let wi = infos[g as usize];
                let k = wi.at_least as usize;
                if k == 0 {
                    edges[g as usize] = Edges::None;
                    continue;
                }
                if k >= n {
                    // Every signal had to occur (and none can follow the wait).
                    edges[g as usize] = Edges::All;
                    total += n as u64;
                    continue;
                }
                let m = n - k;
                let ww = wi.w as usize;
                let b = count_after(ww, wi.idx);
                let mut list = Vec::new();
                for (si, sg) in ss.iter().enumerate() {
                    if self.sig_vc(sg, ww) > wi.idx {
                        continue; // s happens after W
                    }
                    let a = match after_s[si] {
                        Some(a) => a,
                        None => {
                            let a = count_after(sg.w as usize, sg.idx);
                            after_s[si] = Some(a);
                            a
                        }
                    };
                    let edge = if a + b <= m {
                        false
                    } else if a.max(b) > m {
                        true
                    } else {
                        let union = ss
                            .iter()
                            .filter(|t| {
                                self.sig_vc(t, sg.w as usize) > sg.idx
                                    || self.sig_vc(t, ww) > wi.idx
                            })
                            .count();
                        union > m
                    };
                    if edge {
                        list.push(si as u32);
                    }
                }
                total += list.len() as u64;
                edges[g as usize] = if list.len() == n {
                    Edges::All
                } else if list.is_empty() {
                    Edges::None
                } else {
                    Edges::List(list)
                };
            }
        }
        total
    }
}

// ------------------------------------------------------------------------------------------
// 3b. Races: per buffer, a sweep over byte segments in greedy-run order
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Acc {
    task: u32,
    w: u32,
    idx: u32,
    gid: u32,
    offset: u64,
    len: u64,
    kind: AccessKind,
}

#[derive(Default)]
struct Segment {
    last_write: Option<u32>,
    /// Reads since the last write.
    readers: Vec<u32>,
    /// Atomic adds since the last write.
    adders: Vec<u32>,
}

/// Keeps the latest access of each worker in `list` once it grows past `at`: a worker's later
/// access happens after its earlier ones, so an access ordered after the later one is
/// ordered after them all.
fn compact_per_worker(list: &mut Vec<u32>, accs: &[Acc], at: usize) {
    if list.len() > at {
        list.sort_unstable_by_key(|&r| (accs[r as usize].w, Reverse(accs[r as usize].idx)));
        list.dedup_by_key(|r| accs[*r as usize].w);
    }
}

/// Greedy order is a linear extension of happens-before, so an access can only be ordered
/// AFTER the earlier accesses it conflicts with. For each byte segment it suffices to check
/// (the rest follows by transitivity through the last write, which conflicts with everything):
/// - a read against the last write and every add since;
/// - an add against the last write and every read since (adds commute with each other);
/// - a write against the last write and every read and add since.
///
/// Reads and adds since the last write are kept per worker (a later access of a worker
/// dominates its earlier ones).
///
/// Tagged buffers are skipped: nothing adds to them and no byte has two writing tasks (or
/// [`tagged`] reported it), and every read follows the write of its bytes (the greedy run
/// blocks it until then, and so does the device).
fn races(s: &Schedule, run: &GreedyRun, hb: &HappensBefore, errors: &mut Vec<VerifyError>) {
    let nb = s.buffers.len();
    let nt = s.tasks.len();
    let mut per_buf: Vec<Vec<Acc>> = vec![Vec::new(); nb];
    let mut has_write = vec![false; nb];
    for l in &run.order {
        let (w, i) = (l.worker as usize, l.index);
        let Instr::Run(t) = s.workers[w].instrs[i as usize] else {
            continue;
        };
        if t.index() >= nt {
            continue;
        }
        let gid = hb.wait_at_or_before(w, i);
        let task = &s.tasks[t.index()];
        let all = task
            .reads
            .iter()
            .map(|r| (r, AccessKind::Read))
            .chain(task.writes.iter().map(|r| (r, AccessKind::Write)))
            .chain(task.adds.iter().map(|r| (r, AccessKind::Add)));
        for (r, kind) in all {
            let b = r.buffer.index();
            if b >= nb || r.len == 0 || s.buffers[b].kind == BufferKind::Tagged {
                continue;
            }
            has_write[b] |= kind != AccessKind::Read;
            per_buf[b].push(Acc {
                task: t.0,
                w: w as u32,
                idx: i,
                gid,
                offset: r.offset,
                len: r.len,
                kind,
            });
        }
    }
    let compact_at = 2 * s.workers.len() + 16;
    for b in 0..nb {
        if !has_write[b] {
            continue;
        }
        let accs = &per_buf[b];
        let mut points: Vec<u64> = Vec::with_capacity(accs.len() * 2);
        for a in accs {
            points.push(a.offset);
            points.push(a.offset.saturating_add(a.len));
        }
        points.sort_unstable();
        points.dedup();
        let mut segs: Vec<Segment> = Vec::new();
        segs.resize_with(points.len().saturating_sub(1), Segment::default);
        let mut reported: HashSet<(u32, u32, AccessKind, AccessKind)> = HashSet::new();
        let mut report = |first: &Acc, second: &Acc| {
            if reported.insert((first.task, second.task, first.kind, second.kind)) {
                let acc = |a: &Acc| Access {
                    task: task_name(s, a.task as usize),
                    at: InstrLoc { worker: a.w, index: a.idx },
                    range: ByteRange { offset: a.offset, len: a.len },
                    kind: a.kind,
                };
                errors.push(VerifyError::Race {
                    buffer: buffer_name(s, b),
                    first: acc(first),
                    second: acc(second),
                });
            }
        };
        for (ai, a) in accs.iter().enumerate() {
            let lo = points.partition_point(|&p| p < a.offset);
            let hi = points.partition_point(|&p| p < a.offset.saturating_add(a.len));
            let after = |p: &Acc| hb.ordered(p.w, p.idx, a.w, a.idx, a.gid);
            for seg in &mut segs[lo..hi] {
                if let Some(lw) = seg.last_write {
                    let p = &accs[lw as usize];
                    if !after(p) {
                        report(p, a);
                    }
                }
                let earlier: &[&Vec<u32>] = match a.kind {
                    AccessKind::Read => &[&seg.adders],
                    AccessKind::Add => &[&seg.readers],
                    AccessKind::Write => &[&seg.readers, &seg.adders],
                };
                for list in earlier {
                    for &r in list.iter() {
                        let p = &accs[r as usize];
                        if !after(p) {
                            report(p, a);
                        }
                    }
                }
                match a.kind {
                    AccessKind::Write => {
                        seg.readers.clear();
                        seg.adders.clear();
                        seg.last_write = Some(ai as u32);
                    }
                    AccessKind::Read => {
                        seg.readers.push(ai as u32);
                        compact_per_worker(&mut seg.readers, accs, compact_at);
                    }
                    AccessKind::Add => {
                        seg.adders.push(ai as u32);
                        compact_per_worker(&mut seg.adders, accs, compact_at);
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// 4. Co-residency and 5. launch-to-launch
// ------------------------------------------------------------------------------------------

fn residency(s: &Schedule, (sm_count, blocks_per_sm): (u32, u32), errors: &mut Vec<VerifyError>) {
    let capacity = u64::from(sm_count) * u64::from(blocks_per_sm);
    if s.workers.len() as u64 > capacity {
        errors.push(VerifyError::TooManyWorkers {
            workers: s.workers.len(),
            sm_count,
            blocks_per_sm,
            capacity,
        });
    }
}

fn launch_to_launch(s: &Schedule, totals: &[u64], errors: &mut Vec<VerifyError>) {
    // Weights persist across launches and are read-only: no declared write or add may touch
    // them (the op's own writes and adds lie inside the declared ones, checked in 1).
    let is_weight =
        |b: BufferId| s.buffers.get(b.index()).is_some_and(|x| x.kind == BufferKind::Weight);
    for task in &s.tasks {
        let writes = task.writes.iter().enumerate().map(|(i, r)| (RegionPlace::Write(i as u32), r));
        let adds = task.adds.iter().enumerate().map(|(i, r)| (RegionPlace::Add(i as u32), r));
        for (place, r) in writes.chain(adds).filter(|(_, r)| is_weight(r.buffer)) {
            errors.push(VerifyError::WeightWritten {
                task: task.name.clone(),
                place,
                buffer: buffer_name(s, r.buffer.index()),
                range: ByteRange { offset: r.offset, len: r.len },
            });
        }
    }
    let mut waits: Vec<Vec<InstrLoc>> = vec![Vec::new(); s.counters.len()];
    for (w, worker) in s.workers.iter().enumerate() {
        for (i, instr) in worker.instrs.iter().enumerate() {
            if let Instr::Wait { counter, .. } = instr {
                if let Some(v) = waits.get_mut(counter.index()) {
                    v.push(loc(w, i));
                }
            }
        }
    }
    for (c, counter) in s.counters.iter().enumerate() {
        match counter.reset {
            CounterReset::Zeroed => {}
            CounterReset::Epoch { signals_per_launch } => {
                if u64::from(signals_per_launch) != totals[c] {
                    errors.push(VerifyError::EpochSignalMismatch {
                        counter: counter.name.clone(),
                        signals_per_launch,
                        signals: totals[c],
                    });
                }
            }
            CounterReset::Never => {
                if !waits[c].is_empty() {
                    errors.push(VerifyError::NeverResetCounterWaited {
                        counter: counter.name.clone(),
                        waits: std::mem::take(&mut waits[c]),
                    });
                }
            }
        }
    }
}
