//! Arenas in file regions survive close + reopen, in this process and in a child.
#![cfg(feature = "slab")]

mod common;

use common::scratch;
use offheap_mmap::{Offset, Region, RegionOptions};
use offheap_slab::{Arena, Config, Handle};
use std::path::Path;
use std::process::Command;

const ROLE: &str = "OFFHEAP_MMAP_ARENA_CHILD";
const NONE: u64 = u64::MAX;

/// One chunk as the test expects to find it after a reopen.
#[derive(Clone, Debug, PartialEq)]
struct Chunk {
    handle: Handle,
    /// Index that determines the chunk's bytes (see [`data`]).
    seed: u64,
    /// Expected refcount.
    refs: u64,
    /// Index (in the table) of the chain successor, or [`NONE`].
    next: u64,
}

fn data(seed: u64) -> Vec<u8> {
    let len = 1 + (seed * 37) % 9000;
    (0..len).map(|j| (seed * 7 + j) as u8).collect()
}

/// Builds an arena with chunks, refcounts and chains in a fresh file region at `path`,
/// and stores the expectations in the region too (root "expect": [n, Chunk as 5 u64 * n])
/// so another process can verify without being told anything.
fn build(path: &Path) -> Vec<Chunk> {
    let region = Region::create(path, &RegionOptions::new().initial_size(64 << 10)).unwrap();
    let mut arena = Arena::create_in(region, Config::new(16, 16 << 10, 1.5)).unwrap();
    let mut all = Vec::new();
    for seed in 0..600u64 {
        let handle = arena.alloc_from(&data(seed)).unwrap();
        all.push(Chunk {
            handle,
            seed,
            refs: 1,
            next: NONE,
        });
    }
    for (i, c) in all.iter_mut().enumerate() {
        for _ in 0..i % 3 {
            arena.add_ref(c.handle).unwrap();
            c.refs += 1;
        }
    }
    // Release some unchained, singly referenced chunks so the arena has free chunks.
    let mut chunks: Vec<Chunk> = Vec::new();
    for (i, c) in all.into_iter().enumerate() {
        if i % 7 == 0 && c.refs == 1 {
            assert!(arena.dec_ref(c.handle).unwrap());
        } else {
            chunks.push(c);
        }
    }
    // Chains of up to 5 (set_next gives the successor one more reference).
    for k in 0..chunks.len() - 1 {
        if k % 5 != 4 {
            arena
                .set_next(chunks[k].handle, Some(chunks[k + 1].handle))
                .unwrap();
            chunks[k].next = k as u64 + 1;
            chunks[k + 1].refs += 1;
        }
    }
    let root = Offset::new(arena.root()).unwrap();
    let region = arena.into_source();
    region.set_root("arena", Some(root)).unwrap();
    let n = chunks.len() as u64;
    let table = region.alloc(8 + 40 * n, 8).unwrap();
    let p = region
        .ptr(table, 8 + 40 * n)
        .unwrap()
        .as_ptr()
        .cast::<u64>();
    // SAFETY: the table allocation holds 1 + 5n u64s, 8-aligned.
    unsafe {
        p.write(n);
        for (k, c) in chunks.iter().enumerate() {
            let bits = c.handle.to_bits();
            let q = p.add(1 + 5 * k);
            q.write(bits as u64);
            q.add(1).write((bits >> 64) as u64);
            q.add(2).write(c.seed);
            q.add(3).write(c.refs);
            q.add(4).write(c.next);
        }
    }
    region.set_root("expect", Some(table)).unwrap();
    region.flush().unwrap();
    chunks
}

fn expectations(region: &Region) -> Vec<Chunk> {
    let table = region.root("expect").unwrap();
    let p = region.ptr(table, 8).unwrap().as_ptr().cast::<u64>();
    // SAFETY: the table starts with its length.
    let n = unsafe { p.read() };
    let p = region
        .ptr(table, 8 + 40 * n)
        .unwrap()
        .as_ptr()
        .cast::<u64>();
    (0..n as usize)
        .map(|k| {
            // SAFETY: inside the table.
            let w = |i: usize| unsafe { p.add(1 + 5 * k + i).read() };
            Chunk {
                handle: Handle::from_bits(u128::from(w(0)) | u128::from(w(1)) << 64),
                seed: w(2),
                refs: w(3),
                next: w(4),
            }
        })
        .collect()
}

/// Reopens region and arena at `path`; checks every chunk's bytes and chain link, then
/// proves every refcount exact by releasing everything: the extra references (each
/// `dec_ref` must leave the chunk alive), then the owners' references of chain members
/// (still held by their predecessor), then the chain heads, which must free their whole
/// chain. Afterwards no chunk is live. Returns the number of chunks.
fn reopen_and_verify(path: &Path) -> usize {
    let region = Region::open(path).unwrap();
    region.check().unwrap();
    let chunks = expectations(&region);
    let root = region.root("arena").unwrap();
    let mut arena = Arena::open_in(region, root.get()).unwrap();
    arena.check().unwrap();
    let mut held = vec![0u64; chunks.len()];
    for c in &chunks {
        let d = data(c.seed);
        assert_eq!(&arena.bytes(c.handle).unwrap()[..d.len()], &d[..]);
        let next = arena.get_next(c.handle).unwrap();
        if c.next == NONE {
            assert_eq!(next, None);
        } else {
            assert_eq!(next, Some(chunks[c.next as usize].handle));
            held[c.next as usize] += 1;
            // get_next hands out a new reference (go-slab's GetNext): give it back.
            assert!(!arena.dec_ref(next.unwrap()).unwrap());
        }
    }
    for (k, c) in chunks.iter().enumerate() {
        for _ in 0..c.refs - 1 - held[k] {
            assert!(!arena.dec_ref(c.handle).unwrap(), "refcount of {k} too low");
        }
    }
    for (k, c) in chunks.iter().enumerate() {
        if held[k] == 1 {
            assert!(!arena.dec_ref(c.handle).unwrap(), "refcount of {k} too low");
        }
    }
    for (k, c) in chunks.iter().enumerate() {
        if held[k] == 0 {
            assert!(arena.dec_ref(c.handle).unwrap(), "refcount of {k} too high");
        }
    }
    for c in &chunks {
        assert!(arena.bytes(c.handle).is_err(), "chunk still live");
    }
    arena.check().unwrap();
    let region = arena.into_source();
    region.check().unwrap();
    region.flush().unwrap();
    chunks.len()
}

#[test]
#[ignore = "entry point of the child process spawned by the other tests"]
fn arena_child_entry() {
    let Ok(path) = std::env::var(ROLE) else {
        return;
    };
    let n = reopen_and_verify(Path::new(&path));
    println!("ARENA-CHILD-OK {n}");
}

#[test]
#[cfg_attr(miri, ignore)]
fn arena_in_file_region_survives_reopen() {
    let dir = scratch();
    let path = dir.path().join("arena.region");
    let chunks = build(&path);
    assert_eq!(expectations(&Region::open(&path).unwrap()), chunks);
    assert_eq!(reopen_and_verify(&path), chunks.len());
}

#[test]
#[cfg_attr(miri, ignore)]
fn arena_in_file_region_survives_reopen_in_a_child() {
    let dir = scratch();
    let path = dir.path().join("arena-child.region");
    let chunks = build(&path);
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["arena_child_entry", "--exact", "--ignored", "--nocapture"])
        .env(ROLE, &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("ARENA-CHILD-OK {}", chunks.len())),
        "{stdout}"
    );
    // The child's releases are in the file: here every chunk is gone too.
    let region = Region::open(&path).unwrap();
    let root = region.root("arena").unwrap();
    let arena = Arena::open_in(region, root.get()).unwrap();
    arena.check().unwrap();
    assert!(chunks.iter().all(|c| arena.bytes(c.handle).is_err()));
}

#[test]
fn arena_in_anonymous_region() {
    let region = Region::anonymous().unwrap();
    let mut arena = Arena::create_in(region, Config::new(8, 4096, 2.0)).unwrap();
    let hs: Vec<_> = (0..if cfg!(miri) { 40 } else { 1000u64 })
        .map(|i| {
            arena
                .alloc_from(&data(i % 50)[..1 + (i % 50) as usize])
                .unwrap()
        })
        .collect();
    for (i, h) in hs.iter().enumerate() {
        let d = data(i as u64 % 50);
        assert_eq!(&arena.bytes(*h).unwrap()[..1 + i % 50], &d[..1 + i % 50]);
        assert!(arena.dec_ref(*h).unwrap());
    }
    arena.check().unwrap();
    arena.into_source().check().unwrap();
}
