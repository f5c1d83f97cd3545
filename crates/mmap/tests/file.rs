//! File-backed regions: persistence, validation of untrusted files, give-back to the OS.
#![cfg(not(miri))]

mod common;

use common::*;
use offheap_mmap::{Error, Offset, Region, RegionOptions};
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};

#[test]
fn reopen_gives_back_every_block() {
    let dir = scratch();
    let path = dir.path().join("r.region");
    let stats_before;
    let blocks;
    {
        let r = Region::create(&path, &RegionOptions::new().initial_size(64 << 10)).unwrap();
        blocks = populate(&r, 500);
        // Free every third block so the free lists are non-trivial.
        for (i, &(off, _)) in blocks.iter().enumerate() {
            if i % 3 == 0 {
                r.free(off).unwrap();
            }
        }
        r.check().unwrap();
        r.flush().unwrap();
        stats_before = r.stats();
    }
    let r = Region::open(&path).unwrap();
    let report = r.check().unwrap();
    let s = r.stats();
    assert_eq!(s.in_use, stats_before.in_use);
    assert_eq!(s.free, stats_before.free);
    assert_eq!(s.allocations, stats_before.allocations);
    assert_eq!(report.allocations, stats_before.allocations);
    // Everything still referenced holds its bytes (the freed ones were in the table too;
    // verify only the live ones).
    for (i, &(off, len)) in blocks.iter().enumerate() {
        if i % 3 != 0 {
            assert!(holds(&r, off, len, off.get()));
        }
    }
    // The reopened allocator keeps working: free the rest, all coalesces to one run.
    for (i, &(off, _)) in blocks.iter().enumerate() {
        if i % 3 != 0 {
            r.free(off).unwrap();
        }
    }
    r.free(r.root("table").unwrap()).unwrap();
    let report = r.check().unwrap();
    assert_eq!((report.allocations, report.free_blocks), (0, 1));
}

#[test]
fn create_refuses_existing_and_open_or_create() {
    let dir = scratch();
    let path = dir.path().join("r.region");
    let opts = RegionOptions::new();
    {
        let r = Region::open_or_create(&path, &opts).unwrap();
        let a = r.alloc(10, 1).unwrap();
        r.set_root("a", Some(a)).unwrap();
    }
    match Region::create(&path, &opts) {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let r = Region::open_or_create(&path, &opts).unwrap();
    assert!(r.root("a").is_some());
    assert!(matches!(
        Region::open(dir.path().join("missing")),
        Err(Error::Io(_))
    ));
    // No temporary files are left behind.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// A valid file, its bytes, and a scratch dir.
fn valid_file() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let dir = scratch();
    let path = dir.path().join("v.region");
    {
        let r = Region::create(&path, &RegionOptions::new().initial_size(64 << 10)).unwrap();
        populate(&r, 20);
        r.flush().unwrap();
    }
    let bytes = fs::read(&path).unwrap();
    (dir, path, bytes)
}

/// Opens `bytes` written to a file and checks the file was not changed by the attempt.
fn open_bytes(dir: &tempfile::TempDir, bytes: &[u8]) -> Result<Region, Error> {
    let path = dir.path().join("mutant.region");
    fs::write(&path, bytes).unwrap();
    let r = Region::open(&path);
    if r.is_err() {
        assert_eq!(
            fs::read(&path).unwrap(),
            bytes,
            "a failed open changed the file"
        );
    }
    r
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn reseal(b: &mut [u8]) {
    let sum = xxhash_rust::xxh3::xxh3_64(&b[..120]);
    put_u64(b, 120, sum);
}

#[test]
fn untrusted_files_get_typed_errors() {
    let (dir, _path, good) = valid_file();
    assert!(open_bytes(&dir, &good).is_ok());
    assert!(matches!(open_bytes(&dir, &[]), Err(Error::Empty)));
    assert!(matches!(
        open_bytes(&dir, &good[..100]),
        Err(Error::Truncated { .. })
    ));
    assert!(matches!(
        open_bytes(&dir, &good[..4096]),
        Err(Error::Truncated { .. })
    ));
    assert!(matches!(
        open_bytes(&dir, &good[..good.len() - 4096]),
        Err(Error::Truncated { .. })
    ));
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(open_bytes(&dir, &b), Err(Error::BadMagic)));
    let mut b = good.clone();
    b[8..12].copy_from_slice(&0x0A0B_0C0Du32.swap_bytes().to_ne_bytes());
    assert!(matches!(open_bytes(&dir, &b), Err(Error::WrongEndianness)));
    let mut b = good.clone();
    b[12..14].copy_from_slice(&2u16.to_ne_bytes());
    assert!(matches!(
        open_bytes(&dir, &b),
        Err(Error::UnsupportedVersion { major: 2, .. })
    ));
    // A newer minor version of the same major opens.
    let mut b = good.clone();
    b[14..16].copy_from_slice(&7u16.to_ne_bytes());
    reseal(&mut b);
    assert!(open_bytes(&dir, &b).is_ok());
    let mut b = good.clone();
    b[64] ^= 1; // creation stamp, covered by the checksum
    assert!(matches!(
        open_bytes(&dir, &b),
        Err(Error::BadChecksum { .. })
    ));
    let mut b = good.clone();
    put_u64(&mut b, 24, 1 << 5); // unknown incompatible feature
    reseal(&mut b);
    assert!(matches!(
        open_bytes(&dir, &b),
        Err(Error::UnsupportedFeatures { unknown: 32 })
    ));
    let mut b = good.clone();
    put_u64(&mut b, 32, 1 << 9); // unknown compatible feature: fine
    reseal(&mut b);
    assert!(open_bytes(&dir, &b).is_ok());
    // Mutable fields out of range.
    for (at, v) in [
        (128usize, good.len() as u64 * 2), // size beyond the file
        (128, 12345),                      // size not page-aligned
        (136, 1 << 40),                    // last block beyond the end
        (144, 1 << 40),                    // in-use bytes
        (2048 + 8 * 200, 4096 + 16),       // a free-list head whose bitmap bit is clear
        (2048, 1 << 40),                   // free-list head beyond the end
        (512 + 24, 1 << 40),               // root offset beyond the end
    ] {
        let mut b = good.clone();
        put_u64(&mut b, at, v);
        let r = open_bytes(&dir, &b);
        assert!(
            matches!(r, Err(Error::Corrupt { .. } | Error::Truncated { .. })),
            "field {at} = {v}: {r:?}"
        );
    }
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

/// Exercises a (possibly corrupt) region: errors are fine, panics are not.
fn poke(r: &Region) {
    for i in 0..20 {
        if let Ok(o) = r.alloc(1 + i * 100, 8) {
            let _ = r.free(o);
        }
    }
    if let Some(t) = r.root("table") {
        let _ = r.free(t);
    }
}

#[test]
fn corrupt_block_headers_are_caught_by_check() {
    let (dir, _path, mut good) = valid_file();
    // Free a few blocks so there are free-list links to corrupt too.
    {
        let path = dir.path().join("holes.region");
        fs::write(&path, &good).unwrap();
        let r = Region::open(&path).unwrap();
        let blocks = verify(&r);
        for &(o, _) in blocks.iter().step_by(4) {
            r.free(o).unwrap();
        }
        r.check().unwrap();
        drop(r);
        good = fs::read(&path).unwrap();
    }
    // Every allocator word: block headers, and the links of free blocks.
    let size = get_u64(&good, 128) as usize;
    let mut words = Vec::new();
    let mut b = 4096;
    while b < size {
        let sf = get_u64(&good, b + 8);
        words.extend([b, b + 8]);
        if sf & 1 == 1 {
            words.extend([b + 16, b + 24]);
        }
        b += (sf & !15) as usize;
    }
    assert!(words.len() > 40);
    for &w in &words {
        let orig = get_u64(&good, w);
        for v in [
            0u64,
            1,
            0x10,
            0x20,
            orig ^ 0x10,
            orig ^ 1,
            orig + 4096,
            u64::MAX,
            1 << 40,
        ] {
            if v == orig {
                continue;
            }
            let mut m = good.clone();
            put_u64(&mut m, w, v);
            let r = open_bytes(&dir, &m).expect("header is intact");
            assert!(
                r.check().is_err(),
                "word {w:#x} = {v:#x} (was {orig:#x}) not detected"
            );
            poke(&r);
        }
    }
}

#[test]
fn random_data_corruption_never_panics() {
    let (dir, _path, good) = valid_file();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..300 {
        let mut m = good.clone();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (4096 + (x as usize % (m.len() - 4096 - 8))) & !7;
            let v = x.rotate_left(17) % (m.len() as u64 * 2);
            put_u64(&mut m, at, v);
        }
        let r = open_bytes(&dir, &m).expect("header is intact");
        let _ = r.check();
        poke(&r);
    }
}

#[test]
fn free_runs_go_back_to_the_filesystem() {
    let dir = scratch();
    let path = dir.path().join("big.region");
    let r = Region::create(&path, &RegionOptions::new()).unwrap();
    let blocks: Vec<_> = (0..256).map(|_| r.alloc(64 << 10, 16).unwrap()).collect();
    for &o in &blocks {
        let p = r.ptr(o, 64 << 10).unwrap();
        // SAFETY: live allocation of 64 KiB.
        unsafe { p.as_ptr().write_bytes(0xAB, 64 << 10) };
    }
    r.flush().unwrap();
    let full = fs::metadata(&path).unwrap().blocks() * 512;
    assert!(full >= 16 << 20, "footprint {full}");
    for o in blocks {
        r.free(o).unwrap();
    }
    r.flush().unwrap();
    let after = fs::metadata(&path).unwrap().blocks() * 512;
    assert!(after < full / 8, "footprint {full} -> {after}");
    assert_eq!(r.stats().file_bytes, Some(after));
    // The region is still consistent and usable after the holes were punched.
    r.check().unwrap();
    let o = r.alloc(1 << 20, 16).unwrap();
    fill(&r, o, 1 << 20, 3);
    assert!(holds(&r, o, 1 << 20, 3));
    drop(r);
    let r = Region::open(&path).unwrap();
    assert!(holds(&r, o, 1 << 20, 3));
    r.check().unwrap();
}

#[test]
fn free_runs_go_back_to_the_os_for_anonymous_regions() {
    let r = Region::anonymous().unwrap();
    let len = 4u64 << 20;
    let o = r.alloc(len, 4096).unwrap();
    let _keep = r.alloc(16, 16).unwrap(); // so the block is not the tail
    let p = r.ptr(o, len).unwrap();
    // SAFETY: live allocation of `len` bytes.
    unsafe { p.as_ptr().write_bytes(1, len as usize) };
    let resident = |p: *mut u8, len: u64| {
        let pages = (len / 4096) as usize;
        let mut v = vec![0u8; pages];
        // SAFETY: p..p+len is mapped; v has one byte per page.
        let rc = unsafe { libc::mincore(p.cast(), len as usize, v.as_mut_ptr()) };
        assert_eq!(rc, 0);
        v.iter().filter(|&&b| b & 1 == 1).count()
    };
    assert_eq!(resident(p.as_ptr(), len), (len / 4096) as usize);
    r.free(o).unwrap();
    assert!(resident(p.as_ptr(), len) <= 2);
    r.check().unwrap();
}

#[test]
fn open_is_independent_of_data_and_does_not_write() {
    let dir = scratch();
    let path = dir.path().join("sparse.region");
    {
        let r = Region::create(&path, &RegionOptions::new()).unwrap();
        // A 1 GiB allocation grows the (sparse) file without touching its pages.
        let o = r.alloc(1 << 30, 16).unwrap();
        r.set_root("big", Some(o)).unwrap();
    }
    let f = fs::File::open(&path).unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    let mut head = vec![0u8; 4096];
    f.read_exact_at(&mut head, 0).unwrap();
    let r = Region::open(&path).unwrap();
    assert!(r.mapped_len() > 1 << 30);
    assert!(r.root("big").is_some());
    drop(r);
    let mut after = vec![0u8; 4096];
    f.read_exact_at(&mut after, 0).unwrap();
    assert_eq!(head, after);
    assert_eq!(f.metadata().unwrap().modified().unwrap(), mtime);
    let _ = Offset::new(1);
}
