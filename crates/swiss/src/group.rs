//! Control bytes and 16-wide groups.
//!
//! A control byte is `EMPTY` (`0xFF`), `DELETED` (`0x80`) or `FULL(tag)` (`0x00..=0x7F`, the
//! tag being 7 bits of the hash). A group is 16 consecutive control bytes starting at a multiple
//! of 16. Two implementations match a group: SSE2 on x86_64 and a portable SWAR one; both return
//! the same 16-bit mask (bit `i` = byte `i`), so the probe sequence and the layout never depend
//! on the CPU.

/// Number of control bytes (and slots) in a group.
pub(crate) const GROUP_WIDTH: usize = 16;
/// Control byte of a slot that never held an entry since the segment was built.
pub(crate) const EMPTY: u8 = 0xFF;
/// Control byte of a tombstone: a slot whose entry was removed from a group that had been full.
pub(crate) const DELETED: u8 = 0x80;

/// Whether a control byte marks a full slot.
#[inline(always)]
pub(crate) fn is_full(ctrl: u8) -> bool {
    ctrl & 0x80 == 0
}

/// A set of slot indices in a group, bit `i` standing for slot `i`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct BitMask(pub(crate) u16);

impl BitMask {
    /// Whether any bit is set.
    #[inline(always)]
    pub(crate) fn any(self) -> bool {
        self.0 != 0
    }

    /// The lowest set bit, if any.
    #[inline(always)]
    pub(crate) fn lowest(self) -> Option<usize> {
        if self.0 == 0 {
            None
        } else {
            Some(self.0.trailing_zeros() as usize)
        }
    }

    /// The set without its lowest bit.
    #[inline(always)]
    pub(crate) fn without_lowest(self) -> BitMask {
        BitMask(self.0 & self.0.wrapping_sub(1))
    }
}

impl Iterator for BitMask {
    type Item = usize;
    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let i = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(i)
    }
}

/// Portable SWAR matcher: a group is two little-endian `u64` words.
#[cfg_attr(
    all(target_arch = "x86_64", not(miri), not(swiss_portable), not(test)),
    allow(dead_code)
)]
pub(crate) mod portable {
    use super::BitMask;

    const LSB: u64 = 0x0101_0101_0101_0101;
    const MSB: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;

    /// High bit of each byte set exactly where the byte of `x` is zero (no false positives:
    /// the low seven bits are added without carrying across bytes).
    #[inline(always)]
    fn zero_bytes(x: u64) -> u64 {
        !(((x & LOW7).wrapping_add(LOW7)) | x) & MSB
    }

    /// Packs the high bit of each byte (byte `i` at bit `8i+7`) into bit `i` of a byte.
    #[inline(always)]
    fn compress(m: u64) -> u16 {
        // (m >> 7) has bit 8i for byte i; multiplying by sum(2^(56-7i)) moves it to bit 56+i,
        // and every cross term lands below bit 56 at a distinct position or above bit 63.
        ((m >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u16
    }

    /// Sixteen control bytes.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Group {
        lo: u64,
        hi: u64,
    }

    impl Group {
        /// Loads a group.
        ///
        /// # Safety
        /// `ptr` must be valid for reading 16 bytes (no alignment needed).
        #[inline(always)]
        pub(crate) unsafe fn load(ptr: *const u8) -> Group {
            // SAFETY: the caller guarantees 16 readable bytes; `[u8; 16]` has alignment 1.
            let b = unsafe { ptr.cast::<[u8; 16]>().read() };
            Group::from_bytes(b)
        }

        /// A group from its bytes.
        #[inline(always)]
        pub(crate) fn from_bytes(b: [u8; 16]) -> Group {
            let mut lo = [0u8; 8];
            let mut hi = [0u8; 8];
            lo.copy_from_slice(&b[..8]);
            hi.copy_from_slice(&b[8..]);
            Group {
                lo: u64::from_le_bytes(lo),
                hi: u64::from_le_bytes(hi),
            }
        }

        #[inline(always)]
        fn mask(self, f: impl Fn(u64) -> u64) -> BitMask {
            BitMask(compress(f(self.lo)) | (compress(f(self.hi)) << 8))
        }

        /// Slots whose control byte is `FULL(tag)`.
        #[inline(always)]
        pub(crate) fn match_tag(self, tag: u8) -> BitMask {
            let t = LSB.wrapping_mul(tag as u64);
            self.mask(|w| zero_bytes(w ^ t))
        }

        /// Slots that are `EMPTY`.
        #[inline(always)]
        pub(crate) fn match_empty(self) -> BitMask {
            self.mask(|w| zero_bytes(!w))
        }

        /// Slots that are `EMPTY` or `DELETED`.
        #[inline(always)]
        pub(crate) fn match_empty_or_deleted(self) -> BitMask {
            self.mask(|w| w & MSB)
        }

        /// Slots that are full.
        #[inline(always)]
        pub(crate) fn match_full(self) -> BitMask {
            self.mask(|w| !w & MSB)
        }
    }
}

/// SSE2 matcher (x86_64 baseline): the same masks as [`portable`], computed with one compare.
#[cfg(target_arch = "x86_64")]
#[cfg_attr(any(miri, swiss_portable), allow(dead_code))]
pub(crate) mod sse2 {
    use super::BitMask;
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_load_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };

    /// Sixteen control bytes in an SSE register.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Group(__m128i);

    impl Group {
        /// Loads a group.
        ///
        /// # Safety
        /// `ptr` must be valid for reading 16 bytes and aligned to 16.
        #[inline(always)]
        pub(crate) unsafe fn load(ptr: *const u8) -> Group {
            // SAFETY: the caller guarantees 16 readable bytes aligned to 16; SSE2 is part of
            // the x86_64 baseline.
            Group(unsafe { _mm_load_si128(ptr.cast::<__m128i>()) })
        }

        /// A group from its bytes.
        #[cfg(test)]
        #[inline(always)]
        pub(crate) fn from_bytes(b: [u8; 16]) -> Group {
            // SAFETY: `b` is 16 readable bytes; the unaligned load has no alignment need.
            Group(unsafe { core::arch::x86_64::_mm_loadu_si128(b.as_ptr().cast::<__m128i>()) })
        }

        /// Slots whose control byte is `FULL(tag)`.
        #[inline(always)]
        pub(crate) fn match_tag(self, tag: u8) -> BitMask {
            // The broadcast is the byte splat `_mm_set1_epi8` becomes (`movd`, `punpcklbw`,
            // `pshuflw`, `pshufd`): one instruction more than a 32-bit multiply by 0x01010101
            // and a 32-bit splat, but the tag is ready sooner (a multiply takes three cycles),
            // and 1K-key lookups, which keep many probes in flight, ran about 4 % faster.
            self.match_byte(tag)
        }

        /// Slots whose control byte is `b`.
        #[inline(always)]
        fn match_byte(self, b: u8) -> BitMask {
            // SAFETY: SSE2 is part of the x86_64 baseline; register-only operations.
            BitMask(
                unsafe { _mm_movemask_epi8(_mm_cmpeq_epi8(self.0, _mm_set1_epi8(b as i8))) } as u16,
            )
        }

        /// Slots that are `EMPTY`.
        #[inline(always)]
        pub(crate) fn match_empty(self) -> BitMask {
            self.match_byte(super::EMPTY)
        }

        /// Slots that are `EMPTY` or `DELETED` (high bit set).
        #[inline(always)]
        pub(crate) fn match_empty_or_deleted(self) -> BitMask {
            // SAFETY: SSE2 is part of the x86_64 baseline; a register-only operation.
            BitMask(unsafe { _mm_movemask_epi8(self.0) } as u16)
        }

        /// Slots that are full (high bit clear).
        #[inline(always)]
        pub(crate) fn match_full(self) -> BitMask {
            // SAFETY: SSE2 is part of the x86_64 baseline; a register-only operation.
            BitMask(!(unsafe { _mm_movemask_epi8(self.0) } as u16))
        }
    }
}

#[cfg(all(target_arch = "x86_64", not(miri), not(swiss_portable)))]
pub(crate) use sse2::Group;

#[cfg(not(all(target_arch = "x86_64", not(miri), not(swiss_portable))))]
pub(crate) use portable::Group;

/// Which matcher this build uses: `"sse2"` or `"portable"`.
pub const MATCHER: &str = if cfg!(all(target_arch = "x86_64", not(miri), not(swiss_portable))) {
    "sse2"
} else {
    "portable"
};

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(b: &[u8; 16], f: impl Fn(u8) -> bool) -> u16 {
        let mut m = 0u16;
        for (i, &c) in b.iter().enumerate() {
            if f(c) {
                m |= 1 << i;
            }
        }
        m
    }

    /// xorshift, so the test needs no dependency and runs under miri.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn random_group(s: &mut u64) -> [u8; 16] {
        let mut b = [0u8; 16];
        for c in b.iter_mut() {
            let r = rng(s);
            *c = match r % 4 {
                0 => EMPTY,
                1 => DELETED,
                _ => (r >> 8) as u8 & 0x7F,
            };
            // Occasionally any byte at all (a corrupt file still must not confuse the matcher).
            if r % 17 == 0 {
                *c = (r >> 16) as u8;
            }
        }
        b
    }

    #[test]
    fn portable_matches_reference() {
        let mut s = 0x9E37_79B9_7F4A_7C15;
        let n = if cfg!(miri) { 200 } else { 20_000 };
        for _ in 0..n {
            let b = random_group(&mut s);
            let g = portable::Group::from_bytes(b);
            let tag = (rng(&mut s) & 0x7F) as u8;
            assert_eq!(g.match_tag(tag).0, reference(&b, |c| c == tag));
            assert_eq!(g.match_empty().0, reference(&b, |c| c == EMPTY));
            assert_eq!(
                g.match_empty_or_deleted().0,
                reference(&b, |c| c & 0x80 != 0)
            );
            assert_eq!(g.match_full().0, reference(&b, |c| c & 0x80 == 0));
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sse2_and_portable_agree() {
        let mut s = 0x2545_F491_4F6C_DD1D;
        let n = if cfg!(miri) { 200 } else { 20_000 };
        for _ in 0..n {
            let b = random_group(&mut s);
            let p = portable::Group::from_bytes(b);
            let x = sse2::Group::from_bytes(b);
            for tag in [b[0] & 0x7F, b[15] & 0x7F, (rng(&mut s) & 0x7F) as u8] {
                assert_eq!(p.match_tag(tag), x.match_tag(tag));
            }
            assert_eq!(p.match_empty(), x.match_empty());
            assert_eq!(p.match_empty_or_deleted(), x.match_empty_or_deleted());
            assert_eq!(p.match_full(), x.match_full());
            // Aligned loads from memory give the same groups.
            #[repr(align(16))]
            struct A([u8; 16]);
            let a = A(b);
            // SAFETY: `a` is 16 bytes aligned to 16.
            let (pl, xl) = unsafe {
                (
                    portable::Group::load(a.0.as_ptr()),
                    sse2::Group::load(a.0.as_ptr()),
                )
            };
            assert_eq!(pl.match_full(), xl.match_full());
        }
    }

    #[test]
    fn bitmask_iterates_in_order() {
        let v: Vec<usize> = BitMask(0b1000_0000_0010_0101).collect();
        assert_eq!(v, vec![0, 2, 5, 15]);
        assert_eq!(BitMask(0).lowest(), None);
        assert_eq!(BitMask(0b100).lowest(), Some(2));
    }
}
