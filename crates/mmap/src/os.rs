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

/// An open-file-description record lock on a file's first byte (see [`ofd_lock`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileLock {
    /// Held by every handle of the region (`F_RDLCK`).
    Shared,
    /// Held only while no other handle exists (`F_WRLCK`).
    Exclusive,
}

/// Takes or converts this open file description's record lock on byte 0 of `file`
/// (`fcntl(F_OFD_SETLK)`, Linux 3.15 and later), without waiting unless `wait`
/// (`F_OFD_SETLKW`). The lock belongs to the open file description, so it lasts until the
/// descriptor is closed, also across a fork, and it conflicts with every other open file
/// description's lock, in this process or another, in any pid namespace: the kernel drops it
/// when the holder ends however it ends. Converting a shared lock to an exclusive one fails
/// (`WouldBlock`), keeping the shared one, while another description holds a lock.
/// `Unsupported` off Linux and under miri.
pub(crate) fn ofd_lock(file: &File, kind: FileLock, wait: bool) -> io::Result<()> {
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        // SAFETY: `flock` is plain data; zeroed is a valid value, and `l_pid` must be 0 for
        // an OFD lock.
        let mut fl: libc::flock = unsafe { core::mem::zeroed() };
        fl.l_type = match kind {
            FileLock::Shared => libc::F_RDLCK,
            FileLock::Exclusive => libc::F_WRLCK,
        } as _;
        fl.l_whence = libc::SEEK_SET as _;
        fl.l_start = 0;
        fl.l_len = 1;
        let cmd = if wait {
            libc::F_OFD_SETLKW
        } else {
            libc::F_OFD_SETLK
        };
        loop {
            // SAFETY: fcntl on our own descriptor with a valid, initialised `flock`.
            let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl as *mut libc::flock) };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::EACCES) => {
                    return Err(io::Error::from(io::ErrorKind::WouldBlock))
                }
                _ => return Err(e),
            }
        }
    }
    #[cfg(not(all(target_os = "linux", not(miri))))]
    {
        let _ = (file, kind, wait);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}
