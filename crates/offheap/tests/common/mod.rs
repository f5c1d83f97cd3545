//! Settings shared by the proptest model tests (`model.rs`, `shared.rs`).

/// The most operations in one generated case (few under miri, which is slow).
pub fn max_ops() -> usize {
    if cfg!(miri) {
        12
    } else {
        250
    }
}

/// Cases per property: `PROPTEST_CASES` or `default`, at most four under miri (which runs
/// each case about a thousand times slower).
pub fn cases(default: u32) -> u32 {
    let cap = if cfg!(miri) { 4 } else { u32::MAX };
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    n.min(cap)
}
