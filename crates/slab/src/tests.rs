//! Unit tests, the model-based property tests, relocation and corruption tests.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use proptest::prelude::*;

use crate::*;

fn arena(start: usize, slab: usize, gf: f64, release: ReleasePolicy) -> Arena {
    Arena::with_config(Config {
        release,
        ..Config::new(start, slab, gf)
    })
    .unwrap()
}

/// A source that fails when told to, or when a byte budget is spent.
struct Flaky {
    inner: HeapSource,
    fail: Rc<Cell<bool>>,
    budget: Rc<Cell<usize>>,
}

impl Flaky {
    fn new() -> (Self, Rc<Cell<bool>>, Rc<Cell<usize>>) {
        let fail = Rc::new(Cell::new(false));
        let budget = Rc::new(Cell::new(usize::MAX));
        (
            Flaky {
                inner: HeapSource::new(),
                fail: fail.clone(),
                budget: budget.clone(),
            },
            fail,
            budget,
        )
    }
}

// SAFETY: forwards to `HeapSource`, refusing some allocations.
unsafe impl SlabSource for Flaky {
    fn alloc(&mut self, size: usize, align: usize) -> Option<u64> {
        if self.fail.get() || self.budget.get() < size {
            return None;
        }
        self.budget.set(self.budget.get() - size);
        self.inner.alloc(size, align)
    }
    unsafe fn free(&mut self, off: u64, size: usize, align: usize) {
        self.budget.set(self.budget.get().saturating_add(size));
        // SAFETY: forwarded.
        unsafe { self.inner.free(off, size, align) }
    }
    fn ptr(&self, off: u64) -> *mut u8 {
        self.inner.ptr(off)
    }
    fn contains(&self, off: u64, len: usize) -> bool {
        self.inner.contains(off, len)
    }
}

// ---------------------------------------------------------------- unit tests

#[test]
fn alloc_picks_first_class_large_enough() {
    let mut a = arena(1, 64, 1.5, ReleasePolicy::Never);
    // classes 1,2,3,5,8,12,18,27,41,62,93
    for (len, class_size) in [(0, 1), (1, 1), (4, 5), (5, 5), (13, 18), (42, 62), (64, 93)] {
        let h = a.alloc(len).unwrap();
        assert_eq!(a.len(h).unwrap(), len);
        assert_eq!(a.bytes(h).unwrap().len(), len);
        let st = a.stats().unwrap();
        let c = st.classes.iter().find(|c| c.in_use > 0).unwrap();
        assert_eq!(c.chunk_size, class_size, "len {len}");
        assert!(a.dec_ref(h).unwrap());
    }
    // Classes are created lazily, in order, up to the one needed.
    assert_eq!(a.stats().unwrap().classes.len(), 11);
    assert_eq!(
        a.class_sizes().collect::<Vec<_>>(),
        [1, 2, 3, 5, 8, 12, 18, 27, 41, 62, 93]
    );
}

#[test]
fn large_lengths_use_binary_search() {
    let mut a = arena(48, 1 << 20, 2.0, ReleasePolicy::Never);
    for len in [1023, 1024, 1025, 1536, 3000, 4096, 65537, 1 << 20] {
        let h = a.alloc(len).unwrap();
        let st = a.stats().unwrap();
        let c = st.classes.iter().find(|c| c.in_use > 0).unwrap();
        let want = a.class_sizes().find(|&s| s >= len).unwrap();
        assert_eq!(c.chunk_size, want, "len {len}");
        a.bytes_mut(h).unwrap().fill(0xab);
        assert!(a.dec_ref(h).unwrap());
    }
    a.check().unwrap();
}

#[test]
fn too_big_is_counted_and_allocates_nothing() {
    let mut a = Arena::new(16, 100, 2.0).unwrap();
    assert_eq!(a.alloc(101), Err(Error::TooBig { len: 101, max: 100 }));
    assert_eq!(
        a.alloc(usize::MAX),
        Err(Error::TooBig {
            len: usize::MAX,
            max: 100
        })
    );
    let st = a.stats().unwrap();
    assert_eq!(
        (st.too_big_errs, st.allocs, st.mallocs, st.slabs),
        (2, 0, 0, 0)
    );
    // Equal to the slab size is allowed; the last class (128) is wider than a slab.
    let h = a.alloc(100).unwrap();
    assert_eq!(a.len(h).unwrap(), 100);
    let st = a.stats().unwrap();
    assert_eq!(st.classes.last().unwrap().chunk_size, 128);
    assert_eq!(st.classes.last().unwrap().chunks_per_slab, 1);
    let z = a.alloc(0).unwrap();
    assert_eq!(a.bytes(z).unwrap(), &[] as &[u8]);
    a.check().unwrap();
}

#[test]
fn invalid_params_are_rejected() {
    for (s, slab, gf) in [
        (0, 10, 2.0),
        (10, 5, 2.0),
        (1, 10, 1.0),
        (1, 10, 0.9),
        (1, 10, f64::NAN),
        (1, MAX_SLAB_SIZE * 2, 2.0),
    ] {
        assert!(matches!(
            Arena::new(s, slab, gf),
            Err(Error::InvalidConfig(_))
        ));
    }
}

#[test]
fn refcounts() {
    let mut a = Arena::new(48, 4096, 2.0).unwrap();
    let h = a.alloc(64).unwrap();
    assert_eq!(a.refcount(h).unwrap(), 1);
    a.add_ref(h).unwrap();
    a.add_ref(h).unwrap();
    assert_eq!(a.refcount(h).unwrap(), 3);
    assert!(!a.dec_ref(h).unwrap());
    assert!(!a.dec_ref(h).unwrap());
    assert!(a.owns(h));
    assert!(a.dec_ref(h).unwrap());
    assert!(!a.owns(h));
    let st = a.stats().unwrap();
    assert_eq!(
        (st.allocs, st.add_refs, st.dec_refs, st.dec_ref_zeroes),
        (1, 2, 3, 1)
    );
}

#[test]
fn refcount_overflow_is_refused() {
    let mut a = Arena::new(8, 64, 2.0).unwrap();
    let h = a.alloc(8).unwrap();
    let n = a.alloc(8).unwrap();
    a.set_refcount_for_test(h, u32::MAX);
    assert_eq!(a.add_ref(h), Err(Error::RefcountOverflow));
    assert_eq!(a.set_next(n, Some(h)), Err(Error::RefcountOverflow));
    assert_eq!(a.refcount(h).unwrap(), u32::MAX);
    assert_eq!(a.peek_next(n).unwrap(), None);
    a.set_refcount_for_test(h, 1);
    a.set_next(n, Some(h)).unwrap();
    a.set_refcount_for_test(h, u32::MAX);
    assert_eq!(a.get_next(n), Err(Error::RefcountOverflow));
    a.set_refcount_for_test(h, 2);
    assert_eq!(a.stats().unwrap().errors.refcount_overflow, 3);
    a.check().unwrap();
}

#[test]
fn stale_double_release_and_reuse() {
    let mut a = Arena::new(48, 4096, 2.0).unwrap();
    let h = a.alloc(10).unwrap();
    assert!(a.dec_ref(h).unwrap());
    let before = a.stats().unwrap();
    assert_eq!(a.dec_ref(h), Err(Error::StaleHandle));
    assert_eq!(a.add_ref(h), Err(Error::StaleHandle));
    assert_eq!(a.bytes(h), Err(Error::StaleHandle));
    assert_eq!(a.get_next(h), Err(Error::StaleHandle));
    // The slot is reused by the next alloc; the old handle stays stale.
    let h2 = a.alloc(10).unwrap();
    assert_eq!(
        (h2.slab_index(), h2.chunk_index()),
        (h.slab_index(), h.chunk_index())
    );
    assert_ne!(h2.generation(), h.generation());
    assert_eq!(a.dec_ref(h), Err(Error::StaleHandle));
    assert_eq!(a.write(h, 0, b"x"), Err(Error::StaleHandle));
    assert_eq!(a.refcount(h2).unwrap(), 1);
    let after = a.stats().unwrap();
    assert_eq!(after.errors.stale_handle, before.errors.stale_handle + 5);
    assert_eq!(after.dec_refs, before.dec_refs);
    a.check().unwrap();
}

#[test]
fn foreign_and_invalid_handles() {
    let mut a = Arena::new(48, 4096, 2.0).unwrap();
    let mut b = Arena::new(48, 4096, 2.0).unwrap();
    let ha = a.alloc(10).unwrap();
    let hb = b.alloc(10).unwrap();
    assert_eq!(
        (ha.slab_index(), ha.chunk_index()),
        (hb.slab_index(), hb.chunk_index())
    );
    assert_eq!(a.dec_ref(hb), Err(Error::ForeignHandle));
    assert_eq!(b.bytes(ha), Err(Error::ForeignHandle));
    assert!(!a.owns(hb));
    let bits = ha.to_bits();
    assert_eq!(Handle::from_bits(bits), ha);
    let forged = Handle::from_bits(bits + (1 << 40)); // slab index + 256
    assert_eq!(a.add_ref(forged), Err(Error::InvalidHandle));
    let forged = Handle::from_bits(bits + 5); // chunk never handed out
    assert_eq!(a.add_ref(forged), Err(Error::StaleHandle));
    assert_eq!(a.refcount(ha).unwrap(), 1);
    let st = a.stats().unwrap();
    assert_eq!(
        (
            st.errors.foreign_handle,
            st.errors.invalid_handle,
            st.errors.stale_handle
        ),
        (1, 1, 1)
    );
    assert!(format!("{ha:?}").starts_with("Handle(slab 0, chunk 0"));
}

#[test]
fn bytes_and_ranges() {
    let mut a = Arena::new(16, 1024, 2.0).unwrap();
    let h = a.alloc_from(b"hello, world").unwrap();
    assert_eq!(a.bytes(h).unwrap(), b"hello, world");
    a.write(h, 7, b"arena").unwrap();
    let mut buf = [0u8; 5];
    a.read(h, 7, &mut buf).unwrap();
    assert_eq!(&buf, b"arena");
    assert_eq!(
        a.write(h, 10, b"xyz"),
        Err(Error::OutOfBounds {
            offset: 10,
            len: 3,
            chunk_len: 12
        })
    );
    assert_eq!(
        a.read(h, usize::MAX, &mut buf),
        Err(Error::OutOfBounds {
            offset: usize::MAX,
            len: 5,
            chunk_len: 12
        })
    );
    a.write(h, 12, b"").unwrap();
    assert_eq!(a.bytes(h).unwrap(), b"hello, arena");
    a.bytes_mut(h).unwrap()[0] = b'H';
    assert_eq!(a.bytes(h).unwrap(), b"Hello, arena");
    assert_eq!(a.stats().unwrap().errors.out_of_bounds, 1);
    assert!(Error::OutOfBounds {
        offset: 10,
        len: 3,
        chunk_len: 12
    }
    .to_string()
    .contains("10..13"));
}

#[test]
fn chains_follow_go_slab_refcount_rules() {
    let mut a = Arena::new(48, 1 << 16, 2.0).unwrap();
    let x = a.alloc(100).unwrap();
    let y = a.alloc(200).unwrap();
    let z = a.alloc(300).unwrap();
    a.set_next(x, Some(y)).unwrap();
    assert_eq!(a.refcount(y).unwrap(), 2);
    assert_eq!(a.get_next(y).unwrap(), None);
    let n = a.get_next(x).unwrap().unwrap();
    assert_eq!(n, y);
    assert_eq!(a.refcount(y).unwrap(), 3);
    a.dec_ref(n).unwrap();
    // Replacing the next releases the old one.
    a.set_next(x, Some(z)).unwrap();
    assert_eq!(a.refcount(y).unwrap(), 1);
    assert_eq!(a.refcount(z).unwrap(), 2);
    // Setting the same next again keeps counts.
    a.set_next(x, Some(z)).unwrap();
    assert_eq!(a.refcount(z).unwrap(), 2);
    a.set_next(z, Some(y)).unwrap();
    // Cycles are refused: self, two, three.
    assert_eq!(a.set_next(x, Some(x)), Err(Error::Cycle));
    assert_eq!(a.set_next(z, Some(x)), Err(Error::Cycle));
    assert_eq!(a.set_next(y, Some(x)), Err(Error::Cycle));
    assert_eq!(a.stats().unwrap().errors.cycle, 3);
    assert_eq!(a.len(z).unwrap(), 300);
    assert_eq!(a.peek_next(x).unwrap(), Some(z));
    a.dec_ref(y).unwrap();
    a.dec_ref(z).unwrap();
    // x holds z holds y: releasing x frees all three.
    assert!(a.dec_ref(x).unwrap());
    for h in [x, y, z] {
        assert!(!a.owns(h));
    }
    let st = a.stats().unwrap();
    assert_eq!(st.dec_ref_zeroes, 3);
    assert_eq!(st.in_use(), 0);
    let w = a.alloc(1).unwrap();
    a.set_next(w, None).unwrap();
    a.check().unwrap();
}

#[test]
fn set_next_none_releases_old_next() {
    let mut a = Arena::new(8, 256, 2.0).unwrap();
    let x = a.alloc(8).unwrap();
    let y = a.alloc(8).unwrap();
    a.set_next(x, Some(y)).unwrap();
    assert!(a.dec_ref(y).is_ok());
    a.set_next(x, None).unwrap();
    assert!(!a.owns(y));
    assert_eq!(a.get_next(x).unwrap(), None);
    a.check().unwrap();
}

#[test]
fn long_chain_is_released_iteratively() {
    let n: usize = if cfg!(miri) { 1_000 } else { 1_000_000 };
    let mut a = Arena::new(16, 1 << 20, 2.0).unwrap();
    let head = a.alloc(16).unwrap();
    let mut tail = head;
    for i in 1..n {
        let c = a.alloc(16).unwrap();
        a.bytes_mut(c).unwrap()[0] = i as u8;
        a.set_next(tail, Some(c)).unwrap();
        a.dec_ref(c).unwrap();
        tail = c;
    }
    assert_eq!(a.stats().unwrap().in_use(), n);
    if n <= 1_000 {
        a.check().unwrap();
    }
    assert!(a.dec_ref(head).unwrap());
    let st = a.stats().unwrap();
    assert_eq!(st.in_use(), 0);
    assert_eq!(st.dec_ref_zeroes, n as u64);
    assert!(!a.owns(tail));
}

#[test]
fn release_policy_moves_memory_between_classes() {
    for (policy, kept) in [
        (ReleasePolicy::Never, 4),
        (ReleasePolicy::KeepEmpty(1), 1),
        (ReleasePolicy::Always, 0),
    ] {
        let mut a = arena(64, 256, 2.0, policy);
        // 4 slabs of the 64-byte class (4 chunks each).
        let hs: Vec<_> = (0..16).map(|_| a.alloc(64).unwrap()).collect();
        assert_eq!(a.stats().unwrap().slabs, 4);
        for h in &hs {
            a.dec_ref(*h).unwrap();
        }
        let st = a.stats().unwrap();
        assert_eq!(st.slabs, kept, "{policy:?}");
        assert_eq!(st.slab_frees, 4 - kept as u64);
        assert_eq!(st.classes[0].empty_slabs, kept);
        a.check().unwrap();
        // Stale handles stay stale after slot reuse by another class.
        let big: Vec<_> = (0..4).map(|_| a.alloc(256).unwrap()).collect();
        for h in &hs {
            assert_eq!(a.refcount(*h), Err(Error::StaleHandle));
        }
        for h in &big {
            assert_eq!(a.refcount(*h).unwrap(), 1);
        }
        a.check().unwrap();
        let bytes_before = a.source().live_bytes();
        for h in big {
            a.dec_ref(h).unwrap();
        }
        if policy == ReleasePolicy::Always {
            assert!(a.source().live_bytes() < bytes_before);
            assert_eq!(a.stats().unwrap().slabs, 0);
        }
        a.check().unwrap();
    }
}

#[test]
fn generation_floor_survives_slot_reuse() {
    let mut a = arena(8, 8, 2.0, ReleasePolicy::Always);
    let mut old = Vec::new();
    for _ in 0..50 {
        let h = a.alloc(8).unwrap();
        assert_eq!(h.slab_index(), 0);
        old.push(h);
        a.dec_ref(h).unwrap();
        for o in &old {
            assert!(!a.owns(*o));
        }
    }
    let gens: Vec<u32> = old.iter().map(|h| h.generation()).collect();
    assert!(gens.windows(2).all(|w| w[0] < w[1]), "{gens:?}");
}

#[test]
fn out_of_memory_is_typed_counted_and_recoverable() {
    let (src, fail, budget) = Flaky::new();
    let mut a = Arena::create_in(src, Config::new(64, 1024, 2.0)).unwrap();
    let h = a.alloc(64).unwrap();
    fail.set(true);
    // Served from the existing slab: no source call.
    let h2 = a.alloc(64).unwrap();
    assert_eq!(a.alloc(512), Err(Error::OutOfMemory));
    let st = a.stats().unwrap();
    assert_eq!((st.malloc_errs, st.allocs), (1, 2));
    fail.set(false);
    budget.set(2000);
    let big = a.alloc(512).unwrap();
    assert_eq!(a.alloc(1000), Err(Error::OutOfMemory));
    for x in [h, h2, big] {
        a.dec_ref(x).unwrap();
    }
    a.check().unwrap();
    assert!(matches!(
        Arena::create_in(Flaky::new().0, Config::new(0, 1, 2.0)),
        Err(Error::InvalidConfig(_))
    ));
    let (src, fail, _) = Flaky::new();
    fail.set(true);
    assert_eq!(
        Arena::create_in(src, Config::default()).unwrap_err(),
        Error::OutOfMemory
    );
}

#[test]
fn reopen_in_borrowed_heap_source() {
    let mut src = HeapSource::new();
    let (root, h) = {
        let mut a = Arena::create_in(&mut src, Config::new(32, 4096, 2.0)).unwrap();
        let h = a.alloc_from(b"persisted").unwrap();
        (a.root(), h)
    };
    let a = Arena::open_in(&mut src, root).unwrap();
    assert_eq!(a.bytes(h).unwrap(), b"persisted");
    assert_eq!(a.config().slab_size, 4096);
    a.check().unwrap();
    drop(a);
    assert!(matches!(
        Arena::open_in(&mut src, root + 8),
        Err(Error::Corrupt(_))
    ));
    assert!(Arena::open_in(&mut src, 12345).is_err());
    assert!(Arena::open_in(HeapSource::new(), root).is_err());
    // A block that is not a header.
    let blk = src.alloc(4096, 64).unwrap();
    assert_eq!(
        Arena::open_in(&mut src, blk).unwrap_err(),
        Error::NotAnArena
    );
}

#[test]
fn stats_display_is_a_table() {
    let mut a = Arena::new(48, 1 << 16, 2.0).unwrap();
    let _h = a.alloc(100).unwrap();
    let s = a.stats().unwrap().to_string();
    assert!(s.contains("chunk size"));
    assert!(s.contains("allocs"));
    assert!(s.lines().any(|l| l.trim_start().starts_with("192")));
}

#[test]
fn corrupt_header_fields_give_typed_errors() {
    let mut a = Arena::create_in(BufSource::new(1 << 16), Config::new(8, 256, 2.0)).unwrap();
    let h = a.alloc_from(b"abc").unwrap();
    let root = a.root() as usize;
    let bytes = a.into_source().as_bytes().to_vec();
    let open = |patch: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        patch(&mut b);
        Arena::open_in(BufSource::from_bytes(&b), root as u64)
    };
    assert_eq!(open(&|b| b[root] ^= 1).unwrap_err(), Error::NotAnArena);
    assert_eq!(
        open(&|b| b[root + 8] = 9).unwrap_err(),
        Error::UnsupportedVersion(9)
    );
    // slab_size (offset 24) changed: the check value catches it.
    assert!(matches!(
        open(&|b| b[root + 24] ^= 4),
        Err(Error::Corrupt(_))
    ));
    // slab table offset (72) beyond the buffer.
    assert!(matches!(
        open(&|b| b[root + 79] = 0x7f),
        Err(Error::Corrupt(_))
    ));
    // slab_len (84) > slab_cap.
    assert!(matches!(
        open(&|b| b[root + 85] = 0x7f),
        Err(Error::Corrupt(_))
    ));
    assert!(matches!(
        Arena::open_in(BufSource::from_bytes(&bytes), 1 << 40),
        Err(Error::Corrupt(_))
    ));
    // The slab's block offset (first record of the slab table) pointing outside.
    let a = open(&|_| {}).unwrap();
    assert_eq!(a.bytes(h).unwrap(), b"abc");
    let table = a.header().slab_table as usize;
    drop(a);
    let mut a = open(&|b| b[table + 6] = 0x7f).unwrap();
    assert!(matches!(a.bytes(h), Err(Error::Corrupt(_))));
    assert!(matches!(a.dec_ref(h), Err(Error::Corrupt(_))));
    assert!(matches!(a.check(), Err(Error::Corrupt(_))));
    assert_eq!(a.stats().unwrap().errors.corrupt, 1);
}

/// The slab counters lie in the arena's memory: at their largest (which no single-byte
/// change reaches), adding a slab saturates them instead of overflowing, and `check`
/// reports them. (The fuzz target `slab_ops` found `slabs + 1` overflowing.)
#[test]
fn counters_at_their_largest_never_overflow() {
    use core::mem::offset_of;
    let mut a = Arena::create_in(BufSource::new(1 << 16), Config::new(8, 64, 2.0)).unwrap();
    let h = a.alloc(8).unwrap();
    let root = a.root() as usize;
    let (classes, count) = (
        a.header().class_table as usize,
        a.header().class_count as usize,
    );
    let mut bytes = a.into_source().as_bytes().to_vec();
    let put = |b: &mut Vec<u8>, at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    for c in 0..count {
        let rec = classes + c * size_of::<crate::layout::ClassRec>();
        put(
            &mut bytes,
            rec + offset_of!(crate::layout::ClassRec, slabs),
            &[0xff; 4],
        );
        put(
            &mut bytes,
            rec + offset_of!(crate::layout::ClassRec, empty_slabs),
            &[0xff; 4],
        );
    }
    put(
        &mut bytes,
        root + offset_of!(crate::layout::Header, live_slabs),
        &[0xff; 4],
    );
    put(
        &mut bytes,
        root + offset_of!(crate::layout::Header, total_chunks),
        &[0xff; 8],
    );
    let mut a = Arena::open_in(BufSource::from_bytes(&bytes), root as u64).unwrap();
    assert!(a.check().is_err(), "the counters disagree with the slabs");
    // New slabs of every class: 64-byte slabs hold few chunks.
    let mut hs = Vec::new();
    for len in [1, 8, 16, 30, 60].into_iter().cycle().take(60) {
        if let Ok(h) = a.alloc(len) {
            hs.push(h);
        }
    }
    assert!(hs.len() > 10, "{} allocations", hs.len());
    assert_eq!(a.header().live_slabs, u32::MAX);
    assert_eq!(a.header().total_chunks, u64::MAX);
    for h in hs {
        let _ = a.dec_ref(h);
    }
    let _ = a.dec_ref(h);
    assert!(a.check().is_err());
}

/// A header whose class table lies in memory the source has not handed out (a corrupt
/// arena): growing the table gets a new block that overlaps the "old" one, and the move is
/// refused (`Corrupt`) instead of copying between overlapping ranges, which is undefined
/// behaviour for `copy_nonoverlapping` (the fuzz target `slab_ops` made such an arena).
#[test]
fn a_table_that_overlaps_a_new_block_is_corrupt_not_copied() {
    use core::mem::offset_of;
    let mut a = Arena::create_in(BufSource::new(1 << 16), Config::new(8, 4096, 1.25)).unwrap();
    let h = a.alloc(8).unwrap();
    assert!(a.header().class_cap >= 8);
    let root = a.root() as usize;
    let cap = a.header().class_cap;
    let src = a.into_source();
    // Where the source's next block goes: its bump top, rounded up to the block alignment.
    let next = src.used().next_multiple_of(crate::layout::BLOCK_ALIGN) as u64;
    let mut bytes = src.as_bytes().to_vec();
    let at = root + offset_of!(crate::layout::Header, class_table);
    bytes[at..at + 8].copy_from_slice(&next.to_ne_bytes());
    let mut a = Arena::open_in(BufSource::from_bytes(&bytes), root as u64).unwrap();
    assert_eq!(a.header().class_cap, cap);
    // A class past the table's capacity: the table must grow.
    assert!(matches!(a.alloc(4000), Err(Error::Corrupt(_))));
    // The arena is still usable where its memory is sound, and the new block went back.
    assert_eq!(a.bytes(h).unwrap().len(), 8);
    assert_eq!(a.into_source().used(), src_used(&bytes));
}

/// The bump top that a `BufSource` image records (its `used()`).
fn src_used(bytes: &[u8]) -> usize {
    BufSource::from_bytes(bytes).used()
}

/// Every single-byte corruption of a small arena's memory: open, check, and operate without
/// panicking (errors are fine).
#[test]
fn single_byte_corruption_never_panics() {
    let mut a = Arena::create_in(BufSource::new(1 << 14), Config::new(8, 64, 2.0)).unwrap();
    let mut hs = Vec::new();
    for i in 0..12 {
        let h = a.alloc(3 + i * 5).unwrap();
        a.bytes_mut(h).unwrap().fill(i as u8);
        if let Some(&p) = hs.last() {
            a.set_next(p, Some(h)).unwrap();
        }
        hs.push(h);
    }
    a.dec_ref(hs[3]).unwrap();
    let root = a.root();
    let src = a.into_source();
    let used = src.used();
    let bytes = src.as_bytes().to_vec();
    let step = if cfg!(miri) { 127 } else { 1 };
    for pos in (0..used).step_by(step) {
        for v in [0x00u8, 0xff, bytes[pos] ^ 0x01] {
            let mut b = bytes.clone();
            b[pos] = v;
            let Ok(mut a) = Arena::open_in(BufSource::from_bytes(&b), root) else {
                continue;
            };
            let _ = a.check();
            let _ = a.stats();
            for &h in &hs {
                let _ = a.bytes(h);
                let _ = a.peek_next(h);
                let _ = a.get_next(h).map(|n| n.map(|n| a.dec_ref(n)));
                let _ = a.set_next(h, None);
                let _ = a.add_ref(h);
                let _ = a.dec_ref(h);
                let _ = a.dec_ref(h);
            }
            for len in [1, 8, 30, 64] {
                let _ = a.alloc(len).map(|h| a.dec_ref(h));
            }
            let _ = a.check();
        }
    }
}

// ---------------------------------------------------------------- model-based tests

#[derive(Clone, Debug)]
enum Op {
    Alloc(usize),
    AddRef(usize),
    DecRef(usize),
    SetNext(usize, Option<usize>),
    GetNext(usize),
    Write(usize, usize, Vec<u8>),
    Read(usize, usize, usize),
    Foreign(usize),
    FailSource(bool),
}

fn op_strategy(slab: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..=slab + 4).prop_map(Op::Alloc),
        2 => any::<usize>().prop_map(Op::AddRef),
        6 => any::<usize>().prop_map(Op::DecRef),
        3 => (any::<usize>(), proptest::option::of(any::<usize>()))
            .prop_map(|(a, b)| Op::SetNext(a, b)),
        2 => any::<usize>().prop_map(Op::GetNext),
        2 => (any::<usize>(), 0..slab + 2, proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(h, o, d)| Op::Write(h, o, d)),
        1 => (any::<usize>(), 0..slab + 2, 0..8usize).prop_map(|(h, o, n)| Op::Read(h, o, n)),
        1 => any::<usize>().prop_map(Op::Foreign),
        1 => any::<bool>().prop_map(Op::FailSource),
    ]
}

struct MChunk {
    rc: u32,
    data: Vec<u8>,
    next: Option<Handle>,
}

#[derive(Default)]
struct Model {
    live: HashMap<Handle, MChunk>,
    issued: Vec<Handle>,
    allocs: u64,
    add_refs: u64,
    dec_refs: u64,
    zeroes: u64,
    get_nexts: u64,
    set_nexts: u64,
    too_big: u64,
    stale: u64,
    foreign: u64,
    cycles: u64,
    oob: u64,
    malloc_errs: u64,
}

impl Model {
    fn pick(&self, i: usize) -> Option<Handle> {
        (!self.issued.is_empty()).then(|| self.issued[i % self.issued.len()])
    }

    fn release(&mut self, mut h: Handle) {
        loop {
            let c = self.live.get_mut(&h).unwrap();
            c.rc -= 1;
            if c.rc > 0 {
                return;
            }
            let c = self.live.remove(&h).unwrap();
            self.zeroes += 1;
            match c.next {
                Some(n) => h = n,
                None => return,
            }
        }
    }

    fn links_to(&self, h: Handle) -> u32 {
        self.live.values().filter(|o| o.next == Some(h)).count() as u32
    }

    fn reaches(&self, from: Handle, target: Handle) -> bool {
        let mut cur = Some(from);
        while let Some(c) = cur {
            if c == target {
                return true;
            }
            cur = self.live[&c].next;
        }
        false
    }
}

fn stale_or<T: std::fmt::Debug>(m: &mut Model, h: Handle, r: Result<T, Error>) -> Option<T> {
    if m.live.contains_key(&h) {
        Some(r.unwrap())
    } else {
        assert_eq!(r.unwrap_err(), Error::StaleHandle);
        m.stale += 1;
        None
    }
}

fn step<S: SlabSource>(a: &mut Arena<S>, m: &mut Model, op: &Op, fail: Option<&Cell<bool>>) {
    let slab = a.config().slab_size;
    match op {
        Op::Alloc(len) => match a.alloc(*len) {
            Ok(h) => {
                assert!(*len <= slab);
                assert!(!m.live.contains_key(&h));
                let data = a.bytes(h).unwrap().to_vec();
                assert_eq!(data.len(), *len);
                m.live.insert(
                    h,
                    MChunk {
                        rc: 1,
                        data,
                        next: None,
                    },
                );
                m.issued.push(h);
                m.allocs += 1;
            }
            Err(Error::TooBig { len: l, max }) => {
                assert_eq!((l, max), (*len, slab));
                assert!(*len > slab);
                m.too_big += 1;
            }
            Err(Error::OutOfMemory) => {
                assert!(
                    fail.is_some_and(|f| f.get()),
                    "OutOfMemory without a failing source"
                );
                m.malloc_errs += 1;
            }
            Err(e) => panic!("alloc: {e}"),
        },
        Op::AddRef(i) => {
            let Some(h) = m.pick(*i) else { return };
            if stale_or(m, h, a.add_ref(h)).is_some() {
                m.live.get_mut(&h).unwrap().rc += 1;
                m.add_refs += 1;
            }
        }
        Op::DecRef(i) => {
            let Some(h) = m.pick(*i) else { return };
            if m.live.get(&h).is_some_and(|c| c.rc <= m.links_to(h)) {
                // Only the chain links hold references: releasing one of theirs would be
                // caller misuse the arena cannot see (as in go-slab); skip it.
                return;
            }
            if let Some(freed) = stale_or(m, h, a.dec_ref(h)) {
                assert_eq!(freed, m.live[&h].rc == 1);
                m.dec_refs += 1;
                m.release(h);
            }
        }
        Op::SetNext(i, j) => {
            let Some(h) = m.pick(*i) else { return };
            let n = j.and_then(|j| m.pick(j));
            let r = a.set_next(h, n);
            if !m.live.contains_key(&h) || n.is_some_and(|n| !m.live.contains_key(&n)) {
                assert_eq!(r, Err(Error::StaleHandle));
                m.stale += 1;
                return;
            }
            if let Some(n) = n {
                if m.reaches(n, h) {
                    assert_eq!(r, Err(Error::Cycle));
                    m.cycles += 1;
                    return;
                }
            }
            r.unwrap();
            m.set_nexts += 1;
            if let Some(n) = n {
                m.live.get_mut(&n).unwrap().rc += 1;
            }
            let old = std::mem::replace(&mut m.live.get_mut(&h).unwrap().next, n);
            if let Some(o) = old {
                m.release(o);
            }
        }
        Op::GetNext(i) => {
            let Some(h) = m.pick(*i) else { return };
            if let Some(n) = stale_or(m, h, a.get_next(h)) {
                m.get_nexts += 1;
                assert_eq!(n, m.live[&h].next);
                if let Some(n) = n {
                    m.live.get_mut(&n).unwrap().rc += 1;
                }
            }
        }
        Op::Write(i, off, data) => {
            let Some(h) = m.pick(*i) else { return };
            let r = a.write(h, *off, data);
            let Some(c) = m.live.get_mut(&h) else {
                assert_eq!(r, Err(Error::StaleHandle));
                m.stale += 1;
                return;
            };
            if off + data.len() <= c.data.len() {
                r.unwrap();
                c.data[*off..off + data.len()].copy_from_slice(data);
            } else {
                assert!(matches!(r, Err(Error::OutOfBounds { .. })));
                m.oob += 1;
            }
        }
        Op::Read(i, off, n) => {
            let Some(h) = m.pick(*i) else { return };
            let mut buf = vec![0; *n];
            let r = a.read(h, *off, &mut buf);
            match m.live.get(&h) {
                None => assert_eq!(r, Err(Error::StaleHandle)),
                Some(c) if off + n <= c.data.len() => {
                    r.unwrap();
                    assert_eq!(buf, c.data[*off..off + n]);
                }
                Some(_) => assert!(matches!(r, Err(Error::OutOfBounds { .. }))),
            }
        }
        Op::Foreign(i) => {
            let Some(h) = m.pick(*i) else { return };
            let bits = h.to_bits() ^ (1 << 100);
            assert_eq!(
                a.dec_ref(Handle::from_bits(bits)),
                Err(Error::ForeignHandle)
            );
            m.foreign += 1;
        }
        Op::FailSource(f) => {
            if let Some(flag) = fail {
                flag.set(*f);
            }
        }
    }
}

fn verify<S: SlabSource>(a: &Arena<S>, m: &Model) {
    for (h, c) in &m.live {
        assert_eq!(a.bytes(*h).unwrap(), &c.data[..]);
        assert_eq!(a.refcount(*h).unwrap(), c.rc);
        assert_eq!(a.peek_next(*h).unwrap(), c.next);
    }
    let st = a.stats().unwrap();
    assert_eq!(
        (st.allocs, st.add_refs, st.dec_refs, st.dec_ref_zeroes),
        (m.allocs, m.add_refs, m.dec_refs, m.zeroes)
    );
    assert_eq!((st.get_nexts, st.set_nexts), (m.get_nexts, m.set_nexts));
    assert_eq!(
        (st.too_big_errs, st.malloc_errs),
        (m.too_big, m.malloc_errs)
    );
    assert_eq!(
        (
            st.errors.stale_handle,
            st.errors.foreign_handle,
            st.errors.cycle,
            st.errors.out_of_bounds
        ),
        (m.stale, m.foreign, m.cycles, m.oob)
    );
    assert_eq!(st.errors.corrupt, 0);
    assert_eq!(st.in_use(), m.live.len());
    // Per class in use, from the model's lengths.
    let sizes: Vec<usize> = a.class_sizes().collect();
    let mut per_class = vec![0usize; sizes.len()];
    for c in m.live.values() {
        per_class[sizes.iter().position(|&s| s >= c.data.len()).unwrap()] += 1;
    }
    for (i, cs) in st.classes.iter().enumerate() {
        assert_eq!(cs.in_use, per_class[i], "class {}", cs.chunk_size);
        assert_eq!(cs.free + cs.in_use, cs.chunks);
    }
    assert_eq!(st.mallocs - st.slab_frees, st.slabs as u64);
}

/// Releases every reference the test holds (refcount minus the links to the chunk).
fn release_all<S: SlabSource>(a: &mut Arena<S>, m: &mut Model) {
    for h in m.live.keys().copied().collect::<Vec<_>>() {
        while m.live.get(&h).is_some_and(|c| c.rc > m.links_to(h)) {
            a.dec_ref(h).unwrap();
            m.release(h);
        }
    }
    assert!(m.live.is_empty());
}

fn config_strategy() -> impl Strategy<Value = Config> {
    (
        1usize..6,
        prop_oneof![Just(16usize), Just(64), Just(300)],
        prop_oneof![Just(1.5f64), Just(2.0), Just(1.1)],
        prop_oneof![
            Just(ReleasePolicy::Never),
            Just(ReleasePolicy::KeepEmpty(1)),
            Just(ReleasePolicy::Always)
        ],
    )
        .prop_map(|(s, slab, gf, release)| Config {
            release,
            ..Config::new(s, slab, gf)
        })
}

/// Op sequences: up to 160 ops natively, 16 under Miri (which is ~1000× slower).
fn ops_for(c: &Config) -> impl Strategy<Value = Vec<Op>> {
    let max = if cfg!(miri) { 16 } else { 160 };
    proptest::collection::vec(op_strategy(c.slab_size), 1..max)
}

proptest! {
    #[test]
    fn model_heap((config, ops) in config_strategy().prop_flat_map(|c| (Just(c), ops_for(&c)))) {
        let mut a = Arena::with_config(config).unwrap();
        let mut m = Model::default();
        for (k, op) in ops.iter().enumerate() {
            step(&mut a, &mut m, op, None);
            if k % 16 == 0 || !cfg!(miri) {
                if let Err(e) = a.check() {
                    panic!("step {k} {op:?}: {e}");
                }
            }
            verify(&a, &m);
        }
        let r = a.check().unwrap();
        prop_assert_eq!(r.chunks_in_use, m.live.len());
        // Release everything: nothing may stay in use.
        release_all(&mut a, &mut m);
        prop_assert_eq!(a.stats().unwrap().in_use(), 0);
        a.check().unwrap();
    }

    #[test]
    fn model_failing_source((config, ops) in config_strategy().prop_flat_map(|c| (Just(c), ops_for(&c)))) {
        let (src, fail, _) = Flaky::new();
        let mut a = Arena::create_in(src, config).unwrap();
        let mut m = Model::default();
        for op in &ops {
            step(&mut a, &mut m, op, Some(&fail));
            verify(&a, &m);
        }
        a.check().unwrap();
    }

    /// Relocation: run, copy the bytes to a new buffer at another address, reopen, keep going.
    #[test]
    fn model_survives_relocation(
        (config, ops, cut) in config_strategy()
            .prop_flat_map(|c| (Just(c), ops_for(&c), any::<prop::sample::Index>()))
    ) {
        let mut a = Arena::create_in(BufSource::new(1 << 18), config).unwrap();
        let mut m = Model::default();
        let cut = cut.index(ops.len() + 1);
        for op in &ops[..cut] {
            step(&mut a, &mut m, op, None);
        }
        let root = a.root();
        let before = a.stats().unwrap();
        let old = a.into_source();
        let moved = BufSource::from_bytes(old.as_bytes());
        prop_assert_ne!(old.as_bytes().as_ptr(), moved.as_bytes().as_ptr());
        drop(old);
        let mut a = Arena::open_in(moved, root).unwrap();
        prop_assert_eq!(a.stats().unwrap(), before);
        a.check().unwrap();
        verify(&a, &m);
        for op in &ops[cut..] {
            step(&mut a, &mut m, op, None);
            verify(&a, &m);
        }
        a.check().unwrap();
    }
}

/// A source over a buffer it does not own, with `BufSource`'s bump allocator (its top in the
/// buffer's bytes 8..16): two of them on one buffer model two processes mapping one region.
struct Shared {
    base: *mut u8,
    cap: usize,
}

impl Shared {
    fn top(&self) -> u64 {
        // SAFETY: the buffer is at least 64 bytes, 4096-aligned, alive for the test.
        unsafe { (self.base.add(8) as *const u64).read() }
    }
    fn set_top(&self, t: u64) {
        // SAFETY: as in `top`.
        unsafe { (self.base.add(8) as *mut u64).write(t) }
    }
}

// SAFETY: blocks are disjoint ranges above the bump top inside the (4096-aligned, zeroed)
// buffer, offsets >= 64, aligned as asked; the buffer outlives both sources.
unsafe impl SlabSource for Shared {
    fn alloc(&mut self, size: usize, align: usize) -> Option<u64> {
        let off = self.top().max(64).checked_next_multiple_of(align as u64)?;
        let end = off.checked_add(size as u64)?;
        if end > self.cap as u64 {
            return None;
        }
        self.set_top(end);
        Some(off)
    }
    unsafe fn free(&mut self, off: u64, size: usize, _align: usize) {
        if off >= 64 && off + size as u64 == self.top() {
            self.set_top(off);
        }
    }
    fn ptr(&self, off: u64) -> *mut u8 {
        self.base.wrapping_add(off as usize)
    }
    fn contains(&self, off: u64, len: usize) -> bool {
        off >= 64 && (len as u64) <= self.cap as u64 && off <= (self.cap - len) as u64
    }
}

/// The fast paths cache resolved addresses; two arenas on one memory (two processes under a
/// higher-level lock) must each see the other's structural changes: a slab released and its
/// slot and block reused by another class, and tables that moved.
#[test]
fn two_arenas_on_one_memory_see_each_others_changes() {
    use std::alloc::{alloc_zeroed, dealloc, Layout};
    let cap = 1 << 16;
    let layout = Layout::from_size_align(cap, 4096).unwrap();
    // SAFETY: non-zero size.
    let base = unsafe { alloc_zeroed(layout) };
    assert!(!base.is_null());
    {
        let config = Config {
            release: ReleasePolicy::Always,
            ..Config::new(16, 1024, 2.0)
        };
        let mut a = Arena::create_in(Shared { base, cap }, config).unwrap();
        let mut b = Arena::open_in(Shared { base, cap }, a.root()).unwrap();
        let x = a.alloc(16).unwrap();
        a.write(x, 0, b"x").unwrap();
        // b resolves x's slab (and caches it).
        assert_eq!(&b.bytes(x).unwrap()[..1], b"x");
        b.add_ref(x).unwrap();
        assert!(!b.dec_ref(x).unwrap());
        // a frees x: its slab goes back to the source, then a slab of another class takes
        // the same slot and the same block.
        assert!(a.dec_ref(x).unwrap());
        let y = a.alloc(300).unwrap();
        assert_eq!(y.slab_index(), x.slab_index());
        a.write(y, 0, b"hello y").unwrap();
        // (y first: a failing call would send b down the validating path, which resyncs.)
        assert_eq!(&b.bytes(y).unwrap()[..7], b"hello y");
        assert_eq!(b.len(y).unwrap(), 300);
        assert_eq!(b.bytes(x), Err(Error::StaleHandle));
        assert_eq!(b.add_ref(x), Err(Error::StaleHandle));
        b.add_ref(y).unwrap();
        assert_eq!(a.refcount(y).unwrap(), 2);
        // b grows the slab table (one chunk per slab for 1 KiB); a follows it.
        let hs: Vec<Handle> = (0..20u8)
            .map(|i| {
                let h = b.alloc(1024).unwrap();
                b.bytes_mut(h).unwrap()[0] = i;
                h
            })
            .collect();
        for (i, &h) in hs.iter().enumerate() {
            assert_eq!(a.bytes(h).unwrap()[0], i as u8);
            assert!(a.dec_ref(h).unwrap());
            assert_eq!(b.len(h), Err(Error::StaleHandle));
        }
        assert!(!b.dec_ref(y).unwrap());
        assert!(a.dec_ref(y).unwrap());
        assert!(!b.owns(y));
        a.check().unwrap();
        b.check().unwrap();
        let s = b.stats().unwrap();
        assert_eq!((s.allocs, s.dec_ref_zeroes), (22, 22));
    }
    // SAFETY: allocated above with this layout; both arenas are gone.
    unsafe { dealloc(base, layout) };
}
