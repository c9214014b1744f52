//! Proptest properties of the verifier.

use amk_schedule::schedule::*;
use amk_schedule::TaskOp;
use amk_verify::testing::{layered, random_safe, LayeredSpec, Rng, SmallParams};
use amk_verify::{schedule_hash, verify, LaunchFacts, VerifyError};
use proptest::prelude::*;

/// A chain over `n` workers: worker k waits for `step{k-1}.done`, then copies slot k-1 of
/// `chain` into slot k and signals `step{k}.done`.
fn chain(n: usize) -> Schedule {
    let mut s = Schedule::new("chain");
    let buf = s.add_buffer("chain", BufferKind::Activation, 8 * (n as u64 + 1));
    let mut workers = Vec::new();
    for k in 0..n {
        let c = s.add_counter(format!("step{k}.done"), CounterReset::Zeroed);
        let src = Region::new(buf, 8 * k as u64, 8);
        let dst = Region::new(buf, 8 * (k as u64 + 1), 8);
        let t = s.add_task(format!("L0.step{k}"), TaskOp::Copy { src, dst }, vec![src], vec![dst]);
        let mut instrs = Vec::new();
        if k > 0 {
            instrs.push(Instr::Wait { counter: CounterId(k as u32 - 1), at_least: 1 });
        }
        instrs.push(Instr::Run(t));
        instrs.push(Instr::Signal(c));
        workers.push(Worker { instrs });
    }
    s.workers = workers;
    s
}

fn facts(n: usize) -> LaunchFacts {
    LaunchFacts { sm_count: n as u32, blocks_per_sm: 1 }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every schedule the safe generator makes is accepted, also beyond explorer sizes.
    #[test]
    fn verify_accepts_generated_safe_schedules(seed in any::<u64>(), big in any::<bool>()) {
        let p = if big {
            SmallParams { max_workers: 8, max_tasks: 60, max_buffers: 4, minimal: false }
        } else {
            SmallParams::default()
        };
        let (s, f) = random_safe(&mut Rng::new(seed), &p);
        let r = verify(&s, &f);
        prop_assert!(r.is_ok(), "{}\n{}", r.unwrap_err(), s.to_ron_string());
    }

    /// Dropping any single wait of a chain is a race that names the worker that lost it.
    #[test]
    fn every_dropped_wait_in_a_chain_is_caught(n in 2usize..24, k in 1usize..24) {
        let k = 1 + (k - 1) % (n - 1);
        let s = chain(n);
        prop_assert!(verify(&s, &facts(n)).is_ok());
        let mut m = s.clone();
        m.workers[k].instrs.remove(0);
        let e = verify(&m, &facts(n)).unwrap_err().errors;
        prop_assert!(!e.is_empty());
        prop_assert!(e.iter().all(|x| matches!(x, VerifyError::Race { .. })), "{:?}", e);
        let names_k = e.iter().any(|x| matches!(x, VerifyError::Race { first, second, .. }
            if (first.at.worker as usize == k && first.task == format!("L0.step{k}"))
                || (second.at.worker as usize == k && second.task == format!("L0.step{k}"))));
        prop_assert!(names_k, "{:?}", e);
    }

    /// Lowering a chain wait to 0 is caught the same way; raising it above the total is a
    /// malformed (never satisfiable) wait plus the deadlock it causes.
    #[test]
    fn chain_threshold_changes_are_caught(n in 2usize..16, k in 1usize..16, up in any::<bool>()) {
        let k = 1 + (k - 1) % (n - 1);
        let mut m = chain(n);
        m.workers[k].instrs[0] = Instr::Wait { counter: CounterId(k as u32 - 1), at_least: if up { 2 } else { 0 } };
        let e = verify(&m, &facts(n)).unwrap_err().errors;
        if up {
            let unsatisfiable = e.iter().any(|x| matches!(x, VerifyError::UnsatisfiableWait { at, .. } if at.worker as usize == k));
            prop_assert!(unsatisfiable, "{:?}", e);
            let stuck_k = e.iter().any(|x| matches!(x, VerifyError::Deadlock { stuck, .. } if stuck[0].at.worker as usize == k));
            prop_assert!(stuck_k, "{:?}", e);
        } else {
            prop_assert!(e.iter().all(|x| matches!(x, VerifyError::Race { .. })), "{:?}", e);
        }
    }

    /// The certificate hash is stable under a schedule.ron round trip and matches.
    #[test]
    fn hash_is_stable_under_round_trip(seed in any::<u64>()) {
        let (s, f) = random_safe(&mut Rng::new(seed), &SmallParams::default());
        let v = verify(&s, &f).unwrap();
        let back = Schedule::from_ron_str(&s.to_ron_string()).unwrap();
        prop_assert_eq!(schedule_hash(&back), v.certificate().schedule_hash.clone());
        prop_assert!(v.certificate().matches(&back));
    }

    /// Small layered (model-shaped) schedules of any shape verify.
    #[test]
    fn layered_schedules_verify(workers in 1u32..40, layers in 1u32..4, heads in 1u32..6, tile in 1u32..64) {
        let spec = LayeredSpec {
            name: "tiny".into(), workers, layers, hidden: 64, heads, kv_heads: 1, head_dim: 16,
            mlp: 96, vocab: 200, rows_per_tile: tile, lm_rows_per_tile: tile * 2, max_seq: 8,
        };
        let s = layered(&spec);
        let r = verify(&s, &facts(workers as usize));
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
