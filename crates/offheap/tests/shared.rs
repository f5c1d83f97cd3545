//! SharedMap: model test, threads, and real child processes (the test binary re-executed
//! with `OFFHEAP_CHILD` naming the child's role), including children killed with SIGKILL
//! while they write.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use offheap::{SharedMap, SharedMapOptions};
use proptest::prelude::*;

mod common;
use common::{cases, max_ops};

#[derive(Clone, Debug)]
enum Op {
    Insert(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
    Get(Vec<u8>),
    Reopen,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(0u8..4, 0..8),
        proptest::collection::vec(0u8..3, 8..20),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..13),
        proptest::collection::vec(any::<u8>(), 13..400),
    ];
    prop_oneof![
        5 => (key(), value).prop_map(|(k, v)| Op::Insert(k, v)),
        3 => key().prop_map(Op::Remove),
        3 => key().prop_map(Op::Get),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(32)))]

    #[test]
    fn shared_map_matches_std(ops in proptest::collection::vec(op(), 1..max_ops()), collide in any::<bool>()) {
        let file = !cfg!(miri);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.map");
        let mut opts = SharedMapOptions::new().shards(4).slab_size(128);
        if collide {
            opts = opts.hash_mask(0);
        }
        let mut m = if file { SharedMap::create_with(&path, &opts).unwrap() } else { SharedMap::anonymous_with(&opts).unwrap() };
        let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for op in ops {
            match op {
                Op::Insert(k, v) => prop_assert_eq!(m.insert(&k, &v).unwrap(), model.insert(k, v)),
                Op::Remove(k) => prop_assert_eq!(m.remove(&k).unwrap(), model.remove(&k)),
                Op::Get(k) => prop_assert_eq!(m.get(&k).unwrap(), model.get(&k).cloned()),
                Op::Reopen => if file {
                    m.flush().unwrap();
                    drop(m);
                    m = SharedMap::open(&path).unwrap();
                },
            }
            prop_assert_eq!(m.len(), model.len());
        }
        let got: HashMap<Vec<u8>, Vec<u8>> = m.to_vec().unwrap().into_iter().collect();
        prop_assert_eq!(got, model);
        m.check().unwrap();
    }
}

#[test]
fn threads_share_one_map() {
    let m = SharedMap::anonymous_with(&SharedMapOptions::new().shards(16)).unwrap();
    let n = if cfg!(miri) { 16u32 } else { 5000 };
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let m = &m;
            s.spawn(move || {
                for i in 0..n {
                    let k = (t * n + i).to_le_bytes();
                    m.insert(&k, &(i * 7).to_le_bytes()).unwrap();
                    assert_eq!(m.get(&k).unwrap(), Some((i * 7).to_le_bytes().to_vec()));
                    // Overlapping keys: all threads touch the same 64 keys.
                    let shared = ((i % 64) as u16).to_le_bytes();
                    m.put(&shared, &[t as u8; 20]).unwrap();
                    let v = m.get(&shared).unwrap().unwrap();
                    assert!(v.len() == 20 && v.iter().all(|&b| b == v[0]));
                }
            });
        }
    });
    assert_eq!(m.len(), 4 * n as usize + n.min(64) as usize);
    m.check().unwrap();
}

// ---------------------------------------------------------------------- child processes

const CHILD: &str = "OFFHEAP_CHILD";

/// A 7-byte value (stored inline in the slot).
fn val(k: u32) -> [u8; 7] {
    let mut v = [0u8; 7];
    v[..4].copy_from_slice(&k.to_le_bytes());
    v[4..].copy_from_slice(&(!k).to_le_bytes()[..3]);
    v
}

/// The killed writer's key for `k`: 4 bytes (inline) for even `k`, 12 (a long key: a record
/// blob in the arena) for odd `k`.
fn wkey(k: u32) -> Vec<u8> {
    let mut v = k.to_le_bytes().to_vec();
    if k % 2 == 1 {
        v.extend_from_slice(b"longkey!");
    }
    v
}

/// The killed writer's first value for `k`: 7 bytes (inline), 8 (the smallest arena blob)
/// or 40 bytes, by `k % 3`.
fn wval(k: u32) -> Vec<u8> {
    let len = [7, 8, 40][k as usize % 3];
    (0..len)
        .map(|i| (k >> (8 * (i % 4))) as u8 ^ i as u8)
        .collect()
}

/// The value the killed writer updates `k` to: another length (8 to 44 bytes: another size
/// class, so the update allocates a new blob and frees the old one).
fn wupd(k: u32) -> Vec<u8> {
    let len = 8 + (k as usize % 5) * 9;
    (0..len)
        .map(|i| (k >> (8 * (i % 4))) as u8 ^ 0x5A ^ i as u8)
        .collect()
}

/// The child side: runs when the binary is re-executed with `OFFHEAP_CHILD` set.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let m = SharedMap::open(parts[1]).unwrap();
    let a: u32 = parts[2].parse().unwrap();
    let b: u32 = parts[3].parse().unwrap();
    match parts[0] {
        // Keys a..b: put, read back, delete every third.
        "disjoint" => {
            for k in a..b {
                m.insert(&k.to_le_bytes(), &val(k)).unwrap();
            }
            for k in a..b {
                assert_eq!(m.get(&k.to_le_bytes()).unwrap(), Some(val(k).to_vec()));
            }
            for k in (a..b).step_by(3) {
                assert!(m.delete(&k.to_le_bytes()).unwrap());
            }
        }
        // Child `a` of `b`: random upserts/deletes on 0..512 (long keys too), then a
        // barrier through the map, then final values on its own residue class.
        "overlap" => {
            let (id, p) = (a, b);
            let mut x = 0x9E37_79B9u32.wrapping_mul(id + 1);
            for _ in 0..4000 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let k = format!("overlapping-key-{}", x % 512);
                if x % 5 == 0 {
                    m.delete(k.as_bytes()).unwrap();
                } else {
                    let mut v = k.clone().into_bytes();
                    v.extend_from_slice(&[id as u8; 30]);
                    if let Some(old) = m.insert(k.as_bytes(), &v).unwrap() {
                        assert!(old.starts_with(k.as_bytes()), "torn value");
                    }
                }
            }
            m.insert(format!("done-{id}").as_bytes(), b"1").unwrap();
            let t = Instant::now();
            while (0..p).any(|j| !m.contains_key(format!("done-{j}").as_bytes()).unwrap()) {
                assert!(t.elapsed() < Duration::from_secs(60), "barrier timed out");
                std::thread::sleep(Duration::from_millis(1));
            }
            for k in (0..512u32).filter(|k| k % p == id) {
                let key = format!("overlapping-key-{k}");
                m.insert(key.as_bytes(), format!("final-{k}").as_bytes())
                    .unwrap();
            }
        }
        // Writes forever: put key (round << 24 | i), update the key 250 before it, delete
        // the key 500 before it (short and long keys, inline and arena values).
        "writer" => {
            let round = a << 24;
            for i in 0u32.. {
                m.put(&wkey(round | i), &wval(round | i)).unwrap();
                if i >= 250 {
                    let k = round | (i - 250);
                    m.put(&wkey(k), &wupd(k)).unwrap();
                }
                if i >= 500 {
                    m.delete(&wkey(round | (i - 500))).unwrap();
                }
            }
        }
        // Inserts forever (inline keys and values, no deletes): the shard tables keep
        // growing, so kills land in table rebuilds too.
        "grower" => {
            let round = a << 24;
            for i in 0u32.. {
                m.put(&(round | i).to_le_bytes(), &(round | i).to_le_bytes())
                    .unwrap();
            }
        }
        r => panic!("unknown role {r}"),
    }
    drop(m);
    std::process::exit(0);
}

fn spawn(role: &str, path: &std::path::Path, a: u32, b: u32) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{role}|{}|{a}|{b}", path.display()))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_ok(mut c: std::process::Child, limit: Duration) {
    let t = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            assert!(st.success(), "child failed: {st:?}");
            return;
        }
        if t.elapsed() > limit {
            let _ = c.kill();
            panic!("child did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Aborts the test process if the test hangs (a lock never recovered), so that a
/// regression fails instead of hanging the suite.
fn watchdog(limit: Duration) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if rx.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            eprintln!("watchdog: test hung for {limit:?}");
            std::process::abort();
        }
    });
    tx
}

#[cfg_attr(miri, ignore)]
#[test]
fn processes_on_disjoint_keys() {
    let _w = watchdog(Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disjoint.map");
    let m = SharedMap::create_with(&path, &SharedMapOptions::new().shards(64)).unwrap();
    let per = 20_000u32;
    let kids: Vec<_> = (0..3)
        .map(|i| spawn("disjoint", &path, i * per, (i + 1) * per))
        .collect();
    for c in kids {
        wait_ok(c, Duration::from_secs(100));
    }
    for k in 0..3 * per {
        let expect = (k % per % 3 != 0).then(|| val(k).to_vec());
        assert_eq!(m.get(&k.to_le_bytes()).unwrap(), expect, "key {k}");
    }
    assert_eq!(m.len(), (3 * per - 3 * per.div_ceil(3)) as usize);
    m.check().unwrap();
}

#[cfg_attr(miri, ignore)]
#[test]
fn processes_on_overlapping_keys() {
    let _w = watchdog(Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overlap.map");
    let m =
        SharedMap::create_with(&path, &SharedMapOptions::new().shards(8).slab_size(4096)).unwrap();
    let p = 3u32;
    let kids: Vec<_> = (0..p).map(|i| spawn("overlap", &path, i, p)).collect();
    for c in kids {
        wait_ok(c, Duration::from_secs(100));
    }
    for k in 0..512u32 {
        let key = format!("overlapping-key-{k}");
        assert_eq!(
            m.get(key.as_bytes()).unwrap(),
            Some(format!("final-{k}").into_bytes()),
            "{key}"
        );
    }
    assert_eq!(m.len(), 512 + p as usize);
    m.check().unwrap();
}

/// Runs child `role` for round `round` and SIGKILLs it after `base` to `base + spread` ms
/// (a pseudo-random draw from the state `x`).
fn spawn_and_kill(
    role: &str,
    path: &std::path::Path,
    round: u32,
    x: &mut u64,
    base: u64,
    spread: u64,
) {
    let mut c = spawn(role, path, round, 0);
    *x = x
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    std::thread::sleep(Duration::from_millis(base + (*x >> 33) % spread));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
    let st = c.wait().unwrap();
    assert!(!st.success(), "the {role} was meant to be killed");
}

/// A writer killed at random moments while it puts, updates and deletes short and long
/// keys with inline and arena values: after each kill the parent repairs the shards (their
/// arenas included), finds every completed operation and no torn value, and writes on.
#[cfg_attr(miri, ignore)]
#[test]
fn sigkilled_writer_is_recovered() {
    let _w = watchdog(Duration::from_secs(150));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill.map");
    // Few shards, small tables and small slabs: kills land in every step, rebuilds, new
    // slabs and slab-table growth included.
    let m =
        SharedMap::create_with(&path, &SharedMapOptions::new().shards(4).slab_size(1024)).unwrap();
    let mut x = 12345u64;
    for round in 1..=8u32 {
        spawn_and_kill("writer", &path, round, &mut x, 30, 200);
        // The parent takes every lock (check reads every shard; a lock held by the dead
        // child is recovered, and the shard repaired) and finds consistent data.
        if let Err(e) = m.check() {
            panic!("round {round}: {e}");
        }
        let got: std::collections::HashMap<u32, Vec<u8>> = m
            .to_vec()
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                let id = u32::from_le_bytes(k[..4].try_into().unwrap());
                assert_eq!(k, wkey(id), "torn key {id:#x}");
                (id, v)
            })
            .filter(|(id, _)| id >> 24 == round)
            .map(|(id, v)| (id & 0xFF_FFFF, v))
            .collect();
        let Some(&max) = got.keys().max() else {
            continue; // killed before its first put completed
        };
        let k = |i: u32| (round << 24) | i;
        for i in max.saturating_sub(499)..=max {
            let v = got
                .get(&i)
                .unwrap_or_else(|| panic!("round {round}: completed put of {i} lost (max {max})"));
            // Updates of keys up to max - 251 completed; of max - 250, maybe.
            if i + 251 <= max {
                assert_eq!(*v, wupd(k(i)), "round {round}: key {i} (max {max})");
            } else if i + 250 == max {
                assert!(
                    *v == wupd(k(i)) || *v == wval(k(i)),
                    "round {round}: torn {i}"
                );
            } else {
                assert_eq!(*v, wval(k(i)), "round {round}: key {i} (max {max})");
            }
        }
        for &i in got.keys() {
            assert!(
                i + 500 >= max,
                "round {round}: completed delete of {i} undone (max {max})"
            );
        }
        // And it can write to every shard of the map afterwards.
        for i in 0..(max + 1) {
            m.delete(&wkey(k(i))).unwrap();
        }
        assert_eq!(m.len(), 0, "round {round}");
        m.check().unwrap();
        // No region block leaked (new slabs, slab-table growth, rebuilds).
        assert_eq!(
            m.unnamed_blocks().unwrap(),
            0,
            "round {round}: region blocks leaked"
        );
    }
    // Kills land inside operations most of the time (the child does nothing else).
    eprintln!("shards repaired after kills: {}", m.recoveries());
}

/// A writer killed while the shard tables grow (rebuilds are a large part of its time):
/// every completed put is there, the tables are consistent, and the map keeps working.
#[cfg_attr(miri, ignore)]
#[test]
fn sigkilled_grower_is_recovered() {
    let _w = watchdog(Duration::from_secs(150));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grow.map");
    // Two shards: every rebuild copies half the map. The region is made large up front and
    // keeps its free pages, so that its allocator does no system calls and the kills land
    // in the rebuilds (a kill inside the allocator is repaired by `Region::recover` when
    // the next process takes the allocator lock over).
    let region = offheap::mmap::RegionOptions::new()
        .initial_size(256 << 20)
        .release_threshold(1 << 40);
    let m =
        SharedMap::create_with(&path, &SharedMapOptions::new().shards(2).region(region)).unwrap();
    let mut x = 99u64;
    for round in 1..=8u32 {
        spawn_and_kill("grower", &path, round, &mut x, 20, 150);
        if let Err(e) = m.check() {
            panic!("round {round}: {e}");
        }
        let mut keys: Vec<u32> = Vec::new();
        m.for_each(|k, v| {
            assert_eq!(k, v, "torn value");
            let k = u32::from_le_bytes(k.try_into().unwrap());
            if k >> 24 == round {
                keys.push(k & 0xFF_FFFF);
            }
        })
        .unwrap();
        keys.sort_unstable();
        // Puts complete in order: the keys present are exactly 0..n (the put in flight
        // when the kill came is either committed or absent).
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(k, i as u32, "round {round}: completed put {i} lost");
        }
        for &k in &keys {
            let key = ((round << 24) | k).to_le_bytes();
            assert_eq!(m.get(&key).unwrap(), Some(key.to_vec()));
            assert!(m.delete(&key).unwrap());
        }
        assert_eq!(m.len(), 0, "round {round}");
        m.check().unwrap();
        // No region block leaked: the kills land in table rebuilds (whose new table is
        // recorded as it is allocated) and in the arenas' slab and table growth.
        let leaked = m.unnamed_blocks().unwrap();
        assert_eq!(leaked, 0, "round {round}: region blocks leaked");
    }
    eprintln!("shards repaired after kills: {}", m.recoveries());
}

/// Readers racing with writers that update values and insert
/// and delete other keys (so that the tables grow, shrink and are rebuilt under the
/// readers): a reader never misses a key that is always present, and never sees a torn
/// or foreign value.
#[test]
fn readers_race_with_rebuilds() {
    let m = SharedMap::anonymous_with(&SharedMapOptions::new().shards(2)).unwrap();
    let (fixed, rounds) = if cfg!(miri) { (8u32, 2u32) } else { (64, 100) };
    for k in 0..fixed {
        m.insert(&k.to_le_bytes(), &[0u8; 7]).unwrap();
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..2u32 {
            let (m, stop) = (&m, &stop);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 4 * fixed as u64 {
                    let k = (n as u32 * 7 + t) % fixed;
                    let v = m
                        .get(&k.to_le_bytes())
                        .unwrap()
                        .expect("a fixed key was missed");
                    assert_eq!(v.len(), 7);
                    assert!(v.iter().all(|&b| b == v[0]), "torn value {v:?}");
                    n += 1;
                }
            });
        }
        for r in 0..rounds {
            let b = r as u8;
            for k in 0..fixed {
                m.put(&k.to_le_bytes(), &[b; 7]).unwrap();
            }
            // Grow, then shrink again: rebuilds while the readers read.
            let extra: u32 = if cfg!(miri) { 40 } else { 2000 };
            for k in 0..extra {
                m.put(&(1_000_000 + k).to_le_bytes(), &[b; 3]).unwrap();
            }
            for k in 0..extra {
                assert!(m.delete(&(1_000_000 + k).to_le_bytes()).unwrap());
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(m.len(), fixed as usize);
    m.check().unwrap();
}

/// A file whose region allocator bookkeeping is torn (a process killed between two of the
/// allocator's header writes, and no process left to repair it) is refused by a plain
/// region open, but `SharedMap::open` opens it, repairs the allocator under the map's
/// allocator lock, and every pair is intact; the repaired file then opens anywhere.
#[cfg_attr(miri, ignore)]
#[test]
fn torn_region_in_a_closed_file_is_recovered() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("torn.map");
    let long = |i: u32| vec![i as u8; 8 + (i as usize % 60)];
    {
        let m = SharedMap::create_with(&path, &SharedMapOptions::new().shards(4)).unwrap();
        for i in 0..3000u32 {
            let v = if i % 2 == 0 { val(i).to_vec() } else { long(i) };
            m.put(&i.to_le_bytes(), &v).unwrap();
        }
        m.flush().unwrap();
    }
    // The region header's `in_use` counter (docs/file-format.md: offset 144, 8 bytes) off
    // by one granule, as a kill between the allocator's two counter writes leaves it.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut w = [0u8; 8];
    f.read_exact_at(&mut w, 144).unwrap();
    f.write_all_at(&(u64::from_le_bytes(w) + 16).to_le_bytes(), 144)
        .unwrap();
    drop(f);
    match offheap::mmap::Region::open(&path) {
        Err(offheap::mmap::Error::Corrupt { .. }) => {}
        other => panic!("a plain open of the torn file: {other:?}"),
    }
    let m = SharedMap::open(&path).unwrap();
    m.check().unwrap();
    assert_eq!(m.len(), 3000);
    for i in 0..3000u32 {
        let want = if i % 2 == 0 { val(i).to_vec() } else { long(i) };
        assert_eq!(m.get(&i.to_le_bytes()).unwrap(), Some(want), "key {i}");
    }
    for i in 3000..4000u32 {
        m.put(&i.to_le_bytes(), &long(i)).unwrap();
    }
    m.check().unwrap();
    m.flush().unwrap();
    drop(m);
    let r = offheap::mmap::Region::open(&path).unwrap();
    r.check().unwrap();
}

/// A file of another SharedMap format version (version 1: 24-byte slots) is refused with a
/// typed error, not misread.
#[cfg_attr(miri, ignore)]
#[test]
fn other_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.map");
    let m = SharedMap::create(&path).unwrap();
    m.insert(b"k", b"v").unwrap();
    m.flush().unwrap();
    drop(m);
    {
        let r = offheap::mmap::Region::open(&path).unwrap();
        // The header: the allocator lock (8 x 128 bytes), magic, version.
        // SAFETY: 8 bytes of the mapping, no other user.
        unsafe { header_word(&r, 1024 + 8).write(1) };
        r.flush().unwrap();
    }
    match SharedMap::open(&path) {
        Err(offheap::Error::Corrupt(why)) => assert!(why.contains("version"), "{why}"),
        other => panic!("expected a version error, got {other:?}"),
    }
}

/// A closed map file at `path` with `shards` shards holding keys `0..n` (each its own value).
fn map_file_of(path: &std::path::Path, shards: usize, n: u32) {
    let m = SharedMap::create_with(path, &SharedMapOptions::new().shards(shards)).unwrap();
    for k in 0..n {
        m.insert(&k.to_le_bytes(), &k.to_le_bytes()).unwrap();
    }
    m.flush().unwrap();
}

/// The address of word `word` of shard `shard` of the map in `r`. The map header: the
/// allocator lock (1024 bytes), magic, version, shards, seed, hash mask, then the shard
/// array's offset; a shard is 256 bytes (its words: lock state, fresh table, table, `len`,
/// `used`, ...).
fn shard_word(r: &offheap::mmap::Region, shard: u64, word: u64) -> *mut u64 {
    // SAFETY: 8 bytes of the mapping, no other user.
    let shards = unsafe { header_word(r, 1024 + 40).read() };
    let at = offheap::mmap::Offset::new(shards + shard * 256 + word * 8).unwrap();
    r.ptr(at, 8).unwrap().as_ptr() as *mut u64
}

/// The address of the word `at` bytes into the header of the map in `r`.
fn header_word(r: &offheap::mmap::Region, at: u64) -> *mut u64 {
    let hdr = r.root("offheap.shared").unwrap().get();
    let at = offheap::mmap::Offset::new(hdr + at).unwrap();
    r.ptr(at, 8).unwrap().as_ptr() as *mut u64
}

/// Writes `(shard, word, value)` into the closed map file at `path` (see [`shard_word`]), as
/// a corrupt file would hold them.
fn write_shard_words(path: &std::path::Path, writes: &[(u64, u64, u64)]) {
    let r = offheap::mmap::Region::open(path).unwrap();
    for &(shard, word, v) in writes {
        // SAFETY: 8 bytes of the mapping, no other user.
        unsafe { shard_word(&r, shard, word).write(v) };
    }
    r.flush().unwrap();
}

/// Shard table words that point outside the region (or name an impossible capacity) are
/// bounds-checked before any slot is read: every operation returns an error, nothing
/// faults.
#[cfg_attr(miri, ignore)]
#[test]
fn corrupt_table_words_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-table.map");
    map_file_of(&path, 4, 100);
    let bad = [
        u64::MAX,                   // capacity far too large
        (1u64 << 36) - 1,           // capacity 0
        (64u64 << 36) | 0xFFF_FFFF, // offset past the end of the region
    ];
    for (n, &word) in bad.iter().enumerate() {
        {
            let r = offheap::mmap::Region::open(&path).unwrap();
            for i in 0..4 {
                // The table word is the shard's third.
                let p = shard_word(&r, i, 2);
                // SAFETY: 8 bytes of the mapping, no other user.
                let old = unsafe { p.read() };
                if n == 0 {
                    // It is a table word: a capacity of 16 slots or a few hundred.
                    assert!(
                        (16..1000).contains(&(old >> 36)),
                        "not a table word: {old:#x}"
                    );
                }
                // SAFETY: as above.
                unsafe { p.write(word) };
            }
            r.flush().unwrap();
        }
        let m = SharedMap::open(&path).unwrap();
        for k in 0..100u32 {
            assert!(m.get(&k.to_le_bytes()).is_err(), "case {n}: get of {k}");
            assert!(
                m.insert(&k.to_le_bytes(), b"x").is_err(),
                "case {n}: insert"
            );
            assert!(m.get(&[7u8; 20]).is_err(), "case {n}: long key");
        }
        assert!(m.check().is_err());
        assert!(m.to_vec().is_err());
    }
}

/// A shard's counters come from the file: `len` and `used` at their largest make writes
/// rebuild or fail, never overflow (the fuzz target `sharedmap_file` found `(used + 1) *
/// 1000` overflowing in an insert, a panic in a build with overflow checks); `check`
/// reports the counters; `to_vec` does not take them for a capacity (it asked for 2^40
/// bytes, and the allocation's failure aborted the process).
#[cfg_attr(miri, ignore)]
#[test]
fn corrupt_shard_counters_never_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-counters.map");
    map_file_of(&path, 2, 100);
    // `len` and `used`: each shard's fourth and fifth words.
    let writes: Vec<_> = (0..2)
        .flat_map(|i| [(i, 3, u64::MAX), (i, 4, u64::MAX - 1)])
        .collect();
    write_shard_words(&path, &writes);
    let m = SharedMap::open(&path).unwrap();
    assert!(m.check().is_err(), "the counters disagree with the tables");
    assert_eq!(m.len(), usize::MAX);
    let mut pairs = m.to_vec().unwrap();
    pairs.sort();
    let mut expected: Vec<_> = (0..100u32)
        .map(|k| (k.to_le_bytes().to_vec(), k.to_le_bytes().to_vec()))
        .collect();
    expected.sort();
    assert_eq!(pairs, expected);
    for k in 0..300u32 {
        let _ = m.insert(&k.to_le_bytes(), &[1; 40]);
        let _ = m.put(&(k + 1000).to_le_bytes(), b"v");
    }
    for k in 0..300u32 {
        let _ = m.remove(&k.to_le_bytes());
        let _ = m.delete(&(k + 1000).to_le_bytes());
    }
    let _ = m.len();
}

/// A shard `len` below its table's true count (a corrupt file) makes a removal's shrink ask
/// for a table too small for the entries: the rebuild stops with an error instead of
/// probing the full new table forever (the fuzz target `sharedmap_file` timed out there).
#[cfg_attr(miri, ignore)]
#[test]
fn a_shard_length_below_its_entries_never_hangs_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short-len.map");
    map_file_of(&path, 1, 2000);
    // The shard's `len`, its fourth word.
    write_shard_words(&path, &[(0, 3, 3)]);
    // In a thread, so that a rebuild that never ends fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let m = SharedMap::open(&path).unwrap();
        let errors = (0..2000u32)
            .filter(|k| m.delete(&k.to_le_bytes()).is_err())
            .count();
        tx.send(errors).unwrap();
    });
    let errors = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the removals finished");
    assert!(errors > 0, "a shrink to the corrupt length was refused");
}

/// The owner id (`pid << 32 | start time`, see `offheap::mmap::process::owner_id`) of the
/// live process `pid`.
#[cfg(target_os = "linux")]
fn owner_id_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let start: u64 = rest.split_whitespace().nth(19).unwrap().parse().unwrap();
    u64::from(pid) << 32 | (start & 0xFFFF_FFFF)
}

/// Lock words that name live processes which do not have the file open: a copy of a map
/// file taken while processes held its locks, or a hostile file. The open that finds the
/// file alone (`Region::try_alone`) takes those locks over and repairs what their holders
/// may have left; before, every operation on such a shard, and every allocation, waited
/// for the named process to end (this test's own process, or its child).
#[cfg(target_os = "linux")]
#[cfg_attr(miri, ignore)]
#[test]
fn lock_words_of_live_processes_without_the_file_are_cleared_by_an_open_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale-owners.map");
    let n = 3000u32;
    map_file_of(&path, 4, n);
    let mut child = std::process::Command::new("sleep")
        .arg("120")
        .spawn()
        .unwrap();
    let other = owner_id_of(child.id());
    let me = offheap::mmap::process::owner_id();
    assert!(!offheap::mmap::process::owner_is_dead(other));
    assert!(!offheap::mmap::process::owner_is_dead(me));
    // Writers of shards 0 (this process) and 1 (the child), readers of shards 2 and 3
    // (words 8.. are a shard's reader slots).
    let stale = [(0, 0, me), (1, 0, other), (2, 8, other), (3, 14, me)];
    write_shard_words(&path, &stale);
    // The allocator lock: the map header's first word, and its reader slots at 128-byte
    // steps.
    let alloc_stale = [(0, me), (3 * 128, other)];
    {
        let r = offheap::mmap::Region::open(&path).unwrap();
        for &(at, v) in &alloc_stale {
            // SAFETY: 8 bytes of the mapping, no other user.
            unsafe { header_word(&r, at).write(v) };
        }
        r.flush().unwrap();
    }
    let _w = watchdog(Duration::from_secs(120));
    // The open clears the words only if it finds the file alone: not while a process that
    // another test thread forks holds a copy of the last handle's descriptor (until it
    // execs). Such an open changes nothing; it is retried.
    let swept = || {
        let r = offheap::mmap::Region::open(&path).unwrap();
        // SAFETY: 8 bytes of the mapping; read while no operation runs.
        let read = |p: *mut u64| unsafe { p.read() };
        stale
            .iter()
            .all(|&(s, w, _)| read(shard_word(&r, s, w)) == 0)
            && alloc_stale
                .iter()
                .all(|&(at, _)| read(header_word(&r, at)) == 0)
    };
    let m = (0..100)
        .find_map(|_| {
            let m = SharedMap::open(&path).unwrap();
            if swept() {
                return Some(m);
            }
            drop(m);
            std::thread::sleep(Duration::from_millis(10));
            None
        })
        .expect("an open found the file alone");
    assert_eq!(
        m.recoveries(),
        2,
        "the two shards with a writer were repaired"
    );
    for k in 0..n {
        assert_eq!(
            m.get(&k.to_le_bytes()).unwrap(),
            Some(k.to_le_bytes().to_vec())
        );
    }
    for k in n..n + 500 {
        m.insert(&k.to_le_bytes(), &[7; 40]).unwrap();
    }
    for k in 0..n {
        assert!(m.delete(&k.to_le_bytes()).unwrap());
    }
    assert_eq!(m.len(), 500);
    m.check().unwrap();
    // An open that is not alone takes nothing over: here shard 0's writer word names this
    // process as if a thread of it held the lock through `m`, which has the file open.
    let r = offheap::mmap::Region::open(&path).unwrap();
    // SAFETY: 8 bytes of the mapping; no operation runs.
    unsafe { shard_word(&r, 0, 0).write(me) };
    let m2 = SharedMap::open(&path).unwrap();
    assert_eq!(m2.len(), 500);
    // SAFETY: as above.
    let held = unsafe { shard_word(&r, 0, 0).read() };
    assert_eq!(held, me, "a live holder's lock was taken");
    assert_eq!(m2.recoveries(), 0);
    // SAFETY: as above.
    unsafe { shard_word(&r, 0, 0).write(0) };
    drop((m, m2, r));
    let _ = child.kill();
    let _ = child.wait();
}

/// A key copied into a second slot of its shard, with the shard's counters raised to
/// match: the counts agree, but the lookup of that key reaches only one of its slots, so
/// `check` reports the other (it passed before it checked where entries are).
#[cfg_attr(miri, ignore)]
#[test]
fn check_finds_a_duplicate_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dup.map");
    map_file_of(&path, 1, 100);
    {
        let r = offheap::mmap::Region::open(&path).unwrap();
        // SAFETY: 8 bytes of the mapping, no other user.
        let desc = unsafe { shard_word(&r, 0, 2).read() };
        let (off, cap) = ((desc & ((1 << 36) - 1)) * 64, desc >> 36);
        let at = offheap::mmap::Offset::new(off).unwrap();
        let slots = r.ptr(at, cap * 16).unwrap().as_ptr() as *mut [u64; 2];
        // SAFETY: `cap` 16-byte slots of the mapping (key word, value word), no other user.
        let slot = |i: u64| unsafe { slots.add(i as usize) };
        let (empty, tomb) = (0x10u64 << 56, 0x11u64 << 56);
        // SAFETY: as above.
        let kw = |i: u64| unsafe { (*slot(i))[0] };
        let full = (0..cap).find(|&i| kw(i) != empty && kw(i) != tomb).unwrap();
        let free = (0..cap).find(|&i| kw(i) == empty).unwrap();
        // SAFETY: as above; the shard's `len` and `used` are its words 3 and 4.
        unsafe {
            slot(free).write(slot(full).read());
            for w in [3, 4] {
                let p = shard_word(&r, 0, w);
                p.write(p.read() + 1);
            }
        }
        r.flush().unwrap();
    }
    let m = SharedMap::open(&path).unwrap();
    match m.check() {
        Err(offheap::Error::Corrupt(why)) => assert!(why.contains("does not reach"), "{why}"),
        other => panic!("check passed a duplicate key: {other:?}"),
    }
}
