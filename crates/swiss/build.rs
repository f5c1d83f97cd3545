//! Declares the `swiss_portable` cfg, which forces the portable (SWAR) group matcher
//! on x86_64 too: `RUSTFLAGS="--cfg swiss_portable" cargo test -p offheap-swiss`.
//! (A cfg rather than a cargo feature, so `--all-features` keeps testing the SSE2 path.)
fn main() {
    println!("cargo::rustc-check-cfg=cfg(swiss_portable)");
    println!("cargo::rerun-if-changed=build.rs");
}
