//! The arena.

use std::cell::{Cell, UnsafeCell};
use std::ptr;

use crate::config::next_chunk_size;
use crate::layout::{
    param_check, stat, ClassRec, Header, Meta, SlabRec, BLOCK_ALIGN, CLASS_REC, HEADER_SIZE, MAGIC,
    META, NONE, NSTATS, PENDING_NEW, PENDING_OLD, SLAB_REC, VERSION,
};
use crate::stats::{CheckReport, ClassStats, CollectReport, ErrorCounts, RepairReport, Stats};
use crate::{Config, Error, Handle, HeapSource, ReleasePolicy, SlabSource};

/// A store to source memory: `st!(place, value)`. Under `cfg(test)` each one first asks the
/// crash simulation whether the "process" dies here (see `crate::kill`).
macro_rules! st {
    ($place:expr, $v:expr) => {{
        let v = $v;
        #[cfg(test)]
        crate::kill::write();
        $place = v;
    }};
}

/// A write-order point (see [`Arena::repair`] and the write-order table in
/// docs/concurrency.md):
/// stores before it are made before stores after it. The compiler is the only thing that
/// could reorder them for this purpose: a process killed at any instruction leaves every
/// store it retired in memory (the CPU's store buffer drains all the same), so program
/// order is the order another process finds.
#[inline(always)]
fn order() {
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::Release);
}

mod repair;

/// Lengths up to this are mapped to their class by a table lookup (8 KiB per arena); longer
/// ones by a binary search over the class sizes.
const SMALL_LENS: usize = 4096;

/// Immutable facts about a class, derived from the parameters (cached in the `Arena`).
#[derive(Clone, Copy, Debug)]
struct ClassInfo {
    /// The class's chunk size as go-slab computes it.
    chunk_size: u64,
    /// Bytes between chunks: `min(chunk_size, slab_size)` (no chunk is ever longer than a slab).
    stride: usize,
    /// Chunks per slab: `max(1, slab_size / chunk_size)`.
    cps: u32,
    /// Bytes of chunk metadata at the start of a slab's block (a multiple of 64).
    meta_bytes: usize,
    /// Bytes of a slab's block.
    block_size: usize,
}

/// Which of the header's two tables [`Arena::grow_table`] moves.
#[derive(Clone, Copy)]
enum Table {
    Class,
    Slab,
}

/// Entries of the block-resolution cache (direct-mapped by slab index).
const BLOCK_CACHE: usize = 32;

/// A cached resolution: (offset, length key, address).
type CachedBlock = Cell<(u64, u32, *mut u8)>;

/// Class facts and the small-length lookup table derived from the parameters.
type Derived = (Box<[ClassInfo]>, Box<[u16]>);

/// Offsets the arena already resolved through its source, with the addresses they gave.
///
/// Purely an optimisation of `SlabSource::resolve`: the key is exactly what would be resolved
/// (an offset and a length, or a slab block's offset and class), and the `SlabSource` contract
/// says a block's memory stays valid at the same address until it is freed through this
/// source or the source is dropped. The arena is the only user of its source, so it empties the
/// cache before each `free` it makes. Every mutable field is still read from source memory on
/// every operation; only the re-validation of an unchanged (offset, length) is skipped.
struct Resolved {
    slab_table: Cell<(u64, u32, *mut SlabRec)>,
    class_table: Cell<(u64, u32, *mut ClassRec)>,
    blocks: [CachedBlock; BLOCK_CACHE],
    /// The header's structure epoch when the fast-path caches below were filled. The fast
    /// paths use them only while the header still holds this value (one compare per
    /// operation); any other value sends the operation down the validating path, which
    /// empties them.
    epoch: Cell<u64>,
    /// The class table and the class count seen at the last sync (`count <= capacity`).
    ctab: Cell<*mut ClassRec>,
    ccount: Cell<u32>,
    /// Slab index → the slab's record, metadata array and class facts, filled by the
    /// validating path. An entry with a null `meta` is empty.
    entries: UnsafeCell<Vec<Entry>>,
    /// Indices of the filled entries (so `forget` is O(filled), not O(slabs)).
    filled: UnsafeCell<Vec<u32>>,
    /// The error of a slow path, on its way to the public wrapper.
    error: Cell<Option<Error>>,
}

/// A slab resolved and validated by the validating path: its record in the slab table, its
/// block's metadata array, and its class (immutable while the slab lives).
#[derive(Clone, Copy)]
struct Entry {
    meta: *mut Meta,
    rec: *mut SlabRec,
    cps: u32,
    class: u32,
}

/// An empty entry: `cps == 0` (no chunk index passes `< cps`) and `class == u32::MAX` (no
/// class matches), so readers test those before following `rec` or `meta`.
const EMPTY_ENTRY: Entry = Entry {
    meta: ptr::null_mut(),
    rec: ptr::null_mut(),
    cps: 0,
    class: u32::MAX,
};

impl Resolved {
    fn new() -> Self {
        Resolved {
            slab_table: Cell::new((0, 0, ptr::NonNull::dangling().as_ptr())),
            class_table: Cell::new((0, 0, ptr::NonNull::dangling().as_ptr())),
            blocks: std::array::from_fn(|_| Cell::new((0, 0, ptr::null_mut()))),
            epoch: Cell::new(0),
            ctab: Cell::new(ptr::NonNull::dangling().as_ptr()),
            ccount: Cell::new(0),
            entries: UnsafeCell::new(Vec::new()),
            filled: UnsafeCell::new(Vec::new()),
            error: Cell::new(None),
        }
    }

    /// Forgets every resolution (before a block is freed, or when the epoch moved).
    fn forget(&self) {
        self.slab_table
            .set((0, 0, ptr::NonNull::dangling().as_ptr()));
        self.class_table
            .set((0, 0, ptr::NonNull::dangling().as_ptr()));
        for b in self.blocks.iter() {
            b.set((0, 0, ptr::null_mut()));
        }
        self.ccount.set(0);
        // SAFETY: the arena is not `Sync` and no reference into these vectors lives across a
        // call (readers copy an `Entry` out), so these are the only references now.
        let (entries, filled) = unsafe { (&mut *self.entries.get(), &mut *self.filled.get()) };
        for &i in filled.iter() {
            entries[i as usize] = EMPTY_ENTRY;
        }
        filled.clear();
    }

    /// Records a validated slab.
    fn remember(&self, s: u32, e: Entry) {
        // SAFETY: as in `forget`.
        let (entries, filled) = unsafe { (&mut *self.entries.get(), &mut *self.filled.get()) };
        let i = s as usize;
        if i >= entries.len() {
            entries.resize(i + 1, EMPTY_ENTRY);
        }
        if entries[i].cps == 0 {
            filled.push(s);
        }
        entries[i] = e;
    }

    /// The entry of slab `s`, or an empty one. Its `rec` and `meta` may be followed only
    /// after a chunk index was checked `< cps` or its class matched (empty entries pass
    /// neither).
    #[inline(always)]
    fn entry(&self, s: u32) -> Entry {
        // SAFETY: as in `forget`; the reference does not outlive this call.
        let entries = unsafe { &*self.entries.get() };
        match entries.get(s as usize) {
            Some(e) => *e,
            None => EMPTY_ENTRY,
        }
    }
}

/// A validated chunk: pointers into source memory that stay valid until the arena changes.
#[derive(Clone, Copy)]
struct Loc {
    slab: u32,
    chunk: u32,
    class: u32,
    /// Chunks per slab of the class.
    cps: u32,
    rec: *mut SlabRec,
    meta: *mut Meta,
    base: *mut u8,
}

/// A slab arena: size classes with a growth factor, refcounted chunks, chunk chains.
///
/// All of its state (parameters, statistics, class table, slab table, chunk metadata, free
/// lists) lives in blocks of its [`SlabSource`], linked by offsets and indices, so an arena in a
/// memory-mapped file can be reopened with [`open_in`](Arena::open_in). The `Arena` value
/// caches only immutable facts (the source, the header's location, the parameters and the
/// class sizes derived from them) and reads every mutable field from source memory on each
/// operation.
///
/// Every index and offset read back from source memory is checked before it is followed; what
/// does not check out is reported as [`Error::Corrupt`]. Handles are validated (arena tag,
/// slab index, chunk index, generation, live refcount) so misuse is reported with a typed
/// error and changes nothing.
///
/// ```
/// use offheap_slab::Arena;
/// let mut arena = Arena::new(48, 1 << 20, 2.0)?;
/// let a = arena.alloc(64)?;
/// arena.bytes_mut(a)?.fill(7);
/// let b = arena.alloc(10)?;
/// arena.set_next(a, Some(b))?; // a holds a reference to b
/// arena.dec_ref(b)?;           // ours; b lives on through a
/// let next = arena.get_next(a)?.unwrap(); // a new reference to b
/// assert_eq!(arena.len(next)?, 10);
/// arena.dec_ref(next)?;
/// assert!(arena.dec_ref(a)?);  // frees a, then b
/// assert_eq!(arena.dec_ref(a), Err(offheap_slab::Error::StaleHandle));
/// # Ok::<(), offheap_slab::Error>(())
/// ```
pub struct Arena<S: SlabSource = HeapSource> {
    src: S,
    root: u64,
    /// Address of the header; stable for the source's lifetime by the `SlabSource` contract.
    hdr: *mut Header,
    tag: u32,
    keep: u32,
    slab_size: usize,
    config: Config,
    classes: Box<[ClassInfo]>,
    small: Box<[u16]>,
    resolved: Resolved,
}

// SAFETY: the arena exclusively owns its source (and through it the memory its raw pointers
// point into); moving it to another thread moves that ownership. It is not `Sync`.
unsafe impl<S: SlabSource + Send> Send for Arena<S> {}

impl Arena<HeapSource> {
    /// An arena on the heap with go-slab's three parameters and the default release policy.
    ///
    /// Errors: [`Error::InvalidConfig`] for bad parameters (see [`Config`]).
    pub fn new(
        start_chunk_size: usize,
        slab_size: usize,
        growth_factor: f64,
    ) -> Result<Self, Error> {
        Self::with_config(Config::new(start_chunk_size, slab_size, growth_factor))
    }

    /// An arena on the heap with the given parameters.
    pub fn with_config(config: Config) -> Result<Self, Error> {
        Self::create_in(HeapSource::new(), config)
    }
}

#[inline]
fn corrupt(what: &'static str) -> Error {
    Error::Corrupt(what)
}

impl<S: SlabSource> Arena<S> {
    // ------------------------------------------------------------------ construction

    /// Creates an arena whose state lives in `source`: allocates and fills its header block
    /// (tables and slabs come later, on demand). [`root`](Arena::root) is the header's offset.
    ///
    /// Errors: [`Error::InvalidConfig`]; [`Error::OutOfMemory`] if the source has no room for
    /// the header.
    pub fn create_in(source: S, config: Config) -> Result<Self, Error> {
        Self::create_in_tagged(source, config, random_tag())
    }

    /// [`create_in`](Arena::create_in) with the tag that every handle of the arena carries
    /// chosen by the caller instead of at random: the same operations then write the same
    /// bytes (reproducible files, for tests and fuzzing). Two arenas of one source should
    /// not share a tag: a handle of one then passes the other's tag check.
    pub fn create_in_tagged(mut source: S, config: Config, tag: u32) -> Result<Self, Error> {
        let (classes, small) = derive(&config)?;
        let root = source
            .alloc(HEADER_SIZE, BLOCK_ALIGN)
            .ok_or(Error::OutOfMemory)?;
        let hdr = source.ptr(root) as *mut Header;
        let keep = config.release.keep();
        let start = config.start_chunk_size as u64;
        let slab = config.slab_size as u64;
        let gbits = config.growth_factor.to_bits();
        let total = classes.len() as u32;
        let header = Header {
            magic: MAGIC,
            version: VERSION,
            tag,
            start_chunk_size: start,
            slab_size: slab,
            growth_bits: gbits,
            keep_empty: keep,
            class_total: total,
            param_check: param_check(tag, start, slab, gbits, keep, total),
            class_table: 0,
            class_cap: 0,
            class_count: 0,
            slab_table: 0,
            slab_cap: 0,
            slab_len: 0,
            free_slot: NONE,
            live_slabs: 0,
            total_chunks: 0,
            epoch: 0,
            stats: [0; NSTATS],
            pending: [0; 4],
        };
        // SAFETY: `root` is a fresh block of HEADER_SIZE bytes aligned to 64 (>= Header's align).
        unsafe { hdr.write(header) };
        Ok(Arena {
            src: source,
            root,
            hdr,
            tag,
            keep,
            slab_size: config.slab_size,
            config,
            classes,
            small,
            resolved: Resolved::new(),
        })
    }

    /// Opens the arena whose header is at offset `root` of `source` (an arena created with
    /// [`create_in`](Arena::create_in), possibly by another process, possibly in memory now
    /// mapped at another address). O(1) in the arena's contents: it validates the header
    /// (magic, layout version, parameters and their check value, table offsets and lengths)
    /// and derives the class sizes from the parameters. Everything else is validated as it is
    /// used; [`check`](Arena::check) validates it all at once.
    ///
    /// Errors: [`Error::NotAnArena`], [`Error::UnsupportedVersion`], [`Error::Corrupt`],
    /// [`Error::InvalidConfig`] (stored parameters that are not valid).
    pub fn open_in(source: S, root: u64) -> Result<Self, Error> {
        let p = source
            .resolve(root, HEADER_SIZE)
            .ok_or(corrupt("header offset outside the source"))?;
        if p as usize % std::mem::align_of::<Header>() != 0 {
            return Err(corrupt("header offset misaligned"));
        }
        let hdr = p as *mut Header;
        // SAFETY: `hdr` is valid for HEADER_SIZE initialized bytes (the source's contract) and
        // aligned; Header is plain integers, valid for any bit pattern.
        let h = unsafe { hdr.read() };
        if h.magic != MAGIC {
            return Err(Error::NotAnArena);
        }
        if h.version != VERSION {
            return Err(Error::UnsupportedVersion(h.version));
        }
        let config = Config {
            start_chunk_size: usize::try_from(h.start_chunk_size)
                .map_err(|_| corrupt("start chunk size"))?,
            slab_size: usize::try_from(h.slab_size).map_err(|_| corrupt("slab size"))?,
            growth_factor: f64::from_bits(h.growth_bits),
            release: ReleasePolicy::from_keep(h.keep_empty),
        };
        if h.param_check
            != param_check(
                h.tag,
                h.start_chunk_size,
                h.slab_size,
                h.growth_bits,
                h.keep_empty,
                h.class_total,
            )
        {
            return Err(corrupt("parameter check value mismatch"));
        }
        let (classes, small) = derive(&config)?;
        if h.class_total as usize != classes.len() {
            return Err(corrupt("class count does not match the parameters"));
        }
        if h.class_count > h.class_cap || h.class_cap > h.class_total {
            return Err(corrupt("class table length"));
        }
        if h.class_cap > 0 && !source.contains(h.class_table, h.class_cap as usize * CLASS_REC) {
            return Err(corrupt("class table offset"));
        }
        if h.slab_len > h.slab_cap || h.slab_cap == NONE {
            return Err(corrupt("slab table length"));
        }
        if h.slab_cap > 0 && !source.contains(h.slab_table, h.slab_cap as usize * SLAB_REC) {
            return Err(corrupt("slab table offset"));
        }
        if h.free_slot != NONE && h.free_slot >= h.slab_len {
            return Err(corrupt("free slot list head"));
        }
        Ok(Arena {
            src: source,
            root,
            hdr,
            tag: h.tag,
            keep: h.keep_empty,
            slab_size: config.slab_size,
            config,
            classes,
            small,
            resolved: Resolved::new(),
        })
    }

    /// Offset of the arena's header block in its source: what [`open_in`](Arena::open_in)
    /// takes to reopen the arena.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// How many blocks of its source the arena holds: its header, its class and slab tables
    /// (once it has them), and one per live slab. With a source that the arena does not
    /// share, the source's live blocks minus this are the blocks a crash leaked: none once
    /// [`repair`](Arena::repair) has run, with a source that makes
    /// [`alloc_recorded`](SlabSource::alloc_recorded) and
    /// [`free_recorded`](SlabSource::free_recorded) recoverable steps (a region does).
    ///
    /// Errors: [`Error::Corrupt`] if the slab table does not check out.
    ///
    /// ```
    /// use offheap_slab::{Arena, Config, HeapSource};
    ///
    /// let mut a = Arena::create_in(HeapSource::new(), Config::new(16, 4096, 2.0))?;
    /// assert_eq!(a.blocks_held()?, 1); // the header
    /// a.alloc(10)?;
    /// assert_eq!(a.blocks_held()?, 4); // + class table, slab table, one slab
    /// # Ok::<(), offheap_slab::Error>(())
    /// ```
    pub fn blocks_held(&self) -> Result<usize, Error> {
        // SAFETY: the validated header.
        let (ct, st, live) = unsafe {
            (
                (*self.hdr).class_table,
                (*self.hdr).slab_table,
                (*self.hdr).live_slabs,
            )
        };
        let _ = self.slab_table()?;
        Ok(1 + usize::from(ct != 0) + usize::from(st != 0) + live as usize)
    }

    /// The arena's parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The arena's source.
    pub fn source(&self) -> &S {
        &self.src
    }

    /// Gives the source back, with the arena's state still in it (reopen it with
    /// [`open_in`](Arena::open_in) and [`root`](Arena::root)). Dropping an `Arena` drops its
    /// source; an arena over a [`HeapSource`] frees everything then.
    pub fn into_source(self) -> S {
        self.src
    }

    /// Chunk sizes of all classes the parameters imply (also those not yet created).
    pub fn class_sizes(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.classes.iter().map(|c| c.chunk_size as usize)
    }

    // ------------------------------------------------------------------ public operations

    /// Allocates a chunk for `len` bytes (`0 <= len <= slab_size`) from the first class whose
    /// chunk size is at least `len`, with refcount 1 and no next. Its bytes are unspecified
    /// (what the source or a previous chunk left there; zero for fresh heap memory).
    ///
    /// O(1): a table lookup (or a binary search over the classes for `len > 4096`), then a pop
    /// from the class's first partially used slab, or a new slab from the source.
    ///
    /// Errors: [`Error::TooBig`] (nothing allocated), [`Error::OutOfMemory`] (the source had
    /// no room for a new slab or a larger table), [`Error::Corrupt`].
    #[inline(always)]
    pub fn alloc(&mut self, len: usize) -> Result<Handle, Error> {
        if let Some(&class) = self.small.get(len) {
            if let Some(h) = self.alloc_fast(class as u32, len) {
                return Ok(h);
            }
        }
        // The slow path returns the handle in two registers (its complement is never zero:
        // a live slab index is never `u32::MAX`) and parks its error, so that the fast and
        // slow results merge without a trip through the stack.
        match self.alloc_slow(len) {
            Some(bits) => Ok(Handle::from_bits(!bits.get())),
            None => Err(self.take_error()),
        }
    }

    #[cold]
    #[inline(never)]
    fn take_error(&self) -> Error {
        self.resolved
            .error
            .take()
            .unwrap_or(Error::Corrupt("lost error"))
    }

    /// `alloc` by the validating path: every case the fast path leaves (a new class or slab,
    /// a slab becoming full, the release policy's bookkeeping, lengths above the lookup table,
    /// caches to refill, errors).
    #[cold]
    #[inline(never)]
    fn alloc_slow(&mut self, len: usize) -> Option<std::num::NonZeroU128> {
        match self.alloc_validated(len) {
            Ok(h) => std::num::NonZeroU128::new(!h.to_bits()),
            Err(e) => {
                self.resolved.error.set(Some(e));
                None
            }
        }
    }

    fn alloc_validated(&mut self, len: usize) -> Result<Handle, Error> {
        self.sync();
        let Some(class) = self.class_of(len) else {
            return Err(self.count(Error::TooBig {
                len,
                max: self.slab_size,
            }));
        };
        match self.alloc_in(class, len) {
            Ok(h) => {
                self.bump(stat::ALLOCS);
                Ok(h)
            }
            Err(e) => Err(self.count(e)),
        }
    }

    /// The common case of `alloc`: a chunk from the class's first partial slab that does not
    /// make it full. `None` (having changed nothing) for anything else.
    #[inline(always)]
    fn alloc_fast(&mut self, class: u32, len: usize) -> Option<Handle> {
        if !self.synced() || class >= self.resolved.ccount.get() {
            return None;
        }
        // SAFETY: `ctab` is the class table validated at the current epoch with
        // `ccount <= capacity` records (see `sync`), and `class < ccount`.
        let s = unsafe { (*self.resolved.ctab.get().add(class as usize)).partial_head };
        let e = self.resolved.entry(s);
        if e.class != class {
            return None; // also an empty entry
        }
        let rec = e.rec;
        // SAFETY: `e` was validated at the current epoch: `rec` is the slab's record and
        // `meta` its metadata array of `cps` entries. Every chunk index used below is checked
        // against `cps` (through the frontier) before it is followed; nothing is written until
        // everything is checked.
        unsafe {
            let fh = (*rec).free_head;
            let frontier = (*rec).frontier;
            if frontier > e.cps {
                return None;
            }
            let (chunk, new_free, new_frontier) = if fh != NONE {
                if fh >= frontier {
                    return None;
                }
                let m = e.meta.add(fh as usize);
                if (*m).refcount != 0 {
                    return None;
                }
                (fh, (*m).next_chunk, frontier)
            } else if frontier < e.cps {
                (frontier, NONE, frontier + 1)
            } else {
                return None;
            };
            if new_free == NONE && new_frontier == e.cps {
                return None; // the slab becomes full: it leaves the partial list
            }
            let in_use = (*rec).in_use;
            if in_use == 0 && self.keep != u32::MAX {
                return None; // the class's empty-slab count changes
            }
            let m = e.meta.add(chunk as usize);
            Self::claim(
                rec,
                m,
                len,
                (new_frontier != frontier).then_some(new_frontier),
            );
            st!((*rec).free_head, new_free);
            st!((*rec).in_use, in_use.wrapping_add(1));
            self.bump(stat::ALLOCS);
            Some(Handle {
                slab: s,
                chunk,
                gen: (*m).gen,
                tag: self.tag,
            })
        }
    }

    /// The truth writes of an allocation, in crash order: the chunk's metadata (length, no
    /// next; a never-used chunk's generation), then its refcount (the commit point of a chunk
    /// from the free list), then for a never-used chunk the slab's frontier (its commit
    /// point: metadata beyond the frontier is never read). A kill before the commit leaves
    /// the chunk free; the free list and in-use count written after it are derived.
    ///
    /// # Safety
    ///
    /// `rec` and `m` are a validated slab record and one of its chunks' metadata; for
    /// `frontier: Some(f)`, `m` is the chunk at the slab's old frontier `f - 1`.
    #[inline(always)]
    unsafe fn claim(rec: *mut SlabRec, m: *mut Meta, len: usize, frontier: Option<u32>) {
        // SAFETY: the caller's guarantee.
        unsafe {
            st!((*m).len, len as u32);
            st!((*m).next_slab, NONE);
            st!((*m).next_chunk, NONE);
            if frontier.is_some() {
                st!((*m).gen, (*rec).gen_floor);
            }
            order();
            st!((*m).refcount, 1);
            if let Some(f) = frontier {
                order();
                st!((*rec).frontier, f);
            }
            order();
        }
    }

    /// Allocates a chunk of `data.len()` bytes holding a copy of `data`.
    pub fn alloc_from(&mut self, data: &[u8]) -> Result<Handle, Error> {
        let h = self.alloc(data.len())?;
        let loc = self.locate(h)?;
        let ci = self.classes[loc.class as usize];
        // SAFETY: the chunk's data is `len <= stride` bytes inside its slab block; `data` is
        // a distinct Rust slice, so the ranges do not overlap.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.data_ptr(&loc, &ci), data.len()) };
        Ok(h)
    }

    /// Adds a reference to the chunk.
    ///
    /// Errors: [`Error::StaleHandle`], [`Error::ForeignHandle`], [`Error::InvalidHandle`],
    /// [`Error::RefcountOverflow`], [`Error::Corrupt`].
    #[inline(always)]
    pub fn add_ref(&mut self, h: Handle) -> Result<(), Error> {
        if let Some(loc) = self.locate_fast(h) {
            // SAFETY: `loc.meta` was validated by `locate_fast`.
            let rc = unsafe { (*loc.meta).refcount };
            if rc != u32::MAX {
                // SAFETY: as above.
                unsafe { st!((*loc.meta).refcount, rc + 1) };
                self.bump(stat::ADD_REFS);
                return Ok(());
            }
        }
        self.add_ref_slow(h)
    }

    #[cold]
    #[inline(never)]
    fn add_ref_slow(&mut self, h: Handle) -> Result<(), Error> {
        match self.locate(h) {
            Ok(loc) => {
                // SAFETY: `loc.meta` was validated by `locate`.
                let rc = unsafe { (*loc.meta).refcount };
                if rc == u32::MAX {
                    return Err(self.count(Error::RefcountOverflow));
                }
                // SAFETY: as above.
                unsafe { st!((*loc.meta).refcount, rc + 1) };
                self.bump(stat::ADD_REFS);
                Ok(())
            }
            Err(e) => Err(self.count(e)),
        }
    }

    /// Releases a reference; returns whether it was the last one. At zero the chunk goes back
    /// to its slab's free list and its next (if any) is released in turn, iteratively, so a
    /// chain of any length is released without recursion. A slab whose chunks are then all
    /// free may go back to the source (see [`ReleasePolicy`]).
    ///
    /// Errors: [`Error::StaleHandle`] (also for a double release), [`Error::ForeignHandle`],
    /// [`Error::InvalidHandle`], [`Error::Corrupt`].
    #[inline(always)]
    pub fn dec_ref(&mut self, h: Handle) -> Result<bool, Error> {
        if let Some(loc) = self.locate_fast(h) {
            // SAFETY: `loc.meta` was validated by `locate_fast` (its refcount is not zero).
            unsafe {
                let rc = (*loc.meta).refcount;
                if rc > 1 {
                    st!((*loc.meta).refcount, rc - 1);
                    self.bump(stat::DEC_REFS);
                    return Ok(false);
                }
                if (*loc.meta).next_slab == NONE && self.free_fast(loc) {
                    self.bump(stat::DEC_REFS);
                    return Ok(true);
                }
            }
        }
        self.dec_ref_slow(h)
    }

    /// `dec_ref` by the validating path: chains, slabs that change lists, errors.
    #[cold]
    #[inline(never)]
    fn dec_ref_slow(&mut self, h: Handle) -> Result<bool, Error> {
        let loc = match self.locate(h) {
            Ok(loc) => loc,
            Err(e) => return Err(self.count(e)),
        };
        self.bump(stat::DEC_REFS);
        // SAFETY: `loc.meta` was validated by `locate`.
        unsafe {
            let rc = (*loc.meta).refcount;
            if rc > 1 {
                st!((*loc.meta).refcount, rc - 1);
                return Ok(false);
            }
        }
        // SAFETY: as above.
        let r = if unsafe { (*loc.meta).next_slab } == NONE {
            self.free_chunk(loc)
        } else {
            self.release_chain(loc)
        };
        match r {
            Ok(()) => Ok(true),
            Err(e) => Err(self.count(e)),
        }
    }

    /// Sets the chunk's next: takes a reference on `next` (if any) and releases the old next
    /// (if any), as go-slab's `SetNext`.
    ///
    /// Refuses to close a cycle: it walks the chain from `next` and fails with
    /// [`Error::Cycle`] if it meets `h`. That walk costs O(length of `next`'s chain), so build
    /// long chains by appending at the tail (O(1) per link) rather than by prepending to the
    /// head (O(n) per link).
    ///
    /// Errors: the handle errors for either handle, [`Error::Cycle`],
    /// [`Error::RefcountOverflow`] (for `next`), [`Error::Corrupt`].
    pub fn set_next(&mut self, h: Handle, next: Option<Handle>) -> Result<(), Error> {
        match self.set_next_inner(h, next) {
            Ok(()) => {
                self.bump(stat::SET_NEXTS);
                Ok(())
            }
            Err(e) => Err(self.count(e)),
        }
    }

    /// The chunk's next, with a new reference that the caller must release, as go-slab's
    /// `GetNext`; `None` at the end of a chain.
    ///
    /// Errors: the handle errors, [`Error::RefcountOverflow`], [`Error::Corrupt`].
    pub fn get_next(&mut self, h: Handle) -> Result<Option<Handle>, Error> {
        let r = self.locate(h).and_then(|loc| {
            // SAFETY: `loc.meta` was validated by `locate`.
            let (ns, nc) = unsafe { ((*loc.meta).next_slab, (*loc.meta).next_chunk) };
            if ns == NONE {
                return Ok(None);
            }
            let nl = self.locate_link(ns, nc)?;
            // SAFETY: validated by `locate_link`.
            unsafe {
                let rc = (*nl.meta).refcount;
                if rc == u32::MAX {
                    return Err(Error::RefcountOverflow);
                }
                st!((*nl.meta).refcount, rc + 1);
                Ok(Some(self.handle_of(&nl)))
            }
        });
        match r {
            Ok(n) => {
                self.bump(stat::GET_NEXTS);
                Ok(n)
            }
            Err(e) => Err(self.count(e)),
        }
    }

    /// The chunk's next without taking a reference (for walking a chain that the caller keeps
    /// alive through its head); `None` at the end of a chain.
    pub fn peek_next(&self, h: Handle) -> Result<Option<Handle>, Error> {
        let loc = self.locate(h)?;
        // SAFETY: `loc.meta` was validated by `locate`.
        let (ns, nc) = unsafe { ((*loc.meta).next_slab, (*loc.meta).next_chunk) };
        if ns == NONE {
            return Ok(None);
        }
        let nl = self.locate_link(ns, nc)?;
        Ok(Some(self.handle_of(&nl)))
    }

    /// The chunk's bytes (its length is the `len` given to `alloc`).
    ///
    /// If the source's memory is shared with other processes, the caller must ensure (with
    /// the higher layer's lock) that nobody writes the chunk while the slice lives.
    #[inline]
    pub fn bytes(&self, h: Handle) -> Result<&[u8], Error> {
        let loc = self.locate(h)?;
        let ci = self.classes[loc.class as usize];
        let len = self.chunk_len(&loc)?;
        // SAFETY: `locate` validated the chunk and `chunk_len` its length: its `len` bytes lie
        // inside the slab block, which is initialized memory (the source's contract). The
        // borrow of `self` keeps the arena from changing while the slice lives.
        Ok(unsafe { std::slice::from_raw_parts(self.data_ptr(&loc, &ci), len) })
    }

    /// The chunk's bytes, writable.
    #[inline]
    pub fn bytes_mut(&mut self, h: Handle) -> Result<&mut [u8], Error> {
        let loc = match self.locate(h) {
            Ok(l) => l,
            Err(e) => return Err(self.count(e)),
        };
        let ci = self.classes[loc.class as usize];
        let len = match self.chunk_len(&loc) {
            Ok(l) => l,
            Err(e) => return Err(self.count(e)),
        };
        // SAFETY: as in `bytes`; the exclusive borrow of `self` makes the slice unique.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.data_ptr(&loc, &ci), len) })
    }

    /// Copies `buf.len()` bytes starting at `offset` of the chunk into `buf`.
    ///
    /// Errors: the handle errors, [`Error::OutOfBounds`] if the range leaves the chunk.
    pub fn read(&self, h: Handle, offset: usize, buf: &mut [u8]) -> Result<(), Error> {
        let bytes = self.bytes(h)?;
        let src = range(bytes.len(), offset, buf.len()).map(|r| &bytes[r])?;
        buf.copy_from_slice(src);
        Ok(())
    }

    /// Copies `data` into the chunk starting at `offset`.
    ///
    /// Errors: the handle errors, [`Error::OutOfBounds`] if the range leaves the chunk.
    pub fn write(&mut self, h: Handle, offset: usize, data: &[u8]) -> Result<(), Error> {
        let bytes = self.bytes_mut(h)?;
        match range(bytes.len(), offset, data.len()) {
            Ok(r) => {
                bytes[r].copy_from_slice(data);
                Ok(())
            }
            Err(e) => Err(self.count(e)),
        }
    }

    /// The chunk's length (the `len` given to `alloc`).
    pub fn len(&self, h: Handle) -> Result<usize, Error> {
        let loc = self.locate(h)?;
        self.chunk_len(&loc)
    }

    /// The chunk's refcount.
    pub fn refcount(&self, h: Handle) -> Result<u32, Error> {
        let loc = self.locate(h)?;
        // SAFETY: validated by `locate`.
        Ok(unsafe { (*loc.meta).refcount })
    }

    /// Whether `h` is a live chunk of this arena.
    pub fn owns(&self, h: Handle) -> bool {
        self.locate(h).is_ok()
    }

    /// The arena's counters and per-class figures.
    ///
    /// O(classes + slabs). Errors: [`Error::Corrupt`] if the tables cannot be read.
    pub fn stats(&self) -> Result<Stats, Error> {
        // Another arena on this memory may have moved a table since this one cached it.
        self.sync();
        let c = self.counters();
        let (tab, len) = self.slab_table()?;
        let (_, ccount) = self.class_table()?;
        let mut classes: Vec<ClassStats> = (0..ccount as usize)
            .map(|i| ClassStats {
                chunk_size: self.classes[i].chunk_size as usize,
                chunks_per_slab: self.classes[i].cps as usize,
                ..ClassStats::default()
            })
            .collect();
        let mut slabs = 0;
        for s in 0..len as usize {
            // SAFETY: `s < slab_len <= slab_cap`, checked by `slab_table`.
            let rec = unsafe { &*tab.add(s) };
            if rec.block == 0 {
                continue;
            }
            let cs = classes
                .get_mut(rec.class as usize)
                .ok_or(corrupt("slab of an unknown class"))?;
            slabs += 1;
            cs.slabs += 1;
            cs.chunks += cs.chunks_per_slab;
            cs.in_use += rec.in_use as usize;
            cs.empty_slabs += (rec.in_use == 0) as usize;
        }
        for cs in &mut classes {
            cs.free = cs.chunks.saturating_sub(cs.in_use);
        }
        Ok(Stats {
            allocs: c[stat::ALLOCS],
            add_refs: c[stat::ADD_REFS],
            dec_refs: c[stat::DEC_REFS],
            dec_ref_zeroes: c[stat::DEC_REF_ZEROES],
            get_nexts: c[stat::GET_NEXTS],
            set_nexts: c[stat::SET_NEXTS],
            mallocs: c[stat::MALLOCS],
            malloc_errs: c[stat::MALLOC_ERRS],
            too_big_errs: c[stat::TOO_BIG_ERRS],
            slab_frees: c[stat::SLAB_FREES],
            table_grows: c[stat::TABLE_GROWS],
            errors: ErrorCounts {
                stale_handle: c[stat::STALE_ERRS],
                foreign_handle: c[stat::FOREIGN_ERRS],
                invalid_handle: c[stat::INVALID_ERRS],
                cycle: c[stat::CYCLE_ERRS],
                refcount_overflow: c[stat::OVERFLOW_ERRS],
                out_of_bounds: c[stat::BOUNDS_ERRS],
                corrupt: c[stat::CORRUPT_ERRS],
            },
            slabs,
            slab_size: self.slab_size,
            classes,
        })
    }

    /// Walks and validates the whole state: header, class table, slab table, every slab's
    /// free list (acyclic, within the frontier, consistent with the in-use count), every live
    /// chunk's metadata (refcount, generation, length, next link to a live chunk), the chain
    /// graph (acyclic, each chunk's refcount at least the number of links to it), the partial
    /// and free-slot lists, and the counters that must agree with them.
    ///
    /// O(slabs × chunks per slab) time and memory; a diagnostic, not for hot paths.
    pub fn check(&self) -> Result<CheckReport, Error> {
        crate::check::check(self)
    }

    // ------------------------------------------------------------------ internals

    #[inline(always)]
    fn bump(&mut self, i: usize) {
        // SAFETY: `hdr` is the validated header; `i < NSTATS`.
        unsafe { st!((*self.hdr).stats[i], (*self.hdr).stats[i].wrapping_add(1)) };
    }

    #[cold]
    fn count(&mut self, e: Error) -> Error {
        let i = match e {
            Error::TooBig { .. } => stat::TOO_BIG_ERRS,
            Error::OutOfMemory => stat::MALLOC_ERRS,
            Error::StaleHandle => stat::STALE_ERRS,
            Error::ForeignHandle => stat::FOREIGN_ERRS,
            Error::InvalidHandle => stat::INVALID_ERRS,
            Error::Cycle => stat::CYCLE_ERRS,
            Error::RefcountOverflow => stat::OVERFLOW_ERRS,
            Error::OutOfBounds { .. } => stat::BOUNDS_ERRS,
            Error::Corrupt(_) => stat::CORRUPT_ERRS,
            _ => return e,
        };
        self.bump(i);
        e
    }

    pub(crate) fn counters(&self) -> [u64; NSTATS] {
        // SAFETY: the validated header.
        unsafe { (*self.hdr).stats }
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the validated header; no `&mut` to it exists while `&self` is borrowed
        // (mutation goes through `&mut self` and raw place expressions only).
        unsafe { &*self.hdr }
    }

    #[inline(always)]
    fn class_of(&self, len: usize) -> Option<u32> {
        if let Some(&c) = self.small.get(len) {
            return Some(c as u32);
        }
        if len > self.slab_size {
            return None;
        }
        Some(self.classes.partition_point(|c| c.chunk_size < len as u64) as u32)
    }

    /// The chunk's length, checked against its class (memory may be corrupt).
    #[inline(always)]
    fn chunk_len(&self, loc: &Loc) -> Result<usize, Error> {
        // SAFETY: validated by the caller's locate.
        let len = unsafe { (*loc.meta).len } as usize;
        if len > self.classes[loc.class as usize].stride {
            return Err(corrupt("chunk length beyond its chunk size"));
        }
        Ok(len)
    }

    #[inline]
    fn handle_of(&self, loc: &Loc) -> Handle {
        Handle {
            slab: loc.slab,
            chunk: loc.chunk,
            // SAFETY: validated by the caller's locate.
            gen: unsafe { (*loc.meta).gen },
            tag: self.tag,
        }
    }

    #[inline]
    fn data_ptr(&self, loc: &Loc, ci: &ClassInfo) -> *mut u8 {
        // SAFETY: `chunk < cps`, so the data lies inside the block of `block_size` bytes.
        unsafe { loc.base.add(ci.meta_bytes + loc.chunk as usize * ci.stride) }
    }

    /// The slab table and its length, validated.
    #[inline(always)]
    pub(crate) fn slab_table(&self) -> Result<(*mut SlabRec, u32), Error> {
        // SAFETY: the validated header.
        let (off, cap, len) = unsafe {
            (
                (*self.hdr).slab_table,
                (*self.hdr).slab_cap,
                (*self.hdr).slab_len,
            )
        };
        if len > cap {
            return Err(corrupt("slab table length"));
        }
        let (c_off, c_cap, p) = self.resolved.slab_table.get();
        if c_off == off && c_cap == cap {
            return Ok((p, len));
        }
        self.resolve_slab_table(off, cap).map(|p| (p, len))
    }

    #[cold]
    fn resolve_slab_table(&self, off: u64, cap: u32) -> Result<*mut SlabRec, Error> {
        self.resolve_table(
            &self.resolved.slab_table,
            off,
            cap,
            SLAB_REC,
            ("slab table offset", "slab table misaligned"),
        )
    }

    /// Resolves and validates a table of `cap` records of `rec` bytes at `off` (the slab or
    /// the class table) and remembers the result in `cache`.
    #[cold]
    fn resolve_table<T>(
        &self,
        cache: &Cell<(u64, u32, *mut T)>,
        off: u64,
        cap: u32,
        rec: usize,
        (bad_offset, misaligned): (&'static str, &'static str),
    ) -> Result<*mut T, Error> {
        if cap == 0 {
            return Ok(ptr::NonNull::dangling().as_ptr());
        }
        let p = self
            .src
            .resolve(off, (cap as usize).saturating_mul(rec))
            .ok_or(corrupt(bad_offset))?;
        if p as usize % std::mem::align_of::<T>() != 0 {
            return Err(corrupt(misaligned));
        }
        let p = p as *mut T;
        cache.set((off, cap, p));
        Ok(p)
    }

    /// The class table and its length, validated.
    #[inline(always)]
    pub(crate) fn class_table(&self) -> Result<(*mut ClassRec, u32), Error> {
        // SAFETY: the validated header.
        let (off, cap, count) = unsafe {
            (
                (*self.hdr).class_table,
                (*self.hdr).class_cap,
                (*self.hdr).class_count,
            )
        };
        if count > cap || cap as usize > self.classes.len() {
            return Err(corrupt("class table length"));
        }
        let (c_off, c_cap, p) = self.resolved.class_table.get();
        if c_off == off && c_cap == cap {
            return Ok((p, count));
        }
        self.resolve_class_table(off, cap).map(|p| (p, count))
    }

    #[cold]
    fn resolve_class_table(&self, off: u64, cap: u32) -> Result<*mut ClassRec, Error> {
        self.resolve_table(
            &self.resolved.class_table,
            off,
            cap,
            CLASS_REC,
            ("class table offset", "class table misaligned"),
        )
    }

    /// A slab's block, validated: `block_size` bytes at an address aligned for `Meta`.
    #[inline(always)]
    fn slab_base(&self, s: u32, block: u64, class: u32, ci: &ClassInfo) -> Result<*mut u8, Error> {
        let entry = &self.resolved.blocks[s as usize % BLOCK_CACHE];
        let (c_block, c_class, p) = entry.get();
        if c_block == block && c_class == class {
            return Ok(p);
        }
        self.resolve_block(entry, block, class, ci)
    }

    /// A slab block's address, validated: `block_size` bytes in the source, aligned for
    /// `Meta` (no cache).
    fn block_base(&self, block: u64, ci: &ClassInfo) -> Result<*mut u8, Error> {
        let base = self
            .src
            .resolve(block, ci.block_size)
            .ok_or(corrupt("slab block offset"))?;
        if base as usize % std::mem::align_of::<Meta>() != 0 {
            return Err(corrupt("slab block misaligned"));
        }
        Ok(base)
    }

    #[cold]
    fn resolve_block(
        &self,
        entry: &CachedBlock,
        block: u64,
        class: u32,
        ci: &ClassInfo,
    ) -> Result<*mut u8, Error> {
        let base = self.block_base(block, ci)?;
        entry.set((block, class, base));
        Ok(base)
    }

    #[inline]
    fn class_rec(&self, class: u32) -> Result<*mut ClassRec, Error> {
        let (tab, count) = self.class_table()?;
        if class >= count {
            return Err(corrupt("class index out of range"));
        }
        // SAFETY: `class < count <= cap`.
        Ok(unsafe { tab.add(class as usize) })
    }

    /// A slab record of a live slab and its block, validated. `missing` is returned when the
    /// index is out of range, `freed` when the slot holds no slab.
    #[inline]
    fn slab(&self, s: u32, missing: Error, freed: Error) -> Result<Loc, Error> {
        let (tab, len) = self.slab_table()?;
        if s >= len {
            return Err(missing);
        }
        // SAFETY: `s < len <= cap`.
        let rec = unsafe { tab.add(s as usize) };
        // SAFETY: as above.
        let (block, class, frontier) = unsafe { ((*rec).block, (*rec).class, (*rec).frontier) };
        if block == 0 {
            return Err(freed);
        }
        let ci = self
            .classes
            .get(class as usize)
            .ok_or(corrupt("slab of an unknown class"))?;
        let base = self.slab_base(s, block, class, ci)?;
        if frontier > ci.cps {
            return Err(corrupt("slab frontier beyond its chunks"));
        }
        if self.synced() {
            self.resolved.remember(
                s,
                Entry {
                    meta: base as *mut Meta,
                    rec,
                    cps: ci.cps,
                    class,
                },
            );
        }
        Ok(Loc {
            slab: s,
            chunk: frontier,
            class,
            cps: ci.cps,
            rec,
            meta: base as *mut Meta,
            base,
        })
    }

    /// Whether the fast-path caches were filled at the header's current structure epoch.
    #[inline(always)]
    fn synced(&self) -> bool {
        // SAFETY: the validated header.
        unsafe { (*self.hdr).epoch == self.resolved.epoch.get() }
    }

    /// Brings the fast-path caches to the header's current epoch: empties them if it moved,
    /// and re-reads the class table (validated).
    #[cold]
    #[inline(never)]
    pub(crate) fn sync(&self) {
        // SAFETY: the validated header.
        let epoch = unsafe { (*self.hdr).epoch };
        if epoch != self.resolved.epoch.get() {
            self.resolved.forget();
            self.resolved.epoch.set(epoch);
        }
        match self.class_table() {
            Ok((tab, count)) => {
                self.resolved.ctab.set(tab);
                self.resolved.ccount.set(count);
            }
            Err(_) => self.resolved.ccount.set(0),
        }
    }

    /// A structural change (a table moves, a slab's block goes back to the source): moves the
    /// header's epoch on, so that every arena on this memory (other processes too) drops its
    /// resolved addresses, and drops this arena's. Called before the old block is freed.
    fn restructure(&self) {
        // SAFETY: the validated header.
        let epoch = unsafe {
            let e = (*self.hdr).epoch.wrapping_add(1);
            st!((*self.hdr).epoch, e);
            e
        };
        order();
        self.resolved.forget();
        self.resolved.epoch.set(epoch);
    }

    /// The common case of `locate`, through the per-slab cache: `None` for anything it does
    /// not accept (the validating path then decides, with the right error).
    #[inline(always)]
    fn locate_fast(&self, h: Handle) -> Option<Loc> {
        if h.tag != self.tag || !self.synced() {
            return None;
        }
        let e = self.resolved.entry(h.slab);
        if h.chunk >= e.cps {
            return None; // also an empty entry
        }
        // SAFETY: `e` was validated at the current epoch (see `Entry`).
        let frontier = unsafe { (*e.rec).frontier };
        if h.chunk >= frontier {
            return None;
        }
        // SAFETY: `h.chunk < cps`: inside the slab's metadata array.
        let meta = unsafe { e.meta.add(h.chunk as usize) };
        // SAFETY: as above.
        let (rc, gen) = unsafe { ((*meta).refcount, (*meta).gen) };
        if rc == 0 || gen != h.gen {
            return None;
        }
        Some(Loc {
            slab: h.slab,
            chunk: h.chunk,
            class: e.class,
            cps: e.cps,
            rec: e.rec,
            meta,
            base: e.meta as *mut u8,
        })
    }

    /// Validates a handle: tag, slab, chunk, generation, live refcount.
    #[inline(always)]
    fn locate(&self, h: Handle) -> Result<Loc, Error> {
        match self.locate_fast(h) {
            Some(loc) => Ok(loc),
            None => self.locate_slow(h),
        }
    }

    #[cold]
    #[inline(never)]
    fn locate_slow(&self, h: Handle) -> Result<Loc, Error> {
        self.sync();
        if h.tag != self.tag {
            return Err(Error::ForeignHandle);
        }
        let mut loc = self.slab(h.slab, Error::InvalidHandle, Error::StaleHandle)?;
        // `loc.chunk` holds the frontier here.
        if h.chunk >= loc.chunk {
            return Err(Error::StaleHandle);
        }
        // SAFETY: `h.chunk < frontier <= cps`: inside the slab's metadata array.
        let meta = unsafe { loc.meta.add(h.chunk as usize) };
        // SAFETY: as above; metadata below the frontier was written when handed out.
        let (rc, gen) = unsafe { ((*meta).refcount, (*meta).gen) };
        if rc == 0 || gen != h.gen {
            return Err(Error::StaleHandle);
        }
        loc.chunk = h.chunk;
        loc.meta = meta;
        Ok(loc)
    }

    /// Validates a link read from memory (a next or a list entry) to a live chunk.
    #[inline(always)]
    fn locate_link(&self, s: u32, c: u32) -> Result<Loc, Error> {
        let e = self.resolved.entry(s);
        if c < e.cps {
            // SAFETY: `e` was validated at the current epoch (see `Entry`) and is not empty
            // (`c < cps`).
            unsafe {
                let frontier = (*e.rec).frontier;
                if c < frontier {
                    let meta = e.meta.add(c as usize);
                    if (*meta).refcount != 0 {
                        return Ok(Loc {
                            slab: s,
                            chunk: c,
                            class: e.class,
                            cps: e.cps,
                            rec: e.rec,
                            meta,
                            base: e.meta as *mut u8,
                        });
                    }
                }
            }
        }
        self.locate_link_slow(s, c)
    }

    #[cold]
    #[inline(never)]
    fn locate_link_slow(&self, s: u32, c: u32) -> Result<Loc, Error> {
        self.sync();
        let mut loc = self.slab(
            s,
            corrupt("link to a slab out of range"),
            corrupt("link to a released slab"),
        )?;
        if c >= loc.chunk {
            return Err(corrupt("link to a chunk never handed out"));
        }
        // SAFETY: `c < frontier <= cps`.
        let meta = unsafe { loc.meta.add(c as usize) };
        // SAFETY: as above.
        if unsafe { (*meta).refcount } == 0 {
            return Err(corrupt("link to a free chunk"));
        }
        loc.chunk = c;
        loc.meta = meta;
        Ok(loc)
    }

    #[inline(always)]
    fn alloc_in(&mut self, class: u32, len: usize) -> Result<Handle, Error> {
        // SAFETY: the validated header.
        if class >= unsafe { (*self.hdr).class_count } {
            self.create_classes(class)?;
        }
        let mut crec = self.class_rec(class)?;
        // SAFETY: validated by `class_rec`.
        let mut s = unsafe { (*crec).partial_head };
        if s == NONE {
            s = self.add_slab(class, crec)?;
            crec = self.class_rec(class)?;
        }
        let loc = self.slab(
            s,
            corrupt("partial list names a slab out of range"),
            corrupt("partial list names a released slab"),
        )?;
        if loc.class != class {
            return Err(corrupt("partial list names a slab of another class"));
        }
        let ci = self.classes[class as usize];
        let rec = loc.rec;
        let frontier = loc.chunk;
        // SAFETY: `rec`, `crec` and the metadata array were validated above; every index used
        // below is checked against the frontier, which `slab` checked against `cps`.
        unsafe {
            let fh = (*rec).free_head;
            let (chunk, new_frontier, new_free) = if fh != NONE {
                if fh >= frontier {
                    return Err(corrupt("free list entry beyond the frontier"));
                }
                let m = loc.meta.add(fh as usize);
                if (*m).refcount != 0 {
                    return Err(corrupt("free list entry in use"));
                }
                (fh, frontier, (*m).next_chunk)
            } else if frontier < ci.cps {
                (frontier, frontier + 1, NONE)
            } else {
                return Err(corrupt("full slab on the partial list"));
            };
            let full = new_free == NONE && new_frontier == ci.cps;
            let next_slab = (*rec).next;
            let next_rec = if full && next_slab != NONE {
                Some(
                    self.slab_rec(next_slab)
                        .ok_or(corrupt("partial list link out of range"))?,
                )
            } else {
                None
            };
            // Everything is validated: mutate.
            let m = loc.meta.add(chunk as usize);
            Self::claim(
                rec,
                m,
                len,
                (new_frontier != frontier).then_some(new_frontier),
            );
            st!((*rec).free_head, new_free);
            let in_use = (*rec).in_use.wrapping_add(1);
            st!((*rec).in_use, in_use);
            // Empty slabs are counted only when the policy may release them.
            if in_use == 1 && self.keep != u32::MAX {
                st!((*crec).empty_slabs, (*crec).empty_slabs.saturating_sub(1));
            }
            if full {
                st!((*crec).partial_head, next_slab);
                if let Some(nr) = next_rec {
                    st!((*nr).prev, NONE);
                }
                st!((*rec).next, NONE);
                st!((*rec).prev, NONE);
            }
            Ok(Handle {
                slab: s,
                chunk,
                gen: (*m).gen,
                tag: self.tag,
            })
        }
    }

    /// The record of slab slot `s` if `s` is in range (live or not).
    #[inline]
    fn slab_rec(&self, s: u32) -> Option<*mut SlabRec> {
        let (tab, len) = self.slab_table().ok()?;
        // SAFETY: `s < len <= cap`.
        (s < len).then(|| unsafe { tab.add(s as usize) })
    }

    /// Creates classes up to and including `class` (go-slab creates them lazily, in order).
    ///
    /// Crash order: the table grows first (see [`grow_table`](Arena::grow_table)), the new
    /// class records are written, then the class count (the commit point: records beyond it
    /// are never read).
    #[cold]
    fn create_classes(&mut self, class: u32) -> Result<(), Error> {
        let (_, count) = self.class_table()?;
        // SAFETY: the validated header.
        let (off, cap) = unsafe { ((*self.hdr).class_table, (*self.hdr).class_cap) };
        if class >= cap {
            let want = (class + 1).max(cap.saturating_mul(2)).max(8);
            let want = want.min(self.classes.len() as u32);
            self.grow_table(Table::Class, off, cap, count, want)?;
        }
        let (tab, _) = self.class_table()?;
        for i in count..=class {
            #[cfg(test)]
            crate::kill::write();
            // SAFETY: `i <= class < cap`: inside the (possibly new) table.
            unsafe {
                tab.add(i as usize).write(ClassRec {
                    chunk_size: self.classes[i as usize].chunk_size,
                    partial_head: NONE,
                    slabs: 0,
                    empty_slabs: 0,
                    _pad: 0,
                    _reserved: 0,
                })
            };
        }
        order();
        // SAFETY: the validated header.
        unsafe { st!((*self.hdr).class_count, class + 1) };
        Ok(())
    }

    /// Moves the class or slab table (`cap` records at `off`, `used` of them in use) to a new
    /// block of `new_cap` records and points the header at it. On error nothing changed.
    ///
    /// Crash order: the new block is allocated, recorded in the header's pending words as it
    /// is ([`take_block`](Self::take_block)), and filled; the old block is recorded as
    /// being given back; the epoch moves on (every cache of the old table is dropped); the
    /// header's table offset (the commit point), then its capacity (a kill between the two
    /// leaves the new table with the old capacity, which it holds); the new block's record
    /// is cleared, and the old block goes back to the source with its record
    /// ([`give_back`](Self::give_back)). A kill before the commit leaves the new block to
    /// `repair`, after it the old one.
    #[cold]
    fn grow_table(
        &mut self,
        which: Table,
        off: u64,
        cap: u32,
        used: u32,
        new_cap: u32,
    ) -> Result<(), Error> {
        let rec = match which {
            Table::Class => CLASS_REC,
            Table::Slab => SLAB_REC,
        };
        let old = if cap > 0 {
            self.src
                .resolve(off, cap as usize * rec)
                .ok_or(corrupt("table offset"))?
        } else {
            ptr::null_mut()
        };
        let bytes = (new_cap as usize)
            .checked_mul(rec)
            .ok_or(Error::OutOfMemory)?;
        let new = self.take_block(bytes)?;
        // The source hands out blocks that do not overlap its live ones; a new block that
        // overlaps the old table means the header's table is no live block of the source (a
        // corrupt arena: the fuzz target `slab_ops` made one, and the copy below then had
        // overlapping ranges, undefined behaviour for `copy_nonoverlapping`).
        let dst = self.src.ptr(new);
        let (o, d) = (old as usize, dst as usize);
        if cap > 0 && d < o.saturating_add(cap as usize * rec) && o < d.saturating_add(bytes) {
            self.give_back_fresh(new, bytes);
            return Err(corrupt("table overlaps a block the source handed out"));
        }
        if used > 0 {
            #[cfg(test)]
            crate::kill::write();
            // SAFETY: `old` is valid for `cap * rec >= used * rec` bytes, `dst` for
            // `new_cap * rec` bytes (`new_cap > cap`), and the two do not overlap (checked
            // just above).
            unsafe { ptr::copy_nonoverlapping(old, dst, used as usize * rec) };
        }
        if cap > 0 {
            self.pend_old(off, cap as usize * rec);
        }
        self.restructure();
        // SAFETY: the validated header.
        unsafe {
            match which {
                Table::Class => {
                    st!((*self.hdr).class_table, new);
                    order();
                    st!((*self.hdr).class_cap, new_cap);
                }
                Table::Slab => {
                    st!((*self.hdr).slab_table, new);
                    order();
                    st!((*self.hdr).slab_cap, new_cap);
                }
            }
        }
        order();
        self.clear_pending(PENDING_NEW);
        if cap > 0 {
            // SAFETY: the old table is a live block of exactly these size and alignment
            // (validated above; see the trait's note on corrupt memory); nothing refers to it
            // any more (the header names the new one and the caches were dropped).
            unsafe { self.give_back(off, cap as usize * rec, PENDING_OLD) };
        }
        self.bump(stat::TABLE_GROWS);
        Ok(())
    }

    /// Adds a slab to `class` at the head of its partial list; returns its index.
    ///
    /// Crash order: the table grows if needed; the slab's block is allocated and recorded in
    /// the header's pending words as it is ([`take_block`](Self::take_block): a kill from
    /// here to the commit leaves it to `repair`); a slot that is new is written whole
    /// (free: block 0), then the slab count (it now exists, as a free slot); the slot's
    /// class, frontier 0 and generations, then its block (the commit point: the slab is
    /// live, with no chunk handed out), then the record is cleared. Lists and counters come
    /// after, derived.
    #[cold]
    fn add_slab(&mut self, class: u32, crec: *mut ClassRec) -> Result<u32, Error> {
        let ci = self.classes[class as usize];
        // SAFETY: validated by the caller (`class_rec`).
        let old_head = unsafe { (*crec).partial_head };
        // SAFETY: the validated header.
        let (free_slot, len, cap) = unsafe {
            (
                (*self.hdr).free_slot,
                (*self.hdr).slab_len,
                (*self.hdr).slab_cap,
            )
        };
        // Validate before changing anything.
        if free_slot != NONE {
            let r = self
                .slab_rec(free_slot)
                .ok_or(corrupt("free slot list out of range"))?;
            // SAFETY: `slab_rec` checked the index.
            if unsafe { (*r).block } != 0 {
                return Err(corrupt("free slot list names a live slab"));
            }
        } else if len == cap {
            if cap >= NONE - 1 {
                return Err(Error::OutOfMemory);
            }
            let want = cap.saturating_mul(2).clamp(8, NONE - 1);
            // SAFETY: the validated header.
            let off = unsafe { (*self.hdr).slab_table };
            self.grow_table(Table::Slab, off, cap, len, want)?;
        }
        if old_head != NONE && self.slab_rec(old_head).is_none() {
            return Err(corrupt("partial list head out of range"));
        }
        let block = self.take_block(ci.block_size)?;
        let (tab, _) = match self.slab_table() {
            Ok(t) => t,
            Err(e) => {
                self.give_back_fresh(block, ci.block_size);
                return Err(e);
            }
        };
        // SAFETY: header, table and records validated above; `slot < slab_len (+1) <= cap`.
        unsafe {
            let (slot, next_free) = if free_slot != NONE {
                (free_slot, (*tab.add(free_slot as usize)).next)
            } else {
                #[cfg(test)]
                crate::kill::write();
                tab.add(len as usize).write(SlabRec {
                    block: 0,
                    class: 0,
                    in_use: 0,
                    free_head: NONE,
                    frontier: 0,
                    prev: NONE,
                    next: NONE,
                    gen_floor: 0,
                    gen_max: 0,
                });
                order();
                st!((*self.hdr).slab_len, len + 1);
                order();
                (len, NONE)
            };
            let r = tab.add(slot as usize);
            let floor = (*r).gen_floor;
            st!((*r).class, class);
            st!((*r).frontier, 0);
            st!((*r).gen_max, floor);
            order();
            st!((*r).block, block);
            order();
            self.clear_pending(PENDING_NEW);
            st!((*self.hdr).free_slot, next_free);
            st!((*r).in_use, 0);
            st!((*r).free_head, NONE);
            st!((*r).prev, NONE);
            st!((*r).next, old_head);
            if old_head != NONE {
                st!((*tab.add(old_head as usize)).prev, slot);
            }
            st!((*crec).partial_head, slot);
            // Saturating, as where a slab goes: the counters lie in the arena's memory,
            // which `check` verifies, and a corrupt one must not overflow here (the fuzz
            // target `slab_ops` found `slabs + 1` doing so in its corrupting mode).
            st!((*crec).slabs, (*crec).slabs.saturating_add(1));
            if self.keep != u32::MAX {
                st!((*crec).empty_slabs, (*crec).empty_slabs.saturating_add(1));
            }
            st!(
                (*self.hdr).live_slabs,
                (*self.hdr).live_slabs.saturating_add(1)
            );
            st!(
                (*self.hdr).total_chunks,
                (*self.hdr).total_chunks.saturating_add(ci.cps as u64)
            );
            self.bump(stat::MALLOCS);
            Ok(slot)
        }
    }

    /// Frees a chunk whose last reference is going away, then walks its chain.
    #[inline(never)]
    fn release_chain(&mut self, mut loc: Loc) -> Result<(), Error> {
        loop {
            // SAFETY: `loc` was validated by `locate`/`locate_link` just before.
            let (ns, nc) = unsafe { ((*loc.meta).next_slab, (*loc.meta).next_chunk) };
            self.free_chunk(loc)?;
            if ns == NONE {
                return Ok(());
            }
            loc = self.locate_link(ns, nc)?;
            // SAFETY: validated by `locate_link`.
            unsafe {
                let rc = (*loc.meta).refcount;
                if rc > 1 {
                    st!((*loc.meta).refcount, rc - 1);
                    return Ok(());
                }
            }
        }
    }

    /// The common case of `free_chunk`: the slab neither was full nor becomes empty under a
    /// release policy. `false` (having changed nothing) otherwise.
    #[inline(always)]
    fn free_fast(&mut self, loc: Loc) -> bool {
        let rec = loc.rec;
        let m = loc.meta;
        // SAFETY: `loc` was validated just before.
        unsafe {
            let in_use = (*rec).in_use;
            if in_use == 0 || (in_use == 1 && self.keep != u32::MAX) {
                return false;
            }
            let fh = (*rec).free_head;
            if fh == NONE && (*rec).frontier == loc.cps {
                return false;
            }
            Self::release(rec, m);
            st!((*m).next_chunk, fh);
            st!((*rec).free_head, loc.chunk);
            st!((*rec).in_use, in_use - 1);
            self.bump(stat::DEC_REF_ZEROES);
            true
        }
    }

    /// The truth writes of a free, in crash order: the chunk's next generation (and the
    /// slab's highest generation), so that no handle to the chunk's old life validates any
    /// more, then its refcount 0 (the commit point), then its next cleared. A kill between
    /// the two leaves the chunk allocated under a generation no handle names (leaked at this
    /// layer; [`Arena::collect`] frees it). The free list and counters come after, derived.
    ///
    /// # Safety
    ///
    /// `rec` and `m` are a validated slab record and one of its live chunks' metadata.
    #[inline(always)]
    unsafe fn release(rec: *mut SlabRec, m: *mut Meta) {
        // SAFETY: the caller's guarantee.
        unsafe {
            let gen = (*m).gen.wrapping_add(1);
            st!((*m).gen, gen);
            if gen > (*rec).gen_max {
                st!((*rec).gen_max, gen);
            }
            order();
            st!((*m).refcount, 0);
            order();
            st!((*m).next_slab, NONE);
        }
    }

    /// Puts a chunk with refcount 1 on its slab's free list; may release the slab.
    #[inline(always)]
    fn free_chunk(&mut self, loc: Loc) -> Result<(), Error> {
        let rec = loc.rec;
        let m = loc.meta;
        // SAFETY: `loc` was validated just before; the header is validated.
        unsafe {
            let in_use = (*rec).in_use;
            if in_use == 0 {
                return Err(corrupt("in-use count of a slab with a live chunk is zero"));
            }
            Self::release(rec, m);
            let fh = (*rec).free_head;
            let was_full = fh == NONE && (*rec).frontier == loc.cps;
            st!((*m).next_chunk, fh);
            st!((*rec).free_head, loc.chunk);
            st!((*rec).in_use, in_use - 1);
            self.bump(stat::DEC_REF_ZEROES);
            let empty = in_use == 1 && self.keep != u32::MAX;
            if was_full || empty {
                self.slab_emptier(loc, was_full, empty)?;
            }
        }
        Ok(())
    }

    /// Class-level bookkeeping when a slab stops being full and/or becomes empty.
    #[cold]
    fn slab_emptier(&mut self, loc: Loc, was_full: bool, empty: bool) -> Result<(), Error> {
        let crec = self.class_rec(loc.class)?;
        let rec = loc.rec;
        // SAFETY: `crec`, `rec` validated; indices checked through `slab_rec`.
        unsafe {
            if was_full {
                let head = (*crec).partial_head;
                if head != NONE {
                    let hr = self
                        .slab_rec(head)
                        .ok_or(corrupt("partial list head out of range"))?;
                    st!((*hr).prev, loc.slab);
                }
                st!((*rec).prev, NONE);
                st!((*rec).next, head);
                st!((*crec).partial_head, loc.slab);
            }
            if empty {
                let e = (*crec).empty_slabs.saturating_add(1);
                st!((*crec).empty_slabs, e);
                if e > self.keep {
                    self.release_slab(loc, crec)?;
                }
            }
        }
        Ok(())
    }

    /// Gives an empty slab back to the source and puts its slot on the free slot list.
    #[cold]
    fn release_slab(&mut self, loc: Loc, crec: *mut ClassRec) -> Result<(), Error> {
        let ci = self.classes[loc.class as usize];
        let rec = loc.rec;
        // SAFETY: `rec`, `crec` validated by the caller; neighbour indices checked.
        unsafe {
            let (prev, next) = ((*rec).prev, (*rec).next);
            let pr = if prev != NONE {
                Some(self.slab_rec(prev).ok_or(corrupt("partial list link"))?)
            } else {
                None
            };
            let nr = if next != NONE {
                Some(self.slab_rec(next).ok_or(corrupt("partial list link"))?)
            } else {
                None
            };
            match pr {
                Some(p) => st!((*p).next, next),
                None => st!((*crec).partial_head, next),
            }
            if let Some(n) = nr {
                st!((*n).prev, prev);
            }
            st!((*crec).slabs, (*crec).slabs.saturating_sub(1));
            st!((*crec).empty_slabs, (*crec).empty_slabs.saturating_sub(1));
            st!(
                (*self.hdr).live_slabs,
                (*self.hdr).live_slabs.saturating_sub(1)
            );
            st!(
                (*self.hdr).total_chunks,
                (*self.hdr).total_chunks.saturating_sub(ci.cps as u64)
            );
            // The rest of the slot (derived) after `retire`, and the block back to the
            // source last. It is recorded as being given back from before `retire` unnames
            // it until the free (a kill in between leaves it to `repair`).
            self.pend_old((*rec).block, ci.block_size);
            let block = self.retire(rec);
            st!((*rec).class, 0);
            st!((*rec).in_use, 0);
            st!((*rec).free_head, NONE);
            st!((*rec).frontier, 0);
            st!((*rec).prev, NONE);
            st!((*rec).next, (*self.hdr).free_slot);
            st!((*self.hdr).free_slot, loc.slab);
            // The block was resolved with exactly this size when `loc` was validated.
            self.give_back(block, ci.block_size, PENDING_OLD);
            self.bump(stat::SLAB_FREES);
        }
        Ok(())
    }

    /// A new block of `size` bytes for a slab or a table, recorded in the header's pending
    /// words as it is allocated ([`SlabSource::alloc_recorded`]): its size first, then its
    /// offset, stored by the source. Until the operation names the block and clears the
    /// record, a kill leaves it to [`repair`](Arena::repair), which gives it back.
    fn take_block(&mut self, size: usize) -> Result<u64, Error> {
        let at = core::mem::offset_of!(Header, pending) + 8 * PENDING_NEW;
        // SAFETY: the validated header.
        unsafe { st!((*self.hdr).pending[PENDING_NEW + 1], size as u64) };
        order();
        self.src
            .alloc_recorded(size, BLOCK_ALIGN, self.root, at)
            .ok_or(Error::OutOfMemory)
    }

    /// Gives back a block from [`take_block`](Self::take_block) that nothing has seen, on an
    /// error path.
    fn give_back_fresh(&mut self, block: u64, size: usize) {
        // SAFETY: just allocated with this size and alignment, never handed out.
        unsafe { self.give_back(block, size, PENDING_NEW) };
    }

    /// Gives `block` (`size` bytes) back to the source, and with it its record in pending
    /// word `which` ([`SlabSource::free_recorded`]: a region clears the record in the store
    /// after the free's own, and its recovery finishes a free that a kill left in between;
    /// the default clears the record, then frees). A record that outlived its block could
    /// name another user's block by the next repair (another process's arena in a shared
    /// region).
    ///
    /// # Safety
    /// As for [`SlabSource::free`]; nothing of the arena refers to the block any more.
    unsafe fn give_back(&mut self, block: u64, size: usize, which: usize) {
        let at = core::mem::offset_of!(Header, pending) + 8 * which;
        order();
        #[cfg(test)]
        crate::kill::write();
        // SAFETY: the caller's guarantee.
        unsafe {
            self.src
                .free_recorded(block, size, BLOCK_ALIGN, self.root, at)
        };
        order();
    }

    /// Records `block` (`size` bytes) as being given back by the operation in progress,
    /// before the header or slot that names it stops naming it; [`give_back`](Self::give_back)
    /// frees it with its record.
    fn pend_old(&mut self, block: u64, size: usize) {
        // SAFETY: the validated header.
        unsafe {
            st!((*self.hdr).pending[PENDING_OLD + 1], size as u64);
            order();
            st!((*self.hdr).pending[PENDING_OLD], block);
        }
        order();
    }

    /// Clears pending word `which` (the block it recorded is named now, or was not
    /// allocated).
    fn clear_pending(&mut self, which: usize) {
        order();
        // SAFETY: the validated header.
        unsafe {
            if (*self.hdr).pending[which] != 0 {
                st!((*self.hdr).pending[which], 0);
            }
        }
        order();
    }

    /// The truth writes of a slab's release, in crash order: the epoch first (every cache of
    /// the slab's block is dropped before the block can go), the slot's generation floor,
    /// then the block word (the commit point: the slot is free). Returns the block, which the
    /// caller gives back to the source last.
    ///
    /// # Safety
    ///
    /// `rec` is a validated record of a live slab.
    unsafe fn retire(&mut self, rec: *mut SlabRec) -> u64 {
        // SAFETY: the caller's guarantee.
        unsafe {
            let block = (*rec).block;
            self.restructure();
            let floor = (*rec).gen_max.wrapping_add(1);
            st!((*rec).gen_floor, floor);
            st!((*rec).gen_max, floor);
            order();
            st!((*rec).block, 0);
            order();
            block
        }
    }

    fn set_next_inner(&mut self, h: Handle, next: Option<Handle>) -> Result<(), Error> {
        let la = self.locate(h)?;
        let lb = match next {
            Some(b) => {
                let lb = self.locate(b)?;
                if (b.slab, b.chunk) == (h.slab, h.chunk) {
                    return Err(Error::Cycle);
                }
                // Walk the chain from `b`: closing a cycle means meeting `h`.
                // SAFETY: the validated header.
                let bound = unsafe { (*self.hdr).total_chunks };
                let mut steps = 0u64;
                // SAFETY: `lb` validated.
                let (mut s, mut c) = unsafe { ((*lb.meta).next_slab, (*lb.meta).next_chunk) };
                while s != NONE {
                    if (s, c) == (h.slab, h.chunk) {
                        return Err(Error::Cycle);
                    }
                    steps += 1;
                    if steps > bound {
                        return Err(corrupt("chain longer than the arena's chunk count"));
                    }
                    let l = self.locate_link(s, c)?;
                    // SAFETY: validated by `locate_link`.
                    (s, c) = unsafe { ((*l.meta).next_slab, (*l.meta).next_chunk) };
                }
                // SAFETY: `lb` validated.
                if unsafe { (*lb.meta).refcount } == u32::MAX {
                    return Err(Error::RefcountOverflow);
                }
                Some(lb)
            }
            None => None,
        };
        // SAFETY: `la` validated.
        let (os, oc) = unsafe { ((*la.meta).next_slab, (*la.meta).next_chunk) };
        let old = if os != NONE {
            Some(self.locate_link(os, oc)?)
        } else {
            None
        };
        // Validated: mutate.
        // SAFETY: `la`, `lb` validated above and nothing changed since.
        // Crash order: the new next's refcount first (a kill after it over-counts: a leak,
        // never a chunk freed under a link), then the link, which a next slab of `NONE`
        // disables whatever the chunk index: cleared, the chunk index, then the slab (the
        // commit point), so that no kill leaves a half-written link; the old next is released
        // after (a kill before that over-counts it).
        unsafe {
            match lb {
                Some(lb) => {
                    st!((*lb.meta).refcount, (*lb.meta).refcount + 1);
                    order();
                    if os != NONE {
                        st!((*la.meta).next_slab, NONE);
                        order();
                    }
                    st!((*la.meta).next_chunk, lb.chunk);
                    order();
                    st!((*la.meta).next_slab, lb.slab);
                }
                None => {
                    st!((*la.meta).next_slab, NONE);
                    order();
                    st!((*la.meta).next_chunk, NONE);
                }
            }
            order();
        }
        if let Some(ol) = old {
            // SAFETY: `ol` validated; only refcounts changed since (it may be `lb` itself, whose
            // count we just raised, so it is read afresh).
            unsafe {
                let rc = (*ol.meta).refcount;
                if rc > 1 {
                    st!((*ol.meta).refcount, rc - 1);
                } else {
                    self.release_chain(ol)?;
                }
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn set_refcount_for_test(&mut self, h: Handle, rc: u32) {
        let loc = self.locate(h).unwrap();
        // SAFETY: validated by `locate`.
        unsafe { (*loc.meta).refcount = rc };
    }

    // ------------------------------------------------------------------ for `check`

    pub(crate) fn class_info(&self, class: u32) -> Option<(u64, usize, u32, usize, usize)> {
        self.classes
            .get(class as usize)
            .map(|c| (c.chunk_size, c.stride, c.cps, c.meta_bytes, c.block_size))
    }

    pub(crate) fn src_resolve(&self, off: u64, len: usize) -> Option<*mut u8> {
        self.src.resolve(off, len)
    }

    pub(crate) fn keep_empty(&self) -> u32 {
        self.keep
    }
}

impl<S: SlabSource> std::fmt::Debug for Arena<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("root", &self.root)
            .field("tag", &format_args!("{:08x}", self.tag))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn range(chunk_len: usize, offset: usize, len: usize) -> Result<std::ops::Range<usize>, Error> {
    match offset.checked_add(len) {
        Some(end) if end <= chunk_len => Ok(offset..end),
        _ => Err(Error::OutOfBounds {
            offset,
            len,
            chunk_len,
        }),
    }
}

/// The class facts and the small-length lookup table implied by `config`.
fn derive(config: &Config) -> Result<Derived, Error> {
    let sizes = config.class_sizes()?;
    debug_assert!(sizes
        .windows(2)
        .all(|w| next_chunk_size(w[0], config.growth_factor) == w[1]));
    let slab = config.slab_size;
    let mut classes = Vec::with_capacity(sizes.len());
    for &size in &sizes {
        let cps = (slab / size).max(1);
        let stride = size.min(slab);
        let meta_bytes = cps
            .checked_mul(META)
            .and_then(|b| b.checked_next_multiple_of(BLOCK_ALIGN))
            .ok_or(Error::InvalidConfig("slab too large for this platform"))?;
        let block_size = cps
            .checked_mul(stride)
            .and_then(|d| d.checked_add(meta_bytes))
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or(Error::InvalidConfig("slab too large for this platform"))?;
        classes.push(ClassInfo {
            chunk_size: size as u64,
            stride,
            cps: cps as u32,
            meta_bytes,
            block_size,
        });
    }
    let small_len = SMALL_LENS.min(slab) + 1;
    let mut small = Vec::with_capacity(small_len);
    let mut c = 0usize;
    for len in 0..small_len {
        while sizes[c] < len {
            c += 1;
        }
        small.push(c as u16);
    }
    Ok((classes.into_boxed_slice(), small.into_boxed_slice()))
}

/// A random-ish arena tag: std's per-process random hash keys, mixed with a counter.
fn random_tag() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(COUNTER.fetch_add(1, Ordering::Relaxed));
    let x = h.finish();
    (x ^ (x >> 32)) as u32
}
