//! Basic behaviour of anonymous regions (runs under miri).

use offheap_mmap::{Error, Offset, Region, RegionOptions};

#[test]
fn alloc_write_read_free() {
    let r = Region::anonymous().unwrap();
    let mut offs = Vec::new();
    for i in 0..100u64 {
        let size = 1 + i * 7;
        let off = r.alloc(size, 8).unwrap();
        assert_eq!(off.get() % 8, 0);
        let p = r.ptr(off, size).unwrap();
        // SAFETY: live allocation of `size` bytes.
        unsafe { p.as_ptr().write_bytes(i as u8, size as usize) };
        offs.push((off, size, i as u8));
    }
    for &(off, size, v) in &offs {
        let p = r.ptr(off, size).unwrap();
        // SAFETY: written above.
        let s = unsafe { std::slice::from_raw_parts(p.as_ptr(), size as usize) };
        assert!(s.iter().all(|&b| b == v));
    }
    r.check().unwrap();
    for (off, _, _) in offs {
        r.free(off).unwrap();
    }
    let rep = r.check().unwrap();
    assert_eq!(rep.free_blocks, 1);
    assert_eq!(rep.allocations, 0);
    assert_eq!(r.stats().in_use, 0);
}

#[test]
fn double_free_and_wild_free_are_errors() {
    let r = Region::anonymous().unwrap();
    let a = r.alloc(100, 8).unwrap();
    let _b = r.alloc(100, 8).unwrap();
    r.free(a).unwrap();
    assert!(matches!(r.free(a), Err(Error::InvalidFree { .. })));
    let wild = Offset::new(a.get() + 8).unwrap();
    assert!(matches!(r.free(wild), Err(Error::InvalidFree { .. })));
    let beyond = Offset::new(r.mapped_len() + 64).unwrap();
    assert!(matches!(r.free(beyond), Err(Error::InvalidFree { .. })));
    let hdr = Offset::new(64).unwrap();
    assert!(matches!(r.free(hdr), Err(Error::InvalidFree { .. })));
    r.check().unwrap();
}

/// `allocation_size` vouches for live allocations only: a freed block is refused, also
/// after it merged with free neighbours on both sides (its header then lies inside the
/// merged block, and the next block's old boundary tag still repeats its size), and so are
/// offsets that were never allocations.
#[test]
fn allocation_size_names_live_blocks_only() {
    let r = Region::anonymous().unwrap();
    let blocks: Vec<Offset> = (0..5).map(|_| r.alloc(200, 8).unwrap()).collect();
    let big = r.alloc(5000, 4096).unwrap();
    for &o in blocks.iter().chain([&big]) {
        let size = r.allocation_size(o).unwrap();
        assert!(size >= 200, "{size}");
    }
    assert!(r.allocation_size(big).unwrap() >= 5000);
    // Free 1 and 3, then 2 between them: 2 merges with both neighbours.
    for i in [1, 3, 2] {
        r.free(blocks[i]).unwrap();
    }
    for i in [1, 2, 3] {
        match r.allocation_size(blocks[i]) {
            Err(Error::NotAllocated { offset, .. }) => assert_eq!(offset, blocks[i].get()),
            other => panic!("freed block {i}: {other:?}"),
        }
        assert!(matches!(r.free(blocks[i]), Err(Error::InvalidFree { .. })));
    }
    for i in [0, 4] {
        assert!(r.allocation_size(blocks[i]).unwrap() >= 200);
    }
    let inside = Offset::new(blocks[0].get() + 16).unwrap();
    let beyond = Offset::new(r.mapped_len() + 64).unwrap();
    let hdr = Offset::new(64).unwrap();
    for o in [inside, beyond, hdr] {
        assert!(matches!(
            r.allocation_size(o),
            Err(Error::NotAllocated { .. })
        ));
    }
    r.check().unwrap();
}

#[test]
fn alignment_is_honoured() {
    let r = Region::anonymous().unwrap();
    for shift in 0..=12 {
        let align = 1u64 << shift;
        let a = r.alloc(3, align).unwrap();
        assert_eq!(a.get() % align, 0, "align {align}");
        let b = r.alloc(1000, align).unwrap();
        assert_eq!(b.get() % align, 0, "align {align}");
    }
    r.check().unwrap();
    assert!(matches!(
        r.alloc(8, 3),
        Err(Error::InvalidAlignment { align: 3 })
    ));
    assert!(matches!(
        r.alloc(8, 1 << 20),
        Err(Error::InvalidAlignment { .. })
    ));
}

#[test]
fn grows_in_place_and_base_never_moves() {
    let opts = RegionOptions::new()
        .initial_size(64 << 10)
        .max_size(4 << 20);
    let r = Region::anonymous_with(&opts).unwrap();
    let base = r.base();
    let first = r.mapped_len();
    let mut offs = Vec::new();
    for _ in 0..40 {
        offs.push(r.alloc(16 << 10, 16).unwrap());
    }
    assert!(r.mapped_len() > first);
    assert_eq!(r.base(), base);
    r.check().unwrap();
    // Exhausting the reservation is a typed error, not a panic.
    assert!(matches!(
        r.alloc(8 << 20, 8),
        Err(Error::OutOfMemory { .. })
    ));
    for o in offs {
        r.free(o).unwrap();
    }
    assert_eq!(r.check().unwrap().free_blocks, 1);
}

#[test]
fn roots() {
    let r = Region::anonymous().unwrap();
    let a = r.alloc(10, 1).unwrap();
    assert_eq!(r.root("table"), None);
    r.set_root("table", Some(a)).unwrap();
    assert_eq!(r.root("table"), Some(a));
    assert_eq!(r.roots(), vec![("table".to_string(), a)]);
    r.set_root("table", None).unwrap();
    assert_eq!(r.root("table"), None);
    assert!(matches!(
        r.set_root("", Some(a)),
        Err(Error::InvalidRootName)
    ));
    assert!(matches!(
        r.set_root(&"x".repeat(25), Some(a)),
        Err(Error::InvalidRootName)
    ));
    assert!(matches!(
        r.set_root("a\0b", Some(a)),
        Err(Error::InvalidRootName)
    ));
    let far = Offset::new(r.mapped_len()).unwrap();
    assert!(matches!(
        r.set_root("far", Some(far)),
        Err(Error::OffsetOutOfBounds { .. })
    ));
    for i in 0..offheap_mmap::ROOT_SLOTS {
        r.set_root(&format!("r{i}"), Some(a)).unwrap();
    }
    assert!(matches!(
        r.set_root("one-more", Some(a)),
        Err(Error::RootSlotsFull)
    ));
    assert_eq!(r.check().unwrap().roots, offheap_mmap::ROOT_SLOTS as u64);
}

#[test]
fn ptr_checks_bounds() {
    let r = Region::anonymous().unwrap();
    let len = r.mapped_len();
    assert!(r.ptr(Offset::new(len - 8).unwrap(), 8).is_ok());
    assert!(matches!(
        r.ptr(Offset::new(len - 8).unwrap(), 9),
        Err(Error::OffsetOutOfBounds { .. })
    ));
    assert!(r.ptr(Offset::new(u64::MAX).unwrap(), 1).is_err());
    assert!(!r.contains(len, 1));
    assert!(!r.contains(0, 1));
}

/// Fills `len` bytes of the allocation at `off` with `byte`.
fn fill(r: &Region, off: Offset, len: u64, byte: u8) {
    let p = r.ptr(off, len).unwrap();
    // SAFETY: `len` bytes of a live allocation; nothing else refers to them.
    unsafe { p.as_ptr().write_bytes(byte, len as usize) };
}

/// Whether the `len` bytes at `off` all hold `byte`.
fn holds(r: &Region, off: Offset, len: u64, byte: u8) -> bool {
    let p = r.ptr(off, len).unwrap();
    // SAFETY: `len` readable bytes of a live allocation.
    unsafe { core::slice::from_raw_parts(p.as_ptr(), len as usize) }
        .iter()
        .all(|&x| x == byte)
}

/// Adds `by` to the stored size of the block whose payload is at `off` (as a corrupt file
/// could). A block's size word (its low bits are flags) sits just before its payload.
fn inflate(r: &Region, off: Offset, by: u64) {
    let word = r.ptr_raw(off.get() - 8, 8).unwrap().as_ptr().cast::<u64>();
    // SAFETY: 8 bytes inside the mapping (checked by ptr_raw); the test owns the region.
    unsafe { word.write_unaligned(word.read_unaligned() + by) };
}

/// A free block whose stored size was inflated a little (within its free list's size
/// class, so the list checks cannot tell) is neither handed out nor merged over the live
/// block after it: that block's boundary tag disagrees, and `alloc` / `free` report the
/// corruption instead of writing into the live block.
#[test]
fn an_inflated_free_block_is_not_handed_out_or_merged() {
    // alloc: the inflated block would be carved, and its tail's tag written into `c`.
    let r = Region::anonymous().unwrap();
    let _a = r.alloc(64, 8).unwrap();
    let b = r.alloc(70_000, 8).unwrap();
    let c = r.alloc(4000, 8).unwrap();
    let _d = r.alloc(64, 8).unwrap();
    fill(&r, c, 4000, 0xC5);
    r.free(b).unwrap();
    inflate(&r, b, 16);
    assert!(
        matches!(r.alloc(60_000, 8), Err(Error::Corrupt { .. })),
        "an allocation was carved out of the inflated block"
    );
    assert!(holds(&r, c, 4000, 0xC5), "the live block was overwritten");
    assert!(r.check().is_err());

    // free: freeing the block before it would merge with its inflated size.
    let r = Region::anonymous().unwrap();
    let _a = r.alloc(64, 8).unwrap();
    let x = r.alloc(64, 8).unwrap();
    let y = r.alloc(70_000, 8).unwrap();
    let z = r.alloc(4000, 8).unwrap();
    let _w = r.alloc(64, 8).unwrap();
    fill(&r, z, 4000, 0x5C);
    r.free(y).unwrap();
    inflate(&r, y, 16);
    assert!(
        matches!(r.free(x), Err(Error::Corrupt { .. })),
        "a free merged with the inflated block"
    );
    assert!(holds(&r, z, 4000, 0x5C), "the live block was overwritten");
}

/// The case the model test found: an allocation aligned to 64 leaves a 32-byte free block
/// in front of it; freeing it merges the two, and the merged block's hull end is stored
/// where the freed block's header was. Stored as the offset itself, it read as an allocated
/// header of a block ending at the region's end, and a second free of the same offset
/// passed. Now the hull end is stored odd (its free bit set), and the second free fails.
#[test]
fn a_free_merged_behind_a_32_byte_block_cannot_be_repeated() {
    let opts = RegionOptions::new()
        .initial_size(64 << 10)
        .release_threshold(16 << 10);
    let r = Region::anonymous_with(&opts).unwrap();
    let mut live = std::collections::BTreeMap::new();
    // (size, align) allocations, or a free of the `pick`-th live allocation (model order).
    let ops: [(u64, u64); 10] = [
        (22593, 32),
        (529, 1),
        (49, 1),
        (0, 3587729848090221724),
        (225, 1),
        (10625, 64),
        (289, 1),
        (129, 128),
        (289, 1),
        (0, 9323248206266154009),
    ];
    let mut merged_behind_a_small_block = false;
    for (size, x) in ops {
        if size != 0 {
            let off = r.alloc(size, x).unwrap();
            live.insert(off.get(), size);
            continue;
        }
        let o = *live.keys().nth((x % live.len() as u64) as usize).unwrap();
        live.remove(&o);
        let off = Offset::new(o).unwrap();
        let block = r.allocation_size(off).unwrap() + 16;
        r.free(off).unwrap();
        // SAFETY: the freed block's header word, inside the mapping.
        let header = unsafe { r.base().add(o as usize - 8).cast::<u64>().read() };
        // A free block's header says free (bit 0); so does a hull end stored there.
        assert_eq!(
            header & 1,
            1,
            "the freed block's header word reads as allocated"
        );
        // Not its own free header (its size): a word of the merged block's header.
        merged_behind_a_small_block |= header & !15 != block;
        assert!(r.free(off).is_err(), "double free accepted");
        assert!(r.allocation_size(off).is_err());
    }
    assert!(
        merged_behind_a_small_block,
        "the scenario did not put a hull word over a freed header"
    );
    r.check().unwrap();
}
