//! A SharedMap file is untrusted input: this target mutates a valid map file (byte flips and
//! word overwrites anywhere, truncation), then opens it, runs `check`, reads every pair and
//! some keys (one at a time and in a batch), and writes a few (one at a time and in
//! batches). Every step must give a typed error or an answer; a panic, a
//! crash or a hang is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use common::{image_seed, mixed_key as key, mutate_anywhere, open_image, seed_file, Input};
use offheap::mmap::RegionOptions;
use offheap::{SharedMap, SharedMapOptions};
use std::sync::OnceLock;

const SHARDS: usize = 4;

fn value(i: u32) -> Vec<u8> {
    vec![i as u8; (i as usize * 37) % 300]
}

/// A valid map file image: short and long keys and values, with some removed.
fn valid_image() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        seed_file("seed.map", |path| {
            let opts = SharedMapOptions::new()
                .seed(image_seed())
                .shards(SHARDS)
                .slab_size(4096)
                .region(RegionOptions::new().initial_size(64 << 10));
            let m = SharedMap::create_with(path, &opts).expect("create seed map");
            for i in 0..200 {
                m.put(&key(i), &value(i)).unwrap();
            }
            for i in (0..200).step_by(5) {
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
    let opened = open_image(&img, "case.map", |p| SharedMap::open(p));
    let Ok(m) = opened else { return };
    let _ = m.check();
    let _ = (m.len(), m.capacity(), m.region_stats(), m.unnamed_blocks());
    let _ = m.to_vec();
    let _ = m.for_each(|k, v| {
        std::hint::black_box((k.len(), v.len()));
    });
    for i in 0..200 {
        let _ = m.get(&key(i));
    }
    // The batched lookup too: it reads (and prefetches through) every shard's table word
    // before taking the shard's lock.
    let keys: Vec<Vec<u8>> = (0..200).map(key).collect();
    let _ = m.get_many_with(&keys, |i, v| {
        std::hint::black_box((i, v.map(<[u8]>::len)));
    });
    while let Some(op) = input.byte() {
        let i = u32::from(op);
        let _ = match op % 8 {
            0 => m.put(&key(i), &value(i)).map(drop),
            1 => m.delete(&key(i)).map(drop),
            2 => {
                let pairs: Vec<_> = (i..i + 8).map(|j| (key(j), value(j))).collect();
                m.put_many(&pairs).map(drop)
            }
            3 => m.delete_many(&keys[(i as usize % 192)..][..8]).map(drop),
            // The forms that hand back the value they replace or remove.
            4 => m.insert(&key(i), &value(i + 1)).map(drop),
            5 => m.remove(&key(i)).map(drop),
            6 => m.contains_key(&key(i)).map(drop),
            _ => m.get(&key(i)).map(drop),
        };
    }
    let _ = m.check();
    let _ = (m.len(), m.unnamed_blocks());
});
