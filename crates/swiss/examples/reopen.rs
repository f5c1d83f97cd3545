//! How long a file-backed table takes to reopen, against rebuilding a hashbrown map of the
//! same entries from a file of key-value pairs (what a program without a persistent table
//! does at start-up), u64 -> u64:
//!
//! ```text
//! cargo run --release -p offheap-swiss --example reopen -- <n> [dir]
//! ```
//!
//! Writes a region file holding the table "kv" with `n` keys, and a file of the same `n`
//! pairs, in `dir` (default `/dev/shm`, so both files are in memory and the figures are of
//! the work, not of a disk), then three rounds of:
//! - `Region::open` and `SwissTable::open_in`, the open's checks of every segment included
//!   (and the minor page faults `open_in` took);
//! - the first 1000 lookups after the open (hits, spread over the table);
//! - `open_in` again on the same mapping (its pages mapped by then: the checks alone);
//! - reading the pairs file and inserting its pairs into a hashbrown map sized for them.
//!
//! Each round opens a new mapping of the file, so its page tables start empty, as another
//! process's would. The files are removed at the end. `SEGMENT_SLOTS` sets the segment size
//! (default 4096) and `HUGE` asks for huge pages, as in the other examples.

mod common;

use common::{key, region_options, table_options};
use hashbrown::HashMap;
use offheap_mmap::Region;
use offheap_swiss::{SwissTable, Xxh3BuildHasher};
use std::io::{Read, Write};
use std::time::Instant;

const SEED: u64 = 7;

fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

/// This process's minor page faults so far (`getrusage`).
fn minor_faults() -> i64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage for the call to write.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_minflt
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let n: u64 = a.get(1).map_or(1_000_000, |s| s.parse().expect("n"));
    let dir = std::path::PathBuf::from(a.get(2).map_or("/dev/shm", String::as_str));
    let table_path = dir.join(format!("offheap-reopen-{}.region", std::process::id()));
    let pairs_path = dir.join(format!("offheap-reopen-{}.pairs", std::process::id()));

    let t0 = Instant::now();
    {
        let region = Region::create(&table_path, &region_options()).expect("region file");
        let mut t: SwissTable<u64, u64, &Region> =
            SwissTable::create_in_with(&region, "kv", table_options(SEED)).expect("table");
        let mut w = std::io::BufWriter::new(std::fs::File::create(&pairs_path).expect("pairs"));
        for i in 0..n {
            let k = key(i);
            t.insert(k, i);
            w.write_all(&k.to_le_bytes()).expect("write");
            w.write_all(&i.to_le_bytes()).expect("write");
        }
        w.flush().expect("flush");
        let s = t.stats();
        println!(
            "n={n}: built in {:.0} ms; {} segments, directory of {} entries; {} MiB of table",
            ms(t0),
            s.segments,
            1u64 << s.global_depth,
            s.bytes >> 20
        );
    }

    for round in 0..3 {
        let t0 = Instant::now();
        let region = Region::open(&table_path).expect("reopen region");
        let region_ms = ms(t0);
        let (t1, f1) = (Instant::now(), minor_faults());
        let t: SwissTable<u64, u64, &Region> = SwissTable::open_in(&region, "kv").expect("open");
        let open_ms = ms(t1);
        let faults = minor_faults() - f1;
        assert_eq!(t.len() as u64, n, "every entry after the reopen");
        let t2 = Instant::now();
        let probes = n.min(1000);
        let step = (n / probes.max(1)).max(1);
        for j in 0..probes {
            let i = j * step;
            assert_eq!(t.get(&key(i)), Some(&i));
        }
        let first_us = t2.elapsed().as_secs_f64() * 1e6 / probes.max(1) as f64;
        drop(t);
        // Again on the same mapping, whose pages the first open mapped: the checks alone.
        let t4 = Instant::now();
        let t: SwissTable<u64, u64, &Region> = SwissTable::open_in(&region, "kv").expect("open");
        let again_ms = ms(t4);
        assert_eq!(t.len() as u64, n);
        drop(t);
        drop(region);

        let t3 = Instant::now();
        let mut bytes = Vec::with_capacity(16 * n as usize);
        std::fs::File::open(&pairs_path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .expect("read pairs");
        let mut hb: HashMap<u64, u64, Xxh3BuildHasher> =
            HashMap::with_capacity_and_hasher(n as usize, Xxh3BuildHasher::with_seed(SEED));
        for p in bytes.chunks_exact(16) {
            let k = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
            let v = u64::from_le_bytes(p[8..].try_into().expect("8 bytes"));
            hb.insert(k, v);
        }
        let hb_ms = ms(t3);
        assert_eq!(hb.len() as u64, n);
        println!(
            "round {round}: Region::open {region_ms:.3} ms + open_in {open_ms:.3} ms, \
             {faults} page faults (again on the same mapping: {again_ms:.3} ms); first lookups \
             {first_us:.2} us each; hashbrown rebuilt from the pairs file {hb_ms:.3} ms \
             ({:.1}x the reopen)",
            hb_ms / (region_ms + open_ms)
        );
    }
    std::fs::remove_file(&table_path).expect("remove region file");
    std::fs::remove_file(&pairs_path).expect("remove pairs file");
}
