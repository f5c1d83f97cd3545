//! The SharedHashFile workload on `offheap::SharedMap` (harness = false).
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

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use offheap::{SharedMap, SharedMapOptions};

const PHASES: [&str; 4] = ["PUT", "UPD", "MIX", "GET"];

fn env_u64(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

fn worker(path: &str, id: u64, procs: u64, keys: u64) {
    let m = SharedMap::open(path).unwrap();
    let per = keys / procs;
    let (lo, hi) = (id * per, (id + 1) * per);
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut go = [0u8; 1];
    for phase in PHASES {
        // Barrier: wait for the parent's go byte.
        stdin.lock().read_exact(&mut go).unwrap();
        let t = Instant::now();
        let mut ops = 0u64;
        match phase {
            "PUT" => {
                for k in lo..hi {
                    m.put(&(k as u32).to_le_bytes(), &(k as u32).to_le_bytes())
                        .unwrap();
                }
                ops = hi - lo;
            }
            "UPD" => {
                for k in lo..hi {
                    m.put(&(k as u32).to_le_bytes(), &(!k as u32).to_le_bytes())
                        .unwrap();
                }
                ops = hi - lo;
            }
            "MIX" => {
                let mut x = 0x2545_F491_4F6C_DD1Du64 ^ id;
                for _ in lo..hi {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = (lo + x % (hi - lo)) as u32;
                    if x % 100 < 2 {
                        m.delete(&k.to_le_bytes()).unwrap();
                        m.put(&k.to_le_bytes(), &k.to_le_bytes()).unwrap();
                        ops += 2;
                    } else {
                        std::hint::black_box(m.get_with(&k.to_le_bytes(), |v| v[0]).unwrap());
                        ops += 1;
                    }
                }
            }
            _ => {
                let mut found = 0u64;
                for k in lo..hi {
                    found += m
                        .get_with(&(k as u32).to_le_bytes(), |_| ())
                        .unwrap()
                        .is_some() as u64;
                }
                assert_eq!(found, hi - lo, "every key must be found");
                ops = hi - lo;
            }
        }
        writeln!(out, "{phase} {ops} {}", t.elapsed().as_nanos()).unwrap();
        out.flush().unwrap();
    }
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
    let keys = env_u64("KEYS", 10_000_000);
    let procs = env_u64("PROCS", 2);
    if let Ok(id) = std::env::var("OFFHEAP_WORKER") {
        let path = std::env::var("OFFHEAP_PATH").unwrap();
        worker(&path, id.parse().unwrap(), procs, keys);
        return;
    }
    let dir = PathBuf::from(std::env::var("SHM_DIR").unwrap_or_else(|_| "/dev/shm".into()));
    let path = dir.join(format!(
        "offheap-shared-workload-{}.map",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let m = SharedMap::create_with(
        &path,
        &SharedMapOptions::new().region(
            offheap::mmap::RegionOptions::new()
                .max_size(64 << 30)
                .release_threshold(1 << 20),
        ),
    )
    .unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut kids: Vec<_> = (0..procs)
        .map(|i| {
            Command::new(&exe)
                .env("OFFHEAP_WORKER", i.to_string())
                .env("OFFHEAP_PATH", &path)
                .env("KEYS", keys.to_string())
                .env("PROCS", procs.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    println!("SharedMap workload: {procs} processes, {keys} keys, 4-byte keys and values");
    let mut lines: Vec<_> = kids
        .iter_mut()
        .map(|c| std::io::BufReader::new(c.stdout.take().unwrap()))
        .collect();
    for phase in PHASES {
        for c in kids.iter_mut() {
            c.stdin.as_mut().unwrap().write_all(b"g").unwrap();
            c.stdin.as_mut().unwrap().flush().unwrap();
        }
        let (mut ops, mut worst) = (0u64, 0u128);
        for l in lines.iter_mut() {
            let mut s = String::new();
            std::io::BufRead::read_line(l, &mut s).unwrap();
            let f: Vec<&str> = s.split_whitespace().collect();
            assert_eq!(f[0], phase);
            ops += f[1].parse::<u64>().unwrap();
            worst = worst.max(f[2].parse().unwrap());
        }
        println!(
            "{phase}: {:.2} M ops/s ({ops} ops, slowest worker {:.2} s)",
            ops as f64 / (worst as f64 / 1e9) / 1e6,
            worst as f64 / 1e9
        );
    }
    for mut c in kids {
        assert!(c.wait().unwrap().success());
    }
    let pairs = m.len() as u64;
    let st = m.region_stats();
    let file = std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0);
    // Touch every key from the parent so that RSS counts the whole table's pages.
    let mut sum = 0u64;
    m.for_each(|_, v| sum += v[0] as u64).unwrap();
    std::hint::black_box(sum);
    let rss = rss_bytes();
    println!(
        "memory: {pairs} pairs; file {:.1} MiB = {:.1} B/pair; region in use {:.1} B/pair; parent RSS {:.1} MiB = {:.1} B/pair",
        file as f64 / (1 << 20) as f64,
        file as f64 / pairs as f64,
        st.in_use as f64 / pairs as f64,
        rss as f64 / (1 << 20) as f64,
        rss as f64 / pairs as f64,
    );
    drop(m);
    let _ = std::fs::remove_file(&path);
}
