//! The arena's records in source memory. All are `repr(C)`, contain only integers, and are
//! reached through raw pointers that the arena validated (resolved through the source, checked
//! for alignment, indices checked against table lengths).

/// "OHSLAB" + layout version byte pair, little-endian.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"OHSLABv1");
/// Layout version of the records below.
pub(crate) const VERSION: u32 = 2;
/// "No index" in a `u32` link.
pub(crate) const NONE: u32 = u32::MAX;
/// Alignment of every block the arena asks for.
pub(crate) const BLOCK_ALIGN: usize = 64;
/// Number of `u64` statistics counters in the header (some reserved for later versions).
pub(crate) const NSTATS: usize = 20;
/// Indices of [`Header::pending`]: a block being taken (offset, then size) and a block being
/// given back (offset, then size) by an operation in progress.
pub(crate) const PENDING_NEW: usize = 0;
pub(crate) const PENDING_OLD: usize = 2;

/// Indices of the counters in [`Header::stats`].
pub(crate) mod stat {
    pub const ALLOCS: usize = 0;
    pub const ADD_REFS: usize = 1;
    pub const DEC_REFS: usize = 2;
    pub const DEC_REF_ZEROES: usize = 3;
    pub const GET_NEXTS: usize = 4;
    pub const SET_NEXTS: usize = 5;
    pub const MALLOCS: usize = 6;
    pub const MALLOC_ERRS: usize = 7;
    pub const TOO_BIG_ERRS: usize = 8;
    pub const SLAB_FREES: usize = 9;
    pub const STALE_ERRS: usize = 10;
    pub const FOREIGN_ERRS: usize = 11;
    pub const INVALID_ERRS: usize = 12;
    pub const CYCLE_ERRS: usize = 13;
    pub const OVERFLOW_ERRS: usize = 14;
    pub const BOUNDS_ERRS: usize = 15;
    pub const CORRUPT_ERRS: usize = 16;
    pub const TABLE_GROWS: usize = 17;
}

/// The arena's root block.
#[repr(C)]
pub(crate) struct Header {
    pub magic: u64,
    pub version: u32,
    /// Random tag carried by every handle of this arena.
    pub tag: u32,
    pub start_chunk_size: u64,
    pub slab_size: u64,
    pub growth_bits: u64,
    /// Empty slabs a class keeps (`u32::MAX`: never release).
    pub keep_empty: u32,
    /// Number of classes the parameters imply.
    pub class_total: u32,
    /// Check value over the immutable fields above.
    pub param_check: u64,
    // --- mutable ---
    pub class_table: u64,
    pub class_cap: u32,
    pub class_count: u32,
    pub slab_table: u64,
    pub slab_cap: u32,
    pub slab_len: u32,
    /// Head of the list of free slab slots (linked through `SlabRec::next`).
    pub free_slot: u32,
    /// Slabs currently held.
    pub live_slabs: u32,
    /// Chunks in all live slabs (bounds chain walks on possibly corrupt memory).
    pub total_chunks: u64,
    /// Structure epoch: incremented whenever a table moves or a slab's block goes back to the
    /// source. An `Arena` caches resolved addresses of tables and slab blocks only while this
    /// value is the one it saw when it resolved them.
    pub epoch: u64,
    pub stats: [u64; NSTATS],
    /// The blocks an operation in progress takes from or gives back to the source (0: none):
    /// `[new offset, new size, old offset, old size]`. The new block's offset is stored by
    /// [`SlabSource::alloc_recorded`](crate::SlabSource::alloc_recorded) as the block is
    /// allocated; the old one before the header or slot stops naming it. Cleared when the
    /// operation is done. After a process died in between, `repair` gives back the ones
    /// that nothing names and that the source confirms are live blocks. (These were the
    /// last four of 24 reserved statistics words, always 0, in arenas of earlier builds.)
    pub pending: [u64; 4],
}

/// One size class.
#[repr(C)]
pub(crate) struct ClassRec {
    pub chunk_size: u64,
    /// First slab of this class that has a free or never-used chunk.
    pub partial_head: u32,
    pub slabs: u32,
    pub empty_slabs: u32,
    pub _pad: u32,
    pub _reserved: u64,
}

/// One slot of the slab table.
#[repr(C)]
pub(crate) struct SlabRec {
    /// The slab's block; 0 when the slot is free.
    pub block: u64,
    pub class: u32,
    pub in_use: u32,
    /// Head of this slab's free chunk list (chunk indices, linked through `Meta::next_chunk`).
    pub free_head: u32,
    /// Chunks `[0, frontier)` have been handed out at least once; the rest were never touched.
    pub frontier: u32,
    /// Partial list links (slab indices); `next` also links free slots.
    pub prev: u32,
    pub next: u32,
    /// Generation of chunks first handed out in this slot's current slab.
    pub gen_floor: u32,
    /// Highest generation any chunk of this slot has had.
    pub gen_max: u32,
}

/// Metadata of one chunk, in an array at the start of its slab's block.
#[repr(C)]
pub(crate) struct Meta {
    /// 0 when the chunk is free.
    pub refcount: u32,
    pub gen: u32,
    pub len: u32,
    /// Next chunk in the chain (`NONE` when none).
    pub next_slab: u32,
    /// Chunk index of the chain's next chunk, or of the next free chunk when free.
    pub next_chunk: u32,
}

pub(crate) const HEADER_SIZE: usize = std::mem::size_of::<Header>();
pub(crate) const CLASS_REC: usize = std::mem::size_of::<ClassRec>();
pub(crate) const SLAB_REC: usize = std::mem::size_of::<SlabRec>();
pub(crate) const META: usize = std::mem::size_of::<Meta>();

const _: () = {
    assert!(HEADER_SIZE == 112 + 8 * NSTATS + 32);
    assert!(CLASS_REC == 32);
    assert!(SLAB_REC == 40);
    assert!(META == 20);
    assert!(std::mem::align_of::<Header>() <= BLOCK_ALIGN);
};

/// A check value over the immutable parameters (FNV-1a over their little-endian bytes).
pub(crate) fn param_check(
    tag: u32,
    start: u64,
    slab: u64,
    growth_bits: u64,
    keep: u32,
    total: u32,
) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |v: u64| {
        for b in v.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(MAGIC);
    eat(VERSION as u64);
    eat(tag as u64);
    eat(start);
    eat(slab);
    eat(growth_bits);
    eat(keep as u64);
    eat(total as u64);
    h
}
