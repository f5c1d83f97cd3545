//! The public table type.

use crate::group::GROUP_WIDTH;
use crate::hash::{random_seed, SeededHash, Xxh3};
use crate::memory::{DefaultMemory, TableMemory};
use crate::raw::{find_in, key_eq, prefetch, tag, RawTable, SegRef, Slot, MAX_GROUPS_LIMIT};
use crate::Error;
use bytemuck::Pod;
use core::fmt;
use core::marker::PhantomData;

/// Default slots per segment: 4096 (256 groups; about 70 KB for `u64 -> u64`). A segment
/// splits when it holds 7/8 of that, so no single insert moves more than 3584 entries.
pub const DEFAULT_SEGMENT_SLOTS: usize = 4096;

/// Options for a new table.
#[derive(Clone, Debug)]
pub struct TableOptions {
    segment_slots: usize,
    seed: Option<u64>,
    capacity: usize,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions {
            segment_slots: DEFAULT_SEGMENT_SLOTS,
            seed: None,
            capacity: 0,
        }
    }
}

impl TableOptions {
    /// Default options: 4096-slot segments, a random seed, no reserved capacity.
    pub fn new() -> TableOptions {
        TableOptions::default()
    }
    /// Slots of a full-size segment: a power of two from 16 to 2^20. Smaller segments make
    /// the worst insert cheaper and the directory larger.
    pub fn segment_slots(mut self, n: usize) -> TableOptions {
        self.segment_slots = n;
        self
    }
    /// A fixed hash seed (the default is random per table).
    pub fn seed(mut self, seed: u64) -> TableOptions {
        self.seed = Some(seed);
        self
    }
    /// Entries to make room for up front.
    pub fn capacity(mut self, n: usize) -> TableOptions {
        self.capacity = n;
        self
    }

    fn max_groups(&self) -> Result<usize, Error> {
        let n = self.segment_slots;
        if !n.is_power_of_two() || !(16..=MAX_GROUPS_LIMIT * 16).contains(&n) {
            return Err(Error::InvalidOptions(
                "segment_slots must be a power of two from 16 to 2^20",
            ));
        }
        Ok(n / 16)
    }
}

/// Sizes of a table's parts, from [`SwissTable::stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableStats {
    /// Entries.
    pub len: usize,
    /// Segments.
    pub segments: usize,
    /// Global depth of the directory (it has `2^global_depth` entries).
    pub global_depth: u32,
    /// Slots over all segments.
    pub slots: usize,
    /// Tombstones (`DELETED` control bytes) over all segments.
    pub tombstones: usize,
    /// Bytes of the table's blocks (segments, stored directory, header), not counting the
    /// memory's own overhead or the in-process directory mirror.
    pub bytes: usize,
}

/// What [`SwissTable::open_in`] repaired in a table that a process left open when it ended
/// (it was killed, or exited without dropping the table); see
/// [`SwissTable::repair_report`].
///
/// Inserts and removes are atomic with respect to a process dying at any instruction: each
/// entry is written whole before its control byte says so. What a dead process can leave
/// behind is a structural change half done (a split, rebuild or merge: a directory range
/// whose entries disagree), a replacement of a value of more than 8 bytes half written
/// (recorded, with the old value, in the header block), and segment counters one off.
/// `open_in` finishes or undoes the first, undoes the second and recounts the third.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Directory ranges whose entries disagreed (a split, rebuild or merge cut short).
    pub ranges: usize,
    /// Entries moved to finish a merge that was cut short.
    pub moved: usize,
    /// Segments freed that no directory entry names any more.
    pub freed: usize,
    /// Segments whose stored counters disagreed with their control bytes.
    pub recounted: usize,
    /// Replacements of a value that were cut short and undone: the value is the one before
    /// (see [`SwissTable::insert`]). At most 1.
    pub undone: usize,
}

/// A SwissTable of plain-old-data keys and values, stored inline in a [`TableMemory`]
/// (by default an anonymous [`offheap_mmap::Region`]).
///
/// Keys are compared and hashed by their bytes (`bytemuck::bytes_of`), so `K` must have no
/// padding ([`Pod`] guarantees it); for float keys, `0.0` and `-0.0` are different keys.
///
/// The table is a directory of segments (extendible hashing): a full segment splits into two
/// and sparse buddies merge, so no insert or remove moves more than one segment.
///
/// ```
/// use offheap_swiss::SwissTable;
/// let mut t: SwissTable<u64, u32> = SwissTable::new();
/// assert_eq!(t.insert(1, 10), None);
/// assert_eq!(t.insert(1, 11), Some(10));
/// *t.entry(2).or_insert(0) += 5;
/// assert_eq!(t.get(&2), Some(&5));
/// assert_eq!(t.remove(&1), Some(11));
/// assert_eq!(t.len(), 1);
/// ```
pub struct SwissTable<K, V, M: TableMemory = DefaultMemory, H = Xxh3> {
    raw: RawTable<K, V, M, H>,
}

// SAFETY: the table owns its blocks through `M`; moving it moves `M` (which must be `Send`)
// and the resolved addresses stay valid (blocks never move). Keys and values are Pod.
unsafe impl<K: Send, V: Send, M: TableMemory + Send, H> Send for SwissTable<K, V, M, H> {}

impl<K: Pod, V: Pod> SwissTable<K, V> {
    /// An empty table in a fresh anonymous region.
    ///
    /// # Panics
    /// If the region cannot be created (see [`try_new`](Self::try_new)).
    pub fn new() -> Self {
        Self::try_new().expect("offheap-swiss: cannot create the table's memory")
    }

    /// An empty table in a fresh anonymous region, or the error that prevented it.
    pub fn try_new() -> Result<Self, Error> {
        Self::with_options_in(TableOptions::new(), crate::memory::default_memory()?)
    }

    /// An empty table with room for `n` entries.
    ///
    /// # Panics
    /// If the memory cannot be created or `n` entries cannot fit.
    pub fn with_capacity(n: usize) -> Self {
        let mem = crate::memory::default_memory()
            .expect("offheap-swiss: cannot create the table's memory");
        Self::with_options_in(TableOptions::new().capacity(n), mem)
            .expect("offheap-swiss: cannot reserve capacity")
    }
}

impl<K: Pod, V: Pod> Default for SwissTable<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> SwissTable<K, V, M, H> {
    /// An empty table in `mem`.
    ///
    /// # Panics
    /// If `mem` cannot allocate the first segment.
    pub fn new_in(mem: M) -> Self {
        Self::with_options_in(TableOptions::new(), mem)
            .expect("offheap-swiss: cannot allocate the table")
    }

    /// An empty table in `mem` with room for `n` entries.
    ///
    /// # Panics
    /// If `mem` cannot allocate them.
    pub fn with_capacity_in(n: usize, mem: M) -> Self {
        Self::with_options_in(TableOptions::new().capacity(n), mem)
            .expect("offheap-swiss: cannot allocate the table")
    }

    /// An empty table in `mem` with `opts`.
    pub fn with_options_in(opts: TableOptions, mem: M) -> Result<Self, Error> {
        let max_groups = opts.max_groups()?;
        let seed = opts.seed.unwrap_or_else(random_seed);
        let mut raw = RawTable::new(mem, seed, max_groups)?;
        if opts.capacity > 0 {
            if let Err(e) = raw.reserve_total(opts.capacity) {
                raw.free_all();
                return Err(e);
            }
        }
        Ok(SwissTable { raw })
    }

    /// Creates a table in `mem` whose header is stored under the root `name`, so that
    /// [`open_in`](Self::open_in) finds it again (in a file-backed region, after a restart).
    /// Fails with [`Error::RootExists`] if the name is taken.
    pub fn create_in(mem: M, name: &str) -> Result<Self, Error> {
        Self::create_in_with(mem, name, TableOptions::new())
    }

    /// [`create_in`](Self::create_in) with options.
    pub fn create_in_with(mem: M, name: &str, opts: TableOptions) -> Result<Self, Error> {
        if mem.root(name).is_some() {
            return Err(Error::RootExists(name.to_owned()));
        }
        let capacity = opts.capacity;
        let mut t = Self::with_options_in(opts.capacity(0), mem)?;
        // Claimed before it is named, so that no other open can take it in between. On
        // failure `t` has no root name, so dropping it frees its blocks.
        t.raw.claim_new()?;
        t.raw.mem.set_root(name, Some(t.raw.header_handle()))?;
        t.raw.root = Some(name.to_owned());
        // The room after the name: the reserve's splits record every block they take in the
        // header, so a process killed in the middle leaves a table that `open_in` repairs.
        // Reserved before the name, a kill there left every segment allocated so far
        // unreachable (a whole table's worth, for a large capacity).
        if capacity > 0 {
            if let Err(e) = t.raw.reserve_total(capacity) {
                // Failed, not killed: the table goes, name and blocks, as if never created.
                let _ = t.destroy();
                return Err(e);
            }
        }
        Ok(t)
    }

    /// Opens the table stored under the root `name` in `mem`. O(segments): reads and checks
    /// the header, the directory and each segment's header (never the entries). Wrong
    /// key/value types, another hash function, or anything inconsistent gives an error.
    ///
    /// A table that a process left open when it ended (it was killed, or exited without
    /// dropping the table) is repaired first: a split, rebuild or merge it was in the middle
    /// of is finished or undone, a value replacement cut short is undone, and the segments'
    /// counters are recounted from their control bytes, which reads every control byte
    /// (O(capacity / 16)). [`repair_report`](Self::repair_report)
    /// says what was done. Every operation that returned before the process died is in the
    /// table, and an insert or removal in flight is whole or absent (a bulk operation in
    /// flight, such as `clear`, `retain`, `drain` or `extend`, may be partly done).
    ///
    /// A table has one user at a time: while a process that is still alive has it open,
    /// `open_in` fails with [`Error::InUse`]. That includes this process: a second handle to
    /// a table open here (through the same region, or another mapping of its file) is
    /// refused, and so is a table whose handle was leaked with `mem::forget` (it is in use
    /// until the process ends). A failed `open_in` leaves the table as it found it.
    ///
    /// ```
    /// use offheap_mmap::Region;
    /// use offheap_swiss::{Error, SwissTable};
    ///
    /// let region = Region::anonymous()?;
    /// let t = SwissTable::<u64, u64, &Region>::create_in(&region, "t")?;
    /// let again = SwissTable::<u64, u64, &Region>::open_in(&region, "t");
    /// assert!(matches!(again, Err(Error::InUse { pid }) if pid == std::process::id()));
    /// drop(t);
    /// assert!(SwissTable::<u64, u64, &Region>::open_in(&region, "t").is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_in(mem: M, name: &str) -> Result<Self, Error> {
        Self::open_as(mem, name, false)
    }

    /// [`open_in`](Self::open_in) for a caller that knows that no handle, of any process,
    /// uses the table: a table recorded as open is taken over and repaired as if its user
    /// had died, whether that process lives or not (this one included). For a region file
    /// that the caller has just opened and has alone
    /// ([`Region::try_alone`](offheap_mmap::Region::try_alone)), whose record of a user
    /// then comes from a copy of the file taken while it was open, or from a hostile file;
    /// `open_in` refuses such a table with [`Error::InUse`] while the process it names
    /// lives. Misused, two handles write one table and corrupt it.
    ///
    /// ```
    /// use offheap_mmap::{Region, RegionOptions};
    /// use offheap_swiss::{Error, SwissTable};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let (live, copy) = (dir.path().join("live"), dir.path().join("copy"));
    /// let mut t = SwissTable::<u64, u64>::create_in(Region::create(&live, &RegionOptions::new())?, "t")?;
    /// t.insert(1, 2);
    /// std::fs::copy(&live, &copy)?; // records `t`'s handle, open in this process
    /// let refused = SwissTable::<u64, u64>::open_in(Region::open(&copy)?, "t");
    /// assert!(matches!(refused, Err(Error::InUse { .. })));
    /// let region = Region::open(&copy)?;
    /// let alone = region.try_alone();
    /// # if alone.is_some() {
    /// let c = SwissTable::<u64, u64>::take_over_in(region, "t")?;
    /// drop(alone);
    /// assert_eq!(c.get(&1), Some(&2));
    /// assert!(c.repair_report().is_some());
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn take_over_in(mem: M, name: &str) -> Result<Self, Error> {
        Self::open_as(mem, name, true)
    }

    fn open_as(mem: M, name: &str, take_over: bool) -> Result<Self, Error> {
        let h = mem
            .root(name)
            .ok_or_else(|| Error::RootNotFound(name.to_owned()))?;
        let mut raw = RawTable::open(mem, h, take_over)?;
        raw.root = Some(name.to_owned());
        Ok(SwissTable { raw })
    }

    /// Test-only: forgets this handle's registration as open in this process, as if the
    /// process had died (the table is then forgotten, and reopened in the same process).
    #[cfg(test)]
    pub(crate) fn simulate_death(&mut self) {
        self.raw.die();
    }

    /// What `open_in` repaired: `None` if the table had been closed cleanly (dropped), else
    /// what a process that died with it open had left half done (see [`RepairReport`]).
    ///
    /// ```
    /// use offheap_mmap::Region;
    /// use offheap_swiss::SwissTable;
    ///
    /// let region = Region::anonymous()?;
    /// let mut t = SwissTable::<u64, u64, &Region>::create_in(&region, "t")?;
    /// t.insert(1, 2);
    /// drop(t);
    /// let t = SwissTable::<u64, u64, &Region>::open_in(&region, "t")?;
    /// assert_eq!(t.repair_report(), None); // it was closed cleanly
    /// assert_eq!(t.get(&1), Some(&2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn repair_report(&self) -> Option<RepairReport> {
        self.raw.repaired
    }

    /// Removes the table's root name (if it has one) and frees every block of the table. If
    /// the name cannot be removed, nothing is freed and the error comes back.
    pub fn destroy(self) -> Result<(), Error> {
        let mut this = core::mem::ManuallyDrop::new(self);
        // The name first: a process killed while freeing leaks blocks, rather than leaving
        // a name that leads to freed ones.
        let r = match this.raw.root.take() {
            Some(n) => this.raw.mem.set_root(&n, None),
            None => Ok(()),
        };
        if r.is_ok() {
            this.raw.free_all();
        }
        // SAFETY: `this` is never used again and its `Drop` never runs; reading the raw table
        // out once drops the memory handle, the directory mirror and the name.
        drop(unsafe { core::ptr::read(&this.raw) });
        r
    }

    /// The memory the table lives in.
    pub fn memory(&self) -> &M {
        &self.raw.mem
    }

    /// The hash seed (stored with the table).
    pub fn seed(&self) -> u64 {
        self.raw.seed
    }

    /// Number of entries.
    #[inline]
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the table holds no entry.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries the table holds before its next split or growth (sum over segments of 7/8 of
    /// their slots). O(segments).
    pub fn capacity(&self) -> usize {
        self.stats().slots / 8 * 7
    }

    /// Checks every entry against the table's structure, and returns the first
    /// inconsistency as [`Error::Corrupt`]. O(capacity): every control byte is read, and
    /// every key hashed and looked up.
    ///
    /// What it requires, beyond what [`open_in`](Self::open_in) checks (the header, the
    /// directory and each segment's header, no entry):
    /// - each directory range names one segment;
    /// - a full slot's control byte is its key's tag, the key belongs to its segment's range
    ///   of the directory, and a lookup of the key finds this slot (no duplicate key, and no
    ///   empty slot that would end the probe before it);
    /// - every control byte is empty, a tombstone or a tag, and each segment's counters of
    ///   entries and tombstones are what its control bytes hold;
    /// - the entries number [`len`](Self::len).
    ///
    /// A table that only this crate's operations have touched always passes: the tests run
    /// it after every sequence of operations. A file from an untrusted source can be opened
    /// and checked before use (with `offheap_mmap::Region::check` for its region).
    ///
    /// ```
    /// use offheap_swiss::SwissTable;
    ///
    /// let mut t = SwissTable::<u64, u64>::new();
    /// t.extend((0..10_000).map(|i| (i, i)));
    /// t.retain(|k, _| k % 3 != 0);
    /// t.check()?;
    /// # Ok::<(), offheap_swiss::Error>(())
    /// ```
    pub fn check(&self) -> Result<(), Error> {
        self.raw.check()
    }

    /// Sizes of the table's parts. O(segments).
    pub fn stats(&self) -> TableStats {
        let (segments, slots, tombstones, bytes) = self.raw.stats();
        TableStats {
            len: self.len(),
            segments,
            global_depth: self.raw.global_depth(),
            slots,
            tombstones,
            bytes,
        }
    }

    /// The value of `key`.
    #[inline(always)]
    pub fn get(&self, key: &K) -> Option<&V> {
        let h = self.raw.hash(key);
        let s = self.raw.find_slot(h, key)?;
        // SAFETY: a found slot is full and lives as long as `&self`.
        Some(unsafe { &(*s.as_ptr()).value })
    }

    /// The stored key and value of `key`.
    #[inline(always)]
    pub fn get_key_value(&self, key: &K) -> Option<(&K, &V)> {
        let h = self.raw.hash(key);
        let s = self.raw.find_slot(h, key)?;
        // SAFETY: as in `get`.
        let s = unsafe { &*s.as_ptr() };
        Some((&s.key, &s.value))
    }

    /// The value of `key`, mutably.
    #[inline(always)]
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let h = self.raw.hash(key);
        let s = self.raw.find_slot(h, key)?;
        // SAFETY: a found slot is full; `&mut self` makes the borrow unique.
        Some(unsafe { &mut (*s.as_ptr()).value })
    }

    /// Whether `key` is present.
    #[inline(always)]
    pub fn contains_key(&self, key: &K) -> bool {
        let h = self.raw.hash(key);
        self.raw.find(h, key).is_some()
    }

    /// Inserts `key -> value`, returning the previous value.
    ///
    /// In a named table (one made by [`create_in`](Self::create_in) or
    /// [`open_in`](Self::open_in), which outlives the process), replacing a value of more than
    /// 8 bytes first copies the old value to an undo area of the table's header block and
    /// records the slot there, so that a process killed at any instruction leaves the old
    /// value or the new one, never a mix of both: `open_in` puts the old value back if the
    /// record is still there (a value of at most 8 bytes is written by one store). Writes
    /// through [`get_mut`](Self::get_mut) or [`iter_mut`](Self::iter_mut) are not covered:
    /// they write in place.
    ///
    /// # Panics
    /// If the table must grow and cannot (see [`try_insert`](Self::try_insert)): the memory
    /// cannot supply a segment, or a move found its new segment's memory taken, which
    /// only memory changed behind the table's back can cause (`Error::Corrupt`).
    #[inline]
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        // Not through `try_insert`: an `Option<V>` comes back in registers, a
        // `Result<Option<V>, Error>` through memory.
        let h = self.raw.hash(&key);
        match self.raw.find_or_insert_in_place(h, key, value) {
            Some((s, true)) if self.logs_replacement() => self.replace(h, s, value),
            // SAFETY: as in `try_insert`.
            Some((s, existed)) => unsafe { Self::put(s, existed, value) },
            None => self.insert_growing(h, key, value),
        }
    }

    /// `insert`'s path when the key's segment must grow first: out of line, so that the
    /// common path carries no `Result` and no stack frame for it.
    #[cold]
    #[inline(never)]
    fn insert_growing(&mut self, h: u64, key: K, value: V) -> Option<V> {
        let (s, existed) = match self.raw.find_or_insert_growing(h, key, value) {
            Ok(x) => x,
            Err(e) => grow_failed(e),
        };
        // SAFETY: as in `try_insert`.
        unsafe { Self::put(s, existed, value) }
    }

    /// Writes `value` into the slot `find_or_insert` returned if the key was there already
    /// (a new entry was written whole by `find_or_insert`), returning the old value.
    ///
    /// # Safety
    /// `s` must be a full slot of this table, accessed uniquely; `existed` as returned.
    #[inline(always)]
    unsafe fn put(s: *mut Slot<K, V>, existed: bool, value: V) -> Option<V> {
        // SAFETY: per the caller's promise.
        existed.then(|| unsafe { core::ptr::replace(core::ptr::addr_of_mut!((*s).value), value) })
    }

    /// Inserts `key -> value`, returning the previous value, or an error if the table had to
    /// grow and could not (the table is unchanged then): the memory could not supply a
    /// segment, or (`Error::Corrupt`) a move found its new segment's memory taken, as by a
    /// corrupt allocator that handed out a block still in use.
    #[inline]
    pub fn try_insert(&mut self, key: K, value: V) -> Result<Option<V>, Error> {
        let h = self.raw.hash(&key);
        let (s, existed) = self.raw.find_or_insert(h, key, value)?;
        if existed && self.logs_replacement() {
            return Ok(self.replace(h, s, value));
        }
        // SAFETY: `s` is a full slot of this table; `&mut self` makes the access unique.
        Ok(unsafe { Self::put(s, existed, value) })
    }

    /// Whether replacing a value goes through [`replace`](Self::replace): in a named table,
    /// for values that one store cannot write.
    #[inline(always)]
    fn logs_replacement(&self) -> bool {
        size_of::<V>() > 8 && self.raw.root.is_some()
    }

    /// Replaces the value in `s`, a full slot of the key of hash `h`, through the undo area
    /// (see [`insert`](Self::insert)).
    #[inline(never)]
    fn replace(&mut self, h: u64, s: *mut Slot<K, V>, value: V) -> Option<V> {
        let seg = self.raw.seg_at(h);
        let i = seg.index_of(s);
        // SAFETY: `s` is the full slot `i` of `seg`; `&mut self`.
        Some(unsafe { self.raw.replace_logged(seg, i, value) })
    }

    /// Removes `key`, returning its value.
    ///
    /// A table of more than one segment gives memory back as it empties: a sparse segment
    /// merges with its buddy (moving at most one segment). A table of one segment keeps its
    /// size, as std's does; [`shrink_to_fit`](Self::shrink_to_fit) gives it back.
    #[inline]
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.remove_entry(key).map(|(_, v)| v)
    }

    /// Removes `key`, returning the stored key and value.
    #[inline]
    pub fn remove_entry(&mut self, key: &K) -> Option<(K, V)> {
        let h = self.raw.hash(key);
        let (seg, i, empty) = self.raw.find_hit(h, key)?;
        // SAFETY: full slot.
        let k = unsafe { (*seg.slot(i)).key };
        Some((k, self.raw.remove_at(seg, i, h, empty)))
    }

    /// The entry of `key`, for in-place manipulation.
    ///
    /// ```
    /// use offheap_swiss::SwissTable;
    /// let mut t: SwissTable<u32, u32> = SwissTable::new();
    /// for w in [3, 1, 3, 3] {
    ///     t.entry(w).and_modify(|c| *c += 1).or_insert(1);
    /// }
    /// assert_eq!(t.get(&3), Some(&3));
    /// ```
    pub fn entry(&mut self, key: K) -> Entry<'_, K, V, M, H> {
        let h = self.raw.hash(&key);
        match self.raw.find(h, &key) {
            Some((seg, i)) => Entry::Occupied(OccupiedEntry {
                table: self,
                seg,
                i,
                h,
            }),
            None => Entry::Vacant(VacantEntry {
                table: self,
                h,
                key,
            }),
        }
    }

    /// Makes room for `additional` more entries (splitting segments now rather than during
    /// the inserts). Unlike a single insert this may move many segments (each once).
    ///
    /// # Panics
    /// If the memory cannot supply the segments.
    pub fn reserve(&mut self, additional: usize) {
        self.try_reserve(additional)
            .expect("offheap-swiss: cannot reserve capacity")
    }

    /// [`reserve`](Self::reserve), returning an error instead of panicking. A reservation
    /// that fails gives back what it had taken (it shrinks the table to fit, as
    /// [`shrink_to_fit`](Self::shrink_to_fit)), so the room left in the memory is not held
    /// by empty segments.
    pub fn try_reserve(&mut self, additional: usize) -> Result<(), Error> {
        let n = self
            .len()
            .checked_add(additional)
            .ok_or(Error::CapacityOverflow)?;
        self.raw.reserve_total(n).inspect_err(|_| {
            // A failed allocation leaves a correct (just larger) table.
            let _ = self.raw.shrink_to_fit();
        })
    }

    /// Inserts every pair of `iter`, as [`Extend`] does, but with
    /// [`try_insert`](Self::try_insert): stops at the first pair the table cannot take and
    /// returns its error. The pairs before it are in the table, that one and those after it
    /// are not (the rest of the iterator is not run), and the table is whole either way.
    /// For a table whose memory can run out, or a file that may be corrupt, where `extend`
    /// (like `insert`) would panic.
    ///
    /// ```
    /// use offheap_mmap::{Region, RegionOptions};
    /// use offheap_swiss::{Error, SwissTable};
    ///
    /// let region = Region::anonymous_with(&RegionOptions::new().max_size(1 << 20))?;
    /// let mut t = SwissTable::<u64, u64, &Region>::new_in(&region);
    /// t.try_extend((0..100).map(|k| (k, k * 2)))?;
    /// assert_eq!(t.get(&7), Some(&14));
    /// // A million pairs do not fit in a 1 MiB region.
    /// let err = t.try_extend((0..1_000_000).map(|k| (k, k))).unwrap_err();
    /// assert!(matches!(err, Error::Alloc { .. }));
    /// assert!(t.len() > 100 && t.len() < 1_000_000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_extend(&mut self, iter: impl IntoIterator<Item = (K, V)>) -> Result<(), Error> {
        let iter = iter.into_iter();
        let (lo, _) = iter.size_hint();
        if self.is_empty() && lo > 0 {
            // A hint: room it cannot find is found or refused by the inserts one at a time.
            let _ = self.try_reserve(lo);
        }
        for (k, v) in iter {
            self.try_insert(k, v)?;
        }
        Ok(())
    }

    /// Merges sparse segments and shrinks each to fit its entries, dropping all tombstones.
    /// Moves every segment at most a few times; memory is returned to the table's memory.
    pub fn shrink_to_fit(&mut self) {
        // A failed allocation leaves a correct (just larger) table.
        let _ = self.raw.shrink_to_fit();
    }

    /// Removes every entry, keeping the segments (like `std`'s `clear`). O(slots).
    pub fn clear(&mut self) {
        self.raw.clear();
    }

    /// Keeps only the entries for which `f` returns `true`.
    pub fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> bool) {
        let mut pos = (0, 0);
        while let Some((seg, i)) = self.raw.next_full(&mut pos) {
            // SAFETY: a full slot; `&mut self`.
            let s = unsafe { &mut *seg.slot(i) };
            if !f(&s.key, &mut s.value) {
                // SAFETY: full slot of our segment.
                unsafe { RawTable::<K, V, M, H>::erase(&seg, i) };
                self.raw.add_len(-1);
            }
        }
        self.raw.tidy();
    }

    /// Iterates over `(&key, &value)` in no particular order.
    pub fn iter(&self) -> Iter<'_, K, V, M, H> {
        Iter {
            table: self,
            pos: (0, 0),
            left: self.len(),
        }
    }

    /// Iterates over `(&key, &mut value)` in no particular order.
    pub fn iter_mut(&mut self) -> IterMut<'_, K, V, M, H> {
        let left = self.len();
        IterMut {
            table: self,
            pos: (0, 0),
            left,
            _m: PhantomData,
        }
    }

    /// Iterates over the keys.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &K> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Iterates over the values.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// Iterates over the values, mutably.
    pub fn values_mut(&mut self) -> impl ExactSizeIterator<Item = &mut V> + '_ {
        self.iter_mut().map(|(_, v)| v)
    }

    /// Removes every entry, yielding them; the table is empty once the iterator is dropped
    /// (even if it was not run to the end).
    pub fn drain(&mut self) -> Drain<'_, K, V, M, H> {
        let left = self.len();
        Drain {
            table: self,
            pos: (0, 0),
            left,
        }
    }

    /// Looks up many keys at once, writing `out[i] = table.get(&keys[i]).copied()`, and
    /// returns how many were found. Overlaps the cache misses of many keys: a software
    /// pipeline hashes key `i` and prefetches its first control group, matches the group of
    /// key `i - 12` and prefetches its first candidate slot, and compares that candidate for
    /// key `i - 24` (probing further only when it is not the key), so on a table larger than
    /// the caches the memory latency of one key hides behind the others'.
    ///
    /// # Panics
    /// If `keys` and `out` differ in length.
    pub fn get_many(&self, keys: &[K], out: &mut [Option<V>]) -> usize {
        assert_eq!(
            keys.len(),
            out.len(),
            "get_many: keys and out differ in length"
        );
        let mut found = 0;
        // A table of a few segments sits in the caches: nothing to overlap, plain lookups.
        if self.raw.global_depth() < 3 {
            for (k, o) in keys.iter().zip(out.iter_mut()) {
                *o = self.get(k).copied();
                found += o.is_some() as usize;
            }
            return found;
        }
        // A software pipeline, `D` keys apart per stage: key `i` is hashed, its segment
        // found and its first control group prefetched (stage 1); key `i - D` has that group
        // matched (the prefetch had `D` keys' time to arrive) and its first candidate slot
        // prefetched (stage 2); key `i - 2D` has that candidate compared, and only if it is
        // not the key (rare), the full probe (stage 3). Each stage hands the next what it
        // found through a ring of `RING` entries, so no stage recomputes the earlier ones'
        // work, and unlike fixed batches no stage waits for a whole batch's misses.
        const D: usize = 12;
        const RING: usize = 32; // >= 2 * D + 1, a power of two
        let n = keys.len();
        let mut ring = [Pending {
            h: 0,
            seg: self.raw.seg_at(0),
            at: PROBE,
        }; RING];
        let stage1 = |ring: &mut [Pending<K, V>; RING], i: usize| {
            let h = self.raw.hash(&keys[i]);
            let seg = self.raw.seg_at(h);
            let pos = seg.start(h);
            // SAFETY: pos <= pmask, so the address lies in the segment's control bytes.
            prefetch(unsafe { seg.ctrl_at(pos) });
            ring[i % RING] = Pending { h, seg, at: pos };
        };
        let stage2 = |ring: &mut [Pending<K, V>; RING], i: usize| {
            let e = &mut ring[i % RING];
            let pos = e.at;
            // SAFETY: stage 1 left the first group's position, a group's first byte.
            let grp = unsafe { e.seg.group_at(pos) };
            e.at = match grp.match_tag(tag(e.h)).lowest() {
                Some(b) => {
                    // SAFETY: pos + b < capacity.
                    prefetch(unsafe { e.seg.slot(pos + b) } as *const u8);
                    pos + b
                }
                // No candidate, and the probe would stop at this group: absent.
                None if grp.match_empty().any() => ABSENT,
                None => PROBE,
            };
        };
        let mut stage3 = |ring: &[Pending<K, V>; RING], out: &mut [Option<V>], i: usize| {
            let e = &ring[i % RING];
            let key = &keys[i];
            out[i] = if e.at < PROBE {
                // SAFETY: a candidate from stage 2 is below the segment's capacity, and its
                // control byte carried the key's tag: a full slot.
                let s = unsafe { &*e.seg.slot(e.at) };
                if key_eq(&s.key, key) {
                    Some(s.value)
                } else {
                    self.probe_value(e, key)
                }
            } else if e.at == ABSENT {
                None
            } else {
                self.probe_value(e, key)
            };
            found += out[i].is_some() as usize;
        };
        for i in 0..n.min(D) {
            stage1(&mut ring, i);
        }
        for i in D..n.min(2 * D) {
            stage1(&mut ring, i);
            stage2(&mut ring, i - D);
        }
        for i in 2 * D..n {
            stage1(&mut ring, i);
            stage2(&mut ring, i - D);
            stage3(&ring, out, i - 2 * D);
        }
        // Drain: the later stages of the last keys.
        let s2_done = n.saturating_sub(D); // keys 0..s2_done had stage 2
        for i in s2_done..n {
            stage2(&mut ring, i);
        }
        let s3_done = n.saturating_sub(2 * D); // keys 0..s3_done had stage 3
        for i in s3_done..n {
            stage3(&ring, out, i);
        }
        found
    }

    /// The full probe for a key of `get_many` whose first candidate was not it.
    #[cold]
    #[inline(never)]
    fn probe_value(&self, e: &Pending<K, V>, key: &K) -> Option<V> {
        // SAFETY: a found slot is full.
        find_in(&e.seg, e.h, key).map(|x| unsafe { (*x.slot.as_ptr()).value })
    }
}

/// A key in `get_many`'s pipeline (32 bytes): its hash, its segment, and `at`: after stage 1
/// the first group's position, after stage 2 what the group match found (a candidate slot,
/// [`ABSENT`] or [`PROBE`]).
struct Pending<K, V> {
    h: u64,
    seg: SegRef<K, V>,
    at: usize,
}

impl<K, V> Clone for Pending<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Pending<K, V> {}

/// `Pending::at` after stage 2: the key needs the full probe.
const PROBE: usize = usize::MAX - 1;
/// `Pending::at` after stage 2: the key is absent.
const ABSENT: usize = usize::MAX;

/// `insert`'s panic, out of line so that the inlined insert stays small.
#[cold]
#[inline(never)]
fn grow_failed(e: Error) -> ! {
    panic!("offheap-swiss: the table cannot grow: {e}")
}

impl<K, V, M: TableMemory, H> Drop for SwissTable<K, V, M, H> {
    fn drop(&mut self) {
        // A simulated kill (tests) unwinds through here: a real one runs no destructor.
        #[cfg(test)]
        if crate::raw::kill::dying() {
            return;
        }
        // A table without a root name is unreachable once dropped: give its blocks back.
        // A named (persistent) table stays in its memory for `open_in`, its header's length
        // brought up to date (for tools that read it; `open_in` sums the segments') and marked
        // closed (so that `open_in` knows no repair is needed).
        if self.raw.root.is_none() {
            self.raw.free_all();
        } else {
            self.raw.close();
        }
    }
}

impl<K: Pod + fmt::Debug, V: Pod + fmt::Debug, M: TableMemory, H: SeededHash> fmt::Debug
    for SwissTable<K, V, M, H>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K, V, M1, M2, H1, H2> PartialEq<SwissTable<K, V, M2, H2>> for SwissTable<K, V, M1, H1>
where
    K: Pod,
    V: Pod + PartialEq,
    M1: TableMemory,
    M2: TableMemory,
    H1: SeededHash,
    H2: SeededHash,
{
    fn eq(&self, other: &SwissTable<K, V, M2, H2>) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<K: Pod, V: Pod + Eq, M: TableMemory, H: SeededHash> Eq for SwissTable<K, V, M, H> {}

/// Inserts every pair, reserving room first for an empty table (as much as the memory has,
/// if not all). Panics where [`insert`](SwissTable::insert) would (the memory cannot supply
/// a segment for a pair); see [`try_extend`](SwissTable::try_extend) for the fallible form.
impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> Extend<(K, V)> for SwissTable<K, V, M, H> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        // `try_extend`'s error is the one `insert` panics with, and its reservation only a
        // hint: only a pair that does not fit panics.
        if let Err(e) = self.try_extend(iter) {
            grow_failed(e)
        }
    }
}

impl<'a, K: Pod, V: Pod, M: TableMemory, H: SeededHash> Extend<(&'a K, &'a V)>
    for SwissTable<K, V, M, H>
{
    fn extend<I: IntoIterator<Item = (&'a K, &'a V)>>(&mut self, iter: I) {
        self.extend(iter.into_iter().map(|(k, v)| (*k, *v)));
    }
}

impl<K: Pod, V: Pod> FromIterator<(K, V)> for SwissTable<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut t = SwissTable::new();
        t.extend(iter);
        t
    }
}

impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> core::ops::Index<&K>
    for SwissTable<K, V, M, H>
{
    type Output = V;

    /// The value of `key`, as `std`'s maps index.
    ///
    /// # Panics
    /// If `key` is not in the table ([`get`](SwissTable::get) returns `None` instead).
    ///
    /// ```
    /// use offheap_swiss::SwissTable;
    /// let t: SwissTable<u64, u64> = [(1, 10)].into_iter().collect();
    /// assert_eq!(t[&1], 10);
    /// ```
    fn index(&self, key: &K) -> &V {
        self.get(key)
            .expect("offheap-swiss: the key is not in the table")
    }
}

/// A copy of the table in a fresh anonymous region: the same entries, seed (so the same
/// layout of hashes) and segment size, with room for its length. O(len).
///
/// # Panics
/// If the new region cannot be created or cannot hold the entries, as
/// [`with_capacity`](SwissTable::with_capacity).
///
/// ```
/// use offheap_swiss::SwissTable;
/// let a: SwissTable<u64, u64> = (0..100).map(|i| (i, i * 2)).collect();
/// let mut b = a.clone();
/// b.insert(1, 0);
/// assert_eq!((a[&1], b[&1], b.len()), (2, 0, 100));
/// assert_eq!(a.seed(), b.seed());
/// ```
impl<K: Pod, V: Pod> Clone for SwissTable<K, V> {
    fn clone(&self) -> Self {
        let mem = crate::memory::default_memory()
            .expect("offheap-swiss: cannot create the table's memory");
        let opts = TableOptions::new()
            .seed(self.seed())
            .segment_slots(self.raw.max_groups * GROUP_WIDTH)
            .capacity(self.len());
        let mut t =
            Self::with_options_in(opts, mem).expect("offheap-swiss: cannot reserve capacity");
        t.extend(self);
        t
    }
}

impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> IntoIterator for SwissTable<K, V, M, H> {
    type Item = (K, V);
    type IntoIter = IntoIter<K, V, M, H>;

    /// Every pair, by value, in no particular order; the table is dropped after (as by
    /// `drop`: a table with a root name stays in its memory, whole).
    ///
    /// ```
    /// use offheap_swiss::SwissTable;
    /// let t: SwissTable<u32, u32> = (0..3).map(|i| (i, i + 10)).collect();
    /// let mut pairs: Vec<(u32, u32)> = t.into_iter().collect();
    /// pairs.sort();
    /// assert_eq!(pairs, [(0, 10), (1, 11), (2, 12)]);
    /// ```
    fn into_iter(self) -> IntoIter<K, V, M, H> {
        IntoIter {
            left: self.len(),
            table: self,
            pos: (0, 0),
        }
    }
}

impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> SwissTable<K, V, M, H> {
    /// Every key, by value, consuming the table (see [`into_iter`](Self::into_iter)).
    pub fn into_keys(self) -> IntoKeys<K, V, M, H> {
        IntoKeys(self.into_iter())
    }

    /// Every value, by value, consuming the table (see [`into_iter`](Self::into_iter)).
    pub fn into_values(self) -> IntoValues<K, V, M, H> {
        IntoValues(self.into_iter())
    }
}

/// Owning iterator over `(K, V)`; see [`SwissTable::into_iter`].
pub struct IntoIter<K: Pod, V: Pod, M: TableMemory, H: SeededHash> {
    table: SwissTable<K, V, M, H>,
    pos: (usize, usize),
    left: usize,
}

impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> Iterator for IntoIter<K, V, M, H> {
    type Item = (K, V);
    fn next(&mut self) -> Option<(K, V)> {
        let (seg, i) = self.table.raw.next_full(&mut self.pos)?;
        self.left = self.left.saturating_sub(1);
        // SAFETY: a full slot of the table this iterator owns; copied out (Pod).
        let s = unsafe { &*seg.slot(i) };
        Some((s.key, s.value))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}
impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> ExactSizeIterator for IntoIter<K, V, M, H> {}

/// Owning iterator over the keys; see [`SwissTable::into_keys`].
pub struct IntoKeys<K: Pod, V: Pod, M: TableMemory, H: SeededHash>(IntoIter<K, V, M, H>);

impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> Iterator for IntoKeys<K, V, M, H> {
    type Item = K;
    fn next(&mut self) -> Option<K> {
        self.0.next().map(|(k, _)| k)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}
impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> ExactSizeIterator for IntoKeys<K, V, M, H> {}

/// Owning iterator over the values; see [`SwissTable::into_values`].
pub struct IntoValues<K: Pod, V: Pod, M: TableMemory, H: SeededHash>(IntoIter<K, V, M, H>);

impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> Iterator for IntoValues<K, V, M, H> {
    type Item = V;
    fn next(&mut self) -> Option<V> {
        self.0.next().map(|(_, v)| v)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}
impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> ExactSizeIterator for IntoValues<K, V, M, H> {}

/// Iterator over `(&K, &V)`.
pub struct Iter<'a, K, V, M: TableMemory, H> {
    table: &'a SwissTable<K, V, M, H>,
    pos: (usize, usize),
    left: usize,
}

impl<'a, K: Pod, V: Pod, M: TableMemory, H: SeededHash> Iterator for Iter<'a, K, V, M, H> {
    type Item = (&'a K, &'a V);
    #[inline]
    fn next(&mut self) -> Option<(&'a K, &'a V)> {
        let (seg, i) = self.table.raw.next_full(&mut self.pos)?;
        self.left = self.left.saturating_sub(1);
        // SAFETY: a full slot, alive for 'a.
        let s: &'a Slot<K, V> = unsafe { &*seg.slot(i) };
        Some((&s.key, &s.value))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}
impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> ExactSizeIterator for Iter<'_, K, V, M, H> {}

/// Iterator over `(&K, &mut V)`.
pub struct IterMut<'a, K, V, M: TableMemory, H> {
    table: &'a SwissTable<K, V, M, H>,
    pos: (usize, usize),
    left: usize,
    _m: PhantomData<&'a mut V>,
}

impl<'a, K: Pod, V: Pod, M: TableMemory, H: SeededHash> Iterator for IterMut<'a, K, V, M, H> {
    type Item = (&'a K, &'a mut V);
    #[inline]
    fn next(&mut self) -> Option<(&'a K, &'a mut V)> {
        let (seg, i) = self.table.raw.next_full(&mut self.pos)?;
        self.left = self.left.saturating_sub(1);
        // SAFETY: a full slot, yielded once; the table is borrowed mutably for 'a.
        let s: &'a mut Slot<K, V> = unsafe { &mut *seg.slot(i) };
        Some((&s.key, &mut s.value))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}
impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> ExactSizeIterator for IterMut<'_, K, V, M, H> {}

/// Draining iterator over `(K, V)`; see [`SwissTable::drain`].
pub struct Drain<'a, K: Pod, V: Pod, M: TableMemory, H: SeededHash> {
    table: &'a mut SwissTable<K, V, M, H>,
    pos: (usize, usize),
    left: usize,
}

impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> Iterator for Drain<'_, K, V, M, H> {
    type Item = (K, V);
    fn next(&mut self) -> Option<(K, V)> {
        let (seg, i) = self.table.raw.next_full(&mut self.pos)?;
        self.left = self.left.saturating_sub(1);
        // SAFETY: a full slot; copied out (Pod).
        let s = unsafe { &*seg.slot(i) };
        Some((s.key, s.value))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}
impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> ExactSizeIterator for Drain<'_, K, V, M, H> {}

impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> Drop for Drain<'_, K, V, M, H> {
    fn drop(&mut self) {
        // As in the table's `Drop`: a simulated kill (tests) runs no destructor.
        #[cfg(test)]
        if crate::raw::kill::dying() {
            return;
        }
        self.table.clear();
    }
}

impl<'a, K: Pod, V: Pod, M: TableMemory, H: SeededHash> IntoIterator
    for &'a SwissTable<K, V, M, H>
{
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V, M, H>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, K: Pod, V: Pod, M: TableMemory, H: SeededHash> IntoIterator
    for &'a mut SwissTable<K, V, M, H>
{
    type Item = (&'a K, &'a mut V);
    type IntoIter = IterMut<'a, K, V, M, H>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

/// A view into one key's place in a table; from [`SwissTable::entry`].
pub enum Entry<'a, K: Pod, V: Pod, M: TableMemory, H: SeededHash> {
    /// The key is present.
    Occupied(OccupiedEntry<'a, K, V, M, H>),
    /// The key is absent.
    Vacant(VacantEntry<'a, K, V, M, H>),
}

/// A present key; see [`Entry`].
pub struct OccupiedEntry<'a, K: Pod, V: Pod, M: TableMemory, H: SeededHash> {
    table: &'a mut SwissTable<K, V, M, H>,
    seg: SegRef<K, V>,
    i: usize,
    h: u64,
}

/// An absent key; see [`Entry`].
pub struct VacantEntry<'a, K: Pod, V: Pod, M: TableMemory, H: SeededHash> {
    table: &'a mut SwissTable<K, V, M, H>,
    h: u64,
    key: K,
}

impl<'a, K: Pod, V: Pod, M: TableMemory, H: SeededHash> Entry<'a, K, V, M, H> {
    /// The value, inserting `default` if absent.
    pub fn or_insert(self, default: V) -> &'a mut V {
        match self {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert(default),
        }
    }
    /// The value, inserting `f()` if absent.
    pub fn or_insert_with(self, f: impl FnOnce() -> V) -> &'a mut V {
        match self {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert(f()),
        }
    }
    /// The value, inserting `f(&key)` if absent.
    pub fn or_insert_with_key(self, f: impl FnOnce(&K) -> V) -> &'a mut V {
        match self {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let val = f(&v.key);
                v.insert(val)
            }
        }
    }
    /// The value, inserting `V::default()` if absent.
    pub fn or_default(self) -> &'a mut V
    where
        V: Default,
    {
        self.or_insert_with(V::default)
    }
    /// Runs `f` on the value if present.
    ///
    /// In a named table, a value of more than 8 bytes is modified in a copy, which then
    /// replaces it through the undo area as by [`SwissTable::insert`] (a kill never leaves it
    /// half modified).
    pub fn and_modify(mut self, f: impl FnOnce(&mut V)) -> Self {
        if let Entry::Occupied(o) = &mut self {
            if o.table.logs_replacement() {
                let mut v = *o.get();
                f(&mut v);
                o.insert(v);
            } else {
                f(o.get_mut());
            }
        }
        self
    }
    /// The key.
    pub fn key(&self) -> &K {
        match self {
            Entry::Occupied(o) => o.key(),
            Entry::Vacant(v) => v.key(),
        }
    }
}

impl<'a, K: Pod, V: Pod, M: TableMemory, H: SeededHash> OccupiedEntry<'a, K, V, M, H> {
    /// The stored key.
    pub fn key(&self) -> &K {
        // SAFETY: a full slot, borrowed through `self`.
        unsafe { &(*self.seg.slot(self.i)).key }
    }
    /// The value.
    pub fn get(&self) -> &V {
        // SAFETY: as in `key`.
        unsafe { &(*self.seg.slot(self.i)).value }
    }
    /// The value, mutably.
    pub fn get_mut(&mut self) -> &mut V {
        // SAFETY: as in `key`; `&mut self` holds the table's unique borrow.
        unsafe { &mut (*self.seg.slot(self.i)).value }
    }
    /// The value, borrowed for the table's borrow.
    pub fn into_mut(self) -> &'a mut V {
        // SAFETY: the table stays mutably borrowed for 'a.
        unsafe { &mut (*self.seg.slot(self.i)).value }
    }
    /// Replaces the value, returning the old one.
    ///
    /// In a named table, a value of more than 8 bytes is replaced through the undo area, as
    /// by [`SwissTable::insert`].
    pub fn insert(&mut self, value: V) -> V {
        if self.table.logs_replacement() {
            // SAFETY: slot `i` of `seg` is full; the entry borrows the table mutably.
            return unsafe { self.table.raw.replace_logged(self.seg, self.i, value) };
        }
        core::mem::replace(self.get_mut(), value)
    }
    /// Removes the entry, returning its value.
    pub fn remove(self) -> V {
        self.remove_entry().1
    }
    /// Removes the entry, returning its key and value.
    pub fn remove_entry(self) -> (K, V) {
        let k = *self.key();
        // SAFETY: i < capacity.
        let empty = unsafe { self.seg.group(self.i / GROUP_WIDTH) }
            .match_empty()
            .any();
        let v = self.table.raw.remove_at(self.seg, self.i, self.h, empty);
        (k, v)
    }
}

impl<'a, K: Pod, V: Pod, M: TableMemory, H: SeededHash> VacantEntry<'a, K, V, M, H> {
    /// The key.
    pub fn key(&self) -> &K {
        &self.key
    }
    /// Takes the key back.
    pub fn into_key(self) -> K {
        self.key
    }
    /// Inserts `value`, returning a reference to it.
    ///
    /// # Panics
    /// If the table must grow and cannot, as [`SwissTable::insert`].
    pub fn insert(self, value: V) -> &'a mut V {
        let (s, existed) = match self.table.raw.find_or_insert(self.h, self.key, value) {
            Ok(x) => x,
            Err(e) => grow_failed(e),
        };
        // SAFETY: a full slot of the table borrowed mutably for 'a, as `find_or_insert`
        // returned it; `put` writes the value where `find_or_insert` did not (a new entry is
        // written whole), so it is written before the reference is made.
        unsafe {
            SwissTable::<K, V, M, H>::put(s, existed, value);
            &mut *core::ptr::addr_of_mut!((*s).value)
        }
    }
}

impl<K: Pod + fmt::Debug, V: Pod + fmt::Debug, M: TableMemory, H: SeededHash> fmt::Debug
    for Entry<'_, K, V, M, H>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Occupied(o) => f
                .debug_struct("Occupied")
                .field("key", o.key())
                .field("value", o.get())
                .finish(),
            Entry::Vacant(v) => f.debug_struct("Vacant").field("key", v.key()).finish(),
        }
    }
}

#[cfg(test)]
mod check_tests {
    use super::{SwissTable, TableOptions};
    use crate::group::{is_full, EMPTY};
    use crate::raw::SegRef;
    use crate::{Error, Heap};

    type T = SwissTable<u64, u64, Heap>;

    /// A table of several small segments, with tombstones.
    fn table() -> T {
        let opts = TableOptions::new().segment_slots(64).seed(7);
        let mut t = T::with_options_in(opts, Heap::new()).unwrap();
        let n = if cfg!(miri) { 300 } else { 2000 };
        t.extend((0..n).map(|i| (i, i * 10)));
        t.retain(|k, _| k % 5 != 0);
        assert!(t.stats().segments > 4);
        t.check().unwrap();
        t
    }

    /// The distinct segments, each with its first full slot and first empty slot.
    fn segments(t: &T) -> Vec<(SegRef<u64, u64>, usize, usize)> {
        let mut out: Vec<(SegRef<u64, u64>, usize, usize)> = Vec::new();
        for seg in &t.raw.dir {
            if out.iter().any(|(s, _, _)| s.hdr() == seg.hdr()) {
                continue;
            }
            // SAFETY: every index is below the capacity.
            let ctrl = |i| unsafe { *seg.ctrl_at(i) };
            let full = (0..seg.capacity()).find(|&i| is_full(ctrl(i))).unwrap();
            let empty = (0..seg.capacity()).find(|&i| ctrl(i) == EMPTY).unwrap();
            out.push((*seg, full, empty));
        }
        out
    }

    fn corrupt(t: &T) -> &'static str {
        match t.check() {
            Err(Error::Corrupt(why)) => why,
            other => panic!("check passed a corrupt table: {other:?}"),
        }
    }

    #[test]
    fn a_wrong_tag_is_found() {
        let t = table();
        let (seg, full, _) = segments(&t)[1];
        // SAFETY: `full` is below the capacity; the table is not in use meanwhile.
        unsafe { *seg.ctrl_at(full) ^= 1 };
        assert!(corrupt(&t).contains("tag"));
    }

    #[test]
    fn a_control_byte_of_no_state_is_found() {
        let t = table();
        let (seg, _, empty) = segments(&t)[0];
        // SAFETY: as above.
        unsafe { *seg.ctrl_at(empty) = 0xC3 };
        assert!(corrupt(&t).contains("no slot state"));
    }

    #[test]
    fn an_entry_moved_to_another_segment_is_found() {
        let t = table();
        let segs = segments(&t);
        let ((a, full, _), (b, _, empty)) = (segs[0], segs[1]);
        // The entry, its tag and the counters move together: only its place is wrong.
        // SAFETY: indices below the capacities; headers valid; the table is not in use.
        unsafe {
            b.slot(empty).write(a.slot(full).read());
            *b.ctrl_at(empty) = *a.ctrl_at(full);
            *a.ctrl_at(full) = EMPTY;
            (*a.hdr()).len -= 1;
            (*b.hdr()).len += 1;
        }
        assert!(corrupt(&t).contains("another segment"));
    }

    #[test]
    fn a_duplicate_key_is_found() {
        let mut t = table();
        let (seg, full, empty) = segments(&t)[2];
        // SAFETY: as above.
        unsafe {
            seg.slot(empty).write(seg.slot(full).read());
            *seg.ctrl_at(empty) = *seg.ctrl_at(full);
            (*seg.hdr()).len += 1;
        }
        t.raw.add_len(1);
        assert!(corrupt(&t).contains("probe"));
    }

    #[test]
    fn counters_and_length_that_disagree_are_found() {
        let mut t = table();
        let (seg, _, _) = segments(&t)[0];
        // SAFETY: the header is valid; the table is not in use.
        unsafe { (*seg.hdr()).deleted += 1 };
        assert!(corrupt(&t).contains("counters"));
        // SAFETY: as above.
        unsafe { (*seg.hdr()).deleted -= 1 };
        t.check().unwrap();
        t.raw.add_len(-1);
        assert!(corrupt(&t).contains("length"));
        t.raw.add_len(1);
        t.check().unwrap();
    }
}
