//! SharedMap's batched operations (`put_many`, `get_many_with`, `delete_many`) against a
//! std model and against the one-key operations, and used by threads at once.

use std::collections::HashMap;

use offheap::{Error, SharedMap, SharedMapOptions};
use proptest::prelude::*;

mod common;
use common::{cases, max_ops};

#[derive(Clone, Debug)]
enum Op {
    PutMany(Vec<(Vec<u8>, Vec<u8>)>),
    GetMany(Vec<Vec<u8>>),
    DeleteMany(Vec<Vec<u8>>),
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Short (inline) and long (arena) keys from small alphabets, so batches repeat keys.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(0u8..4, 0..8),
        proptest::collection::vec(0u8..3, 8..20),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..13),
        proptest::collection::vec(any::<u8>(), 13..300),
    ]
}

/// Keys in one generated batch (few under miri, which is slow).
fn batch_len() -> std::ops::Range<usize> {
    if cfg!(miri) {
        0..8
    } else {
        0..40
    }
}

/// Cases of the model test: `cases(32)`, and only two under miri (each case creates maps).
fn batch_cases() -> u32 {
    if cfg!(miri) {
        cases(32).min(2)
    } else {
        cases(32)
    }
}

fn op() -> impl Strategy<Value = Op> {
    let keys = || proptest::collection::vec(key(), batch_len());
    prop_oneof![
        4 => proptest::collection::vec((key(), value()), batch_len()).prop_map(Op::PutMany),
        3 => keys().prop_map(Op::GetMany),
        2 => keys().prop_map(Op::DeleteMany),
        1 => (key(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => key().prop_map(Op::Delete),
    ]
}

/// Every key of `keys` looked up in one batch: each index reported exactly once.
fn get_many(m: &SharedMap, keys: &[Vec<u8>]) -> Vec<Option<Vec<u8>>> {
    let mut got: Vec<Option<Option<Vec<u8>>>> = vec![None; keys.len()];
    m.get_many_with(keys, |i, v| {
        assert!(got[i].is_none(), "index {i} reported twice");
        got[i] = Some(v.map(<[u8]>::to_vec));
    })
    .unwrap();
    got.into_iter()
        .enumerate()
        .map(|(i, g)| g.unwrap_or_else(|| panic!("index {i} never reported")))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(batch_cases()))]

    /// The batched operations have the effect of the one-key operations applied in order
    /// (the last of several puts of one key wins; a delete counts each present key once).
    #[test]
    fn batches_match_std(
        ops in proptest::collection::vec(op(), 1..max_ops() / 4 + 2),
        shards in prop_oneof![Just(1usize), Just(4), Just(if cfg!(miri) { 8 } else { 64 })],
        collide in any::<bool>(),
    ) {
        let mut opts = SharedMapOptions::new().shards(shards).slab_size(128);
        if collide {
            opts = opts.hash_mask(0);
        }
        let m = SharedMap::anonymous_with(&opts).unwrap();
        let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for op in ops {
            match op {
                Op::PutMany(pairs) => {
                    let mut replaced = 0;
                    for (k, v) in &pairs {
                        replaced += usize::from(model.insert(k.clone(), v.clone()).is_some());
                    }
                    prop_assert_eq!(m.put_many(&pairs).unwrap(), replaced);
                }
                Op::GetMany(keys) => {
                    let want: Vec<_> = keys.iter().map(|k| model.get(k).cloned()).collect();
                    prop_assert_eq!(get_many(&m, &keys), want);
                }
                Op::DeleteMany(keys) => {
                    let removed = keys.iter().filter(|k| model.remove(*k).is_some()).count();
                    prop_assert_eq!(m.delete_many(&keys).unwrap(), removed);
                }
                Op::Put(k, v) => prop_assert_eq!(m.put(&k, &v).unwrap(), model.insert(k, v).is_some()),
                Op::Delete(k) => prop_assert_eq!(m.delete(&k).unwrap(), model.remove(&k).is_some()),
            }
            prop_assert_eq!(m.len(), model.len());
        }
        let got: HashMap<Vec<u8>, Vec<u8>> = m.to_vec().unwrap().into_iter().collect();
        prop_assert_eq!(got, model);
        m.check().unwrap();
    }
}

#[test]
fn empty_batches_do_nothing() {
    let m = SharedMap::anonymous_with(&SharedMapOptions::new().shards(4)).unwrap();
    let none: [&[u8]; 0] = [];
    assert_eq!(m.put_many::<&[u8], &[u8]>(&[]).unwrap(), 0);
    assert_eq!(m.delete_many(&none).unwrap(), 0);
    m.get_many_with(&none, |_, _| panic!("called for an empty batch"))
        .unwrap();
    assert!(m.is_empty());
}

#[test]
#[cfg_attr(miri, ignore)] // a 4 GiB allocation
fn a_too_long_value_fails_the_batch_before_any_write() {
    let m = SharedMap::anonymous_with(&SharedMapOptions::new().shards(4)).unwrap();
    // Zeroed by the allocator lazily (calloc maps fresh pages): only its length is read.
    let long = vec![0u8; offheap::MAX_LEN + 1];
    let pairs: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"b", &long), (b"c", b"3")];
    match m.put_many(&pairs) {
        Err(Error::TooLong(n)) => assert_eq!(n, offheap::MAX_LEN + 1),
        other => panic!("expected TooLong, got {other:?}"),
    }
    assert!(m.is_empty(), "a pair before the long one was written");
}

#[test]
fn big_batches_across_rebuilds_and_file_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("batch.map");
    let n = if cfg!(miri) { 100u32 } else { 60_000 };
    let key = |i: u32| i.to_le_bytes();
    {
        let m = if cfg!(miri) {
            SharedMap::anonymous_with(&SharedMapOptions::new().shards(4)).unwrap()
        } else {
            SharedMap::create(&path).unwrap()
        };
        let pairs: Vec<([u8; 4], [u8; 8])> = (0..n)
            .map(|i| (key(i), u64::from(i).to_le_bytes()))
            .collect();
        // Batches of several sizes, so tables grow (rebuild) in the middle of a batch.
        let mut at = 0;
        for size in [1usize, 7, 256, 4096].iter().cycle() {
            if at == pairs.len() {
                break;
            }
            let end = (at + size).min(pairs.len());
            assert_eq!(m.put_many(&pairs[at..end]).unwrap(), 0);
            at = end;
        }
        assert_eq!(m.len(), n as usize);
        let keys: Vec<[u8; 4]> = (0..n + 100).map(key).collect();
        let mut found = 0;
        m.get_many_with(&keys, |i, v| match v {
            Some(v) => {
                assert_eq!(v, u64::from(u32::from_le_bytes(keys[i])).to_le_bytes());
                found += 1;
            }
            None => assert!(i >= n as usize, "key {i} missing"),
        })
        .unwrap();
        assert_eq!(found, n);
        let odd: Vec<[u8; 4]> = (0..n).filter(|i| i % 2 == 1).map(key).collect();
        assert_eq!(m.delete_many(&odd).unwrap(), odd.len());
        m.check().unwrap();
        m.flush().unwrap();
        if cfg!(miri) {
            return;
        }
    }
    let m = SharedMap::open(&path).unwrap();
    assert_eq!(m.len(), (n as usize).div_ceil(2));
    for i in (0..n).step_by(997) {
        let want = (i % 2 == 0).then(|| u64::from(i).to_le_bytes().to_vec());
        assert_eq!(m.get(&key(i)).unwrap(), want);
    }
}

#[test]
fn threads_batch_on_one_map() {
    let m =
        SharedMap::anonymous_with(&SharedMapOptions::new().shards(if cfg!(miri) { 4 } else { 16 }))
            .unwrap();
    let per = if cfg!(miri) { 20u32 } else { 20_000 };
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let m = &m;
            s.spawn(move || {
                let keys: Vec<[u8; 8]> = (0..per)
                    .map(|i| (u64::from(t) << 32 | u64::from(i)).to_le_bytes())
                    .collect();
                for chunk in keys.chunks(if cfg!(miri) { 8 } else { 500 }) {
                    let pairs: Vec<_> = chunk.iter().map(|k| (*k, *k)).collect();
                    m.put_many(&pairs).unwrap();
                    let mut seen = 0;
                    m.get_many_with(chunk, |i, v| {
                        assert_eq!(v, Some(&chunk[i][..]));
                        seen += 1;
                    })
                    .unwrap();
                    assert_eq!(seen, chunk.len());
                }
                let evens: Vec<_> = keys.iter().step_by(2).copied().collect();
                assert_eq!(m.delete_many(&evens).unwrap(), evens.len());
            });
        }
    });
    assert_eq!(m.len(), 4 * (per as usize / 2));
    m.check().unwrap();
}
