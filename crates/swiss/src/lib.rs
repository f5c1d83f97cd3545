//! A SwissTable for plain-old-data keys and values that lives in a memory region (anonymous
//! or a file), grows and shrinks one bounded segment at a time, and reopens in O(segments).
//!
//! - **Layout**: a directory of segments (extendible hashing). Each segment is a small
//!   SwissTable: a 64-byte header, `16 * groups` control bytes (7-bit tag, `EMPTY`,
//!   `DELETED`), then the slots, keys and values inline. See `docs/swiss.md`.
//! - **Probing**: 16-wide groups matched with SSE2 on x86_64 or a portable SWAR matcher that
//!   gives the same masks, so the layout and probe sequence never depend on the CPU.
//! - **Bounded growth**: a full segment splits into two (the directory doubles by copying
//!   only itself); sparse buddies merge. No insert or remove moves more than one segment.
//! - **Hashing**: xxh3 with a per-table seed stored in the header; pluggable through
//!   [`SeededHash`]. Hash bits `20..33` are never used by the table ([`FREE_BITS`]).
//! - **Persistence**: [`SwissTable::create_in`] / [`SwissTable::open_in`] keep a table in a
//!   file-backed region under a root name; opening validates everything it follows.
//!
//! ```
//! use offheap_swiss::SwissTable;
//! let mut t: SwissTable<u64, u64> = (0..1000u64).map(|i| (i, i * i)).collect();
//! assert_eq!(t.get(&12), Some(&144));
//! t.retain(|k, _| k % 2 == 0);
//! assert_eq!(t.len(), 500);
//! let mut out = [None; 3];
//! assert_eq!(t.get_many(&[2, 3, 4], &mut out), 2);
//! assert_eq!(out, [Some(4), None, Some(16)]);
//! ```

#![warn(missing_docs)]

#[cfg(all(test, not(miri)))]
mod crash_tests;
mod error;
mod group;
mod hash;
mod memory;
mod raw;
mod table;

pub use bytemuck::Pod;
pub use error::Error;
pub use group::MATCHER;
pub use hash::{
    random_seed, SeededHash, Xxh3, Xxh3BuildHasher, Xxh3Hasher, DIR_BITS, FREE_BITS, GROUP_BITS,
    TAG_BITS,
};
pub use memory::{default_region_options, AllocRecord, DefaultMemory, Heap, TableMemory};
pub use table::{
    Drain, Entry, IntoIter, IntoKeys, IntoValues, Iter, IterMut, OccupiedEntry, RepairReport,
    SwissTable, TableOptions, TableStats, VacantEntry, DEFAULT_SEGMENT_SLOTS,
};
