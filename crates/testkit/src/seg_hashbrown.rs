//! hashbrown behind a directory: the floor that splitting a SwissTable into segments sets.

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use std::hash::BuildHasher;

/// `u64 -> u64` in `2^d` hashbrown tables, a key's table chosen by the `d` hash bits just
/// below hashbrown's 7-bit tag (bits `57 - d .. 57`), found as offheap-swiss finds a
/// segment: a shift by a field, a mask pre-scaled to the entry size, and the entry's words
/// (hashbrown's control pointer and bucket mask). Every probe after that is hashbrown's own.
///
/// Measured against one flat hashbrown table with the same hasher, it gives what a
/// directory step costs a SwissTable that splits into segments, whatever its probe code: a
/// lower bound for offheap-swiss's lookups against hashbrown. It is not a usable map: each
/// table grows by hashbrown's whole-table rehash, and the directory never changes. `new`
/// sizes it for about 2048 keys per table at `n` keys, which leaves the tables near a flat
/// hashbrown's load at the benchmarks' sizes (0.48 at 1M keys, 0.75 at 50M); below 4096
/// keys it is one table.
///
/// ```
/// use offheap_testkit::SegHashbrown;
/// let mut m = SegHashbrown::new(100_000, std::hash::RandomState::new());
/// m.insert(7, 70);
/// assert_eq!(m.get(7), Some(70));
/// assert_eq!(m.remove(7), Some(70));
/// assert_eq!(m.get(7), None);
/// ```
pub struct SegHashbrown<S> {
    hasher: S,
    shift: u32,
    /// `(2^d - 1) * size_of::<HashTable<_>>()`: the last entry's byte offset.
    dmask: usize,
    tables: Vec<HashTable<(u64, u64)>>,
}

impl<S: BuildHasher> SegHashbrown<S> {
    /// An empty map with `2^d` tables, `d = floor(log2(n / 2048))` (at least one table).
    pub fn new(n: usize, hasher: S) -> Self {
        let entry = size_of::<HashTable<(u64, u64)>>();
        assert!(entry.is_power_of_two());
        let d = (n / 2048).max(1).ilog2();
        SegHashbrown {
            hasher,
            // Bits `57 - d .. 57` as a byte offset: shifted right by that much less than
            // `57 - d` as the entry's size has trailing zero bits.
            shift: 57 - d - entry.trailing_zeros(),
            dmask: ((1usize << d) - 1) * entry,
            tables: (0..1usize << d).map(|_| HashTable::new()).collect(),
        }
    }

    /// Number of hashbrown tables.
    pub fn tables(&self) -> usize {
        self.tables.len()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.tables.iter().map(HashTable::len).sum()
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline(always)]
    fn offset(&self, h: u64) -> usize {
        let off = (h >> self.shift) as usize & self.dmask;
        debug_assert!(off / size_of::<HashTable<(u64, u64)>>() < self.tables.len());
        off
    }

    #[inline(always)]
    fn table(&self, h: u64) -> &HashTable<(u64, u64)> {
        let off = self.offset(h);
        // SAFETY: `off` is at most `dmask`, the offset of the last of the `2^d` entries, and a
        // multiple of the entry's size, so it is the start of an entry of `tables`.
        unsafe { &*self.tables.as_ptr().cast::<u8>().add(off).cast() }
    }

    #[inline(always)]
    fn table_mut(&mut self, h: u64) -> &mut HashTable<(u64, u64)> {
        let off = self.offset(h);
        Self::at_mut(&mut self.tables, off)
    }

    /// The table at byte offset `off` (from [`offset`](Self::offset)) of `tables`; a
    /// function of the field alone, so that `insert` can borrow the hasher beside it.
    #[inline(always)]
    fn at_mut(tables: &mut [HashTable<(u64, u64)>], off: usize) -> &mut HashTable<(u64, u64)> {
        debug_assert!(off / size_of::<HashTable<(u64, u64)>>() < tables.len());
        // SAFETY: as in `table`; the `&mut` borrow of `tables` makes this one unique.
        unsafe { &mut *tables.as_mut_ptr().cast::<u8>().add(off).cast() }
    }

    /// The value of `k`.
    #[inline(always)]
    pub fn get(&self, k: u64) -> Option<u64> {
        let h = self.hasher.hash_one(k);
        self.table(h).find(h, |e| e.0 == k).map(|e| e.1)
    }

    /// The value of `k`, mutable.
    #[inline(always)]
    pub fn get_mut(&mut self, k: u64) -> Option<&mut u64> {
        let h = self.hasher.hash_one(k);
        self.table_mut(h)
            .find_mut(h, |e| e.0 == k)
            .map(|e| &mut e.1)
    }

    /// Inserts `k -> v`; returns the old value.
    #[inline(always)]
    pub fn insert(&mut self, k: u64, v: u64) -> Option<u64> {
        let h = self.hasher.hash_one(k);
        let off = self.offset(h);
        let hasher = &self.hasher;
        match Self::at_mut(&mut self.tables, off).entry(h, |e| e.0 == k, |e| hasher.hash_one(e.0)) {
            Entry::Occupied(mut o) => Some(std::mem::replace(&mut o.get_mut().1, v)),
            Entry::Vacant(e) => {
                e.insert((k, v));
                None
            }
        }
    }

    /// Removes `k`; returns its value.
    #[inline(always)]
    pub fn remove(&mut self, k: u64) -> Option<u64> {
        let h = self.hasher.hash_one(k);
        self.table_mut(h)
            .find_entry(h, |e| e.0 == k)
            .ok()
            .map(|o| o.remove().0 .1)
    }
}

#[cfg(test)]
mod tests {
    use super::SegHashbrown;
    use std::collections::HashMap;
    use std::hash::BuildHasher;

    #[test]
    fn agrees_with_std_and_spreads_keys() {
        let mut m = SegHashbrown::new(1 << 16, std::hash::RandomState::new());
        assert_eq!(m.tables(), 32);
        let mut model = HashMap::new();
        let mut x = crate::XorShift::new(3);
        for i in 0..200_000u64 {
            let k = x.below(50_000);
            match i % 3 {
                0 | 1 => assert_eq!(m.insert(k, i), model.insert(k, i)),
                _ => assert_eq!(m.remove(k), model.remove(&k)),
            }
        }
        assert_eq!(m.len(), model.len());
        for k in 0..50_000 {
            assert_eq!(m.get(k), model.get(&k).copied());
        }
        if let Some(v) = m.get_mut(*model.keys().next().unwrap()) {
            *v += 1;
        }
        // Every table holds a share of the keys, and its keys' tags (the top 7 bits) take
        // nearly all 128 values: the index bits are not the tag's.
        let per = m.len() / m.tables();
        for t in &m.tables {
            assert!(
                t.len() > per / 2 && t.len() < per * 2,
                "{} of {per}",
                t.len()
            );
            let mut tags = [false; 128];
            for e in t {
                tags[(m.hasher.hash_one(e.0) >> 57) as usize] = true;
            }
            let seen = tags.iter().filter(|&&t| t).count();
            assert!(seen > 100, "{seen} distinct tags in a table of {}", t.len());
        }
    }
}
