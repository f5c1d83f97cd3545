//! The facade's error type.

use std::fmt;

/// Everything that can go wrong in a map operation.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The memory region (mapping, file, block allocator) failed.
    Region(offheap_mmap::Error),
    /// The hash table failed (or found its stored state invalid).
    Table(offheap_swiss::Error),
    /// The slab arena failed (or found its stored state invalid).
    Arena(offheap_slab::Error),
    /// `open`: the region holds no map of this kind.
    NotFound,
    /// `create`: the region already holds a map of this kind.
    AlreadyExists,
    /// The map's stored state is inconsistent; the reason says what was found.
    Corrupt(&'static str),
    /// A key or value longer than [`MAX_LEN`](crate::MAX_LEN).
    TooLong(usize),
    /// Invalid options; the reason says which.
    InvalidOptions(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Region(e) => write!(f, "region: {e}"),
            Error::Table(e) => write!(f, "table: {e}"),
            Error::Arena(e) => write!(f, "arena: {e}"),
            Error::NotFound => f.write_str("the region holds no such map"),
            Error::AlreadyExists => f.write_str("the region already holds such a map"),
            Error::Corrupt(why) => write!(f, "corrupt map: {why}"),
            Error::TooLong(n) => write!(f, "{n} bytes is longer than the 4 GiB limit"),
            Error::InvalidOptions(why) => write!(f, "invalid options: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Region(e) => Some(e),
            Error::Table(e) => Some(e),
            Error::Arena(e) => Some(e),
            _ => None,
        }
    }
}

impl From<offheap_mmap::Error> for Error {
    fn from(e: offheap_mmap::Error) -> Self {
        Error::Region(e)
    }
}

impl From<offheap_swiss::Error> for Error {
    fn from(e: offheap_swiss::Error) -> Self {
        Error::Table(e)
    }
}

impl From<offheap_slab::Error> for Error {
    fn from(e: offheap_slab::Error) -> Self {
        Error::Arena(e)
    }
}
