//! Which inserts are slow while a table grows, and what each of them did: grows a table to
//! `n` keys in a fresh anonymous region, timing every insert in thread CPU time, and prints
//! each insert slower than `threshold_ns` with the segments it added and whether it doubled
//! the directory, then how many there were and the slowest doubling.
//!
//! ```text
//! cargo build --release -p offheap-swiss --example slow_inserts
//! taskset -c 1 target/release/examples/slow_inserts 30000000 100000
//! ```
//!
//! After each slow insert it reads [`SwissTable::stats`], which visits every segment, so the
//! insert after a slow one can be slow from the cold caches that leaves. Each insert is timed
//! between two reads of the thread's CPU clock (about 1.4 us together on the project's VM).
//! docs/swiss-log.md, "The directory's doubling", has its figures.

mod common;

use common::{key, region_options, table_options};
use offheap_mmap::Region;
use offheap_swiss::SwissTable;
use offheap_testkit::thread_cpu_ns;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map_or(30_000_000, |s| s.parse().expect("n: a number of keys"));
    let threshold: u64 = args
        .next()
        .map_or(100_000, |s| s.parse().expect("threshold_ns: a number"));
    let region = Region::anonymous_with(&region_options()).expect("an anonymous region");
    let mut t = SwissTable::<u64, u64, _>::with_options_in(table_options(1), &region).unwrap();
    let mut before = t.stats();
    let (mut slow, mut worst_doubling) = (0u64, (0u64, 0u32));
    for i in 0..n {
        let k = key(i);
        let c0 = thread_cpu_ns();
        t.insert(k, k);
        let cpu = thread_cpu_ns() - c0;
        if cpu > threshold {
            let after = t.stats();
            let doubled = after.global_depth != before.global_depth;
            println!(
                "insert {i}: {:.0} us, {} segments added since the last report, {}depth {}, \
                 {} segments",
                cpu as f64 / 1e3,
                after.segments - before.segments,
                if doubled { "doubled to " } else { "" },
                after.global_depth,
                after.segments,
            );
            if doubled && cpu > worst_doubling.0 {
                worst_doubling = (cpu, after.global_depth);
            }
            slow += 1;
            before = after;
        } else if i % 1_000_000 == 0 {
            before = t.stats();
        }
    }
    println!(
        "{slow} inserts over {:.0} us; the slowest that doubled the directory: {:.0} us \
         (to depth {})",
        threshold as f64 / 1e3,
        worst_doubling.0 as f64 / 1e3,
        worst_doubling.1
    );
}
