//! Property tests: the table against `std::collections::HashMap`, op for op.

use offheap_swiss::{Heap, SwissTable, TableMemory, TableOptions};
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Clone, Debug)]
enum Op {
    Insert(u32, u64),
    Get(u32),
    Remove(u32),
    EntryOrInsert(u32, u64),
    EntryAndModify(u32),
    EntryRemove(u32),
    Retain(u32),
    GetMany(Vec<u32>),
    Drain,
    Clear,
    ShrinkToFit,
    Reserve(u16),
    Reopen,
    /// Insert a run of fresh keys (growth past several splits).
    Bulk(u32, u16),
    /// Remove a run of keys (shrink via merges).
    BulkRemove(u32, u16),
}

/// Longest bulk run (short under miri, which is ~1000x slower).
const BULK: u16 = if cfg!(miri) { 40 } else { 400 };

fn op(keys: u32) -> impl Strategy<Value = Op> {
    let k = 0..keys;
    prop_oneof![
        20 => (k.clone(), any::<u64>()).prop_map(|(k, v)| Op::Insert(k, v)),
        10 => k.clone().prop_map(Op::Get),
        15 => k.clone().prop_map(Op::Remove),
        5 => (k.clone(), any::<u64>()).prop_map(|(k, v)| Op::EntryOrInsert(k, v)),
        5 => k.clone().prop_map(Op::EntryAndModify),
        3 => k.clone().prop_map(Op::EntryRemove),
        1 => (2..7u32).prop_map(Op::Retain),
        2 => proptest::collection::vec(k.clone(), 0..40).prop_map(Op::GetMany),
        1 => Just(Op::Drain),
        1 => Just(Op::Clear),
        1 => Just(Op::ShrinkToFit),
        1 => (0..600u16).prop_map(Op::Reserve),
        2 => Just(Op::Reopen),
        2 => (k.clone(), 1..BULK).prop_map(|(k, n)| Op::Bulk(k, n)),
        2 => (k, 1..BULK).prop_map(|(k, n)| Op::BulkRemove(k, n)),
    ]
}

type T<M> = SwissTable<u32, u64, M>;

fn check_all<M: TableMemory>(t: &T<M>, m: &HashMap<u32, u64>) {
    t.check().unwrap();
    assert_eq!(t.len(), m.len());
    assert_eq!(t.iter().count(), m.len());
    for (k, v) in t.iter() {
        assert_eq!(m.get(k), Some(v), "key {k}");
    }
    let st = t.stats();
    assert_eq!(st.len, m.len());
    assert!(st.len <= st.slots);
}

/// Runs `ops` on a table created in `mem` and on a std HashMap; `reopen` closes the table
/// (and its memory, for a file) and opens it again.
fn run<M: TableMemory>(
    ops: Vec<Op>,
    segment_slots: usize,
    mem: M,
    reopen: impl Fn(T<M>) -> T<M>,
) -> T<M> {
    let opts = TableOptions::new().segment_slots(segment_slots).seed(7);
    let mut t: T<M> = SwissTable::create_in_with(mem, "t", opts).unwrap();
    let mut m: HashMap<u32, u64> = HashMap::new();
    for (n, op) in ops.into_iter().enumerate() {
        match op {
            Op::Insert(k, v) => assert_eq!(t.insert(k, v), m.insert(k, v)),
            Op::Get(k) => {
                assert_eq!(t.get(&k), m.get(&k));
                assert_eq!(t.contains_key(&k), m.contains_key(&k));
            }
            Op::Remove(k) => assert_eq!(t.remove(&k), m.remove(&k)),
            Op::EntryOrInsert(k, v) => {
                assert_eq!(*t.entry(k).or_insert(v), *m.entry(k).or_insert(v))
            }
            Op::EntryAndModify(k) => {
                let a = *t.entry(k).and_modify(|x| *x += 1).or_default();
                let b = *m.entry(k).and_modify(|x| *x += 1).or_default();
                assert_eq!(a, b);
            }
            Op::EntryRemove(k) => {
                let a = match t.entry(k) {
                    offheap_swiss::Entry::Occupied(o) => Some(o.remove()),
                    offheap_swiss::Entry::Vacant(_) => None,
                };
                assert_eq!(a, m.remove(&k));
            }
            Op::Retain(d) => {
                t.retain(|k, v| {
                    *v = v.wrapping_add(1);
                    k % d != 0
                });
                m.retain(|k, v| {
                    *v = v.wrapping_add(1);
                    k % d != 0
                });
            }
            Op::GetMany(ks) => {
                let mut out = vec![None; ks.len()];
                let found = t.get_many(&ks, &mut out);
                let want: Vec<Option<u64>> = ks.iter().map(|k| m.get(k).copied()).collect();
                assert_eq!(out, want);
                assert_eq!(found, want.iter().flatten().count());
            }
            Op::Drain => {
                let mut a: Vec<(u32, u64)> = t.drain().collect();
                let mut b: Vec<(u32, u64)> = m.drain().collect();
                a.sort_unstable();
                b.sort_unstable();
                assert_eq!(a, b);
            }
            Op::Clear => {
                t.clear();
                m.clear();
            }
            Op::ShrinkToFit => {
                t.shrink_to_fit();
                assert_eq!(t.stats().tombstones, 0);
            }
            Op::Reserve(n) => {
                t.reserve(n as usize);
                assert!(t.capacity() >= m.len() + n as usize || segment_slots * 7 / 8 < n as usize);
            }
            Op::Reopen => t = reopen(t),
            Op::Bulk(k, n) => {
                for i in 0..n as u32 {
                    let key = k
                        .wrapping_mul(7919)
                        .wrapping_add(i.wrapping_mul(2654435761));
                    assert_eq!(t.insert(key, i as u64), m.insert(key, i as u64));
                }
            }
            Op::BulkRemove(k, n) => {
                let victims: Vec<u32> = m
                    .keys()
                    .copied()
                    .filter(|x| x % 3 != k % 3)
                    .take(n as usize)
                    .collect();
                for key in victims {
                    assert_eq!(t.remove(&key), m.remove(&key));
                }
            }
        }
        assert_eq!(t.len(), m.len(), "after op {n}");
        if n % 16 == 0 {
            check_all(&t, &m);
        }
    }
    check_all(&t, &m);
    // Removing everything merges back down to one segment.
    let keys: Vec<u32> = m.keys().copied().collect();
    for k in keys {
        assert_eq!(t.remove(&k), m.remove(&k));
    }
    assert!(t.is_empty());
    t.shrink_to_fit();
    let st = t.stats();
    assert_eq!(st.segments, 1, "{st:?}");
    assert_eq!(st.global_depth, 0);
    t
}

fn run_heap(ops: Vec<Op>, segment_slots: usize) {
    let heap = Heap::new();
    let t = run(ops, segment_slots, &heap, |t| {
        let mem = *t.memory();
        drop(t);
        SwissTable::open_in(mem, "t").unwrap()
    });
    t.destroy().unwrap();
    assert_eq!(heap.allocated_blocks(), 0, "blocks leaked");
}

#[cfg(not(miri))]
fn run_file(ops: Vec<Op>, segment_slots: usize) {
    use offheap_mmap::{Region, RegionOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.region");
    let opts = RegionOptions::new().max_size(1 << 30);
    let region = Region::create(&path, &opts).unwrap();
    let before = region.stats().allocations;
    let t = run(ops, segment_slots, region, |t| {
        drop(t);
        let region = Region::open(&path).unwrap();
        region.check().unwrap();
        SwissTable::open_in(region, "t").unwrap()
    });
    let region = {
        let mut t = t;
        t.clear();
        t.destroy().unwrap();
        Region::open(&path).unwrap()
    };
    region.check().unwrap();
    assert_eq!(region.stats().allocations, before, "blocks leaked");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 8 } else { 64 }, ..ProptestConfig::default() })]

    #[test]
    fn small_segments_many_keys(ops in proptest::collection::vec(op(2000), 1..if cfg!(miri) { 20 } else { 300 })) {
        run_heap(ops, 16);
    }

    #[test]
    fn medium_segments_few_keys(ops in proptest::collection::vec(op(300), 1..if cfg!(miri) { 20 } else { 300 })) {
        run_heap(ops, 64);
    }

    #[cfg(not(miri))]
    #[test]
    fn file_region_with_reopen(ops in proptest::collection::vec(op(1000), 1..200)) {
        run_file(ops, 32);
    }
}

/// Sorted pairs of a std map.
fn sorted(m: &HashMap<u32, u64>) -> Vec<(u32, u64)> {
    let mut v: Vec<(u32, u64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
    v.sort_unstable();
    v
}

/// `Clone`, `Index` and the owning iterators (`into_iter`, `into_keys`, `into_values`) of a
/// table in its default memory, against std: `writes` (key, `Some(value)` to insert, `None`
/// to remove) run on both; the table is cloned after the first `cut` of them, and the rest
/// run on the original only, so the clone must keep the state it was cloned in.
fn clone_index_and_owning_iterators(writes: Vec<(u32, Option<u64>)>, cut: usize) {
    let mut t: SwissTable<u32, u64> = SwissTable::with_options_in(
        TableOptions::new().segment_slots(16).seed(11),
        offheap_swiss::DefaultMemory::anonymous_with(&offheap_swiss::default_region_options())
            .unwrap(),
    )
    .unwrap();
    let mut m = HashMap::new();
    let apply =
        |t: &mut SwissTable<u32, u64>, m: &mut HashMap<u32, u64>, w: (u32, Option<u64>)| match w {
            (k, Some(v)) => assert_eq!(t.insert(k, v), m.insert(k, v)),
            (k, None) => assert_eq!(t.remove(&k), m.remove(&k)),
        };
    let cut = cut.min(writes.len());
    for &w in &writes[..cut] {
        apply(&mut t, &mut m, w);
    }
    let c = t.clone();
    let snapshot = m.clone();
    assert_eq!((c.seed(), c.len()), (t.seed(), m.len()));
    assert_eq!(c.stats().tombstones, 0, "a clone is built fresh");
    for &w in &writes[cut..] {
        apply(&mut t, &mut m, w);
    }
    for (k, v) in &m {
        assert_eq!(t[k], *v);
    }
    for (k, v) in &snapshot {
        assert_eq!(c[k], *v);
    }
    let mut got: Vec<(u32, u64)> = c.into_iter().collect();
    got.sort_unstable();
    assert_eq!(got, sorted(&snapshot));
    let it = t.clone().into_iter();
    assert_eq!(it.len(), m.len());
    let mut keys: Vec<u32> = t.clone().into_keys().collect();
    let mut values: Vec<u64> = t.into_values().collect();
    keys.sort_unstable();
    values.sort_unstable();
    let (mut mk, mut mv): (Vec<u32>, Vec<u64>) = m.into_iter().unzip();
    mk.sort_unstable();
    mv.sort_unstable();
    assert_eq!((keys, values), (mk, mv));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 64 }, ..ProptestConfig::default() })]

    #[test]
    fn clone_index_and_owning_iterators_agree_with_std(
        writes in proptest::collection::vec(
            (0..500u32, proptest::option::weighted(0.7, any::<u64>())),
            0..if cfg!(miri) { 40 } else { 600 },
        ),
        cut in 0..600usize,
    ) {
        clone_index_and_owning_iterators(writes, cut);
    }
}

#[test]
#[should_panic(expected = "not in the table")]
fn index_of_an_absent_key_panics_as_std_does() {
    let t: SwissTable<u32, u64> = [(1, 2)].into_iter().collect();
    let _ = t[&3];
}
