//! Helpers shared by the fuzz targets that mutate a valid file image (included with
//! `#[path = "common.rs"] mod common;`, not a target of its own).

use std::path::PathBuf;

/// A per-process scratch file name in /dev/shm (else the temp dir): `offheap-fuzz-PID-WHAT`.
pub fn scratch_path(what: &str) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("offheap-fuzz-{}-{what}", std::process::id()))
}

/// The fuzzer's bytes read as a stream of little-endian integers; `None` at the end.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.byte()?,
            self.byte()?,
            self.byte()?,
            self.byte()?,
        ]))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from(self.u32()?) | u64::from(self.u32()?) << 32)
    }
}
