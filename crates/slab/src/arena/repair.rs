//! `Arena::repair` and `Arena::collect`: rebuilding an arena's derived state from its truth
//! after a process was killed inside an operation, and freeing what nothing references.
//!
//! The **truth** is what the operations write in crash order (see `claim`, `release`,
//! `set_next_inner`, `add_slab`, `release_slab`, `grow_table`, `create_classes`): the
//! header's table offsets and lengths, each slab slot's block, class, frontier and
//! generations, and each chunk's refcount, generation, length and next link below its slab's
//! frontier. Everything else is **derived** and rebuilt here by one walk: per-slab free lists
//! and in-use counts, the classes' partial lists and counters, the free slot list, the
//! header's totals, and the statistics that must agree with them.

use super::*;

/// What the first pass learnt about a live slab.
struct SlabInfo {
    meta: *mut Meta,
    cps: u32,
    frontier: u32,
    class: u32,
    stride: usize,
    /// Index of its chunk 0 in the arena-wide chunk numbering.
    base_id: usize,
}

/// `fix!(place, value, counter)`: stores `value` into the place if it holds something else,
/// counting the fix (a sound arena is not written).
macro_rules! fix {
    ($place:expr, $v:expr, $n:expr) => {{
        let v = $v;
        if $place != v {
            st!($place, v);
            $n += 1;
        }
    }};
}

impl<S: SlabSource> Arena<S> {
    /// Rebuilds every derived field of the arena from its truth, after a process (or thread)
    /// was killed inside an arena operation and left the arena torn; other processes sharing
    /// the memory drop their cached resolutions (the structure epoch moves on).
    ///
    /// The operations write in an order such that the truth (slab slots' blocks, classes,
    /// frontiers and generations; chunks' refcounts, generations, lengths and links) is
    /// consistent at every instruction boundary: a chunk whose allocation or free was cut
    /// short is either free or allocated with a refcount no handle accounts for (a leak that
    /// [`collect`](Arena::collect) frees); a slab or table block being allocated or freed may
    /// leak in the source. Free lists, in-use counts, partial lists, the free slot list, class
    /// and header counters and the statistics that [`check`](Arena::check) compares are then
    /// rewritten, and so are refcounts lower than the number of links to their chunk
    /// (raised), and empty slabs beyond what the release policy keeps (given back). Afterwards
    /// `check` passes and every live chunk holds its bytes. Run it with the arena's memory
    /// exclusively held (the higher layer's lock).
    ///
    /// O(slabs × chunks per slab) time, O(chunks) memory. An arena that passes
    /// [`check`](Arena::check) (no operation was cut short in it, or none at a point that
    /// matters) is left as it is but for the epoch (`fixed == 0`); so a second repair changes
    /// nothing.
    ///
    /// Errors: [`Error::Corrupt`] when the truth itself does not check out (a slab of a class
    /// not created, a block outside the source, a frontier beyond its slab, a live chunk's
    /// length beyond its chunk size, a link to a chunk that is not live); nothing a cut-short
    /// operation leaves does that. Only derived fields may have been rewritten then.
    pub fn repair(&mut self) -> Result<RepairReport, Error> {
        // The epoch first: whatever happens next, no cache of this memory survives.
        self.restructure();
        // The blocks an operation cut short was taking or giving back (the truth is whole
        // either way: nothing names a block before its commit, or after its release's).
        let blocks_given_back = self.settle_pending()?;
        // A consistent arena (the kill came between operations, or inside one at a point
        // that leaves nothing derived out of step) is left as it is.
        if let Ok(c) = self.check() {
            return Ok(RepairReport {
                slabs: c.slabs,
                chunks_in_use: c.chunks_in_use,
                chunks_free: c.chunks_free,
                blocks_given_back,
                ..RepairReport::default()
            });
        }
        let mut rep = RepairReport {
            blocks_given_back,
            ..RepairReport::default()
        };
        let (ctab, ccount) = self.class_table()?;
        for cl in 0..ccount as usize {
            // SAFETY: `cl < class_count <= class_cap`, validated by `class_table`.
            if unsafe { (*ctab.add(cl)).chunk_size } != self.classes[cl].chunk_size {
                return Err(corrupt("class chunk size disagrees with the parameters"));
            }
        }
        let (tab, slen) = self.slab_table()?;

        // Pass 1: the live slabs, validated.
        let mut slabs: Vec<Option<SlabInfo>> = Vec::with_capacity(slen as usize);
        let mut ids = 0usize;
        for s in 0..slen as usize {
            // SAFETY: `s < slab_len <= slab_cap`, validated by `slab_table`.
            let (block, class, frontier) = unsafe {
                (
                    (*tab.add(s)).block,
                    (*tab.add(s)).class,
                    (*tab.add(s)).frontier,
                )
            };
            if block == 0 {
                slabs.push(None);
                continue;
            }
            if class >= ccount {
                return Err(corrupt("slab of a class not created"));
            }
            let ci = self.classes[class as usize];
            let base = self.block_base(block, &ci)?;
            if frontier > ci.cps {
                return Err(corrupt("slab frontier beyond its chunks"));
            }
            slabs.push(Some(SlabInfo {
                meta: base as *mut Meta,
                cps: ci.cps,
                frontier,
                class,
                stride: ci.stride,
                base_id: ids,
            }));
            ids += frontier as usize;
        }

        // Pass 2: live chunks' lengths and links, and the links to each chunk.
        let mut indegree = vec![0u32; ids];
        for v in slabs.iter().flatten() {
            for c in 0..v.frontier as usize {
                // SAFETY: `c < frontier <= cps`: inside the slab's metadata array.
                let m = unsafe { &*v.meta.add(c) };
                if m.refcount == 0 {
                    continue;
                }
                if m.len as usize > v.stride {
                    return Err(corrupt("chunk length beyond its chunk size"));
                }
                if m.next_slab == NONE {
                    continue;
                }
                let (id, _) = live(&slabs, m.next_slab, m.next_chunk)?;
                if id == v.base_id + c {
                    return Err(corrupt("chunk linked to itself"));
                }
                indegree[id] = indegree[id].saturating_add(1);
            }
        }

        // Pass 3: each slab's chunks, free list, in-use count, highest generation.
        let mut empty: Vec<Vec<usize>> = vec![Vec::new(); ccount as usize];
        for (s, v) in slabs.iter().enumerate() {
            let Some(v) = v else { continue };
            // SAFETY: `s < slab_len`.
            let rec = unsafe { tab.add(s) };
            let (mut in_use, mut free_head) = (0u32, NONE);
            // SAFETY: `rec` is in the table.
            let mut gen_max = unsafe { (*rec).gen_max };
            for c in (0..v.frontier).rev() {
                // SAFETY: `c < frontier <= cps`.
                let m = unsafe { v.meta.add(c as usize) };
                // SAFETY: as above; the fields are plain integers.
                unsafe {
                    gen_max = gen_max.max((*m).gen);
                    if (*m).refcount == 0 {
                        fix!((*m).next_slab, NONE, rep.fixed);
                        fix!((*m).next_chunk, free_head, rep.fixed);
                        free_head = c;
                        rep.chunks_free += 1;
                    } else {
                        let links = indegree[v.base_id + c as usize];
                        if (*m).refcount < links {
                            st!((*m).refcount, links);
                            rep.refcounts_raised += 1;
                        }
                        in_use += 1;
                        rep.chunks_in_use += 1;
                    }
                }
            }
            // SAFETY: `rec` is in the table.
            unsafe {
                fix!((*rec).gen_max, gen_max, rep.fixed);
                fix!((*rec).free_head, free_head, rep.fixed);
                fix!((*rec).in_use, in_use, rep.fixed);
            }
            if in_use == 0 {
                empty[v.class as usize].push(s);
            }
        }

        // Empty slabs beyond what the release policy keeps go back to the source.
        if self.keep != u32::MAX {
            for list in &empty {
                for &s in list.iter().skip(self.keep as usize) {
                    let v = slabs[s].take().ok_or(corrupt("slab"))?;
                    rep.chunks_free -= v.frontier as usize;
                    self.repair_release(tab, s, v.class)?;
                    rep.slabs_released += 1;
                }
            }
        }

        // Pass 4: partial lists and class counters; free slots; header totals.
        let mut heads = vec![NONE; ccount as usize];
        let mut tails = vec![NONE; ccount as usize];
        let mut class_slabs = vec![0u32; ccount as usize];
        let mut class_empty = vec![0u32; ccount as usize];
        let mut free_slot = NONE;
        let mut last_free = NONE;
        let mut total_chunks = 0u64;
        for (s, v) in slabs.iter().enumerate() {
            let s32 = s as u32;
            // SAFETY: `s < slab_len`.
            let rec = unsafe { tab.add(s) };
            // SAFETY: `rec` and the records named by the list tails are in the table.
            unsafe {
                let Some(v) = v else {
                    // A free slot: linked in index order.
                    fix!((*rec).class, 0, rep.fixed);
                    fix!((*rec).in_use, 0, rep.fixed);
                    fix!((*rec).free_head, NONE, rep.fixed);
                    fix!((*rec).frontier, 0, rep.fixed);
                    fix!((*rec).prev, NONE, rep.fixed);
                    fix!((*rec).next, NONE, rep.fixed);
                    if last_free == NONE {
                        free_slot = s32;
                    } else {
                        fix!((*tab.add(last_free as usize)).next, s32, rep.fixed);
                    }
                    last_free = s32;
                    continue;
                };
                let cl = v.class as usize;
                class_slabs[cl] += 1;
                class_empty[cl] += ((*rec).in_use == 0) as u32;
                total_chunks += v.cps as u64;
                rep.slabs += 1;
                let has_room = (*rec).free_head != NONE || v.frontier < v.cps;
                if !has_room {
                    fix!((*rec).prev, NONE, rep.fixed);
                    fix!((*rec).next, NONE, rep.fixed);
                    continue;
                }
                fix!((*rec).prev, tails[cl], rep.fixed);
                fix!((*rec).next, NONE, rep.fixed);
                if tails[cl] == NONE {
                    heads[cl] = s32;
                } else {
                    fix!((*tab.add(tails[cl] as usize)).next, s32, rep.fixed);
                }
                tails[cl] = s32;
            }
        }
        for cl in 0..ccount as usize {
            let crec = ctab.wrapping_add(cl);
            let counted = if self.keep == u32::MAX {
                0
            } else {
                class_empty[cl]
            };
            // SAFETY: `cl < class_count <= class_cap`.
            unsafe {
                fix!((*crec).partial_head, heads[cl], rep.fixed);
                fix!((*crec).slabs, class_slabs[cl], rep.fixed);
                fix!((*crec).empty_slabs, counted, rep.fixed);
            }
        }
        let h = self.hdr;
        // SAFETY: the validated header.
        unsafe {
            fix!((*h).free_slot, free_slot, rep.fixed);
            fix!((*h).live_slabs, rep.slabs as u32, rep.fixed);
            fix!((*h).total_chunks, total_chunks, rep.fixed);

            let mallocs = (*h).stats[stat::SLAB_FREES].wrapping_add(rep.slabs as u64);
            fix!((*h).stats[stat::MALLOCS], mallocs, rep.fixed);
            let allocs = (*h).stats[stat::DEC_REF_ZEROES].wrapping_add(rep.chunks_in_use as u64);
            fix!((*h).stats[stat::ALLOCS], allocs, rep.fixed);
        }
        Ok(rep)
    }

    /// Releases empty slab `s` during a repair, in `release_slab`'s crash order (its lists
    /// are rebuilt afterwards).
    fn repair_release(&mut self, tab: *mut SlabRec, s: usize, class: u32) -> Result<(), Error> {
        let ci = self.classes[class as usize];
        // SAFETY: `s < slab_len`, a live slab validated by `repair`'s first pass.
        unsafe {
            self.pend_old((*tab.add(s)).block, ci.block_size);
            let block = self.retire(tab.add(s));
            self.give_back(block, ci.block_size, PENDING_OLD);
        }
        self.bump(stat::SLAB_FREES);
        Ok(())
    }

    /// Gives back the blocks that the header's pending words record (a slab or table block
    /// that an operation cut short had taken and not yet named, or had unnamed and not yet
    /// given back) if nothing names them (the header, its tables, a slab slot) and the
    /// source says they are live blocks ([`SlabSource::is_block`]; a source that cannot
    /// tell keeps them, as before the records), each with its record
    /// ([`give_back`](Arena::give_back)); the other records are cleared. Returns how many it
    /// gave back.
    fn settle_pending(&mut self) -> Result<usize, Error> {
        // SAFETY: the validated header.
        let p = unsafe { (*self.hdr).pending };
        let recorded = [PENDING_NEW, PENDING_OLD].map(|i| (i, p[i], p[i + 1]));
        if recorded.iter().all(|&(_, off, _)| off == 0) {
            return Ok(0);
        }
        // SAFETY: the validated header.
        let mut named = unsafe { vec![self.root, (*self.hdr).class_table, (*self.hdr).slab_table] };
        let (tab, len) = self.slab_table()?;
        // SAFETY: `s < slab_len <= slab_cap`, validated by `slab_table`.
        named.extend((0..len as usize).map(|s| unsafe { (*tab.add(s)).block }));
        let mut given = 0;
        for (which, off, size) in recorded {
            let size = usize::try_from(size).ok();
            match size {
                Some(size)
                    if off != 0
                        && !named.contains(&off)
                        && self.src.is_block(off) == Some(true) =>
                {
                    // SAFETY: a live block of the source that this arena took (the record
                    // says so; it is as trusted as the rest of the arena's memory) and that
                    // nothing of the arena names, so nothing refers to it. A wrong size
                    // (corrupt memory) makes a source that checks `free`'s arguments ignore
                    // the call (see the trait).
                    unsafe { self.give_back(off, size, which) };
                    given += 1;
                }
                _ => self.clear_pending(which),
            }
        }
        Ok(given)
    }

    /// Frees every live chunk that `roots` do not reach, and sets the refcount of every chunk
    /// they reach to its number of references: the times it appears in `roots`, plus the
    /// links to it from other reached chunks. For a higher layer that knows every reference
    /// it holds (each root being one reference), after a crash: it frees what
    /// [`repair`](Arena::repair) could only leave allocated (chunks whose allocation or free
    /// was cut short, chains whose release was), and undoes refcounts that a cut-short
    /// `set_next` left too high. Repairs the arena first and last.
    ///
    /// O(slabs × chunks per slab + roots) time, O(chunks) memory.
    ///
    /// Errors: as [`repair`](Arena::repair); the handle errors for a root that is not a live
    /// chunk (then only the first repair was made).
    pub fn collect(&mut self, roots: &[Handle]) -> Result<CollectReport, Error> {
        self.repair()?;
        let mut rep = CollectReport::default();
        let (tab, slen) = self.slab_table()?;
        let mut slabs: Vec<Option<SlabInfo>> = Vec::with_capacity(slen as usize);
        let mut ids = 0usize;
        for s in 0..slen as usize {
            // SAFETY: `s < slab_len`; `repair` validated every live slab just before.
            let loc = unsafe { (*tab.add(s)).block != 0 }
                .then(|| self.slab(s as u32, corrupt("slab"), corrupt("slab")))
                .transpose()?;
            slabs.push(loc.map(|l| {
                let info = SlabInfo {
                    meta: l.meta,
                    cps: l.cps,
                    frontier: l.chunk,
                    class: l.class,
                    stride: 0,
                    base_id: ids,
                };
                ids += l.chunk as usize;
                info
            }));
        }
        let mut refs = vec![0u32; ids];
        let mut seen = vec![false; ids];
        for &r in roots {
            let loc = self.locate(r)?;
            let (mut id, mut m) = live(&slabs, loc.slab, loc.chunk)?;
            refs[id] = refs[id].saturating_add(1);
            // Follow the chain until a chunk already reached (links are validated by
            // `repair`; `seen` also stops a cycle).
            while !seen[id] {
                seen[id] = true;
                // SAFETY: `m` is a live chunk's metadata (`live`).
                let (ns, nc) = unsafe { ((*m).next_slab, (*m).next_chunk) };
                if ns == NONE {
                    break;
                }
                (id, m) = live(&slabs, ns, nc)?;
                refs[id] = refs[id].saturating_add(1);
            }
        }
        for (s, v) in slabs.iter().enumerate() {
            let Some(v) = v else { continue };
            // SAFETY: `s < slab_len`.
            let rec = unsafe { tab.add(s) };
            for c in 0..v.frontier as usize {
                let id = v.base_id + c;
                // SAFETY: `c < frontier <= cps`.
                let m = unsafe { v.meta.add(c) };
                // SAFETY: as above.
                unsafe {
                    if (*m).refcount == 0 {
                        continue;
                    }
                    if !seen[id] {
                        Self::release(rec, m);
                        rep.freed += 1;
                    } else {
                        rep.chunks_in_use += 1;
                        if (*m).refcount != refs[id] {
                            st!((*m).refcount, refs[id]);
                            rep.refcounts_fixed += 1;
                        }
                    }
                }
            }
        }
        self.repair()?;
        Ok(rep)
    }
}

/// The arena-wide number of live chunk `(s, c)` and its metadata.
fn live(slabs: &[Option<SlabInfo>], s: u32, c: u32) -> Result<(usize, *mut Meta), Error> {
    match slabs.get(s as usize) {
        Some(Some(v)) if c < v.frontier => {
            // SAFETY: `c < frontier <= cps`: inside the slab's metadata array.
            let m = unsafe { v.meta.add(c as usize) };
            // SAFETY: as above.
            if unsafe { (*m).refcount } == 0 {
                return Err(corrupt("link to a free chunk"));
            }
            Ok((v.base_id + c as usize, m))
        }
        _ => Err(corrupt("link to a chunk that is not live")),
    }
}
