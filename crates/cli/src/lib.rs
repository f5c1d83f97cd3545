//! The library behind the `offheap` command.
//!
//! * [`workload`]: the SharedHashFile workload (PUT, UPD, MIX, GET) run by real worker
//!   processes on one [`offheap::SharedMap`] file: the code behind `offheap bench`.
//! * [`codec`]: the text forms of byte strings that `dump` writes and `load` reads (escaped
//!   lines, JSON lines, hex).
//! * [`plot`]: the PNG plots of `docs/performance.md`, drawn with plotters and an embedded
//!   font (so they build and render without system fonts).
//!
//! See the crate's README for the command itself.

pub mod codec;
pub mod plot;
pub mod workload;
