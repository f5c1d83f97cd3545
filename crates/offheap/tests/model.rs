//! Property tests of `Map` and `BytesMap` against `std::collections::HashMap`, including
//! reopening from a file.

use std::collections::HashMap;

use offheap::{BytesMap, BytesMapOptions, Map};
use proptest::prelude::*;

mod common;
use common::{cases, max_ops};

#[derive(Clone, Debug)]
enum MapOp {
    Insert(u16, u64),
    Remove(u16),
    Get(u16),
    Reopen,
}

fn map_op() -> impl Strategy<Value = MapOp> {
    prop_oneof![
        6 => (any::<u16>(), any::<u64>()).prop_map(|(k, v)| MapOp::Insert(k % 512, v)),
        3 => any::<u16>().prop_map(|k| MapOp::Remove(k % 512)),
        3 => any::<u16>().prop_map(|k| MapOp::Get(k % 512)),
        1 => Just(MapOp::Reopen),
    ]
}

#[derive(Clone, Debug)]
enum BytesOp {
    Insert(Vec<u8>, Vec<u8>),
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
    Delete(Vec<u8>),
    Get(Vec<u8>),
    Reopen,
    Iter,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Short keys (inline) from a small alphabet so that they repeat.
        proptest::collection::vec(0u8..4, 0..8),
        // Long keys (records), also repeating.
        proptest::collection::vec(0u8..3, 8..24),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..13),
        3 => proptest::collection::vec(any::<u8>(), 13..300),
        // Longer than the 64-byte slab used below: chains.
        1 => proptest::collection::vec(any::<u8>(), 300..if cfg!(miri) { 400 } else { 2000 }),
    ]
}

fn bytes_op() -> impl Strategy<Value = BytesOp> {
    prop_oneof![
        5 => (key(), value()).prop_map(|(k, v)| BytesOp::Insert(k, v)),
        2 => (key(), value()).prop_map(|(k, v)| BytesOp::Put(k, v)),
        2 => key().prop_map(BytesOp::Remove),
        1 => key().prop_map(BytesOp::Delete),
        3 => key().prop_map(BytesOp::Get),
        1 => Just(BytesOp::Reopen),
        1 => Just(BytesOp::Iter),
    ]
}

fn run_bytes(ops: Vec<BytesOp>, opts: BytesMapOptions, file: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bytes.map");
    let mut m = if file {
        BytesMap::create_with(&path, &opts).unwrap()
    } else {
        BytesMap::anonymous_with(&opts).unwrap()
    };
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for op in ops {
        match op {
            BytesOp::Insert(k, v) => {
                assert_eq!(m.insert(&k, &v).unwrap(), model.insert(k, v));
            }
            BytesOp::Put(k, v) => {
                assert_eq!(m.put(&k, &v).unwrap(), model.insert(k, v).is_some());
            }
            BytesOp::Remove(k) => assert_eq!(m.remove(&k).unwrap(), model.remove(&k)),
            BytesOp::Delete(k) => assert_eq!(m.delete(&k).unwrap(), model.remove(&k).is_some()),
            BytesOp::Get(k) => {
                assert_eq!(m.get(&k).unwrap().as_ref(), model.get(&k));
                assert_eq!(
                    m.get_with(&k, |v| v.len()).unwrap(),
                    model.get(&k).map(Vec::len)
                );
            }
            BytesOp::Reopen => {
                if file {
                    m.flush().unwrap();
                    drop(m);
                    m = BytesMap::open(&path).unwrap();
                }
            }
            BytesOp::Iter => {
                let got: HashMap<Vec<u8>, Vec<u8>> = m.iter().collect::<Result<_, _>>().unwrap();
                assert_eq!(got, model);
                let mut n = 0;
                m.for_each(|k, v| {
                    assert_eq!(model.get(k).map(Vec::as_slice), Some(v));
                    n += 1;
                })
                .unwrap();
                assert_eq!(n, model.len());
            }
        }
        assert_eq!(m.len(), model.len());
    }
    let got: HashMap<Vec<u8>, Vec<u8>> = m.iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(got, model);
    m.check().unwrap();
    // Remove everything: the arena must end with no live chunk.
    m.clear().unwrap();
    assert!(m.is_empty());
    assert_eq!(m.iter().count(), 0);
    m.check().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]

    #[test]
    fn map_matches_std(ops in proptest::collection::vec(map_op(), 1..max_ops())) {
        let anon = cfg!(miri);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typed.map");
        let mut m: Map<u16, u64> = if anon { Map::anonymous().unwrap() } else { Map::create(&path).unwrap() };
        let mut model = HashMap::new();
        for op in ops {
            match op {
                MapOp::Insert(k, v) => prop_assert_eq!(m.insert(k, v).unwrap(), model.insert(k, v)),
                MapOp::Remove(k) => prop_assert_eq!(m.remove(&k), model.remove(&k)),
                MapOp::Get(k) => prop_assert_eq!(m.get(&k), model.get(&k).copied()),
                MapOp::Reopen => if !anon {
                    m.flush().unwrap();
                    drop(m);
                    m = Map::open(&path).unwrap();
                },
            }
            prop_assert_eq!(m.len(), model.len());
        }
        let got: HashMap<u16, u64> = m.iter().map(|(k, v)| (*k, *v)).collect();
        prop_assert_eq!(got, model);
        m.check().unwrap();
    }

    #[test]
    fn bytes_map_matches_std_anonymous(ops in proptest::collection::vec(bytes_op(), 1..max_ops())) {
        run_bytes(ops, BytesMapOptions::new().slab_size(256), false);
    }

    #[test]
    fn bytes_map_colliding_hashes(ops in proptest::collection::vec(bytes_op(), 1..max_ops())) {
        // Every long key gets the same key word: only full comparison tells them apart.
        run_bytes(ops, BytesMapOptions::new().slab_size(64).hash_mask(0), false);
    }

    #[cfg_attr(miri, ignore)]
    #[test]
    fn bytes_map_matches_std_file(ops in proptest::collection::vec(bytes_op(), 1..max_ops())) {
        run_bytes(ops, BytesMapOptions::new().slab_size(256).hash_mask(3), true);
    }
}
