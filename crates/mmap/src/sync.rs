//! The growth-visibility protocol, factored so loom can model-check it.
//!
//! A region's size lives in one 64-bit word of its header. The process that grows the
//! region (1) extends the file, (2) maps and initialises the new range, then (3) publishes
//! the new size with `Release` ([`publish_size`]). A process that meets an offset beyond
//! its view loads the size with `Acquire` ([`refresh_view`]), extends its own mapping up
//! to it, and only then reads. The Release/Acquire pair makes everything the grower did
//! before publishing (the file extension, the new block headers) visible to the reader.
//!
//! The real region uses `core`'s `AtomicU64` placed in the mapped header; under
//! `--cfg loom` the same functions are run on loom's atomics by the tests below.

use core::sync::atomic::Ordering;

/// A 64-bit size word: the std atomic in a real header, loom's in the model.
pub(crate) trait SizeWord {
    /// Loads the published size (`Acquire`).
    fn load_acquire(&self) -> u64;
    /// Raises the published size to at least `v` (`Release`); returns the previous value.
    fn publish_max(&self, v: u64) -> u64;
}

impl SizeWord for core::sync::atomic::AtomicU64 {
    #[inline]
    fn load_acquire(&self) -> u64 {
        self.load(Ordering::Acquire)
    }
    #[inline]
    fn publish_max(&self, v: u64) -> u64 {
        self.fetch_max(v, Ordering::Release)
    }
}

#[cfg(loom)]
impl SizeWord for loom::sync::atomic::AtomicU64 {
    fn load_acquire(&self) -> u64 {
        self.load(Ordering::Acquire)
    }
    fn publish_max(&self, v: u64) -> u64 {
        self.fetch_max(v, Ordering::Release)
    }
}

/// Writer side: the caller has already extended the backing file, mapped the new range
/// and initialised it; this makes the new size visible. Sizes only grow (`fetch_max`),
/// so a late publisher can never shrink what another one published.
#[inline]
pub(crate) fn publish_size<W: SizeWord>(word: &W, new_size: u64) {
    word.publish_max(new_size);
}

/// Reader side: if the published size exceeds `view`, calls `extend(view, size)` to map
/// the missing range and returns the new view; otherwise returns `view` unchanged.
/// A published size below the view is reported to `shrunk` (sizes never shrink, so that
/// means a corrupt header).
#[inline]
pub(crate) fn refresh_view<W: SizeWord, E>(
    word: &W,
    view: u64,
    extend: impl FnOnce(u64, u64) -> Result<(), E>,
    shrunk: impl FnOnce(u64) -> E,
) -> Result<u64, E> {
    let size = word.load_acquire();
    if size > view {
        extend(view, size)?;
        Ok(size)
    } else if size < view {
        Err(shrunk(size))
    } else {
        Ok(view)
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::{AtomicU64, AtomicUsize};
    use loom::sync::Arc;
    use loom::thread;

    const PAGES: usize = 3;

    /// A model of a region file shared by two processes: `len` is the file length
    /// (what `ftruncate` sets, in pages), `pages` the file's contents, `size` the
    /// header's size word (in pages).
    struct File {
        len: AtomicUsize,
        pages: Vec<UnsafeCell<u64>>,
        size: AtomicU64,
    }

    fn file() -> Arc<File> {
        let f = File {
            len: AtomicUsize::new(1),
            pages: (0..PAGES).map(|_| UnsafeCell::new(0)).collect(),
            size: AtomicU64::new(1),
        };
        f.pages[0].with_mut(|p| unsafe { *p = 100 });
        Arc::new(f)
    }

    /// Grower: extend the file, write the new pages, publish (the real `Region::grow`).
    fn grow(f: &File, to: usize) {
        f.len.store(to, Ordering::Relaxed);
        for i in 1..to {
            // SAFETY: loom's UnsafeCell checks this write races with no read.
            f.pages[i].with_mut(|p| unsafe { *p = 100 + i as u64 });
        }
        publish_size(&f.size, to as u64);
    }

    /// Reader: refresh the view (mapping only within the file), then read every page in it.
    fn read(f: &File) -> u64 {
        let view = refresh_view(
            &f.size,
            1,
            |_, new| {
                // Mapping beyond the file's end would SIGBUS: the protocol must
                // guarantee the reader sees the extended length.
                assert!(f.len.load(Ordering::Relaxed) >= new as usize);
                Ok::<(), ()>(())
            },
            |_| (),
        )
        .unwrap();
        let mut sum = 0;
        for i in 0..view as usize {
            // SAFETY: loom's UnsafeCell checks this read is ordered after the write.
            let v = f.pages[i].with(|p| unsafe { *p });
            assert_eq!(v, 100 + i as u64);
            sum += v;
        }
        sum
    }

    #[test]
    fn loom_reader_sees_grown_pages() {
        loom::model(|| {
            let f = file();
            let g = {
                let f = f.clone();
                thread::spawn(move || grow(&f, PAGES))
            };
            read(&f);
            g.join().unwrap();
        });
    }

    #[test]
    fn loom_two_readers_and_a_grower() {
        loom::model(|| {
            let f = file();
            let g = {
                let f = f.clone();
                thread::spawn(move || grow(&f, 2))
            };
            let r = {
                let f = f.clone();
                thread::spawn(move || read(&f))
            };
            read(&f);
            g.join().unwrap();
            r.join().unwrap();
        });
    }

    /// The model is sensitive: publishing with `Relaxed` lets the reader read a page
    /// before the grower's write is visible, which loom reports.
    #[test]
    #[should_panic]
    fn loom_relaxed_publish_is_caught() {
        loom::model(|| {
            let f = file();
            let g = {
                let f = f.clone();
                thread::spawn(move || {
                    f.len.store(2, Ordering::Relaxed);
                    f.pages[1].with_mut(|p| unsafe { *p = 101 });
                    f.size.fetch_max(2, Ordering::Relaxed);
                })
            };
            read(&f);
            g.join().unwrap();
        });
    }

    /// Without the file-length check, the same Relaxed bug shows as a data race on the
    /// new page, which loom's cell tracking reports.
    #[test]
    #[should_panic]
    fn loom_relaxed_publish_races_on_data() {
        loom::model(|| {
            let f = file();
            let g = {
                let f = f.clone();
                thread::spawn(move || {
                    f.pages[1].with_mut(|p| unsafe { *p = 101 });
                    f.size.fetch_max(2, Ordering::Relaxed);
                })
            };
            if f.size.load_acquire() == 2 {
                f.pages[1].with(|p| unsafe { *p });
            }
            g.join().unwrap();
        });
    }
}
