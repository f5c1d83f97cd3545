//! Operations decoded from the fuzzer's bytes run on an offheap `BytesMap` and on a std
//! HashMap; every answer must agree. Short and long keys, inline, single-chunk and chained
//! values, and (with `collide`) long keys whose hashes all collide.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use offheap::{BytesMap, BytesMapOptions};
use std::collections::HashMap;

#[derive(Arbitrary, Debug)]
enum Op {
    Insert(Vec<u8>, u16, u8),
    Put(Vec<u8>, u16, u8),
    Remove(Vec<u8>),
    Delete(Vec<u8>),
    Get(Vec<u8>),
    Iter,
    Clear,
}

#[derive(Arbitrary, Debug)]
struct Input {
    collide: bool,
    slab_shift: u8,
    ops: Vec<Op>,
}

fn value(len: u16, fill: u8) -> Vec<u8> {
    (0..len as usize % 3000)
        .map(|i| fill.wrapping_add(i as u8))
        .collect()
}

fuzz_target!(|input: Input| {
    let mut opts = BytesMapOptions::new().slab_size(64 << (input.slab_shift % 8));
    if input.collide {
        opts = opts.hash_mask(0);
    }
    let mut m = BytesMap::anonymous_with(&opts).unwrap();
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for op in input.ops.into_iter().take(500) {
        match op {
            Op::Insert(k, n, f) => {
                let v = value(n, f);
                assert_eq!(m.insert(&k, &v).unwrap(), model.insert(k, v));
            }
            Op::Put(k, n, f) => {
                let v = value(n, f);
                assert_eq!(m.put(&k, &v).unwrap(), model.insert(k, v).is_some());
            }
            Op::Remove(k) => assert_eq!(m.remove(&k).unwrap(), model.remove(&k)),
            Op::Delete(k) => assert_eq!(m.delete(&k).unwrap(), model.remove(&k).is_some()),
            Op::Get(k) => assert_eq!(m.get(&k).unwrap().as_ref(), model.get(&k)),
            Op::Iter => {
                let got: HashMap<Vec<u8>, Vec<u8>> = m.iter().collect::<Result<_, _>>().unwrap();
                assert_eq!(got, model);
            }
            Op::Clear => {
                m.clear().unwrap();
                model.clear();
            }
        }
        assert_eq!(m.len(), model.len());
    }
    m.check().unwrap();
});
