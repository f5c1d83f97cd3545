//! Arenas in regions: [`offheap_slab::SlabSource`] for [`Region`] (feature `slab`).
//!
//! An [`Arena`](offheap_slab::Arena) created with `Arena::create_in(region, config)` takes its
//! slabs (and its own header and tables) from the region's block allocator and links them
//! by region offsets, so the whole arena lives in the region: close a file-backed region,
//! reopen it (in this process or another), and `Arena::open_in(region, root)` gives back
//! every chunk, refcount and chain. Record `arena.root()` in a root slot to find it again.
//!
//! The trait is implemented for an owned `Region` (and so, through offheap-slab's blanket
//! impl, for `&mut Region`): the arena then has exclusive use of the region, so nothing can
//! free its blocks behind its back, which the trait's contract requires. A shared `&Region`
//! or `Rc<Region>` would let any other holder call [`Region::free`] on an arena block while
//! the arena lends out `&[u8]` into it, so they are deliberately not sources.
//!
//! ```
//! # #[cfg(not(miri))] {
//! use offheap_mmap::{Offset, Region, RegionOptions};
//! use offheap_slab::{Arena, Config};
//! # let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("arena.region");
//! let region = Region::create(&path, &RegionOptions::new())?;
//! let mut arena = Arena::create_in(region, Config::new(64, 64 << 10, 2.0)).unwrap();
//! let h = arena.alloc_from(b"persistent").unwrap();
//! let root = Offset::new(arena.root()).unwrap();
//! arena.source().set_root("arena", Some(root))?;
//! let region = arena.into_source();
//! region.flush()?;
//! drop(region);
//!
//! let region = Region::open(&path)?;
//! let root = region.root("arena").unwrap();
//! let arena = Arena::open_in(region, root.get()).unwrap();
//! assert_eq!(&arena.bytes(h).unwrap()[..10], b"persistent");
//! # }
//! # Ok::<(), offheap_mmap::Error>(())
//! ```

use crate::{Offset, Region};
use offheap_slab::SlabSource;

// SAFETY: `alloc` returns offsets of live region blocks of at least `size` bytes aligned to
// `align` (the region's allocator guarantees both and never overlaps live blocks); the
// mapping never moves while the region lives (growth is in place), so `ptr` is stable and
// contiguous (`base + off`); `contains` is true only for ranges inside this process's
// mapping (the data area, not the header); mapped memory is always initialized. The arena
// owns the region, so only the arena's own `free` ends a block.
unsafe impl SlabSource for Region {
    #[inline]
    fn alloc(&mut self, size: usize, align: usize) -> Option<u64> {
        Region::alloc(self, size as u64, align as u64)
            .ok()
            .map(Offset::get)
    }

    #[inline]
    unsafe fn free(&mut self, off: u64, _size: usize, _align: usize) {
        // A free that matches no live block (corrupt arena memory) is refused by the
        // region's checks and ignored here, as the trait asks.
        if let Some(o) = Offset::new(off) {
            let _ = Region::free(self, o);
        }
    }

    #[inline]
    fn ptr(&self, off: u64) -> *mut u8 {
        if off >= self.mapped_len() {
            // Another process may have grown the region: extend this view first.
            let _ = self.contains(off, 1);
        }
        self.base().wrapping_add(off as usize)
    }

    #[inline]
    fn contains(&self, off: u64, len: usize) -> bool {
        self.resolve(off, len).is_some()
    }

    #[inline]
    fn resolve(&self, off: u64, len: usize) -> Option<*mut u8> {
        if off < self.data_start() {
            return None;
        }
        Region::ptr_raw(self, off, len as u64).map(|p| p.as_ptr())
    }

    /// [`Region::alloc_into`] with no mark: no kill leaks the block once
    /// [`Region::recover`] has run.
    fn alloc_recorded(&mut self, size: usize, align: usize, record: u64, at: usize) -> Option<u64> {
        Region::alloc_into(
            self,
            size as u64,
            align as u64,
            Offset::new(record)?,
            at as u64,
            0,
        )
        .ok()
        .map(Offset::get)
    }

    /// [`Region::free_recorded`]: the record goes exactly when the block does, once
    /// [`Region::recover`] has run.
    unsafe fn free_recorded(
        &mut self,
        off: u64,
        _size: usize,
        _align: usize,
        record: u64,
        at: usize,
    ) {
        if let (Some(o), Some(r)) = (Offset::new(off), Offset::new(record)) {
            // As for `free`: a call that matches no live block is refused and ignored.
            let _ = Region::free_recorded(self, o, r, at as u64);
        }
    }

    /// The region's O(1) check ([`Region::allocation_size`]).
    fn is_block(&self, off: u64) -> Option<bool> {
        Some(Offset::new(off).is_some_and(|o| self.allocation_size(o).is_ok()))
    }
}
