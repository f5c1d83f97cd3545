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

/// Minor page faults of this process so far (field 10 of /proc/self/stat).
fn minor_faults() -> i64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One shared region (as the criterion suite keeps): build and drop a table of `big` keys,
/// then `rounds` times build a table of `small` keys and remove every key. Prints the page
/// faults and time per round.
fn churn(big: u64, small: u64, rounds: u64, huge: bool) {
    let opts = offheap_swiss::default_region_options().huge_pages(huge);
    let region = offheap_mmap::Region::anonymous_with(&opts).expect("region");
    let build = |n: u64| {
        let mut t = SwissTable::<u64, u64, _>::with_options_in(TableOptions::new(), &region)
            .expect("table");
        for i in 0..n {
            t.insert(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), i);
        }
        t
    };
    drop(build(big));
    let (f0, t0) = (minor_faults(), std::time::Instant::now());
    for _ in 0..rounds {
        let mut t = build(small);
        for i in 0..small {
            std::hint::black_box(t.remove(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        }
    }
    println!(
        "churn huge_pages={huge} big={big} small={small}: {:.1} faults and {:.1} us per round",
        (minor_faults() - f0) as f64 / rounds as f64,
        t0.elapsed().as_secs_f64() * 1e6 / rounds as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("churn") {
        let num = |i: usize, d: u64| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
        churn(
            num(2, 1_000_000),
            num(3, 1000),
            num(4, 10_000),
            num(5, 1) != 0,
        );
        return;
    }
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
