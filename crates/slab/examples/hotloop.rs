//! The hot loops of the criterion benchmarks, without criterion, for instruction counting:
//!
//! ```text
//! cargo build --release -p offheap-slab --example hotloop
//! valgrind --tool=callgrind target/release/examples/hotloop pair 1000000
//! ```
//!
//! Modes: `pair` (alloc + dec_ref of 64 B), `pair1k` (1 KiB), `addref` (add_ref + dec_ref),
//! `chain` (build and release a chain of 256 × 4 KiB), `pairfn` / `addreffn` (the same
//! through `#[inline(never)]` functions, whose code `objdump -d` shows), `box` (`Box<[u8]>` malloc + free of
//! 64 B), `none` (set-up only, to subtract). Compare `N` and `2N` iterations to cancel
//! start-up costs.

use std::hint::black_box;

use offheap_slab::Arena;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "pair".into());
    let n: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let mut a = Arena::new(48, 1 << 20, 2.0).expect("valid parameters");
    // Warm: the classes used below have their first slab.
    for len in [64, 1024, 4096] {
        let h = a.alloc(len).unwrap();
        a.dec_ref(h).unwrap();
    }
    let keep = a.alloc(64).unwrap();
    let mut acc = 0u64;
    match mode.as_str() {
        "pair" | "pair1k" => {
            let len = if mode == "pair" { 64 } else { 1024 };
            for _ in 0..n {
                let h = a.alloc(black_box(len)).unwrap();
                acc += a.dec_ref(black_box(h)).unwrap() as u64;
            }
        }
        "addref" => {
            for _ in 0..n {
                a.add_ref(black_box(keep)).unwrap();
                acc += a.dec_ref(black_box(keep)).unwrap() as u64;
            }
        }
        "chain" => {
            for _ in 0..n {
                let head = a.alloc(4096).unwrap();
                let mut tail = head;
                for _ in 1..256 {
                    let c = a.alloc(black_box(4096)).unwrap();
                    a.set_next(tail, Some(c)).unwrap();
                    a.dec_ref(c).unwrap();
                    tail = c;
                }
                acc += a.dec_ref(black_box(head)).unwrap() as u64;
            }
        }
        "pairfn" => {
            for _ in 0..n {
                acc += pair_once(&mut a, black_box(64)) as u64;
            }
        }
        "addreffn" => {
            for _ in 0..n {
                acc += addref_once(&mut a, black_box(keep)) as u64;
            }
        }
        "box" => {
            for _ in 0..n {
                let v: Box<[u8]> = Vec::with_capacity(black_box(64)).into_boxed_slice();
                acc += black_box(v).len() as u64;
            }
        }
        _ => {}
    }
    println!("{mode} {n} {acc}");
}

/// One alloc + dec_ref (a function of its own, to read its code with `objdump`).
#[inline(never)]
pub fn pair_once(a: &mut Arena, len: usize) -> bool {
    let h = a.alloc(len).unwrap();
    a.dec_ref(h).unwrap()
}
/// One add_ref + dec_ref (likewise).
#[inline(never)]
pub fn addref_once(a: &mut Arena, h: offheap_slab::Handle) -> bool {
    a.add_ref(h).unwrap();
    a.dec_ref(h).unwrap()
}
