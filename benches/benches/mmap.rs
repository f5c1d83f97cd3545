//! offheap-mmap against its peers, in the same run:
//!
//! * `alloc_free_mixed`: the region's block allocator vs glibc `malloc`/`free` on the same
//!   pre-generated workload: a ring of 4096 live blocks, each step frees the oldest and
//!   allocates a new one of a mixed size (mostly 16..=512 bytes, some up to 4 KiB, a few
//!   up to 64 KiB).
//! * `open`: `Region::open` + drop of a 4 GiB sparse file and of a 64 KiB file (goal: at
//!   most 100 µs and independent of the size).
//! * `arena_alloc_dec_ref`: offheap-slab's `alloc` + `dec_ref` with the arena in an
//!   anonymous region and in a file region vs the arena on the heap (`HeapSource`)
//!   (goal: within 10%).
//!
//! Run: `cargo bench -p offheap-benches --features mmap --bench mmap`
//! (`-- --quick` for a short run).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use offheap_mmap::{Offset, Region, RegionOptions};
use offheap_slab::{Arena, Config, HeapSource, SlabSource};

const RING: usize = 4096;
const STEPS: usize = 1 << 16;

/// Deterministic mixed sizes.
fn sizes() -> Vec<usize> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..STEPS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 100 {
                0..=84 => 16 + (x >> 8) as usize % 497,
                85..=98 => 512 + (x >> 8) as usize % 3585,
                _ => 4096 + (x >> 8) as usize % 61441,
            }
        })
        .collect()
}

fn alloc_free_mixed(c: &mut Criterion) {
    let sizes = sizes();
    let mut g = c.benchmark_group("mmap/alloc_free_mixed");
    g.throughput(Throughput::Elements(STEPS as u64));
    for (name, threshold) in [("region", None), ("region_no_giveback", Some(u64::MAX))] {
        g.bench_function(name, |b| {
            let mut opts = RegionOptions::new();
            if let Some(t) = threshold {
                opts = opts.release_threshold(t);
            }
            let r = Region::anonymous_with(&opts).unwrap();
            let mut ring: Vec<Option<Offset>> = vec![None; RING];
            b.iter(|| {
                for (i, &s) in sizes.iter().enumerate() {
                    let slot = &mut ring[i % RING];
                    if let Some(o) = slot.take() {
                        r.free(o).unwrap();
                    }
                    *slot = Some(black_box(r.alloc(s as u64, 8).unwrap()));
                }
            });
            for o in ring.into_iter().flatten() {
                r.free(o).unwrap();
            }
        });
    }
    g.bench_function("glibc_malloc", |b| {
        let mut ring: Vec<*mut libc::c_void> = vec![std::ptr::null_mut(); RING];
        b.iter(|| {
            for (i, &s) in sizes.iter().enumerate() {
                let slot = &mut ring[i % RING];
                // SAFETY: the slot holds null or a live malloc'd pointer.
                unsafe {
                    libc::free(*slot);
                    *slot = black_box(libc::malloc(s));
                }
            }
        });
        for p in ring {
            // SAFETY: null or live.
            unsafe { libc::free(p) };
        }
    });
    g.finish();
}

fn open(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("mmap/open");
    for (name, size) in [("64KiB", 64u64 << 10), ("4GiB", 4 << 30)] {
        let path = dir.path().join(format!("{name}.region"));
        {
            let r = Region::create(&path, &RegionOptions::new().initial_size(size)).unwrap();
            let o = r.alloc(100, 8).unwrap();
            r.set_root("root", Some(o)).unwrap();
        }
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let r = Region::open(&path).unwrap();
                black_box(r.root("root"));
            })
        });
    }
    g.finish();
}

fn config() -> Config {
    Config::new(48, 1 << 20, 2.0)
}

fn bench_arena<S: SlabSource>(b: &mut criterion::Bencher<'_>, source: S, len: usize) {
    let mut arena = Arena::create_in(source, config()).unwrap();
    // Warm the class so steady state reuses chunks.
    let h = arena.alloc(len).unwrap();
    arena.dec_ref(h).unwrap();
    b.iter(|| {
        let h = arena.alloc(black_box(len)).unwrap();
        black_box(arena.dec_ref(h).unwrap());
    });
}

fn arena_alloc_dec_ref(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("mmap/arena_alloc_dec_ref");
    for len in [64usize, 1024] {
        g.bench_function(BenchmarkId::new("heap", len), |b| {
            bench_arena(b, HeapSource::default(), len)
        });
        g.bench_function(BenchmarkId::new("anon_region", len), |b| {
            bench_arena(b, Region::anonymous().unwrap(), len)
        });
        g.bench_function(BenchmarkId::new("file_region", len), |b| {
            let path = dir.path().join(format!("arena-{len}.region"));
            let _ = std::fs::remove_file(&path);
            bench_arena(
                b,
                Region::create(&path, &RegionOptions::new()).unwrap(),
                len,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = alloc_free_mixed, open, arena_alloc_dec_ref
}
criterion_main!(benches);
