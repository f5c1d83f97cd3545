//! A real process SIGKILLed at random moments while it inserts into and removes from a table
//! in a file region, growing it through splits and shrinking it through merges; this process
//! then reopens the file and finds every completed operation in the table.
#![cfg(not(miri))]

use offheap_mmap::{Region, RegionOptions};
use offheap_swiss::{RepairReport, SwissTable, TableOptions};
use offheap_testkit::{child, spawn_ready, XorShift};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const ROLE: &str = "OFFHEAP_SWISS_KILL_CHILD";
/// Keys per cycle: a cycle inserts keys `0..KEYS`, then removes them all.
const KEYS: u64 = 6000;

type Table<'a> = SwissTable<u64, u64, &'a Region>;

/// Operation `i` of the endless sequence: `(key, Some(value))` inserts, `(key, None)` removes.
fn op(i: u64) -> (u64, Option<u64>) {
    let j = i % (2 * KEYS);
    // Scatter the keys so that growth and shrink visit every segment.
    let key = |j: u64| j.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
    if j < KEYS {
        (key(j), Some(i))
    } else {
        (key(j - KEYS), None)
    }
}

/// The table after the first `n` operations.
fn model(n: u64) -> HashMap<u64, u64> {
    let mut m = HashMap::new();
    // Only the current cycle matters: each cycle ends empty.
    for i in n - n % (2 * KEYS)..n {
        match op(i) {
            (k, Some(v)) => {
                m.insert(k, v);
            }
            (k, None) => {
                m.remove(&k);
            }
        }
    }
    m
}

/// Completed operations: a counter in the region, stored after each operation returns.
fn progress(r: &Region) -> &AtomicU64 {
    let off = r.root("progress").expect("root 'progress'");
    let p = r.ptr(off, 8).unwrap().as_ptr().cast::<AtomicU64>();
    // SAFETY: an 8-byte, 8-aligned allocation, accessed only atomically, living as long as
    // the region.
    unsafe { &*p }
}

#[test]
#[ignore = "entry point of the child process spawned by sigkilled_table_reopens_whole"]
fn kill_child_entry() {
    let Ok(path) = std::env::var(ROLE) else {
        return;
    };
    let r = Region::open(Path::new(&path)).unwrap();
    let mut t = Table::open_in(&r, "kv").unwrap();
    let done = progress(&r);
    println!("ready");
    let mut i = done.load(Ordering::Acquire);
    loop {
        match op(i) {
            (k, Some(v)) => {
                t.insert(k, v);
            }
            (k, None) => {
                t.remove(&k);
            }
        }
        i += 1;
        done.store(i, Ordering::Release);
    }
}

#[test]
fn sigkilled_table_reopens_whole() {
    let dir = offheap_testkit::scratch_dir();
    let path = dir.path().join("kill.region");
    let r = Region::create(&path, &RegionOptions::new()).unwrap();
    drop(Table::create_in_with(&r, "kv", TableOptions::new().segment_slots(64)).unwrap());
    let p = r.alloc(8, 8).unwrap();
    r.set_root("progress", Some(p)).unwrap();
    progress(&r).store(0, Ordering::Release);

    let mut rng = XorShift::new(0x2545_F491_4F6C_DD1D);
    let mut failures = Vec::new();
    let mut in_flight_applied = 0;
    // Totals of the repairs, and how many kills needed each kind.
    let mut total = RepairReport::default();
    let (mut torn, mut recounted) = (0, 0);
    // Kills between an allocation and its record, whose record the region's recovery stored.
    let mut finished = 0;
    const ROUNDS: u32 = 100;
    for round in 0..ROUNDS {
        let mut child = spawn_ready(child("kill_child_entry").env(ROLE, &path));
        std::thread::sleep(Duration::from_micros(1_000 + rng.below(20_000)));
        child.kill(); // SIGKILL
        finished += usize::from(r.recover().unwrap().record_finished);
        r.check().unwrap();
        let n = progress(&r).load(Ordering::Acquire);
        let t = match Table::open_in(&r, "kv") {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("round {round} after {n} ops: open: {e}"));
                break;
            }
        };
        // The child never drops the table: every open after a kill repairs.
        let rep = t.repair_report().expect("a table left open is repaired");
        total.ranges += rep.ranges;
        total.moved += rep.moved;
        total.freed += rep.freed;
        total.recounted += rep.recounted;
        torn += usize::from(rep.ranges > 0);
        recounted += usize::from(rep.recounted > 0);
        let got: HashMap<u64, u64> = t.iter().map(|(k, v)| (*k, *v)).collect();
        let (before, after) = (model(n), model(n + 1));
        if got == after {
            in_flight_applied += 1;
        } else if got != before {
            failures.push(format!(
                "round {round} after {n} ops: {} entries, expected {} (or {})",
                got.len(),
                before.len(),
                after.len()
            ));
            break;
        }
        if t.len() != got.len() {
            failures.push(format!(
                "round {round} after {n} ops: len() {} but {} entries",
                t.len(),
                got.len()
            ));
            break;
        }
        // The child redoes the in-flight operation (inserts and removes are idempotent).
    }
    // Blocks a kill can leak: none. A structural change allocates through
    // `Region::alloc_into`, which records the block in the table's pending words in the
    // store after the allocation's own, and `r.recover()` above stores the record of an
    // allocation that a kill cut short between the two. (Before, kills inside `alloc` and
    // before the record leaked 2-7 blocks per 100; without the recovery's part, debug
    // builds leaked a block in 4 runs of 30: the kill point between the two stores.)
    let t = Table::open_in(&r, "kv").unwrap();
    let leaked = r.stats().allocations - (t.stats().segments as u64 + 3);
    eprintln!(
        "{ROUNDS} kills: the in-flight operation was applied {in_flight_applied} times; \
         {torn} opens repaired a structural change cut short ({total:?}), \
         {recounted} recounted segment counters; {finished} allocation records stored by \
         the region's recovery; {leaked} blocks leaked"
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(leaked, 0, "blocks leaked");
    // The test must reach what it tests: kills inside splits and merges (their segments,
    // allocated and not yet named or unnamed and not yet freed, are freed by the repair).
    // Kills at each single step are `crash_tests`' business (in the library).
    assert!(
        total.freed > 0,
        "no kill fell inside a split or merge: {total:?}"
    );
}

const HOLD: &str = "OFFHEAP_SWISS_HOLD_CHILD";

#[test]
#[ignore = "entry point of the child process spawned by a_table_open_in_a_live_process_is_refused"]
fn hold_child_entry() {
    let Ok(path) = std::env::var(HOLD) else {
        return;
    };
    let r = Region::open(Path::new(&path)).unwrap();
    let mut t = Table::open_in(&r, "kv").unwrap();
    t.insert(7, 7);
    println!("ready");
    // Holds the table open until killed.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A table has one user at a time: while a live process has it open, another process's
/// `open_in` is refused with `InUse` (before, it took the live table for one left by a dead
/// process and "repaired" it under the live process's feet); once that process is dead, the
/// next `open_in` repairs the table and has every entry.
#[test]
fn a_table_open_in_a_live_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hold.region");
    let r = Region::create(&path, &RegionOptions::new()).unwrap();
    {
        let mut t = Table::create_in(&r, "kv").unwrap();
        t.insert(1, 1);
    }
    let mut child = spawn_ready(child("hold_child_entry").env(HOLD, &path));
    match Table::open_in(&r, "kv") {
        Err(offheap_swiss::Error::InUse { pid }) => assert_eq!(pid, child.process.id()),
        other => panic!(
            "opened a table a live process holds: {:?}",
            other.map(|t| t.len())
        ),
    };
    child.kill();
    let t = Table::open_in(&r, "kv").unwrap();
    assert!(t.repair_report().is_some());
    assert_eq!((t.get(&1), t.get(&7), t.len()), (Some(&1), Some(&7), 2));
}
