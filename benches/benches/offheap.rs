//! The offheap facade against its peers, in the same run and the same criterion groups:
//!
//! * `map_u64/{insert,lookup_hit}/N`: `offheap::Map<u64, u64>` (anonymous region) vs
//!   hashbrown `HashMap<u64, u64>` with the same xxh3 hasher.
//! * `bytes/{insert,lookup_hit}/N`: `offheap::BytesMap` vs `std::HashMap<Vec<u8>, Vec<u8>>`,
//!   16-byte keys and 32-byte values (records and values in the arena), and 4-byte keys and
//!   values (inline in the slot).
//!
//! Throughput is per key; ratio = offheap / peer.
//! Run: `cargo bench -p offheap-benches --features offheap --bench offheap`

use std::collections::HashMap as StdMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hashbrown::HashMap;
use offheap::swiss::Xxh3BuildHasher;
use offheap::{BytesMap, Map};

fn key(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const N: u64 = 100_000;

fn map_u64(c: &mut Criterion) {
    let keys: Vec<u64> = (0..N).map(key).collect();
    let mut g = c.benchmark_group("map_u64");
    g.throughput(Throughput::Elements(N));
    g.bench_with_input(BenchmarkId::new("insert/offheap", N), &keys, |b, keys| {
        b.iter(|| {
            let mut m: Map<u64, u64> = Map::anonymous().unwrap();
            for &k in keys {
                m.insert(k, k).unwrap();
            }
            m
        })
    });
    g.bench_with_input(BenchmarkId::new("insert/hashbrown", N), &keys, |b, keys| {
        b.iter(|| {
            let mut m = HashMap::with_hasher(Xxh3BuildHasher::with_seed(1));
            for &k in keys {
                m.insert(k, k);
            }
            m
        })
    });
    let mut ours: Map<u64, u64> = Map::anonymous().unwrap();
    let mut theirs = HashMap::with_hasher(Xxh3BuildHasher::with_seed(1));
    for &k in &keys {
        ours.insert(k, k).unwrap();
        theirs.insert(k, k);
    }
    g.bench_with_input(
        BenchmarkId::new("lookup_hit/offheap", N),
        &keys,
        |b, keys| {
            b.iter(|| {
                keys.iter()
                    .map(|k| ours.get(k).unwrap())
                    .fold(0, u64::wrapping_add)
            })
        },
    );
    g.bench_with_input(
        BenchmarkId::new("lookup_hit/hashbrown", N),
        &keys,
        |b, keys| b.iter(|| keys.iter().map(|k| theirs[k]).fold(0, u64::wrapping_add)),
    );
    g.finish();
}

fn bytes(c: &mut Criterion) {
    for (klen, vlen) in [(4usize, 4usize), (16, 32)] {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..N)
            .map(|i| {
                let k = key(i).to_le_bytes().repeat(klen.div_ceil(8))[..klen].to_vec();
                (k, vec![i as u8; vlen])
            })
            .collect();
        let mut g = c.benchmark_group(format!("bytes_k{klen}_v{vlen}"));
        g.throughput(Throughput::Elements(N));
        g.bench_with_input(BenchmarkId::new("insert/offheap", N), &pairs, |b, pairs| {
            b.iter(|| {
                let mut m = BytesMap::anonymous().unwrap();
                for (k, v) in pairs {
                    m.put(k, v).unwrap();
                }
                m
            })
        });
        g.bench_with_input(BenchmarkId::new("insert/std", N), &pairs, |b, pairs| {
            b.iter(|| {
                let mut m: StdMap<Vec<u8>, Vec<u8>> = StdMap::new();
                for (k, v) in pairs {
                    m.insert(k.clone(), v.clone());
                }
                m
            })
        });
        let mut ours = BytesMap::anonymous().unwrap();
        let mut theirs: StdMap<Vec<u8>, Vec<u8>> = StdMap::new();
        for (k, v) in &pairs {
            ours.put(k, v).unwrap();
            theirs.insert(k.clone(), v.clone());
        }
        g.bench_with_input(
            BenchmarkId::new("lookup_hit/offheap", N),
            &pairs,
            |b, pairs| {
                b.iter(|| {
                    pairs
                        .iter()
                        .map(|(k, _)| ours.get_with(k, |v| v[0] as u64).unwrap().unwrap())
                        .fold(0, u64::wrapping_add)
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("lookup_hit/std", N), &pairs, |b, pairs| {
            b.iter(|| {
                pairs
                    .iter()
                    .map(|(k, _)| theirs[k][0] as u64)
                    .fold(0, u64::wrapping_add)
            })
        });
        g.finish();
        black_box(&ours);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10);
    targets = map_u64, bytes
}
criterion_main!(benches);
