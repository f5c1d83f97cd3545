//! Helpers shared by the fuzz targets that mutate a valid file image (included with
//! `#[path = "common.rs"] mod common;`, not a target of its own). A target that mutates in
//! its own way uses some of them, so the unused ones are allowed.
#![allow(dead_code)]

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

/// Flips the bits `x` of one byte anywhere in `img`. `None` when the input has run out.
pub fn flip(img: &mut [u8], input: &mut Input<'_>) -> Option<()> {
    let (at, x) = (input.u32()?, input.byte()?);
    let len = img.len().max(1);
    if let Some(b) = img.get_mut(at as usize % len) {
        *b ^= x;
    }
    Some(())
}

/// Overwrites an aligned 8-byte word of `img`, within its first `window` bytes (the whole
/// image when `None`). `None` when the input has run out.
pub fn overwrite_word(img: &mut [u8], input: &mut Input<'_>, window: Option<usize>) -> Option<()> {
    let (at, v) = (input.u32()?, input.u64()?);
    let span = window.unwrap_or(img.len()).max(1);
    let at = (at as usize % span) & !7;
    if at + 8 <= img.len() {
        img[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }
    Some(())
}

/// Truncates `img` to a length drawn from the input. `None` when the input has run out.
pub fn truncate(img: &mut Vec<u8>, input: &mut Input<'_>) -> Option<()> {
    let n = input.u32()?;
    let len = img.len() + 1;
    img.truncate(n as usize % len);
    Some(())
}

/// A seed image: `build` writes a valid file at a fresh scratch path (and returns what the
/// target wants to know of it); the file's bytes come back with that, and the file goes.
pub fn seed_file<T>(what: &str, build: impl FnOnce(&std::path::Path) -> T) -> (T, Vec<u8>) {
    let path = scratch_path(what);
    let _ = std::fs::remove_file(&path);
    let out = build(&path);
    let mut image = take_file(&path);
    // The same image in every run (no creation time, pid or pid namespace in it), so that
    // a crash found on it reproduces.
    offheap_mmap::__fuzz::normalize(&mut image);
    (out, image)
}

/// The hash seed of the map targets' seed images: 7, or `FUZZ_SEED` from the environment,
/// to replay an input on other images (an input that hangs or crashes on one seed only:
/// `for s in $(seq 300); do FUZZ_SEED=$s target/.../sharedmap_file -timeout=3 INPUT; done`).
pub fn image_seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7)
}

/// Short keys (inline in a map's slot) and long ones (records in its arena): what the map
/// file targets store.
pub fn mixed_key(i: u32) -> Vec<u8> {
    if i % 3 == 0 {
        format!("a long key number {i:08}").into_bytes()
    } else {
        i.to_le_bytes().to_vec()
    }
}

/// The bytes of the seed file at `path`, which is then removed.
pub fn take_file(path: &std::path::Path) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("read the seed file");
    let _ = std::fs::remove_file(path);
    bytes
}

/// Mutates `img` as the input says, until a separator byte or the end of the input: bit
/// flips and aligned word overwrites anywhere, and truncation.
pub fn mutate_anywhere(img: &mut Vec<u8>, input: &mut Input<'_>) {
    while let Some(kind) = input.byte() {
        let more = match kind % 6 {
            0 | 1 => flip(img, input),
            2 | 3 => overwrite_word(img, input, None),
            4 => truncate(img, input),
            _ => None,
        };
        if more.is_none() {
            break;
        }
    }
}

/// Writes `img` to the scratch file `what`, opens it with `open` and unlinks the file (a
/// mapping keeps it alive; nothing is left behind).
pub fn open_image<T>(img: &[u8], what: &str, open: impl FnOnce(&std::path::Path) -> T) -> T {
    let path = scratch_path(what);
    std::fs::write(&path, img).unwrap();
    let opened = open(&path);
    let _ = std::fs::remove_file(&path);
    opened
}
