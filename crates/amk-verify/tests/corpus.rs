//! The adversarial corpus: >= 10,000 small schedules (safe ones, mutations of safe ones by
//! class, and random ones) through both the exhaustive explorer (ground truth) and `verify`.
//! Asserts zero false accepts, false rejects < 1% of safe schedules, and that at least two
//! thirds of the unsafe ones are semantic hazards (deadlock / race), not malformed input.

mod ground_truth;

use amk_schedule::schedule::Schedule;
use amk_verify::testing::{mutate, random_safe, random_schedule, Mutation, Rng, SmallParams};
use amk_verify::{verify, LaunchFacts};
use ground_truth::{explore, Truth};
use std::collections::BTreeMap;

#[derive(Default, Clone, Copy)]
struct Row {
    total: u32,
    unsafe_: u32,
    semantic: u32,
    accepted: u32,
    rejected: u32,
    false_accepts: u32,
    false_rejects: u32,
}

const CORPUS: usize = 20_800;
const _: () = assert!(CORPUS >= 10_000);

fn class_of(i: usize) -> &'static str {
    // Weights: semantic mutation classes get more samples.
    const PLAN: [&str; 20] = [
        "safe",
        "safe",
        "DropWait",
        "DropWait",
        "LowerThreshold",
        "LowerThreshold",
        "SignalBeforeTask",
        "SignalBeforeTask",
        "SwapAdjacent",
        "SwapAdjacent",
        "CyclicWait",
        "WidenRegion",
        "WidenRegion",
        "ExceedResidency",
        "NeverReset",
        "EpochMiscount",
        "OutOfBounds",
        "UnknownId",
        "random",
        "random",
    ];
    PLAN[i % PLAN.len()]
}

fn mutation(name: &str) -> Option<Mutation> {
    Mutation::ALL.iter().copied().find(|m| format!("{m:?}") == name)
}

fn make(i: usize) -> (Schedule, LaunchFacts) {
    let class = class_of(i);
    let mut rng = Rng::new(0xC0FFEE ^ (i as u64).wrapping_mul(0x1000_0000_01B3));
    // Every other round of the plan uses bigger schedules (4 workers, 7 tasks, 3 buffers).
    let big = (i / 20) % 2 == 1;
    let params = SmallParams {
        minimal: matches!(class, "NeverReset" | "EpochMiscount"),
        max_workers: if big { 4 } else { 3 },
        max_tasks: if big { 7 } else { 6 },
        max_buffers: if big { 3 } else { 2 },
    };
    match class {
        "safe" => random_safe(&mut rng, &params),
        "random" => random_schedule(&mut rng, &params),
        name => {
            let m = mutation(name).unwrap();
            loop {
                let (s, f) = random_safe(&mut rng, &params);
                if let Some(x) = mutate(&mut rng, m, &s, &f) {
                    return x;
                }
            }
        }
    }
}

#[test]
fn corpus_no_false_accepts() {
    let start = std::time::Instant::now();
    let mut rows: BTreeMap<&str, Row> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut fr_examples = Vec::new();
    for i in 0..CORPUS {
        let class = class_of(i);
        let (s, facts) = make(i);
        let truth = explore(&s, facts.capacity());
        let result = verify(&s, &facts);
        for key in [class, "ALL"] {
            let r = rows.entry(key).or_default();
            r.total += 1;
            if !truth.is_safe() {
                r.unsafe_ += 1;
            }
            if truth.is_semantic() {
                r.semantic += 1;
            }
            match &result {
                Ok(_) => {
                    r.accepted += 1;
                    if !truth.is_safe() {
                        r.false_accepts += 1;
                    }
                }
                Err(_) => {
                    r.rejected += 1;
                    if truth.is_safe() {
                        r.false_rejects += 1;
                    }
                }
            }
        }
        if result.is_ok() && !truth.is_safe() {
            failures.push(format!("#{i} ({class}): {truth:?}\n{}", s.to_ron_string()));
        }
        if let (Err(e), Truth::Safe) = (&result, &truth) {
            if fr_examples.len() < 3 {
                fr_examples.push(format!("#{i} ({class}): {e}\n{}", s.to_ron_string()));
            }
        }
    }
    println!(
        "{:<18} {:>6} {:>7} {:>8} {:>8} {:>8} {:>6} {:>6}",
        "class", "total", "unsafe", "semantic", "accepted", "rejected", "FA", "FR"
    );
    let all = rows["ALL"];
    let print = |name: &str, r: &Row| {
        println!(
            "{:<18} {:>6} {:>7} {:>8} {:>8} {:>8} {:>6} {:>6}",
            name,
            r.total,
            r.unsafe_,
            r.semantic,
            r.accepted,
            r.rejected,
            r.false_accepts,
            r.false_rejects
        )
    };
    for (name, r) in &rows {
        if *name != "ALL" {
            print(name, r);
        }
    }
    print("ALL", &all);
    println!("corpus of {CORPUS} in {:.1?}", start.elapsed());
    for e in &fr_examples {
        println!("FALSE REJECT {e}");
    }
    assert!(failures.is_empty(), "{} false accepts, first:\n{}", failures.len(), failures[0]);
    let safe = all.total - all.unsafe_;
    assert!(
        (all.false_rejects as f64) < 0.01 * safe as f64,
        "false rejects {} of {safe} safe",
        all.false_rejects
    );
    assert!(
        all.semantic as f64 >= 2.0 / 3.0 * all.unsafe_ as f64,
        "semantic {} of {} unsafe",
        all.semantic,
        all.unsafe_
    );
}
