//! How much of a split is the first touch of fresh memory: grows a table to `n` keys in a
//! fresh anonymous region, drops it, and grows two more tables in the same region, whose
//! segments then come from blocks (and pages) the first table already touched. The region
//! gives nothing back to the OS (`release_threshold` of 1 TiB), so the later growths take no
//! page faults. For each growth it prints the slowest insert, the 99.99th percentile, how
//! many inserts took over 50, 100 and 200 us, and the mean of the inserts over 20 us (the
//! splits), all in thread CPU time.
//!
//! ```text
//! cargo build --release -p offheap-swiss --example growth_reuse
//! taskset -c 1 target/release/examples/growth_reuse 5000000
//! ```
//!
//! Each insert is timed between two reads of the thread's CPU clock, which cost about 1.4 us
//! together on the project's VM, so the printed mean per insert is not the insert's cost;
//! the split figures are what this measures (docs/swiss-log.md, "Segment size at 50M keys").

mod common;

use common::{key, region_options, table_options};
use offheap_mmap::Region;
use offheap_swiss::SwissTable;
use offheap_testkit::thread_cpu_ns;
use std::rc::Rc;

fn grow(region: &Rc<Region>, n: u64, label: &str) {
    let mut t =
        SwissTable::<u64, u64, _>::with_options_in(table_options(1), Rc::clone(region)).unwrap();
    let mut times: Vec<u64> = Vec::with_capacity(n as usize);
    for i in 0..n {
        let k = key(i);
        let c0 = thread_cpu_ns();
        t.insert(k, k);
        times.push(thread_cpu_ns() - c0);
    }
    let over = |us: u64| times.iter().filter(|&&x| x > us * 1000).count();
    let (o50, o100, o200) = (over(50), over(100), over(200));
    let splits: Vec<u64> = times.iter().copied().filter(|&x| x > 20_000).collect();
    let split_mean = splits.iter().sum::<u64>() as f64 / splits.len().max(1) as f64;
    times.sort_unstable();
    println!(
        "{label}: worst {:.1} us, p99.99 {:.1} us, over 50/100/200 us: {}/{}/{}; \
         {} inserts over 20 us, mean {:.1} us",
        times[times.len() - 1] as f64 / 1e3,
        times[times.len() * 9999 / 10000] as f64 / 1e3,
        o50,
        o100,
        o200,
        splits.len(),
        split_mean / 1e3,
    );
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(5_000_000, |s| s.parse().expect("n: a number of keys"));
    let opts = region_options().release_threshold(1 << 40);
    let region = Rc::new(Region::anonymous_with(&opts).expect("an anonymous region"));
    grow(&region, n, "fresh memory ");
    grow(&region, n, "reused memory");
    grow(&region, n, "reused again ");
}
