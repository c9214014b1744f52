//! The io buffer's packed next token: every executor folds LM-head maxima into it with a u64
//! maximum, so the packing must order (value, index) pairs exactly as the reference's argmax.

use proptest::prelude::*;

proptest! {
    /// The packed argmax orders (value, index) pairs as the reference's argmax does: the
    /// larger value, and among equal values the lower index; NaN never packs, and -0.0 ties
    /// +0.0.
    #[test]
    fn packed_argmax_orders_as_the_reference(
        a in proptest::num::f32::ANY, b in proptest::num::f32::ANY, i in 0u32..1 << 20, j in 0u32..1 << 20,
    ) {
        use amk_schedule::ops::io::{next_token, pack_max, pack_input};
        match (pack_max(a, i), pack_max(b, j)) {
            (Some(pa), Some(pb)) => {
                let want = if a != b { a > b } else { i < j };
                prop_assert_eq!(pa > pb, want && (a != b || i != j));
                prop_assert_eq!(next_token(pa), i);
            }
            (pa, pb) => {
                prop_assert_eq!(pa.is_none(), a.is_nan());
                prop_assert_eq!(pb.is_none(), b.is_nan());
            }
        }
        prop_assert_eq!(next_token(pack_input(i)), i);
        prop_assert_eq!(next_token(0), 0);
        prop_assert_eq!(pack_max(-0.0, i), pack_max(0.0, i));
    }
}
