//! `Region::prefault`: it faults in the pages that the next fresh allocations will take,
//! one per call, no further than asked, without changing a byte; checked with `mincore`.
#![cfg(not(miri))]

mod common;

use common::scratch;
use offheap_mmap::{Region, RegionOptions};
use std::os::unix::fs::FileExt;

const PAGE: u64 = 4096;

/// Whether each page of `len` bytes at offset `from` (page aligned) of `r` is resident.
fn resident(r: &Region, from: u64, len: u64) -> Vec<bool> {
    assert_eq!(from % PAGE, 0);
    let pages = len.div_ceil(PAGE) as usize;
    let mut v = vec![0u8; pages];
    // SAFETY: the range lies inside the region's mapping (the callers stay below its
    // mapped length); mincore only reads the page tables.
    let rc = unsafe {
        libc::mincore(
            r.base().add(from as usize).cast(),
            len as usize,
            v.as_mut_ptr().cast(),
        )
    };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    v.iter().map(|b| b & 1 == 1).collect()
}

/// Runs the checks on a fresh region, whose last (free) block starts right after a small
/// allocation.
fn check_prefault(r: &Region, ahead: u64) {
    assert!(r.mapped_len() >= 1 << 20);
    // The last block, free, starts right after this allocation: the first page after the
    // allocation's own page is fresh.
    let small = r.alloc(16, 8).unwrap().get();
    let first = (small + 64).next_multiple_of(PAGE);
    let window = 32 * PAGE;
    assert!(
        resident(r, first, window).iter().all(|&x| !x),
        "fresh pages already resident"
    );
    let mut calls = 0;
    while r.prefault(ahead) {
        calls += 1;
        assert!(calls <= ahead / PAGE, "more pages than asked for");
    }
    assert!(
        calls + 2 >= ahead / PAGE,
        "{calls} pages of {} asked for",
        ahead / PAGE
    );
    let res = resident(r, first, window);
    let n_res = res.iter().filter(|&&x| x).count() as u64;
    assert_eq!(n_res, calls, "resident pages {res:?}");
    assert!(
        res[..calls as usize].iter().all(|&x| x),
        "not the first pages: {res:?}"
    );
    // Nothing was written: the fresh memory still reads as zeros.
    // SAFETY: inside the mapping; nothing else uses the region.
    let bytes =
        unsafe { std::slice::from_raw_parts(r.base().add(first as usize), window as usize) };
    assert!(bytes.iter().all(|&b| b == 0), "prefault changed a byte");
    // Done until the allocator takes some of it: then it goes on from where it stopped.
    assert!(!r.prefault(ahead));
    let big = r.alloc(ahead / 2, 8).unwrap().get();
    assert!(
        big > small && big < first + ahead,
        "the block came from elsewhere: {big}"
    );
    assert!(
        r.prefault(ahead),
        "no further page after an allocation took half"
    );
    assert!(
        resident(r, first, window)[calls as usize],
        "the next page is not resident"
    );
    r.check().unwrap();
}

#[test]
fn anonymous_prefault_faults_in_the_next_fresh_pages_and_no_more() {
    let r = Region::anonymous_with(&RegionOptions::new().huge_pages(false)).unwrap();
    if !offheap_testkit::kernel_populates() {
        assert!(
            !r.prefault(64 << 10),
            "no MADV_POPULATE_WRITE, yet it did something"
        );
        return;
    }
    check_prefault(&r, 64 << 10);
}

#[test]
fn file_prefault_faults_in_pages_without_changing_the_file() {
    let dir = scratch();
    let path = dir.path().join("r.region");
    let r = Region::create(&path, &RegionOptions::new().initial_size(1 << 20)).unwrap();
    if !offheap_testkit::kernel_populates() {
        assert!(!r.prefault(64 << 10));
        return;
    }
    let file = std::fs::File::open(&path).unwrap();
    let len = file.metadata().unwrap().len();
    let mut before = vec![0u8; len as usize];
    file.read_exact_at(&mut before, 0).unwrap();
    check_prefault(&r, 64 << 10);
    r.flush().unwrap();
    let mut after = vec![0u8; len as usize];
    file.read_exact_at(&mut after, 0).unwrap();
    // The allocations in `check_prefault` wrote their block headers and the allocator's
    // bookkeeping; compare beyond the last of them.
    let tail = (1 << 20) - (512 << 10);
    assert_eq!(
        before[tail..],
        after[tail..],
        "the file's free memory changed"
    );
}

#[test]
fn a_region_with_huge_pages_does_not_prefault() {
    let r = Region::anonymous_with(&RegionOptions::new().huge_pages(true)).unwrap();
    // (Where the kernel has no transparent huge pages the region does not ask for them.)
    if r.huge_pages() {
        assert!(!r.prefault(64 << 10));
    }
}
