//! Tables in offheap-mmap regions: anonymous, file-backed, reopened, corrupted.

use offheap_mmap::{Region, RegionOptions};
use offheap_swiss::{Error, SwissTable, TableOptions};

#[test]
fn anonymous_region_default_and_shared() {
    let mut t: SwissTable<u64, u64> = SwissTable::new();
    let n = if cfg!(miri) { 300 } else { 50_000 };
    for i in 0..n {
        t.insert(i, !i);
    }
    assert!((0..n).all(|i| t.get(&i) == Some(&!i)));
    t.memory().check().unwrap();

    // Two tables sharing one region through `&Region`.
    let region = Region::anonymous().unwrap();
    let mut a: SwissTable<u32, u32, &Region> = SwissTable::new_in(&region);
    let mut b: SwissTable<u32, [u8; 12], &Region> = SwissTable::new_in(&region);
    for i in 0..200u32 {
        a.insert(i, i);
        b.insert(i, [i as u8; 12]);
    }
    assert_eq!(a.get(&7), Some(&7));
    assert_eq!(b.get(&7), Some(&[7; 12]));
    drop(a);
    drop(b);
    // Unnamed tables give their blocks back when dropped.
    assert_eq!(region.stats().allocations, 0);
    region.check().unwrap();
}

#[cfg(not(miri))]
fn file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("table.region")
}

#[cfg(not(miri))]
#[test]
fn file_backed_table_reopens_with_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let seed;
    {
        let region = Region::create(&path, &RegionOptions::new()).unwrap();
        let mut t: SwissTable<u64, u64, Region> =
            SwissTable::create_in_with(region, "kv", TableOptions::new().segment_slots(256))
                .unwrap();
        for i in 0..100_000u64 {
            t.insert(i, i * 7);
        }
        for i in 0..10_000u64 {
            t.remove(&(i * 10));
        }
        seed = t.seed();
        t.memory().flush().unwrap();
    }
    let region = Region::open(&path).unwrap();
    let t: SwissTable<u64, u64, Region> = SwissTable::open_in(region, "kv").unwrap();
    assert_eq!(t.seed(), seed);
    assert_eq!(t.len(), 90_000);
    for i in 0..100_000u64 {
        assert_eq!(t.get(&i).copied(), (i % 10 != 0).then_some(i * 7), "{i}");
    }
    drop(t);
    let region = Region::open(&path).unwrap();
    assert!(matches!(
        SwissTable::<u64, u32, &Region>::open_in(&region, "kv"),
        Err(Error::TypeMismatch { .. })
    ));
    assert!(matches!(
        SwissTable::<u64, u64, &Region>::open_in(&region, "other"),
        Err(Error::RootNotFound(_))
    ));
    assert!(matches!(
        SwissTable::<u64, u64, &Region>::create_in(&region, "kv"),
        Err(Error::RootExists(_))
    ));
}

/// The stored header's length is written only when the table is dropped: a table whose
/// process died (here: a table forgotten, so its `Drop` never ran, then its owner word made
/// that of a dead process) reopens with its true length, summed from its segments, and so
/// does one whose header length is garbage.
#[cfg(not(miri))]
#[test]
fn length_comes_from_the_segments_not_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    {
        let region = Region::create(&path, &RegionOptions::new()).unwrap();
        let mut t: SwissTable<u64, u64, Region> =
            SwissTable::create_in_with(region, "kv", TableOptions::new().segment_slots(64))
                .unwrap();
        for i in 0..5000u64 {
            t.insert(i, i + 1);
        }
        for i in 0..1000u64 {
            t.remove(&(i * 5));
        }
        t.memory().flush().unwrap();
        // The region (a shared file mapping) stays mapped; its writes are in the file.
        std::mem::forget(t);
    }
    let hdr = Region::open(&path).unwrap().root("kv").unwrap().get();
    let check = |region: &Region| {
        let t = SwissTable::<u64, u64, &Region>::open_in(region, "kv").unwrap();
        assert_eq!(t.len(), 4000);
        assert_eq!(t.iter().count(), 4000);
        for i in 0..5000u64 {
            assert_eq!(t.get(&i).copied(), (i % 5 != 0).then_some(i + 1), "{i}");
        }
    };
    let region = Region::open(&path).unwrap();
    // The forgotten handle still counts as open in this process.
    match SwissTable::<u64, u64, &Region>::open_in(&region, "kv") {
        Err(Error::InUse { pid }) => assert_eq!(pid, std::process::id()),
        other => panic!("expected InUse, got {:?}", other.map(|t| t.len())),
    }
    // As if it had been this pid's earlier process: its start time (the owner's low 32
    // bits) is another.
    poke(&region, hdr, 64, |x| (x & !0xFFFF_FFFF) | 1);
    // Never dropped: the stored length is still the one `create` wrote.
    let mut stored = 1;
    poke(&region, hdr, 56, |x| {
        stored = x;
        x
    });
    assert_eq!(stored, 0);
    check(&region);
    poke(&region, hdr, 56, |_| 123_456_789);
    check(&region);
    // Dropping a persistent table brings the stored length up to date.
    drop(SwissTable::<u64, u64, &Region>::open_in(&region, "kv").unwrap());
    poke(&region, hdr, 56, |x| {
        stored = x;
        x
    });
    assert_eq!(stored, 4000);
}

/// A table has one user at a time within a process too: a second handle, through the same
/// region or another mapping of the file, is refused while the first is open, and the
/// refused open changes nothing. So is an open that fails on a corrupt table: the owner word
/// goes back to what it was.
#[cfg(not(miri))]
#[test]
fn a_table_open_in_this_process_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    let a = Region::create(&path, &RegionOptions::new()).unwrap();
    let mut t: SwissTable<u64, u64, &Region> =
        SwissTable::create_in_with(&a, "kv", TableOptions::new().segment_slots(64)).unwrap();
    t.extend((0..3000u64).map(|i| (i, i * 3)));
    let hdr = a.root("kv").unwrap().get();
    let mut owner = 0;
    poke(&a, hdr, 64, |x| {
        owner = x;
        x
    });
    assert_eq!(owner >> 32, u64::from(std::process::id()));
    let b = Region::open(&path).unwrap();
    for r in [&a, &b] {
        match SwissTable::<u64, u64, &Region>::open_in(r, "kv") {
            Err(Error::InUse { pid }) => assert_eq!(pid, std::process::id()),
            other => panic!("expected InUse, got {:?}", other.map(|t| t.len())),
        }
    }
    // The first handle goes on as if nothing happened.
    t.extend((3000..6000u64).map(|i| (i, i * 3)));
    assert_eq!(t.len(), 6000);
    poke(&a, hdr, 64, |x| {
        assert_eq!(x, owner, "a refused open wrote the owner word");
        x
    });
    drop(t);
    // Opened with the wrong key type: refused before the claim, so the table stays closed.
    assert!(matches!(
        SwissTable::<u32, u64, &Region>::open_in(&b, "kv"),
        Err(Error::TypeMismatch { .. })
    ));
    // Closed cleanly: the next open needs no repair.
    let t = SwissTable::<u64, u64, &Region>::open_in(&b, "kv").unwrap();
    assert_eq!(t.repair_report(), None);
    assert_eq!(t.len(), 6000);
    assert!((0..6000u64).all(|i| t.get(&i) == Some(&(i * 3))));
    drop(t);
    // An open that fails after it claimed the table (a directory word naming no segment)
    // gives the claim back: the table still reads as closed.
    let dir_off = {
        let mut d = 0;
        poke(&b, hdr, 72, |x| {
            d = x & ((1 << 56) - 1);
            x
        });
        d
    };
    let mut word = 0;
    poke(&b, dir_off, 0, |x| {
        word = x;
        x ^ 64
    });
    assert!(matches!(
        SwissTable::<u64, u64, &Region>::open_in(&b, "kv"),
        Err(Error::OffsetOutOfBounds { .. } | Error::Corrupt(_))
    ));
    poke(&b, hdr, 64, |x| {
        assert_eq!(x, 0, "a failed open left the table marked open");
        x
    });
    poke(&b, dir_off, 0, |_| word);
    let t = SwissTable::<u64, u64, &Region>::open_in(&b, "kv").unwrap();
    assert_eq!(t.repair_report(), None);
    assert_eq!(t.len(), 6000);
}

/// Threads of one process that open the same table at once, each through its own mapping
/// of the file: exactly one gets it while the others are refused.
#[cfg(not(miri))]
#[test]
fn one_of_many_threads_opening_a_table_at_once_gets_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    {
        let r = Region::create(&path, &RegionOptions::new()).unwrap();
        let mut t = SwissTable::<u64, u64, &Region>::create_in(&r, "kv").unwrap();
        t.insert(1, 2);
    }
    for round in 0..20 {
        let start = std::sync::Barrier::new(6);
        let tried = std::sync::Barrier::new(6);
        let won: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        let r = Region::open(&path).unwrap();
                        start.wait();
                        let t = SwissTable::<u64, u64, &Region>::open_in(&r, "kv");
                        // Hold the table until every thread has tried.
                        tried.wait();
                        match t {
                            Ok(t) => {
                                assert_eq!(t.get(&1), Some(&2));
                                assert_eq!(t.repair_report(), None);
                                1
                            }
                            Err(Error::InUse { pid }) => {
                                assert_eq!(pid, std::process::id());
                                0
                            }
                            Err(e) => panic!("round {round}: {e}"),
                        }
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(won, 1, "round {round}");
    }
}

/// Reads/writes a u64 at byte `at` of the block at `off`.
fn poke(region: &Region, off: u64, at: u64, f: impl FnOnce(u64) -> u64) {
    let p = region.ptr_raw(off, at + 8).unwrap();
    // SAFETY: the 8 bytes lie inside the mapping (checked by ptr_raw); the test owns the region.
    unsafe {
        let q = p.as_ptr().add(at as usize).cast::<u64>();
        q.write_unaligned(f(q.read_unaligned()));
    }
}

/// A region file in `dir` holding the table "kv" (`slots`-slot segments) with `i -> i` for
/// every `i` in `0..n`, dropped cleanly; returns its path and the table's stats.
#[cfg(not(miri))]
fn table_file(
    dir: &tempfile::TempDir,
    slots: usize,
    n: u64,
) -> (std::path::PathBuf, offheap_swiss::TableStats) {
    let path = file(dir);
    let region = Region::create(&path, &RegionOptions::new()).unwrap();
    let mut t: SwissTable<u64, u64, Region> = SwissTable::create_in_with(
        region,
        "kv",
        TableOptions::new().segment_slots(slots).seed(7),
    )
    .unwrap();
    for i in 0..n {
        t.insert(i, i);
    }
    (path, t.stats())
}

#[cfg(not(miri))]
#[test]
fn corrupt_tables_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = table_file(&dir, 64, 2000);
    let hdr = Region::open(&path).unwrap().root("kv").unwrap().get();
    // (byte offset in the header, mutation, what the error must be)
    type Check = fn(&Error) -> bool;
    type Mutate = fn(u64) -> u64;
    let cases: Vec<(u64, Mutate, Check)> = vec![
        (0, |x| x ^ 1, |e| matches!(e, Error::Corrupt(_))), // magic
        (8, |x| x + 1, |e| matches!(e, Error::UnsupportedVersion(_))), // version
        (40, |x| x ^ 4, |e| matches!(e, Error::Corrupt(_))), // seed: checksum
        (72, |x| x + (30 << 56), |e| matches!(e, Error::Corrupt(_))), // global depth
        (
            72,
            |x| (x & (0xFF << 56)) | 1 << 50,
            |e| matches!(e, Error::OffsetOutOfBounds { .. }),
        ), // directory
        (
            72,
            |x| x + 8,
            |e| matches!(e, Error::Corrupt(_) | Error::OffsetOutOfBounds { .. }),
        ),
        // The pending words of a table closed cleanly are 0 (every structural change
        // clears its own); one that is not is no change left half done, but a corrupt
        // header (found by the fuzz target swiss_file: an allocation found no free word).
        (80, |x| x ^ 0x40, |e| matches!(e, Error::Corrupt(_))),
        (
            88,
            |x| x ^ (0xFD << 56 | 0x40),
            |e| matches!(e, Error::Corrupt(_)),
        ),
        (96, |x| x ^ 1, |e| matches!(e, Error::Corrupt(_))),
    ];
    for (i, (at, f, ok)) in cases.into_iter().enumerate() {
        let copy = dir.path().join(format!("c{i}.region"));
        std::fs::copy(&path, &copy).unwrap();
        let region = Region::open(&copy).unwrap();
        poke(&region, hdr, at, f);
        match SwissTable::<u64, u64, &Region>::open_in(&region, "kv") {
            Err(e) => assert!(ok(&e), "case {i}: unexpected error {e}"),
            Ok(_) => panic!("case {i}: corrupt table opened"),
        };
    }
    // Corrupt a segment: point a directory entry elsewhere, or break a segment header.
    let region = Region::open(&path).unwrap();
    let dir_off = {
        let p = region.ptr_raw(hdr, 80).unwrap();
        // SAFETY: 80 bytes in bounds.
        unsafe { p.as_ptr().add(72).cast::<u64>().read_unaligned() & ((1 << 56) - 1) }
    };
    drop(region);
    type Mutate2 = fn(u64) -> u64;
    let seg_cases: Vec<(bool, u64, Mutate2)> = vec![
        (true, 0, |x| x + 64),          // dir entry points into a segment
        (true, 0, |_| 3),               // dir entry points at the region header
        (false, 0, |x| x ^ 0xFF),       // segment magic
        (false, 0, |x| x + (40 << 32)), // segment depth
        (false, 16, |x| x + 1000),      // segment len
    ];
    for (i, (in_dir, at, f)) in seg_cases.into_iter().enumerate() {
        let copy = dir.path().join(format!("s{i}.region"));
        std::fs::copy(&path, &copy).unwrap();
        let region = Region::open(&copy).unwrap();
        if in_dir {
            poke(&region, dir_off, at, f);
        } else {
            // A directory word is the block's offset plus log2(groups) in the top 8 bits; the
            // segment header follows the slots (16 bytes each for u64 -> u64).
            let word = {
                let p = region.ptr_raw(dir_off, 8).unwrap();
                // SAFETY: in bounds.
                unsafe { p.as_ptr().cast::<u64>().read_unaligned() }
            };
            let block = word & ((1 << 56) - 1);
            let slots = 16u64 << (word >> 56);
            poke(&region, block + slots * 16, at, f);
        }
        assert!(
            SwissTable::<u64, u64, &Region>::open_in(&region, "kv").is_err(),
            "segment case {i} opened"
        );
    }
}

/// The segments of the table whose header is at `hdr`, as the offsets of their headers (each
/// followed by its control bytes) and their slot counts, read from the stored directory.
fn segment_headers(region: &Region, hdr: u64) -> Vec<(u64, u64)> {
    let word = |at: u64| {
        let mut w = 0;
        poke(region, hdr, at, |x| {
            w = x;
            x
        });
        w
    };
    // The header's directory word: the handle, and the global depth in the top 8 bits.
    let (depth, dir) = (word(72) >> 56, word(72) & ((1 << 56) - 1));
    let mut segs = Vec::new();
    for j in 0..1u64 << depth {
        let mut w = 0;
        poke(region, dir, j * 8, |x| {
            w = x;
            x
        });
        let slots = 16u64 << (w >> 56);
        let seg = (w & ((1 << 56) - 1)) + slots * 16;
        if !segs.contains(&(seg, slots)) {
            segs.push((seg, slots));
        }
    }
    segs
}

/// A corrupt file whose segments store lengths short of their full slots opens with the
/// short length (`open` never reads the entries). Removing its entries must not take the
/// length below zero: wrapped, `len()` was near 2^64 and the iterators' exact size with it
/// (`iter().collect()` panicked with "capacity overflow"), and a segment's wrapped length
/// made `shrink_to_fit` rebuild it at the largest segment size (2^20 slots).
#[cfg(not(miri))]
#[test]
fn undercounted_segment_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = table_file(&dir, 32, 200);
    let region = Region::open(&path).unwrap();
    let hdr = region.root("kv").unwrap().get();
    for (seg, _) in segment_headers(&region, hdr) {
        poke(&region, seg, 16, |_| 0); // len
        poke(&region, seg, 24, |_| 1); // deleted (so that shrink_to_fit rebuilds)
    }
    let mut t = SwissTable::<u64, u64, &Region>::open_in(&region, "kv").unwrap();
    assert_eq!(t.len(), 0);
    for i in 0..50u64 {
        assert_eq!(t.remove(&i), Some(i));
    }
    assert!(t.len() <= 150, "length {}", t.len());
    assert_eq!(t.iter().collect::<Vec<_>>().len(), 150);
    t.shrink_to_fit();
    assert!(t.stats().slots <= 1024, "{:?}", t.stats());
    assert!((50..200u64).all(|i| t.get(&i) == Some(&i)));
}

/// A segment header's room is derived from its length and tombstone count; the word after
/// them (where format version 4 kept the room until it was derived) is ignored. A file with
/// garbage there opens, holds its entries, and grows by its counters and control bytes alone:
/// splits still keep every segment within its 7/8 load.
#[cfg(not(miri))]
#[test]
fn a_segments_room_comes_from_its_length_and_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let (path, stats) = table_file(&dir, 64, 200);
    assert!(stats.segments >= 4, "{stats:?}");
    let region = Region::open(&path).unwrap();
    let hdr = region.root("kv").unwrap().get();
    for (seg, _) in segment_headers(&region, hdr) {
        // The reserved word: 0 (no room) in half the segments, all ones in the others.
        poke(
            &region,
            seg,
            32,
            |_| if seg % 2 == 0 { 0 } else { u64::MAX },
        );
    }
    let mut t = SwissTable::<u64, u64, &Region>::open_in(&region, "kv").unwrap();
    assert_eq!(t.len(), 200);
    assert!((0..200u64).all(|i| t.get(&i) == Some(&i)));
    // Each segment takes inserts up to its 7/8 load, then splits: never past it, and never
    // before it (a segment split while it had room would leave the table sparser).
    for i in 200..2000u64 {
        assert_eq!(t.insert(i, i), None);
        let s = t.stats();
        assert!(s.len <= s.slots / 8 * 7, "{s:?}");
    }
    assert!((0..2000u64).all(|i| t.get(&i) == Some(&i)));
    let s = t.stats();
    // (2000 entries in 3520 slots with the fixed seed of `table_file`.)
    assert!(s.len * 2 >= s.slots, "too sparse: {s:?}");
}

/// A corrupt file whose segment header promises room (a length and tombstone count far below
/// the 7/8 load) that its control bytes do not have: a merge must not move the buddy's entries
/// into it in place (there was no free slot for them: a debug assertion failed, and release
/// builds dropped the entries).
#[cfg(not(miri))]
#[test]
fn merge_checks_the_control_bytes_for_room() {
    let dir = tempfile::tempdir().unwrap();
    // 29 entries: one full 32-slot segment split into two buddies at depth 1.
    let (path, stats) = table_file(&dir, 32, 29);
    assert_eq!((stats.segments, stats.global_depth), (2, 1));
    let region = Region::open(&path).unwrap();
    let hdr = region.root("kv").unwrap().get();
    let segs = segment_headers(&region, hdr);
    let ((a, _), (b, b_slots)) = (segs[0], segs[1]);
    // The first segment claims one entry, the second two entries and no tombstone (so room
    // for 26 more), while every one of its control bytes says full (tag 0).
    poke(&region, a, 16, |_| 1);
    poke(&region, b, 16, |_| 2);
    poke(&region, b, 24, |_| 0);
    for at in (0..b_slots).step_by(8) {
        poke(&region, b, 64 + at, |_| 0);
    }
    let mut t = SwissTable::<u64, u64, &Region>::open_in(&region, "kv").unwrap();
    let found: Vec<u64> = (0..29u64).filter(|i| t.get(i) == Some(i)).collect();
    // (With the fixed seed of `table_file`, 17 of the 29 keys are found.)
    assert!(found.len() >= 10, "{found:?}");
    // Merges the buddies (they claim 3 entries together): not in place.
    t.shrink_to_fit();
    assert_eq!(t.stats().segments, 1);
    for i in &found {
        assert_eq!(t.get(i), Some(i));
    }
}

/// A corrupt file whose header's segment size (checksummed, so resealed here) is below its
/// segments' size: `reserve` splits a segment into halves of the header's size, which must
/// still hold all of its entries (they did not: a debug assertion failed, and release builds
/// dropped the entries).
#[cfg(not(miri))]
#[test]
fn split_halves_hold_the_whole_segment() {
    let dir = tempfile::tempdir().unwrap();
    // 113 entries: two 128-slot buddies of about 56 each.
    let (path, stats) = table_file(&dir, 128, 113);
    assert_eq!(stats.segments, 2);
    let region = Region::open(&path).unwrap();
    let hdr = region.root("kv").unwrap().get();
    // Header: version (u32 at 8), max_groups (u32 at 12); the checksum (at 48) covers the
    // first 48 bytes.
    poke(&region, hdr, 8, |x| (x & 0xFFFF_FFFF) | 1 << 32);
    let sum = {
        let p = region.ptr_raw(hdr, 48).unwrap();
        // SAFETY: 48 bytes in bounds.
        xxhash_rust::xxh3::xxh3_64(unsafe { std::slice::from_raw_parts(p.as_ptr(), 48) })
    };
    poke(&region, hdr, 48, |_| sum);
    let mut t = SwissTable::<u64, u64, &Region>::open_in(&region, "kv").unwrap();
    assert!((0..113u64).all(|i| t.get(&i) == Some(&i)));
    // Splits the 128-slot segments (the header says 16-slot ones).
    let _ = t.try_reserve(1);
    assert!(t.stats().segments > 2, "{:?}", t.stats());
    assert!((0..113u64).all(|i| t.get(&i) == Some(&i)));
}

/// A directory entry must name a live segment of its own table. Here table "a"'s directory is
/// pointed at table "b"'s only segment, in three states of that segment:
/// 1. live, in table "b": refused, the segment names another table (before, "a" opened, and
///    the two tables shared the segment);
/// 2. freed with table "b": refused (the region's check below), and freeing the segment
///    cleared its magic (which refuses it in a memory that cannot tell a freed block);
/// 3. freed, with its magic and owner forged back: refused, the region says the block is not
///    a live allocation (the table would have used memory the region hands out again).
#[cfg(not(miri))]
#[test]
fn a_directory_entry_must_name_a_live_segment_of_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(&dir);
    {
        let region = Region::create(&path, &RegionOptions::new()).unwrap();
        let opts = || TableOptions::new().segment_slots(64);
        let mut a = SwissTable::<u64, u64, &Region>::create_in_with(&region, "a", opts()).unwrap();
        let mut b = SwissTable::<u64, u64, &Region>::create_in_with(&region, "b", opts()).unwrap();
        for i in 0..500 {
            a.insert(i, i);
        }
        for i in 0..20 {
            b.insert(i, i);
        }
        assert!(a.stats().global_depth > 0);
        assert_eq!(b.stats().segments, 1);
    }
    let region = Region::open(&path).unwrap();
    let (ha, hb) = (
        region.root("a").unwrap().get(),
        region.root("b").unwrap().get(),
    );
    let read = |off: u64, at: u64| {
        let mut w = 0;
        poke(&region, off, at, |x| {
            w = x;
            x
        });
        w
    };
    // Header: the directory's handle at 72, the global depth in its top 8 bits (outside the
    // checksum).
    let handle = |w: u64| w & ((1 << 56) - 1);
    let (dir_a, dir_b) = (handle(read(ha, 72)), handle(read(hb, 72)));
    let word_b = read(dir_b, 0);
    let (seg_b, _) = segment_headers(&region, hb)[0];
    poke(&region, ha, 72, handle);
    poke(&region, dir_a, 0, |_| word_b);
    match SwissTable::<u64, u64, &Region>::open_in(&region, "a") {
        Err(Error::Corrupt(what)) => assert!(what.contains("another table"), "{what}"),
        other => panic!("a segment of table b opened as table a's: {other:?}"),
    }

    SwissTable::<u64, u64, &Region>::open_in(&region, "b")
        .unwrap()
        .destroy()
        .unwrap();
    assert!(SwissTable::<u64, u64, &Region>::open_in(&region, "a").is_err());
    assert_ne!(
        read(seg_b, 0) as u32,
        u32::from_le_bytes(*b"SwSg"),
        "a freed segment keeps its magic"
    );

    // Segment header: magic (u32) at 0, owning table's header handle at 48.
    poke(&region, seg_b, 0, |x| {
        (x & !0xFFFF_FFFF) | u64::from(u32::from_le_bytes(*b"SwSg"))
    });
    poke(&region, seg_b, 48, |_| ha);
    assert!(matches!(
        SwissTable::<u64, u64, &Region>::open_in(&region, "a"),
        Err(Error::OffsetOutOfBounds { .. })
    ));
}

/// A table found open (its process died) whose in-place merge was cut short after the
/// destination's depth was lowered: `open_in` finishes the merge (the destination takes the
/// buddy's entries, the whole range goes to it, the buddy is freed) and recounts the
/// counters. Anonymous memory, so that miri runs the repair.
#[test]
fn a_merge_cut_short_is_finished_on_open() {
    let region = Region::anonymous().unwrap();
    {
        let opts = TableOptions::new().segment_slots(32);
        let mut t = SwissTable::<u64, u64, &Region>::create_in_with(&region, "t", opts).unwrap();
        // 29 entries: one full 32-slot segment split into two buddies at depth 1.
        for i in 0..29 {
            t.insert(i, i * 3);
        }
        assert_eq!((t.stats().segments, t.stats().global_depth), (2, 1));
    }
    let hdr = region.root("t").unwrap().get();
    let segs = segment_headers(&region, hdr);
    let (dst, _) = segs[0];
    // Segment header: depth (u32) at 4; table header: state (u32) at 64 (1: open).
    poke(&region, dst, 0, |x| x & 0xFFFF_FFFF);
    poke(&region, hdr, 64, |x| (x & !0xFFFF_FFFF) | 1);
    let mut t = SwissTable::<u64, u64, &Region>::open_in(&region, "t").unwrap();
    let rep = t.repair_report().unwrap();
    assert_eq!((rep.ranges, rep.freed), (1, 1), "{rep:?}");
    assert!(rep.moved > 0 && rep.recounted > 0, "{rep:?}");
    assert_eq!(t.len(), 29);
    assert!((0..29).all(|i| t.get(&i) == Some(&(i * 3))));
    assert_eq!((t.stats().segments, t.stats().global_depth), (1, 1));
    // Header, directory, one segment: the buddy was freed.
    assert_eq!(region.stats().allocations, 3);
    for i in 29..200 {
        t.insert(i, i * 3);
    }
    assert!((0..200).all(|i| t.get(&i) == Some(&(i * 3))));
    drop(t);
    let t = SwissTable::<u64, u64, &Region>::open_in(&region, "t").unwrap();
    assert_eq!(t.repair_report(), None);
    assert_eq!(t.len(), 200);
    region.check().unwrap();
}

/// A table found open (its process died) whose header's pending words record blocks as
/// fresh (top byte `0xFD`: allocated by a structural change that the kill cut short before
/// it filled them): `open_in` frees a live block so recorded that nothing names, and leaves
/// alone a record of a block freed since, of the table's directory and of a live segment.
/// Anonymous memory, so that miri runs the repair.
#[test]
fn a_fresh_record_frees_only_a_live_block_that_nothing_names() {
    const FRESH: u64 = 0xFD << 56;
    let region = Region::anonymous().unwrap();
    let opts = TableOptions::new().segment_slots(32);
    drop(SwissTable::<u64, u64, &Region>::create_in_with(&region, "t", opts).unwrap());
    let mut t = SwissTable::<u64, u64, &Region>::open_in(&region, "t").unwrap();
    for i in 0..29 {
        t.insert(i, i * 3);
    }
    drop(t);
    let hdr = region.root("t").unwrap().get();
    let mut dword = 0;
    poke(&region, hdr, 72, |x| {
        dword = x;
        x
    });
    let dir = dword & ((1 << 56) - 1);
    let mut seg0 = 0;
    poke(&region, dir, 0, |x| {
        seg0 = x & ((1 << 56) - 1);
        x
    });
    // Header, directory, two segments; then a block the dead process had allocated, and
    // one freed since.
    assert_eq!(region.stats().allocations, 4);
    let stray = region.alloc(600, 64).unwrap().get();
    let gone = region.alloc(600, 64).unwrap();
    region.free(gone).unwrap();
    // Owner word at 64 (1: a process that is gone), pending words at 80, 88 and 96.
    let left_open = |pending: [u64; 3]| {
        poke(&region, hdr, 64, |_| 1);
        for (j, w) in pending.into_iter().enumerate() {
            poke(&region, hdr, 80 + 8 * j as u64, |_| w);
        }
    };
    let check = |freed: usize, allocations: u64| {
        let t = SwissTable::<u64, u64, &Region>::open_in(&region, "t").unwrap();
        let rep = t.repair_report().expect("a table left open is repaired");
        assert_eq!(rep.freed, freed, "{rep:?}");
        assert_eq!(region.stats().allocations, allocations);
        assert_eq!(t.len(), 29);
        assert!((0..29).all(|i| t.get(&i) == Some(&(i * 3))));
        region.check().unwrap();
    };
    left_open([gone.get() | FRESH, dir | FRESH, seg0 | FRESH]);
    check(0, 5);
    left_open([stray | FRESH, gone.get() | FRESH, 0]);
    check(1, 4);
    // Its record found it free the second time (the repair records its frees; a kill
    // during one leaves the record for the next repair).
    left_open([stray | FRESH, 0, 0]);
    check(0, 4);
}

/// A segment named by two directory ranges (each consistent on its own) is refused: a split
/// of one range would free the segment while the other still names it.
#[cfg(not(miri))]
#[test]
fn a_segment_named_by_two_ranges_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, stats) = table_file(&dir, 32, 200);
    assert!(stats.global_depth >= 2, "{stats:?}");
    let region = Region::open(&path).unwrap();
    let hdr = region.root("kv").unwrap().get();
    let mut dword = 0;
    poke(&region, hdr, 72, |x| {
        dword = x;
        x
    });
    let (gd, dir_off) = (dword >> 56, dword & ((1 << 56) - 1));
    let read = |j: u64| {
        let mut w = 0;
        poke(&region, dir_off, 8 * j, |x| {
            w = x;
            x
        });
        w
    };
    // The range of entry 0's segment, then the same number of entries after it.
    let first = read(0);
    let span = (0..1u64 << gd).take_while(|&j| read(j) == first).count() as u64;
    assert!(2 * span <= 1 << gd);
    for j in span..2 * span {
        poke(&region, dir_off, 8 * j, |_| first);
    }
    match SwissTable::<u64, u64, &Region>::open_in(&region, "kv") {
        Err(Error::Corrupt(what)) => assert!(what.contains("two directory ranges"), "{what}"),
        other => panic!("opened a segment named twice: {:?}", other.map(|t| t.len())),
    };
    // Also when the table was left open, so that the repair resolves the ranges first
    // (`swiss_file` found a split freeing a segment still named, after such a repair).
    poke(&region, hdr, 64, |x| (x & !0xFFFF_FFFF) | 1);
    assert!(SwissTable::<u64, u64, &Region>::open_in(&region, "kv").is_err());
}

/// A region that counts the table's [`TableMemory::prefault`] requests, and those that
/// faulted a page in.
#[cfg(not(miri))]
struct CountingPrefaults {
    region: Region,
    asked: std::cell::Cell<u64>,
    done: std::cell::Cell<u64>,
}

// SAFETY: forwards every call to the region, which upholds the contract.
#[cfg(not(miri))]
unsafe impl offheap_swiss::TableMemory for CountingPrefaults {
    fn alloc(&self, size: u64, align: u64) -> Result<u64, Error> {
        offheap_swiss::TableMemory::alloc(&self.region, size, align)
    }
    unsafe fn free(&self, handle: u64) {
        // SAFETY: forwarded.
        unsafe { offheap_swiss::TableMemory::free(&self.region, handle) }
    }
    fn ptr(&self, handle: u64, len: u64) -> Option<std::ptr::NonNull<u8>> {
        offheap_swiss::TableMemory::ptr(&self.region, handle, len)
    }
    fn root(&self, name: &str) -> Option<u64> {
        offheap_swiss::TableMemory::root(&self.region, name)
    }
    fn set_root(&self, name: &str, handle: Option<u64>) -> Result<(), Error> {
        offheap_swiss::TableMemory::set_root(&self.region, name, handle)
    }
    fn prefault(&self, ahead: u64) -> bool {
        self.asked.set(self.asked.get() + 1);
        let did = self.region.prefault(ahead);
        self.done.set(self.done.get() + u64::from(did));
        did
    }
}

/// The last 28 inserts into a full-size segment before it splits (1/128 of its load of
/// 3584) each ask the memory to prefault a page; no other insert does. So over a growth,
/// the requests are 28 per split, plus up to 28 per segment that has not split yet; and
/// an anonymous region (without huge pages) faults pages in for them.
#[cfg(not(miri))]
#[test]
fn inserts_before_a_split_ask_the_memory_to_prefault() {
    let mem = CountingPrefaults {
        region: Region::anonymous_with(&RegionOptions::new().huge_pages(false)).unwrap(),
        asked: Default::default(),
        done: Default::default(),
    };
    let mut t: SwissTable<u64, u64, &CountingPrefaults> =
        SwissTable::with_options_in(TableOptions::new().seed(3), &mem).unwrap();
    let n = 60_000u64;
    for i in 0..n {
        assert_eq!(t.insert(i, i * 5), None);
    }
    let segments = t.stats().segments as u64;
    let splits = segments - 1;
    assert!(splits >= 10, "{splits} splits");
    let asked = mem.asked.get();
    assert!(
        (28 * splits..=28 * (splits + segments)).contains(&asked),
        "{asked} requests for {splits} splits and {segments} segments"
    );
    if offheap_testkit::kernel_populates() {
        assert!(
            mem.done.get() > 0,
            "no page faulted in for {asked} requests"
        );
    }
    assert!(mem.done.get() <= asked);
    assert!((0..n).all(|i| t.get(&i) == Some(&(i * 5))));
    // Looking keys up and replacing values asks for nothing.
    for i in 0..n {
        assert_eq!(t.insert(i, i), Some(i * 5));
    }
    assert_eq!(mem.asked.get(), asked);
}

/// `create_in` names a table before it reserves the room asked for (so that a kill in the
/// reserve leaves a table to repair, not unreachable blocks). When the reserve fails, the
/// name and every block go again: the error, and the region as it was.
#[test]
fn create_in_whose_reserve_fails_leaves_no_name_and_no_block() {
    // Small under miri, where each segment's allocation is slow (4 MiB took 200 s).
    let max = if cfg!(miri) { 256 << 10 } else { 4 << 20 };
    let region = Region::anonymous_with(&RegionOptions::new().max_size(max)).unwrap();
    let opts = TableOptions::new().segment_slots(64).capacity(1 << 20);
    let err = SwissTable::<u64, u64, &Region>::create_in_with(&region, "t", opts).unwrap_err();
    assert!(matches!(err, Error::Alloc { .. }), "{err}");
    assert_eq!(region.root("t"), None);
    assert_eq!(region.stats().allocations, 0);
    region.check().unwrap();
    // The name is free, and a table that fits is created under it.
    let opts = TableOptions::new().segment_slots(64).capacity(1000);
    let mut t = SwissTable::<u64, u64, &Region>::create_in_with(&region, "t", opts).unwrap();
    assert!(t.capacity() >= 1000);
    t.insert(1, 2);
    drop(t);
    let t = SwissTable::<u64, u64, &Region>::open_in(&region, "t").unwrap();
    assert_eq!(t.get(&1), Some(&2));
}

/// Consuming iteration of a named table yields its pairs by value and then drops the handle
/// as `drop` does: the table stays in its region, closed cleanly, every entry there.
#[test]
fn into_iter_of_a_named_table_leaves_it_in_its_region() {
    let region = Region::anonymous().unwrap();
    let mut t = SwissTable::<u64, u64, &Region>::create_in(&region, "t").unwrap();
    t.extend((0..500).map(|i| (i, i * 3)));
    let mut pairs: Vec<(u64, u64)> = t.into_iter().collect();
    pairs.sort_unstable();
    assert_eq!(pairs, (0..500).map(|i| (i, i * 3)).collect::<Vec<_>>());
    let t = SwissTable::<u64, u64, &Region>::open_in(&region, "t").unwrap();
    assert_eq!(t.repair_report(), None, "closed cleanly");
    assert_eq!(t.len(), 500);
    let mut keys: Vec<u64> = t.into_keys().collect();
    keys.sort_unstable();
    assert_eq!(keys, (0..500).collect::<Vec<_>>());
    // An unnamed table's blocks go back when its owning iterator is dropped half way.
    let before = region.stats().allocations;
    let mut u = SwissTable::<u64, u64, &Region>::new_in(&region);
    u.extend((0..500).map(|i| (i, i)));
    let mut it = u.into_values();
    assert_eq!(it.len(), 500);
    it.next();
    assert_eq!(it.len(), 499);
    drop(it);
    assert_eq!(region.stats().allocations, before);
}
