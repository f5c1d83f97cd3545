//! [`Region`]: the mapping, its header, growth, and the block allocator inside it.

use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{compiler_fence, AtomicU64, Ordering::SeqCst};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::layout::*;
use crate::sync::{publish_size, refresh_view};
use crate::{os, process, Error, Offset};

const FREE: u64 = 1;
/// Set in a block whose predecessor is free (so `free` reads the predecessor only then).
const PREV_FREE: u64 = 2;
const FLAG_MASK: u64 = GRANULE - 1;
/// Free-list link fields inside a free block.
const NEXT: u64 = 16;
const PREV: u64 = 24;
/// Dirty-hull fields of a free block of at least [`FREE_HEADER`] bytes.
const HULL_LO: u64 = 32;
/// Holds the hull's end minus 1 (see [`hull_hi_word`]).
const HULL_HI: u64 = 40;

/// The stored form of a hull's end `hi` (0: no hull): `hi - 1`, an odd number. A free
/// block that starts with what was a 32-byte block has its `HULL_HI` word where the next
/// old block's header was (`start + 40`); stored as the offset itself, it could look like an
/// allocated header there, and an offset freed into such a merge passed `free`'s and
/// `allocation_size`'s O(1) checks again (a double free the model test found). Odd, its
/// [`FREE`] bit is set, so such a header reads as a free block's. Readers of earlier
/// builds, which stored `hi` itself (always a multiple of 16), take the word for a hull
/// one byte shorter, which is still inside its block.
#[inline(always)]
const fn hull_hi_word(hi: u64) -> u64 {
    hi.saturating_sub(1)
}

/// The hull end that a stored `HULL_HI` word means (either form). Wrapping: the word is
/// untrusted, and the end it yields is checked against its block where it is used.
#[inline(always)]
const fn hull_hi(word: u64) -> u64 {
    if word & 1 == 1 {
        word.wrapping_add(1)
    } else {
        word
    }
}

/// Bytes at the start of a free block that hold its header, links and hull.
const FREE_HEADER: u64 = 48;

/// Test-only simulation of a process killed inside the allocator: after
/// `WRITES_LEFT` more writes to the region's allocator words, every further write is
/// dropped (and `wr` fails), as if the process had died at that instruction boundary.
#[cfg(test)]
pub(crate) mod kill {
    use core::cell::Cell;
    std::thread_local! {
        pub(crate) static WRITES_LEFT: Cell<u64> = const { Cell::new(u64::MAX) };
        pub(crate) static DEAD: Cell<bool> = const { Cell::new(false) };
    }
    /// `true` if this write must be dropped (the simulated process is dead).
    pub(crate) fn write_refused() -> bool {
        if DEAD.with(Cell::get) {
            return true;
        }
        WRITES_LEFT.with(|w| match w.get() {
            0 => {
                DEAD.with(|d| d.set(true));
                true
            }
            u64::MAX => false,
            n => {
                w.set(n - 1);
                false
            }
        })
    }
    /// `true` once a write was dropped.
    pub(crate) fn dead() -> bool {
        DEAD.with(Cell::get)
    }
    /// Lets the next `n` writes through, then "kills" (`u64::MAX`: never).
    pub(crate) fn arm(n: u64) {
        WRITES_LEFT.with(|w| w.set(n));
        DEAD.with(|d| d.set(false));
    }
}

/// Smallest range holding both (`None` = empty).
fn union(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<(u64, u64)> {
    match (a, b) {
        (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
        (x, None) | (None, x) => x,
    }
}

/// `hull` clipped to `lo..hi`.
fn clip(hull: Option<(u64, u64)>, lo: u64, hi: u64) -> Option<(u64, u64)> {
    let (a, b) = hull?;
    let (a, b) = (a.max(lo), b.min(hi));
    (a < b).then_some((a, b))
}

/// Options for creating (and, for `max_size`, opening) a region. Builder-style.
///
/// ```
/// use offheap_mmap::{Region, RegionOptions};
/// let opts = RegionOptions::new().initial_size(1 << 20).max_size(1 << 30);
/// let region = Region::anonymous_with(&opts)?;
/// assert!(region.mapped_len() >= 1 << 20);
/// # Ok::<(), offheap_mmap::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct RegionOptions {
    max_size: u64,
    initial_size: u64,
    growth_step: u64,
    release_threshold: u64,
    /// `None`: the default (on for anonymous regions, off for files).
    huge_pages: Option<bool>,
    open_torn: bool,
    hold_alone: bool,
}

/// Huge-page size and alignment of the reservation's base (x86_64's and aarch64's PMD size
/// with 4 KiB pages).
pub(crate) const HUGE_PAGE: u64 = 2 << 20;

impl Default for RegionOptions {
    fn default() -> Self {
        RegionOptions {
            // Address space only (PROT_NONE / MAP_NORESERVE), so generous is cheap. Miri
            // really allocates an anonymous map, so it gets a small one.
            max_size: if cfg!(miri) { 8 << 20 } else { 64 << 30 },
            initial_size: if cfg!(miri) { 64 << 10 } else { 1 << 20 },
            growth_step: 1 << 20,
            release_threshold: 1 << 20,
            huge_pages: None,
            open_torn: false,
            hold_alone: false,
        }
    }
}

impl RegionOptions {
    /// The defaults: 64 GiB of reserved address space, 1 MiB initial size, growth steps of
    /// at least 1 MiB, freed memory given back to the OS in batches of 1 MiB.
    pub fn new() -> Self {
        Self::default()
    }

    /// Address space reserved for the region: the most it can grow to in this process.
    /// Reserving costs no memory. When opening a file larger than this, the file's size
    /// is reserved instead.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }

    /// Size of a new region (rounded up to whole pages; at least header + one page).
    pub fn initial_size(mut self, bytes: u64) -> Self {
        self.initial_size = bytes;
        self
    }

    /// Smallest growth step. The region grows by a quarter of its size, at least this,
    /// at most 1 GiB (and at least what the allocation needs).
    pub fn growth_step(mut self, bytes: u64) -> Self {
        self.growth_step = bytes;
        self
    }

    /// Give-back batch: once the freed bytes of a free block (its "dirty hull", see
    /// `docs/mmap.md`) span at least this many bytes, their whole pages go back to the OS
    /// (`MADV_DONTNEED` for anonymous regions, a punched hole for files). Larger values
    /// give back later and fault less under churn. `u64::MAX` disables give-back.
    pub fn release_threshold(mut self, bytes: u64) -> Self {
        self.release_threshold = bytes;
        self
    }

    /// Transparent huge pages: the region asks the kernel for 2 MiB pages
    /// (`madvise(MADV_HUGEPAGE)`) over its reservation beyond the first 2 MiB, whose
    /// base is 2 MiB aligned. A random access to a large region then needs one TLB entry
    /// per 2 MiB instead of per 4 KiB page. The first 2 MiB stay in ordinary pages, so a
    /// small region costs no more memory than without; beyond them, memory is faulted in
    /// 2 MiB at a time (the resident size of a large region rounds up to 2 MiB).
    ///
    /// Default: on for anonymous regions, off for file-backed ones (where only a tmpfs
    /// mounted with `huge=` or `shmem_enabled` other than `never` can honour it). It is
    /// advice: where the kernel refuses it (THP `never`, a filesystem without huge pages,
    /// no huge page free) the region works as without, and that is never an error.
    pub fn huge_pages(mut self, on: bool) -> Self {
        self.huge_pages = Some(on);
        self
    }

    /// Whether [`Region::open_with`] accepts a file whose allocator bookkeeping is torn:
    /// the header's derived fields (the last block, the byte and block counters, the
    /// free-list heads and their bitmap) disagree, as a process killed inside `alloc`,
    /// `free` or a growth leaves them, while everything else validates. Off (the
    /// default), such a file is refused with [`Error::Corrupt`] and left byte-identical.
    /// On, it opens, [`Region::needs_recovery`] is true, and `alloc` and `free` fail with
    /// [`Error::NeedsRecovery`] until [`Region::recover`] has rebuilt the bookkeeping from
    /// the block headers. Mapping and reading (`ptr`, roots) work meanwhile.
    ///
    /// For files shared by several processes the caller must run `recover` under the
    /// lock that its processes take around `alloc` and `free` (offheap's `SharedMap`
    /// does): a live process in the middle of an allocation also leaves the fields
    /// disagreeing for an instant, and only the lock tells the two apart.
    ///
    /// ```
    /// # fn main() -> Result<(), offheap_mmap::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("r.bin");
    /// use offheap_mmap::{Region, RegionOptions};
    /// # drop(Region::create(&path, &RegionOptions::new())?);
    /// let region = Region::open_with(&path, &RegionOptions::new().open_torn(true))?;
    /// if region.needs_recovery() {
    ///     region.recover()?; // nobody else uses the file here
    /// }
    /// let off = region.alloc(64, 8)?;
    /// # region.free(off)?;
    /// # Ok(()) }
    /// ```
    pub fn open_torn(mut self, on: bool) -> Self {
        self.open_torn = on;
        self
    }

    /// An open that finds nobody else with the file open keeps it that way: it holds the
    /// file alone from that moment, and [`Region::try_alone`] hands over the guard that
    /// holds it. Meanwhile others' opens of the file wait. Off by default.
    ///
    /// Without it, an open that finds the file unused lets the next opener in at once, so
    /// a `try_alone` right after the open can find that opener there: two processes that
    /// open a file at the same moment can both find it shared, and neither can clear what
    /// a user that has gone left in it (a copy of a file in use names that user in its lock
    /// words). With it, of any number of opens at the same moment, exactly one finds the
    /// file alone, and the others get in after it drops the guard.
    ///
    /// Take the guard with `try_alone` soon, and drop it when done: until then the region
    /// keeps it, and others' opens wait for as long as the region lives. No effect on
    /// [`Region::create`], on anonymous regions, or where the filesystem has no record
    /// locks.
    ///
    /// ```
    /// # fn main() -> Result<(), offheap_mmap::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("r.bin");
    /// use offheap_mmap::{Region, RegionOptions};
    /// # drop(Region::create(&path, &RegionOptions::new())?);
    /// let region = Region::open_with(&path, &RegionOptions::new().hold_alone(true))?;
    /// if let Some(alone) = region.try_alone() {
    ///     // Nobody else has had the file open since this open: clear what users that
    ///     // have gone left behind.
    ///     drop(alone); // lets others in
    /// }
    /// # Ok(()) }
    /// ```
    pub fn hold_alone(mut self, on: bool) -> Self {
        self.hold_alone = on;
        self
    }

    /// (initial, max) rounded to pages and checked.
    fn sizes(&self, page: u64) -> Result<(u64, u64), Error> {
        let hdr = header_size(page);
        let initial = round_up(self.initial_size.max(hdr + page), page)
            .ok_or(Error::InvalidOptions("initial_size too large"))?;
        let max = self.max_size & !(page - 1);
        if max < initial {
            return Err(Error::InvalidOptions(
                "max_size is smaller than initial_size",
            ));
        }
        if max > 1 << 47 {
            return Err(Error::InvalidOptions("max_size exceeds the address space"));
        }
        Ok((initial, max))
    }
}

fn round_up(v: u64, to: u64) -> Option<u64> {
    Some(v.checked_add(to - 1)? & !(to - 1))
}

fn round_down(v: u64, to: u64) -> u64 {
    v & !(to - 1)
}

/// Usage figures of a region (see [`Region::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionStats {
    /// Size of the region in bytes (header + blocks); for a file, its logical length.
    pub size: u64,
    /// Bytes this process has mapped (equal to `size` once the view is current).
    pub mapped: u64,
    /// Address space reserved in this process (the most the region can grow to here).
    pub reserved: u64,
    /// Bytes in allocated blocks, block headers included.
    pub in_use: u64,
    /// Bytes in free blocks, block headers included.
    pub free: u64,
    /// Number of live allocations.
    pub allocations: u64,
    /// Number of free blocks.
    pub free_blocks: u64,
    /// Largest allocation that fits without growing (payload bytes, alignment <= 16).
    pub largest_free: u64,
    /// Bytes the file really occupies on its filesystem (`st_blocks * 512`), for files.
    pub file_bytes: Option<u64>,
}

/// What [`Region::check`] verified.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Size of the region in bytes.
    pub size: u64,
    /// Blocks walked (allocated + free).
    pub blocks: u64,
    /// Allocated blocks.
    pub allocations: u64,
    /// Free blocks (each found exactly once in the free lists).
    pub free_blocks: u64,
    /// Bytes in allocated blocks.
    pub in_use: u64,
    /// Bytes in free blocks.
    pub free: u64,
    /// Largest free block in bytes (header included).
    pub largest_free_block: u64,
    /// Root slots in use.
    pub roots: u64,
}

/// What [`Region::recover`] found and repaired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoverReport {
    /// `false` when [`check`](Region::check) passed and nothing was written.
    pub rebuilt: bool,
    /// Size of the region in bytes after recovery.
    pub size: u64,
    /// Blocks walked (after merging).
    pub blocks: u64,
    /// Allocated blocks (leaked blocks of an interrupted operation included).
    pub allocations: u64,
    /// Free blocks, each put back into its free list.
    pub free_blocks: u64,
    /// Free blocks merged into a free predecessor.
    pub merged: u64,
    /// Boundary tags and PREV_FREE flags that were wrong and were rewritten.
    pub tags_fixed: u64,
    /// `true` if the header counters (or the last-block field) disagreed with the walk.
    pub counters_fixed: bool,
    /// The new size when an interrupted growth was rolled forward.
    pub grown_to: Option<u64>,
    /// `true` if an [`alloc_into`](Region::alloc_into) or a
    /// [`free_recorded`](Region::free_recorded) was cut short after its allocation or free
    /// and before its record's store, and the record was stored now.
    pub record_finished: bool,
}

enum Backing {
    /// Anonymous memory: one memmap2 map of the whole reservation (MAP_NORESERVE), `pad`
    /// bytes longer than the region's reservation, which starts `pad` bytes into it (so
    /// that the base is aligned to [`HUGE_PAGE`]).
    Anon { map: memmap2::MmapMut, pad: usize },
    /// A file mapped MAP_SHARED at the start of a PROT_NONE reservation.
    File { file: File, path: PathBuf },
}

/// A region file held by one handle alone ([`Region::try_alone`]): while this lives, no
/// other handle has the file open, and others' opens of it wait. Dropping it lets them in.
#[must_use = "the file stays alone only while the guard lives"]
#[derive(Debug)]
pub struct Alone {
    /// A duplicate of the handle's descriptor: the same open file description, whose
    /// record lock this holds exclusively.
    file: File,
}

impl Drop for Alone {
    fn drop(&mut self) {
        // Back to the shared lock that every handle holds, which cannot fail: no other
        // description holds one. (Were it to fail, the lock would stay exclusive until the
        // handle is closed: others' opens would wait, none would get in wrongly.)
        let _ = os::ofd_lock(&self.file, os::FileLock::Shared, false);
    }
}

/// A memory region: anonymous memory or a memory-mapped file, holding a header with
/// named roots and a block allocator whose whole state lives in the region.
///
/// The base address never moves while the region is open; the region grows in place
/// inside a reservation of address space. Everything stored inside links by
/// [`Offset`]. `Region` is `Send` but not `Sync`: use one per thread, or lock.
///
/// ```
/// use offheap_mmap::Region;
/// let region = Region::anonymous()?;
/// let off = region.alloc(64, 8)?;
/// let p = region.ptr(off, 64)?;
/// // SAFETY: `p` points to 64 bytes that this allocation owns.
/// unsafe { p.as_ptr().write_bytes(7, 64) };
/// region.set_root("my-root", Some(off))?;
/// assert_eq!(region.root("my-root"), Some(off));
/// region.free(off)?;
/// # Ok::<(), offheap_mmap::Error>(())
/// ```
pub struct Region {
    base: NonNull<u8>,
    /// Bytes of address space reserved at `base`.
    reserved: u64,
    /// Bytes of the region this process has mapped: its view.
    mapped: Cell<u64>,
    data_start: u64,
    /// Growth and give-back granule: max(OS page, file page size).
    page: u64,
    growth_step: u64,
    release_threshold: u64,
    /// Whether the region asked for transparent huge pages.
    huge_pages: bool,
    /// Opened with torn allocator bookkeeping, not yet recovered (see
    /// [`RegionOptions::open_torn`]).
    torn: Cell<bool>,
    /// [`Region::prefault`]'s cursor: the offset up to which it has faulted pages in.
    prefaulted: Cell<u64>,
    /// Set once the kernel refused `MADV_POPULATE_WRITE` (before Linux 5.14): `prefault`
    /// then does nothing.
    no_populate: Cell<bool>,
    /// Whether this handle holds the file's record lock (shared), as every handle of a
    /// file does where the filesystem has record locks (see
    /// [`claim_pid_namespace`](Self::claim_pid_namespace)): [`try_alone`](Self::try_alone)
    /// can only tell that a file is alone from a handle that does.
    file_locked: Cell<bool>,
    /// The guard of an open that found the file alone and kept it so
    /// ([`RegionOptions::hold_alone`]), until [`try_alone`](Self::try_alone) hands it out.
    held: Cell<Option<Alone>>,
    backing: Backing,
    _not_sync: PhantomData<Cell<()>>,
}

// SAFETY: the region owns its mapping; nothing in it is tied to the creating thread.
// It is not Sync (the PhantomData<Cell<()>> marker): methods mutate through &self.
unsafe impl Send for Region {}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Region");
        match &self.backing {
            Backing::Anon { .. } => d.field("backing", &"anonymous"),
            Backing::File { path, .. } => d.field("path", path),
        };
        d.field("base", &self.base)
            .field("mapped", &self.mapped.get())
            .field("reserved", &self.reserved)
            .finish()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Backing::File { .. } = self.backing {
            // SAFETY: the reservation is ours, and `&mut self` means no pointer handed
            // out through `&self` can be used any more without the region.
            unsafe { os::unreserve(self.base.as_ptr(), self.reserved) };
        }
    }
}

fn creation_stamp() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 40)
}

impl Region {
    /// An anonymous region with default options.
    pub fn anonymous() -> Result<Region, Error> {
        Self::anonymous_with(&RegionOptions::default())
    }

    /// An anonymous region: private memory that disappears with the region.
    pub fn anonymous_with(opts: &RegionOptions) -> Result<Region, Error> {
        let page = os::page_size();
        let (initial, max) = opts.sizes(page)?;
        // Over-reserve by one huge page so that the base can be aligned to one (address
        // space only). Miri's maps are real allocations: no padding there.
        let slack = if cfg!(miri) { 0 } else { HUGE_PAGE };
        let mut mo = memmap2::MmapOptions::new();
        mo.len(
            usize::try_from(max + slack)
                .map_err(|_| Error::InvalidOptions("max_size exceeds the address space"))?,
        );
        #[cfg(not(miri))]
        mo.no_reserve_swap();
        let mut map = mo.map_anon()?;
        let pad = match slack {
            0 => 0,
            _ => (map.as_ptr() as usize).wrapping_neg() & (HUGE_PAGE as usize - 1),
        };
        let huge = opts.huge_pages.unwrap_or(true);
        #[cfg(not(miri))]
        if huge && max > HUGE_PAGE {
            // Advice only: a kernel without THP (or with it set to `never`) refuses it,
            // and the region works the same in 4 KiB pages.
            let _ = map.advise_range(
                memmap2::Advice::HugePage,
                pad + HUGE_PAGE as usize,
                (max - HUGE_PAGE) as usize,
            );
        }
        let header = new_header(page, initial, creation_stamp());
        let data = header_size(page);
        let at = pad + data as usize;
        map[pad..pad + header.len()].copy_from_slice(&header);
        map[at + 8..at + 16].copy_from_slice(&((initial - data) | FREE).to_ne_bytes());
        // Derived last: every later access goes through this pointer (never through `map`
        // as a slice again, which would invalidate it under the aliasing model).
        let base =
            NonNull::new(map[pad..].as_mut_ptr()).ok_or(Error::InvalidOptions("empty map"))?;
        Ok(Self::from_parts(
            base,
            max,
            initial,
            page,
            opts,
            huge,
            Backing::Anon { map, pad },
        ))
    }

    fn from_parts(
        base: NonNull<u8>,
        reserved: u64,
        size: u64,
        page: u64,
        opts: &RegionOptions,
        huge_pages: bool,
        backing: Backing,
    ) -> Region {
        Region {
            base,
            reserved,
            mapped: Cell::new(size),
            data_start: header_size(page),
            page,
            growth_step: opts.growth_step.max(page),
            release_threshold: opts.release_threshold.max(2 * page),
            huge_pages,
            torn: Cell::new(false),
            prefaulted: Cell::new(0),
            no_populate: Cell::new(cfg!(miri) || !cfg!(target_os = "linux")),
            file_locked: Cell::new(false),
            held: Cell::new(None),
            backing,
            _not_sync: PhantomData,
        }
    }

    /// Creates a region file at `path`; fails with [`Error::Io`] (`AlreadyExists`) if
    /// it exists. The file appears atomically, complete with its header: it is written
    /// under a temporary name and hard-linked into place.
    pub fn create(path: impl AsRef<Path>, opts: &RegionOptions) -> Result<Region, Error> {
        let path = path.as_ref();
        let page = os::page_size();
        let (initial, max) = opts.sizes(page)?;
        let name = path
            .file_name()
            .ok_or(Error::InvalidOptions("path has no file name"))?;
        let tmp = path.with_file_name(format!(
            ".{}.{}.{:x}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            creation_stamp()
        ));
        struct Remove<'a>(&'a Path);
        impl Drop for Remove<'_> {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(self.0);
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let _remove = Remove(&tmp);
        file.set_len(initial)?;
        // The shared lock before the name, so that a process of another pid namespace
        // that opens the file as soon as it has its name sees a user (see
        // `claim_pid_namespace`); and the namespace in the header it appears with.
        let _ = os::ofd_lock(&file, os::FileLock::Shared, true);
        let mut header = new_header(page, initial, creation_stamp());
        header[F_PID_NS..F_PID_NS + 8]
            .copy_from_slice(&process::pid_namespace().unwrap_or(0).to_ne_bytes());
        file.write_all_at(&header, 0)?;
        let data = header_size(page);
        file.write_all_at(&((initial - data) | FREE).to_ne_bytes(), data + 8)?;
        std::fs::hard_link(&tmp, path)?;
        // A file just made holds nothing of users gone: nothing to hold it alone for.
        let opts = &opts.clone().hold_alone(false);
        Self::map_file(file, path.to_path_buf(), initial, page, max, opts)
    }

    /// Opens an existing region file with default options. The header is read and
    /// validated before anything is mapped; nothing in the file is changed, except the pid
    /// namespace record of a file last used from another pid namespace, which nobody has
    /// open any more (one used there now is refused:
    /// [`Error::ForeignPidNamespace`]). O(1) in the size of the data.
    pub fn open(path: impl AsRef<Path>) -> Result<Region, Error> {
        Self::open_with(path, &RegionOptions::default())
    }

    /// Opens an existing region file; `opts` supplies the reservation size, growth step
    /// and give-back threshold for this process (the initial size is ignored).
    pub fn open_with(path: impl AsRef<Path>, opts: &RegionOptions) -> Result<Region, Error> {
        let path = path.as_ref();
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        // The header first, the file's length after: a process growing the region
        // lengthens the file before it publishes the new size in the header, so a length
        // read after the header covers the size it gives. Read before, the length could be
        // the old one while the header gave the new size, and the open failed with
        // `Truncated` (a worker of the CLI's `bench`, opening the map while another grew
        // it, on a loaded machine).
        let mut buf = Vec::with_capacity(HEADER_LEN as usize);
        (&file).take(HEADER_LEN).read_to_end(&mut buf)?;
        #[cfg(test)]
        open_hook::between_reads();
        let len = file.metadata()?.len();
        let info = validate(&buf, len, os::page_size())?;
        if let (Some(what), false) = (info.torn, opts.open_torn) {
            return Err(Error::Corrupt { offset: 0, what });
        }
        let max = opts.max_size.max(info.size) & !(info.page_size - 1);
        let max = max.max(info.size);
        let region = Self::map_file(
            file,
            path.to_path_buf(),
            info.size,
            info.page_size,
            max,
            opts,
        )?;
        region.torn.set(info.torn.is_some());
        Ok(region)
    }

    /// Whether the region was opened with torn allocator bookkeeping that
    /// [`recover`](Self::recover) has not rebuilt yet (only possible with
    /// [`RegionOptions::open_torn`]); `alloc` and `free` refuse to run meanwhile.
    pub fn needs_recovery(&self) -> bool {
        self.torn.get()
    }

    /// Opens `path` if it exists, otherwise creates it with `opts`.
    pub fn open_or_create(path: impl AsRef<Path>, opts: &RegionOptions) -> Result<Region, Error> {
        let path = path.as_ref();
        loop {
            match Self::open_with(path, opts) {
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
                other => return other,
            }
            match Self::create(path, opts) {
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => return other,
            }
        }
    }

    fn map_file(
        file: File,
        path: PathBuf,
        size: u64,
        page: u64,
        max: u64,
        opts: &RegionOptions,
    ) -> Result<Region, Error> {
        let base = os::reserve_aligned(max, HUGE_PAGE)?;
        // SAFETY: `0..size` lies inside the fresh reservation `base..base+max`.
        if let Err(e) = unsafe { os::map_file_fixed(base, &file, 0, size) } {
            // SAFETY: the reservation was just made and nothing uses it.
            unsafe { os::unreserve(base, max) };
            return Err(e.into());
        }
        let huge = opts.huge_pages.unwrap_or(false);
        if huge {
            // SAFETY: `0..size` was just mapped inside our reservation.
            unsafe { os::advise_huge(base, 0, size) };
        }
        let base = NonNull::new(base).ok_or(Error::InvalidOptions("null mapping"))?;
        let region = Self::from_parts(
            base,
            max,
            size,
            page,
            opts,
            huge,
            Backing::File { file, path },
        );
        region.claim_pid_namespace(opts.hold_alone)?;
        Ok(region)
    }

    /// Makes sure that every process using this file numbers its pids in this process's
    /// pid namespace, so that the owner ids its locks and claims record mean the same
    /// process to all of them ([`process::owner_is_dead`] of a pid from another namespace
    /// asks about some other process, or none, and would call a live owner dead).
    ///
    /// Every handle holds a record lock on the file's first byte for its whole life (the
    /// kernel drops it when the process ends, however it ends), and the header records the
    /// users' namespace ([`F_PID_NS`]). An open first tries the lock exclusively: if it
    /// gets it, nobody else has the file open, and it records its own namespace (the file
    /// is its, whoever used it before). Otherwise it waits for the lock shared (that is,
    /// for an opener holding it exclusively to finish) and reads the record: another
    /// namespace's fails with [`Error::ForeignPidNamespace`]. The lock is always held
    /// (shared, in the end) before the record is read, so two opens from two namespaces
    /// cannot both succeed: the kernel gives the exclusive lock to one of them at most, and
    /// the other then finds the first's namespace.
    ///
    /// Where the namespace is unknown (no `/proc`) or the filesystem has no record locks,
    /// nothing is checked or written, as before this record existed (format minor 2); so
    /// are users of builds from before it, which hold no lock. The lock is taken wherever
    /// the filesystem has record locks, known namespace or not: [`try_alone`](Self::try_alone)
    /// counts on every handle holding it.
    ///
    /// With `hold` ([`RegionOptions::hold_alone`]), an open that gets the lock exclusively
    /// keeps it so, in a guard that [`try_alone`](Self::try_alone) hands out.
    fn claim_pid_namespace(&self, hold: bool) -> Result<(), Error> {
        let Backing::File { file, .. } = &self.backing else {
            return Ok(());
        };
        let ours = process::pid_namespace();
        let word = self.atomic_word(F_PID_NS);
        if os::ofd_lock(file, os::FileLock::Exclusive, false).is_ok() {
            // Alone with the file: the record is ours to write (only if it differs: an open
            // of a file already ours writes nothing, not even its page's mtime).
            if let Some(ours) = ours {
                if word.load(SeqCst) != ours {
                    word.store(ours, SeqCst);
                }
            }
            self.file_locked.set(true);
            // Kept exclusive in a guard on a duplicate of the descriptor (see `try_alone`),
            // or back to shared, which cannot fail: no other description holds a lock.
            // (Were it to fail, the lock would stay exclusive: other openers would wait,
            // none would get in wrongly.)
            if hold {
                if let Ok(dup) = file.try_clone() {
                    self.held.set(Some(Alone { file: dup }));
                    return Ok(());
                }
            }
            let _ = os::ofd_lock(file, os::FileLock::Shared, false);
            return Ok(());
        }
        if os::ofd_lock(file, os::FileLock::Shared, true).is_err() {
            return Ok(());
        }
        self.file_locked.set(true);
        let Some(ours) = ours else {
            return Ok(());
        };
        // Others have the file open. No record means they run a build from before it, or
        // cannot read their namespace: the record becomes ours, as the best guess there is.
        match word.compare_exchange(0, ours, SeqCst, SeqCst) {
            Ok(_) => Ok(()),
            Err(now) if now == ours => Ok(()),
            Err(now) => Err(Error::ForeignPidNamespace { file: now, ours }),
        }
    }

    /// Whether this handle is the only one open on the region's file, in this process or
    /// any other; if so, keeps it so until the returned [`Alone`] is dropped: opens of the
    /// file by others wait meanwhile (in [`Region::open`]), and the handles already open
    /// are this one alone.
    ///
    /// Then every owner id recorded in the file (a lock's holder, a table's user) names a
    /// process that no longer has the file open, whether or not that process is alive: a
    /// copy of a file taken while a process held one of its locks names that process, and
    /// so does a hostile file, and neither holds anything. A caller that has just opened
    /// the file can clear such words before anyone waits on them.
    ///
    /// `None` for an anonymous region, where the filesystem has no record locks, and
    /// while another handle has the file open. Every handle holds a shared record lock
    /// (an open-file-description lock, `F_OFD_SETLK`) on the file's first byte for its
    /// whole life; this takes it exclusively if nobody else holds it. Handles of builds
    /// from before that lock (format minor 2) hold none and are not seen. Nor is a child
    /// forked from this process: it shares this handle's descriptor, and so its lock, so
    /// call this right after the open, before any fork.
    ///
    /// Another process's open can get in between this handle's open and this call; a
    /// region opened with [`RegionOptions::hold_alone`] that found the file alone has kept
    /// it so since, and this hands over that guard.
    ///
    /// ```
    /// use offheap_mmap::{Region, RegionOptions};
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("alone.region");
    /// let a = Region::create(&path, &RegionOptions::new())?;
    /// let linux = cfg!(target_os = "linux"); // where record locks are taken
    /// assert_eq!(a.try_alone().is_some(), linux);
    /// let b = Region::open(&path)?;
    /// assert!(a.try_alone().is_none() && b.try_alone().is_none());
    /// drop(a);
    /// let alone = b.try_alone();
    /// assert_eq!(alone.is_some(), linux);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_alone(&self) -> Option<Alone> {
        if let Some(held) = self.held.take() {
            return Some(held);
        }
        let Backing::File { file, .. } = &self.backing else {
            return None;
        };
        if !self.file_locked.get() {
            return None;
        }
        // A duplicate descriptor shares this handle's open file description, and so its
        // lock: the guard can give the exclusive lock back whatever happens to the region.
        let dup = file.try_clone().ok()?;
        os::ofd_lock(&dup, os::FileLock::Exclusive, false).ok()?;
        Some(Alone { file: dup })
    }

    // ----------------------------------------------------------------- addressing

    /// The region's base address, stable for the region's whole life.
    #[inline]
    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Bytes of the region this process can currently address.
    #[inline]
    pub fn mapped_len(&self) -> u64 {
        self.mapped.get()
    }

    /// Bytes of address space reserved: the most the region can grow to in this process.
    pub fn reserved_len(&self) -> u64 {
        self.reserved
    }

    /// Offset of the first block: everything below it is the header.
    #[inline]
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// The backing file's path, for file-backed regions.
    pub fn path(&self) -> Option<&Path> {
        match &self.backing {
            Backing::Anon { .. } => None,
            Backing::File { path, .. } => Some(path),
        }
    }

    /// Resolves `off..off+len` to a pointer, checking it lies inside the region. If it
    /// lies beyond this process's view and another process has grown the region, the
    /// view is extended first.
    ///
    /// The pointer is valid while the region lives; what it may be used for is the
    /// caller's business (the region does not track which bytes are allocated).
    #[inline]
    pub fn ptr(&self, off: Offset, len: u64) -> Result<NonNull<u8>, Error> {
        let o = off.get();
        match o.checked_add(len) {
            // SAFETY: o < end <= mapped <= reserved, so base + o is inside our mapping.
            Some(end) if end <= self.mapped.get() => Ok(unsafe { self.at(o) }),
            _ => self.ptr_slow(o, len),
        }
    }

    #[cold]
    fn ptr_slow(&self, o: u64, len: u64) -> Result<NonNull<u8>, Error> {
        let size = self.sync_view()?;
        match o.checked_add(len) {
            // SAFETY: as in `ptr`, after the view was extended to `size`.
            Some(end) if end <= size => Ok(unsafe { self.at(o) }),
            _ => Err(Error::OffsetOutOfBounds {
                offset: o,
                len,
                size,
            }),
        }
    }

    /// Like [`ptr`](Self::ptr) for raw `u64` offsets; `None` when out of bounds.
    #[inline]
    pub fn ptr_raw(&self, off: u64, len: u64) -> Option<NonNull<u8>> {
        self.ptr(Offset::new(off)?, len).ok()
    }

    /// `true` if `off..off+len` lies inside the region (extending the view if needed).
    #[inline]
    pub fn contains(&self, off: u64, len: u64) -> bool {
        self.ptr_raw(off, len).is_some()
    }

    /// # Safety
    /// `o` must be less than `self.mapped`.
    #[inline]
    unsafe fn at(&self, o: u64) -> NonNull<u8> {
        // SAFETY: by the caller's contract `o` is inside the mapping.
        unsafe { NonNull::new_unchecked(self.base.as_ptr().add(o as usize)) }
    }

    /// Whether this region asked the kernel for transparent huge pages (see
    /// [`RegionOptions::huge_pages`]). `true` does not mean that the kernel gave any.
    pub fn huge_pages(&self) -> bool {
        self.huge_pages
    }

    /// Faults in, ahead of need, one more page of the memory that the allocator will hand
    /// out fresh, and returns whether it did.
    ///
    /// Allocations that no other free block fits are carved from the region's last block
    /// when it is free (growth extends that block). Its pages have never been touched, so
    /// the first write to each costs a page fault, a few microseconds, and a structure that
    /// allocates a large block at once (a hash table's new segment) takes all of that
    /// block's faults in one operation. Calling `prefault` from its ordinary operations,
    /// one page at a time, moves those faults out of the large one. Each call faults in
    /// the next page of the last block that it has not faulted in yet, within the block's
    /// first `ahead` bytes (so it keeps at most `ahead` bytes resident beyond what is in use),
    /// with `madvise(MADV_POPULATE_WRITE)`, which changes no byte.
    ///
    /// A hint: it returns `false` and does nothing where it cannot help or is not
    /// supported (the last block is allocated, the first `ahead` bytes are done, a region
    /// with huge pages, whose faults are of 2 MiB pages, a kernel before Linux 5.14, miri).
    /// It never fails. Like [`alloc`](Self::alloc), it reads the allocator's state: a
    /// region that several processes share calls it under the lock that they take around
    /// `alloc`.
    ///
    /// ```
    /// use offheap_mmap::{Region, RegionOptions};
    ///
    /// let region = Region::anonymous_with(&RegionOptions::new().huge_pages(false))?;
    /// // Each call faults in one more page, until the first 64 KiB of fresh memory are in.
    /// let pages = std::iter::from_fn(|| region.prefault(64 << 10).then_some(())).count();
    /// assert!(pages <= 16);
    /// let off = region.alloc(60 << 10, 8)?; // most likely takes no page fault now
    /// # region.free(off)?;
    /// # Ok::<(), offheap_mmap::Error>(())
    /// ```
    pub fn prefault(&self, ahead: u64) -> bool {
        if self.huge_pages || self.torn.get() || self.no_populate.get() {
            return false;
        }
        let last = self.hget(F_LAST_BLOCK);
        let Ok((size, true)) = self.block(last) else {
            return false;
        };
        let page = self.page;
        // The block's first page holds its header: written already.
        let from = self.prefaulted.get().max((last + 1).next_multiple_of(page));
        let end = (last + size).min(last.saturating_add(ahead));
        if from.saturating_add(page) > end {
            return false;
        }
        // Both backings map the region at `base`: one call for either.
        // SAFETY: `from..from + page` lies inside the last block, inside this process's view
        // (`block` checked that the block ends inside it), mapped read-write.
        let done = unsafe { os::populate_write(self.at(from).as_ptr(), page) };
        match done {
            Ok(()) => {
                self.prefaulted.set(from + page);
                true
            }
            Err(e) => {
                if e.raw_os_error() == Some(libc::EINVAL) || e.kind() == io::ErrorKind::Unsupported
                {
                    self.no_populate.set(true);
                }
                false
            }
        }
    }

    /// Maps `file[from..to]` at `base + from` (with the huge-page advice if asked for).
    ///
    /// # Safety
    /// `from..to` must lie inside the reservation, beyond every reference into it.
    unsafe fn map_file_range(&self, file: &File, from: u64, to: u64) -> io::Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { os::map_file_fixed(self.base.as_ptr(), file, from, to) }?;
        if self.huge_pages {
            // SAFETY: `from..to` was just mapped inside our reservation.
            unsafe { os::advise_huge(self.base.as_ptr(), from, to) };
        }
        Ok(())
    }

    /// Brings this process's view up to the size published in the header.
    #[inline]
    fn sync_view(&self) -> Result<u64, Error> {
        let view = self.mapped.get();
        let size = refresh_view(
            self.size_word(),
            view,
            |old, new| self.extend_view(old, new),
            |_| Error::Corrupt {
                offset: F_SIZE as u64,
                what: "region size shrank",
            },
        )?;
        self.mapped.set(size);
        Ok(size)
    }

    #[cold]
    fn extend_view(&self, old: u64, new: u64) -> Result<(), Error> {
        if new % self.page != 0 {
            return Err(Error::Corrupt {
                offset: F_SIZE as u64,
                what: "region size is not a whole number of pages",
            });
        }
        if new > self.reserved {
            return Err(Error::OutOfMemory {
                requested: new,
                max_size: self.reserved,
            });
        }
        match &self.backing {
            Backing::Anon { .. } => Err(Error::Corrupt {
                offset: F_SIZE as u64,
                what: "anonymous region size changed behind its owner",
            }),
            Backing::File { file, .. } => {
                if file.metadata()?.len() < new {
                    return Err(Error::Corrupt {
                        offset: F_SIZE as u64,
                        what: "region size exceeds the file length",
                    });
                }
                // SAFETY: old..new lies inside our reservation and beyond our view, so
                // nothing references it.
                unsafe { self.map_file_range(file, old, new) }?;
                Ok(())
            }
        }
    }

    // ----------------------------------------------------------------- header access

    #[inline]
    fn size_word(&self) -> &AtomicU64 {
        self.atomic_word(F_SIZE)
    }

    /// A header field that processes sharing the file read and write concurrently
    /// ([`F_SIZE`], [`F_PID_NS`]): only ever accessed atomically.
    #[inline]
    fn atomic_word(&self, field: usize) -> &AtomicU64 {
        debug_assert!(field % 8 == 0 && field + 8 <= HEADER_LEN as usize);
        // SAFETY: the header is always mapped and the field is 8-aligned inside it; these
        // fields are only ever accessed atomically.
        unsafe { &*self.base.as_ptr().add(field).cast::<AtomicU64>() }
    }

    #[inline]
    fn hget(&self, field: usize) -> u64 {
        debug_assert!(field % 8 == 0 && field + 8 <= HEADER_LEN as usize && field != F_SIZE);
        // SAFETY: header fields lie in the always-mapped first page, 8-aligned.
        unsafe { ptr::read(self.base.as_ptr().add(field).cast::<u64>()) }
    }

    #[inline]
    fn hset(&self, field: usize, v: u64) {
        debug_assert!(field % 8 == 0 && field + 8 <= HEADER_LEN as usize && field != F_SIZE);
        #[cfg(test)]
        if kill::write_refused() {
            return;
        }
        // SAFETY: as in `hget`.
        unsafe { ptr::write(self.base.as_ptr().add(field).cast::<u64>(), v) }
    }

    #[inline]
    fn hadd(&self, field: usize, delta: i64) {
        self.hset(field, self.hget(field).wrapping_add(delta as u64));
    }

    // ----------------------------------------------------------------- data access

    #[inline(always)]
    fn rd(&self, off: u64) -> Result<u64, Error> {
        if off < self.data_start || off % 8 != 0 || off > self.mapped.get() - 8 {
            return Err(corrupt(off, "link points outside the block area"));
        }
        // SAFETY: checked just above: 8-aligned and inside the mapping.
        Ok(unsafe { ptr::read(self.base.as_ptr().add(off as usize).cast::<u64>()) })
    }

    #[inline(always)]
    fn wr(&self, off: u64, v: u64) -> Result<(), Error> {
        if off < self.data_start || off % 8 != 0 || off > self.mapped.get() - 8 {
            return Err(corrupt(off, "link points outside the block area"));
        }
        #[cfg(test)]
        if kill::write_refused() {
            return Err(corrupt(off, "simulated kill"));
        }
        // SAFETY: checked just above: 8-aligned and inside the mapping.
        unsafe { ptr::write(self.base.as_ptr().add(off as usize).cast::<u64>(), v) };
        Ok(())
    }

    /// Size and free flag of the block at `b`, checked to lie inside the region.
    #[inline(always)]
    fn block(&self, b: u64) -> Result<(u64, bool), Error> {
        let v = self.rd(b.wrapping_add(8))?;
        let size = v & !FLAG_MASK;
        if b % GRANULE != 0
            || v & FLAG_MASK & !(FREE | PREV_FREE) != 0
            || size < MIN_BLOCK
            || size > self.mapped.get() - b
        {
            return Err(corrupt(b, "block header out of range"));
        }
        Ok((size, v & FREE != 0))
    }

    #[inline(always)]
    fn set_block(&self, b: u64, size: u64, free: bool) -> Result<(), Error> {
        // A free block's predecessor is never free (frees coalesce): PREV_FREE is clear.
        self.wr(b.wrapping_add(8), size | u64::from(free))
    }

    /// Sets or clears PREV_FREE in the block at `b`.
    #[inline(always)]
    fn mark_prev_free(&self, b: u64, prev_free: bool) -> Result<(), Error> {
        let v = self.rd(b.wrapping_add(8))?;
        let v = if prev_free {
            v | PREV_FREE
        } else {
            v & !PREV_FREE
        };
        self.wr(b.wrapping_add(8), v)
    }

    // ----------------------------------------------------------------- dirty hulls

    /// The dirty hull of free block `b` (`size` bytes): the smallest range that holds
    /// every byte freed since its pages were last given back, `None` when clean. Blocks
    /// too small to store one are dirty in full. A hull that does not lie inside its
    /// block (corruption) is taken as the whole block: hulls only steer give-back.
    #[inline(always)]
    fn hull(&self, b: u64, size: u64) -> Result<Option<(u64, u64)>, Error> {
        if size < FREE_HEADER {
            return Ok(Some((b, b + size)));
        }
        let (lo, hi) = (self.rd(b + HULL_LO)?, hull_hi(self.rd(b + HULL_HI)?));
        Ok(match (lo, hi) {
            (0, 0) => None,
            (lo, hi) if b <= lo && lo < hi && hi <= b + size => Some((lo, hi)),
            _ => Some((b, b + size)),
        })
    }

    #[inline(always)]
    fn set_hull(&self, b: u64, size: u64, hull: Option<(u64, u64)>) -> Result<(), Error> {
        if size >= FREE_HEADER {
            let (lo, hi) = hull.unwrap_or((0, 0));
            self.wr(b + HULL_LO, lo)?;
            self.wr(b + HULL_HI, hull_hi_word(hi))?;
        }
        Ok(())
    }

    // ----------------------------------------------------------------- free lists

    #[inline(always)]
    fn head(&self, bin: usize) -> u64 {
        self.hget(F_BINS_HEADS + bin * 8)
    }

    #[inline(always)]
    fn set_head(&self, bin: usize, b: u64) {
        self.hset(F_BINS_HEADS + bin * 8, b);
        let word = F_BITMAP + (bin / 64) * 8;
        let bit = 1u64 << (bin % 64);
        let bits = self.hget(word);
        self.hset(word, if b == 0 { bits & !bit } else { bits | bit });
    }

    #[inline(always)]
    fn insert(&self, b: u64, size: u64) -> Result<(), Error> {
        let bin = bin_index(size);
        let h = self.head(bin);
        if h != 0 {
            self.linked_free(h)?;
        }
        self.wr(b.wrapping_add(NEXT), h)?;
        self.wr(b.wrapping_add(PREV), 0)?;
        if h != 0 {
            self.wr(h.wrapping_add(PREV), b)?;
        }
        self.set_head(bin, b);
        Ok(())
    }

    /// The O(1) check that `b`, a block that a free list links and whose link fields the
    /// allocator is about to write, is a free block. A corrupt file can link a live block
    /// into a free list with link fields that agree (they lie in its payload); writing them
    /// would change a live allocation's bytes. (The fuzz target `swiss_file` built one: the
    /// first allocation after the open wrote into a live segment; `check` refuses such a
    /// file, the O(1) open did not.)
    #[inline(always)]
    fn linked_free(&self, b: u64) -> Result<(), Error> {
        if self.block(b)?.1 {
            Ok(())
        } else {
            Err(corrupt(b, "free list links a block that is not free"))
        }
    }

    #[inline(always)]
    fn unlink(&self, b: u64, size: u64) -> Result<(), Error> {
        let next = self.rd(b.wrapping_add(NEXT))?;
        let prev = self.rd(b.wrapping_add(PREV))?;
        if prev != 0 {
            self.linked_free(prev)?;
            if self.rd(prev.wrapping_add(NEXT))? != b {
                return Err(corrupt(prev, "free list is not doubly linked"));
            }
            self.wr(prev.wrapping_add(NEXT), next)?;
        } else {
            let bin = bin_index(size);
            if self.head(bin) != b {
                return Err(corrupt(b, "free block is not in its free list"));
            }
            self.set_head(bin, next);
        }
        if next != 0 {
            self.linked_free(next)?;
            if self.rd(next.wrapping_add(PREV))? != b {
                return Err(corrupt(next, "free list is not doubly linked"));
            }
            self.wr(next.wrapping_add(PREV), prev)?;
        }
        Ok(())
    }

    /// First non-empty free list at or after `from`.
    #[inline(always)]
    fn find_bin(&self, from: usize) -> Option<usize> {
        let mut w = from / 64;
        let mut bits = self.hget(F_BITMAP + w * 8) & (!0u64 << (from % 64));
        loop {
            if bits != 0 {
                return Some(w * 64 + bits.trailing_zeros() as usize);
            }
            w += 1;
            if w == BINS / 64 {
                return None;
            }
            bits = self.hget(F_BITMAP + w * 8);
        }
    }

    /// Takes a free block of at least `need` bytes out of its list: O(1).
    #[inline(always)]
    fn take_fit(&self, need: u64) -> Result<Option<(u64, u64)>, Error> {
        // The head of the exact list often fits (same-size churn) without splitting
        // a larger block.
        let exact = bin_index(need);
        let h = self.head(exact);
        if h != 0 {
            let (size, free) = self.block(h)?;
            if !free {
                return Err(corrupt(h, "allocated block in a free list"));
            }
            if size >= need {
                self.check_extent(h, size)?;
                self.unlink(h, size)?;
                return Ok(Some((h, size)));
            }
        }
        let Some(bin) = search_index(need).and_then(|i| self.find_bin(i)) else {
            return Ok(None);
        };
        let b = self.head(bin);
        let (size, free) = self.block(b)?;
        if !free || size < need || bin_index(size) != bin {
            return Err(corrupt(b, "block in the wrong free list"));
        }
        self.check_extent(b, size)?;
        self.unlink(b, size)?;
        Ok(Some((b, size)))
    }

    /// The O(1) check that a free block about to be handed out is as large as its header
    /// says: it ends inside the mapping, and the next block's boundary tag repeats its size
    /// (as `free` checks for the block it frees). A corrupt file's inflated size would
    /// otherwise carve an allocation over the live blocks that follow.
    fn check_extent(&self, b: u64, size: u64) -> Result<(), Error> {
        let end = self.mapped.get();
        let n = match b.checked_add(size) {
            Some(n) if n <= end => n,
            _ => return Err(corrupt(b, "free block extends past the region")),
        };
        if n < end && self.rd(n)? != size {
            return Err(corrupt(
                b,
                "free block's size disagrees with the next block's boundary tag",
            ));
        }
        Ok(())
    }

    // ----------------------------------------------------------------- allocator

    /// Allocates `size` bytes aligned to `align` (a power of two, at most the page size)
    /// and returns their offset. The bytes are not zeroed. O(1); grows the region by a
    /// bounded step when no free block fits.
    pub fn alloc(&self, size: u64, align: u64) -> Result<Offset, Error> {
        self.alloc_recorded(size, align, None)
    }

    /// Allocates like [`alloc`](Self::alloc), and stores the new allocation's offset, or-ed
    /// with `mark`, into the 8-byte word `at` bytes into the live allocation `record`. The
    /// store comes right after the one write that makes the allocation, and before it an
    /// intent in the region header names the record: a kill between the two leaves the
    /// bookkeeping torn (a plain open refuses the file, `alloc` and `free` wait), and
    /// [`recover`](Self::recover) stores the record if the allocation was made.
    ///
    /// This is how a structure in a region that outlives processes takes a block with no
    /// window in which a kill leaks it. With `alloc`, a process killed after that write and
    /// before the caller has recorded the offset where a recovery looks leaves a block that
    /// nothing names; with `alloc_into` (and `recover` after a kill) the record names the
    /// block exactly when it was allocated, and never a block that was not. A kill before the
    /// allocation leaves the word as it was, so a caller that keeps records of several kinds
    /// there (the mark tells them apart) checks a record with
    /// [`allocation_size`](Self::allocation_size) before it trusts it.
    /// [`free_recorded`](Self::free_recorded) is the other half.
    ///
    /// `mark` tags the record in bits that no offset uses (bits 48 to 63; offsets are below
    /// 2^48), so that a record can be told from the other words that share its place; the
    /// offset is `word & !mark`.
    ///
    /// # Errors
    /// Those of `alloc`; [`Error::InvalidRecord`] when `record` is not a live allocation of
    /// at least `at + 8` bytes, `at` is not a multiple of 8, or `mark` has low bits.
    ///
    /// ```
    /// use offheap_mmap::{Offset, Region};
    ///
    /// let r = Region::anonymous()?;
    /// let log = r.alloc(16, 8)?;
    /// const MARK: u64 = 0xFD << 56;
    /// let a = r.alloc_into(100, 8, log, 8, MARK)?;
    /// // SAFETY: `log` is a live 16-byte allocation, 8-aligned.
    /// let word = unsafe { r.ptr(log, 16)?.as_ptr().cast::<u64>().add(1).read() };
    /// assert_eq!(Offset::new(word & !MARK), Some(a));
    /// # Ok::<(), offheap_mmap::Error>(())
    /// ```
    pub fn alloc_into(
        &self,
        size: u64,
        align: u64,
        record: Offset,
        at: u64,
        mark: u64,
    ) -> Result<Offset, Error> {
        self.check_record(record, at, mark)?;
        self.alloc_recorded(size, align, Some((record.get(), record.get() + at, mark)))
    }

    /// [`alloc`](Self::alloc), and with `into = Some((record block, word, mark))` the intent
    /// and the store of [`alloc_into`](Self::alloc_into) (`word`: the record's offset in the
    /// region, checked by the caller).
    #[inline(always)]
    fn alloc_recorded(
        &self,
        size: u64,
        align: u64,
        into: Option<(u64, u64, u64)>,
    ) -> Result<Offset, Error> {
        if self.torn.get() {
            return Err(Error::NeedsRecovery);
        }
        if !align.is_power_of_two() || align > self.page {
            return Err(Error::InvalidAlignment { align });
        }
        let oom = Error::OutOfMemory {
            requested: size,
            max_size: self.reserved,
        };
        let end = self.sync_view()?;
        let need = match size.checked_add(BLOCK_HEADER + GRANULE - 1) {
            Some(v) if v <= self.reserved => (v & !FLAG_MASK).max(MIN_BLOCK),
            _ => return Err(oom),
        };
        let search = if align <= GRANULE {
            need
        } else {
            need + align + MIN_BLOCK
        };
        let (b, s) = match self.take_fit(search)? {
            Some(found) => found,
            None => {
                self.grow(search).map_err(|e| match e {
                    Error::OutOfMemory { .. } => oom,
                    e => e,
                })?;
                match self.take_fit(search)? {
                    Some(found) => found,
                    None => {
                        return Err(Error::OutOfMemory {
                            requested: size,
                            max_size: self.reserved,
                        })
                    }
                }
            }
        };
        let end = end.max(self.mapped.get());
        self.carve(b, s, need, align, end, into)
    }

    /// Cuts an allocation of `need` bytes aligned for `align` out of free block `b`
    /// (already unlinked), returning the rest to the free lists; `into`: see
    /// [`alloc_recorded`](Self::alloc_recorded).
    #[inline(always)]
    fn carve(
        &self,
        b0: u64,
        s0: u64,
        need: u64,
        align: u64,
        end: u64,
        into: Option<(u64, u64, u64)>,
    ) -> Result<Offset, Error> {
        let (mut b, mut s) = (b0, s0);
        let mut new_free = 0i64;
        let hull = self.hull(b0, s0)?;
        if align > GRANULE {
            let payload = (b + BLOCK_HEADER + align - 1) & !(align - 1);
            let mut gap = payload - BLOCK_HEADER - b;
            if gap != 0 && gap < MIN_BLOCK {
                // Too small for a free block: move to the next aligned payload.
                gap += align;
            }
            if gap != 0 {
                // The front piece stays free; its predecessor is allocated (no two free
                // blocks are adjacent), so it needs no coalescing.
                // Crash order: the rest's header (inside the free block) first, then the
                // front's shrinking header, so the header chain tiles the region after
                // every write (two adjacent free blocks at worst, which `recover` merges).
                self.set_block(b + gap, s - gap, true)?;
                self.set_block(b, gap, true)?;
                self.insert(b, gap)?;
                self.set_hull(b, gap, clip(hull, b, b + gap))?;
                new_free += 1;
                b += gap;
                s -= gap;
                self.wr(b, gap)?;
            }
        }
        let mut last_piece = (b, s);
        if s - need >= MIN_BLOCK {
            // Crash order: the tail's header is written inside the still-free block
            // before the one write below that shrinks the block and marks it allocated.
            let t = b + need;
            let ts = s - need;
            self.wr(t, need)?;
            self.set_block(t, ts, true)?;
            self.insert(t, ts)?;
            self.set_hull(t, ts, clip(hull, t, t + ts))?;
            new_free += 1;
            s = need;
            last_piece = (t, ts);
        }
        let record = match into {
            Some((block, word, mark)) => {
                // `alloc_into`'s intent, before the allocation's write. A kill from here to
                // the record's store leaves it to `recover`, which stores the record if
                // the allocation was made (`finish_record`).
                let value = (b + BLOCK_HEADER) | mark;
                self.set_intent(block, word, value, b + BLOCK_HEADER)?;
                Some((word, value))
            }
            None => None,
        };
        // Allocated; its predecessor is free only if a front gap was split off. This
        // single header write is the commit point of the allocation: a kill before it
        // leaves the block free, a kill after it leaks it (allocated, never returned)
        // unless `alloc_into` recorded it. Everything after it (boundary tag, flags,
        // counters) is derived state.
        self.wr(b + 8, s | if b != b0 { PREV_FREE } else { 0 })?;
        if let Some((word, value)) = record {
            // The next store: `alloc_into`'s record of the block just made.
            self.wr(word, value)?;
        }
        let orig_end = b0 + s0;
        if orig_end < end {
            self.wr(orig_end, last_piece.1)?;
            self.mark_prev_free(orig_end, last_piece.0 != b)?;
        } else {
            self.hset(F_LAST_BLOCK, last_piece.0);
        }
        self.hadd(F_IN_USE, s as i64);
        self.hadd(F_FREE, -(s as i64));
        self.hadd(F_ALLOCS, 1);
        self.hadd(F_FREE_BLOCKS, new_free - 1);
        if record.is_some() {
            // The intent is done with: the allocation and its record are made.
            self.clear_intent();
        }
        // b + BLOCK_HEADER >= data_start + 16 > 0.
        Offset::new(b + BLOCK_HEADER).ok_or(corrupt(b, "zero offset"))
    }

    /// The usable size of the live allocation at `off`: at least the `size` it was
    /// allocated with (rounded up to the 16-byte granule, plus any slack the allocator
    /// left in the block). An offset that is not a live allocation (never allocated, freed,
    /// or corrupt) gets [`Error::NotAllocated`] where the O(1) boundary-tag checks that
    /// [`free`](Self::free) makes can tell; [`check`](Self::check) is thorough.
    ///
    /// This is how a structure that reads offsets from a file (an untrusted input) checks
    /// that each one names a block it may use, before using it.
    ///
    /// ```
    /// use offheap_mmap::{Error, Region};
    ///
    /// let r = Region::anonymous()?;
    /// let a = r.alloc(100, 8)?;
    /// assert!(r.allocation_size(a)? >= 100);
    /// r.free(a)?;
    /// assert!(matches!(r.allocation_size(a), Err(Error::NotAllocated { .. })));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn allocation_size(&self, off: Offset) -> Result<u64, Error> {
        let o = off.get();
        let end = self.sync_view()?;
        let (_, v) = self
            .live_block(o, end)?
            .map_err(|reason| Error::NotAllocated { offset: o, reason })?;
        Ok((v & !FLAG_MASK) - BLOCK_HEADER)
    }

    /// The O(1) checks that `o` is a live allocation: a granule-aligned offset in the block
    /// area whose block header is in use, plausible, and repeated by the next block's
    /// boundary tag. `Ok(Err(reason))` when it is not; `Ok(Ok((block, header word)))` when
    /// it is. (`end`: the region's current size.)
    fn live_block(&self, o: u64, end: u64) -> Result<Result<(u64, u64), &'static str>, Error> {
        if o % GRANULE != 0 || o < self.data_start + BLOCK_HEADER || o >= end {
            return Ok(Err("not an allocation offset"));
        }
        let b = o - BLOCK_HEADER;
        let v = self.rd(b + 8)?;
        if v & FREE != 0 {
            return Ok(Err("block is free"));
        }
        let size = v & !FLAG_MASK;
        if v & FLAG_MASK & !PREV_FREE != 0 || size < MIN_BLOCK || size > end - b {
            return Ok(Err("no block header at this offset"));
        }
        let n = b + size;
        if n < end && self.rd(n)? != size {
            return Ok(Err("boundary tag of the next block disagrees"));
        }
        Ok(Ok((b, v)))
    }

    /// Frees the allocation at `off`. A wrong offset (not a live allocation: freed
    /// already, never allocated, or corrupt) is refused with [`Error::InvalidFree`]
    /// where the O(1) boundary-tag checks can tell; [`check`](Self::check) is thorough.
    /// Coalesces with free neighbours (O(1)) and gives large free runs back to the OS.
    pub fn free(&self, off: Offset) -> Result<(), Error> {
        self.free_inner(off, None)
    }

    /// Frees like [`free`](Self::free), and stores 0 into the 8-byte word `at` bytes into
    /// the live allocation `record`: the store right after the one write that makes the
    /// free (the block's header), with an intent in the region header that
    /// [`recover`](Self::recover) completes if a kill falls between the two.
    ///
    /// This is [`alloc_into`](Self::alloc_into)'s other half: a structure that records a
    /// block it is giving back (so that a kill before the free leaves it to the structure's
    /// own recovery, which frees it) loses the record exactly when the block is freed. With
    /// `free` it must clear the record first (a kill before the free then leaks the block)
    /// or after (a kill before the clear leaves a record of a freed block, which by the
    /// structure's recovery may be another user's).
    ///
    /// # Errors
    /// Those of `free`; [`Error::InvalidRecord`] as for `alloc_into`, or when `record` is
    /// `off` itself.
    ///
    /// ```
    /// use offheap_mmap::Region;
    ///
    /// let r = Region::anonymous()?;
    /// let log = r.alloc(8, 8)?;
    /// let a = r.alloc_into(100, 8, log, 0, 0)?;
    /// r.free_recorded(a, log, 0)?;
    /// // SAFETY: `log` is a live 8-byte allocation, 8-aligned.
    /// assert_eq!(unsafe { r.ptr(log, 8)?.as_ptr().cast::<u64>().read() }, 0);
    /// # Ok::<(), offheap_mmap::Error>(())
    /// ```
    pub fn free_recorded(&self, off: Offset, record: Offset, at: u64) -> Result<(), Error> {
        if record == off {
            return Err(Error::InvalidRecord(
                "the record lies in the block being freed",
            ));
        }
        self.check_record(record, at, 0)?;
        self.free_inner(off, Some((record.get(), record.get() + at)))
    }

    /// The checks of a record's place that `alloc_into` and `free_recorded` make.
    fn check_record(&self, record: Offset, at: u64, mark: u64) -> Result<(), Error> {
        let bad = |what| Err(Error::InvalidRecord(what));
        if at % 8 != 0 {
            return bad("the record's place is not a multiple of 8 bytes into its block");
        }
        if mark & OFFSET_BITS != 0 {
            return bad("the mark has bits that an offset uses");
        }
        match self.allocation_size(record) {
            Ok(n) if at.checked_add(8).is_some_and(|e| e <= n) => Ok(()),
            Ok(_) => bad("the record's place lies past its block"),
            Err(Error::NotAllocated { .. }) => bad("the record is not a live allocation"),
            Err(e) => Err(e),
        }
    }

    /// Sets the intent of an `alloc_into` or a `free_recorded` (see `F_INTO_WORD`), before
    /// the operation's commit write: the record word's offset last, which makes the rest
    /// count. The fences keep the compiler from moving the stores to distinct header
    /// fields across each other (the hardware keeps a thread's own order).
    fn set_intent(&self, block: u64, word: u64, value: u64, target: u64) -> Result<(), Error> {
        self.hset(F_INTO_OLD, self.rd(word)?);
        self.hset(F_INTO_VALUE, value);
        self.hset(F_INTO_BLOCK, block);
        self.hset(F_INTO_TARGET, target);
        compiler_fence(SeqCst);
        self.hset(F_INTO_WORD, word);
        compiler_fence(SeqCst);
        Ok(())
    }

    /// Clears the intent, once the operation and its record are made.
    fn clear_intent(&self) {
        compiler_fence(SeqCst);
        self.hset(F_INTO_WORD, 0);
    }

    /// [`free`](Self::free), and with `into = Some((record block, word))` the record's
    /// clearing of [`free_recorded`](Self::free_recorded).
    fn free_inner(&self, off: Offset, into: Option<(u64, u64)>) -> Result<(), Error> {
        if self.torn.get() {
            return Err(Error::NeedsRecovery);
        }
        let o = off.get();
        let end = self.sync_view()?;
        let invalid = |reason| Error::InvalidFree { offset: o, reason };
        let (b, v) = self.live_block(o, end)?.map_err(invalid)?;
        let size = v & !FLAG_MASK;
        let n = b + size;
        let ps = if v & PREV_FREE != 0 { self.rd(b)? } else { 0 };
        let prev = if v & PREV_FREE == 0 {
            None
        } else if b == self.data_start {
            return Err(invalid("first block has a predecessor"));
        } else {
            if ps < MIN_BLOCK || ps % GRANULE != 0 || ps > b - self.data_start {
                return Err(invalid(
                    "boundary tag of the previous block is out of range",
                ));
            }
            let p = b - ps;
            let (pss, pfree) = self.block(p)?;
            if pss != ps || !pfree {
                return Err(corrupt(b, "boundary tag of the previous block disagrees"));
            }
            Some(p)
        };
        self.hadd(F_IN_USE, -(size as i64));
        self.hadd(F_FREE, size as i64);
        self.hadd(F_ALLOCS, -1);
        let (mut start, mut len) = (b, size);
        let mut merged = 1i64;
        // The freed block is dirty (resident) in full; free neighbours bring their own
        // dirty hulls.
        let mut hull = Some((b, n));
        if n < end {
            let (ns, nfree) = self.block(n)?;
            if nfree {
                self.check_extent(n, ns)?;
                hull = union(hull, self.hull(n, ns)?);
                self.unlink(n, ns)?;
                len += ns;
                merged -= 1;
            }
        }
        if let Some(p) = prev {
            hull = union(hull, self.hull(p, ps)?);
            self.unlink(p, ps)?;
            start = p;
            len += ps;
            merged -= 1;
        }
        // Crash order: everything above touched derived state only (counters, lists).
        // The freed block's own header first: it is the commit point of the free. Merged
        // with its predecessor, that header then lies inside the merged block, where
        // nothing reads it but a stale offset; marked free, it makes `allocation_size` and
        // `free` refuse such an offset instead of taking it for a live allocation (the
        // next block's boundary tag may still agree with it). Written after the merge's
        // header, as it once was, a kill between the two left it saying "allocated"
        // inside a free block, for good (`recover` walks the blocks, not their insides).
        // A kill after this write and before the merge's leaves two adjacent free blocks,
        // which `recover` merges; a kill before it leaks the block (still allocated),
        // never frees it twice.
        if let Some((block, word)) = into {
            self.set_intent(block, word, 0, o | INTO_FREEING)?;
        }
        self.set_block(b, size, true)?;
        if let Some((_, word)) = into {
            // The next store: the record of the block, cleared.
            self.wr(word, 0)?;
        }
        if start != b || len != size {
            // The merge: one header write.
            self.set_block(start, len, true)?;
        }
        self.insert(start, len)?;
        let e = start + len;
        if e < end {
            self.wr(e, len)?;
            self.mark_prev_free(e, true)?;
        } else {
            self.hset(F_LAST_BLOCK, start);
        }
        self.hadd(F_FREE_BLOCKS, merged);
        if let Some((lo, hi)) = hull {
            if hi - lo >= self.release_threshold {
                // Give the hull's whole pages back (never the block's first bytes, which
                // hold its header, links and hull) and start clean.
                let from = round_up(lo.max(start + FREE_HEADER), self.page).unwrap_or(hi);
                let to = round_down(hi.min(e), self.page);
                if from < to {
                    self.release(from, to);
                }
                hull = None;
            }
        }
        self.set_hull(start, len, hull)?;
        if into.is_some() {
            self.clear_intent();
        }
        Ok(())
    }

    /// Gives the pages `from..to` (free memory) back to the OS. Best effort: the
    /// memory is free either way, so a failure costs footprint, not correctness.
    fn release(&self, from: u64, to: u64) {
        #[cfg(test)]
        if kill::dead() {
            return;
        }
        match &self.backing {
            Backing::Anon {
                map: _map,
                pad: _pad,
            } => {
                #[cfg(not(miri))]
                {
                    // SAFETY: from..to lies inside free blocks of this region; nothing
                    // may rely on its contents, and MADV_DONTNEED on private anonymous
                    // memory just zero-fills the pages on next touch.
                    let _ = unsafe {
                        _map.unchecked_advise_range(
                            memmap2::UncheckedAdvice::DontNeed,
                            _pad + from as usize,
                            (to - from) as usize,
                        )
                    };
                }
            }
            Backing::File { file, .. } => {
                let _ = os::punch_hole(file, from, to - from);
            }
        }
    }

    /// Grows the region so a free block of at least `need` bytes exists at its end.
    fn grow(&self, need: u64) -> Result<(), Error> {
        let old = self.mapped.get();
        let last = self.hget(F_LAST_BLOCK);
        let (ls, lfree) = self.block(last)?;
        if last + ls != old {
            return Err(corrupt(last, "last block does not end the region"));
        }
        let have = if lfree { ls } else { 0 };
        let step = (old / 4)
            .clamp(self.growth_step, 1 << 30)
            .max(need.saturating_sub(have) + MIN_BLOCK);
        let oom = Error::OutOfMemory {
            requested: need,
            max_size: self.reserved,
        };
        let new = match old.checked_add(step).and_then(|v| round_up(v, self.page)) {
            Some(v) => v.min(self.reserved),
            None => self.reserved,
        };
        if new <= old || new - old + have < need {
            return Err(oom);
        }
        if let Backing::File { file, .. } = &self.backing {
            // Only ever lengthen: another process may have grown the file further.
            if file.metadata()?.len() < new {
                file.set_len(new)?;
            }
            // SAFETY: old..new lies in our reservation beyond our view: unreferenced.
            unsafe { self.map_file_range(file, old, new) }?;
        }
        self.mapped.set(new);
        let add = new - old;
        // Crash order: the header chain ends at the published size `old` until the one
        // header write that extends it (the last block's size, or the new block's header
        // at `old`, beyond the published size). A kill after that write, before the
        // publication, leaves a last block reaching past the published size into the
        // lengthened file: `recover` rolls the growth forward.
        if lfree {
            // The new pages are clean: the hull stays what it was.
            let hull = self.hull(last, ls)?;
            self.unlink(last, ls)?;
            self.set_block(last, ls + add, true)?;
            self.insert(last, ls + add)?;
            self.set_hull(last, ls + add, hull)?;
        } else {
            self.wr(old, ls)?;
            self.set_block(old, add, true)?;
            self.insert(old, add)?;
            self.set_hull(old, add, None)?;
            self.hset(F_LAST_BLOCK, old);
            self.hadd(F_FREE_BLOCKS, 1);
        }
        self.hadd(F_FREE, add as i64);
        // Everything above is in place (file extended, headers written): publish.
        #[cfg(test)]
        if kill::dead() {
            return Ok(());
        }
        publish_size(self.size_word(), new);
        Ok(())
    }

    // ----------------------------------------------------------------- roots

    fn root_slot(&self, slot: usize) -> ([u8; ROOT_NAME_LEN], u64) {
        let at = F_ROOTS + slot * ROOT_SLOT_LEN;
        let mut name = [0u8; ROOT_NAME_LEN];
        // SAFETY: the root slots lie in the always-mapped header.
        unsafe {
            ptr::copy_nonoverlapping(self.base.as_ptr().add(at), name.as_mut_ptr(), ROOT_NAME_LEN)
        };
        (name, self.hget(at + ROOT_NAME_LEN))
    }

    fn root_key(name: &str) -> Option<[u8; ROOT_NAME_LEN]> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() > ROOT_NAME_LEN || b.contains(&0) {
            return None;
        }
        let mut key = [0u8; ROOT_NAME_LEN];
        key[..b.len()].copy_from_slice(b);
        Some(key)
    }

    /// The offset recorded under `name` by [`set_root`](Self::set_root), if any.
    pub fn root(&self, name: &str) -> Option<Offset> {
        let key = Self::root_key(name)?;
        (0..ROOT_SLOTS)
            .map(|s| self.root_slot(s))
            .find(|(n, _)| *n == key)
            .and_then(|(_, off)| Offset::new(off))
    }

    /// Records `off` under `name` in the header (`None` removes the name). Higher layers
    /// keep the offsets of their own state here, so a reopen finds it.
    /// Names are 1 to [`ROOT_NAME_LEN`] bytes without NUL; there are [`ROOT_SLOTS`] slots.
    pub fn set_root(&self, name: &str, off: Option<Offset>) -> Result<(), Error> {
        let key = Self::root_key(name).ok_or(Error::InvalidRootName)?;
        if let Some(o) = off {
            let size = self.sync_view()?;
            if o.get() >= size {
                return Err(Error::OffsetOutOfBounds {
                    offset: o.get(),
                    len: 0,
                    size,
                });
            }
        }
        let slots = (0..ROOT_SLOTS).map(|s| (s, self.root_slot(s)));
        let existing = slots.clone().find(|(_, (n, _))| *n == key).map(|(s, _)| s);
        let at = |s: usize| F_ROOTS + s * ROOT_SLOT_LEN;
        match (existing, off) {
            (Some(s), Some(o)) => self.hset(at(s) + ROOT_NAME_LEN, o.get()),
            (Some(s), None) => {
                // SAFETY: the slot lies in the always-mapped header.
                unsafe { ptr::write_bytes(self.base.as_ptr().add(at(s)), 0, ROOT_NAME_LEN) };
                self.hset(at(s) + ROOT_NAME_LEN, 0);
            }
            (None, None) => {}
            (None, Some(o)) => {
                let s = slots
                    .clone()
                    .find(|(_, (n, _))| n[0] == 0)
                    .map(|(s, _)| s)
                    .ok_or(Error::RootSlotsFull)?;
                // Offset first, then the name that makes the slot live.
                self.hset(at(s) + ROOT_NAME_LEN, o.get());
                // SAFETY: the slot lies in the always-mapped header.
                unsafe {
                    ptr::copy_nonoverlapping(
                        key.as_ptr(),
                        self.base.as_ptr().add(at(s)),
                        ROOT_NAME_LEN,
                    )
                };
            }
        }
        Ok(())
    }

    /// Every (name, offset) pair in the root slots.
    pub fn roots(&self) -> Vec<(String, Offset)> {
        (0..ROOT_SLOTS)
            .map(|s| self.root_slot(s))
            .filter_map(|(n, off)| {
                let len = n.iter().position(|&c| c == 0).unwrap_or(ROOT_NAME_LEN);
                let name = String::from_utf8_lossy(&n[..len]).into_owned();
                Some((name, Offset::new(off)?)).filter(|(name, _)| !name.is_empty())
            })
            .collect()
    }

    // ----------------------------------------------------------------- durability

    /// Writes the region's dirty pages to its file and waits (`msync`). A no-op for
    /// anonymous regions.
    pub fn flush(&self) -> Result<(), Error> {
        if let Backing::File { .. } = self.backing {
            // SAFETY: base..base+mapped is mapped.
            unsafe { os::msync(self.base.as_ptr(), self.mapped.get()) }?;
        }
        Ok(())
    }

    // ----------------------------------------------------------------- stats & check

    /// Usage figures, from counters kept in the header (O(1) apart from a scan of the
    /// largest size class for `largest_free`).
    pub fn stats(&self) -> RegionStats {
        let _ = self.sync_view();
        let file_bytes = match &self.backing {
            Backing::Anon { .. } => None,
            Backing::File { file, .. } => file.metadata().ok().map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.blocks() * 512
            }),
        };
        let free_blocks = self.hget(F_FREE_BLOCKS);
        RegionStats {
            size: self.size_word().load(core::sync::atomic::Ordering::Acquire),
            mapped: self.mapped.get(),
            reserved: self.reserved,
            in_use: self.hget(F_IN_USE),
            free: self.hget(F_FREE),
            allocations: self.hget(F_ALLOCS),
            free_blocks,
            largest_free: self.largest_free(free_blocks).unwrap_or(0),
            file_bytes,
        }
    }

    fn largest_free(&self, free_blocks: u64) -> Result<u64, Error> {
        let top = (0..BINS / 64).rev().find_map(|w| {
            let bits = self.hget(F_BITMAP + w * 8);
            (bits != 0).then(|| w * 64 + 63 - bits.leading_zeros() as usize)
        });
        let Some(bin) = top else { return Ok(0) };
        let mut best = 0;
        let mut b = self.head(bin);
        let mut steps = 0;
        while b != 0 && steps <= free_blocks {
            best = best.max(self.block(b)?.0);
            b = self.rd(b.wrapping_add(NEXT))?;
            steps += 1;
        }
        Ok(best.saturating_sub(BLOCK_HEADER))
    }

    /// Repairs the block allocator after a process died inside
    /// [`alloc`](Self::alloc), [`free`](Self::free) or a growth (for example when taking
    /// over a lock whose holder was killed). Does nothing when [`check`](Self::check)
    /// passes.
    ///
    /// Block headers (size and free flag) are the truth: every allocator write is
    /// ordered so that they tile the region at every instruction boundary. Everything
    /// else is derived and rebuilt by one walk over the blocks: adjacent free blocks
    /// are merged, boundary tags and PREV_FREE flags rewritten, free lists and their
    /// bitmap rebuilt, dirty hulls set to whole blocks (conservative: they only steer
    /// give-back), and the counters and last-block field recomputed. A growth that
    /// was interrupted after its header write is rolled forward (size published). The
    /// block of the interrupted operation may leak (stay allocated); no live block is
    /// ever freed or handed out twice.
    ///
    /// Headers that do not tile the region are real corruption, not an interrupted
    /// operation: [`Error::Corrupt`]. Idempotent; O(blocks). Must not run while another
    /// thread or process uses the allocator. On success, [`needs_recovery`] is false.
    ///
    /// [`needs_recovery`]: Self::needs_recovery
    pub fn recover(&self) -> Result<RecoverReport, Error> {
        let mut report = self.rebuild_bookkeeping()?;
        report.record_finished = self.finish_record()?;
        self.torn.set(false);
        Ok(report)
    }

    /// Completes or drops the intent of an [`alloc_into`](Self::alloc_into) or a
    /// [`free_recorded`](Self::free_recorded) that a dead process left in flight, once the
    /// block headers are the truth again: if its block is allocated (freed, for a free: the
    /// operation's write was made) and the record word still holds what it held before, the
    /// record is stored (cleared, for a free); then the intent is cleared. Returns whether it
    /// stored the record. The intent is untrusted like the rest of the file: the word
    /// must lie in the live block that the intent names as the record's.
    ///
    /// The block is checked with [`allocation_size`](Self::allocation_size): before an
    /// allocation's write its header says free (and `rebuild_bookkeeping` rewrites the
    /// header of the first block of a run of free blocks only, as free); after a free's, it
    /// says free too, and before, allocated. Nothing else can have allocated or freed it
    /// since: the intent makes the bookkeeping torn, so `alloc` and `free` refuse to run
    /// until this has.
    fn finish_record(&self) -> Result<bool, Error> {
        let word = self.hget(F_INTO_WORD);
        if word == 0 {
            return Ok(false);
        }
        let (value, old) = (self.hget(F_INTO_VALUE), self.hget(F_INTO_OLD));
        // The operation's target: the block allocated, or freed (the high bit). Committed
        // when its header says so.
        let target = self.hget(F_INTO_TARGET);
        let live =
            Offset::new(target & OFFSET_BITS).is_some_and(|o| self.allocation_size(o).is_ok());
        let made = live == (target & INTO_FREEING == 0);
        // The word must lie in the live block the caller named, as `alloc_into` checked:
        // a file is untrusted, and a word elsewhere (a block header) is not the record's.
        let in_record = Offset::new(self.hget(F_INTO_BLOCK)).is_some_and(|r| {
            let n = self.allocation_size(r).unwrap_or(0);
            word % 8 == 0 && word >= r.get() && word - r.get() + 8 <= n
        });
        let stored = made && in_record && self.rd(word)? == old;
        if stored {
            self.wr(word, value)?;
        }
        self.clear_intent();
        Ok(stored)
    }

    /// [`recover`](Self::recover)'s work.
    fn rebuild_bookkeeping(&self) -> Result<RecoverReport, Error> {
        let published = self.size_word().load(core::sync::atomic::Ordering::Acquire);
        let view = self.mapped.get();
        if published >= view {
            if let Ok(c) = self.check() {
                return Ok(RecoverReport {
                    size: c.size,
                    blocks: c.blocks,
                    allocations: c.allocations,
                    free_blocks: c.free_blocks,
                    ..RecoverReport::default()
                });
            }
        }
        if published > self.mapped.get() {
            self.extend_view(self.mapped.get(), published)?;
            self.mapped.set(published);
        }
        let mut end = self.mapped.get();
        let mut rep = RecoverReport {
            rebuilt: true,
            ..RecoverReport::default()
        };
        // Pass 1: validate the tiling, roll an interrupted growth forward, merge free
        // neighbours. Every write keeps the tiling valid, so recovery may itself be
        // interrupted and run again.
        let mut b = self.data_start;
        let mut run: Option<(u64, u64)> = None;
        while b < end {
            let v = self.rd(b + 8)?;
            let mut size = v & !FLAG_MASK;
            let mut free = v & FREE != 0;
            if b == published && published < end && size < MIN_BLOCK {
                // This process had mapped a growth whose headers were never written
                // (the same process recovers after a simulated kill): the new range
                // becomes a free block.
                size = end - b;
                self.set_block(b, size, true)?;
                free = true;
                rep.grown_to = Some(end);
            } else if v & FLAG_MASK & !(FREE | PREV_FREE) != 0 || size < MIN_BLOCK {
                return Err(corrupt(b, "block header out of range"));
            } else if size > end - b {
                // Only a growth writes a header past the published size, a free one.
                if !free {
                    return Err(corrupt(b, "block header out of range"));
                }
                self.roll_forward(b, size, end)?;
                end = b + size;
                rep.grown_to = Some(end);
            }
            match run {
                Some((rs, rl)) if free => {
                    self.set_block(rs, rl + size, true)?;
                    run = Some((rs, rl + size));
                    rep.merged += 1;
                }
                _ => run = free.then_some((b, size)),
            }
            b += size;
        }
        publish_size(self.size_word(), end);
        // Pass 2: derived state.
        for bin in 0..BINS {
            self.hset(F_BINS_HEADS + bin * 8, 0);
        }
        for w in 0..BINS / 64 {
            self.hset(F_BITMAP + w * 8, 0);
        }
        let (mut in_use, mut free_bytes) = (0u64, 0u64);
        let (mut b, mut prev_size, mut prev_free, mut last) = (self.data_start, 0, false, 0);
        while b < end {
            let (size, free) = self.block(b)?;
            if self.rd(b)? != prev_size {
                self.wr(b, prev_size)?;
                rep.tags_fixed += 1;
            }
            let want = size | u64::from(free) | if prev_free { PREV_FREE } else { 0 };
            if self.rd(b + 8)? != want {
                self.wr(b + 8, want)?;
                rep.tags_fixed += 1;
            }
            rep.blocks += 1;
            if free {
                self.insert(b, size)?;
                self.set_hull(b, size, Some((b, b + size)))?;
                rep.free_blocks += 1;
                free_bytes += size;
            } else {
                rep.allocations += 1;
                in_use += size;
            }
            (last, prev_size, prev_free) = (b, size, free);
            b += size;
        }
        let counters = [
            (F_IN_USE, in_use),
            (F_FREE, free_bytes),
            (F_ALLOCS, rep.allocations),
            (F_FREE_BLOCKS, rep.free_blocks),
            (F_LAST_BLOCK, last),
        ];
        for (field, v) in counters {
            if self.hget(field) != v {
                self.hset(field, v);
                rep.counters_fixed = true;
            }
        }
        rep.size = end;
        Ok(rep)
    }

    /// Maps and publishes a growth that a dead process left half done: the block at `b`
    /// (`size` bytes) reaches past `end`, into the file that the growth lengthened.
    fn roll_forward(&self, b: u64, size: u64, end: u64) -> Result<(), Error> {
        let bad = corrupt(b, "block header out of range");
        // The size is untrusted: a hostile one overflows.
        let Some(new) = b.checked_add(size) else {
            return Err(bad);
        };
        if new % self.page != 0 || new > self.reserved {
            return Err(bad);
        }
        match &self.backing {
            Backing::Anon { .. } => Err(bad),
            Backing::File { file, .. } => {
                if file.metadata()?.len() < new {
                    return Err(bad);
                }
                // SAFETY: end..new lies inside our reservation beyond our view: unreferenced.
                unsafe { self.map_file_range(file, end, new) }?;
                self.mapped.set(new);
                Ok(())
            }
        }
    }

    /// Walks and validates every allocator structure: the block chain covers the region
    /// exactly, boundary tags agree, no two free blocks are adjacent, every free block is
    /// in exactly the right free list (and nothing else is), the bitmaps match the lists,
    /// the header's counters match the walk, the roots point inside the region, and no
    /// [`alloc_into`](Self::alloc_into) or [`free_recorded`](Self::free_recorded) is in
    /// flight (a dead process's, which [`recover`](Self::recover) completes). Work is
    /// bounded by the region size (cycles are detected, never followed forever).
    pub fn check(&self) -> Result<CheckReport, Error> {
        let end = self.sync_view()?;
        if self.hget(F_INTO_WORD) != 0 {
            return Err(corrupt(F_INTO_WORD as u64, INTO_IN_FLIGHT));
        }
        let mut r = CheckReport {
            size: end,
            ..CheckReport::default()
        };
        let mut frees: Vec<(u64, u64)> = Vec::new();
        let (mut b, mut prev_size, mut prev_free) = (self.data_start, 0, false);
        let mut last = 0;
        while b < end {
            let (size, free) = self.block(b)?;
            if self.rd(b)? != prev_size {
                return Err(corrupt(b, "boundary tag disagrees with the previous block"));
            }
            if free && prev_free {
                return Err(corrupt(b, "two adjacent free blocks"));
            }
            if (self.rd(b + 8)? & PREV_FREE != 0) != prev_free {
                return Err(corrupt(
                    b,
                    "PREV_FREE flag disagrees with the previous block",
                ));
            }
            r.blocks += 1;
            if free && size >= FREE_HEADER {
                let (lo, hi) = (self.rd(b + HULL_LO)?, hull_hi(self.rd(b + HULL_HI)?));
                if (lo, hi) != (0, 0) && !(b <= lo && lo < hi && hi <= b + size) {
                    return Err(corrupt(b, "dirty hull outside its free block"));
                }
            }
            if free {
                r.free_blocks += 1;
                r.free += size;
                r.largest_free_block = r.largest_free_block.max(size);
                frees.push((b, size));
            } else {
                r.allocations += 1;
                r.in_use += size;
            }
            (last, prev_size, prev_free) = (b, size, free);
            b += size; // block() checked size <= end - b.
        }
        if self.hget(F_LAST_BLOCK) != last {
            return Err(corrupt(F_LAST_BLOCK as u64, "last-block field is wrong"));
        }
        if self.hget(F_IN_USE) != r.in_use
            || self.hget(F_FREE) != r.free
            || self.hget(F_ALLOCS) != r.allocations
            || self.hget(F_FREE_BLOCKS) != r.free_blocks
        {
            return Err(corrupt(0, "header counters disagree with the blocks"));
        }
        // Free lists: every node a distinct free block of the right class.
        let mut seen = vec![false; frees.len()];
        let mut listed = 0u64;
        for bin in 0..BINS {
            let bit = self.hget(F_BITMAP + (bin / 64) * 8) >> (bin % 64) & 1 == 1;
            let mut n = self.head(bin);
            if bit != (n != 0) {
                return Err(corrupt(0, "free-list bitmap disagrees with the lists"));
            }
            let mut prev = 0;
            while n != 0 {
                let i = frees
                    .binary_search_by_key(&n, |&(b, _)| b)
                    .map_err(|_| corrupt(n, "free list links a block that is not free"))?;
                if std::mem::replace(&mut seen[i], true) {
                    return Err(corrupt(n, "free block listed twice (cycle)"));
                }
                if bin_index(frees[i].1) != bin {
                    return Err(corrupt(n, "free block in the wrong size class"));
                }
                if self.rd(n.wrapping_add(PREV))? != prev {
                    return Err(corrupt(n, "free list is not doubly linked"));
                }
                listed += 1;
                prev = n;
                n = self.rd(n.wrapping_add(NEXT))?;
            }
        }
        if listed != r.free_blocks {
            return Err(corrupt(0, "a free block is missing from the free lists"));
        }
        for s in 0..ROOT_SLOTS {
            let (name, off) = self.root_slot(s);
            if name[0] != 0 {
                r.roots += 1;
                if off >= end {
                    return Err(corrupt(off, "root offset outside the region"));
                }
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
#[path = "recover_tests.rs"]
mod recover_tests;

/// Test-only: code that `open_with` runs between its read of the header and its read of the
/// file's length, as another process could.
#[cfg(test)]
mod open_hook {
    use std::cell::RefCell;
    std::thread_local! {
        static HOOK: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
    }
    /// Runs `f` in the next open of this thread, between its two reads.
    pub(crate) fn set(f: impl FnOnce() + 'static) {
        HOOK.with(|h| *h.borrow_mut() = Some(Box::new(f)));
    }
    pub(crate) fn between_reads() {
        if let Some(f) = HOOK.with(|h| h.borrow_mut().take()) {
            f();
        }
    }
}

#[cfg(all(test, not(miri)))]
mod open_tests {
    use super::*;

    /// An open that another process's growth overtakes between its two reads still opens:
    /// the length it reads after the header covers the size the header gave. (With the
    /// length read first, the same interleaving, the growth between the length and the
    /// header, gave `Truncated`: a worker of the CLI's `bench` hit it on a loaded machine,
    /// "region file is truncated: 1048576 bytes, needs 4194304".) Here the growth comes
    /// before the length; and an open after it sees the grown size.
    #[test]
    fn an_open_overtaken_by_a_growth_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.region");
        let opts = RegionOptions::new()
            .initial_size(64 << 10)
            .max_size(1 << 30);
        let grower = std::rc::Rc::new(Region::create(&path, &opts).unwrap());
        let g = grower.clone();
        open_hook::set(move || {
            g.alloc(4 << 20, 8).unwrap();
        });
        let before = grower.stats().size;
        let r = Region::open(&path).unwrap();
        let after = grower.stats().size;
        assert!(
            after > before,
            "the hook grew the file: {before} -> {after}"
        );
        assert!(r.stats().size >= before);
        let again = Region::open(&path).unwrap();
        assert_eq!(again.stats().size, after);
    }
}

/// The pid-namespace record ([`Region::claim_pid_namespace`]), with this thread's namespace
/// overridden as a process of another container would have it (`tests/process.rs` runs
/// the same in a real second namespace where `unshare` can make one).
#[cfg(all(test, not(miri)))]
mod pid_namespace_tests {
    use super::*;
    use crate::process::ns_override;

    const A: u64 = 0xA000_0001;
    const B: u64 = 0xB000_0002;

    fn recorded(path: &Path) -> u64 {
        let bytes = std::fs::read(path).unwrap();
        u64::from_ne_bytes(bytes[F_PID_NS..F_PID_NS + 8].try_into().unwrap())
    }

    fn open_as(ns: u64, path: &Path) -> Result<Region, Error> {
        let _g = ns_override::set(ns);
        Region::open(path)
    }

    /// [`open_as`] for a file just closed here: retried for a while if refused, because a
    /// process that another test thread forked at that moment holds a copy of the closed
    /// descriptor, and so its lock, until it has exec'd.
    fn open_closed_as(ns: u64, path: &Path) -> Region {
        for _ in 0..100 {
            match open_as(ns, path) {
                Err(Error::ForeignPidNamespace { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                r => return r.unwrap(),
            }
        }
        open_as(ns, path).unwrap()
    }

    fn refused(r: Result<Region, Error>) -> (u64, u64) {
        match r {
            Err(Error::ForeignPidNamespace { file, ours }) => (file, ours),
            other => panic!("expected ForeignPidNamespace, got {other:?}"),
        }
    }

    /// A file in use from one namespace is refused to another, and taken over by it once
    /// every handle is closed; both ways.
    #[test]
    fn a_file_in_use_from_another_pid_namespace_is_refused_until_it_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.region");
        let a1 = {
            let _g = ns_override::set(A);
            Region::create(&path, &RegionOptions::new()).unwrap()
        };
        assert_eq!(recorded(&path), A);
        // A second handle of the same namespace shares the file.
        let a2 = open_as(A, &path).unwrap();
        assert_eq!(refused(open_as(B, &path)), (A, B));
        drop(a1);
        assert_eq!(refused(open_as(B, &path)), (A, B), "a2 still has it open");
        assert_eq!(recorded(&path), A, "a refused open writes nothing");
        drop(a2);
        let b = open_closed_as(B, &path);
        assert_eq!(recorded(&path), B, "taken over once nobody had it open");
        assert_eq!(refused(open_as(A, &path)), (B, A));
        // The taken-over file works as before.
        let off = b.alloc(64, 8).unwrap();
        b.set_root("x", Some(off)).unwrap();
        drop(b);
        let a = open_closed_as(A, &path);
        assert_eq!(recorded(&path), A);
        assert_eq!(a.root("x"), Some(off));
        a.check().unwrap();
    }

    /// A file from before the record (format minor 1, the word 0) takes its first opener's
    /// namespace, alone or beside handles that hold no lock.
    #[test]
    fn a_file_without_a_recorded_namespace_takes_its_openers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.region");
        drop(Region::create(&path, &RegionOptions::new()).unwrap());
        let zero = |path: &Path| {
            let f = OpenOptions::new().write(true).open(path).unwrap();
            f.write_all_at(&0u64.to_ne_bytes(), F_PID_NS as u64)
                .unwrap();
        };
        zero(&path);
        let b = open_closed_as(B, &path);
        assert_eq!(recorded(&path), B);
        assert_eq!(refused(open_as(A, &path)), (B, A));
        // Beside a user that wrote no record (the record cleared under it, as a build from
        // before it leaves the file): the first opener's namespace, then refusals.
        zero(&path);
        let a = open_as(A, &path).unwrap();
        assert_eq!(recorded(&path), A);
        assert_eq!(refused(open_as(B, &path)), (A, B));
        drop((a, b));
    }

    /// Opens from two namespaces at once, many times over, on a file nobody holds: never do
    /// both get in while the other is open.
    #[test]
    fn racing_opens_from_two_pid_namespaces_never_both_get_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.region");
        drop(Region::create(&path, &RegionOptions::new()).unwrap());
        let mut wins = [0u32; 3];
        for _ in 0..200 {
            let barrier = std::sync::Barrier::new(2);
            let held = std::sync::Barrier::new(2);
            let (ra, rb) = std::thread::scope(|s| {
                let go = |ns: u64| {
                    let (barrier, held, path) = (&barrier, &held, &path);
                    s.spawn(move || {
                        barrier.wait();
                        let r = open_as(ns, path);
                        // Both answers are in before either handle closes.
                        held.wait();
                        r.is_ok()
                    })
                };
                let (a, b) = (go(A), go(B));
                (a.join().unwrap(), b.join().unwrap())
            });
            assert!(!(ra && rb), "both namespaces opened the file at once");
            wins[if ra {
                1
            } else if rb {
                2
            } else {
                0
            }] += 1;
        }
        // And one of them gets in: the first to try the lock exclusively gets it, unless
        // the other holds it, which only the other's own exclusive lock can make so. (Not
        // required of every round: a process forked by another test thread can hold a copy
        // of the last round's descriptor for a moment, see `open_closed_as`.)
        assert!(wins[0] <= 10, "rounds (neither, A, B): {wins:?}");
        eprintln!("rounds (neither, A, B): {wins:?}");
        assert!(
            wins[1] > 0 && wins[2] > 0,
            "rounds (neither, A, B): {wins:?}"
        );
    }
}

/// [`Region::try_alone`]: a handle has its file alone exactly when no other handle has it
/// open, and opens wait while it is kept so.
#[cfg(all(test, target_os = "linux", not(miri)))]
mod alone_tests {
    use super::*;
    use std::time::Duration;

    /// `r.try_alone()`, asked again for a while if `None`: a process that another test
    /// thread forks holds a copy of every descriptor of this one until it execs, and so
    /// the lock of a handle just closed (see `pid_namespace_tests::open_closed_as`).
    fn alone_soon(r: &Region) -> Option<Alone> {
        for _ in 0..100 {
            if let Some(a) = r.try_alone() {
                return Some(a);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        r.try_alone()
    }

    #[test]
    fn a_file_is_alone_only_with_one_handle_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alone.region");
        let a = Region::create(&path, &RegionOptions::new()).unwrap();
        drop(alone_soon(&a).expect("a new file is its creator's alone"));
        // The guard gave the lock back: another handle opens, and then neither is alone.
        let b = Region::open(&path).unwrap();
        assert!(a.try_alone().is_none());
        assert!(b.try_alone().is_none());
        // Of this process too: a third handle of this thread counts.
        let c = Region::open(&path).unwrap();
        drop(a);
        assert!(b.try_alone().is_none(), "c is still open");
        drop(c);
        let g = alone_soon(&b).expect("alone once the others are closed");
        drop(g);
        drop(alone_soon(&b).expect("and again after the guard is dropped"));
        assert!(Region::anonymous().unwrap().try_alone().is_none());
    }

    /// While a handle keeps its file alone, another open waits, and gets in when the guard
    /// is dropped; the guard outlives its region without keeping the file from others.
    #[test]
    fn opens_wait_while_a_file_is_kept_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kept.region");
        let a = Region::create(&path, &RegionOptions::new()).unwrap();
        let g = alone_soon(&a).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        let opener = std::thread::spawn(move || {
            let r = Region::open(&p);
            tx.send(()).unwrap();
            r.map(|_| ())
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "an open went in while the file was kept alone"
        );
        drop(g);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the open finished once the guard was dropped");
        opener.join().unwrap().unwrap();
        // A guard dropped after its region: the file is free for the next handle.
        let g = alone_soon(&a).unwrap();
        drop(a);
        drop(g);
        let b = Region::open(&path).unwrap();
        assert!(alone_soon(&b).is_some());
    }

    /// Whether `r` holds the guard of an open that found its file alone.
    fn holds(r: &Region) -> bool {
        let held = r.held.take();
        let yes = held.is_some();
        r.held.set(held);
        yes
    }

    /// `Region::open_with(hold_alone)`, again for a while until the open finds the file
    /// alone (see `alone_soon`).
    fn open_holding(path: &Path) -> Region {
        let opts = RegionOptions::new().hold_alone(true);
        for _ in 0..100 {
            let r = Region::open_with(path, &opts).unwrap();
            if holds(&r) {
                return r;
            }
            drop(r);
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the file was never found alone");
    }

    /// Opens `path` in a thread; the receiver hears when the open has returned.
    fn open_in_thread(
        path: &Path,
    ) -> (
        std::sync::mpsc::Receiver<()>,
        std::thread::JoinHandle<Region>,
    ) {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.to_path_buf();
        let opener = std::thread::spawn(move || {
            let r = Region::open(&p).unwrap();
            tx.send(()).unwrap();
            r
        });
        (rx, opener)
    }

    /// An open with `hold_alone` that finds its file alone keeps it so, from the open
    /// until the guard that `try_alone` hands out is dropped: an open that comes in
    /// between waits, instead of making the first open's `try_alone` find it there (two
    /// opens at the same moment both found the file shared, and neither cleared what gone
    /// users left in it). A region dropped with the guard still in it lets the others in.
    #[test]
    fn an_open_that_finds_its_file_alone_can_keep_it_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held.region");
        drop(Region::create(&path, &RegionOptions::new().hold_alone(true)).unwrap());
        let a = open_holding(&path);
        let (rx, opener) = open_in_thread(&path);
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "an open went in between the open and its try_alone"
        );
        let g = a.try_alone().expect("the held guard");
        assert!(!holds(&a), "handed out once");
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        drop(g);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the open finished once the guard was dropped");
        let b = opener.join().unwrap();
        assert!(a.try_alone().is_none() && b.try_alone().is_none());
        // An open beside another handle finds nothing to hold.
        let c = Region::open_with(&path, &RegionOptions::new().hold_alone(true)).unwrap();
        assert!(!holds(&c) && c.try_alone().is_none());
        drop((a, b, c));
        // Dropped with its guard: the waiting open gets in.
        let d = open_holding(&path);
        let (rx, opener) = open_in_thread(&path);
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(d);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the open finished once the holding region was dropped");
        drop(opener.join().unwrap());
    }
}

#[cfg(test)]
mod huge_tests {
    use super::*;

    /// The kernel's THP mode: `always`, `madvise` or `never` (`None` if unknown).
    fn thp_mode() -> Option<String> {
        let s = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
        let (_, rest) = s.split_once('[')?;
        Some(rest.split_once(']')?.0.to_owned())
    }

    /// `AnonHugePages` (bytes) of the mapping of /proc/self/smaps that contains `addr`.
    fn anon_huge_bytes(addr: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = first.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = lo <= addr && addr < hi;
                    continue;
                }
            }
            if inside {
                if let Some(v) = line.strip_prefix("AnonHugePages:") {
                    let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
                    return Some(kb * 1024);
                }
            }
        }
        None
    }

    #[test]
    fn option_round_trips() {
        let anon = |o: &RegionOptions| Region::anonymous_with(o).unwrap().huge_pages();
        assert!(
            anon(&RegionOptions::new()),
            "on by default for anonymous regions"
        );
        assert!(anon(&RegionOptions::new().huge_pages(true)));
        assert!(!anon(&RegionOptions::new().huge_pages(false)));
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn file_regions_take_the_option_and_never_fail_for_it() {
        let dir = tempfile::tempdir().unwrap();
        for (name, opts, want) in [
            ("default", RegionOptions::new(), false),
            ("on", RegionOptions::new().huge_pages(true), true),
            ("off", RegionOptions::new().huge_pages(false), false),
        ] {
            let path = dir.path().join(name);
            let r = Region::create(&path, &opts).unwrap();
            assert_eq!(r.huge_pages(), want, "{name}");
            assert_eq!(r.base() as usize % HUGE_PAGE as usize, 0, "{name}");
            // Grow past several huge pages (each growth maps and advises a new range).
            let offs: Vec<_> = (0..6).map(|_| r.alloc(3 << 20, 64).unwrap()).collect();
            for (i, &o) in offs.iter().enumerate() {
                // SAFETY: `o` is a live allocation of 3 MiB.
                unsafe {
                    r.ptr(o, 3 << 20)
                        .unwrap()
                        .as_ptr()
                        .write_bytes(i as u8, 3 << 20)
                };
            }
            r.set_root("x", Some(offs[5])).unwrap();
            r.flush().unwrap();
            r.check().unwrap();
            drop(r);
            let r = Region::open_with(&path, &opts).unwrap();
            let o = r.root("x").unwrap();
            // SAFETY: the allocation was written above and is 3 MiB long.
            let last = unsafe { *r.ptr(o, 3 << 20).unwrap().as_ptr().add((3 << 20) - 1) };
            assert_eq!(last, 5);
            r.check().unwrap();
        }
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn large_anonymous_region_works_and_gets_huge_pages() {
        for on in [true, false] {
            let r = Region::anonymous_with(&RegionOptions::new().huge_pages(on)).unwrap();
            assert_eq!(r.base() as usize % HUGE_PAGE as usize, 0);
            let len = 16u64 << 20;
            let off = r.alloc(len, 4096).unwrap();
            let p = r.ptr(off, len).unwrap().as_ptr();
            // SAFETY: `off` is a live allocation of `len` bytes; every page is touched.
            unsafe {
                for i in (0..len as usize).step_by(4096) {
                    p.add(i).write((i >> 12) as u8);
                }
                for i in (0..len as usize).step_by(4096) {
                    assert_eq!(p.add(i).read(), (i >> 12) as u8);
                }
            }
            // 8 MiB touched past the first 2 MiB: at least one whole huge page lies there.
            let huge = anon_huge_bytes(p as usize + (8 << 20));
            let mode = thp_mode();
            if on && matches!(mode.as_deref(), Some("always" | "madvise")) {
                assert!(huge.unwrap_or(0) > 0, "no AnonHugePages: {huge:?}");
            }
            // Under `always` every mapping may get huge pages; under `madvise` only advised ones.
            if !on && mode.as_deref() == Some("madvise") {
                assert_eq!(huge.unwrap_or(0), 0);
            }
            r.free(off).unwrap();
            r.check().unwrap();
        }
    }
}

#[inline]
fn corrupt(offset: u64, what: &'static str) -> Error {
    Error::Corrupt { offset, what }
}
