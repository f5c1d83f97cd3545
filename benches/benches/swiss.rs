//! offheap-swiss against hashbrown, u64 -> u64, both hashing with the same xxh3 (hashbrown
//! through `offheap_swiss::Xxh3BuildHasher`, which gives `xxh3_64_with_seed(key bytes, seed)`,
//! exactly the table's own hash), in the same run and the same criterion groups:
//!
//! * `insert_empty/{1000,1000000}`: insert N distinct random keys into an empty table
//!   (no `with_capacity`: growth is part of the cost).
//! * `lookup_hit/N`, `lookup_miss/N`: look up N present / N absent keys in a table of N.
//! * `lookup_hit/1000000` and `lookup_miss/1000000` also time `hashbrown_seg`
//!   (`offheap_testkit::SegHashbrown`): hashbrown's own probe behind a directory of 256
//!   hashbrown tables, found as ours finds a segment. Its time over hashbrown's is what the
//!   directory step alone costs; no table split into segments can do better than that step
//!   allows, so it is the floor for ours' ratio on these rows.
//! * `remove/N`: remove all N keys from a full table (setup not timed).
//! * `get_many/N` (ours only; compare with `lookup_hit/N`): batched lookup of the N present
//!   keys, 1024 at a time.
//! * `reopen/N`: ours (`offheap_file`) maps a region file holding a table of N keys and
//!   opens the table (`Region::open` + `SwissTable::open_in`, whose checks read every
//!   segment's header); hashbrown, which cannot live in a file, reads a file of the N
//!   key-value pairs and inserts them into a map sized for them, which is what a program
//!   without a persistent table does at start-up. Both files are in `/dev/shm` where there
//!   is one (else the temporary directory), so neither waits for a disk. Time per reopen.
//!
//! Ours runs twice per row: `offheap` in a region with `RegionOptions::huge_pages(true)`
//! and `offheap_4k` in one with 4 KiB pages (the default of `SwissTable::new`).
//!
//! Throughput is per key, so criterion reports ns per operation; ratio = offheap / hashbrown.
//! Run: `cargo bench -p offheap-benches --features swiss --bench swiss`
//! (the 50M-key rows are `--bench swiss_big`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use hashbrown::HashMap;
use offheap_mmap::Region;
use offheap_swiss::{SwissTable, TableOptions, Xxh3BuildHasher};
use offheap_testkit::SegHashbrown;

const SEED: u64 = 0x5EED;

/// splitmix64: a bijection, so `key(i)` are distinct for distinct `i`.
fn key(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

type Ours = SwissTable<u64, u64, &'static Region>;
type Theirs = HashMap<u64, u64, Xxh3BuildHasher>;

/// One region for all tables of the run (as an application keeps its region), so a table
/// built in an iteration reuses the blocks the previous one freed, as hashbrown reuses what
/// malloc kept. (A fresh region per table would add its first page faults to every insert
/// row.) Options are those of `SwissTable::new` (4 KiB pages: the `offheap_4k` rows), or
/// with `huge_pages(true)` for the `offheap` rows.
fn region(huge: bool) -> &'static Region {
    // Region is Send but not Sync; the benchmark is single-threaded, so lend it from a
    // thread-local leak instead of a shared static.
    fn leak(huge: bool) -> &'static Region {
        let opts = offheap_swiss::default_region_options().huge_pages(huge);
        Box::leak(Box::new(Region::anonymous_with(&opts).unwrap()))
    }
    thread_local! {
        static HUGE: &'static Region = leak(true);
        static SMALL: &'static Region = leak(false);
    }
    if huge {
        HUGE.with(|r| *r)
    } else {
        SMALL.with(|r| *r)
    }
}

fn ours_in(huge: bool) -> Ours {
    SwissTable::with_options_in(TableOptions::new().seed(SEED), region(huge)).unwrap()
}

/// Ours in both regions: (benchmark name, huge pages).
const OURS: [(&str, bool); 2] = [("offheap", true), ("offheap_4k", false)];

fn theirs() -> Theirs {
    HashMap::with_hasher(Xxh3BuildHasher::with_seed(SEED))
}

fn build_ours(keys: &[u64], huge: bool) -> Ours {
    let mut t = ours_in(huge);
    for &k in keys {
        t.insert(k, k);
    }
    t
}

fn build_theirs(keys: &[u64]) -> Theirs {
    let mut t = theirs();
    for &k in keys {
        t.insert(k, k);
    }
    t
}

fn sizes() -> [usize; 2] {
    [1_000, 1_000_000]
}

fn insert_empty(c: &mut Criterion) {
    let mut g = c.benchmark_group("insert_empty");
    for n in sizes() {
        let keys: Vec<u64> = (0..n as u64).map(key).collect();
        g.throughput(Throughput::Elements(n as u64));
        if n > 10_000 {
            g.sample_size(10);
        }
        for (name, huge) in OURS {
            g.bench_with_input(BenchmarkId::new(name, n), &keys, |b, keys| {
                b.iter_batched(
                    || ours_in(huge),
                    |mut t| {
                        for &k in keys {
                            t.insert(k, k);
                        }
                        t
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        g.bench_with_input(BenchmarkId::new("hashbrown", n), &keys, |b, keys| {
            b.iter_batched(
                theirs,
                |mut t| {
                    for &k in keys {
                        t.insert(k, k);
                    }
                    t
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn lookups(c: &mut Criterion) {
    for (name, offset) in [("lookup_hit", 0u64), ("lookup_miss", 1u64 << 40)] {
        let mut g = c.benchmark_group(name);
        for n in sizes() {
            let keys: Vec<u64> = (0..n as u64).map(key).collect();
            let probe: Vec<u64> = (0..n as u64).map(|i| key(i + offset)).collect();
            let a = build_ours(&keys, true);
            let a4 = build_ours(&keys, false);
            let b = build_theirs(&keys);
            g.throughput(Throughput::Elements(n as u64));
            if n > 10_000 {
                g.sample_size(20);
            }
            for (t, (name, _)) in [&a, &a4].into_iter().zip(OURS) {
                g.bench_function(BenchmarkId::new(name, n), |bch| {
                    bch.iter(|| {
                        let mut s = 0u64;
                        for k in &probe {
                            if let Some(v) = t.get(k) {
                                s = s.wrapping_add(*v);
                            }
                        }
                        black_box(s)
                    })
                });
            }
            g.bench_function(BenchmarkId::new("hashbrown", n), |bch| {
                bch.iter(|| {
                    let mut s = 0u64;
                    for k in &probe {
                        if let Some(v) = b.get(k) {
                            s = s.wrapping_add(*v);
                        }
                    }
                    black_box(s)
                })
            });
            if n > 10_000 {
                let mut sb = SegHashbrown::new(n, Xxh3BuildHasher::with_seed(SEED));
                for &k in &keys {
                    sb.insert(k, k);
                }
                g.bench_function(BenchmarkId::new("hashbrown_seg", n), |bch| {
                    bch.iter(|| {
                        let mut s = 0u64;
                        for &k in &probe {
                            if let Some(v) = sb.get(k) {
                                s = s.wrapping_add(v);
                            }
                        }
                        black_box(s)
                    })
                });
            }
            if offset == 0 {
                let mut out = vec![None; 1024];
                g.bench_function(BenchmarkId::new("offheap_get_many", n), |bch| {
                    bch.iter(|| {
                        let mut found = 0;
                        for chunk in probe.chunks(1024) {
                            found += a.get_many(chunk, &mut out[..chunk.len()]);
                        }
                        black_box(found)
                    })
                });
            }
        }
        g.finish();
    }
}

fn remove(c: &mut Criterion) {
    let mut g = c.benchmark_group("remove");
    for n in sizes() {
        let keys: Vec<u64> = (0..n as u64).map(key).collect();
        g.throughput(Throughput::Elements(n as u64));
        if n > 10_000 {
            g.sample_size(10);
        }
        for (name, huge) in OURS {
            g.bench_with_input(BenchmarkId::new(name, n), &keys, |b, keys| {
                b.iter_batched(
                    || build_ours(keys, huge),
                    |mut t| {
                        for k in keys {
                            black_box(t.remove(k));
                        }
                        t
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        g.bench_with_input(BenchmarkId::new("hashbrown", n), &keys, |b, keys| {
            b.iter_batched(
                || build_theirs(keys),
                |mut t| {
                    for k in keys {
                        black_box(t.remove(k));
                    }
                    t
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn reopen(c: &mut Criterion) {
    let mut g = c.benchmark_group("reopen");
    let dir = offheap_testkit::scratch_dir();
    for n in sizes() {
        let table = dir.path().join(format!("table-{n}.region"));
        let pairs = dir.path().join(format!("pairs-{n}"));
        {
            let region = Region::create(&table, &offheap_mmap::RegionOptions::new()).unwrap();
            let mut t: SwissTable<u64, u64, &Region> =
                SwissTable::create_in_with(&region, "kv", TableOptions::new().seed(SEED)).unwrap();
            let mut bytes = Vec::with_capacity(16 * n);
            for i in 0..n as u64 {
                t.insert(key(i), i);
                bytes.extend_from_slice(&key(i).to_le_bytes());
                bytes.extend_from_slice(&i.to_le_bytes());
            }
            std::fs::write(&pairs, bytes).unwrap();
        }
        if n > 10_000 {
            g.sample_size(20);
        }
        g.bench_with_input(BenchmarkId::new("offheap_file", n), &table, |b, path| {
            b.iter(|| {
                let region = Region::open(path).unwrap();
                let t: SwissTable<u64, u64, &Region> = SwissTable::open_in(&region, "kv").unwrap();
                assert_eq!(t.len(), n);
                black_box(t.get(&key(0)).copied())
            })
        });
        g.bench_with_input(BenchmarkId::new("hashbrown", n), &pairs, |b, path| {
            b.iter(|| {
                let bytes = std::fs::read(path).unwrap();
                let mut t: Theirs =
                    HashMap::with_capacity_and_hasher(n, Xxh3BuildHasher::with_seed(SEED));
                for p in bytes.chunks_exact(16) {
                    let k = u64::from_le_bytes(p[..8].try_into().unwrap());
                    t.insert(k, u64::from_le_bytes(p[8..].try_into().unwrap()));
                }
                assert_eq!(t.len(), n);
                black_box(t.get(&key(0)).copied())
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = insert_empty, lookups, remove, reopen
}
criterion_main!(benches);
