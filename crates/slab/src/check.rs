//! `Arena::check`: a full walk of the arena's state.

use crate::layout::{stat, Meta, CLASS_REC, HEADER_SIZE, MAGIC, NONE, SLAB_REC, VERSION};
use crate::{Arena, CheckReport, Error, SlabSource};

fn bad(what: &'static str) -> Error {
    Error::Corrupt(what)
}

struct SlabView {
    base_id: usize,
    frontier: u32,
    meta: *const Meta,
}

pub(crate) fn check<S: SlabSource>(a: &Arena<S>) -> Result<CheckReport, Error> {
    let h = a.header();
    if h.magic != MAGIC {
        return Err(Error::NotAnArena);
    }
    if h.version != VERSION {
        return Err(Error::UnsupportedVersion(h.version));
    }
    // Another arena on this memory may have moved a table since this one cached it.
    a.sync();
    let (ctab, ccount) = a.class_table()?;
    let (tab, slen) = a.slab_table()?;
    let slen = slen as usize;
    let ccount = ccount as usize;
    let mut report = CheckReport {
        source_bytes: HEADER_SIZE
            + h.class_cap as usize * CLASS_REC
            + h.slab_cap as usize * SLAB_REC,
        ..CheckReport::default()
    };

    // Free slot list: acyclic, only free slots, and every free slot on it.
    let mut on_free_list = vec![false; slen];
    let mut s = h.free_slot;
    while s != NONE {
        let i = s as usize;
        if i >= slen || on_free_list[i] {
            return Err(bad("free slot list out of range or cyclic"));
        }
        on_free_list[i] = true;
        // SAFETY: `i < slab_len <= slab_cap`, validated by `slab_table`.
        let rec = unsafe { &*tab.add(i) };
        if rec.block != 0 {
            return Err(bad("free slot list names a live slab"));
        }
        report.free_slots += 1;
        s = rec.next;
    }

    // Slabs: records, free lists, chunk metadata.
    let mut views: Vec<Option<SlabView>> = Vec::with_capacity(slen);
    let mut class_slabs = vec![0usize; ccount];
    let mut class_empty = vec![0usize; ccount];
    let mut total_chunks = 0u64;
    let mut ids = 0usize;
    for (i, &free_slot) in on_free_list.iter().enumerate() {
        // SAFETY: as above (`i < slab_len`).
        let rec = unsafe { &*tab.add(i) };
        if rec.block == 0 {
            if !free_slot {
                return Err(bad("free slab slot missing from the free slot list"));
            }
            views.push(None);
            continue;
        }
        let (_, stride, cps, _, block_size) = a
            .class_info(rec.class)
            .ok_or(bad("slab of an unknown class"))?;
        if rec.class as usize >= ccount {
            return Err(bad("slab of a class not created"));
        }
        let base = a
            .src_resolve(rec.block, block_size)
            .ok_or(bad("slab block offset"))?;
        if base as usize % std::mem::align_of::<Meta>() != 0 {
            return Err(bad("slab block misaligned"));
        }
        if rec.frontier > cps {
            return Err(bad("slab frontier beyond its chunks"));
        }
        let meta = base as *const Meta;
        let frontier = rec.frontier as usize;
        let mut free = vec![false; frontier];
        let mut n_free = 0usize;
        let mut c = rec.free_head;
        while c != NONE {
            let j = c as usize;
            if j >= frontier || free[j] {
                return Err(bad("slab free list out of range or cyclic"));
            }
            free[j] = true;
            n_free += 1;
            // SAFETY: `j < frontier <= cps`: inside the metadata array.
            let m = unsafe { &*meta.add(j) };
            if m.refcount != 0 {
                return Err(bad("free list entry in use"));
            }
            c = m.next_chunk;
        }
        if n_free + rec.in_use as usize != frontier {
            return Err(bad("slab in-use count disagrees with its free list"));
        }
        for (j, &is_free) in free.iter().enumerate() {
            // SAFETY: `j < frontier <= cps`.
            let m = unsafe { &*meta.add(j) };
            if is_free {
                continue;
            }
            if m.refcount == 0 {
                return Err(bad("chunk with refcount 0 not on its free list"));
            }
            if m.len as usize > stride {
                return Err(bad("chunk length beyond its chunk size"));
            }
            if rec.gen_max >= rec.gen_floor && (m.gen < rec.gen_floor || m.gen > rec.gen_max) {
                return Err(bad("chunk generation outside its slab's range"));
            }
            if m.next_slab != NONE {
                report.links += 1;
            }
        }
        report.chunks_in_use += rec.in_use as usize;
        report.chunks_free += n_free;
        report.chunks_untouched += cps as usize - frontier;
        report.slabs += 1;
        report.source_bytes += block_size;
        total_chunks += cps as u64;
        class_slabs[rec.class as usize] += 1;
        if rec.in_use == 0 {
            class_empty[rec.class as usize] += 1;
        }
        views.push(Some(SlabView {
            base_id: ids,
            frontier: rec.frontier,
            meta,
        }));
        ids += frontier;
    }

    // Chains: every link names a live chunk, refcounts cover the links, no cycles.
    let node = |s: u32, c: u32| -> Result<(usize, *const Meta), Error> {
        match views.get(s as usize) {
            Some(Some(v)) if c < v.frontier => {
                // SAFETY: `c < frontier <= cps`.
                let m = unsafe { v.meta.add(c as usize) };
                // SAFETY: as above.
                if unsafe { (*m).refcount } == 0 {
                    return Err(bad("link to a free chunk"));
                }
                Ok((v.base_id + c as usize, m))
            }
            _ => Err(bad("link to a chunk that is not live")),
        }
    };
    let mut indegree = vec![0u32; ids];
    let mut next_of = vec![usize::MAX; ids];
    for (s, v) in views.iter().enumerate() {
        let Some(v) = v else { continue };
        for c in 0..v.frontier {
            // SAFETY: `c < frontier`.
            let m = unsafe { &*v.meta.add(c as usize) };
            if m.refcount == 0 || m.next_slab == NONE {
                continue;
            }
            let (id, _) = node(m.next_slab, m.next_chunk)?;
            if id == v.base_id + c as usize {
                return Err(bad("chunk linked to itself"));
            }
            let _ = s;
            indegree[id] += 1;
            next_of[v.base_id + c as usize] = id;
        }
    }
    for v in views.iter().flatten() {
        for c in 0..v.frontier {
            // SAFETY: `c < frontier`.
            let m = unsafe { &*v.meta.add(c as usize) };
            if m.refcount != 0 && m.refcount < indegree[v.base_id + c as usize] {
                return Err(bad("refcount below the number of links to the chunk"));
            }
        }
    }
    // Functional graph: colour walk (0 unseen, 1 on the current path, 2 done).
    let mut colour = vec![0u8; ids];
    for start in 0..ids {
        let mut x = start;
        while x != usize::MAX && colour[x] == 0 {
            colour[x] = 1;
            x = next_of[x];
        }
        if x != usize::MAX && colour[x] == 1 {
            return Err(bad("cyclic chain"));
        }
        let mut y = start;
        while y != usize::MAX && colour[y] == 1 {
            colour[y] = 2;
            y = next_of[y];
        }
    }

    // Classes: partial lists and counts.
    let mut on_partial = vec![false; slen];
    for cl in 0..ccount {
        // SAFETY: `cl < class_count <= class_cap`, validated by `class_table`.
        let crec = unsafe { &*ctab.add(cl) };
        let (chunk_size, _, cps, _, _) = a.class_info(cl as u32).ok_or(bad("class index"))?;
        if crec.chunk_size != chunk_size {
            return Err(bad("class chunk size disagrees with the parameters"));
        }
        if crec.slabs as usize != class_slabs[cl] {
            return Err(bad("class slab count disagrees with the slab table"));
        }
        let counted = if a.keep_empty() == u32::MAX {
            0
        } else {
            class_empty[cl]
        };
        if crec.empty_slabs as usize != counted {
            return Err(bad("class empty-slab count disagrees with the slab table"));
        }
        if a.keep_empty() != u32::MAX && class_empty[cl] > a.keep_empty() as usize {
            return Err(bad("more empty slabs kept than the release policy allows"));
        }
        let mut prev = NONE;
        let mut s = crec.partial_head;
        while s != NONE {
            let i = s as usize;
            if i >= slen || on_partial[i] {
                return Err(bad("partial list out of range or cyclic"));
            }
            on_partial[i] = true;
            // SAFETY: `i < slab_len`.
            let rec = unsafe { &*tab.add(i) };
            if rec.block == 0 || rec.class as usize != cl {
                return Err(bad("partial list names a slab not of its class"));
            }
            if rec.free_head == NONE && rec.frontier >= cps {
                return Err(bad("full slab on the partial list"));
            }
            if rec.prev != prev {
                return Err(bad("partial list back link"));
            }
            prev = s;
            s = rec.next;
        }
    }
    for (i, &listed) in on_partial.iter().enumerate() {
        // SAFETY: `i < slab_len`.
        let rec = unsafe { &*tab.add(i) };
        if rec.block == 0 {
            continue;
        }
        let (_, _, cps, _, _) = a.class_info(rec.class).ok_or(bad("class index"))?;
        let has_room = rec.free_head != NONE || rec.frontier < cps;
        if has_room != listed {
            return Err(bad("slab with free chunks missing from its partial list"));
        }
    }

    // Header totals and counters.
    if h.live_slabs as usize != report.slabs {
        return Err(bad("live slab count"));
    }
    if h.total_chunks != total_chunks {
        return Err(bad("total chunk count"));
    }
    let st = &h.stats;
    if st[stat::MALLOCS].wrapping_sub(st[stat::SLAB_FREES]) != report.slabs as u64 {
        return Err(bad("mallocs - slab_frees disagrees with the slabs held"));
    }
    if st[stat::ALLOCS].wrapping_sub(st[stat::DEC_REF_ZEROES]) != report.chunks_in_use as u64 {
        return Err(bad(
            "allocs - dec_ref_zeroes disagrees with the chunks in use",
        ));
    }
    Ok(report)
}
