//! Split attention's position ranges and partial layout: every executor splits a head's rows
//! the same way, so the parts must tile the rows exactly, in order, and the partials of
//! different (head, part) pairs must not overlap.

use amk_schedule::ops::{attn_part_rows, attn_partial_index, attn_partial_len};
use proptest::prelude::*;

proptest! {
    #[test]
    fn parts_tile_the_rows_in_order(start in 0usize..5000, n in 0usize..5000, parts in 1u32..64) {
        let end = start + n;
        let mut next = start;
        for part in 0..parts {
            let (a, b) = attn_part_rows(start, end, part, parts);
            prop_assert!(a <= b && b <= end);
            // Non-empty parts continue where the previous one stopped; empty ones sit at the end.
            if a < b {
                prop_assert_eq!(a, next);
                next = b;
            } else {
                prop_assert!(a == next || a == end);
            }
            // No part is longer than ceil(n / parts).
            prop_assert!(b - a <= n.div_ceil(parts as usize));
        }
        prop_assert_eq!(next, end);
    }

    #[test]
    fn partials_do_not_overlap(heads in 1u32..40, parts in 1u32..20, head_dim in 1u32..256) {
        let len = attn_partial_len(head_dim) as u64;
        let mut expected = 0u64;
        for head in 0..heads {
            for part in 0..parts {
                prop_assert_eq!(attn_partial_index(head, part, parts, head_dim), expected);
                expected += len;
            }
        }
    }
}

#[test]
fn one_part_is_the_whole_range() {
    assert_eq!(attn_part_rows(3, 10, 0, 1), (3, 10));
    // More parts than rows: one row each, then empty parts at the end.
    assert_eq!(attn_part_rows(0, 2, 0, 4), (0, 1));
    assert_eq!(attn_part_rows(0, 2, 1, 4), (1, 2));
    assert_eq!(attn_part_rows(0, 2, 3, 4), (2, 2));
}
