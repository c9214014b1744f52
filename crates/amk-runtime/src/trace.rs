//! Where a decode step's time goes, from the megakernel's in-kernel timestamps.
//!
//! A traced kernel (`GpuOptions::trace`) records `%globaltimer` before each instruction of each
//! worker and once after its last. From those this module derives, without a GPU:
//! - each phase's completion: the end of the last signal on its counter, and the step from the
//!   phase completed before it (the critical path of the dependency chain, phase by phase);
//! - per phase kind (the counter's name without its `L<layer>.` prefix): how many, and the
//!   mean and total of those steps;
//! - per task kind and for waits: mean and largest durations on the workers.

use amk_schedule::schedule::{Instr, Schedule};
use std::collections::BTreeMap;
use std::fmt;

/// One phase: when its last signal landed (µs from the kernel's first timestamp).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PhaseTime {
    pub counter: String,
    pub done_us: f64,
    /// `done_us` minus the previous phase's.
    pub step_us: f64,
}

/// Aggregate durations of one kind of thing.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct KindTime {
    pub kind: String,
    pub count: usize,
    pub total_us: f64,
    pub max_us: f64,
}

impl KindTime {
    fn add(&mut self, us: f64) {
        self.count += 1;
        self.total_us += us;
        self.max_us = self.max_us.max(us);
    }

    /// Mean duration.
    pub fn mean_us(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.total_us / self.count as f64
        }
    }
}

/// The breakdown of one traced launch.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TraceReport {
    /// First timestamp of any worker to last timestamp of any worker.
    pub total_us: f64,
    /// Phases in completion order.
    pub phases: Vec<PhaseTime>,
    /// Phase steps by kind (counter name without the layer): one step per phase of each
    /// layer, from the completion of the phase before to that of its last counter.
    pub phase_kinds: Vec<KindTime>,
    /// Run durations by task kind.
    pub tasks: Vec<KindTime>,
    /// Wait durations by the kind of counter waited on.
    pub waits: Vec<KindTime>,
    /// Signal durations (the barrier and release before the increment).
    pub signals: KindTime,
}

/// Why a trace cannot be read against a schedule.
#[derive(Debug, thiserror::Error)]
#[error("the trace does not fit the schedule: {0}")]
pub struct TraceError(String);

/// `L12.qkv.done` → `qkv.done`; a group's counter (`head_waits`) goes with its phase:
/// `L12.attn.h3.done` → `attn.done`, `L12.qkv.kv0.done` → `qkv.done`.
fn phase_kind(counter: &str) -> String {
    let kind = match counter.strip_prefix('L') {
        Some(rest) => match rest.split_once('.') {
            Some((layer, kind)) if layer.bytes().all(|b| b.is_ascii_digit()) => kind,
            _ => counter,
        },
        None => counter,
    };
    let group = |part: &str| {
        let digits = part.strip_prefix("kv").or_else(|| part.strip_prefix('h'));
        digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    kind.split('.').filter(|p| !group(p)).collect::<Vec<_>>().join(".")
}

/// Reads `stamps` (ns; worker w's from `worker_start[w] + w`, one per instruction and one after
/// the last) against `schedule`.
pub fn analyze(
    schedule: &Schedule,
    worker_start: &[u32],
    stamps: &[u64],
) -> Result<TraceReport, TraceError> {
    if worker_start.len() != schedule.workers.len() + 1 {
        return Err(TraceError(format!(
            "{} worker offsets for {} workers",
            worker_start.len(),
            schedule.workers.len()
        )));
    }
    let mut per_worker = Vec::with_capacity(schedule.workers.len());
    for (w, worker) in schedule.workers.iter().enumerate() {
        let base = worker_start[w] as usize + w;
        let t = stamps.get(base..=base + worker.instrs.len()).ok_or_else(|| {
            TraceError(format!("worker {w} needs slots {base}..={}", base + worker.instrs.len()))
        })?;
        if t.windows(2).any(|p| p[1] < p[0]) || t[0] == 0 {
            return Err(TraceError(format!(
                "worker {w}'s timestamps are missing or out of order (was the kernel traced?)"
            )));
        }
        per_worker.push(t);
    }
    let t0 = per_worker.iter().map(|t| t[0]).min().unwrap_or(0);
    let t_end = per_worker.iter().map(|t| t[t.len() - 1]).max().unwrap_or(t0);
    let us = |ns: u64| ns as f64 / 1e3;

    let mut done: BTreeMap<u32, u64> = BTreeMap::new();
    let mut tasks: BTreeMap<&'static str, KindTime> = BTreeMap::new();
    let mut waits: BTreeMap<String, KindTime> = BTreeMap::new();
    let mut signals = KindTime { kind: "signal".into(), ..KindTime::default() };
    for (worker, t) in schedule.workers.iter().zip(&per_worker) {
        for (k, instr) in worker.instrs.iter().enumerate() {
            let d = us(t[k + 1] - t[k]);
            match *instr {
                Instr::Run(task) => {
                    let kind = schedule.tasks.get(task.index()).map_or("?", |t| t.op.kind_name());
                    tasks
                        .entry(kind)
                        .or_insert_with(|| KindTime { kind: kind.into(), ..Default::default() })
                        .add(d);
                }
                Instr::Signal(c) => {
                    signals.add(d);
                    let e = done.entry(c.0).or_insert(0);
                    *e = (*e).max(t[k + 1]);
                }
                Instr::Wait { counter, .. } => {
                    let name = schedule.counters.get(counter.index()).map_or("?", |c| &c.name);
                    let kind = phase_kind(name);
                    waits
                        .entry(kind.clone())
                        .or_insert_with(|| KindTime { kind, ..Default::default() })
                        .add(d);
                }
            }
        }
    }
    let mut order: Vec<(u32, u64)> = done.into_iter().collect();
    order.sort_by_key(|&(c, t)| (t, c));
    let mut phases = Vec::with_capacity(order.len());
    let mut prev = t0;
    // Each phase of each layer completes with its last counter (a phase with per-head
    // counters has several): its step is that completion after the previous phase's.
    let mut instances: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (c, t) in order {
        let counter =
            schedule.counters.get(c as usize).map_or_else(|| format!("#{c}"), |c| c.name.clone());
        let step = us(t.saturating_sub(prev));
        let layer = counter.split_once('.').map_or("", |(l, _)| l).to_string();
        let end = instances.entry((layer, phase_kind(&counter))).or_insert(t);
        *end = (*end).max(t);
        phases.push(PhaseTime { counter, done_us: us(t - t0), step_us: step });
        prev = t.max(prev);
    }
    let mut ends: Vec<(u64, String)> =
        instances.into_iter().map(|((_, kind), t)| (t, kind)).collect();
    ends.sort();
    let mut phase_kinds: BTreeMap<String, KindTime> = BTreeMap::new();
    let mut prev = t0;
    for (t, kind) in ends {
        phase_kinds
            .entry(kind.clone())
            .or_insert_with(|| KindTime { kind, ..Default::default() })
            .add(us(t.saturating_sub(prev)));
        prev = t.max(prev);
    }
    Ok(TraceReport {
        total_us: us(t_end - t0),
        phases,
        phase_kinds: phase_kinds.into_values().collect(),
        tasks: tasks.into_values().collect(),
        waits: waits.into_values().collect(),
        signals,
    })
}

impl fmt::Display for TraceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "one launch: {:.1} us from the first worker's start to the last one's end",
            self.total_us
        )?;
        let on_path: f64 = self.phases.iter().map(|p| p.step_us).sum();
        writeln!(f, "critical path by phase kind (step = completion after the previous phase's; sum {on_path:.1} us):")?;
        writeln!(
            f,
            "  {:<16} {:>6} {:>10} {:>10} {:>10}",
            "phase", "count", "mean us", "max us", "total us"
        )?;
        for k in &self.phase_kinds {
            writeln!(
                f,
                "  {:<16} {:>6} {:>10.2} {:>10.2} {:>10.1}",
                k.kind,
                k.count,
                k.mean_us(),
                k.max_us,
                k.total_us
            )?;
        }
        writeln!(f, "on the workers:")?;
        writeln!(f, "  {:<16} {:>6} {:>10} {:>10}", "instruction", "count", "mean us", "max us")?;
        for k in &self.tasks {
            writeln!(
                f,
                "  run {:<12} {:>6} {:>10.2} {:>10.2}",
                k.kind,
                k.count,
                k.mean_us(),
                k.max_us
            )?;
        }
        for k in &self.waits {
            writeln!(
                f,
                "  wait {:<11} {:>6} {:>10.2} {:>10.2}",
                k.kind,
                k.count,
                k.mean_us(),
                k.max_us
            )?;
        }
        let s = &self.signals;
        writeln!(f, "  {:<16} {:>6} {:>10.2} {:>10.2}", "signal", s.count, s.mean_us(), s.max_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amk_schedule::ops::TaskOp;
    use amk_schedule::schedule::{BufferKind, CounterReset, Region, Worker};

    #[test]
    fn group_counters_go_with_their_phase() {
        assert_eq!(phase_kind("L12.qkv.done"), "qkv.done");
        assert_eq!(phase_kind("L12.attn.h3.done"), "attn.done");
        assert_eq!(phase_kind("L0.qkv.kv10.done"), "qkv.done");
        assert_eq!(phase_kind("head.done"), "head.done");
        assert_eq!(phase_kind("L1.heads.done"), "heads.done");
    }

    /// Two workers: w0 runs a, signals c; w1 waits on c, runs b, signals d.
    fn two_phase() -> Schedule {
        let mut s = Schedule::new("trace test");
        let buf = s.add_buffer("x", BufferKind::Activation, 64);
        let c = s.add_counter("L0.up.done", CounterReset::Epoch { signals_per_launch: 1 });
        let d = s.add_counter("L1.up.done", CounterReset::Epoch { signals_per_launch: 1 });
        let r = Region { buffer: buf, offset: 0, len: 64 };
        let op = TaskOp::Copy { src: r, dst: r };
        let a = s.add_task("a", op.clone(), vec![r], vec![r]);
        let b = s.add_task("b", op, vec![r], vec![r]);
        s.workers = vec![Worker::default(), Worker::default()];
        s.workers[0].instrs = vec![Instr::Run(a), Instr::Signal(c)];
        s.workers[1].instrs =
            vec![Instr::Wait { counter: c, at_least: 1 }, Instr::Run(b), Instr::Signal(d)];
        s
    }

    #[test]
    fn phases_steps_and_kinds() {
        let s = two_phase();
        // worker_start: w0 has 2 instrs at 0..2, w1 has 3 at 2..5; slots start at ws[w] + w.
        let ws = [0, 2, 5];
        let stamps = [1000, 3000, 4000, /* w1 */ 1500, 4500, 6500, 7000];
        let r = analyze(&s, &ws, &stamps).expect("analyzes");
        assert_eq!(r.total_us, 6.0);
        assert_eq!(r.phases.len(), 2);
        assert_eq!((r.phases[0].done_us, r.phases[0].step_us), (3.0, 3.0));
        assert_eq!((r.phases[1].done_us, r.phases[1].step_us), (6.0, 3.0));
        assert_eq!(r.phase_kinds.len(), 1);
        assert_eq!((r.phase_kinds[0].kind.as_str(), r.phase_kinds[0].count), ("up.done", 2));
        assert_eq!(r.waits[0].mean_us(), 3.0);
        assert_eq!(r.tasks[0].count, 2);
        let text = r.to_string();
        assert!(text.contains("up.done"), "{text}");
    }

    #[test]
    fn per_head_counters_make_one_step_of_their_phase() {
        // w0 and w1 each run a part and signal their head's counter; w2 waits for both,
        // runs the output projection and signals `L0.o.done`.
        let mut s = Schedule::new("trace test");
        let buf = s.add_buffer("x", BufferKind::Activation, 64);
        let epoch = CounterReset::Epoch { signals_per_launch: 1 };
        let h0 = s.add_counter("L0.attn.h0.done", epoch);
        let h1 = s.add_counter("L0.attn.h1.done", epoch);
        let o = s.add_counter("L0.o.done", epoch);
        let r = Region { buffer: buf, offset: 0, len: 64 };
        let op = TaskOp::Copy { src: r, dst: r };
        let [a, b, c] = ["a", "b", "c"].map(|n| s.add_task(n, op.clone(), vec![r], vec![r]));
        s.workers = vec![Worker::default(), Worker::default(), Worker::default()];
        s.workers[0].instrs = vec![Instr::Run(a), Instr::Signal(h0)];
        s.workers[1].instrs = vec![Instr::Run(b), Instr::Signal(h1)];
        s.workers[2].instrs = vec![
            Instr::Wait { counter: h0, at_least: 1 },
            Instr::Wait { counter: h1, at_least: 1 },
            Instr::Run(c),
            Instr::Signal(o),
        ];
        let ws = [0, 2, 4, 8];
        let stamps = [
            1000, 2000, 3000, /* w1 */ 1000, 2500, 4000, /* w2 */ 1000, 3000, 4000, 4500,
            6000,
        ];
        let r = analyze(&s, &ws, &stamps).expect("analyzes");
        assert_eq!(r.phases.len(), 3, "every counter is listed");
        let kinds: Vec<(&str, usize, f64)> =
            r.phase_kinds.iter().map(|k| (k.kind.as_str(), k.count, k.total_us)).collect();
        assert_eq!(kinds, [("attn.done", 1, 3.0), ("o.done", 1, 2.0)]);
    }

    #[test]
    fn a_short_or_unordered_trace_is_an_error() {
        let s = two_phase();
        let ws = [0, 2, 5];
        assert!(analyze(&s, &ws, &[1, 2, 3]).is_err());
        assert!(analyze(&s, &ws, &[5, 4, 3, 2, 1, 1, 1]).is_err());
        assert!(analyze(&s, &[0, 2], &[0; 7]).is_err());
    }
}
