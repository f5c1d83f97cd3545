//! A child process forked while its parent has a table open gets a copy of the parent's
//! handle. Dropping that copy must not mark the parent's table closed: the table is still the
//! parent's, and a crash of the parent must leave it marked open for the repair.
//!
//! Alone in its test binary: `fork` copies only the calling thread, so no other test may be
//! running (and holding a lock) when it forks.
#![cfg(not(miri))]

use offheap_mmap::{Region, RegionOptions};
use offheap_swiss::{Error, SwissTable};

/// The header's owner word (byte 64 of the table header).
fn owner(region: &Region) -> u64 {
    let hdr = region.root("kv").unwrap().get();
    let p = region.ptr_raw(hdr, 72).unwrap();
    // SAFETY: 72 bytes of the header block lie inside the mapping (checked by ptr_raw).
    unsafe { p.as_ptr().add(64).cast::<u64>().read_volatile() }
}

#[test]
fn a_forked_child_dropping_its_copy_of_a_handle_leaves_the_table_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.region");
    let region = Region::create(&path, &RegionOptions::new()).unwrap();
    let mut t = SwissTable::<u64, u64, &Region>::create_in(&region, "kv").unwrap();
    t.extend((0..1000u64).map(|i| (i, i + 7)));
    let before = owner(&region);
    assert_eq!(before >> 32, u64::from(std::process::id()));
    // SAFETY: this binary's only test runs on this thread while the harness's main thread
    // waits for it; the child only drops its copy of the table and exits with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        drop(t);
        // SAFETY: ends the child at once, running no destructor or exit handler of the
        // parent's state.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    assert_eq!(
        owner(&region),
        before,
        "the child's drop marked the table closed"
    );
    // Still the parent's, open: a second handle is refused; the first works on.
    assert!(matches!(
        SwissTable::<u64, u64, &Region>::open_in(&region, "kv"),
        Err(Error::InUse { .. })
    ));
    t.insert(5000, 1);
    assert_eq!(t.len(), 1001);
    drop(t);
    assert_eq!(owner(&region), 0, "the parent's drop closes the table");
}
