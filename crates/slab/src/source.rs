//! Sources of slab memory: the [`SlabSource`] trait, the heap default [`HeapSource`], and
//! [`BufSource`], a fixed-capacity buffer whose bytes can be copied out and reopened elsewhere.

use std::alloc::{self, Layout};
use std::ptr;

/// Memory in which an arena keeps its slabs and all of its own state.
///
/// An [`Arena`](crate::Arena) asks its source for blocks: one for its header (parameters,
/// statistics, the offsets of its tables), one for its class table, one for its slab table, and
/// one per slab (the slab's chunk metadata followed by its chunk data). It links them together
/// by **offsets** returned from [`alloc`](SlabSource::alloc), never by addresses, so a source
/// whose memory is a file mapping can be closed, mapped again at another address (in this process
/// or another one) and handed to [`Arena::open_in`](crate::Arena::open_in) with the header's
/// offset: every link stays meaningful.
///
/// The arena calls [`alloc`](SlabSource::alloc) rarely (a new slab, a table that grows) and
/// [`ptr`](SlabSource::ptr) / [`contains`](SlabSource::contains) on every operation, so the
/// latter two should be cheap and `#[inline]`. [`resolve`](SlabSource::resolve) combines both and
/// may be overridden with a fused, faster version.
///
/// # Offsets
///
/// An offset is an opaque `u64` chosen by the source; `0` is never a block (the arena uses it as
/// "none"). Offsets may be addresses (a private heap), byte offsets from a mapping's base (a file),
/// or anything else that [`ptr`](SlabSource::ptr) can turn into an address.
///
/// # Untrusted memory
///
/// The memory of a source may be corrupt (a damaged file, another process that misbehaved). The
/// arena therefore checks every offset it reads back from source memory with
/// [`contains`](SlabSource::contains) (through [`resolve`](SlabSource::resolve)) before it
/// follows it, and every index against the table it indexes. It can still not tell a block's
/// true start from a plausible offset inside another block, so when corrupt memory names a wrong
/// block the arena may pass that wrong offset to [`free`](SlabSource::free). Sources whose memory
/// can be corrupted from outside (files, shared memory) should therefore check `free`'s
/// arguments and ignore a free that does not match a live block; [`HeapSource`] and
/// [`BufSource`] do.
///
/// # Safety
///
/// Implementors guarantee: a block returned by `alloc(size, align)` is an offset `off != 0` such that
/// `ptr(off)` is valid for reads and writes of `size` bytes, aligned to `align`, overlaps no other
/// live block, and stays at the same address until it is freed or the source is dropped; `ptr`
/// returns the same address for the same live offset on every call.
///
/// In addition, `ptr(off + i) == ptr(off).add(i)` for every `i < size` of a live block (the block
/// is contiguous in offsets as in addresses), and `contains(off, len)` returns `true` only if
/// `ptr(off)` is valid for reads and writes of `len` bytes for as long as the source is not
/// mutated. Moving the source (it is owned by value by the arena) must not move the blocks.
/// A block stops being valid only through [`free`](SlabSource::free) on this source value (or
/// its drop): not through a `&self` method, and not because another process sharing the same
/// memory freed it (its memory stays mapped here). The arena relies on this to cache which
/// (offset, length) pairs it has already resolved; it forgets them before each `free` it makes.
///
/// Every byte of a block is initialized (any value, for example zero) when `alloc` returns it;
/// memory that a mapping or `alloc_zeroed` provides is. The arena hands chunk bytes out as
/// `&[u8]` without writing them first, and reads headers at offsets it is given.
pub unsafe trait SlabSource {
    /// Allocates `size` bytes aligned to `align` (a power of two, at most 4096); `None` when out of memory.
    fn alloc(&mut self, size: usize, align: usize) -> Option<u64>;
    /// Returns a block to the source.
    /// # Safety
    /// `off`, `size` and `align` are exactly those of a live block returned by `alloc` on this source.
    unsafe fn free(&mut self, off: u64, size: usize, align: usize);
    /// The address of byte `off` (an offset inside a live block).
    fn ptr(&self, off: u64) -> *mut u8;
    /// Whether `[off, off + len)` lies in memory this source can resolve; used to validate offsets read
    /// back from memory that may be corrupt (a reopened file) before following them.
    fn contains(&self, off: u64, len: usize) -> bool;

    /// `Some(self.ptr(off))` if `self.contains(off, len)`, else `None`.
    ///
    /// The arena resolves every offset it reads from source memory through this method; a
    /// source may override it with a fused check-and-translate that is faster than the two
    /// calls (the implementation must stay equivalent to the default).
    #[inline]
    fn resolve(&self, off: u64, len: usize) -> Option<*mut u8> {
        if self.contains(off, len) {
            Some(self.ptr(off))
        } else {
            None
        }
    }

    /// Allocates like [`alloc`](SlabSource::alloc), and stores the new block's offset (a
    /// native-endian `u64`) at byte `at` of the live block `record` of this source.
    ///
    /// The arena takes every slab and table block this way, recording it in its header, so
    /// that a process killed before the block is named by the arena's tables leaves it to
    /// [`Arena::repair`](crate::Arena::repair), which gives it back (with
    /// [`is_block`](SlabSource::is_block)'s word that it is one) instead of leaking it.
    ///
    /// The default allocates, then stores: a kill between the two leaks the block. A source
    /// whose memory outlives processes should make the two one step for a recovery, as
    /// `offheap_mmap::Region` does with `alloc_into`. Returns `None`, with nothing
    /// allocated, when `record + at` does not resolve to 8 bytes of this source.
    fn alloc_recorded(&mut self, size: usize, align: usize, record: u64, at: usize) -> Option<u64> {
        let word = record.checked_add(at as u64)?;
        self.resolve(word, 8)?;
        let off = self.alloc(size, align)?;
        match self.resolve(word, 8) {
            Some(p) => {
                // SAFETY: `resolve` vouched for 8 bytes at `p`; unaligned store.
                unsafe { p.cast::<u64>().write_unaligned(off) };
                Some(off)
            }
            None => {
                // SAFETY: just allocated with these arguments, never handed out.
                unsafe { self.free(off, size, align) };
                None
            }
        }
    }

    /// Frees like [`free`](SlabSource::free), and stores 0 into the `u64` at byte `at` of
    /// the live block `record` (which holds the record of the block being freed).
    ///
    /// The arena gives back every block it recorded as being given back this way, so that
    /// the record goes when the block does. The default clears the record, then frees: a
    /// kill between the two leaks the block (the other order would leave a record of a
    /// freed block, which another user of a shared source could be handed before the
    /// arena's repair frees it again). A source whose memory outlives processes should make
    /// the two one step for a recovery, as `offheap_mmap::Region::free_recorded` does.
    ///
    /// # Safety
    /// As for [`free`](SlabSource::free).
    unsafe fn free_recorded(
        &mut self,
        off: u64,
        size: usize,
        align: usize,
        record: u64,
        at: usize,
    ) {
        if let Some(p) = record
            .checked_add(at as u64)
            .and_then(|w| self.resolve(w, 8))
        {
            // SAFETY: `resolve` vouched for 8 bytes at `p`; unaligned store.
            unsafe { p.cast::<u64>().write_unaligned(0) };
        }
        // SAFETY: the caller's guarantee.
        unsafe { self.free(off, size, align) };
    }

    /// Whether `off` is the offset of a live block of this source (one that `alloc`
    /// returned and that was not freed since), if the source can tell; `None` if it cannot
    /// (the default).
    ///
    /// [`Arena::repair`](crate::Arena::repair) gives back a block that its header records
    /// as being taken or given back by an operation cut short only if this says `Some(true)`:
    /// the record may name a block that was never allocated, or freed already.
    fn is_block(&self, off: u64) -> Option<bool> {
        let _ = off;
        None
    }
}

// SAFETY: every method forwards to `S`, which upholds the contract; a `&mut S` gives exclusive
// access, so blocks cannot be freed behind the arena's back while the borrow lives.
unsafe impl<S: SlabSource + ?Sized> SlabSource for &mut S {
    #[inline]
    fn alloc(&mut self, size: usize, align: usize) -> Option<u64> {
        (**self).alloc(size, align)
    }
    #[inline]
    unsafe fn free(&mut self, off: u64, size: usize, align: usize) {
        // SAFETY: the caller's guarantee is forwarded unchanged.
        unsafe { (**self).free(off, size, align) }
    }
    #[inline]
    fn ptr(&self, off: u64) -> *mut u8 {
        (**self).ptr(off)
    }
    #[inline]
    fn contains(&self, off: u64, len: usize) -> bool {
        (**self).contains(off, len)
    }
    #[inline]
    fn resolve(&self, off: u64, len: usize) -> Option<*mut u8> {
        (**self).resolve(off, len)
    }
    #[inline]
    fn alloc_recorded(&mut self, size: usize, align: usize, record: u64, at: usize) -> Option<u64> {
        (**self).alloc_recorded(size, align, record, at)
    }
    #[inline]
    fn is_block(&self, off: u64) -> Option<bool> {
        (**self).is_block(off)
    }
    #[inline]
    unsafe fn free_recorded(
        &mut self,
        off: u64,
        size: usize,
        align: usize,
        record: u64,
        at: usize,
    ) {
        // SAFETY: the caller's guarantee is forwarded unchanged.
        unsafe { (**self).free_recorded(off, size, align, record, at) }
    }
}

/// Bits of a [`HeapSource`] offset that hold the byte position inside a block.
const HEAP_POS_BITS: u32 = 40;
const HEAP_POS_MASK: u64 = (1 << HEAP_POS_BITS) - 1;

#[derive(Clone, Copy)]
struct HeapBlock {
    /// Null when the slot is free.
    ptr: *mut u8,
    size: usize,
    align: usize,
}

/// The default source: each block is its own zeroed allocation from the global allocator.
///
/// Offsets are `(slot + 1) << 40 | position`: `slot` indexes the source's block table, so
/// [`contains`](SlabSource::contains) and [`ptr`](SlabSource::ptr) are a bounds check and an
/// add, exact for any offset (a forged or corrupt offset is refused, never dereferenced). Blocks
/// are limited to 1 TiB each and 2<sup>24</sup> at a time. Dropping the source frees every block
/// still allocated, so an arena that owns a `HeapSource` frees everything when dropped.
pub struct HeapSource {
    blocks: Vec<HeapBlock>,
    free_slots: Vec<u32>,
    live_bytes: usize,
}

// SAFETY: the source exclusively owns its blocks (plain heap allocations); the raw pointers are
// not shared with anything that outlives or aliases it, so moving it to another thread is sound.
unsafe impl Send for HeapSource {}

impl HeapSource {
    /// An empty source.
    pub const fn new() -> Self {
        HeapSource {
            blocks: Vec::new(),
            free_slots: Vec::new(),
            live_bytes: 0,
        }
    }

    /// Bytes in live blocks (what the arena currently holds from the allocator).
    pub fn live_bytes(&self) -> usize {
        self.live_bytes
    }

    /// Number of live blocks.
    pub fn live_blocks(&self) -> usize {
        self.blocks.len() - self.free_slots.len()
    }

    #[inline]
    fn block(&self, off: u64) -> Option<&HeapBlock> {
        let slot = (off >> HEAP_POS_BITS).wrapping_sub(1);
        match self.blocks.get(usize::try_from(slot).ok()?) {
            Some(b) if !b.ptr.is_null() => Some(b),
            _ => None,
        }
    }
}

impl Default for HeapSource {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for HeapSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapSource")
            .field("live_blocks", &self.live_blocks())
            .field("live_bytes", &self.live_bytes)
            .finish()
    }
}

// SAFETY: each block is a distinct zeroed global-allocator allocation of `size` bytes (at least 1) with
// the requested alignment, so blocks do not overlap and never move; `ptr` adds the position to
// the block's base, and `contains` checks the slot is live and the range lies inside its size.
unsafe impl SlabSource for HeapSource {
    fn alloc(&mut self, size: usize, align: usize) -> Option<u64> {
        if size as u64 > HEAP_POS_MASK {
            return None;
        }
        let layout = Layout::from_size_align(size.max(1), align).ok()?;
        let slot = match self.free_slots.last() {
            Some(&s) => s as usize,
            None if self.blocks.len() < (1 << 24) - 1 => self.blocks.len(),
            None => return None,
        };
        // SAFETY: the layout has a non-zero size. Zeroed, as the trait requires initialized
        // memory; large blocks come from fresh zero pages, so this writes nothing.
        let p = unsafe { alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return None;
        }
        let block = HeapBlock {
            ptr: p,
            size,
            align,
        };
        if slot == self.blocks.len() {
            self.blocks.push(block);
        } else {
            self.free_slots.pop();
            self.blocks[slot] = block;
        }
        self.live_bytes += size;
        Some(((slot as u64) + 1) << HEAP_POS_BITS)
    }

    unsafe fn free(&mut self, off: u64, size: usize, align: usize) {
        // Defensive: ignore anything that is not exactly a live block (see the trait's docs).
        let slot = (off >> HEAP_POS_BITS).wrapping_sub(1) as usize;
        let Some(b) = self.blocks.get_mut(slot) else {
            return;
        };
        if b.ptr.is_null() || off & HEAP_POS_MASK != 0 || b.size != size || b.align != align {
            return;
        }
        // SAFETY: `b.ptr` was allocated by `alloc` with exactly this layout and is still live.
        unsafe { alloc::dealloc(b.ptr, Layout::from_size_align_unchecked(size.max(1), align)) };
        b.ptr = ptr::null_mut();
        self.live_bytes -= size;
        self.free_slots.push(slot as u32);
    }

    #[inline]
    fn ptr(&self, off: u64) -> *mut u8 {
        match self.block(off) {
            Some(b) => b.ptr.wrapping_add((off & HEAP_POS_MASK) as usize),
            None => ptr::null_mut(),
        }
    }

    #[inline]
    fn contains(&self, off: u64, len: usize) -> bool {
        self.resolve(off, len).is_some()
    }

    fn is_block(&self, off: u64) -> Option<bool> {
        Some(off & HEAP_POS_MASK == 0 && self.block(off).is_some())
    }

    #[inline]
    fn resolve(&self, off: u64, len: usize) -> Option<*mut u8> {
        let b = self.block(off)?;
        let pos = (off & HEAP_POS_MASK) as usize;
        if len <= b.size && pos <= b.size - len {
            Some(b.ptr.wrapping_add(pos))
        } else {
            None
        }
    }
}

impl Drop for HeapSource {
    fn drop(&mut self) {
        for b in &self.blocks {
            if !b.ptr.is_null() {
                // SAFETY: a live block allocated with exactly this layout.
                unsafe {
                    alloc::dealloc(
                        b.ptr,
                        Layout::from_size_align_unchecked(b.size.max(1), b.align),
                    )
                };
            }
        }
    }
}

/// Alignment of a [`BufSource`]'s buffer.
const BUF_ALIGN: usize = 4096;
/// Bytes at the start of a [`BufSource`]'s buffer that hold its own state (the bump top).
const BUF_RESERVED: usize = 64;
/// Magic number of a [`BufSource`]'s own header.
const BUF_MAGIC: u64 = u64::from_le_bytes(*b"OHSLBUF1");

/// A fixed-capacity buffer source: one zeroed, 4096-aligned allocation, offsets are byte
/// positions in it, and blocks are carved by a bump allocator whose state (the top) lives in
/// the buffer's first 64 bytes.
///
/// Because everything, including the allocator's state, is in the buffer, the bytes can be
/// copied out ([`as_bytes`](BufSource::as_bytes)) and loaded into a new buffer at another
/// address ([`from_bytes`](BufSource::from_bytes)), and the arena reopened there with
/// [`Arena::open_in`](crate::Arena::open_in): a snapshot, and a small model of what a
/// memory-mapped file does. Freed blocks are reused only when they are the most recent block
/// (the bump top moves back); other frees leak until the buffer is dropped. It is meant for
/// tests, snapshots, fuzzing and bounded arenas; a real region allocator lives in `offheap-mmap`.
pub struct BufSource {
    base: *mut u8,
    cap: usize,
}

// SAFETY: the source exclusively owns its buffer.
unsafe impl Send for BufSource {}

impl BufSource {
    /// A zeroed buffer of `capacity` bytes (at least 128; rounded up to a multiple of 64).
    ///
    /// # Panics
    /// If the allocation fails or `capacity` overflows a `Layout` (like `Vec::with_capacity`).
    pub fn new(capacity: usize) -> Self {
        let cap = capacity.max(2 * BUF_RESERVED).next_multiple_of(64);
        let layout = Layout::from_size_align(cap, BUF_ALIGN).expect("BufSource capacity");
        // SAFETY: non-zero size.
        let base = unsafe { alloc::alloc_zeroed(layout) };
        if base.is_null() {
            alloc::handle_alloc_error(layout);
        }
        let s = BufSource { base, cap };
        s.set_top(BUF_RESERVED as u64);
        // SAFETY: the buffer has at least 64 bytes and is 4096-aligned.
        unsafe { (base as *mut u64).write(BUF_MAGIC) };
        s
    }

    /// A new buffer (at a new address) holding a copy of `bytes`, which are typically the
    /// [`as_bytes`](BufSource::as_bytes) of another `BufSource`. Any bytes are accepted: a
    /// corrupt allocator state is repaired conservatively (nothing more is handed out), and an
    /// arena opened in it validates its own state.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let s = BufSource::new(bytes.len());
        // SAFETY: the new buffer is at least `bytes.len()` long and does not overlap `bytes`.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), s.base, bytes.len()) };
        // SAFETY: the buffer has at least 64 bytes and is 4096-aligned.
        let magic = unsafe { (s.base as *const u64).read() };
        if magic != BUF_MAGIC || s.top() < BUF_RESERVED as u64 || s.top() > s.cap as u64 {
            s.set_top(s.cap as u64);
        }
        s
    }

    /// The whole buffer, allocator state included.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: the buffer is `cap` initialized (zeroed or written) bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.base, self.cap) }
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes handed out so far (the bump top).
    pub fn used(&self) -> usize {
        self.top() as usize
    }

    fn top(&self) -> u64 {
        // SAFETY: 8 aligned bytes at offset 8, inside the reserved header.
        unsafe { (self.base.add(8) as *const u64).read() }
    }

    fn set_top(&self, top: u64) {
        // SAFETY: as in `top`; `self` owns the buffer and no reference to these bytes exists.
        unsafe { (self.base.add(8) as *mut u64).write(top) }
    }
}

impl std::fmt::Debug for BufSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufSource")
            .field("capacity", &self.cap)
            .field("used", &self.used())
            .finish()
    }
}

// SAFETY: blocks are disjoint ranges `[off, off + size)` carved above the bump top, inside the
// buffer, with `off >= 64` (so never 0) and `off` a multiple of `align` (the base is aligned to
// 4096 >= align). The buffer never moves while the source lives.
unsafe impl SlabSource for BufSource {
    fn alloc(&mut self, size: usize, align: usize) -> Option<u64> {
        if !align.is_power_of_two() || align > BUF_ALIGN {
            return None;
        }
        let off = self.top().checked_next_multiple_of(align as u64)?;
        let end = off.checked_add(size as u64)?;
        if end > self.cap as u64 {
            return None;
        }
        self.set_top(end);
        Some(off)
    }

    unsafe fn free(&mut self, off: u64, size: usize, _align: usize) {
        // Only the most recent block can be given back; anything else leaks (documented).
        if off >= BUF_RESERVED as u64 && off.checked_add(size as u64) == Some(self.top()) {
            self.set_top(off);
        }
    }

    #[inline]
    fn ptr(&self, off: u64) -> *mut u8 {
        self.base.wrapping_add(off as usize)
    }

    #[inline]
    fn contains(&self, off: u64, len: usize) -> bool {
        off >= BUF_RESERVED as u64
            && (len as u64) <= self.cap as u64
            && off <= self.cap as u64 - len as u64
    }
}

impl Drop for BufSource {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe {
            alloc::dealloc(
                self.base,
                Layout::from_size_align_unchecked(self.cap, BUF_ALIGN),
            )
        }
    }
}
