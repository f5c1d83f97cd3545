//! Resident memory of one table in its own anonymous region, with and without huge pages:
//!
//! ```text
//! cargo run --release -p offheap-swiss --example rss -- <n> <huge: 0|1>
//! ```
//!
//! Prints the growth of VmRSS (and of AnonHugePages in /proc/self/smaps_rollup) from before
//! the region is created to after `n` u64 -> u64 inserts.

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
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
