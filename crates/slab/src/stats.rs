//! Statistics and the consistency report.

use std::fmt;

/// Errors reported by `&mut self` operations, by kind (the counters live in arena memory).
///
/// `TooBig` and `OutOfMemory` are counted in [`Stats::too_big_errs`] and
/// [`Stats::malloc_errs`], as go-slab does. Read-only accessors (`bytes`, `read`, `len`,
/// `refcount`, `owns`, `peek_next`) do not write arena memory, so their errors are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// [`Error::StaleHandle`](crate::Error::StaleHandle).
    pub stale_handle: u64,
    /// [`Error::ForeignHandle`](crate::Error::ForeignHandle).
    pub foreign_handle: u64,
    /// [`Error::InvalidHandle`](crate::Error::InvalidHandle).
    pub invalid_handle: u64,
    /// [`Error::Cycle`](crate::Error::Cycle).
    pub cycle: u64,
    /// [`Error::RefcountOverflow`](crate::Error::RefcountOverflow).
    pub refcount_overflow: u64,
    /// [`Error::OutOfBounds`](crate::Error::OutOfBounds).
    pub out_of_bounds: u64,
    /// [`Error::Corrupt`](crate::Error::Corrupt).
    pub corrupt: u64,
}

/// Figures of one size class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// The class's chunk size.
    pub chunk_size: usize,
    /// Chunks in each of its slabs.
    pub chunks_per_slab: usize,
    /// Slabs it holds.
    pub slabs: usize,
    /// Of those, slabs whose chunks are all free.
    pub empty_slabs: usize,
    /// Chunks in its slabs (`slabs × chunks_per_slab`).
    pub chunks: usize,
    /// Chunks free (`chunks - in_use`).
    pub free: usize,
    /// Chunks in use (refcount ≥ 1).
    pub in_use: usize,
}

/// An arena's counters (go-slab's, plus slab frees and errors by kind) and per-class figures.
///
/// Operation counters count successful calls; failed calls are counted by kind in
/// [`errors`](Stats::errors), [`too_big_errs`](Stats::too_big_errs) and
/// [`malloc_errs`](Stats::malloc_errs). The `Display` form is a table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Successful `alloc`s.
    pub allocs: u64,
    /// Successful `add_ref`s.
    pub add_refs: u64,
    /// Successful `dec_ref`s.
    pub dec_refs: u64,
    /// Chunks whose refcount reached zero (by `dec_ref`, `set_next` or a chain release).
    pub dec_ref_zeroes: u64,
    /// Successful `get_next`s.
    pub get_nexts: u64,
    /// Successful `set_next`s.
    pub set_nexts: u64,
    /// Slabs obtained from the source.
    pub mallocs: u64,
    /// Requests the source could not serve (slabs and tables).
    pub malloc_errs: u64,
    /// `alloc`s larger than the slab size.
    pub too_big_errs: u64,
    /// Slabs given back to the source.
    pub slab_frees: u64,
    /// Times the class or slab table moved to a larger block.
    pub table_grows: u64,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Slabs held now.
    pub slabs: usize,
    /// The slab size.
    pub slab_size: usize,
    /// The classes created so far, smallest first.
    pub classes: Vec<ClassStats>,
}

impl Stats {
    /// Chunks in use over all classes.
    pub fn in_use(&self) -> usize {
        self.classes.iter().map(|c| c.in_use).sum()
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>10} {:>7} {:>7} {:>9} {:>9} {:>9} {:>7}",
            "chunk size", "slabs", "empty", "chunks", "free", "in use", "per slab"
        )?;
        for c in &self.classes {
            if c.slabs == 0 && c.in_use == 0 {
                continue;
            }
            writeln!(
                f,
                "{:>10} {:>7} {:>7} {:>9} {:>9} {:>9} {:>7}",
                c.chunk_size, c.slabs, c.empty_slabs, c.chunks, c.free, c.in_use, c.chunks_per_slab
            )?;
        }
        writeln!(
            f,
            "classes created: {} (those holding no slab not shown), slabs held: {}",
            self.classes.len(),
            self.slabs
        )?;
        let rows: [(&str, u64); 11] = [
            ("allocs", self.allocs),
            ("add_refs", self.add_refs),
            ("dec_refs", self.dec_refs),
            ("dec_ref_zeroes", self.dec_ref_zeroes),
            ("get_nexts", self.get_nexts),
            ("set_nexts", self.set_nexts),
            ("mallocs", self.mallocs),
            ("malloc_errs", self.malloc_errs),
            ("too_big_errs", self.too_big_errs),
            ("slab_frees", self.slab_frees),
            ("table_grows", self.table_grows),
        ];
        for pair in rows.chunks(2) {
            for (name, v) in pair {
                write!(f, "{name:>16}: {v:<12}")?;
            }
            writeln!(f)?;
        }
        let e = &self.errors;
        write!(
            f,
            "errors: stale {}, foreign {}, invalid {}, cycle {}, overflow {}, out of bounds {}, corrupt {}",
            e.stale_handle,
            e.foreign_handle,
            e.invalid_handle,
            e.cycle,
            e.refcount_overflow,
            e.out_of_bounds,
            e.corrupt
        )
    }
}

/// What [`Arena::check`](crate::Arena::check) found in a consistent arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Slabs held.
    pub slabs: usize,
    /// Free slab slots (released slabs whose slots await reuse).
    pub free_slots: usize,
    /// Chunks in use.
    pub chunks_in_use: usize,
    /// Chunks on free lists.
    pub chunks_free: usize,
    /// Chunks never handed out in their slab (beyond the frontier).
    pub chunks_untouched: usize,
    /// Live chunks that have a next.
    pub links: usize,
    /// Bytes the arena holds from its source (header, tables, slabs).
    pub source_bytes: usize,
}

/// What [`Arena::repair`](crate::Arena::repair) found and rebuilt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Slabs held.
    pub slabs: usize,
    /// Chunks in use (refcount above zero).
    pub chunks_in_use: usize,
    /// Chunks free (handed out before, refcount zero).
    pub chunks_free: usize,
    /// Derived fields (free lists, in-use counts, partial lists, free slot list, class and
    /// header counters, statistics) that did not hold what the truth implies and were
    /// rewritten. Zero for an arena that no operation was cut short in.
    pub fixed: usize,
    /// Refcounts raised to the number of chain links to their chunk.
    pub refcounts_raised: usize,
    /// Empty slabs given back to the source beyond what the release policy keeps.
    pub slabs_released: usize,
    /// Blocks given back to the source that an operation cut short had taken and not yet
    /// named (a new slab's or table's block), or had stopped naming and not yet given back
    /// (a released slab's, a moved table's old block).
    pub blocks_given_back: usize,
}

/// What [`Arena::collect`](crate::Arena::collect) freed and corrected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CollectReport {
    /// Chunks in use afterwards (reachable from the roots).
    pub chunks_in_use: usize,
    /// Live chunks that no root reached, freed.
    pub freed: usize,
    /// Refcounts of reachable chunks set to their number of references.
    pub refcounts_fixed: usize,
}
