//! A real process SIGKILLed at random moments while it allocates, writes and frees in a
//! file region; another process (this one, which has the file open throughout) recovers
//! the allocator, checks it, finds every committed allocation intact, and goes on.
#![cfg(not(miri))]

mod common;

use common::*;
use offheap_mmap::{Offset, Region, RegionOptions};
use offheap_testkit::{child, spawn_ready, XorShift};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const ROLE: &str = "OFFHEAP_MMAP_RECOVER_CHILD";
/// Directory slots: (offset, len) pairs of committed allocations, 0 = empty.
const SLOTS: u64 = 256;

fn opts() -> RegionOptions {
    RegionOptions::new()
        .initial_size(64 << 10)
        .growth_step(4096)
        .release_threshold(8192)
}

/// The directory's slot words (2 per slot), as atomics in the shared mapping.
fn dir(r: &Region) -> &[AtomicU64] {
    let d = r.root("dir").expect("root 'dir'");
    let p = r.ptr(d, 16 * SLOTS).unwrap().as_ptr().cast::<AtomicU64>();
    // SAFETY: the directory allocation holds 2 * SLOTS 8-aligned words, accessed only
    // atomically, and lives as long as the region.
    unsafe { std::slice::from_raw_parts(p, 2 * SLOTS as usize) }
}

/// Marks an allocation of `len >= 16` bytes: its first and last words hold `off ^ len`
/// (cheap, so that the child spends its time in the allocator, where kills should land).
fn mark(r: &Region, off: Offset, len: u64) {
    let p = r.ptr(off, len).unwrap().as_ptr();
    // SAFETY: `off..off + len` is a live allocation of at least 16 bytes.
    unsafe {
        p.cast::<u64>().write_unaligned(off.get() ^ len);
        p.add(len as usize - 8)
            .cast::<u64>()
            .write_unaligned(off.get() ^ len);
    }
}

fn marked(r: &Region, off: Offset, len: u64) -> bool {
    let p = r.ptr(off, len).unwrap().as_ptr();
    // SAFETY: as in `mark`.
    unsafe {
        p.cast::<u64>().read_unaligned() == off.get() ^ len
            && p.add(len as usize - 8).cast::<u64>().read_unaligned() == off.get() ^ len
    }
}

/// Committed allocations in the directory; each must hold its marks.
fn committed(r: &Region) -> Vec<(Offset, u64)> {
    let d = dir(r);
    let mut v = Vec::new();
    for s in 0..SLOTS as usize {
        let off = d[2 * s].load(Ordering::Acquire);
        if let Some(off) = Offset::new(off) {
            let len = d[2 * s + 1].load(Ordering::Relaxed);
            assert!(marked(r, off, len), "slot {s} at {off:?} lost");
            v.push((off, len));
        }
    }
    v.sort_unstable();
    for w in v.windows(2) {
        assert!(w[0].0.get() + w[0].1 <= w[1].0.get(), "overlap {w:?}");
    }
    v
}

#[test]
#[ignore = "entry point of the child process spawned by sigkilled_allocator_is_recovered"]
fn recover_child_entry() {
    let Ok(path) = std::env::var(ROLE) else {
        return;
    };
    let r = Region::open_with(PathBuf::from(path), &opts()).unwrap();
    let d = dir(&r);
    let mut rng = XorShift::new(u64::from(std::process::id()));
    println!("ready");
    loop {
        let x = rng.next();
        let s = (x % SLOTS) as usize;
        let old = d[2 * s].load(Ordering::Acquire);
        if let Some(off) = Offset::new(old) {
            // Uncommit, then free.
            d[2 * s].store(0, Ordering::Release);
            r.free(off).unwrap();
        } else {
            // Mostly small (the time goes to the allocator, where the kills should land),
            // sometimes large (growth, give-back).
            let len = [16, 40, 100, 200, 600, 16, 40, 60_000][(x >> 20) as usize % 8];
            let off = r.alloc(len, 1 << ((x >> 30) % 7)).unwrap();
            mark(&r, off, len);
            d[2 * s + 1].store(len, Ordering::Relaxed);
            d[2 * s].store(off.get(), Ordering::Release);
        }
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn sigkilled_allocator_is_recovered() {
    let dir_ = scratch();
    let path = dir_.path().join("recover.region");
    let r = Region::create(&path, &opts()).unwrap();
    let d = r.alloc(16 * SLOTS, 8).unwrap();
    // SAFETY: the allocation holds 16 * SLOTS bytes.
    unsafe {
        r.ptr(d, 16 * SLOTS)
            .unwrap()
            .as_ptr()
            .write_bytes(0, 16 * SLOTS as usize)
    };
    r.set_root("dir", Some(d)).unwrap();
    let mut rng = XorShift::new(0x1234_5678_9abc_def1);
    let (mut rebuilt, mut grown) = (0, 0);
    const ROUNDS: u32 = 40;
    for round in 0..ROUNDS {
        let mut child = spawn_ready(child("recover_child_entry").env(ROLE, &path));
        std::thread::sleep(Duration::from_micros(200 + rng.below(20_000)));
        child.kill(); // SIGKILL
        let rep = r.recover().unwrap_or_else(|e| panic!("round {round}: {e}"));
        rebuilt += u32::from(rep.rebuilt);
        grown += u32::from(rep.grown_to.is_some());
        r.check().unwrap_or_else(|e| panic!("round {round}: {e}"));
        let live = committed(&r);
        // Allocate and write a lot: nothing committed may be handed out again.
        let mut mine = Vec::new();
        for i in 0..200u64 {
            let len = 64 + (i * 131) % 5000;
            let off = r.alloc(len, 16).unwrap();
            fill(&r, off, len, off.get() ^ 0xA5);
            for &(o, l) in &live {
                let disjoint = off.get() + len <= o.get() || o.get() + l <= off.get();
                assert!(
                    disjoint,
                    "round {round}: {off:?}+{len} overlaps live {o:?}+{l}"
                );
            }
            mine.push((off, len));
        }
        assert_eq!(committed(&r), live, "round {round}");
        for (off, len) in mine {
            assert!(holds(&r, off, len, off.get() ^ 0xA5));
            r.free(off).unwrap();
        }
        r.check().unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    eprintln!("{ROUNDS} kills: {rebuilt} recoveries rebuilt the allocator, {grown} rolled a growth forward");
}
