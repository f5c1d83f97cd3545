//! [`SharedMap`]: `BytesMap` semantics for many threads and processes on one file.
//!
//! See `docs/concurrency.md` in the repository for the locks, owner recovery, growth
//! visibility and crash consistency, including what is not yet crash-consistent.

use std::path::Path;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use offheap_mmap::{Offset, Region, RegionOptions};
use offheap_slab::{Arena, Config, Handle, ReleasePolicy};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::lock::{self, Acquired, LockWords};
use crate::region::{ShardSource, SharedRegion};
use crate::Error;

const ROOT: &str = "offheap.shared";
const MAGIC: u64 = u64::from_le_bytes(*b"offShare");
const VERSION: u64 = 1;

type Word = [u32; 4];
const INLINE_MAX: usize = 12;
const HANDLE_MARK: u32 = 0x8000_0000;
const NONE_MARK: u32 = 0xFFFF_FFFF;
const NONE_WORD: Word = [0, 0, 0, NONE_MARK];
const LONG_KEY: u64 = 1 << 63;
/// Key words that no key encodes to (short keys have a top byte <= 7, long keys >= 0x80).
const EMPTY: u64 = 0x10 << 56;
const TOMB: u64 = 0x11 << 56;
const BLOB_PREFIX: usize = 8;
/// A long key's record: `[value word][key bytes]`.
const REC_HDR: usize = 16;
const MIN_CAP_LOG: u32 = 4;
const CAP_SHIFT: u32 = 58;
const OFF_MASK: u64 = (1 << CAP_SHIFT) - 1;

// Intent operations and steps (see docs/concurrency.md).
const OP_NONE: u64 = 0;
const OP_INSERT: u64 = 1;
const OP_UPDATE: u64 = 2;
const OP_DELETE: u64 = 3;
const OP_REBUILD: u64 = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
struct Slot {
    kw: u64,
    vw: Word,
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
struct Intent {
    op: u64,
    step: u64,
    slot: u64,
    kw: u64,
    new: Word,
    old: Word,
    rec: Word,
    old_table: u64,
    new_table: u64,
}

/// A copy of an [`Intent`].
struct IntentCopy {
    op: u64,
    step: u64,
    slot: usize,
    kw: u64,
    new: Word,
    old: Word,
    rec: Word,
    old_table: u64,
    new_table: u64,
}

#[repr(C, align(128))]
struct Shard {
    lock: LockWords,
    /// Slot array offset | log2(capacity) << 58.
    table: AtomicU64,
    len: AtomicU64,
    /// Live entries plus tombstones.
    used: AtomicU64,
    arena_root: AtomicU64,
    arena_tag: AtomicU64,
    tag_known: AtomicU64,
    /// Changed only by the write lock's holder: interior mutability through `&Shard`.
    intent: std::cell::UnsafeCell<Intent>,
}

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
}

impl Default for SharedMapOptions {
    fn default() -> Self {
        SharedMapOptions {
            shards: 256,
            region: RegionOptions::new().release_threshold(1 << 20),
            slab_size: 64 << 10,
            hash_mask: u64::MAX,
            capacity: 0,
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

    fn config(&self) -> Result<Config, Error> {
        if !self.shards.is_power_of_two() || self.shards > 1 << 16 {
            return Err(Error::InvalidOptions(
                "shards must be a power of two up to 65536",
            ));
        }
        if self.slab_size < 64 {
            return Err(Error::InvalidOptions("slab_size must be at least 64 bytes"));
        }
        let c = Config {
            release: ReleasePolicy::Never,
            ..Config::new(16, self.slab_size, 1.5)
        };
        c.validate()?;
        Ok(c)
    }
}

/// A byte-string hash map shared by the threads of a process and by processes that open
/// the same file: `BytesMap` semantics through `&self`.
///
/// The map is split into shards (256 by default), each with its own process-shared
/// reader-writer lock, open-addressing table and slab arena; the shard is chosen by hash
/// bits `32..40` (and up) of the key's xxh3 hash. Locks record their owner (pid and process
/// start time); a lock whose owner died is taken over by the next process, which first
/// repairs the shard from its intent record.
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

struct WriteGuard<'a>(&'a Shard);
impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        lock::write_unlock(&self.0.lock.state);
    }
}

struct ReadGuard<'a>(&'a Shard, usize);
impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        lock::read_unlock(&self.0.lock.slots, self.1);
    }
}

enum Found {
    /// Slot index, the slot's value word (for a long key: its record's handle word), and
    /// for a long key the record's value word.
    At(usize, Word, Option<Word>),
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

fn mix(kw: u64, log: u32) -> usize {
    (kw.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - log)) as usize
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
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_in(Region::open(path)?)
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
        let me = lock::my_owner_id();
        let r = Arc::new(SharedRegion::new(region, me));
        let n = opts.shards;
        let hoff = r.alloc(std::mem::size_of::<MapHeader>() as u64, 128)?;
        let soff = r.alloc((n * std::mem::size_of::<Shard>()) as u64, 128)?;
        let per = opts.capacity.div_ceil(n) as u64;
        let mut log = MIN_CAP_LOG;
        while (1u64 << log) * 3 / 4 < per {
            log += 1;
        }
        let hp = r
            .ptr(hoff, std::mem::size_of::<MapHeader>() as u64)
            .ok_or(Error::Corrupt("header"))?;
        let sp = r
            .ptr(soff, (n * std::mem::size_of::<Shard>()) as u64)
            .ok_or(Error::Corrupt("shards"))?;
        // SAFETY: fresh blocks of the right sizes, aligned to 64; zero is a valid state for
        // every field (atomics and integers).
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
            let t = r.alloc((1u64 << log) * SLOT, 64)?;
            let p = r
                .ptr(t, (1u64 << log) * SLOT)
                .ok_or(Error::Corrupt("table"))?;
            // SAFETY: a fresh block of `cap` slots.
            let slots = unsafe { std::slice::from_raw_parts_mut(p as *mut Slot, 1 << log) };
            slots.fill(Slot {
                kw: EMPTY,
                vw: NONE_WORD,
            });
            sh.table
                .store(t | (u64::from(log) << CAP_SHIFT), Ordering::Relaxed);
            let arena = Arena::create_in(ShardSource(r.clone()), config)?;
            sh.arena_root.store(arena.root(), Ordering::Relaxed);
            arenas.push(Mutex::new(Some(arena)));
        }
        // SAFETY: `hdr` is the fresh header block.
        unsafe {
            let h = &mut *hdr;
            h.magic = MAGIC;
            h.version = VERSION;
            h.nshards = n as u64;
            h.seed = offheap_swiss::random_seed();
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
        let me = lock::my_owner_id();
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
            return Err(Error::Corrupt("unsupported version"));
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
        Ok(SharedMap {
            region: r,
            shards: sp as *const Shard,
            nshards: n,
            seed: h.seed,
            mask: h.hash_mask,
            me,
            arenas,
            recovered: AtomicU64::new(0),
        })
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
        (0..self.nshards)
            .map(|i| self.shard(i).len.load(Ordering::Relaxed) as usize)
            .sum()
    }

    /// `true` if [`len`](Self::len) is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, i: usize) -> &Shard {
        // SAFETY: `i < nshards`; the shard array lies inside the mapping.
        unsafe { &*self.shards.add(i) }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        xxh3_64_with_seed(key, self.seed)
    }

    fn key_word(&self, key: &[u8], h: u64) -> u64 {
        if key.len() <= 7 {
            let mut b = [0u8; 8];
            b[..key.len()].copy_from_slice(key);
            b[7] = key.len() as u8;
            u64::from_le_bytes(b)
        } else {
            (h & self.mask) | LONG_KEY
        }
    }

    fn shard_of(&self, h: u64) -> usize {
        let bits = (h >> 32) ^ (h >> 48 << 8);
        bits as usize & (self.nshards - 1)
    }

    // ------------------------------------------------------------------ locking

    fn ctx<'a>(&'a self, shard: &'a Shard, i: usize) -> Result<Ctx<'a>, Error> {
        Ok(Ctx {
            map: self,
            shard,
            idx: i,
            arena: std::cell::OnceCell::new(),
        })
    }

    fn write<R>(
        &self,
        i: usize,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let shard = self.shard(i);
        let how = lock::write_lock(
            &shard.lock.state,
            &shard.lock.slots,
            self.me,
            lock::owner_is_dead,
        );
        let _g = WriteGuard(shard);
        let mut c = self.ctx(shard, i)?;
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
            &shard.lock.state,
            &shard.lock.slots,
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
        let mut c = self.ctx(shard, i)?;
        f(&mut c)
    }

    // ------------------------------------------------------------------ operations

    /// Calls `f` with the value of `key`, without copying it when it is inline or in one
    /// chunk (a value longer than the slab size is gathered into a buffer first). `f` runs
    /// under the shard's read lock: keep it short, and do not call back into the map from
    /// it (a write to the same shard would wait for this very read lock forever).
    pub fn get_with<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, Error> {
        let h = self.hash(key);
        let kw = self.key_word(key, h);
        self.read(self.shard_of(h), |c| match c.find(kw, key)? {
            Found::At(_, vw, rec) => c.with_word(&rec.unwrap_or(vw), f).map(Some),
            Found::Vacant(_) => Ok(None),
        })
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
        if key.len() > crate::MAX_LEN {
            return Err(Error::TooLong(key.len()));
        }
        if value.len() > crate::MAX_LEN {
            return Err(Error::TooLong(value.len()));
        }
        let h = self.hash(key);
        let kw = self.key_word(key, h);
        self.write(self.shard_of(h), |c| c.upsert(kw, key, value, want))
    }

    fn erase(&self, key: &[u8], want: bool) -> Result<(bool, Option<Vec<u8>>), Error> {
        let h = self.hash(key);
        let kw = self.key_word(key, h);
        self.write(self.shard_of(h), |c| c.erase(kw, key, want))
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
        let mut v = Vec::with_capacity(self.len());
        self.for_each(|k, val| v.push((k.to_vec(), val.to_vec())))?;
        Ok(v)
    }

    /// Checks every shard (under its read lock: table counts, arena) and the region.
    pub fn check(&self) -> Result<(), Error> {
        for i in 0..self.nshards {
            self.read(i, |c| c.check())?;
        }
        self.region.lock().check()?;
        Ok(())
    }
}

// ---------------------------------------------------------------------- shard operations

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
        self.arena.get().ok_or(Error::Corrupt("arena"))
    }

    fn arena(&self) -> Result<&Arena<ShardSource>, Error> {
        self.guard()?.as_ref().ok_or(Error::Corrupt("arena"))
    }

    fn arena_mut(&mut self) -> Result<&mut Arena<ShardSource>, Error> {
        self.guard()?;
        self.arena
            .get_mut()
            .and_then(|g| g.as_mut())
            .ok_or(Error::Corrupt("arena"))
    }

    fn intent(&self) -> *mut Intent {
        self.shard.intent.get()
    }

    /// Writes the shard's intent record.
    fn set_intent(&self, f: impl FnOnce(&mut Intent)) {
        // SAFETY: the intent lies in this shard, whose write lock the caller holds (no other
        // thread or process reads or writes it meanwhile); it is plain integers.
        f(unsafe { &mut *self.intent() });
        fence(Ordering::Release);
    }

    /// Reads the shard's intent record.
    fn get_intent(&self) -> IntentCopy {
        // SAFETY: as in `set_intent` (a read lock holder only reads `op`, via `read`).
        let it = unsafe { &*self.intent() };
        IntentCopy {
            op: it.op,
            step: it.step,
            slot: it.slot as usize,
            kw: it.kw,
            new: it.new,
            old: it.old,
            rec: it.rec,
            old_table: it.old_table,
            new_table: it.new_table,
        }
    }

    /// The shard's slot array: address, capacity and log2(capacity), validated.
    fn table_raw(&self) -> Result<(*mut Slot, usize, u32), Error> {
        let d = self.shard.table.load(Ordering::Relaxed);
        let log = (d >> CAP_SHIFT) as u32;
        if !(MIN_CAP_LOG..=40).contains(&log) {
            return Err(Error::Corrupt("table capacity"));
        }
        let off = d & OFF_MASK;
        let cap = 1usize << log;
        if off % 8 != 0 {
            return Err(Error::Corrupt("table offset"));
        }
        let p = self
            .map
            .region
            .ptr(off, cap as u64 * SLOT)
            .ok_or(Error::Corrupt("table outside the region"))?;
        Ok((p as *mut Slot, cap, log))
    }

    /// The shard's slots, to read (the caller holds the shard's read or write lock).
    fn table(&self) -> Result<(&[Slot], u32), Error> {
        let (p, cap, log) = self.table_raw()?;
        // SAFETY: `cap` slots inside the mapping, aligned to 8; under the shard's lock no
        // writer changes them while the slice lives (readers only share it).
        Ok((unsafe { std::slice::from_raw_parts(p, cap) }, log))
    }

    /// The shard's slots, to write (`&mut self`: only the write lock's holder has a
    /// mutable context).
    fn table_mut(&mut self) -> Result<&mut [Slot], Error> {
        let (p, cap, _) = self.table_raw()?;
        // SAFETY: as in `table`, and the write lock excludes every other reader and writer.
        Ok(unsafe { std::slice::from_raw_parts_mut(p, cap) })
    }

    fn handle_word(&self, h: Handle) -> Word {
        if self.shard.tag_known.load(Ordering::Relaxed) == 0 {
            self.shard
                .arena_tag
                .store((h.to_bits() >> 96) as u64, Ordering::Relaxed);
            self.shard.tag_known.store(1, Ordering::Release);
        }
        [h.slab_index(), h.chunk_index(), h.generation(), HANDLE_MARK]
    }

    fn word_handle(&self, w: &Word) -> Result<Handle, Error> {
        if w[3] != HANDLE_MARK {
            return Err(Error::Corrupt("expected a handle word"));
        }
        let tag = self.shard.arena_tag.load(Ordering::Relaxed) as u32;
        Ok(Handle::from_bits(
            (tag as u128) << 96 | (w[2] as u128) << 64 | (w[0] as u128) << 32 | w[1] as u128,
        ))
    }

    fn with_word<R>(&self, w: &Word, f: impl FnOnce(&[u8]) -> R) -> Result<R, Error> {
        let n = w[3] as usize;
        if n <= INLINE_MAX {
            Ok(f(&bytemuck::cast_slice::<u32, u8>(&w[..3])[..n]))
        } else {
            let h = self.word_handle(w)?;
            blob_with(self.arena()?, h, BLOB_PREFIX, f)
        }
    }

    fn free_word(&mut self, w: &Word) {
        if w[3] == HANDLE_MARK {
            if let Ok(h) = self.word_handle(w) {
                // A stale handle (already freed before a crash) is refused by the arena.
                if let Ok(a) = self.arena_mut() {
                    let _ = a.dec_ref(h);
                }
            }
        }
    }

    fn rec_value(&self, rec: &Word) -> Result<Word, Error> {
        let h = self.word_handle(rec)?;
        let b = self.arena()?.bytes(h)?;
        let s = b
            .get(BLOB_PREFIX..BLOB_PREFIX + REC_HDR)
            .ok_or(Error::Corrupt("record shorter than its header"))?;
        let mut w: Word = [0; 4];
        bytemuck::bytes_of_mut(&mut w).copy_from_slice(s);
        Ok(w)
    }

    fn rec_key_eq(&self, rec: &Word, key: &[u8]) -> Result<bool, Error> {
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

    fn find(&self, kw: u64, key: &[u8]) -> Result<Found, Error> {
        let (slots, log) = self.table()?;
        let mask = slots.len() - 1;
        let mut i = mix(kw, log);
        let mut vacant = None;
        for _ in 0..slots.len() {
            let s = slots[i];
            if s.kw == EMPTY {
                return Ok(Found::Vacant(vacant.unwrap_or(i)));
            }
            if s.kw == TOMB {
                vacant.get_or_insert(i);
            } else if s.kw == kw {
                if kw & LONG_KEY == 0 {
                    return Ok(Found::At(i, s.vw, None));
                }
                if self.rec_key_eq(&s.vw, key)? {
                    let v = self.rec_value(&s.vw)?;
                    return Ok(Found::At(i, s.vw, Some(v)));
                }
            }
            i = (i + 1) & mask;
        }
        vacant
            .map(Found::Vacant)
            .ok_or(Error::Corrupt("table has no empty slot"))
    }

    fn encode_value(&mut self, v: &[u8]) -> Result<Word, Error> {
        if v.len() <= INLINE_MAX {
            let mut w: Word = [0, 0, 0, v.len() as u32];
            bytemuck::cast_slice_mut::<u32, u8>(&mut w[..3])[..v.len()].copy_from_slice(v);
            Ok(w)
        } else {
            let h = blob_alloc(self.arena_mut()?, &[v])?;
            Ok(self.handle_word(h))
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
        if let Found::Vacant(_) = found {
            let (slots, _) = self.table()?;
            let used = self.shard.used.load(Ordering::Relaxed) as usize;
            if (used + 1) * 4 > slots.len() * 3 {
                let len = self.shard.len.load(Ordering::Relaxed) as usize;
                let cap = if (len + 1) * 2 > slots.len() {
                    slots.len() * 2
                } else {
                    slots.len()
                };
                self.rebuild(cap)?;
                found = self.find(kw, key)?;
            }
        }
        self.set_intent(|it| {
            it.step = 0;
            it.kw = kw;
            it.new = NONE_WORD;
            it.rec = NONE_WORD;
            it.old = NONE_WORD;
        });
        match found {
            Found::At(i, slotw, rec) => {
                let old = rec.unwrap_or(slotw);
                let out = if want {
                    Some(self.with_word(&old, <[u8]>::to_vec)?)
                } else {
                    None
                };
                self.set_intent(|it| {
                    it.slot = i as u64;
                    it.old = old;
                    it.rec = if rec.is_some() { slotw } else { NONE_WORD };
                });
                // The op last: recovery must never see it with stale fields.
                self.set_intent(|it| it.op = OP_UPDATE);
                fence(Ordering::Release);
                let vw = self.encode_value(value)?;
                self.set_intent(|it| it.new = vw);
                fence(Ordering::Release);
                self.set_intent(|it| it.step = 1);
                fence(Ordering::Release);
                self.apply_update()?;
                fence(Ordering::Release);
                self.set_intent(|it| it.step = 2);
                fence(Ordering::Release);
                self.free_word(&old);
                fence(Ordering::Release);
                self.set_intent(|it| it.op = OP_NONE);
                Ok((true, out))
            }
            Found::Vacant(i) => {
                self.set_intent(|it| {
                    it.slot = i as u64;
                });
                // The op last: recovery must never see it with stale fields.
                self.set_intent(|it| it.op = OP_INSERT);
                fence(Ordering::Release);
                let vw = self.encode_value(value)?;
                self.set_intent(|it| it.new = vw);
                fence(Ordering::Release);
                if kw & LONG_KEY != 0 {
                    let r = blob_alloc(self.arena_mut()?, &[bytemuck::bytes_of(&vw), key])?;
                    let rw = self.handle_word(r);
                    self.set_intent(|it| it.rec = rw);
                }
                fence(Ordering::Release);
                self.set_intent(|it| it.step = 1);
                fence(Ordering::Release);
                self.apply_insert()?;
                fence(Ordering::Release);
                self.set_intent(|it| it.op = OP_NONE);
                Ok((false, None))
            }
        }
    }

    /// Step 1 of an insert (idempotent: also the redo on recovery).
    fn apply_insert(&mut self) -> Result<(), Error> {
        let IntentCopy {
            slot: i,
            kw,
            new,
            rec,
            ..
        } = self.get_intent();
        let slots = self.table_mut()?;
        let s = slots.get_mut(i).ok_or(Error::Corrupt("intent slot"))?;
        if s.kw == kw {
            return Ok(()); // already committed
        }
        let was_empty = s.kw == EMPTY;
        s.vw = if kw & LONG_KEY != 0 { rec } else { new };
        fence(Ordering::Release);
        // The commit point: one aligned 8-byte store.
        // SAFETY: `s.kw` is an aligned u64 in the mapping; AtomicU64 has its layout.
        unsafe {
            (*(std::ptr::addr_of_mut!(s.kw) as *const AtomicU64)).store(kw, Ordering::Release)
        };
        bump(&self.shard.len, 1);
        if was_empty {
            bump(&self.shard.used, 1);
        }
        Ok(())
    }

    /// Step 1 of an update (idempotent).
    fn apply_update(&mut self) -> Result<(), Error> {
        let IntentCopy {
            slot: i, new, rec, ..
        } = self.get_intent();
        if rec[3] == HANDLE_MARK {
            let h = self.word_handle(&rec)?;
            self.arena_mut()?
                .write(h, BLOB_PREFIX, bytemuck::bytes_of(&new))?;
        } else {
            let slots = self.table_mut()?;
            slots.get_mut(i).ok_or(Error::Corrupt("intent slot"))?.vw = new;
        }
        Ok(())
    }

    fn erase(&mut self, kw: u64, key: &[u8], want: bool) -> Result<(bool, Option<Vec<u8>>), Error> {
        let Found::At(i, slotw, rec) = self.find(kw, key)? else {
            return Ok((false, None));
        };
        let old = rec.unwrap_or(slotw);
        let out = if want {
            Some(self.with_word(&old, <[u8]>::to_vec)?)
        } else {
            None
        };
        self.set_intent(|it| {
            it.slot = i as u64;
            it.kw = kw;
            it.old = old;
            it.rec = if rec.is_some() { slotw } else { NONE_WORD };
            it.new = NONE_WORD;
            it.step = 1;
        });
        // The op last: recovery must never see it with stale fields.
        self.set_intent(|it| it.op = OP_DELETE);
        fence(Ordering::Release);
        self.apply_delete()?;
        fence(Ordering::Release);
        self.set_intent(|it| it.step = 2);
        fence(Ordering::Release);
        self.free_word(&old);
        if rec.is_some() {
            self.free_word(&slotw);
        }
        fence(Ordering::Release);
        self.set_intent(|it| it.op = OP_NONE);
        let (slots, _) = self.table()?;
        let len = self.shard.len.load(Ordering::Relaxed) as usize;
        if slots.len() > 1 << MIN_CAP_LOG && len * 8 < slots.len() {
            self.rebuild(slots.len() / 2)?;
        }
        Ok((true, out))
    }

    fn apply_delete(&mut self) -> Result<(), Error> {
        let IntentCopy { slot: i, kw, .. } = self.get_intent();
        let slots = self.table_mut()?;
        let mask = slots.len() - 1;
        let next_empty = slots[(i + 1) & mask].kw == EMPTY;
        let s = slots.get_mut(i).ok_or(Error::Corrupt("intent slot"))?;
        if s.kw != kw {
            return Ok(()); // already done
        }
        // A slot followed by an EMPTY one ends every probe through it: it may become EMPTY.
        let to = if next_empty { EMPTY } else { TOMB };
        // SAFETY: as in `apply_insert`.
        unsafe {
            (*(std::ptr::addr_of_mut!(s.kw) as *const AtomicU64)).store(to, Ordering::Release)
        };
        bump(&self.shard.len, u64::MAX);
        if to == EMPTY {
            bump(&self.shard.used, u64::MAX);
        }
        Ok(())
    }

    /// Moves the live entries into a new slot array of `cap` slots (bounded by the shard's
    /// size), then publishes it with one store and frees the old array.
    fn rebuild(&mut self, cap: usize) -> Result<(), Error> {
        let (old, _) = self.table()?;
        let old_desc = self.shard.table.load(Ordering::Relaxed);
        let log = cap.trailing_zeros();
        self.set_intent(|it| {
            it.old_table = old_desc & OFF_MASK;
            it.new_table = 0;
            it.step = 0;
        });
        // The op last: recovery must never see it with stale fields.
        self.set_intent(|it| it.op = OP_REBUILD);
        fence(Ordering::Release);
        let region = &self.map.region;
        let t = region.alloc(cap as u64 * SLOT, 64)?;
        let desc = t | (u64::from(log) << CAP_SHIFT);
        self.set_intent(|it| it.new_table = desc);
        fence(Ordering::Release);
        let p = region
            .ptr(t, cap as u64 * SLOT)
            .ok_or(Error::Corrupt("new table"))?;
        // SAFETY: a fresh block of `cap` slots.
        let new = unsafe { std::slice::from_raw_parts_mut(p as *mut Slot, cap) };
        new.fill(Slot {
            kw: EMPTY,
            vw: NONE_WORD,
        });
        let mut n = 0u64;
        for s in old.iter() {
            if s.kw == EMPTY || s.kw == TOMB {
                continue;
            }
            let mut i = mix(s.kw, log);
            while new[i].kw != EMPTY {
                i = (i + 1) & (cap - 1);
            }
            new[i] = *s;
            n += 1;
        }
        fence(Ordering::Release);
        self.set_intent(|it| it.step = 1);
        fence(Ordering::Release);
        self.shard.table.store(desc, Ordering::Release);
        self.shard.used.store(n, Ordering::Relaxed);
        fence(Ordering::Release);
        self.set_intent(|it| it.step = 2);
        fence(Ordering::Release);
        let _ = region.free(old_desc & OFF_MASK);
        fence(Ordering::Release);
        self.set_intent(|it| it.op = OP_NONE);
        Ok(())
    }

    /// Repairs the shard after its previous writer died: finishes (redo) or rolls back
    /// (undo) the operation its intent records, then recounts the shard.
    fn recover(&mut self) -> Result<(), Error> {
        let IntentCopy {
            op,
            step,
            new,
            old,
            rec,
            old_table: old_t,
            new_table: new_t,
            ..
        } = self.get_intent();
        match (op, step) {
            (OP_NONE, _) => {}
            (OP_INSERT, 0) => {
                // Not committed: roll back what was allocated.
                self.free_word(&new);
                self.free_word(&rec);
            }
            (OP_INSERT, _) => self.apply_insert()?,
            (OP_UPDATE, 0) => self.free_word(&new),
            (OP_UPDATE, 1) => {
                self.apply_update()?;
                self.free_word(&old);
            }
            (OP_UPDATE, _) => self.free_word(&old),
            (OP_DELETE, s) => {
                if s <= 1 {
                    self.apply_delete()?;
                }
                self.free_word(&old);
                self.free_word(&rec);
            }
            (OP_REBUILD, 0) => {
                if new_t != 0 {
                    let _ = self.map.region.free(new_t & OFF_MASK);
                }
            }
            (OP_REBUILD, 1) => {
                // The new table was complete: publish it (again) and free the old one.
                self.shard.table.store(new_t, Ordering::Release);
                let _ = self.map.region.free(old_t);
            }
            // Step 2: the old table may already be freed; leaking it is the safe choice.
            (OP_REBUILD, _) => {}
            _ => return Err(Error::Corrupt("unknown intent")),
        }
        fence(Ordering::Release);
        // SAFETY: write lock held.
        self.set_intent(|it| it.op = OP_NONE);
        // Recount (O(shard)).
        let (slots, _) = self.table()?;
        let (mut len, mut used) = (0u64, 0u64);
        for s in slots.iter() {
            if s.kw != EMPTY {
                used += 1;
                if s.kw != TOMB {
                    len += 1;
                }
            }
        }
        self.shard.len.store(len, Ordering::Relaxed);
        self.shard.used.store(used, Ordering::Relaxed);
        Ok(())
    }

    fn for_each(&self, f: &mut impl FnMut(&[u8], &[u8])) -> Result<(), Error> {
        let (slots, _) = self.table()?;
        for s in slots.iter() {
            if s.kw == EMPTY || s.kw == TOMB {
                continue;
            }
            if s.kw & LONG_KEY == 0 {
                let b = s.kw.to_le_bytes();
                let n = b[7] as usize;
                if n > 7 {
                    return Err(Error::Corrupt("short key length"));
                }
                self.with_word(&s.vw, |v| f(&b[..n], v))?;
            } else {
                let h = self.word_handle(&s.vw)?;
                let mut key = Vec::new();
                blob_pieces(self.arena()?, h, REC_HDR, |p| {
                    key.extend_from_slice(p);
                    true
                })?;
                let v = self.rec_value(&s.vw)?;
                self.with_word(&v, |v| f(&key, v))?;
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), Error> {
        let (slots, _) = self.table()?;
        let live = slots
            .iter()
            .filter(|s| s.kw != EMPTY && s.kw != TOMB)
            .count();
        if live as u64 != self.shard.len.load(Ordering::Relaxed) {
            return Err(Error::Corrupt("shard length does not match its table"));
        }
        if !slots.iter().any(|s| s.kw == EMPTY) {
            return Err(Error::Corrupt("shard table has no empty slot"));
        }
        self.arena()?.check()?;
        Ok(())
    }
}

// ---------------------------------------------------------------------- blobs

/// Stores the concatenation of `parts` as a blob: an 8-byte length, then the bytes, in one
/// chunk or a chain of chunks.
fn blob_alloc(arena: &mut Arena<ShardSource>, parts: &[&[u8]]) -> Result<Handle, Error> {
    let content: usize = parts.iter().map(|p| p.len()).sum();
    let prefix = (content as u64).to_le_bytes();
    let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    all.push(&prefix);
    all.extend_from_slice(parts);
    let (mut pi, mut po) = (0usize, 0usize);
    let mut remaining = BLOB_PREFIX + content;
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
    match r {
        Ok(()) => head.ok_or(Error::Corrupt("empty blob")),
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
    if first.len() < BLOB_PREFIX {
        return Err(Error::Corrupt("blob shorter than its prefix"));
    }
    let total = u64::from_le_bytes(first[..BLOB_PREFIX].try_into().unwrap_or([0; 8]));
    let total = usize::try_from(total).map_err(|_| Error::Corrupt("blob length"))?;
    let mut left = total;
    let mut piece = &first[BLOB_PREFIX..];
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

/// Calls `f` with a blob's content past `skip` bytes of the first chunk... (the whole
/// content): borrowed if it is in one chunk, else gathered.
fn blob_with<R>(
    arena: &Arena<ShardSource>,
    h: Handle,
    prefix: usize,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, Error> {
    let first = arena.bytes(h)?;
    if first.len() >= prefix {
        let total = u64::from_le_bytes(first[..BLOB_PREFIX].try_into().unwrap_or([0; 8]));
        if total <= (first.len() - prefix) as u64 {
            return Ok(f(&first[prefix..prefix + total as usize]));
        }
    }
    let mut v = Vec::new();
    blob_pieces(arena, h, 0, |p| {
        v.extend_from_slice(p);
        true
    })?;
    Ok(f(&v))
}
