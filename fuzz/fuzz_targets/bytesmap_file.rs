//! A BytesMap file is untrusted input: this target mutates a valid map file (byte flips and
//! word overwrites anywhere, truncation), then opens it, runs `check`, reads every pair (by
//! the iterator and by `for_each`) and some keys, and writes, removes and clears. Every step
//! must give a typed error or an answer; a panic, a crash or a hang is a bug. (A `Map`
//! file is a swiss table in a region, the surface of `swiss_file`; a BytesMap adds its
//! slab arena of keys and values, and records that point into it.)
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::{image_seed, mixed_key as key, mutate_anywhere, open_image, seed_file, Input};
use offheap::mmap::RegionOptions;
use offheap::{BytesMap, BytesMapOptions};
use std::sync::OnceLock;

fn value(i: u32) -> Vec<u8> {
    // Empty, inline, one-chunk and chained values.
    vec![i as u8; (i as usize * 53) % 700]
}

/// A valid map file image: short and long keys, values of every kind, some removed.
fn valid_image() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        seed_file("seed.bytesmap", |path| {
            let opts = BytesMapOptions::new()
                .seed(image_seed())
                .slab_size(4096)
                .region(RegionOptions::new().initial_size(64 << 10));
            let mut m = BytesMap::create_with(path, &opts).expect("create seed map");
            for i in 0..150 {
                m.put(&key(i), &value(i)).unwrap();
            }
            for i in (0..150).step_by(4) {
                m.delete(&key(i)).unwrap();
            }
            m.flush().unwrap();
        })
        .1
    })
}

fuzz_target!(|data: &[u8]| {
    let mut img = valid_image().to_vec();
    let mut input = Input(data);
    // Mutations until a separator byte or the end of the input.
    mutate_anywhere(&mut img, &mut input);
    let opened = open_image(&img, "case.bytesmap", |p| BytesMap::open(p));
    let Ok(mut m) = opened else { return };
    let _ = m.check();
    let _ = m.len();
    for pair in m.iter() {
        if let Ok((k, v)) = pair {
            std::hint::black_box((k.len(), v.len()));
        }
    }
    let _ = m.for_each(|k, v| {
        std::hint::black_box((k.len(), v.len()));
    });
    for i in 0..150 {
        let _ = m.get(&key(i));
        let _ = m.contains_key(&key(i));
    }
    while let Some(op) = input.byte() {
        let i = u32::from(op);
        let _ = match op % 6 {
            0 => m.put(&key(i), &value(i)).map(drop),
            1 => m.insert(&key(i), &value(i)).map(drop),
            2 => m.delete(&key(i)).map(drop),
            3 => m.remove(&key(i)).map(drop),
            4 => m.get(&key(i)).map(drop),
            _ => {
                m.shrink_to_fit();
                Ok(())
            }
        };
    }
    let _ = m.check();
    let _ = m.clear();
    let _ = m.check();
});
