//! [`SharedMap`]: `BytesMap` semantics for many threads and processes on one file.
//!
//! See `docs/concurrency.md` in the repository for the layout, the locks, owner recovery,
//! growth visibility and crash consistency, including what is not yet crash-consistent, and
//! why reads take the read lock (optimistic reads were tried and removed).

use std::path::Path;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use offheap_mmap::{Offset, Region, RegionOptions};
use offheap_slab::{Arena, Config, Handle, ReleasePolicy};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::bytes_map::{check_lens, pack7};
use crate::lock::{self, Acquired, LockWords, READER_SLOTS};
use crate::region::{ShardSource, SharedRegion};
use crate::Error;

const ROOT: &str = "offheap.shared";
const MAGIC: u64 = u64::from_le_bytes(*b"offShare");
/// Version 2: 16-byte slots, any capacity (version 1: 24-byte slots).
const VERSION: u64 = 2;

/// Key words and value words (see docs/concurrency.md): up to 7 bytes inline, with the
/// length in the top byte (0..=7).
const INLINE_MAX: usize = 7;
/// A long key's word: its hash with the top bit set.
const LONG_KEY: u64 = 1 << 63;
/// Key words that no key encodes to (short keys have a top byte <= 7, long keys >= 0x80).
const EMPTY: u64 = 0x10 << 56;
const TOMB: u64 = 0x11 << 56;
/// A value word naming an arena blob: this top byte, then the region offset of the blob's
/// first chunk (whose first 16 bytes are the chunk's arena handle).
const HANDLE_MARK: u64 = 0x80 << 56;
const LOW56: u64 = (1 << 56) - 1;
/// No value word (intent fields not in use).
const NONE_W: u64 = 0xFF << 56;
/// A blob's first chunk: its own handle (16 bytes), the content length (8), the content.
const BLOB_HDR: usize = 24;
/// A long key's record (a blob): `[value word][key bytes]`.
const REC_HDR: usize = 8;

/// Shard table sizes: any capacity from `MIN_CAP` to `MAX_CAP` slots.
const MIN_CAP: u64 = 16;
const MAX_CAP: u64 = (1 << 28) - 1;
/// Table descriptor: slot array offset / 64 in the low 36 bits, capacity above.
const CAP_SHIFT: u32 = 36;
/// Growth: when live + tombstone slots would pass `MAX_LOAD`, the shard is rebuilt one step
/// up its capacity ladder (see [`cap_for`]), to `FILL`: a growth by 1.2 (see
/// docs/performance.md for the measured trade-off with 1.1). Loads are in per mille.
const MAX_LOAD: u64 = 900;
const FILL: u64 = 750;
/// Shrink below this load.
const MIN_LOAD: u64 = 300;
/// Inserts a rebuilt table takes at least before the next rebuild.
const MIN_ROOM: u64 = 256;

// Intent operations (see docs/concurrency.md). Operations on inline keys and values commit
// with one store and need none.
const OP_NONE: u64 = 0;
const OP_INSERT: u64 = 1;
const OP_UPDATE: u64 = 2;
const OP_DELETE: u64 = 3;
const OP_REBUILD: u64 = 4;

/// A slot: key word and value word, accessed through atomics (an inline write commits with
/// one store, so a process killed mid-write leaves the old or the new word, never a mix).
#[repr(C)]
struct Slot {
    kw: AtomicU64,
    vw: AtomicU64,
}

const SLOT: u64 = std::mem::size_of::<Slot>() as u64;

#[repr(C, align(128))]
struct MapHeader {
    alloc_lock: LockWords,
    magic: u64,
    version: u64,
    nshards: u64,
    seed: u64,
    hash_mask: u64,
    shards_off: u64,
    check: u64,
}

impl MapHeader {
    fn checksum(&self) -> u64 {
        let w = [
            self.magic,
            self.version,
            self.nshards,
            self.seed,
            self.hash_mask,
            self.shards_off,
        ];
        xxh3_64(bytemuck::cast_slice(&w))
    }
}

/// The undo/redo record of the mutation in progress in a shard.
#[repr(C)]
#[derive(Clone, Copy)]
struct Intent {
    op: u64,
    step: u64,
    slot: u64,
    kw: u64,
    /// Value words (`NONE_W` when unused).
    new: u64,
    old: u64,
    /// A long key's record word.
    rec: u64,
    /// The arena handles of the blobs that `new`, `old` and `rec` name (frees go through
    /// these: the arena's generation check refuses a second free).
    new_h: [u64; 2],
    old_h: [u64; 2],
    rec_h: [u64; 2],
    old_table: u64,
    new_table: u64,
}

/// The line that writers write, then the reader slots, then the intent record.
#[repr(C, align(128))]
struct Shard {
    /// 0, or the write lock holder's owner id.
    state: AtomicU64,
    /// The offset of a slot table that a rebuild in progress has allocated
    /// (`Region::alloc_into` stores it as the allocation is made), 0 when none: a recovery
    /// of a rebuild cut short before its intent named the new table frees it. Cleared at the
    /// start of every rebuild and by the recovery. (Unused and zero before; it keeps the
    /// table word where format 2 put it.)
    fresh_table: AtomicU64,
    /// Slot array offset / 64 | capacity << 36 (one word: published atomically).
    table: AtomicU64,
    len: AtomicU64,
    /// Live entries plus tombstones.
    used: AtomicU64,
    arena_root: AtomicU64,
    _pad: [u64; 2],
    /// Reader slots of the shard's lock, on the next 64-byte line: only reads that need
    /// the arena (long keys or values), or that fall back after conflicts, take them; a
    /// writer checks them all with one line.
    readers: [AtomicU64; READER_SLOTS],
    _pad2: u64,
    /// Changed only by the write lock's holder: interior mutability through `&Shard`.
    intent: std::cell::UnsafeCell<Intent>,
}

const _: () = assert!(std::mem::offset_of!(Shard, readers) == 64);
const _: () = assert!(std::mem::offset_of!(Shard, intent) == 128);

impl Shard {
    /// The intent's `op`. The caller holds the shard's lock (read or write), so no writer
    /// changes it meanwhile.
    fn pending_op(&self) -> u64 {
        // SAFETY: a plain read of an integer in the shard, under its lock.
        unsafe { (*self.intent.get()).op }
    }
}

/// Options for a new [`SharedMap`]. Builder-style.
#[derive(Clone, Debug)]
pub struct SharedMapOptions {
    shards: usize,
    region: RegionOptions,
    slab_size: usize,
    hash_mask: u64,
    capacity: usize,
    seed: Option<u64>,
}

impl Default for SharedMapOptions {
    fn default() -> Self {
        SharedMapOptions {
            shards: 256,
            region: RegionOptions::new().release_threshold(1 << 20),
            slab_size: 64 << 10,
            hash_mask: u64::MAX,
            capacity: 0,
            seed: None,
        }
    }
}

impl SharedMapOptions {
    /// Defaults: 256 shards, 64 KiB arena slabs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of shards: a power of two from 1 to 65536.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }

    /// Options of the region (maximum size above all: it is the most the file can grow to).
    pub fn region(mut self, opts: RegionOptions) -> Self {
        self.region = opts;
        self
    }

    /// The arenas' slab size: the largest single chunk (at least 64 bytes).
    pub fn slab_size(mut self, bytes: usize) -> Self {
        self.slab_size = bytes;
        self
    }

    /// Entries to size the shard tables for up front (no growth until then).
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }

    /// Keeps only these bits of long keys' hashes: for tests that need colliding keys.
    #[doc(hidden)]
    pub fn hash_mask(mut self, mask: u64) -> Self {
        self.hash_mask = mask;
        self
    }

    /// The map's hash seed, stored in its header: random per map by default. A fixed seed
    /// makes the same operations lay the map out the same way (reproducible files, for
    /// tests and fuzzing); keys chosen to collide under it degrade its shards.
    ///
    /// ```
    /// use offheap::{SharedMap, SharedMapOptions};
    /// let m = SharedMap::anonymous_with(&SharedMapOptions::new().seed(7))?;
    /// m.insert(b"k", b"v")?;
    /// # Ok::<(), offheap::Error>(())
    /// ```
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    fn config(&self) -> Result<Config, Error> {
        if !self.shards.is_power_of_two() || self.shards > 1 << 16 {
            return Err(Error::InvalidOptions(
                "shards must be a power of two up to 65536",
            ));
        }
        crate::bytes_map::arena_config(self.slab_size, 16, 1.5, ReleasePolicy::Never)
    }
}

/// A byte-string hash map shared by the threads of a process and by processes that open
/// the same file: `BytesMap` semantics through `&self`.
///
/// The map is split into shards (256 by default), each with its own process-shared
/// reader-writer lock, open-addressing table of 16-byte slots and slab arena; the shard is
/// chosen by hash bits `32..40` (and up) of the key's xxh3 hash. Readers take the shard's
/// read lock (they do not block each other). Locks record their owner (pid and process start time); a lock whose owner
/// died is taken over by the next process, which first repairs the shard from its intent
/// record.
///
/// ```
/// use offheap::{SharedMap, SharedMapOptions};
/// let m = SharedMap::anonymous_with(&SharedMapOptions::new().shards(16))?;
/// std::thread::scope(|s| {
///     for t in 0..4u32 {
///         let m = &m;
///         s.spawn(move || {
///             for i in 0..100u32 {
///                 m.insert(&(t * 100 + i).to_le_bytes(), &i.to_le_bytes()).unwrap();
///             }
///         });
///     }
/// });
/// assert_eq!(m.len(), 400);
/// assert_eq!(m.get(&105u32.to_le_bytes())?, Some(5u32.to_le_bytes().to_vec()));
/// # Ok::<(), offheap::Error>(())
/// ```
pub struct SharedMap {
    region: Arc<SharedRegion>,
    shards: *const Shard,
    nshards: usize,
    seed: u64,
    mask: u64,
    me: u64,
    arenas: Box<[Mutex<Option<Arena<ShardSource>>>]>,
    recovered: AtomicU64,
}

// SAFETY: shared memory is touched only through atomics or under the shard's process-shared
// lock (which excludes every other thread and process); the region is behind
// `SharedRegion` (Sync by its own argument), each arena behind a mutex; the raw pointers
// point into a mapping that never moves while the map lives.
unsafe impl Send for SharedMap {}
// SAFETY: as above.
unsafe impl Sync for SharedMap {}

impl std::fmt::Debug for SharedMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMap")
            .field("shards", &self.nshards)
            .field("len", &self.len())
            .finish()
    }
}

/// The write lock, released when dropped.
struct WriteGuard<'a>(&'a Shard);

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        lock::write_unlock(&self.0.state);
    }
}

struct ReadGuard<'a>(&'a Shard, usize);
impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        lock::read_unlock(&self.0.readers, self.1);
    }
}

enum Found {
    /// Slot index, the slot's value word (for a long key: its record's word), and for a
    /// long key the record's value word.
    At(usize, u64, Option<u64>),
    Vacant(usize),
}

/// Everything a shard operation needs, with the shard's write or read lock held.
struct Ctx<'a> {
    map: &'a SharedMap,
    shard: &'a Shard,
    idx: usize,
    /// The shard's arena, locked (process-locally) only when an operation needs it.
    arena: std::cell::OnceCell<MutexGuard<'a, Option<Arena<ShardSource>>>>,
}

/// Adds `d` (wrapping) to a counter that only the write lock's holder changes: a load and a
/// store, not a locked read-modify-write.
#[inline]
fn bump(c: &AtomicU64, d: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(d), Ordering::Relaxed);
}

/// The home slot of key word `kw` in a table of `cap` slots: a multiplicative mix, then a
/// range reduction by multiplication (any capacity, no division).
#[inline]
fn home(kw: u64, cap: usize) -> usize {
    let m = kw.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((u128::from(m) * cap as u128) >> 64) as usize
}

/// How many shards' runs of a batch are prefetched ahead of the one being worked on.
const AHEAD: usize = 2;

/// A batch of keys grouped by shard: (key word, index in the batch) pairs, shard by shard.
struct Plan {
    order: Vec<(u64, u32)>,
    /// Shard, and its run's range in `order`, in shard order; only shards with keys.
    runs: Vec<(usize, u32, u32)>,
    write: bool,
}

impl Plan {
    /// Calls `f(s, run)` for every shard `s` with keys in the batch, with the slots of the
    /// next `AHEAD` such shards prefetched meanwhile. The shards go in order, except that
    /// one whose write lock is held by someone else (a writer of another thread or
    /// process, perhaps in the middle of a table rebuild) when its turn comes is put off
    /// until the others are done, instead of waited for. Each shard's keys keep their
    /// order, and different shards hold different keys, so the outcome is that of a loop
    /// over the keys in order.
    fn run(
        &self,
        m: &SharedMap,
        mut f: impl FnMut(usize, &[(u64, u32)]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let runs = self
            .runs
            .iter()
            .map(|&(s, a, b)| (s, &self.order[a as usize..b as usize]));
        let mut ahead = runs.clone();
        for (t, next) in ahead.by_ref().take(AHEAD) {
            m.prefetch_run(t, next, self.write);
        }
        let mut later = Vec::new();
        for (s, run) in runs {
            if let Some((t, next)) = ahead.next() {
                m.prefetch_run(t, next, self.write);
            }
            // A hint only (the lock is taken as always): a holder seen now is likely to
            // be gone by the end of the pass.
            if m.shard(s).state.load(Ordering::Relaxed) != 0 {
                later.push((s, run));
                continue;
            }
            f(s, run)?;
        }
        for (s, run) in later {
            m.prefetch_run(s, run, self.write);
            f(s, run)?;
        }
        Ok(())
    }
}

/// A hint to bring the line at `p` into the cache (for writing when `write`); no-op where
/// there is no such instruction, and under miri.
#[inline(always)]
fn prefetch(p: *const u8, write: bool) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: a prefetch is a hint: it never faults and reads nothing, whatever the address.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
        if write {
            _mm_prefetch::<_MM_HINT_ET0>(p.cast());
        } else {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = (p, write);
}

/// The bytes of an inline word and their length (`None` if it is not an inline word).
#[inline]
fn unpack7(w: u64) -> Option<([u8; 8], usize)> {
    let n = (w >> 56) as usize;
    (n <= INLINE_MAX).then(|| (w.to_le_bytes(), n))
}

/// The capacity for `len` entries: the smallest step of the shard's capacity ladder that
/// holds them below `MAX_LOAD` with room for an eighth more entries, and for at least
/// `MIN_ROOM` more (small tables would otherwise be rebuilt, and a region block allocated
/// and freed, every few inserts).
///
/// Each shard's ladder is `MIN_CAP * G^(k + phase)` (`G = MAX_LOAD / FILL`, `k` a whole
/// number) with its own `phase` in `0..1` (shard index / shard count), so that a table that
/// fills up to `MAX_LOAD` grows by exactly `G` and the shards, which fill up at the same
/// pace, do not all grow at the same moments: at any number of entries their loads are
/// spread evenly over `FILL..MAX_LOAD`, and the map's memory per entry is the average over
/// a growth cycle, not its worst point.
fn cap_for(len: u64, phase: f64) -> u64 {
    // Room for an eighth more (a table that reached `MAX_LOAD` thus goes one step up, to
    // `FILL`; one that reached it through tombstones is rebuilt at its size if that
    // leaves the room), and at least `MIN_ROOM`.
    let room = (len / 8).max(MIN_ROOM);
    let need = (len.saturating_add(room).saturating_mul(1000) / MAX_LOAD + 1).max(MIN_CAP);
    let g = MAX_LOAD as f64 / FILL as f64;
    let k = ((need as f64 / MIN_CAP as f64).ln() / g.ln() - phase)
        .ceil()
        .max(0.0);
    let cap = (MIN_CAP as f64 * g.powf(k + phase)).ceil() as u64;
    // Rounding can only make it smaller than `need` by a hair: then `need` it is.
    cap.max(need)
}

/// Shard `i`'s ladder phase (see [`cap_for`]).
fn phase(i: usize, n: usize) -> f64 {
    i as f64 / n as f64
}

fn table_desc(off: u64, cap: u64) -> u64 {
    (off / 64) | (cap << CAP_SHIFT)
}

fn desc_parts(d: u64) -> (u64, u64) {
    ((d & ((1 << CAP_SHIFT) - 1)) * 64, d >> CAP_SHIFT)
}

impl SharedMap {
    // ------------------------------------------------------------------ construction

    /// A map in anonymous memory, shared by the threads of this process.
    pub fn anonymous() -> Result<Self, Error> {
        Self::anonymous_with(&SharedMapOptions::default())
    }

    /// A map in anonymous memory, shared by the threads of this process.
    pub fn anonymous_with(opts: &SharedMapOptions) -> Result<Self, Error> {
        opts.config()?;
        Self::create_in(Region::anonymous_with(&opts.region)?, opts)
    }

    /// Creates a map file at `path` (an error if it exists), with default options.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::create_with(path, &SharedMapOptions::default())
    }

    /// Creates a map file at `path` (an error if it exists).
    pub fn create_with(path: impl AsRef<Path>, opts: &SharedMapOptions) -> Result<Self, Error> {
        opts.config()?;
        Self::create_in(Region::create(path, &opts.region)?, opts)
    }

    /// Opens the map file at `path` (possibly in use by other processes): O(shards).
    /// A file of another format version is refused with `Error::Corrupt`.
    ///
    /// A file whose region allocator was torn by a process killed inside it, with no
    /// process left to repair it, opens too: the first use of the allocator takes the
    /// map's allocator lock and runs `Region::recover` (see
    /// `offheap_mmap::RegionOptions::open_torn`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_in(Region::open_with(
            path,
            &RegionOptions::new().open_torn(true).hold_alone(true),
        )?)
    }

    /// Opens the map at `path`, or creates it (with default options) if the file does not
    /// exist. Two processes racing to create the same file: one creates it, the other
    /// gets `Region(Io(AlreadyExists))` from create or `NotFound` if it opens the file
    /// before the creator has finished; retrying then succeeds.
    pub fn open_or_create(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_or_create_with(path, &SharedMapOptions::default())
    }

    /// Opens the map at `path`, or creates it with `opts`.
    pub fn open_or_create_with(
        path: impl AsRef<Path>,
        opts: &SharedMapOptions,
    ) -> Result<Self, Error> {
        let path = path.as_ref();
        if path.exists() {
            Self::open(path)
        } else {
            Self::create_with(path, opts)
        }
    }

    fn create_in(region: Region, opts: &SharedMapOptions) -> Result<Self, Error> {
        let config = opts.config()?;
        if region.root(ROOT).is_some() {
            return Err(Error::AlreadyExists);
        }
        let me = lock::checked_owner_id().map_err(|e| Error::Region(e.into()))?;
        let r = Arc::new(SharedRegion::new(region, me));
        let n = opts.shards;
        let hoff = r.alloc(std::mem::size_of::<MapHeader>() as u64, 128)?;
        let soff = r.alloc((n * std::mem::size_of::<Shard>()) as u64, 128)?;
        let per = opts.capacity.div_ceil(n) as u64;
        let per_cap = |i: usize| {
            if per == 0 {
                MIN_CAP
            } else {
                cap_for(per, phase(i, n))
            }
        };
        if per_cap(n - 1) > MAX_CAP || per_cap(0) > MAX_CAP {
            return Err(Error::InvalidOptions(
                "capacity: a shard holds at most 2^28 slots (use more shards)",
            ));
        }
        let hp = r
            .ptr(hoff, std::mem::size_of::<MapHeader>() as u64)
            .ok_or(Error::Corrupt("header"))?;
        let sp = r
            .ptr(soff, (n * std::mem::size_of::<Shard>()) as u64)
            .ok_or(Error::Corrupt("shards"))?;
        // SAFETY: fresh blocks of the right sizes, aligned to 128; zero is a valid state for
        // every field (atomics and integers); nobody else knows these blocks yet.
        unsafe {
            std::ptr::write_bytes(hp, 0, std::mem::size_of::<MapHeader>());
            std::ptr::write_bytes(sp, 0, n * std::mem::size_of::<Shard>());
        }
        let hdr = hp as *mut MapHeader;
        let shards = sp as *const Shard;
        let mut arenas = Vec::with_capacity(n);
        for i in 0..n {
            // SAFETY: `i < n`, inside the shard array.
            let sh = unsafe { &*shards.add(i) };
            let cap = per_cap(i);
            let t = new_table(&r, cap)?;
            sh.table.store(table_desc(t, cap), Ordering::Relaxed);
            let arena = match opts.seed {
                // A tag per shard: a handle of one shard's arena fails another's check.
                Some(s) => {
                    Arena::create_in_tagged(ShardSource(r.clone()), config, s as u32 ^ i as u32)
                }
                None => Arena::create_in(ShardSource(r.clone()), config),
            }?;
            sh.arena_root.store(arena.root(), Ordering::Relaxed);
            arenas.push(Mutex::new(Some(arena)));
        }
        // SAFETY: `hdr` is the fresh header block.
        unsafe {
            let h = &mut *hdr;
            h.magic = MAGIC;
            h.version = VERSION;
            h.nshards = n as u64;
            h.seed = opts.seed.unwrap_or_else(offheap_swiss::random_seed);
            h.hash_mask = opts.hash_mask;
            h.shards_off = soff;
            h.check = h.checksum();
        }
        fence(Ordering::Release);
        r.set_alloc_lock(hdr as *mut LockWords);
        r.lock()
            .set_root(ROOT, Some(Offset::new(hoff).ok_or(Error::Corrupt("zero"))?))?;
        // SAFETY: initialised above.
        let (seed, mask) = unsafe { ((*hdr).seed, (*hdr).hash_mask) };
        Ok(SharedMap {
            region: r,
            shards,
            nshards: n,
            seed,
            mask,
            me,
            arenas: arenas.into_boxed_slice(),
            recovered: AtomicU64::new(0),
        })
    }

    fn open_in(region: Region) -> Result<Self, Error> {
        let hoff = region.root(ROOT).ok_or(Error::NotFound)?.get();
        let me = lock::checked_owner_id().map_err(|e| Error::Region(e.into()))?;
        let r = Arc::new(SharedRegion::new(region, me));
        if hoff % 128 != 0 {
            return Err(Error::Corrupt("header offset misaligned"));
        }
        let hp = r
            .ptr(hoff, std::mem::size_of::<MapHeader>() as u64)
            .ok_or(Error::Corrupt("header offset"))?;
        let hdr = hp as *const MapHeader;
        // SAFETY: inside the mapping, aligned; plain integers and atomics.
        let h = unsafe { &*hdr };
        if h.magic != MAGIC {
            return Err(Error::Corrupt("bad magic"));
        }
        if h.version != VERSION {
            return Err(Error::Corrupt("unsupported SharedMap format version"));
        }
        if h.check != h.checksum() {
            return Err(Error::Corrupt("header checksum"));
        }
        let n = h.nshards as usize;
        if !n.is_power_of_two() || n > 1 << 16 || h.shards_off % 128 != 0 {
            return Err(Error::Corrupt("shard count or offset"));
        }
        let sp = r
            .ptr(h.shards_off, (n * std::mem::size_of::<Shard>()) as u64)
            .ok_or(Error::Corrupt("shard array outside the region"))?;
        r.set_alloc_lock(hdr as *mut LockWords);
        let arenas = (0..n).map(|_| Mutex::new(None)).collect();
        let map = SharedMap {
            region: r,
            shards: sp as *const Shard,
            nshards: n,
            seed: h.seed,
            mask: h.hash_mask,
            me,
            arenas,
            recovered: AtomicU64::new(0),
        };
        // A separate statement, so that the region's mutex is not held through the sweep.
        let alone = map.region.lock().try_alone();
        if alone.is_some() {
            map.clear_stale_owners()?;
        }
        drop(alone);
        Ok(map)
    }

    /// Takes over every lock whose words name a process, as from a dead one, and repairs
    /// what such a writer may have left half done; called by an open that has the file
    /// alone ([`Region::try_alone`]), so no process that the words name is using the file.
    /// Such words come from a copy of a file taken while processes held its locks (they
    /// name those processes, which may live on, this one included) and from hostile files:
    /// `owner_is_dead` calls their live owners alive, and without this sweep every
    /// operation on their shards waited for those processes to end. O(shards); a lock
    /// that nobody holds costs its eight loads.
    fn clear_stale_owners(&self) -> Result<(), Error> {
        self.region.clear_stale_owners()?;
        for i in 0..self.nshards {
            let shard = self.shard(i);
            if lock::is_held(&shard.state, &shard.readers) {
                self.write_as(
                    i,
                    |s| lock::seize(&s.state, &s.readers, self.me),
                    |_| Ok(()),
                )?;
            }
        }
        Ok(())
    }

    /// Writes every change to the backing file (`msync`); a no-op for anonymous maps.
    pub fn flush(&self) -> Result<(), Error> {
        Ok(self.region.lock().flush()?)
    }

    /// Statistics of the region (size of the file, bytes in use, ...).
    pub fn region_stats(&self) -> offheap_mmap::RegionStats {
        self.region.lock().stats()
    }

    /// How many times this handle repaired a shard: a lock taken over from a dead owner,
    /// or an operation left unfinished (by a dead process, or by an error) completed or
    /// rolled back.
    pub fn recoveries(&self) -> u64 {
        self.recovered.load(Ordering::Relaxed)
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.nshards
    }

    /// Number of entries: the sum of the shards' counts, each read without its lock (exact
    /// when no write is in progress).
    pub fn len(&self) -> usize {
        // Saturating: the counters come from the file, and a corrupt one must not overflow
        // (`check` reports it).
        (0..self.nshards)
            .map(|i| self.shard(i).len.load(Ordering::Relaxed) as usize)
            .fold(0, usize::saturating_add)
    }

    /// `true` if [`len`](Self::len) is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots in all shard tables (live entries, tombstones and empty slots): the load is
    /// `len() / capacity()`. Read without locks.
    pub fn capacity(&self) -> usize {
        (0..self.nshards)
            .map(|i| desc_parts(self.shard(i).table.load(Ordering::Relaxed)).1 as usize)
            .fold(0, usize::saturating_add)
    }

    fn shard(&self, i: usize) -> &Shard {
        // SAFETY: `i < nshards`; the shard array lies inside the mapping.
        unsafe { &*self.shards.add(i) }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        xxh3_64_with_seed(key, self.seed)
    }

    fn key_word(&self, key: &[u8], h: u64) -> u64 {
        if key.len() <= INLINE_MAX {
            pack7(key)
        } else {
            (h & self.mask) | LONG_KEY
        }
    }

    fn shard_of(&self, h: u64) -> usize {
        let bits = (h >> 32) ^ (h >> 48 << 8);
        bits as usize & (self.nshards - 1)
    }

    /// The slots of the table that descriptor `d` names, if it lies inside the mapping.
    fn slots(&self, d: u64) -> Option<&[Slot]> {
        let (off, cap) = desc_parts(d);
        if !(MIN_CAP..=MAX_CAP).contains(&cap) {
            return None;
        }
        let p = self.region.ptr(off, cap * SLOT)?;
        // SAFETY: `cap` slots inside the mapping (checked just above), aligned to 64 (the
        // offset is a multiple of 64 and the mapping page-aligned); slots are atomics, so
        // shared references are sound even while a writer stores to them.
        Some(unsafe { std::slice::from_raw_parts(p as *const Slot, cap as usize) })
    }

    // ------------------------------------------------------------------ locking

    fn ctx<'a>(&'a self, shard: &'a Shard, i: usize) -> Ctx<'a> {
        Ctx {
            map: self,
            shard,
            idx: i,
            arena: std::cell::OnceCell::new(),
        }
    }

    fn write<R>(
        &self,
        i: usize,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let me = self.me;
        self.write_as(
            i,
            |s| lock::write_lock(&s.state, &s.readers, me, lock::owner_is_dead),
            f,
        )
    }

    /// [`write`](Self::write), with the shard's lock taken by `take`.
    fn write_as<R>(
        &self,
        i: usize,
        take: impl FnOnce(&Shard) -> Acquired,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let shard = self.shard(i);
        let how = take(shard);
        let _g = WriteGuard(shard);
        let mut c = self.ctx(shard, i);
        if how == Acquired::Recovered || shard.pending_op() != OP_NONE {
            self.recovered.fetch_add(1, Ordering::Relaxed);
            c.recover()?;
        }
        f(&mut c)
    }

    fn read<R>(
        &self,
        i: usize,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let shard = self.shard(i);
        let Ok(slot) = lock::read_lock(
            &shard.state,
            &shard.readers,
            self.me,
            lock::thread_hint(),
            lock::owner_is_dead,
        ) else {
            // The writer died holding the lock: the write path recovers the shard.
            return self.write(i, f);
        };
        let _g = ReadGuard(shard, slot);
        if shard.pending_op() != OP_NONE {
            // A writer died mid-operation and nobody has repaired the shard yet: take the
            // write lock (which repairs it) and read under it.
            drop(_g);
            return self.write(i, f);
        }
        let mut c = self.ctx(shard, i);
        f(&mut c)
    }

    // ------------------------------------------------------------------ operations

    /// Calls `f` with the value of `key`, without copying it when it is in one chunk (a
    /// value longer than the slab size is gathered into a buffer first; an inline value of
    /// at most 7 bytes is a copy). `f` runs under the shard's read lock: keep it short, and
    /// do not call back into the map from it (a write to the same shard would wait for this
    /// very read lock forever).
    pub fn get_with<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, Error> {
        let h = self.hash(key);
        let kw = self.key_word(key, h);
        self.read(self.shard_of(h), |c| c.lookup(kw, key, f))
    }

    /// A copy of the value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.get_with(key, <[u8]>::to_vec)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool, Error> {
        Ok(self.get_with(key, |_| ())?.is_some())
    }

    /// Inserts or replaces (upsert); returns the old value.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.upsert(key, value, true).map(|(_, v)| v)
    }

    /// Inserts or replaces (upsert); returns whether a value was replaced.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<bool, Error> {
        self.upsert(key, value, false).map(|(b, _)| b)
    }

    /// Removes `key`; returns its value.
    pub fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.erase(key, true).map(|(_, v)| v)
    }

    /// Removes `key`; returns whether it was present.
    pub fn delete(&self, key: &[u8]) -> Result<bool, Error> {
        self.erase(key, false).map(|(b, _)| b)
    }

    fn upsert(
        &self,
        key: &[u8],
        value: &[u8],
        want: bool,
    ) -> Result<(bool, Option<Vec<u8>>), Error> {
        check_lens(key, value)?;
        let h = self.hash(key);
        let kw = self.key_word(key, h);
        self.write(self.shard_of(h), |c| c.upsert(kw, key, value, want))
    }

    fn erase(&self, key: &[u8], want: bool) -> Result<(bool, Option<Vec<u8>>), Error> {
        let h = self.hash(key);
        let kw = self.key_word(key, h);
        self.write(self.shard_of(h), |c| c.erase(kw, key, want))
    }

    // ------------------------------------------------------------------ batches

    /// Looks up every key of `keys` and calls `f(i, value)` once for each, where `i` is the
    /// key's index in `keys` and `value` is `None` when it is absent, with the same rules as
    /// [`get_with`](Self::get_with): `f` runs under a shard's read lock and must not call
    /// back into the map.
    ///
    /// Each lookup is atomic on its own; the batch as a whole is not a snapshot, and the
    /// calls come **in shard order, not in the order of `keys`**. What the batch adds is
    /// speed: the keys are grouped by shard, each shard's lock is taken once for all of its
    /// keys, and the home slots of the next shards' keys are prefetched while this shard's
    /// are looked up, so that cache misses overlap instead of following one another and a
    /// lock's cost is shared by its keys. Batches of a few times the shard count (thousands
    /// of keys with the default 256 shards) give most of the gain.
    ///
    /// ```
    /// # fn main() -> Result<(), offheap::Error> {
    /// let m = offheap::SharedMap::anonymous()?;
    /// m.put_many(&[(b"a", b"1"), (b"b", b"2")])?;
    /// let mut seen = vec![None; 3];
    /// m.get_many_with(&[&b"a"[..], b"x", b"b"], |i, v| seen[i] = Some(v.map(<[u8]>::to_vec)))?;
    /// assert_eq!(seen, [Some(Some(b"1".to_vec())), Some(None), Some(Some(b"2".to_vec()))]);
    /// # Ok(()) }
    /// ```
    pub fn get_many_with<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        mut f: impl FnMut(usize, Option<&[u8]>),
    ) -> Result<(), Error> {
        let plan = self.plan(keys.iter().map(AsRef::as_ref), false)?;
        plan.run(self, |s, run| {
            self.read(s, |c| {
                for &(kw, k) in run {
                    let k = k as usize;
                    if c.lookup(kw, keys[k].as_ref(), |v| f(k, Some(v)))?.is_none() {
                        f(k, None);
                    }
                }
                Ok(())
            })
        })
    }

    /// Inserts or replaces every pair of `pairs` (upserts, as [`put`](Self::put)); returns
    /// how many replaced a value. Grouped by shard and prefetched as
    /// [`get_many_with`](Self::get_many_with) is: each shard's write lock is taken once for
    /// all of its pairs. Pairs with the same key are applied in their order in `pairs`, so
    /// the last one wins, as in a loop of `put`s.
    ///
    /// Each put is atomic and crash-consistent on its own. A key or value that is too long
    /// fails the batch before anything is written; another error (a full region, a corrupt
    /// shard) leaves the puts of some shards done and others not.
    ///
    /// ```
    /// # fn main() -> Result<(), offheap::Error> {
    /// let m = offheap::SharedMap::anonymous()?;
    /// assert_eq!(m.put_many(&[(b"a", b"1"), (b"b", b"2"), (b"a", b"3")])?, 1);
    /// assert_eq!(m.get(b"a")?.as_deref(), Some(&b"3"[..]));
    /// # Ok(()) }
    /// ```
    pub fn put_many<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        pairs: &[(K, V)],
    ) -> Result<usize, Error> {
        for (k, v) in pairs {
            check_lens(k.as_ref(), v.as_ref())?;
        }
        let plan = self.plan(pairs.iter().map(|(k, _)| k.as_ref()), true)?;
        let mut replaced = 0;
        plan.run(self, |s, run| {
            self.write(s, |c| {
                for &(kw, k) in run {
                    let (key, value) = &pairs[k as usize];
                    let (r, _) = c.upsert(kw, key.as_ref(), value.as_ref(), false)?;
                    replaced += usize::from(r);
                }
                Ok(())
            })
        })?;
        Ok(replaced)
    }

    /// Removes every key of `keys` (as [`delete`](Self::delete)); returns how many were
    /// present. Grouped by shard and prefetched as [`get_many_with`](Self::get_many_with)
    /// is; an error leaves the deletes of some shards done and others not.
    ///
    /// ```
    /// # fn main() -> Result<(), offheap::Error> {
    /// let m = offheap::SharedMap::anonymous()?;
    /// m.put_many(&[(b"a", b"1"), (b"b", b"2")])?;
    /// assert_eq!(m.delete_many(&[&b"a"[..], b"x"])?, 1);
    /// assert_eq!(m.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn delete_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<usize, Error> {
        let plan = self.plan(keys.iter().map(AsRef::as_ref), true)?;
        let mut removed = 0;
        plan.run(self, |s, run| {
            self.write(s, |c| {
                for &(kw, k) in run {
                    let (r, _) = c.erase(kw, keys[k as usize].as_ref(), false)?;
                    removed += usize::from(r);
                }
                Ok(())
            })
        })?;
        Ok(removed)
    }

    /// Hashes a batch of keys and groups them by shard (a stable counting sort, so that the
    /// keys of one shard keep their order).
    fn plan<'k>(
        &self,
        keys: impl ExactSizeIterator<Item = &'k [u8]>,
        write: bool,
    ) -> Result<Plan, Error> {
        let n = keys.len();
        if n > u32::MAX as usize {
            return Err(Error::TooLong(n));
        }
        let keyed: Vec<(u32, u64)> = keys
            .map(|key| {
                let h = self.hash(key);
                (self.shard_of(h) as u32, self.key_word(key, h))
            })
            .collect();
        let mut order = Vec::with_capacity(n);
        let mut runs = Vec::new();
        if self.nshards <= 4 * n {
            // A counting sort: O(n + shards).
            let mut count = vec![0u32; self.nshards + 1];
            for &(s, _) in &keyed {
                count[s as usize + 1] += 1;
            }
            for s in 0..self.nshards {
                count[s + 1] += count[s];
                if count[s + 1] > count[s] {
                    runs.push((s, count[s], count[s + 1]));
                }
            }
            // `count[s]..count[s + 1]` is shard s's run; fill it in key order.
            order.resize(n, (0u64, 0u32));
            for (k, &(s, kw)) in keyed.iter().enumerate() {
                let at = &mut count[s as usize];
                order[*at as usize] = (kw, k as u32);
                *at += 1;
            }
        } else {
            // Few keys and many shards: a stable sort, O(n log n), not O(shards).
            let mut idx: Vec<u32> = (0..n as u32).collect();
            idx.sort_by_key(|&k| keyed[k as usize].0);
            for (at, &k) in idx.iter().enumerate() {
                let s = keyed[k as usize].0 as usize;
                match runs.last_mut() {
                    Some((last, _, end)) if *last == s => *end += 1,
                    _ => runs.push((s, at as u32, at as u32 + 1)),
                }
                order.push((keyed[k as usize].1, k));
            }
        }
        Ok(Plan { order, runs, write })
    }

    /// Prefetches the home slots of `run`'s keys in shard `s`'s current table (a hint: the
    /// table may be replaced before the shard's turn comes, and then the lookups read the
    /// new one under the lock as always; a prefetch never faults).
    fn prefetch_run(&self, s: usize, run: &[(u64, u32)], write: bool) {
        let shard = self.shard(s);
        prefetch(std::ptr::from_ref(shard).cast(), write);
        let (off, cap) = desc_parts(shard.table.load(Ordering::Relaxed));
        if let Some(p) = self.region.ptr(off, cap * SLOT) {
            // Probes are linear: at the tables' loads (0.75 to 0.9) a hit reads about 3
            // slots and an insert about 20, so the home slot's next line is wanted too
            // (measured: one line more made batched puts and updates about 8 % faster;
            // three more made updates slower).
            for &(kw, _) in run {
                let at = p.wrapping_add(home(kw, cap as usize) * SLOT as usize);
                prefetch(at, write);
                prefetch(at.wrapping_add(64), write);
            }
        }
    }

    /// Calls `f` with every pair, one shard at a time under its read lock (the pairs of a
    /// shard are a consistent snapshot; the map as a whole is not, while others write).
    /// As for [`get_with`](Self::get_with), `f` must not call back into the map.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) -> Result<(), Error> {
        for i in 0..self.nshards {
            self.read(i, |c| c.for_each(&mut f))?;
        }
        Ok(())
    }

    /// All pairs (copies), one shard at a time (see [`for_each`](Self::for_each)).
    #[allow(clippy::type_complexity)]
    pub fn to_vec(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
        // `len` sums the shards' counters, which come from the file: as a capacity it is
        // capped by what the mapping can hold (every pair takes at least an 8-byte table
        // word), so a corrupt counter cannot ask for more memory than there are pairs (the
        // fuzz target `sharedmap_file`: an allocation of 2^40 bytes, an abort).
        let cap = self.len().min((self.region.view_len() / 8) as usize);
        let mut v = Vec::with_capacity(cap);
        self.for_each(|k, val| v.push((k.to_vec(), val.to_vec())))?;
        Ok(v)
    }

    /// Checks every shard (under its read lock: table counts, load, where each entry is,
    /// arena) and the region; returns the first inconsistency. Each entry's key is read and
    /// hashed: its key word must be its key's, the key must belong to the shard, and the
    /// lookup of the key must reach its slot first (no duplicate key, no empty slot before
    /// it on the probe). The arena's chunks in use must be exactly those the table names.
    /// O(entries + bytes stored).
    pub fn check(&self) -> Result<(), Error> {
        for i in 0..self.nshards {
            self.read(i, |c| c.check())?;
        }
        self.region.check()
    }

    /// Region blocks that nothing of the map names: the region's allocations minus the
    /// map's header and shard array, each shard's slot table, and the blocks each shard's
    /// arena holds ([`Arena::blocks_held`](offheap_slab::Arena::blocks_held)): what a
    /// process killed at an unlucky instruction would leave behind if a recovery missed it
    /// (the SIGKILL tests require 0 after every kill; docs/concurrency.md). Each shard is
    /// counted under its read lock, which repairs a shard a dead writer left first; the
    /// result is exact only while no other process writes to the map.
    ///
    /// ```
    /// let m = offheap::SharedMap::anonymous()?;
    /// m.put(b"key", b"value")?;
    /// assert_eq!(m.unnamed_blocks()?, 0);
    /// # Ok::<(), offheap::Error>(())
    /// ```
    pub fn unnamed_blocks(&self) -> Result<u64, Error> {
        let mut named = 2u64;
        for i in 0..self.nshards {
            named += self.read(i, |c| Ok(c.arena()?.blocks_held()? as u64 + 1))?;
        }
        let allocations = self.region.allocations()?;
        Ok(allocations.saturating_sub(named))
    }
}

/// Allocates a table of `cap` slots, all EMPTY; returns its offset.
fn new_table(r: &SharedRegion, cap: u64) -> Result<u64, Error> {
    let t = r.alloc(cap * SLOT, 64)?;
    init_table(r, t, cap)
}

/// Sets the `cap` slots of the fresh table at `t` to EMPTY; returns `t`.
fn init_table(r: &SharedRegion, t: u64, cap: u64) -> Result<u64, Error> {
    let p = r.ptr(t, cap * SLOT).ok_or(Error::Corrupt("new table"))?;
    // SAFETY: a fresh block of `cap` slots (16 bytes each, aligned to 64) that only this
    // writer (holding the shard's write lock) reaches until the table word publishes it.
    let slots = unsafe { std::slice::from_raw_parts(p as *const Slot, cap as usize) };
    for s in slots {
        s.kw.store(EMPTY, Ordering::Relaxed);
        s.vw.store(NONE_W, Ordering::Relaxed);
    }
    Ok(t)
}

// ---------------------------------------------------------------------- shard operations

fn is_handle(w: u64) -> bool {
    w >> 56 == HANDLE_MARK >> 56
}

fn bits_of(h: Handle) -> [u64; 2] {
    let b = h.to_bits();
    [b as u64, (b >> 64) as u64]
}

fn handle_of(b: [u64; 2]) -> Handle {
    Handle::from_bits(u128::from(b[0]) | u128::from(b[1]) << 64)
}

impl Ctx<'_> {
    fn guard(&self) -> Result<&MutexGuard<'_, Option<Arena<ShardSource>>>, Error> {
        if self.arena.get().is_none() {
            let mut g = self.map.arenas[self.idx]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if g.is_none() {
                let root = self.shard.arena_root.load(Ordering::Relaxed);
                *g = Some(Arena::open_in(ShardSource(self.map.region.clone()), root)?);
            }
            let _ = self.arena.set(g);
        }
        self.arena.get().ok_or_else(|| Error::Corrupt("arena"))
    }

    fn arena(&self) -> Result<&Arena<ShardSource>, Error> {
        self.guard()?
            .as_ref()
            .ok_or_else(|| Error::Corrupt("arena"))
    }

    fn arena_mut(&mut self) -> Result<&mut Arena<ShardSource>, Error> {
        self.guard()?;
        self.arena
            .get_mut()
            .and_then(|g| g.as_mut())
            .ok_or_else(|| Error::Corrupt("arena"))
    }

    /// Writes the shard's intent record (then a release fence: the fields written by one
    /// call reach memory before those of the next).
    fn set_intent(&self, f: impl FnOnce(&mut Intent)) {
        // SAFETY: the intent lies in this shard, whose write lock the caller holds (no other
        // thread or process reads or writes it meanwhile); it is plain integers.
        f(unsafe { &mut *self.shard.intent.get() });
        fence(Ordering::Release);
    }

    /// A copy of the shard's intent record.
    fn get_intent(&self) -> Intent {
        // SAFETY: as in `set_intent` (a read lock holder only reads `op`, via `read`).
        unsafe { *self.shard.intent.get() }
    }

    /// The capacity of this shard's table for `len` entries (see [`cap_for`]).
    fn cap_for(&self, len: u64) -> u64 {
        cap_for(len, phase(self.idx, self.map.nshards))
    }

    /// The shard's slots (the caller holds the shard's read or write lock).
    fn table(&self) -> Result<&[Slot], Error> {
        self.map
            .slots(self.shard.table.load(Ordering::Relaxed))
            .ok_or_else(|| Error::Corrupt("shard table outside the region"))
    }

    /// The value word naming the blob whose first chunk is `h`.
    fn blob_word(&self, h: Handle) -> Result<u64, Error> {
        let p = self.arena()?.bytes(h)?.as_ptr();
        let off = self.map.region.offset_of(p);
        if off > LOW56 {
            return Err(Error::Corrupt("blob offset"));
        }
        Ok(HANDLE_MARK | off)
    }

    /// The arena handle of the blob that value word `w` names: read from the blob's first
    /// 16 bytes and checked to name that very chunk.
    fn word_handle(&self, w: u64) -> Result<Handle, Error> {
        if !is_handle(w) {
            return Err(Error::Corrupt("expected a handle word"));
        }
        let off = w & LOW56;
        let p = self
            .map
            .region
            .ptr(off, 16)
            .ok_or(Error::Corrupt("handle word outside the region"))?;
        // SAFETY: 16 bytes inside the mapping (checked above); under the shard's lock, the
        // live blob that the word names is not written meanwhile.
        let bits = u128::from_le_bytes(unsafe { std::ptr::read_unaligned(p as *const [u8; 16]) });
        let h = Handle::from_bits(bits);
        if !std::ptr::eq(self.arena()?.bytes(h)?.as_ptr(), p) {
            return Err(Error::Corrupt("handle word does not name its chunk"));
        }
        Ok(h)
    }

    /// The handle bits of the blob that `w` names, or zeros for an inline word.
    fn word_bits(&self, w: u64) -> Result<[u64; 2], Error> {
        if is_handle(w) {
            Ok(bits_of(self.word_handle(w)?))
        } else {
            Ok([0; 2])
        }
    }

    fn with_word<R>(&self, w: u64, f: impl FnOnce(&[u8]) -> R) -> Result<R, Error> {
        if let Some((b, n)) = unpack7(w) {
            Ok(f(&b[..n]))
        } else {
            let h = self.word_handle(w)?;
            blob_with(self.arena()?, h, BLOB_HDR, f)
        }
    }

    /// Releases the blob `bits` names (a stale handle, already freed before a crash, is
    /// refused by the arena's generation check).
    fn free_bits(&mut self, bits: [u64; 2]) {
        if let Ok(a) = self.arena_mut() {
            let _ = a.dec_ref(handle_of(bits));
        }
    }

    fn rec_value(&self, rec: u64) -> Result<u64, Error> {
        let h = self.word_handle(rec)?;
        let b = self.arena()?.bytes(h)?;
        let s = b
            .get(BLOB_HDR..BLOB_HDR + REC_HDR)
            .ok_or(Error::Corrupt("record shorter than its header"))?;
        Ok(u64::from_le_bytes(s.try_into().unwrap_or([0xFF; 8])))
    }

    /// The key bytes of the record that word `rec` names.
    fn rec_key(&self, rec: u64) -> Result<Vec<u8>, Error> {
        let mut key = Vec::new();
        blob_pieces(self.arena()?, self.word_handle(rec)?, REC_HDR, |p| {
            key.extend_from_slice(p);
            true
        })?;
        Ok(key)
    }

    fn rec_key_eq(&self, rec: u64, key: &[u8]) -> Result<bool, Error> {
        let h = self.word_handle(rec)?;
        let mut pos = 0usize;
        let mut eq = true;
        let total = blob_pieces(self.arena()?, h, REC_HDR, |p| {
            let end = pos + p.len();
            if end > key.len() || key[pos..end] != *p {
                eq = false;
                return false;
            }
            pos = end;
            true
        })?;
        Ok(eq && total == REC_HDR + key.len() && pos == key.len())
    }

    /// Calls `f` with the value of `key` (key word `kw`) if it is present.
    fn lookup<R>(
        &self,
        kw: u64,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, Error> {
        match self.find(kw, key)? {
            Found::At(_, vw, rec) => self.with_word(rec.unwrap_or(vw), f).map(Some),
            Found::Vacant(_) => Ok(None),
        }
    }

    fn find(&self, kw: u64, key: &[u8]) -> Result<Found, Error> {
        let slots = self.table()?;
        let cap = slots.len();
        let mut i = home(kw, cap);
        let mut vacant = None;
        for _ in 0..cap {
            let s = &slots[i];
            let k = s.kw.load(Ordering::Relaxed);
            if k == EMPTY {
                return Ok(Found::Vacant(vacant.unwrap_or(i)));
            }
            if k == TOMB {
                vacant.get_or_insert(i);
            } else if k == kw {
                let vw = s.vw.load(Ordering::Relaxed);
                if kw & LONG_KEY == 0 {
                    return Ok(Found::At(i, vw, None));
                }
                if self.rec_key_eq(vw, key)? {
                    let v = self.rec_value(vw)?;
                    return Ok(Found::At(i, vw, Some(v)));
                }
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
        vacant
            .map(Found::Vacant)
            .ok_or_else(|| Error::Corrupt("table has no empty slot"))
    }

    /// Fills the intent's fields for an update or delete of the entry found at slot `i`
    /// (slot value word `slotw`, and for a long key its record's value word `rec`); returns
    /// the old value's handle bits.
    fn record_old(
        &self,
        i: usize,
        kw: u64,
        slotw: u64,
        rec: Option<u64>,
        step: u64,
    ) -> Result<[u64; 2], Error> {
        let old = rec.unwrap_or(slotw);
        let old_h = self.word_bits(old)?;
        let rec_h = if rec.is_some() {
            self.word_bits(slotw)?
        } else {
            [0; 2]
        };
        self.set_intent(|it| {
            it.step = step;
            it.kw = kw;
            it.slot = i as u64;
            it.old = old;
            it.old_h = old_h;
            it.rec = if rec.is_some() { slotw } else { NONE_W };
            it.rec_h = rec_h;
            it.new = NONE_W;
        });
        Ok(old_h)
    }

    /// A value's word and, for a blob, its handle bits.
    fn encode_value(&mut self, v: &[u8]) -> Result<(u64, [u64; 2]), Error> {
        if v.len() <= INLINE_MAX {
            Ok((pack7(v), [0; 2]))
        } else {
            let h = blob_alloc(self.arena_mut()?, &[v])?;
            Ok((self.blob_word(h)?, bits_of(h)))
        }
    }

    fn upsert(
        &mut self,
        kw: u64,
        key: &[u8],
        value: &[u8],
        want: bool,
    ) -> Result<(bool, Option<Vec<u8>>), Error> {
        let mut found = self.find(kw, key)?;
        if let Found::Vacant(i) = found {
            let slots = self.table()?;
            let cap = slots.len() as u64;
            let used = self.shard.used.load(Ordering::Relaxed);
            let onto_tomb = slots[i].kw.load(Ordering::Relaxed) == TOMB;
            // The counters come from the file: saturating, so that a corrupt one makes a
            // rebuild (which counts the table again) rather than an overflow.
            if !onto_tomb && used.saturating_add(1).saturating_mul(1000) > cap * MAX_LOAD {
                let len = self.shard.len.load(Ordering::Relaxed);
                self.rebuild(self.cap_for(len.saturating_add(1)))?;
                found = self.find(kw, key)?;
            }
        }
        let short = kw & LONG_KEY == 0 && value.len() <= INLINE_MAX;
        match found {
            Found::At(i, slotw, rec) => {
                let old = rec.unwrap_or(slotw);
                let out = if want {
                    Some(self.with_word(old, <[u8]>::to_vec)?)
                } else {
                    None
                };
                if short && !is_handle(old) {
                    // Nothing to allocate or free: one store is the whole update.
                    self.table()?[i].vw.store(pack7(value), Ordering::Release);
                    return Ok((true, out));
                }
                let old_h = self.record_old(i, kw, slotw, rec, 0)?;
                // The op last: recovery must never see it with stale fields.
                self.set_intent(|it| it.op = OP_UPDATE);
                let (vw, vh) = self.encode_value(value)?;
                // The handle before the word: recovery frees `new_h` only once `new` is set.
                self.set_intent(|it| it.new_h = vh);
                self.set_intent(|it| it.new = vw);
                self.set_intent(|it| it.step = 1);
                self.apply_update()?;
                self.set_intent(|it| it.step = 2);
                if is_handle(old) {
                    self.free_bits(old_h);
                }
                self.set_intent(|it| it.op = OP_NONE);
                Ok((true, out))
            }
            Found::Vacant(i) => {
                if short {
                    // The value word, then the key word: one store commits the insert.
                    let s = &self.table()?[i];
                    let was_empty = s.kw.load(Ordering::Relaxed) == EMPTY;
                    s.vw.store(pack7(value), Ordering::Relaxed);
                    s.kw.store(kw, Ordering::Release);
                    bump(&self.shard.len, 1);
                    if was_empty {
                        bump(&self.shard.used, 1);
                    }
                    return Ok((false, None));
                }
                self.set_intent(|it| {
                    it.step = 0;
                    it.kw = kw;
                    it.slot = i as u64;
                    it.new = NONE_W;
                    it.rec = NONE_W;
                    it.old = NONE_W;
                });
                self.set_intent(|it| it.op = OP_INSERT);
                let (vw, vh) = self.encode_value(value)?;
                self.set_intent(|it| it.new_h = vh);
                self.set_intent(|it| it.new = vw);
                if kw & LONG_KEY != 0 {
                    let r = blob_alloc(self.arena_mut()?, &[&vw.to_le_bytes(), key])?;
                    let rw = self.blob_word(r)?;
                    self.set_intent(|it| it.rec_h = bits_of(r));
                    self.set_intent(|it| it.rec = rw);
                }
                self.set_intent(|it| it.step = 1);
                self.apply_insert()?;
                self.set_intent(|it| it.op = OP_NONE);
                Ok((false, None))
            }
        }
    }

    /// Step 1 of an insert (idempotent: also the redo on recovery).
    fn apply_insert(&mut self) -> Result<(), Error> {
        let it = self.get_intent();
        let slots = self.table()?;
        let s = slots
            .get(it.slot as usize)
            .ok_or(Error::Corrupt("intent slot"))?;
        let k = s.kw.load(Ordering::Relaxed);
        if k == it.kw {
            return Ok(()); // already committed
        }
        if k != EMPTY && k != TOMB {
            return Err(Error::Corrupt("intent slot is taken"));
        }
        let vw = if it.kw & LONG_KEY != 0 {
            it.rec
        } else {
            it.new
        };
        s.vw.store(vw, Ordering::Relaxed);
        // The commit point: one aligned 8-byte store.
        s.kw.store(it.kw, Ordering::Release);
        bump(&self.shard.len, 1);
        if k == EMPTY {
            bump(&self.shard.used, 1);
        }
        Ok(())
    }

    /// Step 1 of an update (idempotent).
    fn apply_update(&mut self) -> Result<(), Error> {
        let it = self.get_intent();
        if it.rec != NONE_W {
            let h = handle_of(it.rec_h);
            self.arena_mut()?
                .write(h, BLOB_HDR, &it.new.to_le_bytes())?;
        } else {
            let slots = self.table()?;
            slots
                .get(it.slot as usize)
                .ok_or(Error::Corrupt("intent slot"))?
                .vw
                .store(it.new, Ordering::Release);
        }
        Ok(())
    }

    fn erase(&mut self, kw: u64, key: &[u8], want: bool) -> Result<(bool, Option<Vec<u8>>), Error> {
        let Found::At(i, slotw, rec) = self.find(kw, key)? else {
            return Ok((false, None));
        };
        let old = rec.unwrap_or(slotw);
        let out = if want {
            Some(self.with_word(old, <[u8]>::to_vec)?)
        } else {
            None
        };
        if rec.is_none() && !is_handle(old) {
            // Nothing to free: the key word's store is the whole delete.
            self.delete_slot(i)?;
        } else {
            let old_h = self.record_old(i, kw, slotw, rec, 1)?;
            // The op last: recovery must never see it with stale fields.
            self.set_intent(|it| it.op = OP_DELETE);
            self.apply_delete()?;
            self.set_intent(|it| it.step = 2);
            if is_handle(old) {
                self.free_bits(old_h);
            }
            if rec.is_some() {
                let rec_h = self.get_intent().rec_h;
                self.free_bits(rec_h);
            }
            self.set_intent(|it| it.op = OP_NONE);
        }
        let cap = self.table()?.len() as u64;
        let len = self.shard.len.load(Ordering::Relaxed);
        if cap > MIN_CAP && len.saturating_mul(1000) < cap * MIN_LOAD && self.cap_for(len) < cap {
            self.rebuild(self.cap_for(len))?;
        }
        Ok((true, out))
    }

    /// Empties slot `i` (a live entry): TOMB, or EMPTY when the next slot is EMPTY (then
    /// the tombstones just before it end at an EMPTY slot too, and become EMPTY). Every
    /// store leaves a valid table.
    fn delete_slot(&mut self, i: usize) -> Result<(), Error> {
        let slots = self.table()?;
        let cap = slots.len();
        let next = if i + 1 == cap { 0 } else { i + 1 };
        if slots[next].kw.load(Ordering::Relaxed) == EMPTY {
            slots[i].kw.store(EMPTY, Ordering::Release);
            let mut freed = 1u64;
            let mut j = i;
            loop {
                j = if j == 0 { cap - 1 } else { j - 1 };
                if slots[j].kw.load(Ordering::Relaxed) != TOMB {
                    break;
                }
                slots[j].kw.store(EMPTY, Ordering::Release);
                freed += 1;
            }
            bump(&self.shard.used, freed.wrapping_neg());
        } else {
            slots[i].kw.store(TOMB, Ordering::Release);
        }
        bump(&self.shard.len, u64::MAX);
        Ok(())
    }

    /// Step 1 of a delete (idempotent).
    fn apply_delete(&mut self) -> Result<(), Error> {
        let it = self.get_intent();
        let i = it.slot as usize;
        let slots = self.table()?;
        let s = slots.get(i).ok_or(Error::Corrupt("intent slot"))?;
        if s.kw.load(Ordering::Relaxed) != it.kw {
            return Ok(()); // already done
        }
        self.delete_slot(i)
    }

    /// Moves the live entries into a new slot array of `cap` slots (bounded by the shard's
    /// size), then publishes it with one store and frees the old array.
    fn rebuild(&mut self, cap: u64) -> Result<(), Error> {
        let old = self.table()?;
        // The old table must be a live block that holds it: a table word of a corrupt file
        // can name free memory, where the new table could then be allocated, and moving the
        // entries would write over the slots being read (the fuzz target `sharedmap_file`
        // looped forever there).
        let old_desc = self.shard.table.load(Ordering::Relaxed);
        let (old_off, old_cap) = desc_parts(old_desc);
        if !matches!(self.map.region.block_size(old_off)?, Some(n) if n >= old_cap * SLOT) {
            return Err(Error::Corrupt(
                "shard table is not a live block of the region",
            ));
        }
        if cap > MAX_CAP {
            return Err(Error::InvalidOptions(
                "a shard holds at most 2^28 slots: use more shards",
            ));
        }
        // A record left by the last rebuild names the live table: cleared before the op.
        self.shard.fresh_table.store(0, Ordering::Relaxed);
        self.set_intent(|it| {
            it.old_table = old_desc;
            it.new_table = 0;
            it.step = 0;
        });
        // The op last: recovery must never see it with stale fields.
        self.set_intent(|it| it.op = OP_REBUILD);
        let region = &self.map.region;
        // The new table's offset goes into `fresh_table` as it is allocated, so that a kill
        // while its slots are cleared (O(cap) stores) or before the intent names it leaves
        // it to the recovery instead of leaking it.
        let (shards, at) = self.fresh_table_word();
        let t = region.alloc_into(cap * SLOT, 64, shards, at)?;
        let t = init_table(region, t, cap)?;
        let desc = table_desc(t, cap);
        self.set_intent(|it| it.new_table = desc);
        let new = self.map.slots(desc).ok_or(Error::Corrupt("new table"))?;
        let cap = cap as usize;
        let mut n = 0u64;
        for s in old {
            let k = s.kw.load(Ordering::Relaxed);
            if k == EMPTY || k == TOMB {
                continue;
            }
            let mut i = home(k, cap);
            let mut probes = 0;
            while new[i].kw.load(Ordering::Relaxed) != EMPTY {
                i += 1;
                if i == cap {
                    i = 0;
                }
                // A full new table: the capacity asked for came from a `len` below the old
                // table's true count, which only a corrupt file has. Stopped here (the
                // intent's recovery frees the new table) rather than probing forever.
                probes += 1;
                if probes == cap {
                    return Err(Error::Corrupt("shard length below its table's entries"));
                }
            }
            new[i]
                .vw
                .store(s.vw.load(Ordering::Relaxed), Ordering::Relaxed);
            new[i].kw.store(k, Ordering::Relaxed);
            n += 1;
        }
        self.set_intent(|it| it.step = 1);
        self.shard.table.store(desc, Ordering::Release);
        self.shard.used.store(n, Ordering::Relaxed);
        self.set_intent(|it| it.step = 2);
        self.free_old_table(old_desc);
        self.set_intent(|it| it.op = OP_NONE);
        Ok(())
    }

    /// The shard array's block and the byte offset in it of the word at `p`, a word of this
    /// shard: the record place of `Region::alloc_into` and `Region::free_recorded`.
    fn shard_word(&self, p: *const u8) -> (u64, u64) {
        let region = &self.map.region;
        let shards = region.offset_of(self.map.shards.cast());
        (shards, region.offset_of(p) - shards)
    }

    /// The record place of the shard's `fresh_table` word (see [`shard_word`](Self::shard_word)).
    fn fresh_table_word(&self) -> (u64, u64) {
        self.shard_word((&self.shard.fresh_table as *const AtomicU64).cast())
    }

    /// Frees a rebuild's old table (`desc`) with its record in the intent, `old_table`,
    /// which `Region::free_recorded` clears in the store after the free's own (the region's
    /// recovery finishes it if a death falls between the two): so at step 2 a recovery
    /// frees the old table exactly when the intent still names it, never twice, never leaks.
    fn free_old_table(&self, desc: u64) {
        // SAFETY: a field of this shard's intent (only its place is taken).
        let word = unsafe { std::ptr::addr_of!((*self.shard.intent.get()).old_table) };
        let (shards, at) = self.shard_word(word.cast());
        // A table the region does not recognise (only in a corrupt file) is refused and left.
        let _ = self
            .map
            .region
            .free_recorded(desc_parts(desc).0, shards, at);
    }

    /// Repairs the shard after its previous writer died: repairs its arena (the writer may
    /// have died inside an arena call), finishes (redo) or rolls back (undo) the operation
    /// its intent records, frees the arena chunks that nothing references any more, then
    /// recounts the shard.
    fn recover(&mut self) -> Result<(), Error> {
        // The region's allocator first, if its lock's holder died too: its recovery stores
        // the record of a slab or table block whose allocation the death cut short, which
        // the arena's repair reads.
        self.map.region.settle()?;
        // The arena's derived state (free lists, counters) from its truth; this also moves
        // its epoch on, so the cached `Arena` objects of every process drop what they
        // resolved before. It gives back the slab or table block that an arena operation
        // cut short had taken or unnamed (its header records it).
        self.arena_mut()?.repair()?;
        let it = self.get_intent();
        let blob = |w: u64| w != NONE_W && is_handle(w);
        match (it.op, it.step) {
            (OP_NONE, _) => {}
            (OP_INSERT, 0) => {
                // Not committed: roll back what was allocated.
                if blob(it.new) {
                    self.free_bits(it.new_h);
                }
                if it.rec != NONE_W {
                    self.free_bits(it.rec_h);
                }
            }
            (OP_INSERT, _) => self.apply_insert()?,
            (OP_UPDATE, 0) => {
                if blob(it.new) {
                    self.free_bits(it.new_h);
                }
            }
            (OP_UPDATE, s) => {
                if s == 1 {
                    self.apply_update()?;
                }
                if blob(it.old) {
                    self.free_bits(it.old_h);
                }
            }
            (OP_DELETE, s) => {
                if s <= 1 {
                    self.apply_delete()?;
                }
                if blob(it.old) {
                    self.free_bits(it.old_h);
                }
                if it.rec != NONE_W {
                    self.free_bits(it.rec_h);
                }
            }
            (OP_REBUILD, 0) => {
                // The new table, named by the intent, or only by the fresh record (the
                // death came while its slots were cleared; a fresh record that names a table
                // in use is not a new one). The intent's record is cleared first, and the
                // fresh record by the free itself (`Region::free_recorded`): a kill in
                // between leaves the fresh record to the next recovery, and no record
                // outlives the block (by the next recovery it could be another shard's).
                let fresh = self.shard.fresh_table.load(Ordering::Relaxed);
                let in_use = [it.old_table, self.shard.table.load(Ordering::Relaxed)]
                    .map(|d| desc_parts(d).0);
                let new = if it.new_table != 0 {
                    Some(desc_parts(it.new_table).0)
                } else {
                    (fresh != 0 && !in_use.contains(&fresh)).then_some(fresh)
                };
                self.set_intent(|it| it.new_table = 0);
                let (shards, at) = self.fresh_table_word();
                match new {
                    // A table the region does not recognise (only in a corrupt file) is
                    // refused and left.
                    Some(t) => {
                        let _ = self.map.region.free_recorded(t, shards, at);
                    }
                    None => self.shard.fresh_table.store(0, Ordering::Relaxed),
                }
            }
            (OP_REBUILD, 1) => {
                // The new table was complete: publish it (again), then free the old one
                // (step 2 first, as the rebuild does).
                self.shard.table.store(it.new_table, Ordering::Release);
                self.set_intent(|it| it.step = 2);
                self.free_old_table(it.old_table);
            }
            // Step 2: the intent names the old table until it is freed (see
            // `free_old_table`).
            (OP_REBUILD, _) => {
                if it.old_table != 0 {
                    self.free_old_table(it.old_table);
                }
            }
            _ => return Err(Error::Corrupt("unknown intent")),
        }
        self.set_intent(|it| it.op = OP_NONE);
        // Chunks the dead writer allocated or was freeing that no table entry names any more
        // (a blob whose allocation was cut short before the intent recorded it, a free or a
        // chain release cut short) are freed, and refcounts set to the references the table
        // holds.
        let roots = self.arena_roots()?;
        self.arena_mut()?.collect(&roots)?;
        // Recount (O(shard)).
        let (len, used) = self.count()?;
        self.shard.len.store(len, Ordering::Relaxed);
        self.shard.used.store(used, Ordering::Relaxed);
        Ok(())
    }

    /// Every arena reference the shard's table holds, once per reference: the blob of each
    /// value word that names one, and for a long key its record and the record's value blob.
    /// (With no operation in progress, the table holds the only references.)
    fn arena_roots(&self) -> Result<Vec<Handle>, Error> {
        let mut roots = Vec::new();
        for s in self.table()? {
            let k = s.kw.load(Ordering::Relaxed);
            if k == EMPTY || k == TOMB {
                continue;
            }
            let vw = s.vw.load(Ordering::Relaxed);
            let v = if k & LONG_KEY != 0 {
                roots.push(self.word_handle(vw)?);
                self.rec_value(vw)?
            } else {
                vw
            };
            if is_handle(v) {
                roots.push(self.word_handle(v)?);
            }
        }
        Ok(roots)
    }

    /// Live entries and used slots (live + tombstones) of the table.
    fn count(&self) -> Result<(u64, u64), Error> {
        let (mut len, mut used) = (0u64, 0u64);
        for s in self.table()? {
            let k = s.kw.load(Ordering::Relaxed);
            if k != EMPTY {
                used += 1;
                if k != TOMB {
                    len += 1;
                }
            }
        }
        Ok((len, used))
    }

    fn for_each(&self, f: &mut impl FnMut(&[u8], &[u8])) -> Result<(), Error> {
        for s in self.table()? {
            let k = s.kw.load(Ordering::Relaxed);
            if k == EMPTY || k == TOMB {
                continue;
            }
            let vw = s.vw.load(Ordering::Relaxed);
            if k & LONG_KEY == 0 {
                let (b, n) = unpack7(k).ok_or(Error::Corrupt("short key length"))?;
                self.with_word(vw, |v| f(&b[..n], v))?;
            } else {
                let key = self.rec_key(vw)?;
                let v = self.rec_value(vw)?;
                self.with_word(v, |v| f(&key, v))?;
            }
        }
        Ok(())
    }

    /// Every entry is where its own lookup finds it: its key word is its key's, its key
    /// belongs to this shard, and the probe from its home slot reaches it before any other
    /// slot with the same key and before an empty slot.
    fn check_placement(&self) -> Result<(), Error> {
        for (i, s) in self.table()?.iter().enumerate() {
            let k = s.kw.load(Ordering::Relaxed);
            if k == EMPTY || k == TOMB {
                continue;
            }
            let key = if k & LONG_KEY == 0 {
                let (b, n) = unpack7(k).ok_or(Error::Corrupt("short key length"))?;
                b[..n].to_vec()
            } else {
                self.rec_key(s.vw.load(Ordering::Relaxed))?
            };
            let h = self.map.hash(&key);
            if self.map.key_word(&key, h) != k {
                return Err(Error::Corrupt("a slot's key word is not its key's"));
            }
            if self.map.shard_of(h) != self.idx {
                return Err(Error::Corrupt("a key in another shard's table"));
            }
            if !matches!(self.find(k, &key)?, Found::At(j, ..) if j == i) {
                return Err(Error::Corrupt(
                    "an entry that its lookup does not reach first (a duplicate key, or an empty slot before it)",
                ));
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), Error> {
        let cap = self.table()?.len() as u64;
        let (len, used) = self.count()?;
        if len != self.shard.len.load(Ordering::Relaxed) {
            return Err(Error::Corrupt("shard length does not match its table"));
        }
        if used != self.shard.used.load(Ordering::Relaxed) {
            return Err(Error::Corrupt(
                "shard's used count does not match its table",
            ));
        }
        if used * 1000 > cap * MAX_LOAD {
            return Err(Error::Corrupt("shard table fuller than its maximum load"));
        }
        self.check_placement()?;
        let arena = self.arena()?;
        let report = arena.check()?;
        // Every chunk in use belongs to a blob that the table names (blobs share no chunks):
        // nothing leaked.
        let mut chunks = 0usize;
        for h in self.arena_roots()? {
            let mut next = Some(h);
            while let Some(h) = next {
                chunks += 1;
                if chunks > report.chunks_in_use {
                    break;
                }
                next = arena.peek_next(h)?;
            }
        }
        if chunks != report.chunks_in_use {
            return Err(Error::Corrupt(
                "arena chunks in use that the table does not reference",
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------- blobs

/// Stores the concatenation of `parts` as a blob: the first chunk's own handle (16 bytes),
/// an 8-byte length, then the bytes, in one chunk or a chain of chunks.
fn blob_alloc(arena: &mut Arena<ShardSource>, parts: &[&[u8]]) -> Result<Handle, Error> {
    let content: usize = parts.iter().map(|p| p.len()).sum();
    let mut prefix = [0u8; BLOB_HDR];
    prefix[16..].copy_from_slice(&(content as u64).to_le_bytes());
    let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    all.push(&prefix);
    all.extend_from_slice(parts);
    let (mut pi, mut po) = (0usize, 0usize);
    let mut remaining = BLOB_HDR + content;
    let max = arena.config().slab_size;
    let mut head: Option<Handle> = None;
    let mut tail: Option<Handle> = None;
    let r = (|| -> Result<(), Error> {
        while remaining > 0 {
            let n = remaining.min(max);
            let h = arena.alloc(n)?;
            let mut out = arena.bytes_mut(h)?;
            while !out.is_empty() && pi < all.len() {
                let p = &all[pi][po..];
                let k = p.len().min(out.len());
                out[..k].copy_from_slice(&p[..k]);
                out = &mut out[k..];
                po += k;
                if po == all[pi].len() {
                    pi += 1;
                    po = 0;
                }
            }
            match tail {
                None => head = Some(h),
                Some(t) => {
                    let linked = arena.set_next(t, Some(h));
                    arena.dec_ref(h)?;
                    linked?;
                }
            }
            tail = Some(h);
            remaining -= n;
        }
        Ok(())
    })();
    let r = r.and_then(|()| {
        let h = head.ok_or(Error::Corrupt("empty blob"))?;
        arena.write(h, 0, &h.to_bits().to_le_bytes())?;
        Ok(h)
    });
    match r {
        Ok(h) => Ok(h),
        Err(e) => {
            if let Some(h) = head {
                let _ = arena.dec_ref(h);
            }
            Err(e)
        }
    }
}

/// Visits a blob's content past its first `skip` bytes, in pieces (`visit` returns `false`
/// to stop); returns the content length.
fn blob_pieces(
    arena: &Arena<ShardSource>,
    h: Handle,
    mut skip: usize,
    mut visit: impl FnMut(&[u8]) -> bool,
) -> Result<usize, Error> {
    let first = arena.bytes(h)?;
    let total = blob_len(first)?;
    let mut left = total;
    let mut piece = &first[BLOB_HDR..];
    let mut h = h;
    loop {
        let n = piece.len().min(left);
        left -= n;
        if skip >= n {
            skip -= n;
        } else {
            if !visit(&piece[skip..n]) {
                return Ok(total);
            }
            skip = 0;
        }
        if left == 0 {
            return Ok(total);
        }
        match arena.peek_next(h)? {
            Some(next) => {
                h = next;
                piece = arena.bytes(h)?;
                if piece.is_empty() {
                    return Err(Error::Corrupt("empty chunk in a blob chain"));
                }
            }
            None => return Err(Error::Corrupt("blob chain shorter than its length")),
        }
    }
}

/// The content length of a blob, from its first chunk.
fn blob_len(first: &[u8]) -> Result<usize, Error> {
    let b = first
        .get(16..BLOB_HDR)
        .ok_or(Error::Corrupt("blob shorter than its header"))?;
    let total = u64::from_le_bytes(b.try_into().unwrap_or([0xFF; 8]));
    usize::try_from(total).map_err(|_| Error::Corrupt("blob length"))
}

/// Calls `f` with a blob's content (`prefix` is the header's size): borrowed if it is in one
/// chunk, else gathered.
fn blob_with<R>(
    arena: &Arena<ShardSource>,
    h: Handle,
    prefix: usize,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, Error> {
    let first = arena.bytes(h)?;
    let total = blob_len(first)?;
    if first.len() >= prefix && total <= first.len() - prefix {
        return Ok(f(&first[prefix..prefix + total]));
    }
    let mut v = Vec::new();
    blob_pieces(arena, h, 0, |p| {
        v.extend_from_slice(p);
        true
    })?;
    Ok(f(&v))
}
