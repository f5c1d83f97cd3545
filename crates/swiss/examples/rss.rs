//! Resident memory of one table in its own anonymous region, with and without huge pages:
//!
//! ```text
//! cargo run --release -p offheap-swiss --example rss -- <n> <huge: 0|1>
//! ```
//!
//! Prints the growth of VmRSS (and of AnonHugePages in /proc/self/smaps_rollup) from before
//! the region is created to after `n` u64 -> u64 inserts.
//!
//! `-- fault <MiB> <huge: 0|1>` instead times the first touch of memory: it allocates a block
//! of `MiB` in a fresh anonymous region, writes one byte per 4 KiB page, and prints the
//! median and largest time per 2 MiB (the cost of the page faults that a growing table pays).

use offheap_swiss::{SwissTable, TableOptions};

/// (VmRSS, AnonHugePages) of this process in bytes.
fn rss() -> (u64, u64) {
    let field = |file: &str, name: &str| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (
        field("/proc/self/status", "VmRSS:"),
        field("/proc/self/smaps_rollup", "AnonHugePages:"),
    )
}

/// Times the first write to each 4 KiB page of a fresh block, per 2 MiB.
fn fault(mib: u64, huge: bool) {
    let opts = offheap_mmap::RegionOptions::new().huge_pages(huge);
    let region = offheap_mmap::Region::anonymous_with(&opts).expect("region");
    let len = mib << 20;
    let off = region.alloc(len, 4096).expect("alloc");
    let p = region.ptr(off, len).expect("ptr").as_ptr();
    let mut per = Vec::new();
    for w in (0..len as usize).step_by(2 << 20) {
        let t = std::time::Instant::now();
        for i in (w..(w + (2 << 20)).min(len as usize)).step_by(4096) {
            // SAFETY: `i` is inside the `len`-byte block just allocated.
            unsafe { p.add(i).write_volatile(1) };
        }
        per.push(t.elapsed().as_micros());
    }
    per.sort_unstable();
    println!(
        "fault huge_pages={huge} MiB={mib}: per 2 MiB median {} us, max {} us",
        per[per.len() / 2],
        per[per.len() - 1]
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("fault") {
        let mib = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(64);
        fault(mib, args.get(3).map(String::as_str) != Some("0"));
        return;
    }
    let n: u64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let huge = args.get(2).map(String::as_str) != Some("0");
    let (r0, h0) = rss();
    let opts = offheap_swiss::default_region_options().huge_pages(huge);
    let region = offheap_mmap::Region::anonymous_with(&opts).expect("region");
    let mut t =
        SwissTable::<u64, u64, _>::with_options_in(TableOptions::new(), region).expect("table");
    for i in 0..n {
        t.insert(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), i);
    }
    let (r1, h1) = rss();
    println!(
        "n={n} huge_pages={huge} rss_growth_bytes={} anon_huge_growth_bytes={} rss_bytes_per_entry={:.1}",
        r1 - r0,
        h1.saturating_sub(h0),
        (r1 - r0) as f64 / n.max(1) as f64
    );
}
