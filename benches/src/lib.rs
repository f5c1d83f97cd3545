//! Shared helpers for the offheap benchmark suites (see `benches/benches/`).
