//! [`Offset`]: a link stored inside a region.

use core::num::NonZeroU64;

/// An offset from a region's base address; never 0 (the header lives at offset 0).
///
/// Everything stored inside a region links to other parts of it by `Offset`, never by
/// address, so the region can be mapped at another address (another process, a reopen)
/// and every link stays valid. Resolve an offset with [`Region::ptr`](crate::Region::ptr),
/// which checks bounds. `Option<Offset>` is 8 bytes, with `None` stored as 0.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Offset(NonZeroU64);

impl Offset {
    /// Makes an offset; `None` for 0.
    ///
    /// ```
    /// use offheap_mmap::Offset;
    /// assert_eq!(Offset::new(0), None);
    /// assert_eq!(Offset::new(4096).unwrap().get(), 4096);
    /// ```
    #[inline]
    pub const fn new(v: u64) -> Option<Offset> {
        match NonZeroU64::new(v) {
            Some(n) => Some(Offset(n)),
            None => None,
        }
    }

    /// The offset in bytes from the region's base.
    #[inline]
    pub const fn get(self) -> u64 {
        self.0.get()
    }

    /// Encodes `Option<Offset>` as the `u64` stored in a region (0 for `None`).
    #[inline]
    pub const fn to_raw(off: Option<Offset>) -> u64 {
        match off {
            Some(o) => o.get(),
            None => 0,
        }
    }
}

impl From<Offset> for u64 {
    #[inline]
    fn from(o: Offset) -> u64 {
        o.get()
    }
}
