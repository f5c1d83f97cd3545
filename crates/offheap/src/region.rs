//! A region shared by the threads of one process (and, through its file, by processes).

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use offheap_mmap::{Offset, Region};
use offheap_slab::SlabSource;

use crate::lock::{self, LockWords};
use crate::Error;

/// Runs `open(region, take_over)` for a region that this handle has just opened, with
/// `take_over` set if nobody else has its file open ([`Region::try_alone`]): then no process
/// that the file's records name uses it, live or not, and `open` may take over what they
/// hold. Others' opens of the file wait until `open` returns, so none can claim anything
/// meanwhile. (A region opened earlier could have been shared with a forked child since.)
pub(crate) fn open_fresh<T>(region: Region, open: impl FnOnce(Region, bool) -> T) -> T {
    // The guard holds a duplicate of the region's descriptor: it outlives the move.
    let alone = region.try_alone();
    let take_over = alone.is_some();
    let out = open(region, take_over);
    drop(alone);
    out
}

/// A [`Region`] usable from many threads: every call into the region (which is `Send` but
/// not `Sync`: it keeps its view length in a `Cell`) is made under a process-local mutex,
/// except address translation inside the known view, which is `base + offset` from an
/// atomic copy of the view length. Allocation and free also take the map's process-shared
/// allocator lock (the region's block allocator is shared by every process).
pub(crate) struct SharedRegion {
    region: Mutex<Region>,
    base: *mut u8,
    data_start: u64,
    view: AtomicU64,
    /// The process-shared allocator lock (null until the map header exists).
    alloc_lock: AtomicPtr<LockWords>,
    me: u64,
}

// SAFETY: the region is only used under `region`'s mutex (the `Region` is `Send`); `base`
// points to a mapping that never moves while the region lives; the lock words are atomics
// in that mapping.
unsafe impl Send for SharedRegion {}
// SAFETY: as above: every shared access is to atomics, to the mutex, or to immutable fields.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    pub(crate) fn new(region: Region, me: u64) -> Self {
        SharedRegion {
            base: region.base(),
            data_start: region.data_start(),
            view: AtomicU64::new(region.mapped_len()),
            region: Mutex::new(region),
            alloc_lock: AtomicPtr::new(std::ptr::null_mut()),
            me,
        }
    }

    /// The length of this process's view of the region (what it has mapped so far).
    pub(crate) fn view_len(&self) -> u64 {
        self.view.load(Ordering::Acquire)
    }

    pub(crate) fn set_alloc_lock(&self, l: *mut LockWords) {
        self.alloc_lock.store(l, Ordering::Release);
    }

    /// The offset of address `p` (inside this process's mapping) from the region's base.
    #[inline]
    pub(crate) fn offset_of(&self, p: *const u8) -> u64 {
        (p as usize).wrapping_sub(self.base as usize) as u64
    }

    /// The region, for calls that do not allocate (roots, flush, stats).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Region> {
        self.region.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address of `off..off + len`, extending this process's view if another process
    /// grew the region; `None` if out of bounds.
    #[inline]
    pub(crate) fn ptr(&self, off: u64, len: u64) -> Option<*mut u8> {
        let end = off.checked_add(len)?;
        if off >= self.data_start && end <= self.view.load(Ordering::Acquire) {
            return Some(self.base.wrapping_add(off as usize));
        }
        self.ptr_slow(off, len)
    }

    #[cold]
    fn ptr_slow(&self, off: u64, len: u64) -> Option<*mut u8> {
        if off < self.data_start {
            return None;
        }
        let r = self.lock();
        let p = r.ptr_raw(off, len).map(|p| p.as_ptr());
        self.view.fetch_max(r.mapped_len(), Ordering::Release);
        p
    }

    fn with_alloc_lock<T>(&self, f: impl FnOnce(&Region) -> Result<T, Error>) -> Result<T, Error> {
        let me = self.me;
        self.with_alloc_lock_as(
            |w| lock::write_lock(&w.state, &w.slots, me, lock::owner_is_dead),
            f,
        )
    }

    /// [`with_alloc_lock`](Self::with_alloc_lock), with the lock taken by `take`.
    fn with_alloc_lock_as<T>(
        &self,
        take: impl FnOnce(&LockWords) -> lock::Acquired,
        f: impl FnOnce(&Region) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let l = self.alloc_lock.load(Ordering::Acquire);
        let r = self.lock();
        if l.is_null() {
            return f(&r);
        }
        // SAFETY: `l` points to the lock words in the map header, inside the mapping.
        let words = unsafe { &*l };
        let how = take(words);
        struct Unlock<'a>(&'a LockWords);
        impl Drop for Unlock<'_> {
            fn drop(&mut self) {
                lock::write_unlock(&self.0.state);
            }
        }
        let _u = Unlock(words);
        if how == lock::Acquired::Recovered || r.needs_recovery() {
            // A process may have died inside the block allocator (we took its lock over,
            // or the file was opened with torn bookkeeping while no process held the
            // lock): rebuild the derived state from the block headers (a no-op when
            // `check` passes). Headers that do not tile the region are real corruption,
            // and an error.
            r.recover()
                .map_err(|_| Error::Corrupt("region allocator torn by a dead process"))?;
        }
        let out = f(&r);
        self.view.fetch_max(r.mapped_len(), Ordering::Release);
        out
    }

    /// Takes the allocator lock over from whoever its words name, as from a dead holder
    /// (repairing the allocator if one was named), when nobody else has the file open
    /// ([`Region::try_alone`](offheap_mmap::Region::try_alone), which the caller holds):
    /// no process that the words name is using the file.
    pub(crate) fn clear_stale_owners(&self) -> Result<(), Error> {
        let l = self.alloc_lock.load(Ordering::Acquire);
        // SAFETY: `l`, when set, points to the lock words in the map header, inside the
        // mapping.
        if l.is_null() || !lock::is_held(unsafe { &(*l).state }, unsafe { &(*l).slots }) {
            return Ok(());
        }
        self.with_alloc_lock_as(|w| lock::seize(&w.state, &w.slots, self.me), |_| Ok(()))
    }

    /// Checks the region's allocator under the allocator lock: other processes' allocations
    /// are not seen half done, and a dead holder's torn state is recovered first.
    pub(crate) fn check(&self) -> Result<(), Error> {
        self.with_alloc_lock(|r| Ok(r.check().map(|_| ())?))
    }

    pub(crate) fn alloc(&self, size: u64, align: u64) -> Result<u64, Error> {
        self.with_alloc_lock(|r| Ok(r.alloc(size, align)?.get()))
    }

    pub(crate) fn free(&self, off: u64) -> Result<(), Error> {
        let o = Offset::new(off).ok_or(Error::Corrupt("free of offset 0"))?;
        self.with_alloc_lock(|r| Ok(r.free(o)?))
    }

    /// [`Region::alloc_into`] under the allocator lock, with no mark.
    pub(crate) fn alloc_into(
        &self,
        size: u64,
        align: u64,
        record: u64,
        at: u64,
    ) -> Result<u64, Error> {
        let rec = Offset::new(record).ok_or(Error::Corrupt("record at offset 0"))?;
        self.with_alloc_lock(|r| Ok(r.alloc_into(size, align, rec, at, 0)?.get()))
    }

    /// [`Region::free_recorded`] under the allocator lock.
    pub(crate) fn free_recorded(&self, off: u64, record: u64, at: u64) -> Result<(), Error> {
        let o = Offset::new(off).ok_or(Error::Corrupt("free of offset 0"))?;
        let rec = Offset::new(record).ok_or(Error::Corrupt("record at offset 0"))?;
        self.with_alloc_lock(|r| Ok(r.free_recorded(o, rec, at)?))
    }

    /// Whether `off` is a live block of the region, under the allocator lock.
    pub(crate) fn is_block(&self, off: u64) -> Result<bool, Error> {
        Ok(self.block_size(off)?.is_some())
    }

    /// The usable size of the live block at `off` (`None` if it is none), under the
    /// allocator lock.
    pub(crate) fn block_size(&self, off: u64) -> Result<Option<u64>, Error> {
        let Some(o) = Offset::new(off) else {
            return Ok(None);
        };
        self.with_alloc_lock(|r| Ok(r.allocation_size(o).ok()))
    }

    /// The region's allocated blocks, read under the allocator lock.
    pub(crate) fn allocations(&self) -> Result<u64, Error> {
        self.with_alloc_lock(|r| Ok(r.stats().allocations))
    }

    /// Takes the allocator lock once: if its holder died, this recovers the allocator,
    /// which also completes the record of an `alloc_into` or `free_recorded` that the death
    /// cut short. A shard's recovery does this before it reads those records (its arena's
    /// pending words, its rebuild's `fresh_table` and `old_table`).
    pub(crate) fn settle(&self) -> Result<(), Error> {
        self.with_alloc_lock(|_| Ok(()))
    }
}

/// A shard arena's slab source: the shared region, through the allocator lock.
pub(crate) struct ShardSource(pub(crate) Arc<SharedRegion>);

// SAFETY: `alloc` returns offsets of live, disjoint, aligned region blocks (the region's
// allocator, under the process-shared allocator lock); the mapping never moves, so `ptr`
// is stable and contiguous; `resolve`/`contains` are true only inside the mapping past the
// header; mapped memory is initialized. A shard's arena blocks are freed only by that
// shard's arena (under the shard's write lock); other shards and processes free only their
// own blocks, so nothing frees this arena's blocks behind its back.
unsafe impl SlabSource for ShardSource {
    fn alloc(&mut self, size: usize, align: usize) -> Option<u64> {
        self.0.alloc(size as u64, align as u64).ok()
    }

    unsafe fn free(&mut self, off: u64, _size: usize, _align: usize) {
        let _ = self.0.free(off);
    }

    fn alloc_recorded(&mut self, size: usize, align: usize, record: u64, at: usize) -> Option<u64> {
        self.0
            .alloc_into(size as u64, align as u64, record, at as u64)
            .ok()
    }

    fn is_block(&self, off: u64) -> Option<bool> {
        self.0.is_block(off).ok()
    }

    unsafe fn free_recorded(
        &mut self,
        off: u64,
        _size: usize,
        _align: usize,
        record: u64,
        at: usize,
    ) {
        let _ = self.0.free_recorded(off, record, at as u64);
    }

    #[inline]
    fn ptr(&self, off: u64) -> *mut u8 {
        self.0
            .ptr(off, 1)
            .unwrap_or(self.0.base.wrapping_add(off as usize))
    }

    #[inline]
    fn contains(&self, off: u64, len: usize) -> bool {
        self.0.ptr(off, len as u64).is_some()
    }

    #[inline]
    fn resolve(&self, off: u64, len: usize) -> Option<*mut u8> {
        self.0.ptr(off, len as u64)
    }
}
