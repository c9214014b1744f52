//! Prints how long verifying and hashing the synthetic SmolLM2 schedule take.
use amk_verify::testing::{layered, LayeredSpec};
use amk_verify::{schedule_hash, verify, LaunchFacts};
use std::time::Instant;

fn main() {
    let facts = LaunchFacts { sm_count: 132, blocks_per_sm: 1 };
    for spec in [LayeredSpec::smollm2(), LayeredSpec::llama32_1b()] {
        let s = layered(&spec);
        for _ in 0..3 {
            let t = Instant::now();
            let text = s.to_ron_string();
            let ron = t.elapsed();
            let t = Instant::now();
            let _ = schedule_hash(&s);
            let hash = t.elapsed();
            let t = Instant::now();
            let _ = s.clone();
            let clone = t.elapsed();
            let t = Instant::now();
            verify(&s, &facts).unwrap();
            let all = t.elapsed();
            println!(
                "{}: to_ron {ron:?} ({} bytes), hash {hash:?}, clone {clone:?}, verify {all:?}",
                spec.name,
                text.len()
            );
        }
    }
}
