//! Opens of one file at the same moment, by several handles, of a copy of a map taken while
//! it was in use. The copy names a user that does not have it open (this process, through
//! the original file's handle): a lock that user held, or its record of a table open.
//! Exactly one of the opens must find the file alone and clear that record; before
//! `RegionOptions::hold_alone`, an open that found the file unused let the next one in before
//! its check, so both found it shared, and neither cleared anything.
//!
//! A test binary of its own: a process that another test thread forks holds a copy of this
//! one's descriptors until it execs, and an open would not find the file alone then.

#![cfg(all(target_os = "linux", not(miri)))] // where record locks are taken; files

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use offheap::{BytesMap, Error, Map, SharedMap, SharedMapOptions};

/// Rounds of each race: without the hold, at least one in a few had no open that found the
/// file alone.
const ROUNDS: usize = 40;
/// Handles that open at once.
const OPENERS: usize = 3;

/// Runs `f` in a thread and waits for it at most `limit`: an operation that waits forever on
/// a stale lock fails the test instead of hanging it.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .expect("an operation waited on a lock that a copy of the file names")
}

/// Copies `from` to a fresh `to` and has [`OPENERS`] threads call `open(to)` at the same
/// moment; each result is then given to `then` (in its thread, before any handle is dropped).
fn race<M: 'static, R: Send + 'static>(
    from: &Path,
    to: &Path,
    open: fn(&Path) -> Result<M, Error>,
    then: fn(usize, Result<M, Error>) -> R,
) -> Vec<R> {
    std::fs::copy(from, to).unwrap();
    let gate = Arc::new(Barrier::new(OPENERS));
    let threads: Vec<_> = (0..OPENERS)
        .map(|t| {
            let (gate, to) = (gate.clone(), PathBuf::from(to));
            std::thread::spawn(move || {
                gate.wait();
                let opened = open(&to);
                // Every open has returned before any handle is dropped.
                gate.wait();
                then(t, opened)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// The paths of a live file, its copy, and the copies that race (`ext`: the extension).
fn paths(dir: &tempfile::TempDir, ext: &str) -> (PathBuf, PathBuf, PathBuf) {
    let at = |name: &str| dir.path().join(format!("{name}.{ext}"));
    (at("live"), at("copy"), at("racing"))
}

/// A copy of a `SharedMap` taken while this process held a read lock of its only shard:
/// the copy's reader slot names this process, and a write waits for it forever unless an
/// open cleared it.
#[test]
fn of_opens_at_once_of_a_shared_map_copy_one_clears_its_stale_locks() {
    let dir = tempfile::tempdir().unwrap();
    let (live, copy, racing) = paths(&dir, "map");
    let m = SharedMap::create_with(&live, &SharedMapOptions::new().shards(1)).unwrap();
    for k in 0..200u32 {
        m.insert(&k.to_le_bytes(), &k.to_le_bytes()).unwrap();
    }
    m.flush().unwrap();
    m.get_with(&0u32.to_le_bytes(), |_| std::fs::copy(&live, &copy))
        .unwrap()
        .unwrap()
        .unwrap();
    let (copy, racing) = (Arc::new(copy), Arc::new(racing));
    within(Duration::from_secs(60), move || {
        for round in 0..ROUNDS {
            let lens = race(
                &copy,
                &racing,
                |p| SharedMap::open(p),
                |t, m| {
                    let m = m.unwrap();
                    // A write: it waits for every reader slot to be free.
                    m.insert(&(1000 + t as u32).to_le_bytes(), b"v").unwrap();
                    m.len()
                },
            );
            assert!(lens.iter().all(|&n| n >= 201), "round {round}: {lens:?}");
        }
    });
    drop(m);
}

/// A copy of a `Map` and of a `BytesMap` taken while they were open records this process
/// as their user: exactly one of the opens at once takes the table over, the others find
/// it in use (by that one).
#[test]
fn of_opens_at_once_of_a_table_copy_exactly_one_takes_it_over() {
    let dir = tempfile::tempdir().unwrap();
    let (live, copy, racing) = paths(&dir, "map");
    let mut m: Map<u64, u64> = Map::create(&live).unwrap();
    for k in 0..1000 {
        m.insert(k, k).unwrap();
    }
    m.flush().unwrap();
    std::fs::copy(&live, &copy).unwrap();
    let (blive, bcopy, bracing) = paths(&dir, "bmap");
    let mut b = BytesMap::create(&blive).unwrap();
    for k in 0..1000u32 {
        b.insert(&k.to_le_bytes(), b"value").unwrap();
    }
    b.flush().unwrap();
    std::fs::copy(&blive, &bcopy).unwrap();
    // The length of the one that opened; `Err` for one that found the table in use.
    let outcome = |r: &Result<usize, Error>| match r {
        Ok(n) => Ok(*n),
        Err(Error::Table(offheap::swiss::Error::InUse { .. })) => Err(()),
        Err(e) => panic!("{e}"),
    };
    for round in 0..ROUNDS {
        let maps = race(
            &copy,
            &racing,
            |p| Map::<u64, u64>::open(p),
            |_, r| r.map(|m| m.len()),
        );
        let opened: Vec<_> = maps.iter().map(outcome).collect();
        assert_eq!(
            opened.iter().filter(|o| o.is_ok()).count(),
            1,
            "Map, round {round}: {opened:?}"
        );
        let open: fn(&Path) -> Result<BytesMap, Error> = if round % 2 == 0 {
            |p| BytesMap::open(p)
        } else {
            |p| BytesMap::open_or_create(p)
        };
        let bmaps = race(&bcopy, &bracing, open, |_, r| r.map(|m| m.len()));
        let opened: Vec<_> = bmaps.iter().map(outcome).collect();
        assert_eq!(
            opened.iter().filter(|o| o.is_ok()).count(),
            1,
            "BytesMap, round {round}: {opened:?}"
        );
    }
    m.insert(5000, 1).unwrap();
    b.insert(b"x", b"y").unwrap();
}
