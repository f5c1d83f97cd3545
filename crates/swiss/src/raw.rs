//! The table's storage: header, directory and segments, and the operations that move entries
//! between segments (rebuild, split, merge). Everything here is bounded by one segment, except
//! the directory copy when it doubles or halves.

use crate::group::{is_full, BitMask, Group, DELETED, EMPTY, GROUP_WIDTH};
use crate::hash::SeededHash;
use crate::memory::{AllocRecord, TableMemory};
use crate::table::RepairReport;
use crate::Error;
use bytemuck::Pod;
use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// Test-only simulation of a process killed inside the table: after `STEPS_LEFT` more
/// steps (each a write that a kill could fall after), the thread unwinds with [`Killed`]
/// (through `resume_unwind`, which runs no panic hook), leaving the memory as it is; the
/// test then reopens what a dead process left. A real kill runs no destructor, so from the
/// kill until [`revive`](kill::revive) a table dropped on the way out (one the test holds, or
/// one a library function was building, such as `create_in`'s) does nothing
/// ([`dying`](kill::dying)).
#[cfg(test)]
pub(crate) mod kill {
    use core::cell::Cell;
    std::thread_local! {
        pub(crate) static STEPS_LEFT: Cell<u64> = const { Cell::new(u64::MAX) };
        static DYING: Cell<bool> = const { Cell::new(false) };
    }
    /// The unwind payload of a simulated kill.
    pub(crate) struct Killed;
    /// A point where a kill can fall.
    pub(crate) fn step() {
        STEPS_LEFT.with(|s| match s.get() {
            u64::MAX => {}
            0 => {
                s.set(u64::MAX);
                DYING.with(|d| d.set(true));
                std::panic::resume_unwind(Box::new(Killed));
            }
            n => s.set(n - 1),
        });
    }
    /// Kills the thread after `k` more steps.
    pub(crate) fn arm(k: u64) {
        STEPS_LEFT.with(|s| s.set(k));
    }
    /// Ends a simulation: no kill pending, and tables drop as usual again.
    pub(crate) fn revive() {
        STEPS_LEFT.with(|s| s.set(u64::MAX));
        DYING.with(|d| d.set(false));
    }
    /// Whether a simulated kill is unwinding this thread (destructors do nothing then).
    pub(crate) fn dying() -> bool {
        DYING.with(Cell::get)
    }
}

/// Test-only sabotage of a move (see `RawTable::move_entries`): while armed, every move into
/// fresh segments first fills its destinations' control bytes with full slots (and sets their lengths), as
/// if another writer shared those blocks, so the move finds no free slot.
#[cfg(test)]
pub(crate) mod sabotage {
    use super::{SegRef, SEG_HEADER};
    use core::cell::Cell;
    std::thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
        static HITS: Cell<u64> = const { Cell::new(0) };
    }
    /// Destinations filled so far on this thread.
    pub(crate) fn hits() -> u64 {
        HITS.with(Cell::get)
    }
    /// Sabotages every move from now until [`disarm`].
    pub(crate) fn arm() {
        ARMED.with(|a| a.set(true));
    }
    /// Moves run as usual again.
    pub(crate) fn disarm() {
        ARMED.with(|a| a.set(false));
    }
    /// Fills `seg` (a move's destination) if armed.
    pub(crate) fn fill_if_armed<K, V>(seg: &SegRef<K, V>) {
        if ARMED.with(Cell::get) {
            HITS.with(|h| h.set(h.get() + 1));
            // SAFETY: the segment's header and its `capacity()` control bytes, which follow
            // it, are a destination's, which its move owns.
            unsafe {
                (*seg.hdr()).len = 1;
                core::ptr::write_bytes(seg.base.as_ptr().add(SEG_HEADER), 0, seg.capacity());
            }
        }
    }
}

/// A point where a simulated kill (tests only) can fall; nothing in other builds.
macro_rules! kill_point {
    () => {
        #[cfg(test)]
        crate::raw::kill::step();
    };
}

/// Bytes of a segment's header, before its control bytes.
pub(crate) const SEG_HEADER: usize = 64;
const SEG_MAGIC: u32 = u32::from_le_bytes(*b"SwSg");
const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"offSwiss");
/// Format version of the table header and segments. 2: a segment header names its table,
/// the header keeps the directory's handle and global depth in one word (switched by one
/// store) and which process has the table open. 3: the header also keeps the token of the
/// handle that has it open (so that a process tells its own open handles from ones that are
/// gone). 4: hashes are read from other bits (tag `57..64`, group `4..20`, directory
/// `33..57`; see [`crate::hash`]), so the same key lies elsewhere than in a version 3 file.
pub(crate) const VERSION: u32 = 4;
/// The header's `owner` while no process has the table open (it was dropped cleanly).
const CLOSED: u64 = 0;
/// Maximum global depth of the directory (it is indexed by hash bits `33..57`).
pub(crate) const MAX_DEPTH: u32 = 24;
/// Maximum groups in one segment (2^16 groups = 2^20 slots; the group index uses hash bits
/// `4..20`).
pub(crate) const MAX_GROUPS_LIMIT: usize = 1 << 16;
/// Largest slot alignment supported (a region allocates with at most page alignment).
const MAX_SLOT_ALIGN: usize = 4096;

/// A key and its value, stored inline in a segment.
#[repr(C)]
pub(crate) struct Slot<K, V> {
    pub(crate) key: K,
    pub(crate) value: V,
}

/// Header of a segment, at the start of its block.
#[repr(C)]
pub(crate) struct SegHeader {
    magic: u32,
    depth: u32,
    groups: u32,
    _r0: u32,
    pub(crate) len: u64,
    pub(crate) deleted: u64,
    /// Unused: written as 0, ignored when read. (Until the session after format version 4
    /// came in, the segment's room was kept here and updated by every insert and removal.
    /// It is now derived from `len` and `deleted`; see [`SegRef::room`]. Files written
    /// before keep a value here, which is ignored.)
    _r1: u64,
    /// The segment's own handle (checked against the directory on open).
    handle: u64,
    /// The handle of its table's header (checked on open, so that a directory entry naming
    /// another table's segment is refused).
    table: u64,
    _pad: u64,
}
const _: () = assert!(size_of::<SegHeader>() == SEG_HEADER);

/// Header of a table: found through a root name, points at the directory.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct TableHeader {
    magic: u64,
    version: u32,
    max_groups: u32,
    key_size: u32,
    key_align: u32,
    val_size: u32,
    val_align: u32,
    hasher_id: u64,
    seed: u64,
    /// xxh3 of the fields above.
    checksum: u64,
    /// The table's length when it was last dropped or cleared. Advisory: `open` sums the
    /// segments' lengths instead (so a table whose process died without dropping it opens
    /// with its true length).
    pub(crate) len: u64,
    /// [`CLOSED`], or the owner id ([`offheap_mmap::process::owner_id`]) of the process that
    /// has the table open, or had it open when it died: `open` refuses a table a live
    /// process has open, and repairs one that a dead process left open.
    owner: u64,
    /// The directory: its handle, and the global depth in the top 8 bits (one word, so that
    /// one store switches both, and a process killed in between cannot tear them).
    dir: u64,
    /// The blocks a structural change in progress leaves or may leave unnamed (0: none):
    /// segment words (its new segments, and the ones it replaces, recorded before the
    /// directory switches from the ones to the others) or a directory block's handle tagged
    /// with [`PENDING_DIR`]. After a process died in between, `open` frees those that check
    /// out and that nothing names.
    pending: [u64; 3],
    /// A random token of the handle that has the table open (written with `owner`): a
    /// process whose own id is the `owner` looks it up among its open handles' tokens, to
    /// tell a table it has open (refused) from one that a handle of an earlier program in
    /// this process (before an `exec`) or an open cut short left open (repaired).
    token: u64,
}

/// 112 bytes (the `swiss_file` fuzz target mutates them as one area).
const _: () = assert!(size_of::<TableHeader>() == 112);

/// The named tables this process has open, by their handles' tokens (see
/// [`TableHeader::token`]). The lock also serializes the claims of this process's threads.
mod open_here {
    use std::sync::{Mutex, MutexGuard, PoisonError};

    static TOKENS: Mutex<Vec<u64>> = Mutex::new(Vec::new());

    /// The list, locked (a panic while it was held cannot leave it inconsistent: every
    /// change is one push or one removal).
    pub(super) fn lock() -> MutexGuard<'static, Vec<u64>> {
        TOKENS.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A handle's registration as open in this process: removed from the list when dropped
    /// (a table closed, an open that failed or unwound); a handle leaked with `mem::forget`
    /// stays registered, so the table stays in use until the process ends.
    pub(crate) struct Registered {
        pub(super) token: u64,
        /// This process's owner id when the table was claimed.
        pub(super) me: u64,
    }

    impl Registered {
        /// Registers a new token, distinct from the others of this process and from 0.
        pub(super) fn new(list: &mut Vec<u64>, me: u64) -> Self {
            // Random per process (std's per-process random keys; no clock, which miri's
            // isolation lacks); distinct within it by the loop below.
            let mut token = std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                list.len(),
            );
            while token == 0 || list.contains(&token) {
                token = token.wrapping_add(1);
            }
            list.push(token);
            Registered { token, me }
        }
    }

    impl Drop for Registered {
        fn drop(&mut self) {
            let mut list = lock();
            if let Some(i) = list.iter().position(|&t| t == self.token) {
                list.swap_remove(i);
            }
        }
    }
}
pub(crate) use open_here::Registered;

impl TableHeader {
    fn checksum(&self) -> u64 {
        let mut b = [0u8; 48];
        b[0..8].copy_from_slice(&self.magic.to_le_bytes());
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.max_groups.to_le_bytes());
        b[16..20].copy_from_slice(&self.key_size.to_le_bytes());
        b[20..24].copy_from_slice(&self.key_align.to_le_bytes());
        b[24..28].copy_from_slice(&self.val_size.to_le_bytes());
        b[28..32].copy_from_slice(&self.val_align.to_le_bytes());
        b[32..40].copy_from_slice(&self.hasher_id.to_le_bytes());
        b[40..48].copy_from_slice(&self.seed.to_le_bytes());
        xxhash_rust::xxh3::xxh3_64(&b)
    }
}

/// Most entries a segment of `groups` groups holds: 7/8 of its slots.
#[inline(always)]
pub(crate) const fn max_load(groups: usize) -> usize {
    groups * GROUP_WIDTH / 8 * 7
}

/// A segment at depth > 0 tries to merge with its buddy when its length falls to this (1/16
/// of a full-size segment's load); they merge if they hold at most twice this together.
/// (Merging earlier makes a table that is emptied key by key move more entries: a merged
/// segment starts at up to twice the threshold, so half of its remaining removals are paid
/// for by the next merge's moves.)
#[inline(always)]
pub(crate) const fn merge_at(max_groups: usize) -> usize {
    max_load(max_groups) / 16
}

/// A segment of `groups` groups is rebuilt smaller when its length falls to this (1/16 of
/// its load), unless a merge is about to take it. (At 1/8, emptying a one-segment table key by
/// key moved about one entry per three removals; at 1/16, half as many.)
#[inline(always)]
pub(crate) const fn shrink_at(groups: usize) -> usize {
    max_load(groups) / 16
}

/// Segments of fewer groups than this grow four times larger at a time, larger ones twice.
/// A table grown from empty to 1000 keys then moves 1190 entries in 4 rebuilds instead of
/// 1778 in 7 (its segment ends the same size: 64 groups grow to 128); a small table has up
/// to 4 times the slots it needs, at most 1024 (16 KiB of `u64 -> u64` slots).
pub(crate) const QUICK_GROWTH_GROUPS: usize = 64;

/// The group count a segment of `groups` groups grows to when it is full.
#[inline]
pub(crate) const fn grown(groups: usize) -> usize {
    if groups < QUICK_GROWTH_GROUPS {
        groups * 4
    } else {
        groups * 2
    }
}

/// Smallest power-of-two group count whose `max_load * num / den` is at least `n`.
pub(crate) fn groups_for(n: usize, num: usize, den: usize) -> usize {
    let mut g = 1;
    while max_load(g) * num / den < n && g < MAX_GROUPS_LIMIT {
        g *= 2;
    }
    g
}

/// Size, offset of the control bytes, and alignment of a segment of `groups` groups.
///
/// A segment is `[slot cap-1] ... [slot 1][slot 0][header (64 B)][cap control bytes]`: the
/// header sits right before the control bytes (same page, so an insert's counter update costs
/// no extra TLB entry), and slot `i` lies `64 + (i + 1) * size_of::<Slot>()` bytes below them
/// (as in hashbrown, a constant offset), so the control pointer and the group mask are all a
/// lookup needs.
fn seg_layout<K, V>(groups: usize) -> Option<(usize, usize, usize)> {
    let cap = groups.checked_mul(GROUP_WIDTH)?;
    let ctrl_off = cap
        .checked_mul(size_of::<Slot<K, V>>())?
        .checked_add(SEG_HEADER)?;
    let size = ctrl_off.checked_add(cap)?;
    Some((size, ctrl_off, align_of::<Slot<K, V>>().max(64)))
}

/// The size of table, in bytes of full-size segments over the whole directory, from which
/// lookups, inserts and removals warm the slots' page ([`SegRef::warm_slots`]). The line
/// that the prefetch brings in is a waste for a miss. At 1M keys (35 MiB) that cost more
/// than the hits gained: criterion's miss row, which runs many misses at once, doubled, and
/// its hit row gained 15-24 %. At 20M keys (573 MiB) hits gained 14-26 % and misses lost
/// nothing measurable (docs/swiss-log.md, "Warming the slots' page"). Unit tests lower it to
/// 64 KiB, so that their small tables take both paths.
const WARM_BYTES: usize = if cfg!(test) { 64 << 10 } else { 256 << 20 };

/// The mirror's shift at global depth 0 (see `RawTable::shift`): the end of
/// [`DIR_BITS`](crate::hash::DIR_BITS) less 4, 4 being log2 of the 16 bytes of a mirror entry.
const DIR_SHIFT0: u32 = crate::hash::DIR_BITS.end - 4;
const _: () = assert!(
    size_of::<SegRef<u64, u64>>() == 16
        && crate::hash::DIR_BITS.end - MAX_DEPTH == crate::hash::DIR_BITS.start
);

/// The mirror's index mask at global depth `gd`: `(2^gd - 1) * 16`, the offset of its
/// last entry (see `RawTable::shift`).
const fn dir_mask<K, V>(gd: u32) -> usize {
    ((1usize << gd) - 1) * size_of::<SegRef<K, V>>()
}

/// The directory prefix of `h` at depth `depth` (1 to [`MAX_DEPTH`]): the top `depth` bits
/// of its [`DIR_BITS`](crate::hash::DIR_BITS), which a segment of that depth shares with all
/// its keys.
#[inline]
fn dir_prefix(h: u64, depth: u32) -> u64 {
    debug_assert!((1..=MAX_DEPTH).contains(&depth));
    (h << (64 - crate::hash::DIR_BITS.end)) >> (64 - depth)
}

/// The smallest hash whose directory prefix at depth `depth` is `prefix` (the inverse of
/// [`dir_prefix`] on the directory bits).
#[inline]
fn hash_with_prefix(prefix: u64, depth: u32) -> u64 {
    prefix << (crate::hash::DIR_BITS.end - depth)
}

/// Low bits of a directory word: the segment's handle; high 8 bits: log2 of its group count
/// (so that `open` can find the header, which lies after the slots).
const HANDLE_BITS: u32 = 56;

/// The handle in a directory, header or pending word (its low [`HANDLE_BITS`] bits).
const fn word_handle(w: u64) -> u64 {
    w & ((1 << HANDLE_BITS) - 1)
}

/// Top byte of a pending word that names a directory block (a segment word's top byte is
/// log2 of its group count, at most 16).
const PENDING_DIR: u64 = 0xFF << HANDLE_BITS;

/// Top byte of a pending word that records a value being replaced in place (see
/// [`RawTable::replace_logged`]): the segment's handle; the next word is the slot, whose old
/// value is in the header block's undo area.
const PENDING_UNDO: u64 = 0xFE << HANDLE_BITS;

/// Top byte of a pending word that records a block a structural change has just allocated
/// and not yet filled (see [`RawTable::alloc_fresh`]): a new segment before its header is
/// written, a new directory block before its words are. The block carries nothing yet by
/// which a repair could tell it is this table's, so the record is what says so.
const PENDING_FRESH: u64 = 0xFD << HANDLE_BITS;

/// The header's directory word: the directory's handle and the global depth.
fn header_dir_word(handle: u64, global_depth: u32) -> u64 {
    handle | u64::from(global_depth) << HANDLE_BITS
}

/// The stored directory word of a segment.
fn dir_word(handle: u64, groups: usize) -> u64 {
    handle | (u64::from(groups.trailing_zeros()) << HANDLE_BITS)
}

/// The in-process view of a segment, one per directory entry: the address of its header
/// (which ends the slots and is followed by the control bytes), resolved once, and its group
/// mask. 16 bytes, so the directory mirror stays small. (The header's address rather than the
/// control bytes': slots and groups are then both at constant offsets from one register.)
pub(crate) struct SegRef<K, V> {
    base: NonNull<u8>,
    /// `(groups - 1) * GROUP_WIDTH`: masks a byte position in the control bytes down to a
    /// group's first byte, so a probe goes from the hash to its group in one instruction
    /// (`h & pmask`: group `(h >> 4) & (groups - 1)`, from hash bits `4..20` at most).
    pub(crate) pmask: usize,
    _types: PhantomData<*mut Slot<K, V>>,
}

impl<K, V> Clone for SegRef<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for SegRef<K, V> {}

impl<K, V> SegRef<K, V> {
    /// Groups minus one.
    #[inline(always)]
    pub(crate) fn mask(&self) -> usize {
        self.pmask / GROUP_WIDTH
    }
    /// Groups.
    #[inline(always)]
    pub(crate) fn groups(&self) -> usize {
        self.mask() + 1
    }
    /// Slots in the segment.
    #[inline(always)]
    pub(crate) fn capacity(&self) -> usize {
        self.pmask + GROUP_WIDTH
    }
    /// Byte position (in the control bytes) of the first group `h` probes.
    #[inline(always)]
    pub(crate) fn start(&self, h: u64) -> usize {
        h as usize & self.pmask
    }
    #[inline(always)]
    pub(crate) fn hdr(&self) -> *mut SegHeader {
        self.base.as_ptr().cast()
    }
    /// The stored directory word of this segment.
    fn word(&self) -> u64 {
        dir_word(self.handle(), self.groups())
    }
    /// Local depth (from the header).
    #[inline(always)]
    pub(crate) fn depth(&self) -> u32 {
        // SAFETY: the header is valid while the segment is.
        unsafe { (*self.hdr()).depth }
    }
    /// Inserts the segment takes before it is at its 7/8 load ([`max_load`]): that load less
    /// its full slots and its tombstones, both from its header. Derived rather than kept, so
    /// that an insert or a removal updates one counter of the header, not two: on a large
    /// table each read-modify-write of a counter cost about 10 % of an insert
    /// (docs/swiss-log.md, "Fewer counters per insert").
    #[inline(always)]
    pub(crate) fn room(&self) -> usize {
        // SAFETY: the header is valid while the segment is.
        let (len, deleted) = unsafe { ((*self.hdr()).len, (*self.hdr()).deleted) };
        (max_load(self.groups()) as u64).saturating_sub(len.saturating_add(deleted)) as usize
    }
    /// Whether the segment has no room, or is a full-size one within 1/128 of its load (28
    /// inserts of the default 3584): the last inserts before its split go through the
    /// out-of-line path, which prefaults a page of where its new segments will come from
    /// ([`RawTable::prefault`]). In segments of under 128 entries' load it is
    /// `room() == 0`. Two instructions more than that test. Written out rather than as
    /// `room() <= max_load(groups) >> 7`, the same test, which ran two more instructions per
    /// insert (callgrind, `ops_profile ours insert <n> 1`: 178.8 against 176.8 at 1K keys).
    #[inline(always)]
    pub(crate) fn nearly_full(&self) -> bool {
        // SAFETY: the header is valid while the segment is.
        let (len, deleted) = unsafe { ((*self.hdr()).len, (*self.hdr()).deleted) };
        let load = max_load(self.groups()) as u64;
        len.saturating_add(deleted) >= load - (load >> 7)
    }
    /// The block's handle (from the header).
    #[inline(always)]
    pub(crate) fn handle(&self) -> u64 {
        // SAFETY: the header is valid while the segment is.
        unsafe { (*self.hdr()).handle }
    }
    /// # Safety
    /// `i` must be below `capacity()`.
    #[inline(always)]
    pub(crate) unsafe fn ctrl_at(&self, i: usize) -> *mut u8 {
        // SAFETY: in bounds by the caller's promise: the control bytes follow the header.
        unsafe { self.base.as_ptr().add(SEG_HEADER + i) }
    }
    /// # Safety
    /// `i` must be below `capacity()`.
    #[inline(always)]
    pub(crate) unsafe fn slot(&self, i: usize) -> *mut Slot<K, V> {
        // SAFETY: forwarded.
        unsafe { self.slot_nn(i).as_ptr() }
    }
    /// Like [`slot`](Self::slot), as a `NonNull` (computed with `NonNull` arithmetic, so the
    /// optimizer knows that `Some(&slot)` is never the `None` niche and needs no null test).
    ///
    /// # Safety
    /// `i` must be below `capacity()`.
    #[inline(always)]
    pub(crate) unsafe fn slot_nn(&self, i: usize) -> NonNull<Slot<K, V>> {
        // SAFETY: in bounds by the caller's promise: slot i is (i + 1) slots below the header.
        unsafe { self.base.cast::<Slot<K, V>>().sub(i + 1) }
    }
    /// The index of slot `s` of this segment (the inverse of [`slot`](Self::slot)).
    #[inline(always)]
    pub(crate) fn index_of(&self, s: *const Slot<K, V>) -> usize {
        (self.base.as_ptr() as usize - s as usize) / size_of::<Slot<K, V>>() - 1
    }
    /// Starts loading the line of slot `4q` of `h`'s first group, the first slot of the key's
    /// preferred quarter (slots `4q` to `4q + 3`, that one line for 16-byte slots; for larger
    /// slots the line of the slot an insert tries first; see [`pick_free`]), so that
    /// the address translation of the slots' page, and for most keys the slot itself,
    /// overlaps the control group's load instead of following it. In a table far larger
    /// than the TLB's reach both loads take a page walk: one after the other they made our
    /// hits slower than hashbrown's, side by side faster. Used only from [`WARM_BYTES`] up,
    /// where inserts and moves put each key in its quarter when it has room
    /// (docs/swiss-log.md, "Warming the slots' page" and "Each key's quarter of its group").
    #[inline(always)]
    pub(crate) fn warm_slots(&self, h: u64) {
        // `start(h) + quarter_start(h)` in one mask: `pmask` has no bit below 4, and the
        // quarter is bits 2..4 of `h` (two instructions fewer than the sum).
        let i = h as usize & (self.pmask | QUARTER_MASK as usize);
        debug_assert_eq!(i, self.start(h) + quarter_start(h) as usize);
        // SAFETY: `i = start(h) + 4q < capacity` (`start` is a group's first slot; q < 4, and
        // a group has 16).
        prefetch(unsafe { self.slot(i) }.cast());
    }
    /// # Safety
    /// `pos` must be a group's first byte: a multiple of 16, at most `pmask`.
    #[inline(always)]
    pub(crate) unsafe fn group_at(&self, pos: usize) -> Group {
        // SAFETY: the group at `pos` is 16 control bytes inside the segment, aligned to 16.
        unsafe { Group::load(self.base.as_ptr().add(SEG_HEADER + pos)) }
    }
    /// # Safety
    /// `g` must be at most `mask()`.
    #[inline(always)]
    pub(crate) unsafe fn group(&self, g: usize) -> Group {
        // SAFETY: group `g` is 16 control bytes inside the segment, aligned to 16 (the control
        // bytes start 64 bytes into a block aligned to at least 64).
        unsafe { Group::load(self.base.as_ptr().add(SEG_HEADER + g * GROUP_WIDTH)) }
    }
}

/// Starts loading the cache line at `p` into every cache level (a hint: it never faults, and
/// does nothing off x86_64 or under miri).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: prefetching never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = p;
}

/// Bytewise key equality; keys of 1, 2, 4, 8 or 16 bytes compare as one integer (which
/// lets the compiler keep a looked-up key in a register).
#[inline(always)]
pub(crate) fn key_eq<K: Pod>(a: &K, b: &K) -> bool {
    #[inline(always)]
    fn int_eq<K, T: Pod + PartialEq>(a: &K, b: &K) -> bool {
        debug_assert_eq!(size_of::<T>(), size_of::<K>());
        let (a, b) = ((a as *const K).cast::<T>(), (b as *const K).cast::<T>());
        // SAFETY: callers pass a T of K's size; a Pod K's bytes are all initialized and any
        // bytes are a valid T; unaligned reads need no alignment.
        unsafe { a.read_unaligned() == b.read_unaligned() }
    }
    match size_of::<K>() {
        1 => int_eq::<K, u8>(a, b),
        2 => int_eq::<K, u16>(a, b),
        4 => int_eq::<K, u32>(a, b),
        8 => int_eq::<K, u64>(a, b),
        16 => int_eq::<K, u128>(a, b),
        _ => bytemuck::bytes_of(a) == bytemuck::bytes_of(b),
    }
}

/// Writes a full slot's control byte, after the slot's key and value: a release store, so
/// that the compiler keeps the slot's writes before it. A process killed at any instruction
/// leaves its stores in program order, so a control byte that says full never stands for a
/// half-written entry in a file.
///
/// # Safety
/// `c` must be a control byte of a segment the caller owns exclusively.
#[inline(always)]
pub(crate) unsafe fn publish(c: *mut u8, tag: u8) {
    // SAFETY: a valid, exclusively owned byte (any byte is aligned for an AtomicU8), only
    // accessed by this thread.
    unsafe {
        core::sync::atomic::AtomicU8::from_ptr(c).store(tag, core::sync::atomic::Ordering::Release)
    }
}

/// The 7-bit tag of hash `h`: its top 7 bits ([`TAG_BITS`](crate::hash::TAG_BITS)).
#[inline(always)]
pub(crate) fn tag(h: u64) -> u8 {
    (h >> crate::hash::TAG_BITS.start) as u8
}

/// Where a key is, or where it could go.
pub(crate) enum Probe {
    Found(usize),
    /// Not present; the first free (empty or deleted) slot on its probe sequence, if any.
    Absent(Option<usize>),
}

/// A found key: what [`find_in`] returns.
pub(crate) struct Hit<K, V> {
    /// The slot's index.
    pub(crate) i: usize,
    /// The slot's address.
    pub(crate) slot: NonNull<Slot<K, V>>,
    /// Whether the slot's group has an `EMPTY` byte (what a removal needs to know).
    pub(crate) group_has_empty: bool,
}

/// Finds `key` in `seg`. The probe visits groups `g, g+1, g+3, g+6, ...` (mod groups),
/// triangular steps that visit every group once, and stops at the first group with an
/// `EMPTY` slot. Positions are byte offsets into the control bytes (a group's is 16 times its
/// index), so a slot index is its group's position plus the bit.
///
/// Returns the slot's index, its address and whether its group has an `EMPTY` byte (for a
/// removal; unused results cost nothing, this is inlined). The address is the one the key was
/// compared at: deriving the value's address from it keeps the optimizer's knowledge that it
/// is not null, so `get`'s `Option<&V>` needs no null test.
#[inline(always)]
pub(crate) fn find_in<K: Pod, V>(seg: &SegRef<K, V>, h: u64, key: &K) -> Option<Hit<K, V>> {
    let t = tag(h);
    let mut pos = seg.start(h);
    let mut stride = 0;
    loop {
        // SAFETY: pos <= pmask, a group's first byte.
        let grp = unsafe { seg.group_at(pos) };
        let candidate = |bit: usize| {
            let i = pos + bit;
            // SAFETY: i < capacity.
            let s = unsafe { seg.slot_nn(i) };
            // SAFETY: a full slot's bytes were written (or come from a mapping, whose bytes
            // are always initialized).
            key_eq(unsafe { &(*s.as_ptr()).key }, key).then(|| Hit {
                i,
                slot: s,
                group_has_empty: grp.match_empty().any(),
            })
        };
        let m = grp.match_tag(t);
        // The first candidate before the loop over the others: most lookups end there, and
        // then run no loop head (which LLVM pads with a no-op).
        if let Some(bit) = m.lowest() {
            if let Some(hit) = candidate(bit) {
                return Some(hit);
            }
            for bit in m.without_lowest() {
                if let Some(hit) = candidate(bit) {
                    return Some(hit);
                }
            }
        }
        if grp.match_empty().any() {
            return None;
        }
        stride += GROUP_WIDTH;
        if stride > seg.pmask {
            return None;
        }
        pos = (pos + stride) & seg.pmask;
    }
}

/// Like [`find_in`], also remembering the first free slot on the way.
#[inline(always)]
pub(crate) fn probe<K: Pod, V, const QUARTERS: bool>(seg: &SegRef<K, V>, h: u64, key: &K) -> Probe {
    let t = tag(h);
    let mut pos = seg.start(h);
    let mut stride = 0;
    let mut free = None;
    loop {
        // SAFETY: pos <= pmask, a group's first byte.
        let grp = unsafe { seg.group_at(pos) };
        for bit in grp.match_tag(t) {
            let i = pos + bit;
            // SAFETY: as in `find_in`.
            if key_eq(unsafe { &(*seg.slot(i)).key }, key) {
                return Probe::Found(i);
            }
        }
        if free.is_none() {
            if let Some(b) = pick_free::<QUARTERS>(grp.match_empty_or_deleted(), h) {
                free = Some(pos + b);
            }
        }
        if grp.match_empty().any() {
            return Probe::Absent(free);
        }
        stride += GROUP_WIDTH;
        if stride > seg.pmask {
            return Probe::Absent(free);
        }
        pos = (pos + stride) & seg.pmask;
    }
}

/// The free slot (of those in `free`, a group's) that an insert or a move of a key of hash
/// `h` takes. In a table that warms (`QUARTERS`, from [`WARM_BYTES`] up): the first free slot
/// at or after slot `h & 12`, wrapping around the group. So each key has a preferred
/// quarter of its group (slots `4q..4q + 4`, one cache line of 16-byte slots), chosen by hash
/// bits `2..4`, which nothing else uses; inserts and moves put it there when the quarter has
/// room, and lookups prefetch that quarter's line ([`SegRef::warm_slots`]), so most hits
/// find their slot's line on its way in (with the lowest free slot, only the keys in slots
/// 0-3 did). Elsewhere the lowest free slot: a table of about L3's size was faster with its
/// entries packed into the low slots of each group (fewer lines in use) than spread over the
/// four quarters (docs/swiss-log.md, "Each key's quarter of its group"). A const parameter,
/// so that the small table's code is what it was.
#[inline(always)]
fn pick_free<const QUARTERS: bool>(free: BitMask, h: u64) -> Option<usize> {
    if !QUARTERS {
        return free.lowest();
    }
    let s = quarter_start(h);
    let r = free.0.rotate_right(s);
    if r == 0 {
        None
    } else {
        Some((r.trailing_zeros() + s) as usize % GROUP_WIDTH)
    }
}

/// Hash bits `2..4`: four times the index of a key's preferred quarter of its group.
const QUARTER_MASK: u32 = 0b1100;

/// The first slot of `h`'s preferred quarter of a group (see [`pick_free`]): hash bits
/// `2..4`, which `start` masks off, taken as they lie (`4 * q` for quarter `q`, one
/// instruction).
#[inline(always)]
fn quarter_start(h: u64) -> u32 {
    h as u32 & QUARTER_MASK
}

/// The first free slot on `h`'s probe sequence.
#[inline(always)]
fn find_free<K, V, const QUARTERS: bool>(seg: &SegRef<K, V>, h: u64) -> Option<usize> {
    first_on_sequence(seg, h, |pos| {
        // SAFETY: pos <= pmask, a group's first byte.
        pick_free::<QUARTERS>(unsafe { seg.group_at(pos) }.match_empty_or_deleted(), h)
    })
}

/// Walks `h`'s probe sequence in `seg` (each group once) until `free_in(pos)`, given a
/// group's first byte, names a free slot of that group by its bit; returns the slot's index.
#[inline(always)]
fn first_on_sequence<K, V>(
    seg: &SegRef<K, V>,
    h: u64,
    mut free_in: impl FnMut(usize) -> Option<usize>,
) -> Option<usize> {
    let mut pos = seg.start(h);
    let mut stride = 0;
    loop {
        if let Some(b) = free_in(pos) {
            return Some(pos + b);
        }
        stride += GROUP_WIDTH;
        if stride > seg.pmask {
            return None;
        }
        pos = (pos + stride) & seg.pmask;
    }
}

/// Most groups of a destination whose filled slots a move tracks in words of its own (see
/// `move_entries`): the default segment size, 256 groups (512 bytes of words per destination).
const OCC_GROUPS: usize = 256;

/// The first slot on `h`'s probe sequence that `occ` (one word per group, a bit per slot)
/// does not mark as filled, marked now: [`find_free`] for a fresh segment whose only full
/// slots are those marked in `occ`, without reading its control bytes.
#[inline(always)]
fn find_unfilled<K, V, const QUARTERS: bool>(
    seg: &SegRef<K, V>,
    h: u64,
    occ: &mut [u16; OCC_GROUPS],
) -> Option<usize> {
    first_on_sequence(seg, h, |pos| {
        let w = &mut occ[pos / GROUP_WIDTH % OCC_GROUPS];
        let b = pick_free::<QUARTERS>(BitMask(!*w), h)?;
        *w |= 1 << b;
        Some(b)
    })
}

/// How far ahead [`RawTable::prefault`] goes, in full-size segments: the two of a split.
const PREFAULT_SEGMENTS: u64 = 2;

/// Smallest next mirror (in bytes) that [`DirSpare`] prepares: a page. Smaller buffers come
/// from the allocator's pages already in use. Unit tests lower it to 128 bytes (8
/// entries), so that their small tables prepare several doublings.
const SPARE_MIN_BYTES: usize = if cfg!(test) { 128 } else { 4 << 10 };

/// Memory for the mirror's next doubling, faulted in ahead of it. A doubling writes a new
/// mirror twice the size of the old; into fresh memory, its page faults were most of its
/// cost (at 16K entries, about 260 us of the new 256 KiB mirror against a copy of some tens).
/// So after a doubling the table allocates the next mirror's buffer and each split writes
/// one byte of one of its pages; a table makes about one split per entry of its mirror
/// before the next doubling, and the buffer has one page per 128 entries of the mirror, so
/// the pages are all there long before the doubling needs them (docs/swiss-log.md, "The
/// directory's doubling"). In-process memory only: nothing of it is in the table's file.
pub(crate) struct DirSpare<K, V> {
    /// Capacity for twice the mirror's entries (or none yet), length 0.
    buf: Vec<SegRef<K, V>>,
    /// Bytes of `buf`'s capacity written so far, a page at a time.
    touched: usize,
    /// The mirror that the last doubling replaced, freed at the next split rather than in
    /// the doubling (freeing a large one is an munmap).
    retired: Vec<SegRef<K, V>>,
}

impl<K, V> DirSpare<K, V> {
    fn new() -> Self {
        DirSpare {
            buf: Vec::new(),
            touched: 0,
            retired: Vec::new(),
        }
    }

    /// Takes the buffer for a mirror of `n` entries, if it has the room.
    fn take(&mut self, n: usize) -> Option<Vec<SegRef<K, V>>> {
        if self.buf.capacity() < n {
            return None;
        }
        self.touched = 0;
        Some(core::mem::take(&mut self.buf))
    }

    /// One step of the preparation for a mirror of `n` entries, after a split: frees the
    /// retired mirror unless this split's own doubling retired it, allocates the buffer if it
    /// has none of that size, and faults in one more of its pages.
    fn step(&mut self, n: usize, doubled: bool) {
        if !doubled {
            self.retired = Vec::new();
        }
        let bytes = n.saturating_mul(size_of::<SegRef<K, V>>());
        if bytes < SPARE_MIN_BYTES {
            return;
        }
        if self.buf.capacity() < n {
            let mut v = Vec::new();
            if v.try_reserve_exact(n).is_err() {
                // Only an optimization: the doubling will allocate (and report) instead.
                return;
            }
            self.buf = v;
            self.touched = 0;
        }
        let cap = self.buf.capacity() * size_of::<SegRef<K, V>>();
        if self.touched < cap {
            // SAFETY: `touched < cap`: a byte of the buffer's spare capacity, memory the Vec
            // owns and does not read (its length is 0). Volatile, so that the store that
            // faults the page in is not removed as dead.
            unsafe {
                self.buf
                    .as_mut_ptr()
                    .cast::<u8>()
                    .add(self.touched)
                    .write_volatile(0);
            }
            self.touched += 4096;
        }
    }

    /// Drops the buffer (the mirror shrank: it is too large now).
    fn reset(&mut self) {
        *self = DirSpare::new();
    }
}

/// The table's storage and bookkeeping.
pub(crate) struct RawTable<K, V, M: TableMemory, H> {
    /// In-process mirror of the stored directory: one resolved segment per entry.
    pub(crate) dir: Vec<SegRef<K, V>>,
    /// The table's only segment while the global depth is 0 (a copy of `dir[0]`), else
    /// `None`. Lookups test it first: a table of one segment then needs no mirror load,
    /// which the group's address would otherwise wait for (see [`on_seg`](Self::on_seg)).
    /// Kept by [`sync_lone`](Self::sync_lone) wherever the mirror changes.
    lone: Option<SegRef<K, V>>,
    /// The next doubling's mirror, prepared a page per split.
    spare: DirSpare<K, V>,
    /// `DIR_SHIFT0 - global_depth`: `(h >> shift) & dmask` is the directory index (the top
    /// `global_depth` bits of [`DIR_BITS`](crate::hash::DIR_BITS)) times 16, the byte offset
    /// of its entry in the mirror, in two instructions.
    shift: u32,
    /// `dir_mask(global_depth)`.
    dmask: usize,
    /// Whether lookups, inserts and removals prefetch the slots of the key's first group
    /// beside its control group ([`SegRef::warm_slots`]): whether the directory spans at
    /// least [`WARM_BYTES`] of full-size segments. Set with the global depth.
    warm: bool,
    pub(crate) seed: u64,
    /// `H::prepare(seed)`.
    prepared: u64,
    hdr: NonNull<TableHeader>,
    hdr_handle: u64,
    dir_ptr: NonNull<u64>,
    dir_handle: u64,
    pub(crate) max_groups: usize,
    /// `shrink_at(max_groups)`: a removal that leaves a segment longer than this cannot
    /// cross a merge or shrink threshold (precomputed: the removal path tests it every time).
    sparse_len: usize,
    /// Segments whose local depth equals the global depth.
    at_global: usize,
    /// Entries in the table (the sum of the segments' lengths). Kept here, not in the stored
    /// header: an increment through the region on every insert cost 15-20 ns of a large
    /// table's insert where the insert is inlined (docs/swiss-log.md, "Insert's hot path, and the
    /// length in the process"). `store_len` writes it to the header.
    len: usize,
    pub(crate) root: Option<String>,
    /// This handle's registration as the table's user in this process (named tables only;
    /// see [`claim`]).
    open: Option<Registered>,
    /// What `open` repaired, if the table had been left open (see [`RawTable::repair`]).
    pub(crate) repaired: Option<RepairReport>,
    pub(crate) mem: M,
    _types: PhantomData<(K, V, H)>,
}

/// The header's owner word, accessed atomically: processes claim the table by it.
///
/// # Safety
/// `hdr` must point to a table header aligned to 8 that stays valid while the result is used.
unsafe fn owner_word<'a>(hdr: NonNull<TableHeader>) -> &'a AtomicU64 {
    // SAFETY: an aligned, valid u64 by the caller's promise; other processes (and this
    // one's other mappings of the file) access it only atomically.
    unsafe { AtomicU64::from_ptr(core::ptr::addr_of_mut!((*hdr.as_ptr()).owner)) }
}

/// Claims the table whose header is `hdr` for this process (owner id `me`): swaps its owner
/// word from [`CLOSED`] or from the id of a process that died to `me`, writes a new token
/// and registers it as open here. Fails with [`Error::InUse`] if a live process has the
/// table open, this one included: its owner is `me` and its token is one of this
/// process's open handles'. An owner of `me` with another token was left by a handle of
/// this process that is gone (an open that failed in its repair, or a program that this
/// process replaced with `exec`), and is taken over like a dead process's.
///
/// With `take_over`, any owner is taken over like a dead process's: the caller knows that
/// nobody uses the memory (see [`SwissTable::take_over_in`](crate::SwissTable::take_over_in)).
///
/// Returns the owner it took over: [`CLOSED`], or a dead owner whose table needs a repair.
/// The claims of this process's threads are serialized by the list's lock; those of other
/// processes by the compare-and-swap.
///
/// # Safety
/// As for [`owner_word`].
unsafe fn claim(
    hdr: NonNull<TableHeader>,
    me: u64,
    take_over: bool,
) -> Result<(u64, Registered), Error> {
    let mut list = open_here::lock();
    // SAFETY: forwarded.
    let owner = unsafe { owner_word(hdr) };
    let mut cur = owner.load(Acquire);
    loop {
        if take_over {
            // Whoever the word names does not use the memory (the caller's promise).
        } else if cur == me {
            // SAFETY: a valid header; the token of an owner `me` was written by this
            // process, under the lock held here.
            let token = unsafe { core::ptr::addr_of!((*hdr.as_ptr()).token).read() };
            if list.contains(&token) {
                return Err(Error::InUse {
                    pid: (me >> 32) as u32,
                });
            }
        } else if cur != CLOSED && !offheap_mmap::process::owner_is_dead(cur) {
            return Err(Error::InUse {
                pid: (cur >> 32) as u32,
            });
        }
        match owner.compare_exchange(cur, me, AcqRel, Acquire) {
            Ok(_) => break,
            Err(now) => cur = now,
        }
    }
    let registered = Registered::new(&mut list, me);
    // SAFETY: a valid header, claimed by this process.
    unsafe { core::ptr::addr_of_mut!((*hdr.as_ptr()).token).write(registered.token) };
    Ok((cur, registered))
}

/// Gives back a claim of an `open` that failed: the owner word goes back to `prev`, so that
/// the file is left as `open` found it.
///
/// # Safety
/// As for [`owner_word`].
unsafe fn unclaim(hdr: NonNull<TableHeader>, me: u64, prev: u64) {
    // SAFETY: forwarded.
    let owner = unsafe { owner_word(hdr) };
    let _ = owner.compare_exchange(me, prev, AcqRel, Relaxed);
}

/// Gives a claim back when dropped (an early error of `open`, before the table owns the
/// memory).
struct Unclaim {
    hdr: NonNull<TableHeader>,
    me: u64,
    prev: u64,
}

impl Drop for Unclaim {
    fn drop(&mut self) {
        // SAFETY: dropped before the memory that holds the header (see `open`).
        unsafe { unclaim(self.hdr, self.me, self.prev) };
    }
}

/// A block of memory as (address, size): what `open` checks for overlaps.
type Block = (usize, usize);

fn oob(offset: u64, len: usize) -> Error {
    Error::OffsetOutOfBounds {
        offset,
        len: len as u64,
    }
}

fn fingerprint<K, V>() -> [u32; 4] {
    [
        size_of::<K>() as u32,
        align_of::<K>() as u32,
        size_of::<V>() as u32,
        align_of::<V>() as u32,
    ]
}

impl<K, V, M: TableMemory, H> RawTable<K, V, M, H> {
    #[inline(always)]
    pub(crate) fn global_depth(&self) -> u32 {
        DIR_SHIFT0 - self.shift
    }

    /// Number of directory entries a segment of depth `depth` covers. A depth above the
    /// directory's (a segment header changed behind the table, in a corrupt region) reads as
    /// covering one entry, so that no walk over the directory overflows or stalls; the
    /// structural changes refuse such a segment ([`checked_depth`](Self::checked_depth)).
    #[inline(always)]
    pub(crate) fn span(&self, depth: u32) -> usize {
        1 << self.global_depth().saturating_sub(depth)
    }

    /// `seg`'s depth, or `Error::Corrupt` if it is above the directory's: the open checks
    /// every segment's depth, so only memory changed behind the table since (a corrupt
    /// allocator that handed out a block still in use) makes one so.
    fn checked_depth(&self, seg: &SegRef<K, V>) -> Result<u32, Error> {
        let d = seg.depth();
        if d > self.global_depth() {
            return Err(Error::Corrupt(
                "segment depth above the directory's (changed behind the table)",
            ));
        }
        Ok(d)
    }

    /// The length, read as 0 where it went below zero. That happens only in a corrupt file,
    /// whose segments may hold more full slots than their stored lengths (which `open` sums)
    /// count; read as is, the wrapped length made `len()` and every iterator's exact size
    /// close to 2^64 (`iter().collect()` panicked). Checked here, not in `add_len`, which
    /// every removal runs.
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        if self.len > isize::MAX as usize {
            0
        } else {
            self.len
        }
    }

    /// Writes the length into the stored header (which `open` does not rely on).
    pub(crate) fn store_len(&mut self) {
        // SAFETY: the header block stays valid while the table lives; `&mut self` excludes
        // other access.
        unsafe { (*self.hdr.as_ptr()).len = self.len() as u64 };
    }

    /// Records the segments of a structural change: the new ones, before the directory names
    /// them, and the ones they replace, before the directory stops naming them; after a
    /// process died in between, `open` frees those that no directory entry names. An empty
    /// slice clears the record. The compiler fences keep the record's writes between the
    /// change's steps before and after it.
    fn pend(&mut self, segs: &[SegRef<K, V>]) {
        let mut words = [0; 3];
        for (w, s) in words.iter_mut().zip(segs) {
            *w = s.word();
        }
        self.pend_words(words);
    }

    /// [`pend`](Self::pend) for raw pending words: segment words, or a directory block's
    /// handle tagged with [`PENDING_DIR`].
    fn pend_words(&mut self, words: [u64; 3]) {
        use core::sync::atomic::{compiler_fence, Ordering::SeqCst};
        compiler_fence(SeqCst);
        // SAFETY: the header block is valid while the table lives; `&mut self`.
        unsafe { (*self.hdr.as_ptr()).pending = words };
        compiler_fence(SeqCst);
        kill_point!();
    }

    /// Allocates a block whose handle fits a directory word (below 2^56).
    fn alloc_block(mem: &M, size: usize, align: usize) -> Result<u64, Error> {
        let handle = mem.alloc(size as u64, align as u64)?;
        Self::fits_a_word(mem, handle, size, align)
    }

    /// `handle`, a block just allocated with `size` and `align`, if it is below 2^56 (it fits
    /// a directory or pending word); else frees it and says so.
    fn fits_a_word(mem: &M, handle: u64, size: usize, align: usize) -> Result<u64, Error> {
        if handle >> HANDLE_BITS != 0 {
            // SAFETY: just allocated, never shared.
            unsafe { mem.free(handle) };
            return Err(Error::Alloc {
                size: size as u64,
                align: align as u64,
                source: Some("memory returned a handle of 2^56 or more".into()),
            });
        }
        Ok(handle)
    }

    /// Allocates a block for a structural change and records it in a free pending word as
    /// fresh ([`PENDING_FRESH`]) as it is allocated ([`TableMemory::alloc_recorded`]): a
    /// process killed between the allocation and the block's record as a segment or a
    /// directory block leaves it to `open`'s repair, which frees a live block so recorded
    /// that nothing names. (Before, a kill in that window leaked the block.) In a region the
    /// record is the store after the allocation's own write, and `Region::recover` (which a
    /// region that a kill left inside its allocator needs before anything allocates again:
    /// a plain open refuses it) stores the record of an allocation that a kill left without
    /// one: no kill leaks the block, and a record names only a block allocated for it.
    fn alloc_fresh(&mut self, size: usize, align: usize) -> Result<u64, Error> {
        use core::sync::atomic::{compiler_fence, Ordering::SeqCst};
        let hdr = self.hdr.as_ptr();
        // SAFETY: the header block is valid while the table lives; `&mut self`.
        let free = unsafe { (*hdr).pending.iter().position(|&w| w == 0) };
        // Every caller has at most two words in use when it allocates.
        debug_assert!(free.is_some());
        let Some(i) = free else {
            return Self::alloc_block(&self.mem, size, align);
        };
        let at = core::mem::offset_of!(TableHeader, pending) + 8 * i;
        compiler_fence(SeqCst);
        let record = AllocRecord {
            block: self.hdr_handle,
            at: at as u64,
            mark: PENDING_FRESH,
        };
        let handle = self.mem.alloc_recorded(size as u64, align as u64, record)?;
        compiler_fence(SeqCst);
        kill_point!();
        if handle >> HANDLE_BITS != 0 {
            // The record is no handle; it goes before the block does.
            // SAFETY: as above.
            unsafe { (*hdr).pending[i] = 0 };
            compiler_fence(SeqCst);
        }
        Self::fits_a_word(&self.mem, handle, size, align)
    }

    /// Frees `handle`, a block from [`alloc_fresh`](Self::alloc_fresh) that nothing else
    /// has seen, on an error path: its fresh record first, then the block.
    fn discard_fresh(&mut self, handle: u64) {
        use core::sync::atomic::{compiler_fence, Ordering::SeqCst};
        let hdr = self.hdr.as_ptr();
        // SAFETY: the header block is valid while the table lives; `&mut self`.
        unsafe {
            for w in &mut (*hdr).pending {
                if *w == handle | PENDING_FRESH {
                    *w = 0;
                }
            }
        }
        compiler_fence(SeqCst);
        // SAFETY: just allocated, never shared.
        unsafe { self.mem.free(handle) };
    }

    /// Ends a structural change: frees `segs`, the segments it leaves unnamed (the ones
    /// it replaced, or its own new ones when it gives up, as after a failed move, see
    /// [`move_entries`](Self::move_entries)), then clears the pending words that recorded
    /// them. A kill between the frees and the clear leaves records of freed blocks, which
    /// the repair skips.
    ///
    /// # Safety
    /// No directory entry names any of `segs`, each is one of this table's live segments,
    /// listed once, and none is used afterwards.
    unsafe fn retire(&mut self, segs: &[SegRef<K, V>]) {
        for s in segs {
            // SAFETY: by the caller's promise.
            unsafe { Self::free_segment(&self.mem, *s) };
        }
        self.pend(&[]);
    }

    /// Claims a table just created for this process (`create_in` does, before it names the
    /// table), so that a kill leaves it marked open for the next `open` to repair.
    pub(crate) fn claim_new(&mut self) -> Result<(), Error> {
        let me =
            offheap_mmap::process::checked_owner_id().map_err(|e| Error::Memory(Box::new(e)))?;
        // SAFETY: the header block is valid while the table lives, aligned to 64.
        let (_, registered) = unsafe { claim(self.hdr, me, false) }?;
        self.open = Some(registered);
        Ok(())
    }

    /// Records that the table was closed cleanly: its length, then (after it) the owner
    /// [`CLOSED`], so that `open` skips the repair a table left open by a dead process needs.
    /// Nothing for a table this handle never claimed, or in a child process forked with the
    /// handle (the table is still its parent's).
    pub(crate) fn close(&mut self) {
        let Some(registered) = self.open.take() else {
            return;
        };
        if std::process::id() == (registered.me >> 32) as u32 {
            self.store_len();
            // The token goes with the claim, so that a closed table's file says nothing of
            // the handle that had it (two files built alike are alike, see `normalize` in
            // offheap-mmap). Under the list's lock, and before the owner word: a claim of
            // this process that saw our owner id with no token of an open handle would take
            // the table over while this close still holds it.
            let list = open_here::lock();
            // SAFETY: the header is valid while the table lives; only the claimant writes
            // the token, and this handle is it.
            unsafe { core::ptr::addr_of_mut!((*self.hdr.as_ptr()).token).write(0) };
            // SAFETY: the header is valid while the table lives, aligned to 64. Release:
            // the length and the token are written before the table reads as closed.
            let owner = unsafe { owner_word(self.hdr) };
            let _ = owner.compare_exchange(registered.me, CLOSED, Release, Relaxed);
            drop(list);
        }
    }

    /// Test-only: forgets this handle's registration as if its process had died, so that a
    /// test can reopen (and repair) what it left, in the same process.
    #[cfg(test)]
    pub(crate) fn die(&mut self) {
        self.open = None;
    }

    /// Frees a segment's block, first clearing its magic, so that a stale directory entry
    /// naming the freed block (in a corrupt file) finds no segment there.
    ///
    /// # Safety
    /// As [`TableMemory::free`] for the segment's handle; `seg` is not used afterwards.
    unsafe fn free_segment(mem: &M, seg: SegRef<K, V>) {
        // SAFETY: the header is valid until the block is freed, just below, by the caller's
        // promise.
        unsafe {
            let h = seg.hdr();
            let handle = (*h).handle;
            (*h).magic = 0;
            core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
            kill_point!();
            mem.free(handle);
            kill_point!();
        }
    }

    /// Frees every block of the table.
    pub(crate) fn free_all(&mut self) {
        let mut i = 0;
        while i < self.dir.len() {
            let seg = self.dir[i];
            let d = seg.depth();
            // SAFETY: each segment is freed once (one per directory range); nothing uses the
            // table afterwards.
            unsafe { Self::free_segment(&self.mem, seg) };
            i += self.span(d);
        }
        self.dir.clear();
        self.lone = None;
        // SAFETY: as above.
        unsafe {
            self.mem.free(self.dir_handle);
            self.mem.free(self.hdr_handle);
        }
    }
}

impl<K: Pod, V: Pod, M: TableMemory, H: SeededHash> RawTable<K, V, M, H> {
    /// A new empty table with one segment of one group.
    pub(crate) fn new(mem: M, seed: u64, max_groups: usize) -> Result<Self, Error> {
        if !max_groups.is_power_of_two() || max_groups > MAX_GROUPS_LIMIT {
            return Err(Error::InvalidOptions(
                "segment_slots must be a power of two from 16 to 2^20",
            ));
        }
        if align_of::<Slot<K, V>>() > MAX_SLOT_ALIGN
            || size_of::<K>() > u32::MAX as usize
            || size_of::<V>() > u32::MAX as usize
            || seg_layout::<K, V>(max_groups).is_none()
        {
            return Err(Error::InvalidOptions(
                "key/value types too large or too aligned",
            ));
        }
        let hsize = Self::header_block_size();
        let hdr_handle = mem.alloc(hsize as u64, 64)?;
        let hdr = match mem.ptr(hdr_handle, hsize as u64) {
            Some(p) => p.cast::<TableHeader>(),
            None => return Err(oob(hdr_handle, hsize)),
        };
        let seg = match Self::new_segment(&mem, hdr_handle, 1, 0) {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: just allocated, never shared.
                unsafe { mem.free(hdr_handle) };
                return Err(e);
            }
        };
        let (dir_handle, dir_ptr) = match Self::alloc_dir(&mem, 1) {
            Ok(d) => d,
            Err(e) => {
                // SAFETY: just allocated, never shared.
                unsafe {
                    Self::free_segment(&mem, seg);
                    mem.free(hdr_handle);
                }
                return Err(e);
            }
        };
        // SAFETY: the directory block holds one u64.
        unsafe { dir_ptr.as_ptr().write(seg.word()) };
        let [key_size, key_align, val_size, val_align] = fingerprint::<K, V>();
        let mut h = TableHeader {
            magic: TABLE_MAGIC,
            version: VERSION,
            max_groups: max_groups as u32,
            key_size,
            key_align,
            val_size,
            val_align,
            hasher_id: H::ID,
            seed,
            checksum: 0,
            len: 0,
            // Set by `claim_new` before the table has a name (an unnamed table is never
            // reopened; and the owner id costs a read of /proc).
            owner: CLOSED,
            dir: header_dir_word(dir_handle, 0),
            pending: [0; 3],
            token: 0,
        };
        h.checksum = h.checksum();
        // SAFETY: the header block is large enough and aligned to 64.
        unsafe { hdr.as_ptr().write(h) };
        let mut t = RawTable {
            dir: vec![seg],
            // Set from the depth and the mirror just below.
            lone: None,
            spare: DirSpare::new(),
            shift: 0,
            dmask: 0,
            warm: false,
            seed,
            prepared: H::prepare(seed),
            hdr,
            hdr_handle,
            dir_ptr,
            dir_handle,
            max_groups,
            sparse_len: shrink_at(max_groups),
            at_global: 1,
            len: 0,
            root: None,
            repaired: None,
            open: None,
            mem,
            _types: PhantomData,
        };
        t.set_global_depth(0);
        t.sync_lone();
        Ok(t)
    }

    /// Handle of the table header (what a root name stores).
    pub(crate) fn header_handle(&self) -> u64 {
        self.hdr_handle
    }

    /// Bytes of the header block: the header, then an undo area of one value (see
    /// [`replace_logged`](Self::replace_logged)).
    const fn header_block_size() -> usize {
        size_of::<TableHeader>() + size_of::<V>()
    }

    /// Opens the table whose header is at `hdr_handle`, validating everything it follows.
    pub(crate) fn open(mem: M, hdr_handle: u64, take_over: bool) -> Result<Self, Error> {
        let hsize = size_of::<TableHeader>();
        let hp = mem
            .ptr(hdr_handle, hsize as u64)
            .ok_or_else(|| oob(hdr_handle, hsize))?;
        if hp.as_ptr() as usize % align_of::<TableHeader>() != 0 {
            return Err(Error::Corrupt("misaligned table header"));
        }
        let hdr = hp.cast::<TableHeader>();
        // SAFETY: `ptr` vouched for `hsize` bytes, aligned as checked; any bytes are a valid
        // TableHeader (plain integers).
        let h = unsafe { hdr.as_ptr().read() };
        if h.magic != TABLE_MAGIC {
            return Err(Error::Corrupt("bad table magic"));
        }
        if h.version != VERSION {
            return Err(Error::UnsupportedVersion(h.version));
        }
        if h.checksum != h.checksum() {
            return Err(Error::Corrupt("table header checksum mismatch"));
        }
        let found = [h.key_size, h.key_align, h.val_size, h.val_align];
        if found != fingerprint::<K, V>() {
            return Err(Error::TypeMismatch {
                expected: fingerprint::<K, V>(),
                found,
            });
        }
        if h.hasher_id != H::ID {
            return Err(Error::HasherMismatch {
                expected: H::ID,
                found: h.hasher_id,
            });
        }
        let max_groups = h.max_groups as usize;
        if !max_groups.is_power_of_two() || max_groups > MAX_GROUPS_LIMIT {
            return Err(Error::Corrupt("segment size out of range"));
        }
        // The header block holds an undo area of one value after the header.
        let bsize = Self::header_block_size();
        if mem.ptr(hdr_handle, bsize as u64).is_none() {
            return Err(oob(hdr_handle, bsize));
        }
        // The fields above never change once the table is created. Claim the table before
        // reading the others, which the handle that has it open (if any) changes.
        let me =
            offheap_mmap::process::checked_owner_id().map_err(|e| Error::Memory(Box::new(e)))?;
        // SAFETY: `hdr` is a table header, aligned as checked, valid while `mem` is.
        let (prev, registered) = unsafe { claim(hdr, me, take_over) }?;
        let repair = prev != CLOSED;
        // Until the table is built, an error gives the claim back (`mem`, a parameter, is
        // dropped after this guard).
        let undo = Unclaim { hdr, me, prev };
        // SAFETY: as above.
        let h = unsafe { hdr.as_ptr().read() };
        let gd = (h.dir >> HANDLE_BITS) as u32;
        let dir_handle = word_handle(h.dir);
        if gd > MAX_DEPTH {
            return Err(Error::Corrupt("directory depth out of range"));
        }
        // Every structural change and value replacement clears the pending words it set
        // before it returns, so a table closed cleanly has none set. One that does is a
        // corrupt header, not work left half done: without the repair, which only a table
        // left open gets, a set word would stay, and changes would find no free one.
        if !repair && h.pending != [0; 3] {
            return Err(Error::Corrupt(
                "pending words set in a table closed cleanly",
            ));
        }
        let n = 1usize << gd;
        let dir_ptr = mem
            .ptr(dir_handle, (n * 8) as u64)
            .ok_or_else(|| oob(dir_handle, n * 8))?
            .cast::<u64>();
        if dir_ptr.as_ptr() as usize % 8 != 0 {
            return Err(Error::Corrupt("misaligned directory"));
        }
        // Blocks as (address, size), to check that none overlap.
        let mut blocks: Vec<Block> = vec![
            (hp.as_ptr() as usize, bsize),
            (dir_ptr.as_ptr() as usize, n * 8),
        ];
        let mut dir: Vec<SegRef<K, V>> = Vec::with_capacity(n);
        let mut last = None;
        for i in 0..n {
            // SAFETY: i < n and the directory block holds n u64s.
            let word = unsafe { dir_ptr.as_ptr().add(i).read() };
            if last == Some(word) {
                dir.push(dir[i - 1]);
                continue;
            }
            last = Some(word);
            let (seg, block) = Self::check_segment(&mem, word, hdr_handle, gd, !repair, false)?;
            blocks.push(block);
            dir.push(seg);
        }
        if !repair {
            // A table closed cleanly: each segment's entries must be exactly the aligned
            // range its depth implies.
            let mut i = 0;
            while i < n {
                let span = 1usize << (gd - dir[i].depth());
                if i % span != 0 {
                    return Err(Error::Corrupt(
                        "directory entries of a segment are misplaced",
                    ));
                }
                if dir[i..i + span].iter().any(|s| s.base != dir[i].base) {
                    return Err(Error::Corrupt("directory entries of a segment disagree"));
                }
                i += span;
            }
        }
        blocks.sort_unstable();
        blocks.dedup();
        for w in blocks.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                return Err(Error::Corrupt("blocks overlap"));
            }
        }
        let mut t = RawTable {
            dir,
            // Set from the depth and the mirror just below.
            lone: None,
            spare: DirSpare::new(),
            shift: 0,
            dmask: 0,
            warm: false,
            seed: h.seed,
            prepared: H::prepare(h.seed),
            hdr,
            hdr_handle,
            dir_ptr,
            dir_handle,
            max_groups,
            sparse_len: shrink_at(max_groups),
            at_global: 0,
            len: 0,
            root: None,
            repaired: None,
            open: None,
            mem,
            _types: PhantomData,
        };
        t.set_global_depth(gd);
        t.sync_lone();
        // From here `t` owns the memory, which an owned region unmaps when dropped: an error
        // gives the claim back by hand, while `t` is alive.
        core::mem::forget(undo);
        match t.finish_open(repair) {
            Ok(()) => {
                t.open = Some(registered);
                Ok(t)
            }
            Err(e) => {
                // SAFETY: the header is valid while `t` is.
                unsafe { unclaim(hdr, me, prev) };
                Err(e)
            }
        }
    }

    /// The part of `open` after the table is built: the repair of a table left open, and
    /// the length, summed from the segments.
    fn finish_open(&mut self, repair: bool) -> Result<(), Error> {
        let t = self;
        if repair {
            t.repaired = Some(t.repair()?);
        }
        let (n, gd) = (t.dir.len(), t.global_depth());
        // The header's `len` is not used: it is written only when the table is closed, so
        // after a process died it is stale while every segment is sound.
        let (mut total, mut i) = (0u64, 0);
        let mut named = Vec::new();
        while i < n {
            let seg = t.dir[i];
            // SAFETY: the header is valid while the table lives.
            total = total.saturating_add(unsafe { (*seg.hdr()).len });
            if seg.depth() == gd {
                t.at_global += 1;
            }
            named.push(seg.base);
            i += t.span(seg.depth());
        }
        // Each segment must own one range: one named by two ranges would be freed by a split
        // of either while the other still names it.
        named.sort_unstable();
        if named.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::Corrupt("a segment is named by two directory ranges"));
        }
        t.len = usize::try_from(total).map_err(|_| Error::Corrupt("table too long"))?;
        Ok(())
    }

    /// Resolves and checks the segment a directory word names: a live block of the memory of
    /// the segment's size, 64-aligned, with the segment magic, its own handle, this table's
    /// header handle (`table`), a depth at most `gd` and (with `counters`) plausible counters.
    /// Returns the segment and its block as (address, size).
    fn check_segment(
        mem: &M,
        word: u64,
        table: u64,
        gd: u32,
        counters: bool,
        cleared_magic: bool,
    ) -> Result<(SegRef<K, V>, Block), Error> {
        let off = word_handle(word);
        let lg = word >> HANDLE_BITS;
        if lg > u64::from(MAX_GROUPS_LIMIT.trailing_zeros()) {
            return Err(Error::Corrupt("segment size out of range"));
        }
        let groups = 1usize << lg;
        let (size, ctrl_off, align) =
            seg_layout::<K, V>(groups).ok_or(Error::Corrupt("segment size overflows"))?;
        let base = mem.ptr(off, size as u64).ok_or_else(|| oob(off, size))?;
        if base.as_ptr() as usize % align != 0 {
            return Err(Error::Corrupt("misaligned segment"));
        }
        // SAFETY: the block's `size` bytes are vouched for; the header lies inside them,
        // 8-aligned (ctrl_off is a multiple of 16); any bytes are a valid SegHeader.
        let sh = unsafe {
            base.as_ptr()
                .add(ctrl_off - SEG_HEADER)
                .cast::<SegHeader>()
                .read()
        };
        if sh.magic != SEG_MAGIC && !(cleared_magic && sh.magic == 0) {
            return Err(Error::Corrupt("bad segment magic"));
        }
        if sh.depth > gd || sh.groups as usize != groups {
            return Err(Error::Corrupt("segment depth or size out of range"));
        }
        let cap = (groups * GROUP_WIDTH) as u64;
        if counters && sh.len.checked_add(sh.deleted).map_or(true, |x| x > cap) {
            return Err(Error::Corrupt("segment counters out of range"));
        }
        if sh.handle != off {
            return Err(Error::Corrupt(
                "segment handle disagrees with the directory",
            ));
        }
        if sh.table != table {
            return Err(Error::Corrupt("segment belongs to another table"));
        }
        let seg = SegRef {
            // SAFETY: an offset inside the block just vouched for.
            base: unsafe { NonNull::new_unchecked(base.as_ptr().add(ctrl_off - SEG_HEADER)) },
            pmask: (groups - 1) * GROUP_WIDTH,
            _types: PhantomData,
        };
        Ok((seg, (base.as_ptr() as usize, size)))
    }

    /// Repairs a table that a process left open (it died, or never dropped the table):
    /// finishes or undoes the structural change that was in progress, and recounts every
    /// segment's counters from its control bytes (an insert or removal killed between its
    /// control byte and its counters left them one off). O(capacity / 16), plus one
    /// segment's moves.
    ///
    /// A structural change in progress shows as a directory range whose entries disagree.
    /// The shallowest segment among them is always whole: a split or rebuild fills its new
    /// segments before the directory names them (the old one stays whole until it is freed),
    /// and an in-place merge lowers its destination's depth before it moves the buddy's
    /// entries in (the buddy stays whole until it is freed). So the range goes to the
    /// shallowest segment, after it takes what it lacks of the others' entries (nothing,
    /// unless a merge was cut short), and the others are freed.
    fn repair(&mut self) -> Result<RepairReport, Error> {
        // A replacement in progress first: it leaves the directory whole, and its record is
        // cleared before the pending words are read as blocks below.
        let mut report = RepairReport {
            undone: usize::from(self.repair_undo()),
            ..RepairReport::default()
        };
        let n = self.dir.len();
        // Runs of equal entries as (depth, first index), shallowest first: a shallower
        // segment's range contains any deeper one it meets (aligned powers of two nest), so
        // taken in this order each range is decided before any range inside it.
        let mut order: Vec<(u32, usize)> = (0..n)
            .filter(|&j| j == 0 || self.dir[j].base != self.dir[j - 1].base)
            .map(|j| (self.dir[j].depth(), j))
            .collect();
        order.sort_unstable();
        let mut covered = vec![false; n];
        let mut losers: Vec<SegRef<K, V>> = Vec::new();
        for (depth, j) in order {
            if covered[j] {
                continue;
            }
            let span = self.span(depth);
            let start = j & !(span - 1);
            covered[start..start + span].fill(true);
            let win = self.dir[j];
            let mut others: Vec<SegRef<K, V>> = self.dir[start..start + span]
                .iter()
                .copied()
                .filter(|s| s.base != win.base)
                .collect();
            if others.is_empty() {
                continue;
            }
            others.sort_unstable_by_key(|s| s.base);
            others.dedup_by_key(|s| s.base);
            let prefix = (start >> (self.global_depth() - depth)) as u64;
            for s in &others {
                report.moved += self.absorb(&win, s, depth, prefix)?;
            }
            self.set_range(start, depth, win);
            report.ranges += 1;
            losers.extend(others);
        }
        if covered.contains(&false) {
            return Err(Error::Corrupt(
                "directory entries of a segment are misplaced",
            ));
        }
        let mut named: Vec<NonNull<u8>> = self.dir.iter().map(|s| s.base).collect();
        named.sort_unstable();
        named.dedup();
        // What to free: the losers above that no entry names any more, and the blocks the
        // header's pending words record (a structural change had allocated and not yet
        // named them, or unnamed and not yet freed them) if they still check out: a live
        // segment of this table that no entry names (its magic may be cleared already, see
        // `free_segment`), or a live block holding this table's directory words doubled or
        // halved that the header does not name. A record is untrusted like the rest.
        // SAFETY: the header block is valid while the table lives.
        let pending = unsafe { (*self.hdr.as_ptr()).pending };
        let gd = self.global_depth();
        let mut dir_block = None;
        let mut fresh = Vec::new();
        for w in pending.into_iter().filter(|&w| w != 0) {
            if w >> HANDLE_BITS == PENDING_DIR >> HANDLE_BITS {
                let handle = word_handle(w);
                if handle != self.dir_handle && self.is_old_or_new_dir(handle) {
                    dir_block = Some(handle);
                }
            } else if w >> HANDLE_BITS == PENDING_FRESH >> HANDLE_BITS {
                fresh.push(word_handle(w));
            } else if let Ok((seg, _)) =
                Self::check_segment(&self.mem, w, self.hdr_handle, gd, false, true)
            {
                losers.push(seg);
            }
        }
        if let Some(handle) = dir_block {
            // SAFETY: a live block holding this table's directory words that the header does
            // not name: the block a doubling or halving had written and not yet switched
            // to, or had switched from and not yet freed. Freed first, while the
            // record still holds it.
            unsafe { self.mem.free(handle) };
            report.freed += 1;
        }
        report.freed += self.free_fresh(fresh, &pending, dir_block);
        losers.retain(|s| named.binary_search(&s.base).is_err());
        losers.sort_unstable_by_key(|s| s.base);
        losers.dedup_by_key(|s| s.base);
        // Recorded as pending while they are freed, so that a kill during the frees leaves
        // them to the next repair (a torn change has at most three; only a corrupt file
        // could have more, and those would leak).
        if !losers.is_empty() {
            let first = losers.len().min(3);
            self.pend(&losers[..first]);
        }
        for l in losers {
            // SAFETY: a segment of this table that no directory entry names, freed once
            // (deduplicated; freeing clears its magic).
            unsafe { Self::free_segment(&self.mem, l) };
            report.freed += 1;
        }
        self.pend(&[]);
        let mut i = 0;
        while i < n {
            let seg = self.dir[i];
            let (mut full, mut free, mut empty) = (0u64, 0u64, 0u64);
            for g in 0..=seg.mask() {
                // SAFETY: g <= mask.
                let grp = unsafe { seg.group(g) };
                full += u64::from(grp.match_full().0.count_ones());
                free += u64::from(grp.match_empty_or_deleted().0.count_ones());
                empty += u64::from(grp.match_empty().0.count_ones());
            }
            let deleted = free - empty;
            // SAFETY: the header is valid while the table lives; `&mut self`.
            unsafe {
                let hdr = seg.hdr();
                if ((*hdr).len, (*hdr).deleted) != (full, deleted) {
                    report.recounted += 1;
                    (*hdr).len = full;
                    (*hdr).deleted = deleted;
                }
            }
            i += self.span(seg.depth());
        }
        Ok(report)
    }

    /// Frees the blocks that the pending words record as fresh ([`PENDING_FRESH`]: allocated
    /// by a structural change and not yet filled when the process died) if they are live
    /// blocks that nothing else names: not the table's header or directory, no directory
    /// entry, no other pending word, not `dir_block` (freed already). Returns how many it
    /// freed. They are freed while the record still holds them (the caller rewrites the
    /// pending words after), so a kill here leaves them to the next repair, which finds
    /// them free and skips them.
    fn free_fresh(
        &mut self,
        mut fresh: Vec<u64>,
        pending: &[u64; 3],
        dir_block: Option<u64>,
    ) -> usize {
        if fresh.is_empty() {
            return 0;
        }
        fresh.sort_unstable();
        fresh.dedup();
        let n = self.dir.len();
        let mut named: Vec<u64> = (0..n)
            // SAFETY: the stored directory holds n words (checked on open).
            .map(|j| word_handle(unsafe { self.dir_ptr.as_ptr().add(j).read() }))
            .collect();
        named.extend([self.dir_handle, self.hdr_handle]);
        named.extend(dir_block);
        named.extend(
            pending
                .iter()
                .filter(|&&w| w >> HANDLE_BITS != PENDING_FRESH >> HANDLE_BITS)
                .map(|&w| word_handle(w)),
        );
        named.sort_unstable();
        let mut freed = 0;
        for h in fresh {
            if named.binary_search(&h).is_ok() || self.mem.ptr(h, 1).is_none() {
                continue;
            }
            // SAFETY: a live block that this table allocated for a structural change cut
            // short (the record says so; a record is as trusted as the rest of the file's
            // table), and that nothing of the table names: no pointer into it exists.
            unsafe { self.mem.free(h) };
            freed += 1;
        }
        freed
    }

    /// Whether the live block `handle` holds this table's directory words doubled (each
    /// twice: a doubling's new block, or a halving's old one) or halved (every other one: a
    /// halving's new block, or a doubling's old one).
    fn is_old_or_new_dir(&self, handle: u64) -> bool {
        let n = self.dir.len();
        // SAFETY: the stored directory holds n words (checked on open); callers pass j < n.
        let cur = |j: usize| unsafe { self.dir_ptr.as_ptr().add(j).read() };
        // The block as `m` words, if it is a live block that large, 8-aligned.
        let words = |m: usize| {
            let p = self.mem.ptr(handle, (m * 8) as u64)?;
            if p.as_ptr() as usize % 8 != 0 {
                return None;
            }
            // SAFETY: `ptr` vouched for `m * 8` bytes at an 8-aligned address, which stay
            // valid while the table holds its memory; any bytes are valid u64s.
            Some(unsafe { core::slice::from_raw_parts(p.as_ptr().cast::<u64>(), m) })
        };
        let doubled = n < 1 << MAX_DEPTH
            && words(2 * n)
                .is_some_and(|w| (0..n).all(|j| w[2 * j] == cur(j) && w[2 * j + 1] == cur(j)));
        let halved = n >= 2 && words(n / 2).is_some_and(|w| (0..n / 2).all(|j| w[j] == cur(2 * j)));
        doubled || halved
    }

    /// Copies into `to` the entries of `from` that belong to the directory range of depth
    /// `depth` and hash prefix `prefix` and that `to` lacks (the rest of a merge that a dead
    /// process cut short). Leaves the counters to the caller. Returns how many it copied.
    fn absorb(
        &self,
        to: &SegRef<K, V>,
        from: &SegRef<K, V>,
        depth: u32,
        prefix: u64,
    ) -> Result<usize, Error> {
        let mut moved = 0;
        for g in 0..=from.mask() {
            // SAFETY: g <= mask.
            for b in unsafe { from.group(g) }.match_full() {
                let i = g * GROUP_WIDTH + b;
                // SAFETY: i < capacity.
                let src = unsafe { from.slot(i) };
                // SAFETY: a full slot; any bytes are a valid Pod key.
                let key = unsafe { (*src).key };
                let h = self.hash(&key);
                if depth > 0 && dir_prefix(h, depth) != prefix {
                    continue;
                }
                if find_in(to, h, &key).is_some() {
                    continue;
                }
                let j = if self.warm {
                    find_free::<K, V, true>(to, h)
                } else {
                    find_free::<K, V, false>(to, h)
                }
                .ok_or(Error::Corrupt("no room to finish a merge left half done"))?;
                // SAFETY: j < to.capacity(); distinct blocks (checked not to overlap); both
                // segments are this table's.
                unsafe {
                    core::ptr::copy_nonoverlapping(src, to.slot(j), 1);
                    publish(to.ctrl_at(j), tag(h));
                }
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// A new empty segment of table `table` (its header's handle).
    fn new_segment(mem: &M, table: u64, groups: usize, depth: u32) -> Result<SegRef<K, V>, Error> {
        let (size, _, align) = seg_layout::<K, V>(groups).ok_or(Error::CapacityOverflow)?;
        let handle = Self::alloc_block(mem, size, align)?;
        Self::init_segment(mem, handle, table, groups, depth).inspect_err(|_| {
            // SAFETY: just allocated, never shared.
            unsafe { mem.free(handle) };
        })
    }

    /// [`new_segment`](Self::new_segment) for a structural change of this table: the block
    /// is recorded as fresh from its allocation until the caller records the segment
    /// ([`alloc_fresh`](Self::alloc_fresh)).
    fn new_segment_recorded(&mut self, groups: usize, depth: u32) -> Result<SegRef<K, V>, Error> {
        let (size, _, align) = seg_layout::<K, V>(groups).ok_or(Error::CapacityOverflow)?;
        let handle = self.alloc_fresh(size, align)?;
        match Self::init_segment(&self.mem, handle, self.hdr_handle, groups, depth) {
            Ok(seg) => Ok(seg),
            Err(e) => {
                self.discard_fresh(handle);
                Err(e)
            }
        }
    }

    /// Writes an empty segment of table `table` into block `handle`, just allocated with
    /// [`seg_layout`]'s size and alignment for `groups`. The caller frees the block if this
    /// fails.
    fn init_segment(
        mem: &M,
        handle: u64,
        table: u64,
        groups: usize,
        depth: u32,
    ) -> Result<SegRef<K, V>, Error> {
        let (size, ctrl_off, _) = seg_layout::<K, V>(groups).ok_or(Error::CapacityOverflow)?;
        let base = mem
            .ptr(handle, size as u64)
            .ok_or_else(|| oob(handle, size))?;
        let cap = groups * GROUP_WIDTH;
        // SAFETY: the block is `size` bytes, aligned as seg_layout says (to 64 at least): the
        // slots, the header and `cap` control bytes fit; the header is 16-aligned.
        unsafe {
            let hdr = base.as_ptr().add(ctrl_off - SEG_HEADER).cast::<SegHeader>();
            hdr.write(SegHeader {
                magic: SEG_MAGIC,
                depth,
                groups: groups as u32,
                _r0: 0,
                len: 0,
                deleted: 0,
                _r1: 0,
                handle,
                table,
                _pad: 0,
            });
            kill_point!();
            core::ptr::write_bytes(base.as_ptr().add(ctrl_off), EMPTY, cap);
            Ok(SegRef {
                base: NonNull::new_unchecked(base.as_ptr().add(ctrl_off - SEG_HEADER)),
                pmask: (groups - 1) * GROUP_WIDTH,
                _types: PhantomData,
            })
        }
    }

    fn alloc_dir(mem: &M, n: usize) -> Result<(u64, NonNull<u64>), Error> {
        let h = Self::alloc_block(mem, n * 8, 8)?;
        match mem.ptr(h, (n * 8) as u64) {
            Some(p) => Ok((h, p.cast())),
            None => {
                // SAFETY: just allocated, never shared.
                unsafe { mem.free(h) };
                Err(oob(h, n * 8))
            }
        }
    }

    #[inline(always)]
    pub(crate) fn hash(&self, key: &K) -> u64 {
        H::hash_prepared(bytemuck::bytes_of(key), self.seed, self.prepared)
    }

    /// The directory index of `h`: the top `global_depth` bits of its
    /// [`DIR_BITS`](crate::hash::DIR_BITS).
    #[inline(always)]
    pub(crate) fn dir_index(&self, h: u64) -> usize {
        self.dir_offset(h) / size_of::<SegRef<K, V>>()
    }

    /// The byte offset in the mirror of `h`'s entry: its directory index times 16, in two
    /// instructions.
    #[inline(always)]
    fn dir_offset(&self, h: u64) -> usize {
        (h >> self.shift) as usize & self.dmask
    }

    /// Sets the global depth's shift and mask (the caller resizes the mirror).
    fn set_global_depth(&mut self, gd: u32) {
        self.shift = DIR_SHIFT0 - gd;
        self.dmask = dir_mask::<K, V>(gd);
        let seg_bytes = seg_layout::<K, V>(self.max_groups).map_or(usize::MAX, |l| l.0);
        self.warm = seg_bytes.saturating_mul(1 << gd) >= WARM_BYTES;
    }

    /// The segment `h` belongs to.
    #[inline(always)]
    pub(crate) fn seg_at(&self, h: u64) -> SegRef<K, V> {
        // The entry's byte offset in the mirror: the directory index, times 16.
        let off = self.dir_offset(h);
        debug_assert!(off / size_of::<SegRef<K, V>>() < self.dir.len());
        // SAFETY: `off` is masked by `dmask`, 16 * (2^global_depth - 1): at most the offset
        // of the mirror's last entry (dir.len() == 2^global_depth, entries of 16 bytes), and
        // a multiple of 16.
        unsafe {
            *self
                .dir
                .as_ptr()
                .cast::<u8>()
                .add(off)
                .cast::<SegRef<K, V>>()
        }
    }

    /// [`seg_at`](Self::seg_at) for an operation about to probe `h`'s segment: in a table
    /// that [warms](Self::warm), also starts loading the slots of `h`'s first group.
    #[inline(always)]
    fn seg_to_probe(&self, h: u64) -> SegRef<K, V> {
        let seg = self.seg_at(h);
        if self.warm {
            seg.warm_slots(h);
        }
        seg
    }

    /// Adds `d` to the length (wrapping; see [`len`](Self::len)).
    #[inline(always)]
    pub(crate) fn add_len(&mut self, d: i64) {
        self.len = self.len.wrapping_add(d as usize);
    }

    /// Finds `key`: (directory index, slot index).
    #[inline(always)]
    pub(crate) fn find(&self, h: u64, key: &K) -> Option<(SegRef<K, V>, usize)> {
        self.on_seg(h, |seg| find_in(seg, h, key).map(|x| (*seg, x.i)))
    }

    /// Calls `f` with `h`'s segment. `f` is inlined twice: once for the lone segment of a
    /// depth-0 table, held in the handle (whose lookups then load no directory entry: the
    /// branch is on a loop-invariant field, so it costs a predicted jump, and LLVM often
    /// takes it out of a caller's loop), and once for a segment from the mirror. A branch
    /// that picked the segment, instead of the code that uses it, became a conditional
    /// move, whose result waited for the mirror load anyway (docs/swiss-log.md, "A table of one
    /// segment").
    #[inline(always)]
    pub(crate) fn on_seg<R>(&self, h: u64, f: impl Fn(&SegRef<K, V>) -> R) -> R {
        debug_assert!(match self.lone {
            Some(l) =>
                self.dir.len() == 1 && (l.base, l.pmask) == (self.dir[0].base, self.dir[0].pmask),
            None => self.dir.len() != 1,
        });
        match self.lone {
            Some(seg) => f(&seg),
            None => f(&self.seg_to_probe(h)),
        }
    }

    /// Finds `key` for a removal: (segment, slot index, whether the slot's group has an
    /// `EMPTY` byte).
    #[inline(always)]
    pub(crate) fn find_hit(&self, h: u64, key: &K) -> Option<(SegRef<K, V>, usize, bool)> {
        self.on_seg(h, |seg| {
            find_in(seg, h, key).map(|x| (*seg, x.i, x.group_has_empty))
        })
    }

    /// Finds `key`'s slot.
    #[inline(always)]
    pub(crate) fn find_slot(&self, h: u64, key: &K) -> Option<NonNull<Slot<K, V>>> {
        self.on_seg(h, |seg| find_in(seg, h, key).map(|x| x.slot))
    }

    /// Finds `key`, or inserts `key -> value`. Returns the slot and whether the key was there
    /// already (then its value is left as it was).
    #[inline(always)]
    pub(crate) fn find_or_insert(
        &mut self,
        h: u64,
        key: K,
        value: V,
    ) -> Result<(*mut Slot<K, V>, bool), Error> {
        match self.find_or_insert_in_place(h, key, value) {
            Some(r) => Ok(r),
            None => self.find_or_insert_growing(h, key, value),
        }
    }

    /// [`find_or_insert`](Self::find_or_insert) when
    /// [`find_or_insert_in_place`](Self::find_or_insert_in_place) found no room: grows the
    /// key's segment (one segment moved at most each time) until the key fits. Out of line: it
    /// is the rare path, and its `Error` would otherwise give every insert a stack frame.
    #[cold]
    #[inline(never)]
    pub(crate) fn find_or_insert_growing(
        &mut self,
        h: u64,
        key: K,
        value: V,
    ) -> Result<(*mut Slot<K, V>, bool), Error> {
        loop {
            let seg = self.seg_at(h);
            if seg.room() > 0 {
                // Only nearly full (see `SegRef::nearly_full`): a page ahead of its split.
                self.prefault(&seg);
                if let Some(r) = self.insert_in_place::<false>(h, key, value) {
                    return Ok(r);
                }
            }
            self.make_room(self.dir_index(h))?;
            if let Some(r) = self.insert_in_place::<false>(h, key, value) {
                return Ok(r);
            }
        }
    }

    /// [`find_or_insert`](Self::find_or_insert) without growing: `None` if the key is absent
    /// and its segment has no room for it, or is [nearly full](SegRef::nearly_full) (then
    /// nothing was changed, and [`find_or_insert_growing`](Self::find_or_insert_growing)
    /// takes over).
    #[inline(always)]
    pub(crate) fn find_or_insert_in_place(
        &mut self,
        h: u64,
        key: K,
        value: V,
    ) -> Option<(*mut Slot<K, V>, bool)> {
        self.insert_in_place::<true>(h, key, value)
    }

    /// [`find_or_insert_in_place`](Self::find_or_insert_in_place); with `NEARLY` false, it
    /// inserts into a nearly full segment too.
    #[inline(always)]
    fn insert_in_place<const NEARLY: bool>(
        &mut self,
        h: u64,
        key: K,
        value: V,
    ) -> Option<(*mut Slot<K, V>, bool)> {
        if self.warm {
            self.insert_in::<NEARLY, true>(h, key, value)
        } else {
            self.insert_in::<NEARLY, false>(h, key, value)
        }
    }

    /// [`insert_in_place`](Self::insert_in_place) in a table that warms (`WARM`: it warms
    /// the slots and puts the key in its quarter, see [`pick_free`]) or not.
    #[inline(always)]
    fn insert_in<const NEARLY: bool, const WARM: bool>(
        &mut self,
        h: u64,
        key: K,
        value: V,
    ) -> Option<(*mut Slot<K, V>, bool)> {
        let seg = self.seg_at(h);
        if WARM {
            seg.warm_slots(h);
        }
        let i = match probe::<K, V, WARM>(&seg, h, &key) {
            // SAFETY: i < capacity.
            Probe::Found(i) => return Some((unsafe { seg.slot(i) }, true)),
            Probe::Absent(Some(i)) => i,
            Probe::Absent(None) => return None,
        };
        // SAFETY: i < capacity; header and control bytes belong to `seg`, which this table
        // owns exclusively (`&mut self`).
        unsafe {
            let hdr = seg.hdr();
            let c = seg.ctrl_at(i);
            let reuse = *c == DELETED;
            // Reusing a tombstone leaves the room as it is. (A corrupt file's length can wrap
            // below zero, see `erase_known`: `room` saturates to none then, and `make_room`
            // rebuilds the segment from its control bytes.)
            if !reuse
                && if NEARLY {
                    seg.nearly_full()
                } else {
                    seg.room() == 0
                }
            {
                return None;
            }
            let s = seg.slot(i);
            s.write(Slot { key, value });
            kill_point!();
            publish(c, tag(h));
            kill_point!();
            if reuse {
                (*hdr).deleted = (*hdr).deleted.saturating_sub(1);
            }
            (*hdr).len = (*hdr).len.wrapping_add(1);
            self.add_len(1);
            Some((s, false))
        }
    }

    /// Asks the memory to fault in one more page of where the next segments will come from
    /// ([`TableMemory::prefault`]), up to [`PREFAULT_SEGMENTS`] full-size segments ahead,
    /// if `seg` is of full size. Called by the last inserts into a segment before it splits
    /// ([`SegRef::nearly_full`]): its split's new segments then find most of their pages
    /// there. On fresh memory, page faults were half of a split's time (docs/swiss-log.md,
    /// "Segment size at 50M keys", and "Page faults ahead of the split").
    #[cold]
    #[inline(never)]
    fn prefault(&self, seg: &SegRef<K, V>) {
        if seg.groups() != self.max_groups {
            return;
        }
        let seg_bytes = seg_layout::<K, V>(self.max_groups).map_or(0, |l| l.0 as u64);
        self.mem.prefault(PREFAULT_SEGMENTS * seg_bytes);
    }

    /// Replaces the value of the full slot `i` of `seg` with `value`, returning the old one,
    /// so that a process killed at any instruction leaves the old value or the new one, never
    /// a mix: the old value is copied to the header block's undo area and the slot recorded
    /// as pending before the new value is written; `open`'s repair puts the old value back
    /// if the record is still there (see [`repair_undo`](Self::repair_undo)). For values that
    /// one store cannot write; costs two copies of the value into a cache line that stays hot.
    ///
    /// # Safety
    /// `i` must be a full slot of `seg`; `&mut self` owns the table.
    pub(crate) unsafe fn replace_logged(&mut self, seg: SegRef<K, V>, i: usize, value: V) -> V {
        // SAFETY: i < capacity, full; the undo area is `size_of::<V>()` bytes of the header
        // block (checked by `open`, allocated by `new`), which does not overlap the slot.
        unsafe {
            let vp = core::ptr::addr_of_mut!((*seg.slot(i)).value);
            let old = vp.read();
            core::ptr::copy_nonoverlapping(
                vp.cast::<u8>().cast_const(),
                self.undo_area(),
                size_of::<V>(),
            );
            self.pend_words([seg.handle() | PENDING_UNDO, i as u64, 0]);
            #[cfg(not(test))]
            vp.write(value);
            // Tests kill in the middle of the write too: the value goes in two halves.
            #[cfg(test)]
            {
                let (src, dst) = ((&value as *const V).cast::<u8>(), vp.cast::<u8>());
                let half = size_of::<V>() / 2;
                core::ptr::copy_nonoverlapping(src, dst, half);
                kill_point!();
                core::ptr::copy_nonoverlapping(src.add(half), dst.add(half), size_of::<V>() - half);
            }
            kill_point!();
            self.pend_words([0; 3]);
            old
        }
    }

    /// The header block's undo area: `size_of::<V>()` bytes after the header, unaligned.
    fn undo_area(&self) -> *mut u8 {
        // SAFETY: the header block is `header_block_size` bytes (see `new` and `open`).
        unsafe { self.hdr.as_ptr().cast::<u8>().add(size_of::<TableHeader>()) }
    }

    /// Undoes a replacement (see [`replace_logged`](Self::replace_logged)) that a process
    /// left pending: the old value goes back into its slot. Then clears the record. The
    /// record is untrusted: a handle that names no segment of the directory, or a slot out of
    /// range or not full, leave the table as it is. Returns whether a value was put back.
    fn repair_undo(&mut self) -> bool {
        // SAFETY: the header block is valid while the table lives.
        let [w, i, _] = unsafe { (*self.hdr.as_ptr()).pending };
        if w >> HANDLE_BITS != PENDING_UNDO >> HANDLE_BITS {
            return false;
        }
        let handle = word_handle(w);
        let i = i as usize;
        let seg = self.dir.iter().copied().find(|s| s.handle() == handle);
        let mut restored = false;
        if let Some(seg) = seg {
            // SAFETY: i < capacity; the undo area holds `size_of::<V>()` bytes (any bytes are
            // a valid V); `&mut self` owns the table.
            unsafe {
                if i < seg.capacity() && is_full(*seg.ctrl_at(i)) {
                    core::ptr::copy_nonoverlapping(
                        self.undo_area().cast_const(),
                        core::ptr::addr_of_mut!((*seg.slot(i)).value).cast::<u8>(),
                        size_of::<V>(),
                    );
                    restored = true;
                }
            }
        }
        self.pend_words([0; 3]);
        restored
    }

    /// Removes the entry in slot `i` of `seg`, returning its value, then gives memory back if
    /// the segment became sparse. `group_has_empty`: whether the group of slot `i` has an
    /// `EMPTY` byte (the lookup that found the slot has just matched that group).
    #[inline]
    pub(crate) fn remove_at(
        &mut self,
        seg: SegRef<K, V>,
        i: usize,
        h: u64,
        group_has_empty: bool,
    ) -> V {
        // SAFETY: i < capacity and the slot is full.
        let v = unsafe { core::ptr::addr_of!((*seg.slot(i)).value).read() };
        // SAFETY: as above.
        let len = unsafe { Self::erase_known(&seg, i, group_has_empty) } as usize;
        self.add_len(-1);
        // Only when the segment's length crosses a threshold (it drops by exactly one per
        // removal, so it meets each value on the way down): 1/8 of a full-size segment (merge
        // with the buddy) or 1/8 of its own size (shrink). A merge that fails because the buddy
        // is too full is retried when the buddy crosses its own threshold (then the two hold
        // at most 2/8 together), or right after the buddy's own halves merge (see
        // `maybe_shrink`), so no removal pays for a check that cannot succeed.
        // `shrink_at(max_groups)` bounds both thresholds (segments larger than the maximum
        // only exist at the maximum depth, and do not shrink by removal).
        if len <= self.sparse_len {
            self.sparse_removal(len, seg, h);
        }
        v
    }

    #[cold]
    #[inline(never)]
    fn sparse_removal(&mut self, len: usize, seg: SegRef<K, V>, h: u64) {
        if len == merge_at(self.max_groups) || len == shrink_at(seg.groups()) {
            let _ = self.maybe_shrink(h);
        }
    }

    /// Marks slot `i` free: `EMPTY` if its group still has an `EMPTY` slot (no probe ever
    /// went past this group, since it has not been full since the segment was built), else a
    /// `DELETED` tombstone.
    ///
    /// # Safety
    /// `i` must be a full slot of `seg`, owned exclusively by the caller.
    #[inline]
    pub(crate) unsafe fn erase(seg: &SegRef<K, V>, i: usize) {
        // SAFETY: per the caller's promise.
        unsafe {
            let empty = seg.group(i / GROUP_WIDTH).match_empty().any();
            Self::erase_known(seg, i, empty);
        }
    }

    /// [`erase`](Self::erase), given whether the slot's group has an `EMPTY` byte. Returns
    /// the segment's new length.
    ///
    /// # Safety
    /// As for `erase`; `group_has_empty` must be true of the group as it is.
    #[inline(always)]
    pub(crate) unsafe fn erase_known(seg: &SegRef<K, V>, i: usize, group_has_empty: bool) -> u64 {
        // SAFETY: per the caller's promise.
        unsafe {
            let hdr = seg.hdr();
            if group_has_empty {
                *seg.ctrl_at(i) = EMPTY;
                kill_point!();
            } else {
                *seg.ctrl_at(i) = DELETED;
                kill_point!();
                (*hdr).deleted += 1;
            }
            // Wrapping: a corrupt file's length may be short of its full slots; a wrong
            // length only mistimes a merge or shrink (which count the control bytes;
            // `shrink_to_fit` reads a length above the capacity as unknown).
            let len = (*hdr).len.wrapping_sub(1);
            (*hdr).len = len;
            len
        }
    }

    /// Makes room in the segment at directory index `idx`: drops tombstones, grows it, or
    /// splits it, whichever fits; moves at most this one segment.
    #[cold]
    #[inline(never)]
    fn make_room(&mut self, idx: usize) -> Result<(), Error> {
        let seg = self.dir[idx];
        self.checked_depth(&seg)?;
        let groups = seg.groups();
        // SAFETY: the segment's header is valid while the table lives.
        let deleted = unsafe { (*seg.hdr()).deleted } as usize;
        if deleted > 0 && deleted >= max_load(groups) / 8 {
            self.rebuild(idx, groups)
        } else if groups < self.max_groups {
            self.rebuild(idx, grown(groups).min(self.max_groups))
        } else if seg.depth() < MAX_DEPTH {
            self.split(idx, groups).map(|_| ())
        } else if groups < MAX_GROUPS_LIMIT {
            self.rebuild(idx, groups * 2)
        } else {
            Err(Error::CapacityOverflow)
        }
    }

    /// Full slots of a segment.
    fn count_full(seg: &SegRef<K, V>) -> usize {
        (0..=seg.mask())
            // SAFETY: g <= mask.
            .map(|g| unsafe { seg.group(g) }.match_full().0.count_ones() as usize)
            .sum()
    }

    /// Copies every entry of `from` into `to`, a fresh segment (no tombstones) with room for
    /// them. Fails (see [`move_entries`](Self::move_entries)) if one finds no free slot.
    fn move_all(&self, from: &SegRef<K, V>, to: &SegRef<K, V>) -> Result<(), Error> {
        self.move_entries::<true>(from, [to, to], |_| 0)
    }

    /// Copies every entry of `from` into `to`, a live segment (it may have tombstones) with
    /// room for them.
    fn move_into_live(&self, from: &SegRef<K, V>, to: &SegRef<K, V>) {
        let moved = self.move_entries::<false>(from, [to, to], |_| 0);
        // The caller counted the room from `to`'s control bytes, and an in-place merge
        // allocates nothing, so nothing can take that room (the open refuses overlapping
        // segments). Unreachable; in a release build the entry would stay behind in `from`,
        // which the merge then frees.
        debug_assert!(moved.is_ok(), "no room while merging in place");
    }

    /// Copies every entry of `from` into `to[pick(hash)]` (segments with room for them;
    /// `FRESH`: without tombstones, so none is looked for), updating the destinations'
    /// counters once at the end.
    ///
    /// Callers make room in `to` for every entry, counted from control bytes (never from a
    /// segment's counters, which a corrupt file may get wrong). So an entry finds no free
    /// slot only if memory changed behind the table's back: a destination that some other
    /// writer shares, such as a block that a corrupt allocator handed out while it was still
    /// in use. Then the move stops with `Error::Corrupt`, before the destinations' counters,
    /// and `from` is still whole: the caller frees the destinations and leaves the
    /// directory as it was, so no entry is lost.
    #[inline(always)]
    fn move_entries<const FRESH: bool>(
        &self,
        from: &SegRef<K, V>,
        to: [&SegRef<K, V>; 2],
        pick: impl Fn(u64) -> usize,
    ) -> Result<(), Error> {
        if self.warm {
            self.move_entries_in::<FRESH, true>(from, to, pick)
        } else {
            self.move_entries_in::<FRESH, false>(from, to, pick)
        }
    }

    /// [`move_entries`](Self::move_entries); `QUARTERS`: each entry to its quarter of its
    /// group (see [`pick_free`]), in a table that warms.
    #[inline(always)]
    fn move_entries_in<const FRESH: bool, const QUARTERS: bool>(
        &self,
        from: &SegRef<K, V>,
        to: [&SegRef<K, V>; 2],
        pick: impl Fn(u64) -> usize,
    ) -> Result<(), Error> {
        // (Only fresh destinations: an in-place merge's is a live segment, whose entries
        // the sabotage would overwrite.)
        #[cfg(test)]
        if FRESH {
            to.iter().for_each(|d| sabotage::fill_if_armed(d));
        }
        let mut moved = [0u64; 2];
        // Whether an entry found no free slot (see `move_entries`).
        let mut lost = false;
        // Tombstones of the destinations reused (only a merge into a live segment has any).
        let mut reused = [0u64; 2];
        // Kept in registers: the stores below could alias the table for all the compiler
        // knows.
        let (seed, prepared) = (self.seed, self.prepared);
        // Empty destinations of at most `OCC_GROUPS` groups: which of their slots this move
        // has filled, one bit per slot, so that finding a free slot reads these words instead
        // of the control bytes just written (a 16-byte load of a group right after a 1-byte
        // store into it cannot take its data from the store, and waits for it). The slot
        // found is the same: the first free one on the probe sequence of a segment whose only
        // full slots are the ones this move filled. (A destination that an earlier move
        // filled, such as a merge's second source, goes by its control bytes.)
        let mut occ = [[0u16; OCC_GROUPS]; 2];
        // SAFETY: the destinations' headers are valid while they are.
        let use_occ = FRESH
            && to
                .iter()
                .all(|d| d.groups() <= OCC_GROUPS && unsafe { (*d.hdr()).len } == 0);
        for g in 0..=from.mask() {
            // SAFETY: g <= mask.
            let full = unsafe { from.group(g) }.match_full();
            for b in full {
                let i = g * GROUP_WIDTH + b;
                // SAFETY: i < capacity, slot full.
                let src = unsafe { from.slot(i) };
                // SAFETY: the key of a full slot is initialized.
                let h =
                    H::hash_prepared(bytemuck::bytes_of(unsafe { &(*src).key }), seed, prepared);
                let k = pick(h) & 1;
                let dst = to[k];
                let free = if use_occ {
                    let j = find_unfilled::<K, V, QUARTERS>(dst, h, &mut occ[k]);
                    // The same slot as the control bytes give (the layout does not depend
                    // on how the slot was found).
                    debug_assert_eq!(j, find_free::<K, V, QUARTERS>(dst, h));
                    j
                } else {
                    find_free::<K, V, QUARTERS>(dst, h)
                };
                let Some(j) = free else {
                    // Noted, and reported after the loop, before the counters: a return
                    // from here made inserts from empty at 1M keys run 2 more
                    // instructions each (callgrind, `ops_profile ours insert 1000000`).
                    lost = true;
                    continue;
                };
                // SAFETY: j < dst.capacity(); src and dst are distinct blocks; the control
                // bytes of `dst` are ours.
                unsafe {
                    let c = dst.ctrl_at(j);
                    if !FRESH {
                        reused[k] += u64::from(*c == DELETED);
                    }
                    core::ptr::copy_nonoverlapping(src, dst.slot(j), 1);
                    publish(c, tag(h));
                }
                kill_point!();
                moved[k] += 1;
            }
        }
        if lost {
            return Err(Error::Corrupt(
                "a segment's memory changed during a move (shared with another block?)",
            ));
        }
        let (moved, reused) = if core::ptr::eq(to[0], to[1]) {
            ([moved[0] + moved[1], 0], [reused[0] + reused[1], 0])
        } else {
            (moved, reused)
        };
        for ((d, n), r) in to.iter().zip(moved).zip(reused) {
            // SAFETY: the header of a destination segment is ours.
            unsafe {
                let hdr = d.hdr();
                (*hdr).len = (*hdr).len.wrapping_add(n);
                (*hdr).deleted = (*hdr).deleted.saturating_sub(r);
            }
        }
        Ok(())
    }

    /// Points the directory range of the segment at `idx` (depth `depth`) at `seg`.
    fn set_range(&mut self, idx: usize, depth: u32, seg: SegRef<K, V>) {
        let span = self.span(depth);
        let start = idx & !(span - 1);
        // The directory names the segment only after everything written into it.
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        let word = seg.word();
        for j in start..start + span {
            self.dir[j] = seg;
            // SAFETY: j < dir.len() == the stored directory's length.
            unsafe { self.dir_ptr.as_ptr().add(j).write(word) };
            kill_point!();
        }
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        self.sync_lone();
    }

    /// Sets [`lone`](Self::lone) from the mirror.
    fn sync_lone(&mut self) {
        self.lone = if self.dir.len() == 1 {
            Some(self.dir[0])
        } else {
            None
        };
    }

    /// Rebuilds the segment at `idx` into a fresh one of `groups` groups (dropping its
    /// tombstones).
    pub(crate) fn rebuild(&mut self, idx: usize, groups: usize) -> Result<(), Error> {
        let old = self.dir[idx];
        let n = Self::count_full(&old);
        let groups = groups.max(groups_for(n, 1, 1));
        let new = self.new_segment_recorded(groups, old.depth())?;
        self.pend(&[new, old]);
        if let Err(e) = self.move_all(&old, &new) {
            // SAFETY: `new` was just allocated; the directory never named it.
            unsafe { self.retire(&[new]) };
            return Err(e);
        }
        self.set_range(idx, old.depth(), new);
        // SAFETY: `old` is no longer referenced by the directory.
        unsafe { self.retire(&[old]) };
        Ok(())
    }

    /// Splits the segment at `idx` into two of depth + 1 with `groups` groups each (at least
    /// as many as the segment has), doubling the directory first if needed. Returns the index
    /// the range of `idx` now starts at.
    pub(crate) fn split(&mut self, mut idx: usize, groups: usize) -> Result<usize, Error> {
        let old = self.dir[idx];
        self.checked_depth(&old)?;
        // Either half may get every entry. Callers ask for no fewer groups than the segment
        // has, except `reserve_total` in a corrupt file whose segments exceed its header's
        // segment size.
        let groups = groups.max(old.groups());
        let doubled = old.depth() == self.global_depth();
        if doubled {
            self.double_dir()?;
            idx *= 2;
        }
        let a = self.new_segment_recorded(groups, old.depth() + 1)?;
        self.pend(&[a]);
        let b = match self.new_segment_recorded(groups, old.depth() + 1) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: just allocated, never shared.
                unsafe { self.retire(&[a]) };
                return Err(e);
            }
        };
        self.pend(&[a, b, old]);
        // The directory bit below the segment's prefix tells its halves apart.
        let bit = crate::hash::DIR_BITS.end - 1 - old.depth();
        if let Err(e) = self.move_entries::<true>(&old, [&a, &b], |h| (h >> bit) as usize & 1) {
            // SAFETY: `a` and `b` were just allocated; the directory never named them.
            unsafe { self.retire(&[a, b]) };
            return Err(e);
        }
        let span = self.span(old.depth());
        let start = idx & !(span - 1);
        self.set_range(start, a.depth(), a);
        self.set_range(start + span / 2, b.depth(), b);
        if a.depth() == self.global_depth() {
            self.at_global += 2;
        }
        // SAFETY: `old` is no longer referenced by the directory.
        unsafe { self.retire(&[old]) };
        self.spare.step(self.dir.len() * 2, doubled);
        Ok(start)
    }

    /// Replaces the stored directory with one of `self.dir.len()` entries, entry `j` a copy of
    /// the current stored directory's entry `src(j)`. The mirror has already been resized;
    /// the words come from the old stored block, read in order, rather than from the
    /// segments: a segment's word holds its handle, which is in its header, and reading the
    /// header of every segment is a random access (a TLB miss) per segment, which made a
    /// doubling at 16K entries take most of a millisecond (docs/swiss-log.md, "The
    /// directory's doubling").
    fn store_dir(&mut self, src: impl Fn(usize) -> usize) -> Result<(), Error> {
        let n = self.dir.len();
        let h = self.alloc_fresh(n * 8, 8)?;
        let Some(p) = self.mem.ptr(h, (n * 8) as u64) else {
            self.discard_fresh(h);
            return Err(oob(h, n * 8));
        };
        let p = p.cast::<u64>();
        let old_ptr = self.dir_ptr.as_ptr();
        for j in 0..n {
            // SAFETY: the new block holds n u64s; `src(j)` is below the old block's length
            // (the callers' maps halve or double the length), and the old block is live.
            unsafe { p.as_ptr().add(j).write(old_ptr.add(src(j)).read()) };
        }
        kill_point!();
        debug_assert!(self.dir.iter().enumerate().all(|(j, s)| {
            // SAFETY: as above.
            unsafe { p.as_ptr().add(j).read() == s.word() }
        }));
        // Recorded once its words are written: `open` frees a pending directory block only
        // if its words are the directory's, doubled or halved (a block carries no magic).
        self.pend_words([h | PENDING_DIR, 0, 0]);
        let old = self.dir_handle;
        self.dir_handle = h;
        self.dir_ptr = p;
        // SAFETY: header valid; `&mut self`.
        unsafe {
            // One store switches the directory and its depth (a kill never tears them).
            (*self.hdr.as_ptr()).dir = header_dir_word(h, self.global_depth());
        }
        self.pend_words([old | PENDING_DIR, 0, 0]);
        // SAFETY: the old directory block is no longer named by the header.
        unsafe { self.mem.free(old) };
        kill_point!();
        self.pend(&[]);
        Ok(())
    }

    fn double_dir(&mut self) -> Result<(), Error> {
        if self.global_depth() == MAX_DEPTH {
            return Err(Error::CapacityOverflow);
        }
        let n = self.dir.len() * 2;
        let mut new = match self.spare.take(n) {
            Some(v) => v,
            None => {
                let mut v = Vec::new();
                if let Err(e) = v.try_reserve_exact(n) {
                    return Err(Error::Alloc {
                        size: (n * size_of::<SegRef<K, V>>()) as u64,
                        align: 8,
                        source: Some(Box::new(e)),
                    });
                }
                v
            }
        };
        for s in &self.dir {
            new.push(*s);
            new.push(*s);
        }
        let old = core::mem::replace(&mut self.dir, new);
        let gd = self.global_depth();
        self.set_global_depth(gd + 1);
        if let Err(e) = self.store_dir(|j| j / 2) {
            self.dir = old;
            self.set_global_depth(gd);
            return Err(e);
        }
        self.spare.retired = old;
        self.at_global = 0;
        self.sync_lone();
        Ok(())
    }

    fn halve_dir(&mut self) {
        while self.at_global == 0 && self.global_depth() > 0 {
            let new: Vec<SegRef<K, V>> = self.dir.iter().step_by(2).copied().collect();
            let old = core::mem::replace(&mut self.dir, new);
            self.spare.reset();
            let gd = self.global_depth();
            self.set_global_depth(gd - 1);
            if self.store_dir(|j| j * 2).is_err() {
                // Keep the larger directory; it is still correct.
                self.dir = old;
                self.set_global_depth(gd);
                return;
            }
            let gd = self.global_depth();
            self.at_global = self.dir.iter().filter(|s| s.depth() == gd).count();
            self.sync_lone();
        }
    }

    /// Merges the segment at `idx` with its buddy into one of depth - 1 if both are at the
    /// same depth and hold at most `limit` entries together. Returns whether it merged.
    pub(crate) fn try_merge(
        &mut self,
        idx: usize,
        limit: usize,
        halve: bool,
    ) -> Result<bool, Error> {
        let a = self.dir[idx];
        if self.checked_depth(&a)? == 0 {
            return Ok(false);
        }
        let bidx = idx ^ self.span(a.depth());
        let b = self.dir[bidx];
        self.checked_depth(&b)?;
        // SAFETY: segment headers are valid while the table lives.
        let total = unsafe { (*a.hdr()).len.saturating_add((*b.hdr()).len) } as usize;
        if b.depth() != a.depth() || total > limit {
            return Ok(false);
        }
        // SAFETY: segment headers are valid while the table lives.
        let (a_len, b_len) = unsafe { ((*a.hdr()).len, (*b.hdr()).len) };
        let (dst, src) = if a_len >= b_len { (a, b) } else { (b, a) };
        // SAFETY: as above.
        let room = dst.room();
        let need = Self::count_full(&src);
        // In place only if the control bytes have the room the counter promises: in a
        // corrupt file they may not (the moves would find no free slot for some entries).
        let in_place = room >= need && dst.capacity() - Self::count_full(&dst) >= need;
        let groups = if in_place {
            0
        } else {
            let n = need + Self::count_full(&dst);
            let g = groups_for(n, 1, 2)
                .min(self.max_groups)
                .max(groups_for(n, 1, 1));
            if n > g * GROUP_WIDTH {
                // More full slots than the largest segment has: only a corrupt file's
                // lengths let such buddies try to merge. They stay apart.
                return Ok(false);
            }
            g
        };
        let depth = a.depth() - 1;
        if a.depth() == self.global_depth() {
            self.at_global -= 2;
        }
        if in_place {
            // In place: the fuller segment takes the other's entries. Its own entries stay
            // where they are (a probe's start does not depend on the depth), so this moves
            // only the smaller half and allocates nothing.
            // The depth first: from here on, `open` after a kill sees the buddies' range
            // disagree, takes `dst` (the shallower segment, whose range is the whole of it)
            // and finishes the move from `src`, which stays whole until it is freed.
            self.pend(&[src]);
            // SAFETY: header valid; `&mut self`.
            unsafe { (*dst.hdr()).depth = depth };
            core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
            self.move_into_live(&src, &dst);
            self.set_range(idx, depth, dst);
            // SAFETY: `src` is no longer referenced by the directory.
            unsafe { self.retire(&[src]) };
        } else {
            let m = match self.new_segment_recorded(groups, depth) {
                Ok(m) => m,
                Err(e) => {
                    if a.depth() == self.global_depth() {
                        self.at_global += 2;
                    }
                    return Err(e);
                }
            };
            self.pend(&[m, a, b]);
            if let Err(e) = self.move_all(&a, &m).and_then(|()| self.move_all(&b, &m)) {
                // SAFETY: `m` was just allocated; the directory never named it.
                unsafe { self.retire(&[m]) };
                if a.depth() == self.global_depth() {
                    self.at_global += 2;
                }
                return Err(e);
            }
            self.set_range(idx, m.depth(), m);
            // SAFETY: neither block is referenced by the directory any more (buddies: two
            // segments).
            unsafe { self.retire(&[a, b]) };
        }
        if halve {
            self.halve_dir();
        }
        Ok(true)
    }

    /// After a removal: merge a sparse segment with its buddy, or shrink it.
    #[cold]
    #[inline(never)]
    fn maybe_shrink(&mut self, h: u64) -> Result<(), Error> {
        // Merge while the merged segment is itself sparse: its buddy may have crossed its
        // threshold while this one was still split (its try then failed on the depths).
        loop {
            let seg = self.seg_at(h);
            // SAFETY: header valid.
            let len = unsafe { (*seg.hdr()).len } as usize;
            let idx = self.dir_index(h);
            if seg.depth() == 0
                || len > merge_at(self.max_groups)
                || !self.try_merge(idx, 2 * merge_at(self.max_groups), true)?
            {
                break;
            }
        }
        let idx = self.dir_index(h);
        let seg = self.dir[idx];
        let groups = seg.groups();
        // SAFETY: header valid.
        let len = unsafe { (*seg.hdr()).len } as usize;
        // A lone segment (depth 0) keeps its size, as std's and hashbrown's tables keep
        // theirs: shrinking it returns at most one segment's memory, and a table that is
        // emptied and refilled would pay for every rebuild twice (`shrink_to_fit` gives it
        // back on request).
        let shrink = groups > 1 && seg.depth() > 0 && len <= shrink_at(groups);
        if !shrink {
            return Ok(());
        }
        // A buddy at the same depth that is itself close to its threshold will merge with
        // this segment soon (when it crosses it): shrinking now would move these entries
        // twice.
        if self.checked_depth(&seg)? > 0 {
            let buddy = self.dir[idx ^ self.span(seg.depth())];
            // SAFETY: header valid.
            let blen = unsafe { (*buddy.hdr()).len } as usize;
            if buddy.depth() == seg.depth() && blen <= 4 * merge_at(self.max_groups) {
                return Ok(());
            }
        }
        if shrink {
            let g = groups_for(len, 1, 2);
            if g < groups {
                self.rebuild(idx, g)?;
            }
        }
        Ok(())
    }

    /// Merges and shrinks every sparse segment (after a bulk removal such as `retain`, whose
    /// erasures skip the per-removal threshold checks). O(segments) plus the moves.
    pub(crate) fn tidy(&mut self) {
        // Walk the segments by hash prefix: unlike directory indices, a prefix stays valid
        // when merges halve the directory.
        let mut h = 0u64;
        loop {
            if self.maybe_shrink(h).is_err() {
                return;
            }
            let d = self.seg_at(h).depth();
            if d == 0 {
                return;
            }
            let prefix = dir_prefix(h, d) + 1;
            if prefix >> d != 0 {
                return;
            }
            h = hash_with_prefix(prefix, d);
        }
    }

    /// Empties every segment in place (keeps the memory).
    pub(crate) fn clear(&mut self) {
        let mut i = 0;
        while i < self.dir.len() {
            let seg = self.dir[i];
            // SAFETY: header and control bytes of our own segment.
            unsafe {
                core::ptr::write_bytes(seg.ctrl_at(0), EMPTY, seg.capacity());
                let hdr = seg.hdr();
                (*hdr).len = 0;
                (*hdr).deleted = 0;
            }
            i += self.span(seg.depth());
        }
        self.len = 0;
        self.store_len();
    }

    /// Grows so that `n` entries fit without another split.
    pub(crate) fn reserve_total(&mut self, n: usize) -> Result<(), Error> {
        if self.global_depth() == 0 && n <= max_load(self.max_groups) {
            let g = groups_for(n, 1, 1);
            if g > self.dir[0].groups() {
                self.rebuild(0, g)?;
            }
            return Ok(());
        }
        // Depth at which the mean segment load is at most 3/4 of the maximum (room for the
        // spread between segments).
        let per = max_load(self.max_groups) * 3 / 4;
        let mut depth = 0u32;
        while (n >> depth) > per {
            depth += 1;
            if depth > MAX_DEPTH {
                return Err(Error::CapacityOverflow);
            }
        }
        let mut i = 0;
        while i < self.dir.len() {
            let seg = self.dir[i];
            let d = seg.depth();
            if d < depth {
                i = self.split(i, self.max_groups)?;
                continue;
            }
            if seg.groups() < self.max_groups {
                self.rebuild(i, self.max_groups)?;
            }
            i += self.span(d);
        }
        Ok(())
    }

    /// Merges buddies while they fit, then shrinks every segment to fit its entries.
    pub(crate) fn shrink_to_fit(&mut self) -> Result<(), Error> {
        let limit = max_load(self.max_groups);
        loop {
            let mut merged = false;
            let mut i = 0;
            while i < self.dir.len() {
                let d = self.dir[i].depth();
                if d > 0 {
                    let bidx = i ^ self.span(d);
                    if bidx > i && self.try_merge(i, limit, false)? {
                        merged = true;
                        i &= !(self.span(d - 1) - 1);
                        i += self.span(d - 1);
                        continue;
                    }
                }
                i += self.span(d);
            }
            if !merged {
                break;
            }
        }
        self.halve_dir();
        let mut i = 0;
        while i < self.dir.len() {
            let seg = self.dir[i];
            let d = seg.depth();
            // SAFETY: header valid.
            let (len, deleted) = unsafe { ((*seg.hdr()).len as usize, (*seg.hdr()).deleted) };
            // A length above the capacity (one wrapped below zero in a corrupt file) would
            // rebuild the segment at the largest size: `rebuild` counts the entries instead.
            let g = if len > seg.capacity() {
                1
            } else {
                groups_for(len, 1, 1)
            };
            if g < seg.groups() || deleted > 0 {
                self.rebuild(i, g)?;
            }
            i += self.span(d);
        }
        Ok(())
    }

    /// Checks every entry against the structure (see `SwissTable::check`). O(capacity):
    /// reads every control byte, and hashes and probes for every full slot's key.
    pub(crate) fn check(&self) -> Result<(), Error> {
        let (n, mut i, mut total) = (self.dir.len(), 0, 0usize);
        while i < n {
            let seg = self.dir[i];
            let span = self.span(self.checked_depth(&seg)?);
            if i % span != 0
                || self.dir[i..i + span]
                    .iter()
                    .any(|e| (e.base, e.pmask) != (seg.base, seg.pmask))
            {
                return Err(Error::Corrupt(
                    "a directory range does not name one segment",
                ));
            }
            let (mut full, mut deleted) = (0u64, 0u64);
            for s in 0..seg.capacity() {
                // SAFETY: s < capacity.
                let c = unsafe { *seg.ctrl_at(s) };
                if c == DELETED {
                    deleted += 1;
                    continue;
                }
                if !is_full(c) {
                    if c != EMPTY {
                        return Err(Error::Corrupt("a control byte that no slot state has"));
                    }
                    continue;
                }
                full += 1;
                // SAFETY: s < capacity, a full slot.
                let key = unsafe { &(*seg.slot(s)).key };
                let h = self.hash(key);
                if tag(h) != c {
                    return Err(Error::Corrupt("a control byte is not its key's tag"));
                }
                if !(i..i + span).contains(&self.dir_index(h)) {
                    return Err(Error::Corrupt("an entry in another segment's range"));
                }
                if find_in(&seg, h, key).map(|x| x.i) != Some(s) {
                    return Err(Error::Corrupt(
                        "an entry that its probe does not reach first (a duplicate key, or an empty slot before it)",
                    ));
                }
            }
            // SAFETY: the header is valid while the table lives.
            let (len, del) = unsafe { ((*seg.hdr()).len, (*seg.hdr()).deleted) };
            if (len, del) != (full, deleted) {
                return Err(Error::Corrupt(
                    "segment counters disagree with its control bytes",
                ));
            }
            total += full as usize;
            i += span;
        }
        if total != self.len() {
            return Err(Error::Corrupt("the length disagrees with the entries"));
        }
        Ok(())
    }

    /// Statistics: (segments, slots, tombstones, bytes of segments + directory + header).
    pub(crate) fn stats(&self) -> (usize, usize, usize, usize) {
        let (mut segs, mut slots, mut tomb, mut bytes) = (0, 0, 0, 0);
        let mut i = 0;
        while i < self.dir.len() {
            let seg = self.dir[i];
            segs += 1;
            slots += seg.capacity();
            // SAFETY: header valid.
            tomb += unsafe { (*seg.hdr()).deleted } as usize;
            bytes += seg_layout::<K, V>(seg.groups()).map_or(0, |l| l.0);
            i += self.span(seg.depth());
        }
        bytes += self.dir.len() * 8 + Self::header_block_size();
        (segs, slots, tomb, bytes)
    }

    /// Next full slot at or after position `(dir index, slot)`; advances the position.
    #[inline]
    pub(crate) fn next_full(&self, pos: &mut (usize, usize)) -> Option<(SegRef<K, V>, usize)> {
        loop {
            let seg = *self.dir.get(pos.0)?;
            let cap = seg.capacity();
            while pos.1 < cap {
                let i = pos.1;
                pos.1 += 1;
                // SAFETY: i < capacity.
                if is_full(unsafe { *seg.ctrl_at(i) }) {
                    return Some((seg, i));
                }
            }
            *pos = (pos.0 + self.span(seg.depth()), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{Xxh3, DIR_BITS, GROUP_BITS, TAG_BITS};
    use offheap_mmap::Region;

    /// A move that finds its destination taken (memory changed behind the table's back, as
    /// a corrupt allocator handing out a live block would do) stops with `Corrupt`, frees
    /// what its change allocated and loses nothing: the directory still names the segments
    /// it would have replaced, whole. Growths (a lone segment's rebuilds, then splits) and
    /// merges into a new segment, sabotaged over and over: an insert gets the error and
    /// goes through once the memory behaves; a removal, whose merge is optional, removes.
    /// (Before, the entry that found no room was dropped in a release build.)
    #[test]
    fn a_move_that_finds_its_destination_taken_fails_and_loses_nothing() {
        use crate::{SwissTable, TableOptions};
        let region = Region::anonymous().unwrap();
        let opts = TableOptions::new().segment_slots(32).seed(9);
        let mut t = SwissTable::<u64, u64, &Region>::with_options_in(opts, &region).unwrap();
        let mut m = std::collections::HashMap::new();
        let whole = |t: &SwissTable<u64, u64, &Region>, m: &std::collections::HashMap<u64, u64>| {
            assert_eq!(t.len(), m.len());
            assert_eq!(t.iter().count(), m.len());
            assert!(m.iter().all(|(k, v)| t.get(k) == Some(v)));
            assert_eq!(
                region.stats().allocations,
                t.stats().segments as u64 + 2,
                "blocks leaked"
            );
            region.check().unwrap();
        };
        let n = if cfg!(miri) { 120 } else { 1500 };
        let mut failed = 0;
        for k in 0..n {
            sabotage::arm();
            let r = t.try_insert(k, !k);
            sabotage::disarm();
            match r {
                Ok(old) => assert_eq!(old, None),
                Err(Error::Corrupt(_)) => {
                    failed += 1;
                    whole(&t, &m);
                    assert_eq!(t.try_insert(k, !k).unwrap(), None, "key {k}");
                }
                Err(e) => panic!("key {k}: {e}"),
            }
            m.insert(k, !k);
        }
        whole(&t, &m);
        let (depth, fails) = if cfg!(miri) { (2, 4) } else { (3, 10) };
        assert!(
            t.stats().global_depth >= depth && failed > fails,
            "{failed} failed growths, depth {}",
            t.stats().global_depth
        );
        let before = sabotage::hits();
        for k in 0..n {
            sabotage::arm();
            assert_eq!(t.remove(&k), Some(!k));
            sabotage::disarm();
            m.remove(&k);
            if k % 64 == 0 {
                whole(&t, &m);
            }
        }
        whole(&t, &m);
        assert!(sabotage::hits() > before, "no merge was sabotaged");
    }

    /// Each use of a hash reads its own bits (crate::hash's table) and all of them: flipping
    /// one bit of `h` changes the tag, the first group's position or the directory index
    /// exactly when the bit is in that use's range (for the directory, its top
    /// `global_depth` bits; for the group, the bits that a segment of its size uses).
    #[test]
    fn each_use_of_a_hash_reads_its_own_bits() {
        let region = Region::anonymous().unwrap();
        // Segments of at most 4 groups (64 slots): 500 keys make a directory of several
        // levels.
        let mut t = RawTable::<u64, u64, &Region, Xxh3>::new(&region, 7, 4).unwrap();
        for k in 0..500u64 {
            let h = t.hash(&k);
            t.find_or_insert(h, k, k).unwrap();
        }
        let gd = t.global_depth();
        assert!(gd >= 4, "global depth {gd}");
        let dir_used = DIR_BITS.end - gd..DIR_BITS.end;
        let mut x = 0x0123_4567_89AB_CDEFu64;
        for _ in 0..if cfg!(miri) { 20 } else { 200 } {
            x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0x5555;
            let h = x;
            let seg = t.seg_at(h);
            let group_used = 4..4 + seg.groups().trailing_zeros();
            for b in 0..64 {
                let g = h ^ (1 << b);
                assert_eq!(tag(g) != tag(h), TAG_BITS.contains(&b), "tag, bit {b}");
                assert_eq!(
                    t.dir_index(g) != t.dir_index(h),
                    dir_used.contains(&b),
                    "directory, bit {b}"
                );
                assert_eq!(
                    seg.start(g) != seg.start(h),
                    group_used.contains(&b),
                    "group, bit {b}"
                );
                assert!(GROUP_BITS.contains(&b) || !group_used.contains(&b));
            }
            for d in 1..=gd {
                let p = dir_prefix(h, d);
                assert_eq!(dir_prefix(hash_with_prefix(p, d), d), p);
                assert_eq!(p, (t.dir_index(h) >> (gd - d)) as u64);
            }
        }
    }

    /// A segment whose stored depth is changed behind the table to above the directory's
    /// (a corrupt allocator that handed its header out; the fuzz target `bytesmap_file` did
    /// it through a `BytesMap`'s arena) makes the structural changes fail with `Corrupt`,
    /// and walks over the directory go on: no overflow of `global_depth - depth`, which
    /// `shrink_to_fit` hit before.
    #[test]
    fn a_depth_changed_behind_the_table_is_corrupt_not_an_overflow() {
        let region = Region::anonymous().unwrap();
        let mut t = RawTable::<u64, u64, &Region, Xxh3>::new(&region, 7, 4).unwrap();
        let (n, more) = if cfg!(miri) { (500, 300) } else { (500, 2000) };
        for k in 0..n {
            let h = t.hash(&k);
            t.find_or_insert(h, k, k).unwrap();
        }
        let gd = t.global_depth();
        assert!(gd >= 3, "global depth {gd}");
        let seg = t.seg_at(t.hash(&0));
        // SAFETY: the segment's header, written as memory changed behind the table would.
        unsafe { (*seg.hdr()).depth = gd + 5 };
        assert!(matches!(t.shrink_to_fit(), Err(Error::Corrupt(_))));
        let r = t.reserve_total(4 * n as usize);
        assert!(matches!(r, Ok(()) | Err(Error::Corrupt(_))), "{r:?}");
        // The walks still visit every entry once (the bad segment read as one entry's).
        let mut pos = (0, 0);
        let mut seen = 0;
        while t.next_full(&mut pos).is_some() {
            seen += 1;
        }
        assert!(seen >= n as usize, "{seen} entries seen");
        // Lookups do not read the depth at all.
        for k in 0..n {
            assert!(t.find(t.hash(&k), &k).is_some(), "key {k}");
        }
        // Inserts until the bad segment needs room, removals until it would merge: each
        // answers or fails with `Corrupt`.
        for k in n..n + more {
            let h = t.hash(&k);
            match t.find_or_insert(h, k, k) {
                Ok(_) | Err(Error::Corrupt(_)) => {}
                Err(e) => panic!("key {k}: {e}"),
            }
        }
        for k in 0..n + more {
            let h = t.hash(&k);
            if let Some((seg, i, empty)) = t.find_hit(h, &k) {
                t.remove_at(seg, i, h, empty);
            }
        }
    }

    /// A doubling of the directory's mirror takes the buffer that the splits since the last
    /// one prepared ([`DirSpare`]), every page of it written beforehand; the stored
    /// directory it writes is the old one's words, doubled (checked against the segments by
    /// `store_dir`'s debug assertion); a shrink drops the buffer; and the table agrees with
    /// a model all along.
    #[test]
    fn a_doubling_takes_the_mirror_that_the_splits_prepared() {
        let region = Region::anonymous().unwrap();
        // Segments of at most 4 groups (64 slots): the directory doubles every few dozen
        // inserts; from 8 entries on (128 bytes in unit tests) the next mirror is prepared.
        let mut t = RawTable::<u64, u64, &Region, Xxh3>::new(&region, 7, 4).unwrap();
        let n = if cfg!(miri) { 700 } else { 5000 };
        let mut model = std::collections::HashMap::new();
        let mut prepared = 0;
        for k in 0..n {
            let gd = t.global_depth();
            let next_bytes = (2usize << gd) * size_of::<SegRef<u64, u64>>();
            let (buf, touched) = (t.spare.buf.as_ptr(), t.spare.touched);
            let ready = t.spare.buf.capacity() >= 2 << gd;
            let h = t.hash(&k);
            t.find_or_insert(h, k, k + 1).unwrap();
            model.insert(k, k + 1);
            if t.global_depth() > gd && next_bytes >= SPARE_MIN_BYTES {
                assert!(ready, "no buffer prepared for depth {}", gd + 1);
                assert!(
                    touched >= next_bytes,
                    "{touched} of {next_bytes} bytes written"
                );
                assert_eq!(
                    t.dir.as_ptr(),
                    buf,
                    "the doubling to {} took another buffer",
                    gd + 1
                );
                assert_eq!(
                    t.spare.retired.len(),
                    1 << gd,
                    "the old mirror waits to be freed"
                );
                prepared += 1;
            }
        }
        assert!(
            prepared >= 2,
            "{prepared} prepared doublings, depth {}",
            t.global_depth()
        );
        for k in 0..n {
            let h = t.hash(&k);
            // SAFETY: a full slot of the table, read before any change.
            let got = t.find_slot(h, &k).map(|s| unsafe { (*s.as_ptr()).value });
            assert_eq!(got, model.get(&k).copied(), "key {k}");
        }
        let gd = t.global_depth();
        for k in 0..n {
            let h = t.hash(&k);
            let (seg, i, has_empty) = t.find_hit(h, &k).expect("present");
            assert_eq!(t.remove_at(seg, i, h, has_empty), k + 1);
        }
        assert!(t.global_depth() < gd, "depth {gd} after every removal");
        assert_eq!(
            t.spare.buf.capacity(),
            0,
            "a halving drops the prepared buffer"
        );
    }

    /// A table that warms puts each key in its preferred quarter of its group when the
    /// quarter has room (inserts, and the moves of the splits that grow it); one that does
    /// not packs each group's entries into its lowest slots. Segments of 4 groups of 16-byte
    /// slots (1152 bytes): the table warms from global depth 6 (64 KiB in tests).
    #[test]
    fn a_warm_table_keeps_keys_in_their_quarters_and_a_small_one_packs_them_low() {
        let region = Region::anonymous().unwrap();
        let mut t = RawTable::<u64, u64, &Region, Xxh3>::new(&region, 7, 4).unwrap();
        assert_eq!(seg_layout::<u64, u64>(4).unwrap().0 << 6, 73728);
        // (keys in their quarter, keys) and whether every group's full slots are a prefix.
        let survey = |t: &RawTable<u64, u64, &Region, Xxh3>, n: u64| {
            let mut inq = 0;
            for k in 0..n {
                let h = t.hash(&k);
                let (_, i) = t.find(h, &k).expect("present");
                inq += usize::from((i % GROUP_WIDTH) / 4 == quarter_start(h) as usize / 4);
            }
            let packed = t.dir.iter().all(|seg| {
                (0..=seg.mask()).all(|g| {
                    // SAFETY: g <= mask.
                    let full = unsafe { seg.group(g) }.match_full().0;
                    full & full.wrapping_add(1) == 0
                })
            });
            (inq as f64 / n as f64, packed)
        };
        let mut n = 0;
        while t.global_depth() < 5 {
            let h = t.hash(&n);
            t.find_or_insert(h, n, n).unwrap();
            n += 1;
        }
        assert!(!t.warm);
        let (small, packed) = survey(&t, n);
        assert!(packed, "a table that does not warm packs its groups");
        // Grown to four times the size from which it warms: every segment has split twice
        // since, so every key was moved by the warm table's rules.
        let target = if cfg!(miri) { 7 } else { 8 };
        while t.global_depth() < target {
            let h = t.hash(&n);
            t.find_or_insert(h, n, n).unwrap();
            n += 1;
        }
        assert!(t.warm);
        let (warm, packed) = survey(&t, n);
        eprintln!("keys in their quarter: {warm:.3} warm ({n} keys), {small:.3} before");
        assert!(!packed);
        assert!(
            warm > 0.7 && small < 0.5,
            "keys in their quarter: {warm:.2} warm, {small:.2} before"
        );
    }

    /// A table turns to warming the slots' page ([`SegRef::warm_slots`]) once its directory
    /// spans `WARM_BYTES` of segments (64 KiB in unit tests), back when it shrinks below, and
    /// finds, inserts and removes the same keys either way. Under miri this also checks that
    /// the prefetched slot's address stays inside its segment.
    #[test]
    fn a_table_warms_slot_pages_from_its_size_on_and_agrees_with_a_model() {
        let region = Region::anonymous().unwrap();
        // Segments of 4 groups of 64-byte slots: 4224 bytes, so 16 directory entries span
        // 64 KiB: the table warms from global depth 4, which 600 keys pass.
        type V = [u64; 7];
        let mut t = RawTable::<u64, V, &Region, Xxh3>::new(&region, 7, 4).unwrap();
        let seg_bytes = seg_layout::<u64, V>(4).unwrap().0;
        assert_eq!(seg_bytes, 4224);
        let check = |t: &RawTable<u64, V, &Region, Xxh3>| {
            let expect = seg_bytes << t.global_depth() >= WARM_BYTES;
            assert_eq!(t.warm, expect, "global depth {}", t.global_depth());
        };
        check(&t);
        assert!(!t.warm);
        let n = if cfg!(miri) { 600 } else { 2000 };
        let mut model = std::collections::HashMap::new();
        let mut seen_warm = false;
        for k in 0..n {
            let h = t.hash(&k);
            assert!(!t.find_or_insert(h, k, [k * 3; 7]).unwrap().1);
            model.insert(k, [k * 3; 7]);
            check(&t);
            seen_warm |= t.warm;
        }
        assert!(seen_warm, "global depth {}", t.global_depth());
        for k in 0..2 * n {
            let h = t.hash(&k);
            // SAFETY: the slot is a full slot of the table, read before any change.
            let got = t.find_slot(h, &k).map(|s| unsafe { (*s.as_ptr()).value });
            assert_eq!(got, model.get(&k).copied(), "key {k}");
            // Present keys again through the insert path: found, not inserted.
            if k < n {
                assert!(t.find_or_insert(h, k, [0; 7]).unwrap().1);
            }
        }
        for k in (0..n).filter(|k| k % 256 != 0) {
            let h = t.hash(&k);
            let (seg, i, has_empty) = t.find_hit(h, &k).expect("present");
            assert_eq!(t.remove_at(seg, i, h, has_empty), [k * 3; 7]);
            model.remove(&k);
            check(&t);
        }
        assert!(
            !t.warm,
            "global depth {} after the removals",
            t.global_depth()
        );
        for k in 0..n {
            let h = t.hash(&k);
            assert_eq!(
                t.find_hit(h, &k).is_some(),
                model.contains_key(&k),
                "key {k}"
            );
        }
    }
}
