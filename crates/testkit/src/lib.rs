//! Test support shared by the offheap crates' integration tests and benchmarks, and
//! [`SegHashbrown`], the benchmarks' "hashbrown behind a directory".
//!
//! A test that needs another process runs one of its own binary's tests as the child: an
//! `#[ignore]`d test (the child's entry point) that does nothing unless an environment
//! variable names its role. [`child`] builds that command; [`spawn_ready`] starts it and waits
//! for the child to print `ready`.
//!
//! ```no_run
//! use offheap_testkit::{child, spawn_ready, XorShift};
//!
//! // In the parent test:
//! let mut c = spawn_ready(child("my_child_entry").env("MY_ROLE", "/dev/shm/x"));
//! let mut rng = XorShift::new(7);
//! std::thread::sleep(std::time::Duration::from_micros(rng.below(20_000)));
//! c.kill();
//! ```

mod seg_hashbrown;
pub use seg_hashbrown::SegHashbrown;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

/// A command running only the test `entry` of the current test binary (`--exact`,
/// `--ignored`, `--nocapture`, one thread), so that an ignored test serves as the entry point
/// of a child process.
pub fn child(entry: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("the test binary's path"));
    c.args([
        entry,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    c
}

/// A child process started by [`spawn_ready`], with its stdout after the `ready` line.
pub struct Ready {
    /// The process.
    pub process: Child,
    /// Its stdout, read up to and including the line that contained `ready`.
    pub out: BufReader<ChildStdout>,
}

impl Ready {
    /// Kills the child with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        self.process.kill().expect("kill the child");
        self.process.wait().expect("reap the child");
    }
}

/// Starts `cmd` with a piped stdout and waits until the child prints a line containing
/// `ready`. Panics if the child exits first.
pub fn spawn_ready(cmd: &mut Command) -> Ready {
    let mut process = cmd.stdout(Stdio::piped()).spawn().expect("spawn the child");
    let mut out = BufReader::new(process.stdout.take().expect("the child's stdout"));
    let mut line = String::new();
    while !line.contains("ready") {
        line.clear();
        let n = out.read_line(&mut line).expect("read the child's stdout");
        assert!(n > 0, "the child exited before it was ready");
    }
    Ready { process, out }
}

/// xorshift64: a small deterministic random source (kill timings, operation choices).
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (0 is replaced: xorshift would stay at 0).
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x2545_F491_4F6C_DD1D
        } else {
            seed
        })
    }

    /// The next value.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// The next value below `n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// This thread's CPU time in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`; 0 if it cannot be
/// read). Unlike wall time it leaves out the time the scheduler gave to other processes,
/// which is what a benchmark on a shared machine wants of a single operation's latency.
///
/// ```
/// let t0 = offheap_testkit::thread_cpu_ns();
/// let v: u64 = (0..1000u64).sum();
/// assert!(offheap_testkit::thread_cpu_ns() >= t0 && v > 0);
/// ```
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether this kernel has `madvise(MADV_POPULATE_WRITE)` (Linux 5.14 and later), asked of a
/// scratch page: tests of prefaulting expect pages faulted in only where it does.
///
/// ```
/// let yes = offheap_testkit::kernel_populates();
/// assert!(!yes || cfg!(target_os = "linux"));
/// ```
pub fn kernel_populates() -> bool {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        // SAFETY: a fresh private anonymous mapping of one page, which nothing else knows of.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return false;
        }
        // SAFETY: `p` is the page just mapped read-write; populating changes no contents,
        // and the page is unmapped once asked.
        unsafe {
            let ok = libc::madvise(p, PAGE, libc::MADV_POPULATE_WRITE) == 0;
            libc::munmap(p, PAGE);
            ok
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// A scratch directory, removed when dropped: in `/dev/shm` (memory) where there is one, so
/// that region files in it neither wait for a disk nor wear one; else in the system's
/// temporary directory.
///
/// ```
/// let dir = offheap_testkit::scratch_dir();
/// std::fs::write(dir.path().join("f"), b"x").unwrap();
/// ```
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory")
}
