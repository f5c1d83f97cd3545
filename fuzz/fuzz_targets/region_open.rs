//! Mutates a valid region file (byte flips, word overwrites, truncation, optionally a
//! resealed header checksum), then opens it (half the time with `open_torn`, followed by
//! `recover`), runs `check`, and a few allocations and frees (some through `alloc_into`
//! and `free_recorded`, whose intent a mutated header may also hold). Opening must give a
//! typed error or a usable region; any panic or crash is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::{flip, open_image, overwrite_word, seed_file, truncate, Input};
use offheap_mmap::{Offset, Region, RegionOptions};
use std::sync::OnceLock;

/// A valid region file image with allocations, free blocks and roots.
fn valid_image() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        seed_file("seed.region", |path| {
            let opts = RegionOptions::new().initial_size(64 << 10);
            let r = Region::create(path, &opts).expect("create seed region");
            let mut offs = Vec::new();
            for i in 0..64u64 {
                let o = r.alloc(1 + i * 97 % 1500, 1 << (i % 6)).unwrap();
                offs.push(o);
            }
            for o in offs.iter().step_by(3) {
                r.free(*o).unwrap();
            }
            r.set_root("first", Some(offs[1])).unwrap();
            r.set_root("second", Some(offs[2])).unwrap();
            r.flush().unwrap();
        })
        .1
    })
}

fuzz_target!(|data: &[u8]| {
    let mut img = valid_image().to_vec();
    let mut input = Input(data);
    let mut reseal = false;
    // Mutations until a 0xFF separator or the end of the input.
    while let Some(kind) = input.byte() {
        let more = match kind % 8 {
            0 => flip(&mut img, &mut input),
            // An aligned word in the header (fields, bins, roots).
            1 | 2 => overwrite_word(&mut img, &mut input, Some(4096)),
            // An aligned word anywhere (block headers, links).
            3 | 4 => overwrite_word(&mut img, &mut input, None),
            5 => truncate(&mut img, &mut input),
            6 => {
                reseal = true;
                Some(())
            }
            _ => None,
        };
        if more.is_none() {
            break;
        }
    }
    if reseal {
        offheap_mmap::__fuzz::reseal(&mut img);
    }
    // Half the cases accept torn allocator bookkeeping and run `recover` on whatever the
    // mutations left (the path a SharedMap takes over a file nobody repaired).
    let torn = input.byte().is_some_and(|b| b & 1 == 1);
    let opts = RegionOptions::new().max_size(256 << 20).open_torn(torn);
    let opened = open_image(&img, "case.region", |p| Region::open_with(p, &opts));
    if let Ok(r) = opened {
        if torn {
            let _ = r.recover();
        }
        let _ = r.check();
        let _ = r.stats();
        let _ = r.roots();
        let mut live: Vec<Offset> = Vec::new();
        // A record block for `alloc_into` and `free_recorded` (a word at 0 or 8 in it).
        let record = r.alloc(16, 8).ok();
        for _ in 0..16 {
            let Some(op) = input.byte() else { break };
            let into = record.filter(|_| op & 0x80 != 0);
            let at = u64::from(op >> 6 & 1) * 8;
            if op & 1 == 0 || live.is_empty() {
                let size = u64::from(input.u32().unwrap_or(64)) % (1 << 20);
                let align = 1 << (op >> 1) % 13;
                let got = match into {
                    Some(rec) => r.alloc_into(size, align, rec, at, 0),
                    None => r.alloc(size, align),
                };
                if let Ok(o) = got {
                    let _ = r.allocation_size(o);
                    if let Ok(p) = r.ptr(o, size) {
                        // SAFETY: a live allocation of `size` bytes.
                        unsafe { p.as_ptr().write_bytes(op, size as usize) };
                    }
                    live.push(o);
                }
            } else {
                let o = live.swap_remove(op as usize % live.len());
                let _ = match into {
                    Some(rec) => r.free_recorded(o, rec, at),
                    None => r.free(o),
                };
            }
        }
        for name in ["first", "second"] {
            if let Some(o) = r.root(name) {
                let _ = r.allocation_size(o);
                let _ = r.free(o);
                let _ = r.ptr(o, 16);
            }
        }
        // Roots written over whatever the header's slots hold, and pages faulted in ahead.
        if let Some(&o) = live.first() {
            let _ = r.set_root("third", Some(o));
            let _ = r.set_root("first", None);
        }
        let _ = r.prefault(1 << 16);
        let _ = r.check();
    }
});
