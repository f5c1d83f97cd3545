//! Where a table's memory comes from.
//!
//! A table stores *handles* (`u64`, never 0) rather than addresses in its memory: its header
//! points at the directory by handle and the directory points at segments by handle. For an
//! [`offheap_mmap::Region`] a handle is the block's offset from the region's base, so a table
//! in a file-backed region reopens at any address. [`Heap`] is a memory on the global
//! allocator (handles are block numbers), for tables that need neither a file nor an mmap.

use crate::Error;
use core::cell::RefCell;
use core::ptr::NonNull;
use std::alloc::Layout;
use std::rc::Rc;

/// Memory a table allocates its header, directory and segments from.
///
/// # Safety
///
/// An implementation must guarantee that:
/// - `alloc(size, align)` returns a nonzero handle to a block of at least `size` bytes aligned
///   to `align` (any power of two up to 4096), disjoint from every other live block;
/// - `ptr(h, len)` for a live block `h` of at least `len` bytes returns its address, the same
///   address every time, valid for reads and writes of `len` bytes until `free(h)` or until
///   the memory is dropped, whatever else is allocated or freed meanwhile (blocks never move);
/// - `ptr` returns `None`, never a dangling pointer, for a handle/length it cannot vouch for
///   (it is called with handles read from files, which may be anything);
/// - the memory is not changed behind the table's back except by the table (or by code that
///   the table's owner coordinates with).
pub unsafe trait TableMemory {
    /// Allocates a block; its contents are unspecified.
    fn alloc(&self, size: u64, align: u64) -> Result<u64, Error>;
    /// Frees a block.
    ///
    /// # Safety
    /// `handle` must have come from `alloc` on this memory and not been freed since; no
    /// pointer into the block may be used afterwards.
    unsafe fn free(&self, handle: u64);
    /// The address of `len` bytes at the start of block `handle`, or `None` if `handle` is not
    /// a block of at least `len` bytes that this memory can address.
    fn ptr(&self, handle: u64, len: u64) -> Option<NonNull<u8>>;
    /// The handle stored under a root name, if any.
    fn root(&self, name: &str) -> Option<u64>;
    /// Stores (or with `None`, removes) a root handle under `name`.
    fn set_root(&self, name: &str, handle: Option<u64>) -> Result<(), Error>;
    /// Allocates like [`alloc`](Self::alloc), and stores `handle | record.mark` into the word
    /// that `record` names.
    ///
    /// A table records this way each block it allocates for a structural change, in its
    /// header, so that a process killed before the block is filled leaves it to the next
    /// open's repair instead of leaking it. The default allocates, then stores: a kill
    /// between the two leaks the block. A region stores in the write after the one that
    /// makes the allocation ([`offheap_mmap::Region::alloc_into`]), and its `recover`
    /// stores the record of an allocation that a kill left without one, so that no kill
    /// leaks the block.
    fn alloc_recorded(&self, size: u64, align: u64, record: AllocRecord) -> Result<u64, Error> {
        let AllocRecord { block, at, mark } = record;
        let handle = self.alloc(size, align)?;
        let word = at
            .checked_add(8)
            .and_then(|end| self.ptr(block, end))
            // SAFETY: `ptr` vouched for `at + 8` bytes.
            .map(|p| unsafe { p.as_ptr().add(at as usize) })
            .filter(|w| w.align_offset(8) == 0);
        match word {
            // SAFETY: an 8-aligned word inside a live block of this memory.
            Some(w) => unsafe { w.cast::<u64>().write(handle | mark) },
            None => {
                // SAFETY: just allocated, never shared.
                unsafe { self.free(handle) };
                return Err(Error::Alloc {
                    size,
                    align,
                    source: Some("the record is not a word of a live block".into()),
                });
            }
        }
        Ok(handle)
    }
    /// Faults in, ahead of need, one more page of the memory that the next allocations will
    /// take, keeping at most `ahead` bytes of it resident beyond what is in use; returns
    /// whether it did anything. A hint: a table calls it from inserts into a segment that is
    /// about to split, so that the split's new segment finds its pages there (see
    /// [`offheap_mmap::Region::prefault`]). The default does nothing.
    fn prefault(&self, ahead: u64) -> bool {
        let _ = ahead;
        false
    }
}

/// Where [`TableMemory::alloc_recorded`] records a new block: the 8-byte word `at` bytes into
/// the live block `block`, which receives the new block's handle or-ed with `mark` (bits
/// from 56 up, which no handle that a table keeps has).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocRecord {
    /// The handle of the block that holds the word.
    pub block: u64,
    /// The word's offset in that block, a multiple of 8.
    pub at: u64,
    /// The tag or-ed into the recorded handle.
    pub mark: u64,
}

/// Implements [`TableMemory`] for pointer types to a memory (`&T`, `Rc<T>`, `Box<T>`) by
/// forwarding every call to the pointee.
macro_rules! forward_table_memory {
    ($($ptr:ty),* $(,)?) => {$(
        // SAFETY: forwards every call to `T`, which upholds the contract.
        unsafe impl<T: TableMemory + ?Sized> TableMemory for $ptr {
            #[inline]
            fn alloc(&self, size: u64, align: u64) -> Result<u64, Error> {
                (**self).alloc(size, align)
            }
            #[inline]
            fn alloc_recorded(&self, size: u64, align: u64, r: AllocRecord) -> Result<u64, Error> {
                (**self).alloc_recorded(size, align, r)
            }
            #[inline]
            unsafe fn free(&self, handle: u64) {
                // SAFETY: same contract, forwarded.
                unsafe { (**self).free(handle) }
            }
            #[inline]
            fn ptr(&self, handle: u64, len: u64) -> Option<NonNull<u8>> {
                (**self).ptr(handle, len)
            }
            #[inline]
            fn root(&self, name: &str) -> Option<u64> {
                (**self).root(name)
            }
            #[inline]
            fn set_root(&self, name: &str, handle: Option<u64>) -> Result<(), Error> {
                (**self).set_root(name, handle)
            }
            #[inline]
            fn prefault(&self, ahead: u64) -> bool {
                (**self).prefault(ahead)
            }
        }
    )*};
}

forward_table_memory!(&T, Rc<T>, Box<T>);

/// A [`TableMemory`] on the global allocator: each block is one allocation and a handle is its
/// number. Nothing persists; dropping the `Heap` frees every block still allocated.
#[derive(Default)]
pub struct Heap {
    inner: RefCell<HeapInner>,
}

#[derive(Default)]
struct HeapInner {
    blocks: Vec<Option<(NonNull<u8>, Layout)>>,
    free_slots: Vec<usize>,
    roots: Vec<(String, u64)>,
    bytes: u64,
}

impl Heap {
    /// An empty heap memory.
    pub fn new() -> Heap {
        Heap::default()
    }

    /// Bytes currently allocated through this memory.
    pub fn allocated_bytes(&self) -> u64 {
        self.inner.borrow().bytes
    }

    /// Names of the roots currently set.
    pub fn root_names(&self) -> Vec<String> {
        self.inner
            .borrow()
            .roots
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Blocks currently allocated through this memory.
    pub fn allocated_blocks(&self) -> usize {
        let inner = self.inner.borrow();
        inner.blocks.len() - inner.free_slots.len()
    }
}

impl core::fmt::Debug for Heap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Heap")
            .field("blocks", &self.allocated_blocks())
            .field("bytes", &self.allocated_bytes())
            .finish()
    }
}

// SAFETY: the heap owns its blocks exclusively (they are reachable only through it), so moving
// it to another thread moves that ownership; it is not `Sync` (it holds a `RefCell`).
unsafe impl Send for Heap {}

// SAFETY: every block is a distinct global allocation of at least `size` bytes with the asked
// alignment; `ptr` checks the handle and the length against the stored layout; blocks never move.
unsafe impl TableMemory for Heap {
    fn alloc(&self, size: u64, align: u64) -> Result<u64, Error> {
        let err = || Error::Alloc {
            size,
            align,
            source: None,
        };
        let layout = usize::try_from(size)
            .ok()
            .zip(usize::try_from(align).ok())
            .and_then(|(s, a)| Layout::from_size_align(s.max(1), a).ok())
            .ok_or_else(err)?;
        // SAFETY: the layout has a nonzero size.
        let p = NonNull::new(unsafe { std::alloc::alloc(layout) }).ok_or_else(err)?;
        let mut inner = self.inner.borrow_mut();
        inner.bytes += layout.size() as u64;
        let idx = match inner.free_slots.pop() {
            Some(i) => {
                inner.blocks[i] = Some((p, layout));
                i
            }
            None => {
                inner.blocks.push(Some((p, layout)));
                inner.blocks.len() - 1
            }
        };
        Ok(idx as u64 + 1)
    }

    unsafe fn free(&self, handle: u64) {
        let mut inner = self.inner.borrow_mut();
        let idx = match usize::try_from(handle.wrapping_sub(1)) {
            Ok(i) if i < inner.blocks.len() => i,
            _ => return,
        };
        if let Some((p, layout)) = inner.blocks[idx].take() {
            // SAFETY: `p` was allocated with `layout` and is freed once (the slot is now None).
            unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
            inner.bytes -= layout.size() as u64;
            inner.free_slots.push(idx);
        }
    }

    fn ptr(&self, handle: u64, len: u64) -> Option<NonNull<u8>> {
        let inner = self.inner.borrow();
        let idx = usize::try_from(handle.checked_sub(1)?).ok()?;
        let (p, layout) = (*inner.blocks.get(idx)?)?;
        (len <= layout.size() as u64).then_some(p)
    }

    fn root(&self, name: &str) -> Option<u64> {
        let inner = self.inner.borrow();
        inner.roots.iter().find(|(n, _)| n == name).map(|&(_, h)| h)
    }

    fn set_root(&self, name: &str, handle: Option<u64>) -> Result<(), Error> {
        let mut inner = self.inner.borrow_mut();
        inner.roots.retain(|(n, _)| n != name);
        if let Some(h) = handle {
            inner.roots.push((name.to_owned(), h));
        }
        Ok(())
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        for (p, layout) in self.inner.get_mut().blocks.drain(..).flatten() {
            // SAFETY: each live block was allocated with its layout and is freed once.
            unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
        }
    }
}

/// The memory of tables made with [`SwissTable::new`](crate::SwissTable::new): an anonymous
/// [`Region`](offheap_mmap::Region) (see [`default_region_options`]).
pub type DefaultMemory = offheap_mmap::Region;

/// Options of the anonymous region behind [`SwissTable::new`](crate::SwissTable::new): the
/// region's defaults, except that only free runs of 64 MiB or more go back to the OS. The
/// region's default of 64 KiB would give back, and fault in again, the blocks that segment
/// rebuilds free and reallocate all the time; and a region that outlives its tables (one
/// region, many tables built and dropped) would fault every table's pages in again. glibc's
/// malloc behaves alike for hashbrown: after freeing a large block it keeps up to twice its
/// size before trimming. (A region dropped with its table unmaps everything anyway.)
///
/// Huge pages are **off** here, although anonymous regions default to them (see
/// [`RegionOptions::huge_pages`](offheap_mmap::RegionOptions::huge_pages)): the first
/// touch of each 2 MiB huge page is one large page fault, which a growing table's single
/// insert pays. On the project's VM that made the worst insert while growing to 50M keys
/// 3.3 ms instead of 0.37 ms (CPU time), breaking the table's bounded-pause promise.
/// `.huge_pages(true)` trades that for faster lookups in large tables (at 50M keys: hits
/// 106 instead of 117 ns, batched lookups 26 instead of 32 ns); docs/swiss.md has the
/// figures.
pub fn default_region_options() -> offheap_mmap::RegionOptions {
    offheap_mmap::RegionOptions::new()
        .release_threshold(64 << 20)
        .huge_pages(false)
}

pub(crate) fn default_memory() -> Result<DefaultMemory, Error> {
    offheap_mmap::Region::anonymous_with(&default_region_options())
        .map_err(|e| Error::Memory(Box::new(e)))
}

/// A region allocation of `size` bytes aligned to `align` as a table's handle or error.
fn region_block(
    got: Result<offheap_mmap::Offset, offheap_mmap::Error>,
    size: u64,
    align: u64,
) -> Result<u64, Error> {
    got.map(offheap_mmap::Offset::get)
        .map_err(|e| Error::Alloc {
            size,
            align,
            source: Some(Box::new(e)),
        })
}

// SAFETY: a region's blocks come from its allocator (aligned, disjoint, never moving: the
// base address is fixed for the region's life); `ptr` bounds-checks every handle against
// the mapping (extending this process's view first if the region grew elsewhere) and returns
// `None` outside it, so a handle read from a file never yields a pointer outside the map.
unsafe impl TableMemory for offheap_mmap::Region {
    fn alloc(&self, size: u64, align: u64) -> Result<u64, Error> {
        region_block(offheap_mmap::Region::alloc(self, size, align), size, align)
    }

    fn alloc_recorded(&self, size: u64, align: u64, r: AllocRecord) -> Result<u64, Error> {
        let block = offheap_mmap::Offset::new(r.block).ok_or(Error::Corrupt("zero handle"))?;
        let got = offheap_mmap::Region::alloc_into(self, size, align, block, r.at, r.mark);
        region_block(got, size, align)
    }

    unsafe fn free(&self, handle: u64) {
        if let Some(off) = offheap_mmap::Offset::new(handle) {
            // A bad handle (only possible from a corrupt file) is refused by the region's
            // allocator with an error; there is nothing better to do with it here.
            let _ = offheap_mmap::Region::free(self, off);
        }
    }

    /// `None` unless `handle` is a live allocation of at least `len` bytes (the region's
    /// O(1) boundary-tag checks: a handle read from a file that names a freed block, the
    /// middle of a block or the region's header is refused, not just one outside the map).
    /// Tables call this when they open, allocate or resolve a stored handle, never per
    /// lookup.
    fn ptr(&self, handle: u64, len: u64) -> Option<NonNull<u8>> {
        let off = offheap_mmap::Offset::new(handle)?;
        if self.allocation_size(off).ok()? < len {
            return None;
        }
        offheap_mmap::Region::ptr(self, off, len).ok()
    }

    fn root(&self, name: &str) -> Option<u64> {
        offheap_mmap::Region::root(self, name).map(offheap_mmap::Offset::get)
    }

    fn set_root(&self, name: &str, handle: Option<u64>) -> Result<(), Error> {
        let off = match handle {
            Some(h) => Some(offheap_mmap::Offset::new(h).ok_or(Error::Corrupt("zero handle"))?),
            None => None,
        };
        offheap_mmap::Region::set_root(self, name, off).map_err(|e| Error::Memory(Box::new(e)))
    }

    fn prefault(&self, ahead: u64) -> bool {
        offheap_mmap::Region::prefault(self, ahead)
    }
}
