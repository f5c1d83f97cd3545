//! Memory regions for data that lives outside the Rust heap: anonymous memory or a
//! memory-mapped file that outlives the process and can be shared between processes.
//!
//! A [`Region`] is a header page (magic, version, sizes, a checksum, named root slots)
//! followed by blocks managed by an allocator whose whole state lives in the region, so
//! reopening a file is: validate the header, map, done. Everything stored in a region
//! links by [`Offset`], never by address. The region grows in place: its base address
//! never moves while it is open, and another process sharing the file extends its own
//! view when it meets an offset beyond it.
//!
//! ```
//! use offheap_mmap::{Region, RegionOptions};
//! # fn main() -> Result<(), offheap_mmap::Error> {
//! # let dir = std::env::temp_dir().join(format!("offheap-mmap-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("data.region");
//! # if cfg!(miri) { return Ok(()); }
//! {
//!     let region = Region::create(&path, &RegionOptions::new())?;
//!     let off = region.alloc(5, 1)?;
//!     // SAFETY: `off` is a live allocation of 5 bytes.
//!     unsafe { region.ptr(off, 5)?.as_ptr().copy_from(b"hello".as_ptr(), 5) };
//!     region.set_root("greeting", Some(off))?;
//!     region.flush()?;
//! }
//! let region = Region::open(&path)?;
//! let off = region.root("greeting").unwrap();
//! // SAFETY: the 5 bytes at `off` were written above.
//! let bytes = unsafe { std::slice::from_raw_parts(region.ptr(off, 5)?.as_ptr(), 5) };
//! assert_eq!(bytes, b"hello");
//! region.check()?;
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! ```
//!
//! See `docs/mmap.md` for the design and `docs/file-format.md` for the byte layout.

mod error;
mod layout;
mod offset;
mod os;
pub mod process;
mod region;
#[cfg(feature = "slab")]
pub mod slab_source;
mod sync;

pub use error::Error;
pub use layout::{ROOT_NAME_LEN, ROOT_SLOTS};
pub use offset::Offset;
pub use region::{Alone, CheckReport, RecoverReport, Region, RegionOptions, RegionStats};

/// Helpers for the fuzz target (not part of the stable API).
#[doc(hidden)]
pub mod __fuzz {
    /// Recomputes the header checksum of a region file image in place (no-op if short).
    pub fn reseal(image: &mut [u8]) {
        if image.len() >= crate::layout::HEADER_LEN as usize {
            let sum = crate::layout::checksum(image);
            crate::layout::wr_u64(image, crate::layout::F_CHECKSUM, sum);
        }
    }

    /// Makes a region file image the same wherever and whenever it was made: its creation
    /// stamp (time and pid) becomes 1, its pid namespace record 0 (unknown: any process
    /// opens it), and the header is resealed. A fuzz target whose seed image differed
    /// from run to run made crashes that did not reproduce.
    pub fn normalize(image: &mut [u8]) {
        if image.len() >= crate::layout::HEADER_LEN as usize {
            crate::layout::wr_u64(image, crate::layout::F_CREATED, 1);
            crate::layout::wr_u64(image, crate::layout::F_PID_NS, 0);
            reseal(image);
        }
    }
}
