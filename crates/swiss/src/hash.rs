//! Hashing: a seeded hash of a key's bytes, xxh3 by default.
//!
//! # Which hash bits are used for what
//!
//! The table hashes a key's bytes to a 64-bit value `h` and uses disjoint bit ranges of it:
//!
//! | bits of `h` | use |
//! |---|---|
//! | `0..7`   | the 7-bit tag stored in the control byte ([`TAG_BITS`]) |
//! | `7..32`  | the first group probed inside a segment (`(h >> 7) & (groups - 1)`; a segment has at most 2^16 groups, so bits `7..23` in practice) |
//! | `32..40` | **never used by the table**: free for a caller, e.g. to choose a shard ([`FREE_BITS`]) |
//! | `40..64` | the directory index: the top `global_depth` bits (`global_depth <= 24`) ([`DIR_BITS`]) |
//!
//! Because the table never looks at bits `32..40`, a sharded map that picks its shard from
//! them gives every shard's table hashes that are still uniform in the bits the table uses.

use core::hash::{BuildHasher, Hasher};
use core::ops::Range;

/// Hash bits holding the tag.
pub const TAG_BITS: Range<u32> = 0..7;
/// Hash bits from which the first probed group is taken.
pub const GROUP_BITS: Range<u32> = 7..32;
/// Hash bits the table never reads (free for a caller's shard choice).
pub const FREE_BITS: Range<u32> = 32..40;
/// Hash bits the directory index is taken from (its top `global_depth` bits).
pub const DIR_BITS: Range<u32> = 40..64;

/// A seeded hash function over a key's bytes.
///
/// The seed is stored with the table (in its header), so a table reopened from a file hashes
/// exactly as it did when written. [`ID`](SeededHash::ID) is stored too, and a table written
/// with one hash function refuses to open with another.
pub trait SeededHash {
    /// A number that identifies this function (and its version) in a table's header.
    const ID: u64;
    /// Hashes `bytes` with `seed`. Must be a pure function of its arguments.
    fn hash(bytes: &[u8], seed: u64) -> u64;
}

/// xxh3-64 (from `xxhash-rust`), the default hash.
#[derive(Clone, Copy, Debug, Default)]
pub struct Xxh3;

impl SeededHash for Xxh3 {
    const ID: u64 = u64::from_le_bytes(*b"xxh3-64\x01");
    #[inline(always)]
    fn hash(bytes: &[u8], seed: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(bytes, seed)
    }
}

/// A fresh random seed (from std's per-process random keys, a counter and the clock).
pub fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

/// A [`BuildHasher`] for std-style maps that hashes exactly as this crate's [`Xxh3`] does:
/// one `write` of a key's bytes gives `xxh3_64_with_seed(bytes, seed)`.
///
/// Use it to compare this table with `hashbrown`/`std` under the same hash function, or for a
/// std map that must agree with a table's hashes.
///
/// ```
/// use core::hash::BuildHasher;
/// use offheap_swiss::{SeededHash, Xxh3, Xxh3BuildHasher};
/// let b = Xxh3BuildHasher::with_seed(7);
/// assert_eq!(b.hash_one(42u64), Xxh3::hash(&42u64.to_ne_bytes(), 7));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Xxh3BuildHasher {
    seed: u64,
}

impl Xxh3BuildHasher {
    /// A builder whose hashers use `seed`.
    pub const fn with_seed(seed: u64) -> Xxh3BuildHasher {
        Xxh3BuildHasher { seed }
    }
}

impl BuildHasher for Xxh3BuildHasher {
    type Hasher = Xxh3Hasher;
    #[inline(always)]
    fn build_hasher(&self) -> Xxh3Hasher {
        Xxh3Hasher {
            seed: self.seed,
            h: None,
        }
    }
}

/// The [`Hasher`] of [`Xxh3BuildHasher`]: the first `write` is one xxh3 call; later writes
/// chain by reseeding with the previous result.
#[derive(Clone, Copy, Debug)]
pub struct Xxh3Hasher {
    seed: u64,
    h: Option<u64>,
}

impl Hasher for Xxh3Hasher {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) {
        let seed = match self.h {
            None => self.seed,
            Some(h) => h ^ self.seed,
        };
        self.h = Some(Xxh3::hash(bytes, seed));
    }
    #[inline(always)]
    fn write_u64(&mut self, v: u64) {
        self.write(&v.to_ne_bytes());
    }
    #[inline(always)]
    fn finish(&self) -> u64 {
        match self.h {
            Some(h) => h,
            None => Xxh3::hash(&[], self.seed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_ranges_are_disjoint_and_cover_64() {
        let all = [TAG_BITS, GROUP_BITS, FREE_BITS, DIR_BITS];
        let mut next = 0;
        for r in all {
            assert_eq!(r.start, next);
            next = r.end;
        }
        assert_eq!(next, 64);
    }

    #[test]
    fn build_hasher_agrees_with_xxh3() {
        let b = Xxh3BuildHasher::with_seed(99);
        for k in [0u64, 1, u64::MAX, 0xDEAD_BEEF] {
            assert_eq!(b.hash_one(k), Xxh3::hash(&k.to_ne_bytes(), 99));
        }
        assert_ne!(random_seed(), random_seed());
    }
}
