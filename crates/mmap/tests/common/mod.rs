//! Helpers shared by the integration tests.
#![allow(dead_code)]

use offheap_mmap::{Offset, Region};

/// A scratch directory on tmpfs when there is one (it punches holes and is fast).
pub fn scratch() -> tempfile::TempDir {
    offheap_testkit::scratch_dir()
}

/// Writes a deterministic pattern of `len` bytes seeded by `seed` at `off`.
pub fn fill(r: &Region, off: Offset, len: u64, seed: u64) {
    let p = r.ptr(off, len).unwrap();
    for i in 0..len {
        // SAFETY: `off..off+len` is a live allocation.
        unsafe { p.as_ptr().add(i as usize).write(pattern(seed, i)) };
    }
}

/// `true` if the bytes at `off` still hold the pattern for `seed`.
pub fn holds(r: &Region, off: Offset, len: u64, seed: u64) -> bool {
    let p = r.ptr(off, len).unwrap();
    // SAFETY: `off..off+len` is a live allocation.
    (0..len).all(|i| unsafe { p.as_ptr().add(i as usize).read() } == pattern(seed, i))
}

pub fn pattern(seed: u64, i: u64) -> u8 {
    (seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(i * 31)
        >> 7) as u8
}

/// Allocates `n` blocks of varied sizes with patterns and records them in an in-region
/// table under root "table": [count, (offset, len) * n].
pub fn populate(r: &Region, n: u64) -> Vec<(Offset, u64)> {
    let mut v = Vec::new();
    for i in 0..n {
        let len = 1 + (i * 977) % 3000;
        let off = r.alloc(len, 1 << (i % 7)).unwrap();
        fill(r, off, len, off.get());
        v.push((off, len));
    }
    let table = r.alloc(8 + 16 * n, 8).unwrap();
    let p = r.ptr(table, 8 + 16 * n).unwrap().as_ptr().cast::<u64>();
    // SAFETY: the table allocation holds 1 + 2n u64s, 8-aligned.
    unsafe {
        p.write(n);
        for (i, &(off, len)) in v.iter().enumerate() {
            p.add(1 + 2 * i).write(off.get());
            p.add(2 + 2 * i).write(len);
        }
    }
    r.set_root("table", Some(table)).unwrap();
    v
}

/// Reads the table written by [`populate`] and verifies every block's contents.
pub fn verify(r: &Region) -> Vec<(Offset, u64)> {
    let table = r.root("table").expect("root 'table'");
    let n = {
        let p = r.ptr(table, 8).unwrap().as_ptr().cast::<u64>();
        // SAFETY: the table starts with its count.
        unsafe { p.read() }
    };
    let p = r.ptr(table, 8 + 16 * n).unwrap().as_ptr().cast::<u64>();
    let mut v = Vec::new();
    for i in 0..n as usize {
        // SAFETY: inside the table.
        let (off, len) = unsafe { (p.add(1 + 2 * i).read(), p.add(2 + 2 * i).read()) };
        let off = Offset::new(off).unwrap();
        assert!(
            holds(r, off, len, off.get()),
            "block {i} at {off:?} lost its contents"
        );
        v.push((off, len));
    }
    v
}
