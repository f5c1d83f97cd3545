//! [`Map<K, V>`]: a typed, persistent map in one region.

use std::path::Path;

use offheap_mmap::{Region, RegionOptions};
use offheap_swiss::{Pod, SwissTable};

use crate::Error;

/// The root name under which a [`Map`] stores its table.
const ROOT: &str = "offheap.map";

/// A hash map of plain-old-data keys and values in anonymous memory or in a memory-mapped
/// file, for one process.
///
/// The whole state (directory, segments, length, hash seed) lives in the region, so
/// [`Map::open`] is `mmap` plus validation of the header and the segment directory: no
/// entry is read or rehashed. Data reaches the file as it is written (a shared mapping);
/// [`Map::flush`] makes it durable (`msync`).
///
/// ```
/// # #[cfg(not(miri))] {
/// use offheap::Map;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("squares.map");
/// {
///     let mut m: Map<u32, u64> = Map::create(&path)?;
///     for i in 0..1000u32 {
///         m.insert(i, u64::from(i) * u64::from(i))?;
///     }
///     m.flush()?;
/// }
/// let m: Map<u32, u64> = Map::open(&path)?;
/// assert_eq!(m.get(&12), Some(144));
/// assert_eq!(m.len(), 1000);
/// # }
/// # Ok::<(), offheap::Error>(())
/// ```
pub struct Map<K, V> {
    table: SwissTable<K, V, Region>,
}

fn region_options() -> RegionOptions {
    offheap_swiss::default_region_options()
}

impl<K: Pod, V: Pod> Map<K, V> {
    /// An empty map in anonymous memory (gone when dropped).
    pub fn anonymous() -> Result<Self, Error> {
        let region = Region::anonymous_with(&region_options())?;
        Ok(Map {
            table: SwissTable::create_in(region, ROOT)?,
        })
    }

    /// Creates a map file at `path` (an error if the file exists).
    pub fn create(path: impl AsRef<Path>) -> Result<Self, Error> {
        let region = Region::create(path, &region_options())?;
        Ok(Map {
            table: SwissTable::create_in(region, ROOT)?,
        })
    }

    /// Opens the map file at `path`, validating it; keys and values must have the types
    /// (sizes and alignments) they were created with ([`offheap_swiss::Error::TypeMismatch`]).
    ///
    /// A file that nobody else has open opens even if its record says that a process has
    /// it open (a copy of a file in use, taken while that process lived): the map is
    /// repaired as after that process's death (see `offheap_swiss::SwissTable::take_over_in`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let region = Region::open_with(path, &RegionOptions::new().hold_alone(true))?;
        Self::open_in(region)
    }

    /// Opens the map at `path`, or creates it if the file does not exist.
    pub fn open_or_create(path: impl AsRef<Path>) -> Result<Self, Error> {
        let region = Region::open_or_create(path, &region_options().hold_alone(true))?;
        if region.root(ROOT).is_some() {
            Self::open_in(region)
        } else {
            // Lets others' opens in, if this open found the file alone and held it so.
            drop(region.try_alone());
            Ok(Map {
                table: SwissTable::create_in(region, ROOT)?,
            })
        }
    }

    /// Opens the map in `region`, which this handle has just opened: if nobody else has
    /// the file open, the table is taken over from whoever its record names, since that
    /// process does not use it.
    fn open_in(region: Region) -> Result<Self, Error> {
        if region.root(ROOT).is_none() {
            return Err(Error::NotFound);
        }
        let table = crate::region::open_fresh(region, |region, take_over| {
            if take_over {
                SwissTable::take_over_in(region, ROOT)
            } else {
                SwissTable::open_in(region, ROOT)
            }
        })?;
        Ok(Map { table })
    }

    /// Writes every change to the backing file (`msync`); a no-op for anonymous maps.
    pub fn flush(&self) -> Result<(), Error> {
        Ok(self.table.memory().flush()?)
    }

    /// Inserts or replaces; returns the old value. Fails only if the region cannot grow.
    pub fn insert(&mut self, key: K, value: V) -> Result<Option<V>, Error> {
        Ok(self.table.try_insert(key, value)?)
    }

    /// A copy of the value for `key`.
    #[inline]
    pub fn get(&self, key: &K) -> Option<V> {
        self.table.get(key).copied()
    }

    /// A reference to the value for `key`.
    #[inline]
    pub fn get_ref(&self, key: &K) -> Option<&V> {
        self.table.get(key)
    }

    /// A mutable reference to the value for `key`.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.table.get_mut(key)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> bool {
        self.table.contains_key(key)
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.table.remove(key)
    }

    /// Checks every entry against the table's structure (`SwissTable::check`), then the
    /// region's blocks (`offheap_mmap::Region::check`); returns the first inconsistency.
    /// O(capacity + blocks): for a file from an untrusted source, before using it.
    ///
    /// ```
    /// let mut m = offheap::Map::<u64, u64>::anonymous()?;
    /// m.insert(1, 10)?;
    /// m.check()?;
    /// # Ok::<(), offheap::Error>(())
    /// ```
    pub fn check(&self) -> Result<(), Error> {
        self.table.check()?;
        self.table.memory().check()?;
        Ok(())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// `true` if the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.table.clear()
    }

    /// Keeps only the entries for which `f` returns `true`.
    pub fn retain(&mut self, f: impl FnMut(&K, &mut V) -> bool) {
        self.table.retain(f)
    }

    /// Iterates over all entries, in no particular order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&K, &V)> + '_ {
        self.table.iter()
    }

    /// The underlying table (for its full std-shaped API: `entry`, `get_many`, `stats`, ...).
    pub fn table(&self) -> &SwissTable<K, V, Region> {
        &self.table
    }

    /// The underlying table, mutably.
    pub fn table_mut(&mut self) -> &mut SwissTable<K, V, Region> {
        &mut self.table
    }

    /// The region holding the map.
    pub fn region(&self) -> &Region {
        self.table.memory()
    }
}

impl<K: Pod + std::fmt::Debug, V: Pod + std::fmt::Debug> std::fmt::Debug for Map<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.table.iter()).finish()
    }
}

impl<K: Pod, V: Pod> Extend<(K, V)> for Map<K, V> {
    /// Inserts every pair; panics only if the region cannot grow (as std aborts on OOM).
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        self.table.extend(iter)
    }
}
