//! A small driver for instruction-count profiling (callgrind) of the hot paths against
//! hashbrown with the same xxh3 hash, u64 -> u64:
//!
//! ```text
//! cargo build --release -p offheap-swiss --example ops_profile
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect=ops_profile::measured \
//!     target/release/examples/ops_profile <ours|hb|hbseg> <insert|hit|miss|remove|many> <n>
//! ```
//!
//! Only `measured_*` (the timed phase) is counted; divide the instruction count by `n`.
//!
//! `upd` adds 1 to the value of each present key through `get_mut`; `refill` removes every
//! key and then inserts them all again. An optional fourth
//! argument repeats the measured phase (for `insert`, the repeats update existing keys) and
//! prints the best repeat's CPU time. For `ours`, the environment variable `HUGE` gives the
//! table a region with huge pages, and `RESERVE` (both tables) reserves room for all `n`
//! keys before the measured phase, so that `insert` measures inserts without growth.
//! `SEGMENT_SLOTS` sets ours' segment size (default 4096).
//!
//! `ops_profile ratio <n> [--huge]` is a same-process A/B of ours against hashbrown, for
//! iterating on the hot paths without a full criterion run. Its rows, in ns per key (then
//! ours / hashbrown), are:
//! - insert `n` keys into an empty table (ours in one region reused by every table, as the
//!   criterion bench does);
//! - look up the `n` present keys;
//! - look up `n` absent keys;
//! - remove all `n` keys and insert them again (ours gives memory back as it empties and grows
//!   again; hashbrown keeps its capacity).
//!
//! Each row is the best of 7 timings of about 20M operations, in two rounds, so that a
//! disturbed round shows. `--huge` puts ours in a region with huge pages. `--hbseg` adds a
//! third table to each row, `hbseg` ([`SegHashbrown`]: hashbrown's own probe behind a
//! directory of hashbrown tables), with its time over hashbrown's: the cost of the directory
//! step alone. `hbseg` is also a table for the `<which>` argument.

mod common;

use common::{key, region_options, table_options};
use hashbrown::HashMap;
use offheap_mmap::Region;
use offheap_swiss::{SwissTable, TableMemory, TableOptions, Xxh3BuildHasher};
use offheap_testkit::{thread_cpu_ns, SegHashbrown};
use std::hint::black_box;
use std::time::Instant;

const SEED: u64 = 0x5EED;

trait Map {
    fn ins(&mut self, k: u64);
    fn get(&self, k: u64) -> u64;
    fn rm(&mut self, k: u64) -> u64;
    fn upd(&mut self, k: u64);
    /// Batched lookup (hashbrown: plain lookups).
    fn many(&self, keys: &[u64]) -> u64;
}

impl<M: TableMemory> Map for SwissTable<u64, u64, M> {
    #[inline(always)]
    fn upd(&mut self, k: u64) {
        if let Some(v) = self.get_mut(&k) {
            *v += 1;
        }
    }
    #[inline(always)]
    fn ins(&mut self, k: u64) {
        self.insert(k, k);
    }
    #[inline(always)]
    fn get(&self, k: u64) -> u64 {
        SwissTable::get(self, &k).copied().unwrap_or(0)
    }
    #[inline(always)]
    fn rm(&mut self, k: u64) -> u64 {
        self.remove(&k).unwrap_or(0)
    }
    fn many(&self, keys: &[u64]) -> u64 {
        let mut out = vec![None; 1024];
        let mut s = 0u64;
        for c in keys.chunks(1024) {
            s += self.get_many(c, &mut out[..c.len()]) as u64;
        }
        s
    }
}

impl Map for HashMap<u64, u64, Xxh3BuildHasher> {
    #[inline(always)]
    fn upd(&mut self, k: u64) {
        if let Some(v) = self.get_mut(&k) {
            *v += 1;
        }
    }
    #[inline(always)]
    fn ins(&mut self, k: u64) {
        self.insert(k, k);
    }
    #[inline(always)]
    fn get(&self, k: u64) -> u64 {
        HashMap::get(self, &k).copied().unwrap_or(0)
    }
    #[inline(always)]
    fn rm(&mut self, k: u64) -> u64 {
        self.remove(&k).unwrap_or(0)
    }
    fn many(&self, keys: &[u64]) -> u64 {
        keys.iter()
            .map(|&k| Map::get(self, k))
            .fold(0, u64::wrapping_add)
    }
}

/// hashbrown behind a directory ([`SegHashbrown`]): what a directory step costs hashbrown's
/// own probe, the floor for a table split into segments.
type HbSeg = SegHashbrown<Xxh3BuildHasher>;

impl Map for HbSeg {
    #[inline(always)]
    fn upd(&mut self, k: u64) {
        if let Some(v) = self.get_mut(k) {
            *v += 1;
        }
    }
    #[inline(always)]
    fn ins(&mut self, k: u64) {
        self.insert(k, k);
    }
    #[inline(always)]
    fn get(&self, k: u64) -> u64 {
        SegHashbrown::get(self, k).unwrap_or(0)
    }
    #[inline(always)]
    fn rm(&mut self, k: u64) -> u64 {
        self.remove(k).unwrap_or(0)
    }
    fn many(&self, keys: &[u64]) -> u64 {
        keys.iter()
            .map(|&k| Map::get(self, k))
            .fold(0, u64::wrapping_add)
    }
}

/// Removes every key, then inserts them all again; returns the removed values' sum.
#[inline(always)]
fn refill<T: Map>(t: &mut T, keys: &[u64]) -> u64 {
    let s = keys.iter().fold(0u64, |s, &k| s.wrapping_add(t.rm(k)));
    keys.iter().for_each(|&k| t.ins(k));
    s
}

#[inline(always)]
fn measured<T: Map>(t: &mut T, op: &str, keys: &[u64]) -> u64 {
    let mut s = 0u64;
    match op {
        "insert" => keys.iter().for_each(|&k| t.ins(k)),
        "hit" => keys.iter().for_each(|&k| s = s.wrapping_add(t.get(k))),
        "miss" => keys
            .iter()
            .for_each(|&k| s = s.wrapping_add(t.get(k ^ (1 << 40)))),
        "remove" => keys.iter().for_each(|&k| s = s.wrapping_add(t.rm(k))),
        "many" => s = t.many(keys),
        "upd" => keys.iter().for_each(|&k| t.upd(k)),
        "refill" => s = refill(t, keys),
        _ => panic!("op: insert|hit|miss|remove|many|upd|refill"),
    }
    s
}

// Two distinct symbols, so that callgrind's `--toggle-collect` can tell them apart.
#[inline(never)]
fn measured_ours(t: &mut SwissTable<u64, u64>, op: &str, keys: &[u64]) -> u64 {
    measured(t, op, keys)
}

#[inline(never)]
fn measured_hb(t: &mut HashMap<u64, u64, Xxh3BuildHasher>, op: &str, keys: &[u64]) -> u64 {
    measured(t, op, keys)
}

#[inline(never)]
fn measured_hbseg(t: &mut HbSeg, op: &str, keys: &[u64]) -> u64 {
    measured(t, op, keys)
}

fn setup<T: Map>(t: &mut T, op: &str, keys: &[u64]) {
    if op != "insert" {
        keys.iter().for_each(|&k| t.ins(k));
    }
}

/// Runs `measured` on `t` `reps` times; prints the wall time per operation and, for more
/// than one repeat, the best repeat's CPU time.
fn timed<T>(
    t: &mut T,
    measured: fn(&mut T, &str, &[u64]) -> u64,
    op: &str,
    keys: &[u64],
    reps: usize,
) {
    let n = keys.len() as u64;
    let t0 = std::time::Instant::now();
    let mut best = f64::MAX;
    for _ in 0..reps {
        let c1 = thread_cpu_ns();
        black_box(measured(t, op, keys));
        best = best.min((thread_cpu_ns() - c1) as f64 / n as f64);
    }
    report(t0, n, reps);
    if reps > 1 {
        println!("best of {reps}, CPU time: {best:.2} ns/op");
    }
}

/// Prints the measured phase's wall time per operation (noisy on a shared machine).
fn report(t0: std::time::Instant, n: u64, reps: usize) {
    let ns = t0.elapsed().as_nanos() as f64 / (n as f64 * reps as f64);
    println!("{ns:.2} ns/op");
}

/// Best of 7 timings of `reps` calls of `f`, in ns per key (`n` keys per call).
fn time(reps: usize, n: usize, mut f: impl FnMut()) -> f64 {
    (0..7)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..reps {
                f();
            }
            t0.elapsed().as_nanos() as f64 / (reps * n) as f64
        })
        .fold(f64::MAX, f64::min)
}

/// The `ratio` mode: a same-process A/B of every row, ours / hashbrown (see the module doc).
fn ratio(n: usize, huge: bool, with_seg: bool) {
    let reps = (20_000_000 / n).max(1);
    let keys: Vec<u64> = (0..n as u64).map(key).collect();
    let absent: Vec<u64> = (0..n as u64).map(|i| key(i + (1 << 40))).collect();

    let region = Region::anonymous_with(&offheap_swiss::default_region_options().huge_pages(huge))
        .expect("anonymous region");
    let ours = || -> SwissTable<u64, u64, &Region> {
        SwissTable::with_options_in(TableOptions::new().seed(SEED), &region).expect("table")
    };
    let theirs = || -> HashMap<u64, u64, Xxh3BuildHasher> {
        HashMap::with_hasher(Xxh3BuildHasher::with_seed(SEED))
    };
    let seg = || HbSeg::new(n, Xxh3BuildHasher::with_seed(SEED));
    let mut a = ours();
    let mut b = theirs();
    let mut c = seg();
    for &k in &keys {
        a.insert(k, k);
        b.insert(k, k);
        c.ins(k);
    }

    println!("n={n} ours/hashbrown, ns per key (ratio); ours with huge pages: {huge}");
    for round in 0..2 {
        let line: Vec<String> = ["insert", "hit", "miss", "remove+insert"]
            .iter()
            .map(|row| {
                let o = ratio_row(row, &mut a, &ours, &keys, &absent, reps);
                let t = ratio_row(row, &mut b, &theirs, &keys, &absent, reps);
                if !with_seg {
                    return format!("{row} {o:.2}/{t:.2} ({:.3})", o / t);
                }
                let g = ratio_row(row, &mut c, &seg, &keys, &absent, reps);
                format!(
                    "{row} {o:.2}/{t:.2} ({:.3}) hbseg {g:.2} ({:.3})",
                    o / t,
                    g / t
                )
            })
            .collect();
        println!("round {round}: {}", line.join("  "));
    }
}

/// One row of the `ratio` mode for one table, in ns per key: `full` holds `keys`, `make`
/// builds an empty table.
fn ratio_row<T: Map>(
    row: &str,
    full: &mut T,
    make: &dyn Fn() -> T,
    keys: &[u64],
    absent: &[u64],
    reps: usize,
) -> f64 {
    let n = keys.len();
    // Rows that rebuild their table each call run fewer calls (they are slower per key).
    let slow_reps = reps.min(2000);
    match row {
        "insert" => time(slow_reps, n, || {
            let mut t = make();
            keys.iter().for_each(|&k| t.ins(k));
            black_box(&t);
        }),
        "hit" => time(reps, n, || {
            black_box(keys.iter().fold(0u64, |s, &k| s ^ full.get(k)));
        }),
        "miss" => time(reps, n, || {
            black_box(absent.iter().fold(0u64, |s, &k| s ^ full.get(k)));
        }),
        _ => time(slow_reps, n, || {
            black_box(refill(full, keys));
        }),
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.get(1).map(String::as_str) == Some("ratio") {
        let n = a
            .get(2)
            .map_or(1000, |s| s.parse().expect("n: a number of keys"));
        return ratio(
            n,
            a.iter().any(|s| s == "--huge"),
            a.iter().any(|s| s == "--hbseg"),
        );
    }
    let (which, op) = (a[1].as_str(), a[2].as_str());
    let n: u64 = a[3].parse().expect("n");
    // Optional: repeat the measured phase (hit/miss only), for `perf stat`.
    let reps: usize = a.get(4).map_or(1, |r| r.parse().expect("reps"));
    let keys: Vec<u64> = (0..n).map(key).collect();
    match which {
        "worst" => {
            // The slowest single inserts while growing to n keys (wall clock), with the
            // directory depth before and after.
            let mut t = SwissTable::<u64, u64>::new();
            let mut worst: Vec<(u128, usize, u32, u32)> = Vec::new();
            let mut hist = [0u32; 8]; // inserts over 10, 20, 40, ... 1280 us
                                      // Depth as of the last slow insert (a directory doubling is always slow).
            let mut depth = 0;
            for (i, &k) in keys.iter().enumerate() {
                let t0 = std::time::Instant::now();
                t.insert(k, k);
                let ns = t0.elapsed().as_nanos();
                for (b, c) in hist.iter_mut().enumerate() {
                    *c += u32::from(ns > 10_000 << b);
                }
                if ns > 100_000 {
                    let d = t.stats().global_depth;
                    worst.push((ns, i, depth, d));
                    depth = d;
                }
            }
            worst.sort_unstable_by(|a, b| b.cmp(a));
            let slow = worst.iter().filter(|w| w.0 > 300_000).count();
            println!("inserts over 100 us: {}, over 300 us: {slow}", worst.len());
            println!("inserts over 10, 20, 40, ..., 1280 us: {hist:?}");
            for w in worst.iter().take(12) {
                println!(
                    "{:8.1} us at len {:>9} depth {} -> {}",
                    w.0 as f64 / 1e3,
                    w.1,
                    w.2,
                    w.3
                );
            }
        }
        "ours" => {
            let mut t = SwissTable::<u64, u64>::with_options_in(
                table_options(SEED),
                offheap_mmap::Region::anonymous_with(&region_options().release_threshold(
                    std::env::var("RT").map_or(1 << 20, |v| v.parse().unwrap()),
                ))
                .unwrap(),
            )
            .unwrap();
            setup(&mut t, op, &keys);
            if std::env::var_os("RESERVE").is_some() {
                t.reserve(keys.len());
            }
            timed(&mut t, measured_ours, op, &keys, reps);
            let st = t.stats();
            println!(
                "segments {} global depth {} (directory mirror {} KiB)",
                st.segments,
                st.global_depth,
                (16u64 << st.global_depth) / 1024
            );
            black_box(&t);
        }
        "hb" => {
            let mut t = HashMap::with_hasher(Xxh3BuildHasher::with_seed(SEED));
            setup(&mut t, op, &keys);
            if std::env::var_os("RESERVE").is_some() {
                t.reserve(keys.len());
            }
            timed(&mut t, measured_hb, op, &keys, reps);
            black_box(&t);
        }
        "hbseg" => {
            let mut t = HbSeg::new(n as usize, Xxh3BuildHasher::with_seed(SEED));
            setup(&mut t, op, &keys);
            timed(&mut t, measured_hbseg, op, &keys, reps);
            println!("hashbrown tables {}", t.tables());
            black_box(&t);
        }
        _ => panic!("ours|hb|hbseg"),
    }
}
