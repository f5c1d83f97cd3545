//! Two real processes: the test binary re-executes itself with a child role.
#![cfg(not(miri))]

mod common;

use common::*;
use offheap_mmap::{Region, RegionOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};

const ROLE: &str = "OFFHEAP_MMAP_CHILD_ROLE";
const PATH: &str = "OFFHEAP_MMAP_CHILD_PATH";

fn spawn(role: &str, path: &Path) -> (Child, BufReader<ChildStdout>) {
    let mut child = offheap_testkit::child("child_entry")
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
