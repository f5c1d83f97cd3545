//! offheap-slab against its peers, in the same run:
//!
//! * `alloc_dec_ref/{64,1024}`: `Arena::alloc` + `Arena::dec_ref` (go-slab's `Alloc`+`DecRef`)
//!   vs `Box<[u8]>` allocation and drop (the global allocator, glibc malloc+free; the box is
//!   left uninitialized like an arena chunk, and passed through `black_box`) vs the `slab`
//!   crate's `insert` + `remove` of a `[u8; N]` value (the crate stores values inline, so a
//!   byte array is its closest analogue of a chunk; it copies the N bytes in and out, which is
//!   part of its cost for that use).
//! * `add_ref_dec_ref`: `Arena::add_ref` + `Arena::dec_ref` on a live chunk vs `Rc` clone + drop.
//! * `chain_256x4k`: allocate 256 chunks of 4 KiB, link them head to tail with `set_next`
//!   (dropping each chunk's own reference so the chain owns it), then release the head, which
//!   frees the whole chain; vs pushing 256 `Box<[u8]>` of 4 KiB into a `Vec` and dropping it.
//!
//! Run: `cargo bench -p offheap-benches --features slab --bench slab`
//! (`-- --quick` or `--measurement-time` for a shorter run).

use std::hint::black_box;
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use offheap_slab::{Arena, Config, ReleasePolicy};

/// go-slab's README parameters: 48-byte first class, 1 MiB slabs, growth factor 2; the default
/// release policy (`Never`, as go-slab).
fn arena() -> Arena {
    Arena::new(48, 1 << 20, 2.0).expect("valid parameters")
}

/// `Box::<[u8]>::new_uninit_slice(len)` (stable only since 1.82; the MSRV is 1.80): one malloc,
/// no initialization, like an arena chunk.
#[inline]
fn uninit_box(len: usize) -> Box<[MaybeUninit<u8>]> {
    let mut v = Vec::<MaybeUninit<u8>>::with_capacity(len);
    // SAFETY: `MaybeUninit<u8>` needs no initialization and the capacity is `len`.
    unsafe { v.set_len(len) };
    v.into_boxed_slice()
}

fn alloc_dec_ref(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_dec_ref");
    g.throughput(Throughput::Elements(1));
    for len in [64usize, 1024] {
        let mut a = arena();
        // Warm the class: its first slab exists, as in any steady state.
        let h = a.alloc(len).unwrap();
        a.dec_ref(h).unwrap();
        g.bench_with_input(BenchmarkId::new("offheap_slab", len), &len, |b, &len| {
            b.iter(|| {
                let h = a.alloc(black_box(len)).unwrap();
                black_box(a.dec_ref(black_box(h)).unwrap())
            })
        });
        g.bench_with_input(BenchmarkId::new("box_malloc_free", len), &len, |b, &len| {
            b.iter(|| {
                drop(black_box(uninit_box(black_box(len))));
            })
        });
        if len == 64 {
            let mut s = slab::Slab::<[u8; 64]>::with_capacity(16);
            g.bench_function(BenchmarkId::new("slab_crate", len), |b| {
                b.iter(|| {
                    let k = s.insert(black_box([0u8; 64]));
                    black_box(s.remove(black_box(k)))
                })
            });
        } else {
            let mut s = slab::Slab::<[u8; 1024]>::with_capacity(16);
            g.bench_function(BenchmarkId::new("slab_crate", len), |b| {
                b.iter(|| {
                    let k = s.insert(black_box([0u8; 1024]));
                    black_box(s.remove(black_box(k))[0])
                })
            });
        }
    }
    g.finish();
}

fn add_ref_dec_ref(c: &mut Criterion) {
    let mut g = c.benchmark_group("add_ref_dec_ref");
    g.throughput(Throughput::Elements(1));
    let mut a = arena();
    let h = a.alloc(64).unwrap();
    g.bench_function("offheap_slab", |b| {
        b.iter(|| {
            a.add_ref(black_box(h)).unwrap();
            black_box(a.dec_ref(black_box(h)).unwrap())
        })
    });
    let rc: Rc<[u8]> = Rc::from(vec![0u8; 64]);
    g.bench_function("rc_clone_drop", |b| {
        b.iter(|| drop(black_box(Rc::clone(black_box(&rc)))))
    });
    g.finish();
}

fn chain(c: &mut Criterion) {
    const N: usize = 256;
    const LEN: usize = 4096;
    let mut g = c.benchmark_group("chain_256x4k");
    g.throughput(Throughput::Elements(N as u64));
    let mut a = arena();
    let build_release = |a: &mut Arena| {
        let head = a.alloc(LEN).unwrap();
        let mut tail = head;
        for _ in 1..N {
            let c = a.alloc(LEN).unwrap();
            a.set_next(tail, Some(c)).unwrap();
            a.dec_ref(c).unwrap();
            tail = c;
        }
        black_box(a.dec_ref(black_box(head)).unwrap())
    };
    build_release(&mut a); // warm: the class's slabs exist
    g.bench_function("offheap_slab", |b| b.iter(|| build_release(&mut a)));
    // The same with slabs given back to the source: 256 chunks of this class need two slabs,
    // and keeping one empty slab means the second goes back to the allocator on every release
    // (the price of a policy that returns memory, on a workload oscillating across a slab).
    let mut keep1 = Arena::with_config(Config {
        release: ReleasePolicy::KeepEmpty(1),
        ..Config::new(48, 1 << 20, 2.0)
    })
    .unwrap();
    build_release(&mut keep1);
    g.bench_function("offheap_slab_keep_empty_1", |b| {
        b.iter(|| build_release(&mut keep1))
    });
    g.bench_function("vec_of_box", |b| {
        b.iter(|| {
            let mut v: Vec<Box<[MaybeUninit<u8>]>> = Vec::with_capacity(N);
            for _ in 0..N {
                v.push(uninit_box(black_box(LEN)));
            }
            drop(black_box(v));
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = alloc_dec_ref, add_ref_dec_ref, chain
}
criterion_main!(benches);
