//! [`BytesMap`]: byte-string keys and values of any length, in one region.
//!
//! # Layout
//!
//! The table is an `offheap_swiss::SwissTable<u64, [u32; 4]>`: an 8-byte *key word* and a
//! 16-byte *value word* per slot (24 bytes), in the same region as a slab arena.
//!
//! - **Key word.** A key of at most 7 bytes is stored inline: its bytes, zero-padded, with
//!   the length in the top byte (`0..=7`). The table's own bytewise comparison of key words
//!   is then the full key comparison. A longer key's word is `xxh3(key, seed) | 1 << 63`
//!   (the top bit tells the two kinds apart); its slot's value word names a *record* in the
//!   arena: `[next record][value word][key bytes]`. Records whose keys share a key word form
//!   a list, and a lookup compares the full key bytes of each, so colliding keys never merge.
//! - **Value word.** A value of at most 12 bytes is stored inline (`word[3]` = its length);
//!   a longer one is a handle (`word[3] = 0x8000_0000`, then slab, chunk and generation; the
//!   arena's tag is stored once in the map's header) to a *blob* in the arena.
//! - **Blob.** An 8-byte length followed by the bytes, in one chunk if it fits in the arena's
//!   largest class (the slab size), otherwise a chain of chunks linked with `set_next`.
//!
//! A map header (magic, version, arena root, hash seed, checksum, length, arena tag) lives in
//! a region block named by the root slot `offheap.bytes`; the table is under
//! `offheap.bytes.t`. Reopening validates the header, the arena header and the table
//! directory: no entry is read.

use std::path::Path;
use std::ptr::NonNull;
use std::rc::Rc;

use offheap_mmap::{Region, RegionOptions};
use offheap_slab::{Arena, Config, Handle, ReleasePolicy};
use offheap_swiss::SwissTable;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::source::RegionSource;
use crate::Error;

/// The longest key or value a [`BytesMap`] stores: 4 GiB - 1.
pub const MAX_LEN: usize = u32::MAX as usize;

const HDR_ROOT: &str = "offheap.bytes";
const TABLE_ROOT: &str = "offheap.bytes.t";
const MAGIC: u64 = u64::from_le_bytes(*b"offBytes");
const VERSION: u64 = 1;

/// A table value word (see the module documentation).
type Word = [u32; 4];
const INLINE_MAX: usize = 12;
const HANDLE_MARK: u32 = 0x8000_0000;
const NONE_MARK: u32 = 0xFFFF_FFFF;
const NONE_WORD: Word = [0, 0, 0, NONE_MARK];
const LONG_KEY: u64 = 1 << 63;
/// Bytes of a record before its key: the next record's word and the value word.
const REC_HDR: usize = 32;
/// Length prefix of a blob.
const BLOB_PREFIX: usize = 8;
/// The arena's slab size must hold a blob prefix and a record header in one chunk.
const MIN_SLAB: usize = 64;

#[repr(C)]
#[derive(Clone, Copy)]
struct Header {
    magic: u64,
    version: u64,
    arena_root: u64,
    seed: u64,
    hash_mask: u64,
    check: u64,
    len: u64,
    tag: u64,
    tag_known: u64,
}

impl Header {
    fn checksum(&self) -> u64 {
        let words = [
            self.magic,
            self.version,
            self.arena_root,
            self.seed,
            self.hash_mask,
        ];
        xxh3_64(bytemuck::cast_slice(&words))
    }
}

/// Options for a new [`BytesMap`]. Builder-style.
#[derive(Clone, Debug)]
pub struct BytesMapOptions {
    region: RegionOptions,
    slab_size: usize,
    start_chunk: usize,
    growth_factor: f64,
    release: ReleasePolicy,
    hash_mask: u64,
    seed: Option<u64>,
}

impl Default for BytesMapOptions {
    fn default() -> Self {
        BytesMapOptions {
            // The region's own defaults: free runs of 1 MiB or more go back to the OS.
            region: RegionOptions::new(),
            slab_size: 64 << 10,
            start_chunk: 16,
            growth_factor: 1.5,
            release: ReleasePolicy::KeepEmpty(1),
            hash_mask: u64::MAX,
            seed: None,
        }
    }
}

impl BytesMapOptions {
    /// The defaults: 64 KiB slabs (the largest single chunk; longer values are chains),
    /// classes from 16 bytes growing by 1.5, at most one empty slab kept per class, and the
    /// region's default options (free runs of 1 MiB or more go back to the OS).
    pub fn new() -> Self {
        Self::default()
    }

    /// Options of the region (initial and maximum size, give-back threshold).
    pub fn region(mut self, opts: RegionOptions) -> Self {
        self.region = opts;
        self
    }

    /// The arena's slab size: the largest chunk (at least 64 bytes, at most 2 GiB).
    pub fn slab_size(mut self, bytes: usize) -> Self {
        self.slab_size = bytes;
        self
    }

    /// The arena's size-class growth factor (greater than 1).
    pub fn growth_factor(mut self, f: f64) -> Self {
        self.growth_factor = f;
        self
    }

    /// When empty slabs go back to the region (and so, in bulk, to the OS).
    pub fn release(mut self, policy: ReleasePolicy) -> Self {
        self.release = policy;
        self
    }

    /// The hash seeds of the map (for its long keys) and of its table: random per map by
    /// default. A fixed seed makes the same operations lay the map out the same way
    /// (reproducible files, for tests and fuzzing); keys chosen to collide under it
    /// degrade the table.
    ///
    /// ```
    /// use offheap::{BytesMap, BytesMapOptions};
    /// let mut m = BytesMap::anonymous_with(&BytesMapOptions::new().seed(7))?;
    /// m.insert(b"k", b"v")?;
    /// # Ok::<(), offheap::Error>(())
    /// ```
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Keeps only these bits of long keys' hashes: for tests that need colliding keys.
    #[doc(hidden)]
    pub fn hash_mask(mut self, mask: u64) -> Self {
        self.hash_mask = mask;
        self
    }

    fn config(&self) -> Result<Config, Error> {
        arena_config(
            self.slab_size,
            self.start_chunk,
            self.growth_factor,
            self.release,
        )
    }
}

/// The arena configuration of a map (`BytesMap`, or a `SharedMap` shard), validated.
pub(crate) fn arena_config(
    slab_size: usize,
    start_chunk: usize,
    growth_factor: f64,
    release: ReleasePolicy,
) -> Result<Config, Error> {
    if slab_size < MIN_SLAB {
        return Err(Error::InvalidOptions("slab_size must be at least 64 bytes"));
    }
    let config = Config {
        release,
        ..Config::new(start_chunk, slab_size, growth_factor)
    };
    config.validate()?;
    Ok(config)
}

/// `Error::TooLong` for a key or value longer than [`MAX_LEN`] (the key is looked at first).
pub(crate) fn check_lens(key: &[u8], value: &[u8]) -> Result<(), Error> {
    for n in [key.len(), value.len()] {
        if n > MAX_LEN {
            return Err(Error::TooLong(n));
        }
    }
    Ok(())
}

/// A key (or value) of at most 7 bytes as a word: its bytes, zero-padded, with the length in
/// the top byte.
#[inline]
pub(crate) fn pack7(b: &[u8]) -> u64 {
    // In registers, without a copy through the stack (a byte-wise copy into a buffer that
    // is then read as one word stalls on store forwarding): two overlapping 4-byte loads
    // for 4..=7 bytes, three overlapping single bytes for 1..=3. Overlapping bytes land
    // on the same bits with the same values, so OR-ing them is exact.
    let n = b.len();
    debug_assert!(n <= 7);
    let w = if n >= 4 {
        let lo = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let hi = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
        u64::from(lo) | u64::from(hi) << (8 * (n - 4))
    } else if n > 0 {
        u64::from(b[0])
            | u64::from(b[n / 2]) << (8 * (n / 2))
            | u64::from(b[n - 1]) << (8 * (n - 1))
    } else {
        0
    };
    w | (n as u64) << 56
}

/// A hash map from byte strings to byte strings in anonymous memory or a memory-mapped file.
///
/// Keys are compared in full (never by hash alone); keys of at most 7 bytes and values of at
/// most 12 bytes are stored inline in the table slot, longer ones in a slab arena in the
/// same region; values longer than the arena's slab size are chains of chunks. Removed
/// entries' chunks are reused, and empty slabs go back to the region, which gives large free
/// runs back to the OS.
///
/// Methods return `Result` because a map opened from a file reads state that may be
/// corrupt: anything inconsistent is an [`Error`], never undefined behaviour.
///
/// ```
/// use offheap::BytesMap;
/// let mut m = BytesMap::anonymous()?;
/// m.insert(b"short", b"v")?;
/// let long = vec![7u8; 100_000]; // a chain of arena chunks
/// assert_eq!(m.insert(b"a longer key", &long)?, None);
/// assert_eq!(m.get_with(b"a longer key", |v| v.len())?, Some(100_000));
/// assert_eq!(m.insert(b"short", b"w")?, Some(b"v".to_vec()));
/// assert_eq!(m.len(), 2);
/// assert!(m.delete(b"short")?);
/// # Ok::<(), offheap::Error>(())
/// ```
pub struct BytesMap {
    table: SwissTable<u64, Word, Rc<Region>>,
    arena: Arena<RegionSource>,
    region: Rc<Region>,
    hdr: NonNull<Header>,
    seed: u64,
    mask: u64,
    chunk_max: usize,
}

// SAFETY: every `Rc<Region>` clone (in `table`, `arena`, `region`) is owned by this map and
// moves with it, so no two threads ever touch the reference counts; `hdr` points into the
// region, which moves with the map too. The region itself is `Send`.
unsafe impl Send for BytesMap {}

impl std::fmt::Debug for BytesMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BytesMap")
            .field("len", &self.len())
            .field("region", &self.region)
            .finish()
    }
}

struct Cursor<'a> {
    parts: &'a [&'a [u8]],
    i: usize,
    off: usize,
}

impl Cursor<'_> {
    fn fill(&mut self, mut out: &mut [u8]) {
        while !out.is_empty() && self.i < self.parts.len() {
            let p = &self.parts[self.i][self.off..];
            let n = p.len().min(out.len());
            out[..n].copy_from_slice(&p[..n]);
            out = &mut out[n..];
            self.off += n;
            if self.off == self.parts[self.i].len() {
                self.i += 1;
                self.off = 0;
            }
        }
    }
}

impl BytesMap {
    // ------------------------------------------------------------------ construction

    /// An empty map in anonymous memory, with default options.
    pub fn anonymous() -> Result<Self, Error> {
        Self::anonymous_with(&BytesMapOptions::default())
    }

    /// An empty map in anonymous memory.
    pub fn anonymous_with(opts: &BytesMapOptions) -> Result<Self, Error> {
        let region = Region::anonymous_with(&opts.region)?;
        Self::create_in(region, opts)
    }

    /// Creates a map file at `path` (an error if it exists), with default options.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::create_with(path, &BytesMapOptions::default())
    }

    /// Creates a map file at `path` (an error if it exists).
    pub fn create_with(path: impl AsRef<Path>, opts: &BytesMapOptions) -> Result<Self, Error> {
        opts.config()?;
        let region = Region::create(path, &opts.region)?;
        Self::create_in(region, opts)
    }

    /// Opens the map file at `path`: no entry is read or rehashed; the table's header,
    /// directory and segment headers are validated (O(segments), one segment per 1800-3600
    /// entries).
    ///
    /// A file that nobody else has open opens even if its record says that a process has
    /// it open (a copy of a file in use, taken while that process lived): the map is
    /// repaired as after that process's death (see `offheap_swiss::SwissTable::take_over_in`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_fresh(Region::open_with(
            path,
            &RegionOptions::new().hold_alone(true),
        )?)
    }

    /// Opens the map at `path`, or creates it (with default options) if the file does not
    /// exist.
    pub fn open_or_create(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_or_create_with(path, &BytesMapOptions::default())
    }

    /// Opens the map at `path`, or creates it with `opts` if the file does not exist.
    pub fn open_or_create_with(
        path: impl AsRef<Path>,
        opts: &BytesMapOptions,
    ) -> Result<Self, Error> {
        opts.config()?;
        let region = Region::open_or_create(path, &opts.region.clone().hold_alone(true))?;
        if region.root(HDR_ROOT).is_some() {
            Self::open_fresh(region)
        } else {
            // Lets others' opens in, if this open found the file alone and held it so.
            drop(region.try_alone());
            Self::create_in(region, opts)
        }
    }

    /// Creates a map in `region` (which must not hold one already).
    pub fn create_in(region: Region, opts: &BytesMapOptions) -> Result<Self, Error> {
        let config = opts.config()?;
        if region.root(HDR_ROOT).is_some() || region.root(TABLE_ROOT).is_some() {
            return Err(Error::AlreadyExists);
        }
        let region = Rc::new(region);
        let arena = match opts.seed {
            Some(s) => Arena::create_in_tagged(RegionSource(region.clone()), config, s as u32),
            None => Arena::create_in(RegionSource(region.clone()), config),
        }?;
        let mut table_opts = offheap_swiss::TableOptions::new();
        if let Some(s) = opts.seed {
            // Derived, so that the table's seed differs from the map's own.
            table_opts = table_opts.seed(s ^ 0x9E37_79B9_7F4A_7C15);
        }
        let table = SwissTable::create_in_with(region.clone(), TABLE_ROOT, table_opts)?;
        let off = region.alloc(std::mem::size_of::<Header>() as u64, 8)?;
        let hdr: NonNull<Header> = region
            .ptr(off, std::mem::size_of::<Header>() as u64)?
            .cast();
        let mut h = Header {
            magic: MAGIC,
            version: VERSION,
            arena_root: arena.root(),
            seed: opts.seed.unwrap_or_else(offheap_swiss::random_seed),
            hash_mask: opts.hash_mask,
            check: 0,
            len: 0,
            tag: 0,
            tag_known: 0,
        };
        h.check = h.checksum();
        // SAFETY: `off` is a fresh block of size_of::<Header>() bytes aligned to 8.
        unsafe { hdr.as_ptr().write(h) };
        region.set_root(HDR_ROOT, Some(off))?;
        Ok(BytesMap {
            table,
            arena,
            region,
            hdr,
            seed: h.seed,
            mask: h.hash_mask,
            chunk_max: config.slab_size,
        })
    }

    /// [`open_in`](Self::open_in) for a region this handle has just opened: if nobody else
    /// has the file open, the table is taken over from whoever its record names, since
    /// that process does not use it (`open_in` cannot know that the region was not shared
    /// with a forked child since its open).
    fn open_fresh(region: Region) -> Result<Self, Error> {
        crate::region::open_fresh(region, Self::open_as)
    }

    /// Opens the map stored in `region`, validating its header, arena and table.
    pub fn open_in(region: Region) -> Result<Self, Error> {
        Self::open_as(region, false)
    }

    fn open_as(region: Region, take_over: bool) -> Result<Self, Error> {
        let off = region.root(HDR_ROOT).ok_or(Error::NotFound)?;
        let size = std::mem::size_of::<Header>() as u64;
        if off.get() % 8 != 0 || off.get() < region.data_start() {
            return Err(Error::Corrupt("header offset"));
        }
        let hdr: NonNull<Header> = region.ptr(off, size)?.cast();
        // SAFETY: `hdr` is inside the mapping, aligned, and Header is plain integers.
        let h = unsafe { hdr.as_ptr().read() };
        if h.magic != MAGIC {
            return Err(Error::Corrupt("bad magic"));
        }
        if h.version != VERSION {
            return Err(Error::Corrupt("unsupported version"));
        }
        if h.check != h.checksum() {
            return Err(Error::Corrupt("header checksum"));
        }
        let region = Rc::new(region);
        let arena = Arena::open_in(RegionSource(region.clone()), h.arena_root)?;
        let chunk_max = arena.config().slab_size;
        if chunk_max < MIN_SLAB {
            return Err(Error::Corrupt("arena slab size below 64 bytes"));
        }
        let table = if take_over {
            SwissTable::take_over_in(region.clone(), TABLE_ROOT)?
        } else {
            SwissTable::open_in(region.clone(), TABLE_ROOT)?
        };
        Ok(BytesMap {
            table,
            arena,
            region,
            hdr,
            seed: h.seed,
            mask: h.hash_mask,
            chunk_max,
        })
    }

    /// Writes every change to the backing file (`msync`); a no-op for anonymous maps.
    pub fn flush(&self) -> Result<(), Error> {
        Ok(self.region.flush()?)
    }

    /// The region holding the map.
    pub fn region(&self) -> &Region {
        &self.region
    }

    // ------------------------------------------------------------------ header

    fn header(&self) -> Header {
        // SAFETY: `hdr` points to the map's header block inside the mapping, which never
        // moves while the region lives; Header is plain integers.
        unsafe { self.hdr.as_ptr().read() }
    }

    fn set_len(&mut self, len: u64) {
        // SAFETY: as in `header`; `&mut self` excludes other accesses in this process.
        unsafe { (*self.hdr.as_ptr()).len = len };
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.header().len as usize
    }

    /// `true` if the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // ------------------------------------------------------------------ words

    fn key_word(&self, key: &[u8]) -> u64 {
        if key.len() <= 7 {
            pack7(key)
        } else {
            (xxh3_64_with_seed(key, self.seed) & self.mask) | LONG_KEY
        }
    }

    fn handle_word(&mut self, h: Handle) -> Word {
        let hd = self.header();
        if hd.tag_known == 0 {
            // SAFETY: as in `set_len`.
            unsafe {
                (*self.hdr.as_ptr()).tag = (h.to_bits() >> 96) as u64;
                (*self.hdr.as_ptr()).tag_known = 1;
            }
        }
        [h.slab_index(), h.chunk_index(), h.generation(), HANDLE_MARK]
    }

    fn word_handle(&self, w: &Word) -> Result<Handle, Error> {
        if w[3] != HANDLE_MARK {
            return Err(Error::Corrupt("expected a handle word"));
        }
        let tag = self.header().tag as u32;
        Ok(Handle::from_bits(
            (tag as u128) << 96 | (w[2] as u128) << 64 | (w[0] as u128) << 32 | w[1] as u128,
        ))
    }

    fn encode_value(&mut self, v: &[u8]) -> Result<Word, Error> {
        if v.len() <= INLINE_MAX {
            let mut w: Word = [0, 0, 0, v.len() as u32];
            bytemuck::cast_slice_mut::<u32, u8>(&mut w[..3])[..v.len()].copy_from_slice(v);
            Ok(w)
        } else {
            let h = self.blob_alloc(&[v])?;
            Ok(self.handle_word(h))
        }
    }

    fn with_word<R>(&self, w: &Word, f: impl FnOnce(&[u8]) -> R) -> Result<R, Error> {
        let n = w[3] as usize;
        if n <= INLINE_MAX {
            Ok(f(&bytemuck::cast_slice::<u32, u8>(&w[..3])[..n]))
        } else {
            let h = self.word_handle(w)?;
            self.blob_with(h, f)
        }
    }

    fn free_word(&mut self, w: &Word) -> Result<(), Error> {
        if w[3] as usize > INLINE_MAX {
            let h = self.word_handle(w)?;
            self.arena.dec_ref(h)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ blobs

    /// Stores the concatenation of `parts` as a blob (one chunk or a chain).
    fn blob_alloc(&mut self, parts: &[&[u8]]) -> Result<Handle, Error> {
        let content: usize = parts.iter().map(|p| p.len()).sum();
        let prefix = (content as u64).to_le_bytes();
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(&prefix);
        all.extend_from_slice(parts);
        let mut cur = Cursor {
            parts: &all,
            i: 0,
            off: 0,
        };
        let mut remaining = BLOB_PREFIX + content;
        let mut head: Option<Handle> = None;
        let mut tail: Option<Handle> = None;
        let r = (|| -> Result<(), Error> {
            while remaining > 0 {
                let n = remaining.min(self.chunk_max);
                let h = self.arena.alloc(n)?;
                cur.fill(self.arena.bytes_mut(h)?);
                match tail {
                    None => head = Some(h),
                    Some(t) => {
                        let linked = self.arena.set_next(t, Some(h));
                        // The chain now holds `h` (or, on error, nothing does): drop ours.
                        self.arena.dec_ref(h)?;
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
                    let _ = self.arena.dec_ref(h);
                }
                Err(e)
            }
        }
    }

    /// Visits the blob's content, skipping its first `skip` bytes, in pieces; `visit`
    /// returns `false` to stop. Returns the content length.
    fn blob_pieces(
        &self,
        h: Handle,
        mut skip: usize,
        mut visit: impl FnMut(&[u8]) -> bool,
    ) -> Result<usize, Error> {
        let first = self.arena.bytes(h)?;
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
            let piece_now = &piece[..n];
            left -= n;
            if skip >= n {
                skip -= n;
            } else {
                if !visit(&piece_now[skip..]) {
                    return Ok(total);
                }
                skip = 0;
            }
            if left == 0 {
                return Ok(total);
            }
            match self.arena.peek_next(h)? {
                Some(next) => {
                    h = next;
                    piece = self.arena.bytes(h)?;
                    if piece.is_empty() {
                        return Err(Error::Corrupt("empty chunk in a blob chain"));
                    }
                }
                None => return Err(Error::Corrupt("blob chain shorter than its length")),
            }
        }
    }

    /// Calls `f` with the blob's content: borrowed from the arena if it is one chunk,
    /// otherwise gathered into a temporary `Vec`.
    fn blob_with<R>(&self, h: Handle, f: impl FnOnce(&[u8]) -> R) -> Result<R, Error> {
        let first = self.arena.bytes(h)?;
        if first.len() >= BLOB_PREFIX {
            let total = u64::from_le_bytes(first[..BLOB_PREFIX].try_into().unwrap_or([0; 8]));
            if total <= (first.len() - BLOB_PREFIX) as u64 {
                return Ok(f(&first[BLOB_PREFIX..BLOB_PREFIX + total as usize]));
            }
        }
        let mut v = Vec::new();
        self.blob_pieces(h, 0, |p| {
            v.extend_from_slice(p);
            true
        })?;
        Ok(f(&v))
    }

    // ------------------------------------------------------------------ records

    fn rec_header(&self, h: Handle) -> Result<(Word, Word), Error> {
        let b = self.arena.bytes(h)?;
        let hdr = b
            .get(BLOB_PREFIX..BLOB_PREFIX + REC_HDR)
            .ok_or(Error::Corrupt("record shorter than its header"))?;
        let mut next: Word = [0; 4];
        let mut val: Word = [0; 4];
        bytemuck::bytes_of_mut(&mut next).copy_from_slice(&hdr[..16]);
        bytemuck::bytes_of_mut(&mut val).copy_from_slice(&hdr[16..]);
        Ok((next, val))
    }

    fn rec_key_eq(&self, h: Handle, key: &[u8]) -> Result<bool, Error> {
        let mut pos = 0usize;
        let mut eq = true;
        let total = self.blob_pieces(h, REC_HDR, |p| {
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

    fn rec_key(&self, h: Handle) -> Result<Vec<u8>, Error> {
        let mut v = Vec::new();
        self.blob_pieces(h, REC_HDR, |p| {
            v.extend_from_slice(p);
            true
        })?;
        Ok(v)
    }

    /// Finds a long key's record: `(previous record, record, its next word, its value)`.
    #[allow(clippy::type_complexity)]
    fn find_long(
        &self,
        kw: u64,
        key: &[u8],
    ) -> Result<Option<(Option<Handle>, Handle, Word, Word)>, Error> {
        let Some(&first) = self.table.get(&kw) else {
            return Ok(None);
        };
        let mut prev = None;
        let mut cur = first;
        // A list longer than the map is a cycle in corrupt memory.
        for _ in 0..=self.len() {
            let h = self.word_handle(&cur)?;
            let (next, val) = self.rec_header(h)?;
            if self.rec_key_eq(h, key)? {
                return Ok(Some((prev, h, next, val)));
            }
            if next[3] == NONE_MARK {
                return Ok(None);
            }
            prev = Some(h);
            cur = next;
        }
        Err(Error::Corrupt("record list longer than the map"))
    }

    // ------------------------------------------------------------------ operations

    /// Calls `f` with the value of `key`, without copying it when it is inline or in one
    /// chunk (a value chained over several chunks, longer than the slab size, is gathered
    /// into a temporary buffer first). `None` if the key is absent.
    pub fn get_with<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, Error> {
        let kw = self.key_word(key);
        if kw & LONG_KEY == 0 {
            match self.table.get(&kw) {
                Some(w) => self.with_word(w, f).map(Some),
                None => Ok(None),
            }
        } else {
            match self.find_long(kw, key)? {
                Some((_, _, _, val)) => self.with_word(&val, f).map(Some),
                None => Ok(None),
            }
        }
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
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.insert_impl(key, value, true).map(|(_, old)| old)
    }

    /// Inserts or replaces (upsert); returns whether a value was replaced (without reading
    /// it).
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<bool, Error> {
        self.insert_impl(key, value, false)
            .map(|(existed, _)| existed)
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.remove_impl(key, true).map(|(_, old)| old)
    }

    /// Removes `key`; returns whether it was present (without reading its value).
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, Error> {
        self.remove_impl(key, false).map(|(existed, _)| existed)
    }

    fn take_word(&mut self, w: &Word, want: bool) -> Result<Option<Vec<u8>>, Error> {
        let old = if want {
            Some(self.with_word(w, <[u8]>::to_vec)?)
        } else {
            None
        };
        self.free_word(w)?;
        Ok(old)
    }

    fn insert_impl(
        &mut self,
        key: &[u8],
        value: &[u8],
        want: bool,
    ) -> Result<(bool, Option<Vec<u8>>), Error> {
        check_lens(key, value)?;
        let kw = self.key_word(key);
        if kw & LONG_KEY == 0 {
            if want || value.len() > INLINE_MAX {
                if let Some(&old) = self.table.get(&kw) {
                    // Replace: new value first, then free the old one.
                    let vw = self.encode_value(value)?;
                    let out = self.with_word(&old, <[u8]>::to_vec);
                    if let Some(slot) = self.table.get_mut(&kw) {
                        *slot = vw;
                    }
                    self.free_word(&old)?;
                    return Ok((true, Some(out?).filter(|_| want)));
                }
            }
            let vw = self.encode_value(value)?;
            return match self.table.try_insert(kw, vw) {
                Ok(Some(old)) => Ok((true, self.take_word(&old, want)?)),
                Ok(None) => {
                    let n = self.header().len + 1;
                    self.set_len(n);
                    Ok((false, None))
                }
                Err(e) => {
                    let _ = self.free_word(&vw);
                    Err(e.into())
                }
            };
        }
        let vw = self.encode_value(value)?;
        match self.find_long(kw, key) {
            Ok(Some((_, rec, _, old))) => {
                let out = if want {
                    self.with_word(&old, <[u8]>::to_vec).map(Some)
                } else {
                    Ok(None)
                };
                self.arena
                    .write(rec, BLOB_PREFIX + 16, bytemuck::bytes_of(&vw))?;
                self.free_word(&old)?;
                Ok((true, out?))
            }
            Ok(None) => {
                let next = self.table.get(&kw).copied().unwrap_or(NONE_WORD);
                let rec = match self.blob_alloc(&[
                    bytemuck::bytes_of(&next),
                    bytemuck::bytes_of(&vw),
                    key,
                ]) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = self.free_word(&vw);
                        return Err(e);
                    }
                };
                let rw = self.handle_word(rec);
                if let Err(e) = self.table.try_insert(kw, rw) {
                    let _ = self.arena.dec_ref(rec);
                    let _ = self.free_word(&vw);
                    return Err(e.into());
                }
                let n = self.header().len + 1;
                self.set_len(n);
                Ok((false, None))
            }
            Err(e) => {
                let _ = self.free_word(&vw);
                Err(e)
            }
        }
    }

    fn remove_impl(&mut self, key: &[u8], want: bool) -> Result<(bool, Option<Vec<u8>>), Error> {
        let kw = self.key_word(key);
        if kw & LONG_KEY == 0 {
            return match self.table.remove(&kw) {
                Some(w) => {
                    let n = self.header().len.saturating_sub(1);
                    self.set_len(n);
                    Ok((true, self.take_word(&w, want)?))
                }
                None => Ok((false, None)),
            };
        }
        let Some((prev, rec, next, val)) = self.find_long(kw, key)? else {
            return Ok((false, None));
        };
        match prev {
            None if next[3] == NONE_MARK => {
                self.table.remove(&kw);
            }
            None => {
                self.table.try_insert(kw, next)?;
            }
            Some(p) => self
                .arena
                .write(p, BLOB_PREFIX, bytemuck::bytes_of(&next))?,
        }
        let n = self.header().len.saturating_sub(1);
        self.set_len(n);
        let out = self.take_word(&val, want)?;
        self.arena.dec_ref(rec)?;
        Ok((true, out))
    }

    /// Iterates over all pairs (copies), in no particular order. An item is an error only
    /// if the map's memory is corrupt.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            map: self,
            inner: self.table.iter(),
            pending: None,
        }
    }

    /// Calls `f` with every pair, borrowing keys and values when they are inline or in one
    /// chunk (no copy).
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) -> Result<(), Error> {
        for (&kw, w) in self.table.iter() {
            if kw & LONG_KEY == 0 {
                let k = short_key(kw)?;
                self.with_word(w, |v| f(&k.0[..k.1], v))?;
            } else {
                let mut cur = *w;
                for _ in 0..=self.len() {
                    let h = self.word_handle(&cur)?;
                    let (next, val) = self.rec_header(h)?;
                    let key = self.rec_key(h)?;
                    self.with_word(&val, |v| f(&key, v))?;
                    if next[3] == NONE_MARK {
                        break;
                    }
                    cur = next;
                }
            }
        }
        Ok(())
    }

    /// Removes every entry, one by one (bounded work per entry).
    pub fn clear(&mut self) -> Result<(), Error> {
        let keys: Vec<Vec<u8>> = self
            .iter()
            .map(|r| r.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        for k in keys {
            self.delete(&k)?;
        }
        Ok(())
    }

    /// Compacts the table (drops tombstones, merges sparse segments), giving memory back.
    pub fn shrink_to_fit(&mut self) {
        self.table.shrink_to_fit();
    }

    /// Checks the index table (`offheap_swiss::SwissTable::check`), the arena, the region
    /// and every entry; returns an error describing the first inconsistency. Every pair is
    /// read (O(capacity + bytes stored)): a long key's record
    /// must hold a key whose key word is the slot's, every value must be readable, a
    /// record list may not run past the map's length, the pairs must number
    /// [`len`](Self::len), and the chunks of their records and values must be exactly the
    /// arena's chunks in use (none leaked, none shared).
    ///
    /// ```
    /// let mut m = offheap::BytesMap::anonymous()?;
    /// m.insert(b"a key longer than seven bytes", b"v")?;
    /// m.check()?;
    /// # Ok::<(), offheap::Error>(())
    /// ```
    pub fn check(&self) -> Result<(), Error> {
        self.table.check()?;
        let in_use = self.arena.check()?.chunks_in_use;
        self.region.check()?;
        let len = self.len();
        let (mut pairs, mut chunks) = (0usize, std::collections::HashSet::new());
        for (&kw, w) in self.table.iter() {
            if kw & LONG_KEY == 0 {
                short_key(kw)?;
                self.with_word(w, |_| ())?;
                self.count_chunks(w, in_use, &mut chunks)?;
                pairs += 1;
                continue;
            }
            let mut cur = *w;
            loop {
                if pairs >= len {
                    return Err(Error::Corrupt("more pairs than the map's length"));
                }
                let h = self.word_handle(&cur)?;
                let (next, val) = self.rec_header(h)?;
                if self.key_word(&self.rec_key(h)?) != kw {
                    return Err(Error::Corrupt("a record's key does not belong to its slot"));
                }
                self.with_word(&val, |_| ())?;
                self.count_chunks(&cur, in_use, &mut chunks)?;
                self.count_chunks(&val, in_use, &mut chunks)?;
                pairs += 1;
                if next[3] == NONE_MARK {
                    break;
                }
                cur = next;
            }
        }
        match pairs.cmp(&len) {
            std::cmp::Ordering::Less => Err(Error::Corrupt("fewer pairs than the map's length")),
            std::cmp::Ordering::Greater => Err(Error::Corrupt("more pairs than the map's length")),
            std::cmp::Ordering::Equal if chunks.len() != in_use => Err(Error::Corrupt(
                "arena chunks in use that no pair references",
            )),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// Adds the chunks of the blob (or record) a word names, if it names one, to `seen`; an
    /// error for a chunk already there (a chain shared by two words, or a cycle), or once
    /// they exceed `in_use`, the arena's chunks in use.
    fn count_chunks(
        &self,
        w: &Word,
        in_use: usize,
        seen: &mut std::collections::HashSet<u128>,
    ) -> Result<(), Error> {
        if w[3] != HANDLE_MARK {
            return Ok(());
        }
        let mut next = Some(self.word_handle(w)?);
        while let Some(h) = next {
            if !seen.insert(h.to_bits()) {
                return Err(Error::Corrupt(
                    "an arena chunk referenced twice (a shared or cyclic chain)",
                ));
            }
            if seen.len() > in_use {
                return Err(Error::Corrupt("more arena chunks referenced than in use"));
            }
            next = self.arena.peek_next(h)?;
        }
        Ok(())
    }
}

fn short_key(kw: u64) -> Result<([u8; 8], usize), Error> {
    let b = kw.to_le_bytes();
    let n = b[7] as usize;
    if n > 7 {
        return Err(Error::Corrupt("short key length"));
    }
    Ok((b, n))
}

/// Iterator over a [`BytesMap`]'s pairs; see [`BytesMap::iter`].
pub struct Iter<'a> {
    map: &'a BytesMap,
    inner: offheap_swiss::Iter<'a, u64, Word, Rc<Region>, offheap_swiss::Xxh3>,
    pending: Option<Word>,
}

impl Iter<'_> {
    fn record(&mut self, w: Word) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let h = self.map.word_handle(&w)?;
        let (next, val) = self.map.rec_header(h)?;
        if next[3] != NONE_MARK {
            self.pending = Some(next);
        }
        let key = self.map.rec_key(h)?;
        let v = self.map.with_word(&val, <[u8]>::to_vec)?;
        Ok((key, v))
    }
}

impl Iterator for Iter<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(w) = self.pending.take() {
            return Some(self.record(w));
        }
        let (&kw, w) = self.inner.next()?;
        if kw & LONG_KEY == 0 {
            Some(short_key(kw).and_then(|(b, n)| {
                let v = self.map.with_word(w, <[u8]>::to_vec)?;
                Ok((b[..n].to_vec(), v))
            }))
        } else {
            let w = *w;
            Some(self.record(w))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{pack7, BytesMap, Error};

    #[test]
    fn check_reads_every_pair() {
        let mut m = BytesMap::anonymous().unwrap();
        let long = |i: u32| format!("a key longer than seven bytes, {i}").into_bytes();
        for i in 0..40u32 {
            m.insert(&long(i), &[i as u8; 30]).unwrap();
            m.insert(&i.to_le_bytes(), b"short").unwrap();
        }
        m.check().unwrap();

        // A length the pairs do not add up to, either way.
        let len = m.len() as u64;
        m.set_len(len + 1);
        assert!(matches!(m.check(), Err(Error::Corrupt(w)) if w.contains("fewer")));
        m.set_len(len - 1);
        assert!(matches!(m.check(), Err(Error::Corrupt(w)) if w.contains("more")));
        m.set_len(len);
        m.check().unwrap();

        // Two long keys' slots holding each other's records.
        let (a, b) = (m.key_word(&long(1)), m.key_word(&long(2)));
        let wa = *m.table.get(&a).unwrap();
        let wb = std::mem::replace(m.table.get_mut(&b).unwrap(), wa);
        *m.table.get_mut(&a).unwrap() = wb;
        assert!(matches!(m.check(), Err(Error::Corrupt(w)) if w.contains("belong")));
        *m.table.get_mut(&a).unwrap() = wa;
        *m.table.get_mut(&b).unwrap() = wb;
        m.check().unwrap();

        // A chunk that no pair references: leaked.
        let leaked = m.arena.alloc(40).unwrap();
        assert!(matches!(m.check(), Err(Error::Corrupt(w)) if w.contains("no pair references")));
        m.arena.dec_ref(leaked).unwrap();
        m.check().unwrap();

        // One value's blob named by a second pair too: shared.
        let (c, d) = (m.key_word(&long(3)), m.key_word(&long(4)));
        let rec = |m: &BytesMap, kw| m.word_handle(m.table.get(&kw).unwrap()).unwrap();
        let (rc, rd) = (rec(&m, c), rec(&m, d));
        let (_, vc) = m.rec_header(rc).unwrap();
        let (_, vd) = m.rec_header(rd).unwrap();
        let set_val = |m: &mut BytesMap, r, v: super::Word| {
            m.arena.bytes_mut(r).unwrap()[super::BLOB_PREFIX + 16..][..16]
                .copy_from_slice(bytemuck::bytes_of(&v));
        };
        set_val(&mut m, rd, vc);
        assert!(matches!(m.check(), Err(Error::Corrupt(w)) if w.contains("referenced twice")));
        set_val(&mut m, rd, vd);
        m.check().unwrap();
    }

    /// The word layout pack7 must produce: the bytes little-endian, the length in the top
    /// byte.
    fn reference(b: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        w[7] = b.len() as u8;
        u64::from_le_bytes(w)
    }

    #[test]
    fn pack7_matches_the_byte_layout() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            for n in 0..=7 {
                assert_eq!(
                    pack7(&bytes[..n]),
                    reference(&bytes[..n]),
                    "{:?}",
                    &bytes[..n]
                );
            }
        }
        assert_eq!(pack7(&[0xFF; 7]), 0x07FF_FFFF_FFFF_FFFF);
    }
}
