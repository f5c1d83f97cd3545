//! Hashing: a seeded hash of a key's bytes, xxh3 by default.
//!
//! # Which hash bits are used for what
//!
//! The table hashes a key's bytes to a 64-bit value `h` and uses disjoint bit ranges of it:
//!
//! | bits of `h` | use |
//! |---|---|
//! | `0..20`  | the byte position of the first group probed inside a segment, `h & pmask` with `pmask = (groups - 1) * 16`: the group is bits `4..20` (a segment has at most 2^16 groups), bits `0..4` are masked off; in a table of 256 MiB and more, bits `2..4` choose the key's preferred quarter of its group, where an insert puts it when the quarter has room and whose slots a lookup prefetches ([`GROUP_BITS`]) |
//! | `20..33` | **never used by the table**: free for a caller, e.g. to choose a shard ([`FREE_BITS`]) |
//! | `33..57` | the directory index: the top `global_depth` bits of this range (`global_depth <= 24`) ([`DIR_BITS`]) |
//! | `57..64` | the 7-bit tag stored in the control byte ([`TAG_BITS`]) |
//!
//! Each use takes its bits with one instruction or two (`h & pmask`, `h >> 57`, a shift and
//! a mask for the directory). The tag's top bits are also the ones xxh3's last step
//! (`h ^ (h >> 28)`) leaves as they are, so a lookup can have its tag before the hash is
//! done. Because the table never looks at bits `20..33`, a sharded map that picks its shard
//! from them gives every shard's table hashes that are still uniform in the bits it uses.

use core::hash::{BuildHasher, Hasher};
use core::ops::Range;

/// Hash bits holding the tag: the top 7.
pub const TAG_BITS: Range<u32> = 57..64;
/// Hash bits from which the first probed group's byte position is taken (the group index is
/// bits `4..20`; in a large table, bits `2..4` choose the key's preferred quarter of the
/// group).
pub const GROUP_BITS: Range<u32> = 0..20;
/// Hash bits the table never reads (free for a caller's shard choice).
pub const FREE_BITS: Range<u32> = 20..33;
/// Hash bits the directory index is taken from (its top `global_depth` bits).
pub const DIR_BITS: Range<u32> = 33..57;

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

    /// Work on the seed that can be done once per table rather than once per hash: the table
    /// calls this when it is made or opened and passes the result to every
    /// [`hash_prepared`](SeededHash::hash_prepared). The default does nothing.
    #[inline(always)]
    fn prepare(seed: u64) -> u64 {
        seed
    }

    /// Hashes `bytes` given `seed` and `prepared == Self::prepare(seed)`; must return exactly
    /// [`hash(bytes, seed)`](SeededHash::hash). The default calls `hash`.
    #[inline(always)]
    fn hash_prepared(bytes: &[u8], seed: u64, prepared: u64) -> u64 {
        let _ = prepared;
        Self::hash(bytes, seed)
    }
}

/// `read64le(secret, 8) ^ read64le(secret, 16)` of xxh3's default secret: the constant from
/// which the 4-to-8-byte path derives its per-seed mask (checked against `xxhash-rust` by the
/// tests).
const XXH3_FLIP_4TO8: u64 = 0xC73A_B174_C5EC_D5A2;

/// xxh3-64 (from `xxhash-rust`), the default hash.
#[derive(Clone, Copy, Debug, Default)]
pub struct Xxh3;

impl SeededHash for Xxh3 {
    const ID: u64 = u64::from_le_bytes(*b"xxh3-64\x01");
    #[inline(always)]
    fn hash(bytes: &[u8], seed: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(bytes, seed)
    }

    /// The mask xxh3 applies to inputs of 4 to 8 bytes (a function of the seed only).
    #[inline(always)]
    fn prepare(seed: u64) -> u64 {
        XXH3_FLIP_4TO8.wrapping_sub(seed ^ (u64::from((seed as u32).swap_bytes()) << 32))
    }

    /// xxh3's 4-to-8-byte path with the seed's mask precomputed (five instructions fewer per
    /// hash of a `u64` key than `xxh3_64_with_seed`, which derives it every time); other
    /// lengths call `xxh3_64_with_seed`. The length is a constant for a table's key type, so
    /// the branch folds away.
    #[inline(always)]
    fn hash_prepared(bytes: &[u8], seed: u64, prepared: u64) -> u64 {
        let n = bytes.len();
        if !(4..=8).contains(&n) {
            return Self::hash(bytes, seed);
        }
        let input = if n == 8 {
            // The two halves swapped: one load and a rotate.
            let mut w = [0u8; 8];
            w.copy_from_slice(bytes);
            u64::from_le_bytes(w).rotate_left(32)
        } else {
            let word = |at: usize| {
                let mut w = [0u8; 4];
                w.copy_from_slice(&bytes[at..at + 4]);
                u64::from(u32::from_le_bytes(w))
            };
            word(n - 4).wrapping_add(word(0) << 32)
        };
        // xxh3's strong avalanche (rrmxmx).
        let mut h = input ^ prepared;
        h ^= h.rotate_left(49) ^ h.rotate_left(24);
        h = h.wrapping_mul(0x9FB2_1C65_1E98_DF25);
        h ^= (h >> 35).wrapping_add(n as u64);
        h = h.wrapping_mul(0x9FB2_1C65_1E98_DF25);
        h ^ (h >> 28)
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
        let all = [GROUP_BITS, FREE_BITS, DIR_BITS, TAG_BITS];
        let mut next = 0;
        for r in all {
            assert_eq!(r.start, next);
            next = r.end;
        }
        assert_eq!(next, 64);
    }

    #[test]
    fn prepared_hash_is_xxh3() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let n = if cfg!(miri) { 50 } else { 20_000 };
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let seed = if i % 7 == 0 {
                i as u64
            } else {
                x.rotate_left(17)
            };
            let p = Xxh3::prepare(seed);
            let bytes = x.to_le_bytes();
            for len in 0..=8 {
                let b = &bytes[..len];
                assert_eq!(
                    Xxh3::hash_prepared(b, seed, p),
                    xxhash_rust::xxh3::xxh3_64_with_seed(b, seed),
                    "len {len} seed {seed:#x}"
                );
            }
            let long = [x as u8; 40];
            for len in [9, 16, 17, 40] {
                assert_eq!(
                    Xxh3::hash_prepared(&long[..len], seed, p),
                    Xxh3::hash(&long[..len], seed)
                );
            }
        }
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
