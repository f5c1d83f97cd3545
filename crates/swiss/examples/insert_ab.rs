//! Reserved inserts, ours against hashbrown in one process, alternating: the A/B used for the
//! counter changes in docs/swiss-log.md ("Fewer counters per insert").
//!
//! ```text
//! cargo build --release -p offheap-swiss --example insert_ab
//! taskset -c 1 target/release/examples/insert_ab <n> [rounds]
//! ```
//!
//! Both tables have room reserved for all `n` keys, so no insert grows them. Each round clears
//! both and inserts the same `n` keys into each, ours first, timing each table's loop (the
//! insert is inlined into it). Prints the minimum and median ns per insert over the rounds
//! (the first round, which takes the page faults, is left out), and their ratios. The minimum
//! is the figure least disturbed by the host; the two tables alternate so that a slow phase
//! of the host hits both. `HUGE` gives ours huge pages; `SEGMENT_SLOTS` sets its segment size.

mod common;

use common::{key, region_options, table_options};
use hashbrown::HashMap;
use offheap_swiss::{SwissTable, Xxh3BuildHasher};
use std::hint::black_box;
use std::time::Instant;

#[inline(never)]
fn insert_ours(t: &mut SwissTable<u64, u64, offheap_mmap::Region>, keys: &[u64]) {
    for &k in keys {
        t.insert(k, k);
    }
}

#[inline(never)]
fn insert_hb(t: &mut HashMap<u64, u64, Xxh3BuildHasher>, keys: &[u64]) {
    for &k in keys {
        t.insert(k, k);
    }
}

/// (minimum, median).
fn min_median(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: insert_ab <n> [rounds]";
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).expect(usage);
    let rounds: usize = args.get(2).map_or(10, |s| s.parse().expect(usage));
    let keys: Vec<u64> = (0..n as u64).map(key).collect();
    let region = offheap_mmap::Region::anonymous_with(&region_options()).expect("anonymous region");
    let mut ours =
        SwissTable::<u64, u64, _>::with_options_in(table_options(5), region).expect("table");
    ours.reserve(n);
    let mut hb = HashMap::with_capacity_and_hasher(n, Xxh3BuildHasher::with_seed(5));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        ours.clear();
        let t0 = Instant::now();
        insert_ours(&mut ours, &keys);
        let x = t0.elapsed().as_nanos() as f64 / n as f64;
        hb.clear();
        let t0 = Instant::now();
        insert_hb(&mut hb, &keys);
        let y = t0.elapsed().as_nanos() as f64 / n as f64;
        if round > 0 {
            a.push(x);
            b.push(y);
        }
    }
    black_box((&ours, &hb));
    let (am, amed) = min_median(&mut a);
    let (bm, bmed) = min_median(&mut b);
    println!(
        "n {n}: ours min {am:.1} median {amed:.1} | hashbrown min {bm:.1} median {bmed:.1} ns per insert | ratio min {:.2} median {:.2}",
        am / bm,
        amed / bmed
    );
}
