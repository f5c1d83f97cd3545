//! Process identities for data that outlives its writers: an *owner id* names a process
//! (`pid << 32 | start time`), and [`owner_is_dead`] tells whether the process that recorded
//! an id has ended. Structures in shared or file-backed memory record the id of the process
//! using them, so that another process can tell a live user (leave it alone) from a dead one
//! (recover what it left half done). The start time tells a recycled pid apart from the
//! process that recorded it.
//!
//! ```
//! use offheap_mmap::process::{owner_id, owner_is_dead};
//!
//! let me = owner_id();
//! assert_eq!(me >> 32, u64::from(std::process::id()));
//! assert!(!owner_is_dead(me));
//! assert!(owner_is_dead(0)); // no process has pid 0
//! ```

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The last owner id [`owner_id`] read from `/proc` (0: none yet). It names the pid it belongs
/// to in its top half, so a child forked after it was stored, whose pid differs, reads its
/// own. One word, written whole, whose every value is a correct id of the pid it names: no
/// ordering with other memory is needed, and there is no protocol for loom to check.
static OWNER_ID: AtomicU64 = AtomicU64::new(0);

/// This process's owner id: `pid << 32 | start time` (the low 32 bits of the process's start
/// time in clock ticks since boot, from `/proc/self/stat`; 0 where there is no `/proc`, and
/// under miri).
///
/// Read from `/proc` once per process (a `getpid` after that): it cost about ten system
/// calls, which each open of a swiss table paid (14-19 us of the 21-26 us that `open_in`
/// took for a table of one segment).
pub fn owner_id() -> u64 {
    let pid = std::process::id();
    let cached = OWNER_ID.load(Relaxed);
    if cached >> 32 == u64::from(pid) {
        return cached;
    }
    let id = (u64::from(pid) << 32) | u64::from(start_time(pid).unwrap_or(0));
    if id as u32 != 0 {
        // Only a start time that was read: a failed read is tried again next time.
        OWNER_ID.store(id, Relaxed);
    }
    id
}

fn start_time(pid: u32) -> Option<u32> {
    if cfg!(miri) {
        // Miri cannot model /proc; the pid alone identifies the owner there.
        return None;
    }
    // One read of up to 1 KiB: a stat line is a few hundred bytes (`read_to_string` would
    // start from 32 bytes and read six times, /proc files having no size).
    let mut buf = Vec::with_capacity(1024);
    std::fs::File::open(format!("/proc/{pid}/stat"))
        .and_then(|mut f| f.read_to_end(&mut buf))
        .ok()?;
    let s = std::str::from_utf8(&buf).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: skip past it.
    let rest = s.get(s.rfind(')')? + 2..)?;
    // Field 22 (starttime) is the 20th after the name.
    let t: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some(t as u32)
}

/// Whether the process that recorded `id` (an [`owner_id`]) has ended: `kill(pid, 0)` says no
/// such process, or the pid now belongs to a process that started at another time. An id
/// that no process can have (pid 0, or above `i32::MAX`: a corrupt or foreign file) is dead.
/// A process that has exited but not been reaped (a zombie) still counts as alive.
///
/// An id without a start time (its low half 0) is what a process records where it cannot
/// read `/proc`. Where this process can read the start time of the pid it names, the id is
/// not that process's, and it is dead: a live process there records its start time (the
/// users that keep data across processes take their id from [`checked_owner_id`], which
/// fails rather than record none). Before, such an id counted as alive whenever its pid
/// was: a corrupt file whose lock word named a live pid (a daemon's, with no start time)
/// made every process that opened it wait for that lock forever (found by the fuzz target
/// `sharedmap_file`). Where start times cannot be read at all (no `/proc`, miri), every id
/// of a live pid is alive.
pub fn owner_is_dead(id: u64) -> bool {
    let pid = (id >> 32) as u32;
    if pid == 0 || pid > i32::MAX as u32 {
        // No process has such a pid (and `kill(0, ..)` would ask about our own group): the
        // word was written by no live process (a corrupt or foreign file).
        return true;
    }
    let recorded = id as u32;
    if pid == std::process::id() {
        // Another thread of this process, unless the word was recorded by an earlier process
        // that had our pid (a file that outlived a reboot): then the start times differ.
        let mine = owner_id() as u32;
        return mine != 0 && recorded != mine;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return true;
    }
    match start_time(pid) {
        Some(t) => t != recorded,
        None => false,
    }
}

/// [`owner_id`], or an error where the start time cannot be read although `/proc` is there
/// (a transient failure, such as no file descriptor left): an id without a start time would
/// be taken for a dead process's by the others ([`owner_is_dead`]). Where there is no
/// `/proc` (and under miri) it is `owner_id()`, without a start time.
///
/// ```
/// use offheap_mmap::process::{checked_owner_id, owner_id};
/// assert_eq!(checked_owner_id()?, owner_id());
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn checked_owner_id() -> std::io::Result<u64> {
    let id = owner_id();
    if id as u32 != 0 || cfg!(miri) || !std::path::Path::new("/proc/self/stat").exists() {
        return Ok(id);
    }
    Err(std::io::Error::other(
        "cannot read this process's start time from /proc/self/stat",
    ))
}

/// The pid namespace this process's pids are numbered in: the inode number of
/// `/proc/self/ns/pid`, which names the namespace for as long as it exists (`None` where
/// there is no `/proc`, and under miri).
///
/// An owner id is a pid in one namespace: a process of another pid namespace (another
/// container) reads it as some other process, or none, and would take a live owner for a
/// dead one. A region file records the namespace of the processes using it, and
/// [`Region::open`](crate::Region::open) refuses one in use from another namespace
/// ([`Error::ForeignPidNamespace`](crate::Error::ForeignPidNamespace)).
///
/// ```
/// use offheap_mmap::process::pid_namespace;
/// if let Some(ns) = pid_namespace() {
///     assert_ne!(ns, 0);
/// }
/// ```
pub fn pid_namespace() -> Option<u64> {
    #[cfg(test)]
    if let Some(ns) = ns_override::get() {
        return Some(ns);
    }
    // A process never changes pid namespace (`setns` and `unshare` of one move only the
    // children made after them), so it is read once.
    static NS: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *NS.get_or_init(|| {
        if cfg!(miri) {
            return None;
        }
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self/ns/pid")
            .ok()
            .map(|m| m.ino())
            .filter(|&ino| ino != 0)
    })
}

/// Test-only: makes [`pid_namespace`] answer another namespace on this thread, as a process
/// of another container would.
#[cfg(test)]
pub(crate) mod ns_override {
    use std::cell::Cell;

    thread_local! {
        static NS: Cell<Option<u64>> = const { Cell::new(None) };
    }

    pub(crate) fn get() -> Option<u64> {
        NS.with(Cell::get)
    }

    /// Until the guard is dropped, this thread's [`pid_namespace`](super::pid_namespace)
    /// is `ns`.
    pub(crate) fn set(ns: u64) -> Guard {
        NS.with(|c| c.set(Some(ns)));
        Guard
    }

    pub(crate) struct Guard;

    impl Drop for Guard {
        fn drop(&mut self) {
            NS.with(|c| c.set(None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_pids_are_dead() {
        assert!(owner_is_dead(0));
        assert!(owner_is_dead(5));
        assert!(owner_is_dead(u64::from(u32::MAX) << 32 | 7));
        assert!(owner_is_dead((1u64 << 31) << 32));
    }

    #[test]
    #[cfg_attr(miri, ignore)] // no /proc under miri
    fn the_remembered_id_is_the_one_proc_gives() {
        let first = owner_id();
        let pid = std::process::id();
        let fresh = u64::from(pid) << 32 | u64::from(start_time(pid).unwrap());
        assert_eq!(first, fresh);
        assert_eq!(OWNER_ID.load(Relaxed), fresh, "remembered");
        assert_eq!(owner_id(), fresh);
        // A value remembered for another pid (a parent's, in a forked child) is not used.
        OWNER_ID.store(u64::from(pid ^ 1) << 32 | 5, Relaxed);
        assert_eq!(owner_id(), fresh);
        assert_eq!(OWNER_ID.load(Relaxed), fresh);
    }

    /// A lock word in a corrupt file that names a live process without a start time is not
    /// that process's (it records one): dead, so that a waiter takes the lock over instead
    /// of waiting forever. Our own pid, and pid 1 (always alive), both ways.
    #[test]
    #[cfg_attr(miri, ignore)] // no /proc under miri: every id of a live pid is alive there
    fn an_id_without_a_start_time_is_dead_where_start_times_can_be_read() {
        let me = owner_id();
        assert!(owner_is_dead(me & !0xFFFF_FFFF));
        assert!(!owner_is_dead(me));
        if let Some(init) = start_time(1) {
            assert!(owner_is_dead(1 << 32));
            assert!(!owner_is_dead(1 << 32 | u64::from(init)));
        }
        assert_eq!(checked_owner_id().unwrap(), me);
    }

    #[test]
    fn this_process_is_alive() {
        assert!(!owner_is_dead(owner_id()));
    }

    #[test]
    #[cfg_attr(miri, ignore)] // no /proc under miri
    fn an_earlier_process_with_our_pid_is_dead() {
        let me = owner_id();
        assert_ne!(me as u32, 0, "start time from /proc/self/stat");
        let earlier = (me & !0xFFFF_FFFF) | u64::from((me as u32).wrapping_add(1).max(1));
        assert!(owner_is_dead(earlier));
    }

    #[test]
    #[cfg_attr(miri, ignore)] // spawns a process
    fn an_exited_process_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid).unwrap_or(1);
        child.wait().unwrap();
        assert!(owner_is_dead(u64::from(pid) << 32 | u64::from(start)));
    }
}
