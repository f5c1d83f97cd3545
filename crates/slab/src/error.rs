//! The crate's error type.

use std::fmt;

/// Everything that can go wrong in an [`Arena`](crate::Arena) operation.
///
/// An operation that returns an error has changed nothing in the arena except the error
/// counters in its [`Stats`](crate::Stats) (for `&mut self` operations), with one exception:
/// [`Error::Corrupt`] found in the middle of releasing a chain (the memory was already
/// inconsistent before the call) may leave the chunks released before the corruption released.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The parameters are not valid; the reason says which.
    InvalidConfig(&'static str),
    /// `alloc(len)` with `len` larger than the slab size.
    TooBig {
        /// The length asked for.
        len: usize,
        /// The arena's slab size, the largest length it serves.
        max: usize,
    },
    /// The source returned no memory (for a new slab or a growing table).
    OutOfMemory,
    /// The handle was issued by another arena.
    ForeignHandle,
    /// The handle's chunk was released (its refcount reached zero), possibly reused since.
    /// Double release and use after release both report this.
    StaleHandle,
    /// The handle names no chunk this arena ever had (a forged or damaged handle).
    InvalidHandle,
    /// `set_next` would make the chain a cycle.
    Cycle,
    /// The chunk's refcount is at its maximum (`u32::MAX`).
    RefcountOverflow,
    /// A sub-range access outside the chunk's length.
    OutOfBounds {
        /// Start of the range asked for.
        offset: usize,
        /// Length of the range asked for.
        len: usize,
        /// The chunk's length.
        chunk_len: usize,
    },
    /// `open_in`: the header's magic number is not an arena's.
    NotAnArena,
    /// `open_in`: the header's layout version is not one this build reads.
    UnsupportedVersion(u32),
    /// The arena's memory is inconsistent (damaged, or written by something else); the reason
    /// says what was found.
    Corrupt(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(why) => write!(f, "invalid arena configuration: {why}"),
            Error::TooBig { len, max } => {
                write!(
                    f,
                    "allocation of {len} bytes exceeds the slab size of {max} bytes"
                )
            }
            Error::OutOfMemory => f.write_str("the slab source is out of memory"),
            Error::ForeignHandle => f.write_str("the handle belongs to another arena"),
            Error::StaleHandle => f.write_str("the handle's chunk was already released"),
            Error::InvalidHandle => f.write_str("the handle names no chunk of this arena"),
            Error::Cycle => f.write_str("set_next would close a cycle in the chain"),
            Error::RefcountOverflow => f.write_str("the chunk's refcount is at its maximum"),
            Error::OutOfBounds {
                offset,
                len,
                chunk_len,
            } => write!(
                f,
                "range {offset}..{} is outside the chunk's {chunk_len} bytes",
                *offset as u128 + *len as u128
            ),
            Error::NotAnArena => f.write_str("no arena header at this offset (bad magic)"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported arena layout version {v}"),
            Error::Corrupt(what) => write!(f, "arena memory is corrupt: {what}"),
        }
    }
}

impl std::error::Error for Error {}
