//! Two real processes: the test binary re-executes itself with a child role.
#![cfg(not(miri))]

mod common;

use common::*;
use offheap_mmap::{Region, RegionOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

const ROLE: &str = "OFFHEAP_MMAP_CHILD_ROLE";
const PATH: &str = "OFFHEAP_MMAP_CHILD_PATH";

fn spawn(role: &str, path: &Path) -> (Child, BufReader<ChildStdout>) {
    spawn_with(offheap_testkit::child("child_entry"), role, path)
}

/// Starts `cmd` (which runs this binary's `child_entry`) with `role` on `path`, piped.
fn spawn_with(mut cmd: Command, role: &str, path: &Path) -> (Child, BufReader<ChildStdout>) {
    let mut child = cmd
        .env(ROLE, role)
        .env(PATH, path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// Reads the child's stdout up to a line starting with `marker`; returns the rest of it.
fn expect(out: &mut BufReader<ChildStdout>, marker: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "child exited before {marker}"
        );
        // libtest may print "test child_entry ... " on the same line first.
        if let Some(at) = line.find(marker) {
            return line[at + marker.len()..].trim().to_string();
        }
    }
}

#[test]
#[ignore = "entry point of the child process spawned by the other tests"]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let path = PathBuf::from(std::env::var(PATH).unwrap());
    match role.as_str() {
        "verify" => {
            let r = Region::open(&path).unwrap();
            let blocks = verify(&r);
            let report = r.check().unwrap();
            assert_eq!(report.allocations, blocks.len() as u64 + 1);
            println!("CHILD-OK {}", blocks.len());
        }
        "grow-reader" => {
            let r = Region::open(&path).unwrap();
            let view = r.mapped_len();
            println!("READY {view}");
            let mut go = String::new();
            std::io::stdin().read_line(&mut go).unwrap();
            // The parent grew the region and wrote beyond our view.
            let blocks = verify(&r);
            assert!(r.mapped_len() > view, "view was not extended");
            assert!(blocks.iter().any(|&(o, _)| o.get() > view));
            r.check().unwrap();
            // Now grow it ourselves; the parent will follow.
            let o = r.alloc(8 << 20, 16).unwrap();
            fill(&r, o, 8 << 20, 99);
            r.set_root("child", Some(o)).unwrap();
            println!("CHILD-OK {}", r.mapped_len());
        }
        // Run in a pid namespace of its own (see `a_file_in_use_is_refused_to_another_pid_namespace`).
        "ns-open" => {
            let ns = offheap_mmap::process::pid_namespace().unwrap();
            // With a retry: the parent closed the file just before. (A process that another
            // test thread of the parent forked at that moment holds a copy of the parent's
            // descriptor, and so its lock, until it has exec'd.)
            let retry = std::env::var_os("OFFHEAP_NS_RETRY").is_some();
            let mut opened = Region::open(&path);
            for _ in 0..500 {
                match opened {
                    Err(offheap_mmap::Error::ForeignPidNamespace { .. }) if retry => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        opened = Region::open(&path);
                    }
                    _ => break,
                }
            }
            match opened {
                Ok(r) => {
                    println!("CHILD-NS ok {ns}");
                    // Hold the file open until the parent closes our stdin.
                    let mut rest = String::new();
                    std::io::stdin().read_line(&mut rest).unwrap();
                    r.check().unwrap();
                }
                Err(offheap_mmap::Error::ForeignPidNamespace { file, ours }) => {
                    assert_eq!(ours, ns);
                    println!("CHILD-NS foreign {file}");
                }
                Err(e) => panic!("open in the child: {e}"),
            }
        }
        other => panic!("unknown child role {other}"),
    }
}

#[test]
fn reopen_in_a_child_process() {
    let dir = scratch();
    let path = dir.path().join("child.region");
    let n = {
        let r = Region::create(&path, &RegionOptions::new()).unwrap();
        let n = populate(&r, 300).len();
        r.flush().unwrap();
        n
    };
    let (child, mut out) = spawn("verify", &path);
    assert_eq!(expect(&mut out, "CHILD-OK"), n.to_string());
    let mut child = child;
    assert!(child.wait().unwrap().success());
}

#[test]
fn two_processes_see_each_others_growth() {
    let dir = scratch();
    let path = dir.path().join("grow.region");
    let opts = RegionOptions::new().initial_size(64 << 10);
    let r = Region::create(&path, &opts).unwrap();
    let before = r.mapped_len();
    let (mut child, mut out) = spawn("grow-reader", &path);
    let child_view: u64 = expect(&mut out, "READY").parse().unwrap();
    assert_eq!(child_view, before);
    // Grow well beyond the child's view and write there (no msync: the page cache is
    // shared).
    populate(&r, 2000);
    assert!(r.mapped_len() > 4 * before);
    writeln!(child.stdin.as_mut().unwrap(), "GO").unwrap();
    let child_len: u64 = expect(&mut out, "CHILD-OK").parse().unwrap();
    assert!(child.wait().unwrap().success());
    // The child grew the region further; follow its root beyond our view.
    assert!(child_len > r.mapped_len());
    let o = r.root("child").unwrap();
    assert!(holds(&r, o, 8 << 20, 99));
    assert_eq!(r.mapped_len(), child_len);
    r.check().unwrap();
}

/// `unshare`'s options that start a process in a new pid namespace with its own `/proc` here
/// (as root, or through an unprivileged user namespace), if any does.
fn unshare_pid() -> Option<&'static [&'static str]> {
    const WAYS: [&[&str]; 2] = [
        &["--pid", "--fork", "--mount-proc"],
        &[
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--mount-proc",
        ],
    ];
    WAYS.into_iter().find(|way| {
        Command::new("unshare")
            .args(*way)
            .arg("true")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A real second pid namespace, as another container has: a child started with `unshare`
/// is refused a file this process has open (its owner ids would be pids it cannot check),
/// opens it once this process has closed it, and then this process is refused until the
/// child ends. Where `unshare` cannot make a pid namespace, the unit tests
/// (`region::pid_namespace_tests`) cover the same with the namespace overridden.
#[test]
fn a_file_in_use_is_refused_to_another_pid_namespace() {
    let Some(way) = unshare_pid() else {
        eprintln!("no pid namespace can be made here (unshare failed): not run");
        return;
    };
    let ours = offheap_mmap::process::pid_namespace().unwrap();
    let dir = scratch();
    let path = dir.path().join("ns.region");
    let spawn_ns = |retry: bool| {
        // `unshare` runs the test binary as `offheap_testkit::child` does.
        let mut cmd = Command::new("unshare");
        cmd.args(way)
            .arg(std::env::current_exe().unwrap())
            .args(offheap_testkit::child("child_entry").get_args())
            .envs(retry.then_some(("OFFHEAP_NS_RETRY", "1")));
        spawn_with(cmd, "ns-open", &path)
    };
    let r = Region::create(&path, &RegionOptions::new()).unwrap();
    let (mut child, mut out) = spawn_ns(false);
    assert_eq!(expect(&mut out, "CHILD-NS"), format!("foreign {ours}"));
    assert!(child.wait().unwrap().success());
    drop(r);
    let (mut child, mut out) = spawn_ns(true);
    let answer = expect(&mut out, "CHILD-NS");
    let theirs: u64 = answer
        .strip_prefix("ok ")
        .unwrap_or_else(|| panic!("the child answered {answer}"))
        .parse()
        .unwrap();
    assert_ne!(theirs, ours);
    match Region::open(&path) {
        Err(offheap_mmap::Error::ForeignPidNamespace { file, ours: o }) => {
            assert_eq!((file, o), (theirs, ours));
        }
        other => panic!("expected ForeignPidNamespace, got {other:?}"),
    }
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let r = Region::open(&path).unwrap();
    r.check().unwrap();
}
