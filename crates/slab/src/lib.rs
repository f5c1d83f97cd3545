//! A slab arena with refcounted, chainable chunks and generation-checked handles, in the model
//! of [go-slab](https://github.com/couchbase/go-slab), whose whole state can live in memory you
//! supply.
//!
//! * **Size classes** grow by a factor: the first class has `start_chunk_size`-byte chunks,
//!   each next one `ceil(previous × growth_factor)`; an allocation is served by the first class
//!   large enough. Classes are created lazily, each takes `slab_size`-byte slabs from the
//!   arena's [`SlabSource`] and cuts them into chunks.
//! * **Refcounts and chains**: a chunk starts with one reference; [`Arena::add_ref`] and
//!   [`Arena::dec_ref`] count; [`Arena::set_next`] / [`Arena::get_next`] chain chunks with
//!   go-slab's refcount rules. Releasing a chain is iterative (no recursion, any length).
//! * **Handles, not addresses**: a [`Handle`] is a `Copy` value of slab index, chunk index,
//!   generation and arena tag. Use after release (even after reuse), double release and
//!   foreign handles are reported as typed [`Error`]s and change nothing.
//! * **Persistence-ready**: everything (parameters, statistics, tables, chunk metadata, free
//!   lists) is in source memory, linked by offsets. [`Arena::open_in`] reopens an arena from
//!   its root offset in O(1), validating the header; every offset read back is checked before
//!   use, so corrupt memory gives [`Error::Corrupt`], never undefined behaviour.
//! * **Memory flows back**: slabs whose chunks are all free go back to the source according to
//!   a [`ReleasePolicy`], so memory moves between classes over a long run.
//!
//! No dependencies. See `docs/slab.md` in the repository for the memory layout and measured
//! figures.
//!
//! ```
//! use offheap_slab::{Arena, Error};
//!
//! let mut arena = Arena::new(48, 1024 * 1024, 2.0)?;
//! let buf = arena.alloc(64)?;                 // refcount 1
//! arena.write(buf, 0, b"hello")?;
//! arena.add_ref(buf)?;                        // 2
//! assert!(!arena.dec_ref(buf)?);              // 1
//! assert_eq!(&arena.bytes(buf)?[..5], b"hello");
//! assert!(arena.dec_ref(buf)?);               // 0: freed
//! assert_eq!(arena.dec_ref(buf), Err(Error::StaleHandle)); // caught, nothing changed
//! assert_eq!(arena.alloc(2 << 20), Err(Error::TooBig { len: 2 << 20, max: 1 << 20 }));
//! let stats = arena.stats()?;
//! assert_eq!((stats.allocs, stats.dec_ref_zeroes, stats.errors.stale_handle), (1, 1, 1));
//! # Ok::<(), Error>(())
//! ```

mod arena;
mod check;
mod config;
mod error;
mod handle;
mod layout;
mod source;
mod stats;

pub use arena::Arena;
pub use config::{Config, ReleasePolicy, MAX_CLASSES, MAX_SLAB_SIZE};
pub use error::Error;
pub use handle::Handle;
pub use source::{BufSource, HeapSource, SlabSource};
pub use stats::{CheckReport, ClassStats, CollectReport, ErrorCounts, RepairReport, Stats};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod repair_tests;

/// Test-only simulation of a process killed inside the arena: every store the arena makes to
/// its source memory first calls [`kill::write`], which lets `n` stores through after
/// [`kill::arm`]`(n)` and then panics with [`kill::Killed`] instead of making the next one, as
/// if the process had died at that instruction boundary (the test catches the unwind and
/// repairs the memory left behind).
#[cfg(test)]
pub(crate) mod kill {
    use std::cell::Cell;
    std::thread_local! {
        static LEFT: Cell<u64> = const { Cell::new(u64::MAX) };
    }
    /// The panic payload of a simulated kill.
    pub(crate) struct Killed;
    /// Called before each store to source memory.
    pub(crate) fn write() {
        LEFT.with(|l| match l.get() {
            u64::MAX => {}
            0 => {
                l.set(u64::MAX);
                std::panic::panic_any(Killed);
            }
            n => l.set(n - 1),
        });
    }
    /// Lets `n` more stores through, then kills (`u64::MAX`: never).
    pub(crate) fn arm(n: u64) {
        LEFT.with(|l| l.set(n));
    }
}
