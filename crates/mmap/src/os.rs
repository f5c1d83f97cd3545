//! Thin wrappers over the OS calls memmap2 does not offer: reserving address space,
//! mapping a file at a fixed address inside it, msync, madvise and hole punching.
//!
//! memmap2 cannot place a mapping at a chosen address (no `MAP_FIXED`), which growth
//! in place needs, so file-backed regions use these; anonymous regions use memmap2.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// The OS page size.
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p <= 0 {
        4096
    } else {
        p as u64
    }
}

/// Reserves `len` bytes of address space with no access and no swap reservation.
pub(crate) fn reserve(len: u64) -> io::Result<*mut u8> {
    // SAFETY: a fresh anonymous PROT_NONE mapping at an address the kernel picks
    // cannot alias anything.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

/// Like [`reserve`], with the start aligned to `align` (a power of two): reserves
/// `len + align` bytes and gives back the slack on both sides.
pub(crate) fn reserve_aligned(len: u64, align: u64) -> io::Result<*mut u8> {
    if cfg!(miri) {
        return reserve(len);
    }
    let p = reserve(len + align)?;
    let pad = (p as usize).wrapping_neg() & (align as usize - 1);
    // SAFETY: the head `p..p+pad` and the tail `p+pad+len..p+len+align` are parts of the
    // fresh reservation that nothing uses; `pad` and `align - pad` are multiples of the
    // page size (the mapping and `align` are page aligned).
    unsafe {
        if pad > 0 {
            libc::munmap(p.cast(), pad);
        }
        if pad < align as usize {
            libc::munmap(p.add(pad + len as usize).cast(), align as usize - pad);
        }
        Ok(p.add(pad))
    }
}

/// Asks for transparent huge pages over `base+from..base+to` (`madvise(MADV_HUGEPAGE)`,
/// rounded inward to whole huge pages, and never the first one). Advice only: errors
/// (no THP, a filesystem without huge pages) are ignored.
///
/// # Safety
/// The range must be mapped by the caller.
pub(crate) unsafe fn advise_huge(base: *mut u8, from: u64, to: u64) {
    let huge = crate::region::HUGE_PAGE;
    let from = from.max(huge).next_multiple_of(huge);
    let to = to & !(huge - 1);
    if cfg!(miri) || from >= to {
        return;
    }
    // SAFETY: the caller guarantees the range is mapped; the advice changes no contents.
    unsafe {
        libc::madvise(
            base.add(from as usize).cast(),
            (to - from) as usize,
            libc::MADV_HUGEPAGE,
        )
    };
}

/// Faults in `len` bytes at `p` writable without changing them
/// (`madvise(MADV_POPULATE_WRITE)`, Linux 5.14 and later; `Unsupported` elsewhere).
///
/// # Safety
/// The range must be mapped read-write by the caller.
pub(crate) unsafe fn populate_write(p: *mut u8, len: u64) -> io::Result<()> {
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        // SAFETY: the caller guarantees the range is mapped read-write; populating changes
        // no contents.
        let r = unsafe { libc::madvise(p.cast(), len as usize, libc::MADV_POPULATE_WRITE) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(all(target_os = "linux", not(miri))))]
    {
        let _ = (p, len);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// Unmaps a range previously returned by [`reserve`].
///
/// # Safety
/// `base..base+len` must be a reservation made by [`reserve`] that nothing uses any more.
pub(crate) unsafe fn unreserve(base: *mut u8, len: u64) {
    // SAFETY: by the caller's contract the range is ours and unused.
    unsafe { libc::munmap(base.cast(), len as usize) };
}

/// Maps `file[from..to]` read-write and shared at `base + from`, replacing that part of
/// the reservation.
///
/// # Safety
/// `base..base+to` must lie inside a reservation owned by the caller, with no live
/// references into `base+from..base+to`; `from` must be page-aligned.
pub(crate) unsafe fn map_file_fixed(
    base: *mut u8,
    file: &File,
    from: u64,
    to: u64,
) -> io::Result<()> {
    // SAFETY: the caller guarantees the target range is part of our own reservation,
    // so MAP_FIXED replaces only memory we own.
    let p = unsafe {
        libc::mmap(
            base.add(from as usize).cast(),
            (to - from) as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            file.as_raw_fd(),
            from as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes dirty pages of `base..base+len` back to the file and waits.
///
/// # Safety
/// The range must be mapped.
pub(crate) unsafe fn msync(base: *mut u8, len: u64) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is mapped.
    let r = unsafe { libc::msync(base.cast(), len as usize, libc::MS_SYNC) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Gives `file[off..off+len]` back to the filesystem; reads return zeros afterwards.
/// Falls back to nothing where the filesystem cannot punch holes (the bytes stay).
pub(crate) fn punch_hole(file: &File, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on our own descriptor; the range is free memory of the region.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
