//! A slab source over a region that a table shares.

use std::rc::Rc;

use offheap_mmap::{Offset, Region};
use offheap_slab::SlabSource;

/// An arena's view of a region that the map's table also allocates from.
///
/// offheap-mmap implements `SlabSource` only for an owned `Region`, because a shared handle
/// would let another holder free the arena's blocks. Here the only other holder is the
/// map's own table (an `Rc` clone inside the same map), which frees only blocks that it
/// allocated itself (its header, directory and segments); the map never passes a handle of
/// one to the other. That restores the trait's exclusivity requirement for the arena's
/// blocks.
pub(crate) struct RegionSource(pub(crate) Rc<Region>);

// SAFETY: `alloc` returns offsets of live, disjoint, aligned region blocks (the region's
// allocator guarantees it); the mapping never moves while the region lives (growth is in
// place), so `ptr` is stable and contiguous (`base + off`); `resolve`/`contains` are true
// only for ranges inside this process's mapping and past the header; mapped memory is always
// initialized. Blocks the arena allocated are freed only through this source (see the type's
// documentation: the table sharing the region frees only its own blocks).
unsafe impl SlabSource for RegionSource {
    #[inline]
    fn alloc(&mut self, size: usize, align: usize) -> Option<u64> {
        self.0
            .alloc(size as u64, align as u64)
            .ok()
            .map(Offset::get)
    }

    #[inline]
    unsafe fn free(&mut self, off: u64, _size: usize, _align: usize) {
        if let Some(o) = Offset::new(off) {
            // A free the region does not recognise (only from corrupt memory) is refused by
            // its checks and ignored, as the trait asks.
            let _ = self.0.free(o);
        }
    }

    #[inline]
    fn ptr(&self, off: u64) -> *mut u8 {
        if off >= self.0.mapped_len() {
            // Another process may have grown the region: extend this view first.
            let _ = self.0.contains(off, 1);
        }
        self.0.base().wrapping_add(off as usize)
    }

    #[inline]
    fn contains(&self, off: u64, len: usize) -> bool {
        self.resolve(off, len).is_some()
    }

    #[inline]
    fn resolve(&self, off: u64, len: usize) -> Option<*mut u8> {
        if off < self.0.data_start() {
            return None;
        }
        self.0.ptr_raw(off, len as u64).map(|p| p.as_ptr())
    }

    fn alloc_recorded(&mut self, size: usize, align: usize, record: u64, at: usize) -> Option<u64> {
        self.0
            .alloc_into(
                size as u64,
                align as u64,
                Offset::new(record)?,
                at as u64,
                0,
            )
            .ok()
            .map(Offset::get)
    }

    unsafe fn free_recorded(
        &mut self,
        off: u64,
        _size: usize,
        _align: usize,
        record: u64,
        at: usize,
    ) {
        if let (Some(o), Some(r)) = (Offset::new(off), Offset::new(record)) {
            let _ = self.0.free_recorded(o, r, at as u64);
        }
    }

    fn is_block(&self, off: u64) -> Option<bool> {
        // offheap-mmap's check (`Region::allocation_size`), through its `&self` method.
        SlabSource::is_block(&*self.0, off)
    }
}
