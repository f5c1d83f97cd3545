//! Inserts into a table with room reserved for every key, so that no insert grows it: the
//! per-insert cost of the hot path alone, against hashbrown with the same xxh3 hash.
//!
//! ```text
//! cargo build --release -p offheap-swiss --example reinsert
//! target/release/examples/reinsert <ours|hb> <n>
//! ```
//!
//! Three rounds, each inserting the same `n` keys into the table and then clearing it (both
//! tables keep their memory on `clear`). Round 0 also pays the first touch of the table's
//! pages (the page-fault count is printed); rounds 1 and 2 do not. The insert is called through
//! a closure, so the compiler inlines it into the loop (unlike `ops_profile`, whose measured
//! loop calls it). For `ours`, the environment variable `HUGE` gives the table a region with
//! huge pages, and `SEGMENT_SLOTS` sets the segment size (default 4096).

mod common;

use common::{key, region_options, table_options};
use hashbrown::HashMap;
use offheap_swiss::{SwissTable, Xxh3BuildHasher};
use std::cell::RefCell;
use std::hint::black_box;
use std::time::Instant;

/// This process's minor page faults so far (0 if /proc is unreadable).
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()?
                .split_whitespace()
                .nth(7)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn rounds(name: &str, keys: &[u64], ins: &mut dyn FnMut(u64), clear: &mut dyn FnMut()) {
    for round in 0..3 {
        let f0 = minor_faults();
        let t0 = Instant::now();
        keys.iter().for_each(|&k| ins(k));
        let ns = t0.elapsed().as_nanos() as f64 / keys.len() as f64;
        let faults = minor_faults() - f0;
        println!("{name} round {round}: {ns:.1} ns/insert, {faults} page faults");
        clear();
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let usage = "usage: reinsert <ours|hb> <n>";
    let n: usize = a.get(2).and_then(|s| s.parse().ok()).expect(usage);
    let keys: Vec<u64> = (0..n as u64).map(key).collect();
    match a[1].as_str() {
        "ours" => {
            let region =
                offheap_mmap::Region::anonymous_with(&region_options()).expect("anonymous region");
            let t = RefCell::new(
                SwissTable::<u64, u64, _>::with_options_in(table_options(5), region).unwrap(),
            );
            t.borrow_mut().reserve(n);
            let mut ins = |k| {
                t.borrow_mut().insert(k, k);
            };
            rounds("ours", &keys, &mut ins, &mut || t.borrow_mut().clear());
            black_box(&t);
        }
        "hb" => {
            let t = RefCell::new(HashMap::with_capacity_and_hasher(
                n,
                Xxh3BuildHasher::with_seed(5),
            ));
            let mut ins = |k| {
                t.borrow_mut().insert(k, k);
            };
            rounds("hb", &keys, &mut ins, &mut || t.borrow_mut().clear());
            black_box(&t);
        }
        _ => panic!("{usage}"),
    }
}
