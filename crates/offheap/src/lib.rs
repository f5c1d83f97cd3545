//! Hash maps whose data lives outside the Rust heap: in anonymous memory or in a
//! memory-mapped file that outlives the process and reopens without a rebuild (no entry is
//! read; the table's segments are validated, one per 1800-3600 entries).
//!
//! - [`Map<K, V>`]: typed plain-old-data keys and values (a thin, persistent front over
//!   [`swiss::SwissTable`] in a [`mmap::Region`]).
//! - [`BytesMap`]: byte-string keys and values of any length (up to 4 GiB), keys compared in
//!   full, small pairs stored inline in the table slot, larger ones in a slab arena
//!   ([`slab::Arena`]) in the same region, long values as chains of chunks.
//! - [`SharedMap`]: `BytesMap` semantics through `&self` for many threads and processes
//!   on one file: sharded, process-shared reader-writer locks that record their owners and
//!   recover (repairing the shard) when an owner dies.
//!
//! The building blocks are re-exported as modules: [`slab`] (offheap-slab), [`mmap`]
//! (offheap-mmap) and [`swiss`] (offheap-swiss).
//!
//! ```
//! use offheap::{BytesMap, Map};
//! # fn main() -> Result<(), offheap::Error> {
//! let mut m: Map<u64, u64> = Map::anonymous()?;
//! m.insert(1, 10)?;
//! assert_eq!(m.get(&1), Some(10));
//!
//! let mut b = BytesMap::anonymous()?;
//! assert_eq!(b.insert(b"key", b"value")?, None);
//! assert_eq!(b.get(b"key")?.as_deref(), Some(&b"value"[..]));
//! assert_eq!(b.get_with(b"key", |v| v.len())?, Some(5));
//! # Ok(())
//! # }
//! ```
//!
//! See `docs/architecture.md` in the repository for how the crates compose.

mod bytes_map;
mod error;
mod lock;
mod map;
mod region;
mod shared;
mod source;

pub use bytes_map::{BytesMap, BytesMapOptions, Iter, MAX_LEN};
pub use error::Error;
pub use map::Map;
pub use shared::{SharedMap, SharedMapOptions};

/// The slab arena crate (offheap-slab).
pub mod slab {
    pub use offheap_slab::*;
}

/// The memory-region crate (offheap-mmap).
pub mod mmap {
    pub use offheap_mmap::*;
}

/// The SwissTable crate (offheap-swiss).
pub mod swiss {
    pub use offheap_swiss::*;
}
