//! Setup shared by the examples that measure ours against hashbrown (`insert_ab`,
//! `ops_profile`, `reinsert`). Not an example itself: Cargo builds only `examples/*.rs` and
//! `examples/*/main.rs`.

use offheap_mmap::RegionOptions;
use offheap_swiss::TableOptions;

/// The key of index `i`: splitmix64, as in the benchmarks.
pub fn key(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Options of our table: a fixed `seed`, and the segment size from the environment variable
/// `SEGMENT_SLOTS` (default 4096, the library's default).
pub fn table_options(seed: u64) -> TableOptions {
    let slots = std::env::var("SEGMENT_SLOTS").map_or(4096, |v| v.parse().expect("SEGMENT_SLOTS"));
    TableOptions::new().seed(seed).segment_slots(slots)
}

/// Options of our table's anonymous region: the library's defaults, huge pages if the
/// environment variable `HUGE` is set, and room for 16 GiB.
pub fn region_options() -> RegionOptions {
    offheap_swiss::default_region_options()
        .huge_pages(std::env::var_os("HUGE").is_some())
        .max_size(16 << 30)
}
