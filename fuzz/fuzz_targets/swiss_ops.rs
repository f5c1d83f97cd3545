//! Operations decoded from the fuzzer's bytes run on an offheap-swiss table and on a std
//! HashMap; every answer must agree, and the table must reopen (from its root) intact.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use offheap_swiss::{Entry, Heap, SwissTable, TableOptions};
use std::collections::HashMap;

#[derive(Arbitrary, Debug)]
enum Op {
    Insert(u16, u64),
    Remove(u16),
    Get(u16),
    EntryOrInsert(u16, u64),
    EntryAndModify(u16),
    EntryRemove(u16),
    Retain(u8),
    GetMany(Vec<u16>),
    Clear,
    Drain,
    ShrinkToFit,
    Reserve(u16),
    Reopen,
    /// Insert `n` consecutive keys from `k` (growth through splits).
    Bulk(u16, u8),
    /// Remove up to `n` present keys (merges).
    BulkRemove(u8),
    /// `extend` (or `try_extend`, with `true`) with `n` consecutive keys from `k`.
    Extend(u16, u8, bool),
    /// `try_reserve(n)` (never fails on the heap; its success path).
    TryReserve(u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    segment_shift: u8,
    seed: u64,
    ops: Vec<Op>,
}

type T<'h> = SwissTable<u32, u64, &'h Heap>;

fn key(k: u16) -> u32 {
    // Spread the 16-bit key space over u32 so byte patterns vary.
    (k as u32).wrapping_mul(0x9E37_79B1)
}

fuzz_target!(|input: Input| {
    let heap = Heap::new();
    let opts = TableOptions::new()
        .segment_slots(16 << (input.segment_shift % 4))
        .seed(input.seed);
    let mut t: T<'_> = SwissTable::create_in_with(&heap, "t", opts).unwrap();
    let mut m: HashMap<u32, u64> = HashMap::new();
    for op in input.ops.into_iter().take(2000) {
        match op {
            Op::Insert(k, v) => assert_eq!(t.insert(key(k), v), m.insert(key(k), v)),
            Op::Remove(k) => assert_eq!(t.remove(&key(k)), m.remove(&key(k))),
            Op::Get(k) => {
                assert_eq!(t.get(&key(k)), m.get(&key(k)));
                assert_eq!(t.contains_key(&key(k)), m.contains_key(&key(k)));
            }
            Op::EntryOrInsert(k, v) => {
                assert_eq!(*t.entry(key(k)).or_insert(v), *m.entry(key(k)).or_insert(v))
            }
            Op::EntryAndModify(k) => {
                let a = *t.entry(key(k)).and_modify(|x| *x ^= 1).or_default();
                let b = *m.entry(key(k)).and_modify(|x| *x ^= 1).or_default();
                assert_eq!(a, b);
            }
            Op::EntryRemove(k) => {
                let a = match t.entry(key(k)) {
                    Entry::Occupied(o) => Some(o.remove()),
                    Entry::Vacant(_) => None,
                };
                assert_eq!(a, m.remove(&key(k)));
            }
            Op::Retain(d) => {
                let d = d as u32 | 1;
                t.retain(|k, _| k % d != 0);
                m.retain(|k, _| k % d != 0);
            }
            Op::GetMany(ks) => {
                let ks: Vec<u32> = ks.into_iter().map(key).collect();
                let mut out = vec![None; ks.len()];
                t.get_many(&ks, &mut out);
                let want: Vec<Option<u64>> = ks.iter().map(|k| m.get(k).copied()).collect();
                assert_eq!(out, want);
            }
            Op::Clear => {
                t.clear();
                m.clear();
            }
            Op::Drain => {
                let mut a: Vec<(u32, u64)> = t.drain().collect();
                let mut b: Vec<(u32, u64)> = m.drain().collect();
                a.sort_unstable();
                b.sort_unstable();
                assert_eq!(a, b);
            }
            Op::ShrinkToFit => t.shrink_to_fit(),
            Op::Reserve(n) => t.reserve(n as usize),
            Op::Reopen => {
                drop(t);
                t = SwissTable::open_in(&heap, "t").unwrap();
            }
            Op::Bulk(k, n) => {
                for i in 0..n as u16 {
                    let kk = key(k.wrapping_add(i));
                    assert_eq!(t.insert(kk, i as u64), m.insert(kk, i as u64));
                }
            }
            Op::Extend(k, n, fallible) => {
                let pairs = (0..u16::from(n)).map(|i| (key(k.wrapping_add(i)), u64::from(i)));
                if fallible {
                    t.try_extend(pairs.clone()).unwrap();
                } else {
                    t.extend(pairs.clone());
                }
                m.extend(pairs);
            }
            Op::TryReserve(n) => t.try_reserve(n as usize).unwrap(),
            Op::BulkRemove(n) => {
                let victims: Vec<u32> = m.keys().copied().take(n as usize).collect();
                for k in victims {
                    assert_eq!(t.remove(&k), m.remove(&k));
                }
            }
        }
        assert_eq!(t.len(), m.len());
    }
    t.check().unwrap();
    assert_eq!(t.iter().count(), m.len());
    for (k, v) in t.iter() {
        assert_eq!(m.get(k), Some(v));
    }
    t.destroy().unwrap();
    assert_eq!(heap.allocated_blocks(), 0);
});
