//! Unit tests of the facade maps.

use offheap::{BytesMap, BytesMapOptions, Error, Map};

#[test]
fn colliding_long_keys_stay_distinct() {
    let mut m = BytesMap::anonymous_with(&BytesMapOptions::new().hash_mask(0)).unwrap();
    let n = if cfg!(miri) { 24u32 } else { 100 };
    let keys: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("key-number-{i}").into_bytes())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(m.insert(k, &i.to_le_bytes()).unwrap(), None);
    }
    assert_eq!(m.len(), n as usize);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(m.get(k).unwrap(), Some(i.to_le_bytes().to_vec()));
    }
    for k in keys.iter().step_by(2) {
        assert!(m.delete(k).unwrap());
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(m.contains_key(k).unwrap(), i % 2 == 1);
    }
    assert_eq!(m.len(), n as usize / 2);
}

#[test]
fn large_value_is_a_chain() {
    let mut m = BytesMap::anonymous_with(&BytesMapOptions::new().slab_size(1024)).unwrap();
    let n = if cfg!(miri) { 5_000u32 } else { 100_000 };
    let v: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    m.insert(b"big", &v).unwrap();
    assert_eq!(m.get(b"big").unwrap().as_deref(), Some(&v[..]));
    assert_eq!(m.get_with(b"big", |b| b == &v[..]).unwrap(), Some(true));
    let w = vec![1u8; n as usize / 2];
    assert_eq!(m.insert(b"big", &w).unwrap(), Some(v));
    assert_eq!(m.remove(b"big").unwrap(), Some(w));
    m.check().unwrap();
}

#[test]
fn removed_space_is_reused() {
    let mut m = BytesMap::anonymous().unwrap();
    let val = [9u8; 100];
    let (rounds, n) = if cfg!(miri) { (2, 100u32) } else { (5, 2000) };
    for round in 0..rounds {
        for i in 0..n {
            m.insert(format!("long key {i}").as_bytes(), &val).unwrap();
        }
        let used = m.region().stats();
        for i in 0..n {
            assert!(m.delete(format!("long key {i}").as_bytes()).unwrap());
        }
        if round > 0 {
            // The same workload fits in the space the previous round left.
            let again = m.region().stats();
            assert!(again.size <= used.size, "{again:?} vs {used:?}");
        }
    }
    assert!(m.is_empty());
}

#[test]
fn invalid_options_are_errors() {
    assert!(matches!(
        BytesMap::anonymous_with(&BytesMapOptions::new().slab_size(8)),
        Err(Error::InvalidOptions(_))
    ));
    assert!(matches!(
        BytesMap::anonymous_with(&BytesMapOptions::new().growth_factor(1.0)),
        Err(Error::Arena(_))
    ));
}

#[cfg_attr(miri, ignore)]
#[test]
fn reopen_and_open_or_create() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.map");
    {
        let mut m = BytesMap::open_or_create(&p).unwrap();
        for i in 0..10_000u32 {
            m.insert(&i.to_le_bytes(), &(i * 3).to_le_bytes()).unwrap();
        }
        m.flush().unwrap();
    }
    let m = BytesMap::open_or_create(&p).unwrap();
    assert_eq!(m.len(), 10_000);
    assert_eq!(
        m.get(&7u32.to_le_bytes()).unwrap(),
        Some(21u32.to_le_bytes().to_vec())
    );
    drop(m);
    // A typed map is not a bytes map.
    assert!(matches!(BytesMap::create(&p), Err(Error::Region(_))));
    let q = dir.path().join("t.map");
    {
        let mut t: Map<u64, [u8; 16]> = Map::open_or_create(&q).unwrap();
        t.insert(5, [1; 16]).unwrap();
    }
    let t: Map<u64, [u8; 16]> = Map::open_or_create(&q).unwrap();
    assert_eq!(t.get(&5), Some([1; 16]));
    drop(t);
    assert!(matches!(Map::<u32, u64>::open(&q), Err(Error::Table(_))));
    assert!(matches!(BytesMap::open(&q), Err(Error::NotFound)));
}

/// Resident bytes of `len` bytes at `base` (page-aligned), from mincore(2).
#[cfg(target_os = "linux")]
fn resident(base: *mut u8, len: usize) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let mut v = vec![0u8; len.div_ceil(page)];
    // SAFETY: `base..base + len` is a mapping of this process (the map's region); `v` has
    // one byte per page.
    let r = unsafe { libc::mincore(base.cast(), len, v.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore failed");
    v.iter().filter(|&&b| b & 1 != 0).count() as u64 * page as u64
}

#[cfg(target_os = "linux")]
#[cfg_attr(miri, ignore)]
#[test]
fn bulk_removal_gives_memory_back_to_the_os() {
    let mut m = BytesMap::anonymous().unwrap();
    let v = vec![3u8; 8 << 10];
    for i in 0..4000u32 {
        m.insert(format!("bulk key {i}").as_bytes(), &v).unwrap();
    }
    let (base, len) = (m.region().base(), m.region().mapped_len() as usize);
    let full = resident(base, len);
    assert!(
        full >= 30 << 20,
        "32 MiB of values should be resident: {full}"
    );
    for i in 0..4000u32 {
        assert!(m.delete(format!("bulk key {i}").as_bytes()).unwrap());
    }
    m.shrink_to_fit();
    let after = resident(base, len);
    assert!(
        after * 4 < full,
        "removing everything should give most pages back: {full} -> {after}"
    );
}

/// `open()` retried for a while if refused as in use: a process that another test thread
/// forks holds a copy of every descriptor of this one until it execs, the copy's included,
/// so the copy is not alone for that moment.
fn open_alone_soon<T>(open: impl Fn() -> Result<T, Error>) -> T {
    for _ in 0..100 {
        match open() {
            Err(Error::Table(offheap::swiss::Error::InUse { .. })) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            r => return r.unwrap(),
        }
    }
    open().unwrap()
}

/// A copy of a map file taken while the map is open records it as open by this process.
/// Opened alone (nobody else has the copy open), the copy is taken over and repaired as
/// after a crash; before, it was refused with `InUse` for as long as this process lived.
/// A second handle beside the first is still refused.
#[cfg(target_os = "linux")]
#[cfg_attr(miri, ignore)]
#[test]
fn a_copy_of_a_map_in_use_opens_once_alone() {
    let dir = tempfile::tempdir().unwrap();
    let in_use = |r| matches!(r, Err(Error::Table(offheap::swiss::Error::InUse { .. })));

    let (live, copy) = (dir.path().join("live.map"), dir.path().join("copy.map"));
    let mut m: Map<u64, u64> = Map::create(&live).unwrap();
    for k in 0..5000 {
        m.insert(k, k * 7).unwrap();
    }
    m.flush().unwrap();
    std::fs::copy(&live, &copy).unwrap();
    let mut c = open_alone_soon(|| Map::<u64, u64>::open(&copy));
    assert_eq!(c.len(), 5000);
    assert!((0..5000).all(|k| c.get(&k) == Some(k * 7)));
    c.insert(9999, 1).unwrap();
    assert!(in_use(Map::<u64, u64>::open(&copy).map(|_| ())));
    // The live map was left alone.
    assert!(in_use(Map::<u64, u64>::open(&live).map(|_| ())));
    m.insert(5000, 0).unwrap();
    assert_eq!((m.len(), c.len()), (5001, 5001));

    let (live, copy) = (dir.path().join("live.bmap"), dir.path().join("copy.bmap"));
    let mut b = BytesMap::create(&live).unwrap();
    for k in 0..3000u32 {
        b.insert(&k.to_le_bytes(), &[k as u8; 100]).unwrap();
    }
    b.flush().unwrap();
    std::fs::copy(&live, &copy).unwrap();
    let mut c = open_alone_soon(|| BytesMap::open(&copy));
    assert_eq!(c.len(), 3000);
    assert!((0..3000u32).all(|k| c.get(&k.to_le_bytes()).unwrap() == Some(vec![k as u8; 100])));
    c.insert(b"new", b"value").unwrap();
    assert!(in_use(BytesMap::open(&copy).map(|_| ())));
    assert!(in_use(BytesMap::open_or_create(&copy).map(|_| ())));
    drop(c);
    // Closed cleanly, the copy opens through `open_in` too.
    let r = offheap::mmap::Region::open(&copy).unwrap();
    assert_eq!(BytesMap::open_in(r).unwrap().len(), 3001);
    drop(b);
}

/// A fixed seed makes a map file the same for the same operations: two files built alike
/// differ only in their region's creation stamp and pid namespace record
/// (`offheap::mmap::__fuzz::normalize` sets both), so a fuzz target's seed image, and the
/// crashes found on it, reproduce.
#[cfg_attr(miri, ignore)]
#[test]
fn a_fixed_seed_makes_map_files_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let image = |name: &str, bytes_map: bool, seed: u64| {
        let p = dir.path().join(name);
        if bytes_map {
            let mut m = BytesMap::create_with(&p, &BytesMapOptions::new().seed(seed)).unwrap();
            for i in 0..500u32 {
                m.insert(format!("key number {i}").as_bytes(), &[i as u8; 40])
                    .unwrap();
            }
        } else {
            let opts = offheap::SharedMapOptions::new().shards(8).seed(seed);
            let m = offheap::SharedMap::create_with(&p, &opts).unwrap();
            for i in 0..500u32 {
                m.insert(format!("key number {i}").as_bytes(), &[i as u8; 40])
                    .unwrap();
            }
        }
        let mut img = std::fs::read(&p).unwrap();
        offheap::mmap::__fuzz::normalize(&mut img);
        img
    };
    for bytes_map in [true, false] {
        let a = image("a", bytes_map, 7);
        assert!(a == image("b", bytes_map, 7), "bytes_map: {bytes_map}");
        assert!(a != image("c", bytes_map, 8), "the seed matters");
        for f in ["a", "b", "c"] {
            std::fs::remove_file(dir.path().join(f)).unwrap();
        }
    }
}
