//! Simulated kills at every step of growth and shrink (see `raw::kill`). For each step `k`
//! of an operation sequence, a copy of a table file runs the sequence and "dies" after `k`
//! steps, leaving the file as it is; reopened, the table must hold every completed operation
//! and the one in flight whole or not at all, report the repair, hold up under more
//! operations, and leak no block.

use crate::raw::kill::{arm, revive, Killed};
use crate::{RepairReport, SwissTable, TableOptions};
use offheap_mmap::{Region, RegionOptions};
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

type T<'r> = SwissTable<u64, u64, &'r Region>;

#[derive(Clone, Copy, Debug)]
enum Op {
    Insert(u64),
    Remove(u64),
    Shrink,
    Reserve(usize),
}

/// The value an insert of `k` stores.
fn val(k: u64) -> u64 {
    k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

fn apply(t: &mut T<'_>, op: Op) {
    match op {
        Op::Insert(k) => {
            t.insert(k, val(k));
        }
        Op::Remove(k) => {
            t.remove(&k);
        }
        Op::Shrink => t.shrink_to_fit(),
        Op::Reserve(n) => t.reserve(n),
    }
}

fn model(ops: &[Op]) -> HashMap<u64, u64> {
    let mut m = HashMap::new();
    for op in ops {
        match *op {
            Op::Insert(k) => {
                m.insert(k, val(k));
            }
            Op::Remove(k) => {
                m.remove(&k);
            }
            Op::Shrink | Op::Reserve(_) => {}
        }
    }
    m
}

fn contents(t: &T<'_>) -> HashMap<u64, u64> {
    let m: HashMap<u64, u64> = t.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(m.len(), t.iter().count(), "a key is in the table twice");
    m
}

/// Blocks of the region beyond the table's segments, header and directory.
fn extra_blocks(r: &Region, t: &T<'_>) -> u64 {
    r.stats().allocations - (t.stats().segments as u64 + 2)
}

fn options() -> RegionOptions {
    RegionOptions::new().initial_size(256 << 10)
}

/// Kills `ops`, run on the table that `setup` built, at every step; returns the number of
/// kills and the sum of the repairs.
fn kill_everywhere(setup: &[Op], ops: &[Op]) -> (u64, RepairReport) {
    let dir = offheap_testkit::scratch_dir();
    let base = dir.path().join("base.region");
    {
        let r = Region::create(&base, &options()).unwrap();
        let topts = TableOptions::new().segment_slots(32).seed(3);
        let mut t = T::create_in_with(&r, "t", topts).unwrap();
        for op in setup {
            apply(&mut t, *op);
        }
    }
    let mut total = RepairReport::default();
    for k in 0.. {
        let path = dir.path().join("k.region");
        std::fs::copy(&base, &path).unwrap();
        let mut done = 0;
        {
            let r = Region::open_with(&path, &options()).unwrap();
            let mut t = ManuallyDrop::new(T::open_in(&r, "t").unwrap());
            arm(k);
            let res = catch_unwind(AssertUnwindSafe(|| {
                for op in ops {
                    apply(&mut t, *op);
                    done += 1;
                }
            }));
            revive();
            match res {
                Ok(()) => {
                    // Every step ran: the sequence is done, and so is the test.
                    let t = ManuallyDrop::into_inner(t);
                    assert_eq!(contents(&t), model(&[setup, ops].concat()));
                    return (k, total);
                }
                Err(p) => assert!(p.is::<Killed>(), "a real panic at step {k}"),
            }
            // `t` is forgotten: the process died with the table open.
            t.simulate_death();
        }
        let rep = check_reopened(&path, setup, ops, done, k);
        total.ranges += rep.ranges;
        total.moved += rep.moved;
        total.freed += rep.freed;
        total.recounted += rep.recounted;
    }
    unreachable!()
}

/// Reopens what a kill after `k` steps left (`done` operations completed) and checks it.
/// For odd `k`, a first open is itself killed after `k / 2 % 5` steps of its repair (when
/// the repair has that many), so that the second repairs what the first left half done.
fn check_reopened(path: &Path, setup: &[Op], ops: &[Op], done: usize, k: u64) -> RepairReport {
    let first = if k % 2 == 0 {
        None
    } else {
        let r = Region::open_with(path, &options()).unwrap();
        arm(k / 2 % 5);
        let res = catch_unwind(AssertUnwindSafe(|| T::open_in(&r, "t")));
        revive();
        match res {
            // Left open, as by a process that dies after its repair.
            Ok(t) => {
                let mut t = t.unwrap_or_else(|e| panic!("step {k}: {e}"));
                let rep = t.repair_report();
                t.simulate_death();
                std::mem::forget(t);
                rep
            }
            Err(p) => {
                assert!(p.is::<Killed>(), "a real panic at step {k}");
                None
            }
        }
    };
    let r = Region::open_with(path, &options()).unwrap();
    let mut t = T::open_in(&r, "t").unwrap_or_else(|e| panic!("step {k}: {e}"));
    let rep = t.repair_report().expect("a table left open is repaired");
    // What the repair did, counted where it completed: by the first open if it was not
    // killed (the second then finds nothing left to repair).
    let rep = first.unwrap_or(rep);
    let got = contents(&t);
    let before = model(&[setup, &ops[..done]].concat());
    let after = model(&[setup, &ops[..(done + 1).min(ops.len())]].concat());
    assert!(
        got == before || got == after,
        "step {k} (op {done}: {:?}): {} entries, expected {} or {}",
        ops.get(done),
        got.len(),
        before.len(),
        after.len()
    );
    assert_eq!(t.len(), got.len(), "step {k}");
    t.check()
        .unwrap_or_else(|e| panic!("step {k}: the repaired table: {e}"));
    r.check().unwrap();
    let extra = extra_blocks(&r, &t);
    assert_eq!(extra, 0, "step {k}: blocks leaked ({rep:?})");
    // The repaired table works: its counters are right (growth and merges go by them).
    let mut m = got;
    for i in 0..100u64 {
        t.insert(1 << 40 | i, i);
        m.insert(1 << 40 | i, i);
    }
    for i in (0..100u64).step_by(2) {
        t.remove(&(1 << 40 | i));
        m.remove(&(1 << 40 | i));
    }
    assert_eq!(contents(&t), m, "step {k}");
    assert_eq!(t.len(), m.len());
    drop(t);
    let t = T::open_in(&r, "t").unwrap();
    assert_eq!(t.repair_report(), None, "step {k}: closed cleanly");
    assert_eq!(contents(&t), m, "step {k}");
    assert_eq!(extra_blocks(&r, &t), 0);
    rep
}

#[test]
fn killed_while_growing() {
    let setup: Vec<Op> = (0..100).map(Op::Insert).collect();
    let ops: Vec<Op> = (100..260).map(Op::Insert).collect();
    let (kills, rep) = kill_everywhere(&setup, &ops);
    eprintln!("{kills} kills: {rep:?}");
    assert!(
        kills > 400 && rep.ranges > 0 && rep.freed > 0,
        "{kills} {rep:?}"
    );
    assert!(rep.recounted > 0, "{rep:?}");
}

#[test]
fn killed_while_growing_from_empty_and_reserving() {
    let mut ops: Vec<Op> = (0..60).map(Op::Insert).collect();
    ops.push(Op::Reserve(400));
    let (kills, rep) = kill_everywhere(&[], &ops);
    eprintln!("{kills} kills: {rep:?}");
    assert!(
        kills > 100 && rep.ranges > 0 && rep.freed > 0,
        "{kills} {rep:?}"
    );
}

#[test]
fn killed_while_shrinking() {
    let setup: Vec<Op> = (0..300).map(Op::Insert).collect();
    let mut ops: Vec<Op> = (0..300).filter(|k| k % 7 != 0).map(Op::Remove).collect();
    ops.push(Op::Shrink);
    let (kills, rep) = kill_everywhere(&setup, &ops);
    eprintln!("{kills} kills: {rep:?}");
    // Merges in place that were cut short are finished (`moved`).
    assert!(
        kills > 400 && rep.ranges > 0 && rep.moved > 0,
        "{kills} {rep:?}"
    );
}

#[test]
fn killed_while_reusing_tombstones() {
    let mut setup: Vec<Op> = (0..200).map(Op::Insert).collect();
    setup.extend((0..200).filter(|k| k % 3 == 0).map(Op::Remove));
    let ops: Vec<Op> = (0..200)
        .filter(|k| k % 3 == 0)
        .map(|k| Op::Insert(k + 1000))
        .chain([Op::Shrink])
        .collect();
    let (kills, rep) = kill_everywhere(&setup, &ops);
    eprintln!("{kills} kills: {rep:?}");
    assert!(kills > 100 && rep.recounted > 0, "{kills} {rep:?}");
}

/// A named table of 24-byte values whose values are replaced: a kill at every step of the
/// replacements leaves each key exactly once, with its value before or after the replacement
/// in flight (never a mix), and a replacement cut short after its record was written is
/// undone by the repair (`undone`).
#[test]
fn killed_while_replacing_wide_values() {
    type W<'r> = SwissTable<u64, [u64; 3], &'r Region>;
    const N: u64 = 120;
    let v = |k: u64, r: u64| [k ^ r, r.wrapping_mul(0x0101_0101_0101_0101), !k ^ r];
    let dir = offheap_testkit::scratch_dir();
    let base = dir.path().join("base.region");
    {
        let r = Region::create(&base, &options()).unwrap();
        let topts = TableOptions::new().segment_slots(32).seed(5);
        let mut t = W::create_in_with(&r, "t", topts).unwrap();
        (0..N).for_each(|k| assert!(t.insert(k, v(k, 0)).is_none()));
    }
    // Round 1 through `insert`, round 2 through `try_insert`, round 3 through `and_modify`.
    let ops: Vec<(u64, u64)> = (1..=3u64)
        .flat_map(|r| (0..N).map(move |k| (k, r)))
        .collect();
    // The round of key `k` after the first `done` operations.
    let round = |k: u64, done: usize| ops[..done].iter().filter(|o| o.0 == k).count() as u64;
    let (mut kills, mut undone) = (0u64, 0usize);
    for k in 0.. {
        let path = dir.path().join("k.region");
        std::fs::copy(&base, &path).unwrap();
        let mut done = 0;
        {
            let r = Region::open_with(&path, &options()).unwrap();
            let mut t = ManuallyDrop::new(W::open_in(&r, "t").unwrap());
            arm(k);
            let res = catch_unwind(AssertUnwindSafe(|| {
                for &(key, r) in &ops {
                    let old = match r {
                        1 => t.insert(key, v(key, r)),
                        2 => t.try_insert(key, v(key, r)).unwrap(),
                        _ => {
                            let mut old = None;
                            t.entry(key).and_modify(|x| {
                                old = Some(*x);
                                *x = v(key, r);
                            });
                            old
                        }
                    };
                    assert_eq!(old, Some(v(key, r - 1)));
                    done += 1;
                }
            }));
            revive();
            match res {
                Ok(()) => {
                    eprintln!("{kills} kills, {undone} replacements undone by a repair");
                    // Four kill points per replacement: after the record, in the middle of
                    // the value's write (tests write it in two halves), after it, after the
                    // record is cleared.
                    assert!(kills >= 4 * ops.len() as u64, "{kills} kills");
                    assert!(undone > 0, "no replacement was undone by a repair");
                    return;
                }
                Err(p) => assert!(p.is::<Killed>(), "a real panic at step {k}"),
            }
            t.simulate_death();
        }
        kills += 1;
        let r = Region::open_with(&path, &options()).unwrap();
        let t = W::open_in(&r, "t").unwrap_or_else(|e| panic!("step {k}: {e}"));
        let rep = t.repair_report().expect("a table left open is repaired");
        undone += rep.undone;
        assert_eq!(t.len() as u64, N, "step {k}");
        assert_eq!(
            t.iter().count() as u64,
            N,
            "step {k}: a key is in the table twice"
        );
        for key in 0..N {
            let got = *t
                .get(&key)
                .unwrap_or_else(|| panic!("step {k}: {key} lost"));
            let before = round(key, done);
            let after = round(key, (done + 1).min(ops.len()));
            assert!(
                got == v(key, before) || got == v(key, after),
                "step {k}: key {key} holds {got:?}"
            );
        }
        r.check().unwrap();
        assert_eq!(
            r.stats().allocations,
            t.stats().segments as u64 + 2,
            "step {k}: blocks leaked"
        );
    }
}

/// `create_in` with room for many keys, killed at every step. The table is named before its
/// room is reserved, so a kill in the reserve leaves a named table that a process died with:
/// it reopens repaired, empty, and holds every block the region gave out (before, the
/// reserve ran before the name, and a kill in it left every segment allocated so far
/// unreachable).
#[test]
fn killed_while_creating_with_capacity() {
    let dir = offheap_testkit::scratch_dir();
    let base = dir.path().join("base.region");
    drop(Region::create(&base, &options()).unwrap());
    let topts = || TableOptions::new().segment_slots(32).seed(7).capacity(300);
    let (mut kills, mut before_name) = (0u64, 0u64);
    for k in 0.. {
        let path = dir.path().join("k.region");
        std::fs::copy(&base, &path).unwrap();
        {
            let r = Region::open_with(&path, &options()).unwrap();
            arm(k);
            let res = catch_unwind(AssertUnwindSafe(|| T::create_in_with(&r, "t", topts())));
            revive();
            match res {
                Ok(t) => {
                    let t = t.unwrap();
                    assert!(t.capacity() >= 300, "{}", t.capacity());
                    assert!(
                        kills - before_name > 20,
                        "only {kills} kill points ({before_name} before the name)"
                    );
                    eprintln!("{kills} kills, {before_name} before the name");
                    return;
                }
                Err(p) => assert!(p.is::<Killed>(), "a real panic at step {k}"),
            }
        }
        kills += 1;
        let r = Region::open_with(&path, &options()).unwrap();
        if r.root("t").is_none() {
            // Killed before the name: what is lost is what `create_in` allocates before it,
            // the header and the first segment (the directory comes after the segment's
            // kill point). Recovered first, so that the count is the allocator's own.
            before_name += 1;
            r.recover().unwrap();
            assert!(
                r.stats().allocations <= 2,
                "step {k}: {} blocks lost before the name",
                r.stats().allocations
            );
            continue;
        }
        let mut t = T::open_in(&r, "t").unwrap_or_else(|e| panic!("step {k}: {e}"));
        assert!(t.repair_report().is_some(), "step {k}: left open, repaired");
        assert_eq!((t.len(), t.iter().count()), (0, 0), "step {k}");
        r.check().unwrap();
        assert_eq!(extra_blocks(&r, &t), 0, "step {k}: blocks leaked");
        for i in 0..300u64 {
            t.insert(i, val(i));
        }
        assert_eq!(
            contents(&t),
            model(&(0..300).map(Op::Insert).collect::<Vec<_>>())
        );
    }
}
