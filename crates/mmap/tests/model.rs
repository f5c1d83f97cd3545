//! Property test of the block allocator against a model (runs under miri with few cases).

mod common;

use common::*;
use offheap_mmap::{Offset, Region, RegionOptions};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
enum Op {
    Alloc { size: u64, align_shift: u32 },
    Free { pick: usize },
    Check,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..600, 0u32..8).prop_map(|(size, align_shift)| Op::Alloc { size, align_shift }),
        1 => (600u64..if cfg!(miri) { 3000 } else { 40_000 }, 0u32..13).prop_map(|(size, align_shift)| Op::Alloc { size, align_shift }),
        4 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        1 => Just(Op::Check),
    ]
}

fn run(ops: Vec<Op>) {
    let opts = RegionOptions::new()
        .initial_size(64 << 10)
        .max_size(if cfg!(miri) { 4 << 20 } else { 64 << 20 })
        .release_threshold(16 << 10);
    let r = Region::anonymous_with(&opts).unwrap();
    // Model: live allocations by offset -> (len, seed).
    let mut live: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut seed = 0u64;
    let check = |r: &Region, live: &BTreeMap<u64, (u64, u64)>| {
        let rep = r.check().unwrap();
        assert_eq!(rep.allocations, live.len() as u64);
        let stats = r.stats();
        assert_eq!(stats.in_use, rep.in_use);
        assert_eq!(stats.free, rep.free);
        assert_eq!(stats.free_blocks, rep.free_blocks);
        let header = rep.size - rep.in_use - rep.free;
        assert!(header >= 4096 && header % 4096 == 0);
        let payload: u64 = live.values().map(|&(len, _)| len).sum();
        assert!(rep.in_use >= payload);
        assert_eq!(stats.largest_free + 16, rep.largest_free_block.max(16));
    };
    for op in ops {
        match op {
            Op::Alloc { size, align_shift } => {
                let align = 1u64 << align_shift;
                let off = r.alloc(size, align).unwrap();
                let o = off.get();
                assert_eq!(o % align, 0, "alignment");
                assert!(o + size <= r.mapped_len());
                // No overlap with any live allocation.
                if let Some((&po, &(plen, _))) = live.range(..=o).next_back() {
                    assert!(po + plen.max(1) <= o, "overlaps the previous allocation");
                }
                if let Some((&no, _)) = live.range(o..).next() {
                    assert!(o + size.max(1) <= no, "overlaps the next allocation");
                }
                seed += 1;
                fill(&r, off, size, seed);
                live.insert(o, (size, seed));
            }
            Op::Free { pick } => {
                if live.is_empty() {
                    continue;
                }
                let o = *live.keys().nth(pick % live.len()).unwrap();
                let (len, s) = live.remove(&o).unwrap();
                let off = Offset::new(o).unwrap();
                assert!(holds(&r, off, len, s), "contents changed");
                r.free(off).unwrap();
                assert!(r.free(off).is_err(), "double free accepted");
            }
            Op::Check => check(&r, &live),
        }
    }
    check(&r, &live);
    for (&o, &(len, s)) in &live {
        let off = Offset::new(o).unwrap();
        assert!(holds(&r, off, len, s), "contents changed");
        r.free(off).unwrap();
    }
    // Everything freed: the blocks coalesce back into one free run.
    let rep = r.check().unwrap();
    assert_eq!((rep.allocations, rep.free_blocks, rep.in_use), (0, 1, 0));
    assert!(rep.size - rep.free >= 4096);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 8 } else { 256 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn allocator_matches_model(ops in proptest::collection::vec(op(), 1..if cfg!(miri) { 24 } else { 300 })) {
        run(ops);
    }
}
