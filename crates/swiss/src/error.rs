//! The crate's error type.

use core::fmt;

/// Everything that can go wrong creating, opening or growing a table.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The memory refused an allocation.
    Alloc {
        /// Bytes asked for.
        size: u64,
        /// Alignment asked for.
        align: u64,
        /// Why, as the memory reported it.
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The memory failed in another way (setting a root, mapping).
    Memory(Box<dyn std::error::Error + Send + Sync>),
    /// `create_in` found the root name already taken.
    RootExists(String),
    /// `open_in` found no root of that name.
    RootNotFound(String),
    /// The stored table holds other key/value types (sizes or alignments differ).
    TypeMismatch {
        /// `[key size, key align, value size, value align]` of the types asked for.
        expected: [u32; 4],
        /// The same, as stored.
        found: [u32; 4],
    },
    /// The stored table was written with another hash function.
    HasherMismatch {
        /// [`SeededHash::ID`](crate::SeededHash::ID) of the hash asked for.
        expected: u64,
        /// The id stored.
        found: u64,
    },
    /// A process that is still alive has the table open: another one, or this one (`pid` is
    /// then `std::process::id()`) through another handle, perhaps one leaked with
    /// `mem::forget`. A table has one user at a time; one left open by a process that died
    /// is repaired by the next `open_in` instead.
    InUse {
        /// The process that has it open.
        pid: u32,
    },
    /// The stored header has a format version this build does not read.
    UnsupportedVersion(u32),
    /// A stored handle does not name a block of the memory of at least `len` bytes: it lies
    /// outside the memory, or (in a region) it is not a live allocation.
    OffsetOutOfBounds {
        /// The offset.
        offset: u64,
        /// Bytes that were to be read there.
        len: u64,
    },
    /// The stored table is inconsistent; the string says what was wrong.
    Corrupt(&'static str),
    /// An option was out of range; the string says which.
    InvalidOptions(&'static str),
    /// The table cannot grow any further (directory at its maximum depth and segment at its
    /// maximum size).
    CapacityOverflow,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Alloc {
                size,
                align,
                source,
            } => {
                write!(f, "allocation of {size} bytes (align {align}) failed")?;
                if let Some(s) = source {
                    write!(f, ": {s}")?;
                }
                Ok(())
            }
            Error::Memory(e) => write!(f, "memory error: {e}"),
            Error::RootExists(n) => write!(f, "a root named {n:?} already exists"),
            Error::RootNotFound(n) => write!(f, "no root named {n:?}"),
            Error::TypeMismatch { expected, found } => write!(
                f,
                "stored key/value layout [size, align, size, align] is {found:?}, expected {expected:?}"
            ),
            Error::HasherMismatch { expected, found } => write!(
                f,
                "stored table uses hash function {found:#x}, expected {expected:#x}"
            ),
            Error::UnsupportedVersion(v) => write!(f, "unsupported table format version {v}"),
            Error::InUse { pid } => write!(f, "the table is open in process {pid}"),
            Error::OffsetOutOfBounds { offset, len } => {
                write!(
                    f,
                    "stored handle {offset:#x} does not name a live block of {len} bytes"
                )
            }
            Error::Corrupt(what) => write!(f, "corrupt table: {what}"),
            Error::InvalidOptions(what) => write!(f, "invalid option: {what}"),
            Error::CapacityOverflow => write!(f, "table capacity overflow"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Alloc {
                source: Some(s), ..
            } => Some(&**s),
            Error::Memory(e) => Some(&**e),
            _ => None,
        }
    }
}
