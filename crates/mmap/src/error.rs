//! The crate's error type.

use std::fmt;
use std::io;

/// Everything that can go wrong with a [`Region`](crate::Region).
///
/// Opening a file that is not a valid region never panics: every way a file can be
/// malformed has its own variant, so callers (and the `offheap` CLI) can report it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed.
    Io(io::Error),
    /// The file is zero bytes long.
    Empty,
    /// The file is shorter than its header says, or shorter than a header.
    Truncated {
        /// Actual length of the file in bytes.
        len: u64,
        /// Bytes the header (or the format) requires.
        needed: u64,
    },
    /// The file does not start with the region magic.
    BadMagic,
    /// The file was written on a machine of the other byte order.
    WrongEndianness,
    /// The file's major format version is not one this build reads.
    UnsupportedVersion {
        /// Major version found in the file.
        major: u16,
        /// Minor version found in the file.
        minor: u16,
    },
    /// The file uses incompatible features this build does not know.
    UnsupportedFeatures {
        /// The unknown incompatible feature bits.
        unknown: u64,
    },
    /// The file's page size cannot be mapped on this machine.
    UnsupportedPageSize {
        /// Page size recorded in the file.
        file: u64,
        /// Page size of this machine.
        os: u64,
    },
    /// The checksum over the header's immutable fields does not match.
    BadChecksum {
        /// Checksum stored in the header.
        stored: u64,
        /// Checksum computed over the header.
        computed: u64,
    },
    /// An offset (plus length) lies outside the region.
    OffsetOutOfBounds {
        /// The offending offset.
        offset: u64,
        /// Length that was to be accessed at `offset`.
        len: u64,
        /// Size of the region.
        size: u64,
    },
    /// An allocator structure or header field inside the region is inconsistent.
    Corrupt {
        /// Offset of the inconsistent structure (0 for the header).
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// The region cannot grow enough to satisfy an allocation.
    OutOfMemory {
        /// Bytes requested.
        requested: u64,
        /// The region's maximum size (its address-space reservation).
        max_size: u64,
    },
    /// `free` was given an offset that is not a live allocation (double or wild free).
    InvalidFree {
        /// The offset passed to `free`.
        offset: u64,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An offset that should name a live allocation does not (see
    /// [`Region::allocation_size`](crate::Region::allocation_size)).
    NotAllocated {
        /// The offset asked about.
        offset: u64,
        /// Why it is not a live allocation.
        reason: &'static str,
    },
    /// The alignment is not a power of two, or exceeds the page size.
    InvalidAlignment {
        /// The requested alignment.
        align: u64,
    },
    /// A root name is empty, longer than [`ROOT_NAME_LEN`](crate::ROOT_NAME_LEN) bytes, or contains NUL.
    InvalidRootName,
    /// All [`ROOT_SLOTS`](crate::ROOT_SLOTS) root slots are in use.
    RootSlotsFull,
    /// A [`RegionOptions`](crate::RegionOptions) value is out of range.
    InvalidOptions(&'static str),
    /// The region was opened with
    /// [`RegionOptions::open_torn`](crate::RegionOptions::open_torn) and its allocator's
    /// bookkeeping is torn (a process died inside `alloc`, `free` or a growth): allocation
    /// and freeing wait for [`Region::recover`](crate::Region::recover).
    NeedsRecovery,
    /// [`Region::alloc_into`](crate::Region::alloc_into) was given a record that is not a
    /// word of a live allocation, or a mark with bits that an offset uses.
    InvalidRecord(&'static str),
    /// The region file is in use by processes of another pid namespace (another container,
    /// or the host). Owner ids in the file are pids of that namespace, which this process
    /// cannot check for liveness: it could take a live owner's lock for a dead one's. A file
    /// that no process has open any more is taken over by the next process to open it, in
    /// whatever namespace (see [`process::pid_namespace`](crate::process::pid_namespace)).
    ForeignPidNamespace {
        /// The namespace recorded in the file (an inode number of `nsfs`).
        file: u64,
        /// This process's pid namespace.
        ours: u64,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Empty => f.write_str("region file is empty"),
            Error::Truncated { len, needed } => {
                write!(f, "region file is truncated: {len} bytes, needs {needed}")
            }
            Error::BadMagic => f.write_str("not an offheap region file (bad magic)"),
            Error::WrongEndianness => {
                f.write_str("region file was written on a machine of the other byte order")
            }
            Error::UnsupportedVersion { major, minor } => {
                write!(f, "unsupported region format version {major}.{minor}")
            }
            Error::UnsupportedFeatures { unknown } => {
                write!(
                    f,
                    "region file uses unknown incompatible features {unknown:#x}"
                )
            }
            Error::UnsupportedPageSize { file, os } => {
                write!(
                    f,
                    "region page size {file} cannot be mapped with OS page size {os}"
                )
            }
            Error::BadChecksum { stored, computed } => write!(
                f,
                "region header checksum mismatch (stored {stored:#018x}, computed {computed:#018x})"
            ),
            Error::OffsetOutOfBounds { offset, len, size } => write!(
                f,
                "offset {offset:#x} (+{len} bytes) is outside the region ({size} bytes)"
            ),
            Error::Corrupt { offset, what } => {
                write!(f, "region is corrupt at offset {offset:#x}: {what}")
            }
            Error::OutOfMemory {
                requested,
                max_size,
            } => write!(
                f,
                "region out of memory: {requested} bytes requested, maximum size {max_size}"
            ),
            Error::InvalidFree { offset, reason } => {
                write!(f, "invalid free of offset {offset:#x}: {reason}")
            }
            Error::NotAllocated { offset, reason } => {
                write!(f, "offset {offset:#x} is not a live allocation: {reason}")
            }
            Error::InvalidAlignment { align } => write!(
                f,
                "invalid alignment {align}: must be a power of two no larger than the page size"
            ),
            Error::InvalidRootName => {
                f.write_str("invalid root name: must be 1 to 24 bytes and contain no NUL")
            }
            Error::RootSlotsFull => f.write_str("all root slots are in use"),
            Error::InvalidOptions(what) => write!(f, "invalid region options: {what}"),
            Error::NeedsRecovery => f.write_str(
                "the region's allocator was torn by a process that died: run recover() first",
            ),
            Error::InvalidRecord(what) => write!(f, "invalid allocation record: {what}"),
            Error::ForeignPidNamespace { file, ours } => write!(
                f,
                "region file is in use by processes of another pid namespace ({file}; this \
                 process is in {ours}): their lock owners cannot be checked from here, so it \
                 opens once they have all closed it"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}
