//! The SharedHashFile workload on `offheap::SharedMap` (harness = false): a thin wrapper
//! around `offheap_cli::workload`, the code behind `offheap bench` (see docs/cli.md).
//!
//! P worker processes (this binary re-executed with `OFFHEAP_WORKER=i`), each on its own
//! key range, 4-byte keys and 4-byte values, in phases separated by a barrier:
//! PUT (insert unique keys), UPD (same-size value updates), MIX (98% get, 2% delete + put),
//! GET (every key). Per phase: ops/s over all workers (total ops / slowest worker's time).
//! Memory: file size / pairs, region bytes in use / pairs, and the parent's RSS after
//! touching every key.
//!
//! Run: `cargo bench -p offheap-benches --features offheap --bench shared_workload`
//! Options (env): `KEYS` (default 10000000), `PROCS` (default 2), `SHM_DIR` (default /dev/shm).

use std::io::BufWriter;
use std::path::PathBuf;
use std::process::Command;

use offheap::SharedMap;
use offheap_cli::workload::{self, Config};

fn env_u64(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    // Criterion-style arguments (`--bench`) are ignored.
    let cfg = Config {
        procs: env_u64("PROCS", 2) as usize,
        keys: env_u64("KEYS", 10_000_000),
        ..Config::default()
    };
    if let Ok(id) = std::env::var("OFFHEAP_WORKER") {
        let path = PathBuf::from(std::env::var("OFFHEAP_PATH").unwrap());
        let out = BufWriter::new(std::io::stdout().lock());
        workload::run_worker(
            &cfg,
            &path,
            id.parse().unwrap(),
            std::io::stdin().lock(),
            out,
        )
        .unwrap();
        return;
    }
    let dir = PathBuf::from(std::env::var("SHM_DIR").unwrap_or_else(|_| "/dev/shm".into()));
    let path = dir.join(format!(
        "offheap-shared-workload-{}.map",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let exe = std::env::current_exe().unwrap();
    let spawn = |id: usize| {
        let mut c = Command::new(&exe);
        c.env("OFFHEAP_WORKER", id.to_string())
            .env("OFFHEAP_PATH", &path)
            .env("KEYS", cfg.keys.to_string())
            .env("PROCS", cfg.procs.to_string());
        c
    };
    println!(
        "SharedMap workload: {} processes, {} keys, 4-byte keys and values",
        cfg.procs, cfg.keys
    );
    let report = workload::run(&cfg, &path, &spawn, &mut |_| {});
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            panic!("workload failed: {e}");
        }
    };
    for p in &report.phases {
        println!(
            "{}: {:.2} M ops/s ({} ops, slowest worker {:.2} s)",
            p.phase,
            p.mops(),
            p.ops,
            p.seconds
        );
    }
    // Touch every key from the parent so that RSS counts the whole table's pages.
    let m = SharedMap::open(&path).unwrap();
    let mut sum = 0u64;
    m.for_each(|_, v| sum += v.len() as u64).unwrap();
    std::hint::black_box(sum);
    let rss = rss_bytes();
    let pairs = report.pairs;
    println!(
        "memory: {pairs} pairs; file {:.1} MiB = {:.1} B/pair; region in use {:.1} B/pair; parent RSS {:.1} MiB = {:.1} B/pair",
        report.file_bytes as f64 / (1 << 20) as f64,
        report.file_bytes as f64 / pairs as f64,
        report.in_use as f64 / pairs as f64,
        rss as f64 / (1 << 20) as f64,
        rss as f64 / pairs as f64,
    );
    drop(m);
    let _ = std::fs::remove_file(&path);
}
