//! A swiss table file is untrusted input: this target mutates a region file holding a
//! `SwissTable<u64, u64>` (byte flips and word overwrites anywhere, and, more often, targeted
//! ones in the table's header, its directory, its segment headers and control bytes; small
//! counters, in one segment or in all, nudged offsets, copied directory words; truncation;
//! optionally resealed table and region checksums), then opens the region (which must pass
//! its own `check`) and the table. Opening must give a typed error or a table on which
//! lookups, iteration, inserts (enough to split), removes (enough to merge), `shrink_to_fit`,
//! `retain`, `get_many` and a reopen all run; a panic, a crash, a hang or an out-of-bounds
//! access is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::{flip, open_image, overwrite_word, seed_file, truncate, Input};
use offheap_mmap::{Region, RegionOptions};
use offheap_swiss::{Entry, SwissTable, TableOptions};
use std::hint::black_box;
use std::sync::OnceLock;

/// Keys `0..KEYS` were inserted into the seed table at some point (some removed since).
const KEYS: u64 = 1800;
/// Bytes of the table header; offsets of its checksummed fields' end and of its checksum.
const HDR_LEN: usize = 112;
const HDR_SUMMED: usize = 48;
/// Bytes of a segment header (followed by the control bytes) and of a `u64 -> u64` slot.
const SEG_HEADER: usize = 64;
const SLOT: usize = 16;
const EMPTY: u8 = 0xFF;
const DELETED: u8 = 0x80;

type T<'r> = SwissTable<u64, u64, &'r Region>;

/// The seed image and where the table's parts lie in it.
struct Seed {
    img: Vec<u8>,
    /// Offset of the table header.
    hdr: usize,
    /// Offset of the stored directory and its number of entries.
    dir: usize,
    dir_len: usize,
    /// Each segment: offset of its header (its control bytes follow) and its slot count.
    segs: Vec<(usize, usize)>,
}

fn rd(img: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(img[at..at + 8].try_into().unwrap())
}

fn value(k: u64) -> u64 {
    k.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A table of 32-slot segments at directory depth 6 with segments of mixed depth and size,
/// tombstones, and blocks freed by merges and rebuilds.
fn seed() -> &'static Seed {
    static SEED: OnceLock<Seed> = OnceLock::new();
    SEED.get_or_init(|| {
        let (hdr, img) = seed_file("seed.swiss", |path| {
            let opts = RegionOptions::new().initial_size(64 << 10);
            let region = Region::create(path, &opts).expect("create seed region");
            let topts = TableOptions::new().segment_slots(32).seed(7);
            let mut t: SwissTable<u64, u64, Region> =
                SwissTable::create_in_with(region, "t", topts).expect("create seed table");
            for k in 0..1200 {
                t.insert(k, value(k));
            }
            // Nearly empty: buddies merge and the directory halves.
            for k in 40..1200 {
                t.remove(&k);
            }
            for k in 1200..KEYS {
                t.insert(k, value(k));
            }
            // Tombstones in full groups.
            for k in (1200..KEYS).step_by(3) {
                t.remove(&k);
            }
            for k in (0..40).step_by(5) {
                t.remove(&k);
            }
            let stats = t.stats();
            assert!(stats.global_depth >= 2 && stats.segments >= 8 && stats.tombstones > 0);
            let hdr = t.memory().root("t").expect("root").get() as usize;
            t.memory().flush().unwrap();
            hdr
        });
        // The directory word: its handle, and the global depth in the top 8 bits.
        let gd = (rd(&img, hdr + 72) >> 56) as u32;
        let dir = (rd(&img, hdr + 72) & ((1 << 56) - 1)) as usize;
        let dir_len = 1usize << gd;
        let mut segs = Vec::new();
        for j in 0..dir_len {
            let w = rd(&img, dir + 8 * j);
            let slots = 16usize << (w >> 56);
            let at = (w & ((1 << 56) - 1)) as usize + slots * SLOT;
            assert_eq!(&img[at..at + 4], b"SwSg", "segment header where expected");
            if !segs.contains(&(at, slots)) {
                segs.push((at, slots));
            }
        }
        Seed {
            img,
            hdr,
            dir,
            dir_len,
            segs,
        }
    })
}

/// An area of the table picked by `sel`: the header, the directory, or a segment's header
/// and control bytes, as (offset, length).
fn area(s: &Seed, sel: u8) -> (usize, usize) {
    match sel % 4 {
        0 => (s.hdr, HDR_LEN),
        1 => (s.dir, s.dir_len * 8),
        _ => {
            let (at, slots) = s.segs[usize::from(sel / 4) % s.segs.len()];
            (at, SEG_HEADER + slots)
        }
    }
}

/// A control byte: mostly `EMPTY`, `DELETED` or a tag, sometimes any byte.
fn ctrl(b: u8) -> u8 {
    match b % 4 {
        0 => EMPTY,
        1 => DELETED,
        2 => (b >> 2) & 0x7F,
        _ => b,
    }
}

fn write(img: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(d) = img.get_mut(at..at + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}

/// Applies one targeted mutation of kind `kind`. `None` when the input has run out.
fn mutate(img: &mut Vec<u8>, s: &Seed, kind: u8, input: &mut Input<'_>) -> Option<()> {
    match kind {
        0 => flip(img, input),
        1 => overwrite_word(img, input, None),
        2 => truncate(img, input),
        // A byte of the header, directory or a segment.
        3 => {
            let (start, len) = area(s, input.byte()?);
            let (at, x) = (input.u32()? as usize % len, input.byte()?);
            if let Some(b) = img.get_mut(start + at) {
                *b ^= x;
            }
            Some(())
        }
        // An aligned word of an area (all areas start 8-aligned).
        4 => {
            let (start, len) = area(s, input.byte()?);
            let (at, v) = (input.u32()? as usize % len & !7, input.u64()?);
            write(img, start + at, &v.to_le_bytes());
            Some(())
        }
        // A small value (a counter, a depth, a group count) as an aligned u32 or u64.
        5 => {
            let (start, len) = area(s, input.byte()?);
            let (at, v) = (input.u32()? as usize % len, input.byte()?);
            if at & 1 == 0 {
                write(img, start + (at & !7), &u64::from(v).to_le_bytes());
            } else {
                write(img, start + (at & !3), &u32::from(v).to_le_bytes());
            }
            Some(())
        }
        // Nudges an aligned word (an offset, a length) by a small signed amount.
        6 => {
            let (start, len) = area(s, input.byte()?);
            let at = start + (input.u32()? as usize % len & !7);
            let (d, sh) = (input.byte()? as i8 as i64, input.byte()? % 16);
            if at + 8 <= img.len() {
                let v = rd(img, at).wrapping_add((d << sh) as u64);
                write(img, at, &v.to_le_bytes());
            }
            Some(())
        }
        // One control byte of a segment.
        7 => {
            let (at, slots) = s.segs[input.byte()? as usize % s.segs.len()];
            let (i, c) = (input.u32()? as usize % slots, ctrl(input.byte()?));
            write(img, at + SEG_HEADER + i, &[c]);
            Some(())
        }
        // A run of control bytes of a segment (fills or empties it behind its counters).
        8 => {
            let (at, slots) = s.segs[input.byte()? as usize % s.segs.len()];
            let (i, n, c) = (
                input.byte()? as usize % slots,
                input.byte()? as usize,
                ctrl(input.byte()?),
            );
            for j in i..(i + n).min(slots) {
                write(img, at + SEG_HEADER + j, &[c]);
            }
            Some(())
        }
        // One directory entry copied over another.
        9 => {
            let (from, to) = (
                input.u32()? as usize % s.dir_len,
                input.u32()? as usize % s.dir_len,
            );
            if s.dir + 8 * s.dir_len <= img.len() {
                let w = rd(img, s.dir + 8 * from);
                write(img, s.dir + 8 * to, &w.to_le_bytes());
            }
            Some(())
        }
        // One field of every segment header at once (counters that disagree everywhere).
        10 => {
            let (at, v) = (usize::from(input.byte()? % 16) * 4, input.byte()?);
            for &(seg, _) in &s.segs {
                write(img, seg + at, &u32::from(v).to_le_bytes());
            }
            Some(())
        }
        _ => None,
    }
}

/// Recomputes the table header's checksum, so that mutations of its checked fields (the
/// segment size, the types, the seed) reach the checks after it.
fn reseal_table(img: &mut [u8], hdr: usize) {
    if hdr + HDR_SUMMED + 8 <= img.len() {
        let sum = xxhash_rust::xxh3::xxh3_64(&img[hdr..hdr + HDR_SUMMED]);
        write(img, hdr + HDR_SUMMED, &sum.to_le_bytes());
    }
}

/// Reads and changes the table; whatever it answers is fine, as long as it answers.
fn exercise(t: &mut T<'_>, input: &mut Input<'_>) {
    black_box((t.len(), t.is_empty(), t.stats(), t.capacity()));
    for (k, v) in t.iter() {
        black_box((k, v));
    }
    for k in 0..KEYS + 64 {
        black_box(t.get(&k));
    }
    // Operations chosen by the rest of the input.
    for _ in 0..32 {
        let Some(op) = input.byte() else { break };
        let k = u64::from(input.byte().unwrap_or(0)) * 7 + u64::from(op >> 4);
        match op % 11 {
            0 => {
                let _ = t.try_insert(k, !k);
            }
            1 => {
                black_box(t.remove(&k));
            }
            2 => {
                if let Entry::Occupied(mut e) = t.entry(k) {
                    if k & 1 == 0 {
                        // Values are `!k` (0 gives u64::MAX) or anything a mutated file
                        // holds: wrapping, so that the harness's own arithmetic never panics.
                        let v = e.get_mut();
                        *v = v.wrapping_add(1);
                    } else {
                        black_box(e.remove_entry());
                    }
                }
            }
            // Inserts that split segments (and double the directory).
            3 => {
                for j in 0..128 {
                    if t.try_insert(KEYS + k * 128 + j, j).is_err() {
                        break;
                    }
                }
            }
            // Removes that merge segments (and halve the directory).
            4 => {
                for j in 0..KEYS {
                    black_box(t.remove(&j));
                }
            }
            5 => t.shrink_to_fit(),
            // Writes through the mutable iterators (values are anything a mutated file holds:
            // wrapping arithmetic).
            8 => {
                for (key, v) in t.iter_mut() {
                    *v = v.wrapping_add(*key);
                }
                black_box(t.values_mut().count());
            }
            // A drain stopped early: its drop empties the table (rare: a kept byte picks it).
            9 if k % 4 == 0 => {
                black_box(t.drain().take(usize::from(op >> 4)).count());
            }
            9 => t.clear(),
            6 => t.retain(|key, v| {
                *v ^= 1;
                key % (k + 2) != 0
            }),
            _ => {
                let _ = t.try_reserve(k as usize * 4);
            }
        }
    }
    // The fixed part: removes, a shrink (merges), inserts enough to split, removes and a
    // shrink again, lookups.
    for k in (0..KEYS).step_by(2) {
        black_box(t.remove(&k));
    }
    t.shrink_to_fit();
    for k in KEYS..KEYS + 300 {
        if t.try_insert(k, value(k)).is_err() {
            break;
        }
    }
    for k in (1..KEYS + 300).step_by(2) {
        black_box(t.remove(&k));
    }
    t.shrink_to_fit();
    let keys: Vec<u64> = (0..KEYS + 64).collect();
    let mut out = vec![None; keys.len()];
    black_box(t.get_many(&keys, &mut out));
    black_box(t.iter().collect::<Vec<_>>());
    black_box((t.len(), t.keys().count(), t.values().count()));
    // std's traits over a table whatever it holds: formatting and comparing iterate it and
    // look every key up again. Then a bulk insert (`try_extend`: `extend` panics, as
    // `insert` does, when the memory cannot supply a segment).
    black_box(format!("{t:?}").len());
    black_box(*t == *t);
    let _ = t.try_extend((0..64u64).map(|k| (k * 31, k)));
    for k in 0..64u64 {
        black_box((t.get_key_value(&(k * 31)), t.contains_key(&k)));
        black_box(t.remove_entry(&(k * 17)));
    }
}

fuzz_target!(|data: &[u8]| {
    let s = seed();
    let mut img = s.img.clone();
    let mut input = Input(data);
    let (mut reseal_tbl, mut reseal_region) = (false, false);
    // Mutations until a separator byte or the end of the input.
    while let Some(kind) = input.byte() {
        let more = match kind % 16 {
            k @ 0..=10 => mutate(&mut img, s, k, &mut input),
            11 => {
                reseal_tbl = true;
                Some(())
            }
            12 => {
                reseal_region = true;
                Some(())
            }
            _ => None,
        };
        if more.is_none() {
            break;
        }
    }
    if reseal_tbl {
        reseal_table(&mut img, s.hdr);
    }
    if reseal_region {
        offheap_mmap::__fuzz::reseal(&mut img);
    }
    let opts = RegionOptions::new().max_size(256 << 20);
    let opened = open_image(&img, "case.swiss", |p| Region::open_with(p, &opts));
    let Ok(region) = opened else { return };
    // No `region.check()` first: a program opens its table without one. The allocator's
    // O(1) checks (a free block's size against the next block's boundary tag, when it is
    // handed out or merged; every block whose free-list links it writes is free) keep a
    // corrupt free list from writing into live segments.
    match T::open_in(&region, "t") {
        Ok(mut t) => {
            // The deep check must give a verdict on any file, never a panic.
            let _ = black_box(t.check().map_err(|e| e.to_string()));
            exercise(&mut t, &mut input);
            drop(t);
        }
        Err(e) => {
            black_box(e.to_string());
            return;
        }
    }
    // What the table wrote back (its length, its moves) must open or be refused too.
    if let Ok(t) = T::open_in(&region, "t") {
        black_box((t.len(), t.iter().count()));
        for k in 0..64 {
            black_box(t.get(&k));
        }
        // The consuming iterator, which closes the table as `drop` does.
        black_box(t.into_iter().count());
    }
    let _ = region.check();
});
