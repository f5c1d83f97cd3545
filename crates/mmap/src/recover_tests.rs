//! `Region::recover` after a simulated kill at every allocator write of alloc, free and
//! growth: the `kill` hook lets N writes through and drops every later one, as if the
//! process had died at that instruction boundary. After the kill, `recover` and `check`
//! must pass, every live allocation must hold its bytes, no two allocations may overlap,
//! and the allocator must go on working.

use super::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Alloc(u64, u64),
    Free(usize),
}

std::thread_local! {
    /// Recoveries that rolled a growth forward (or took a mapped growth in).
    static GROWN: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    /// Kills that left a closed file whose header a plain open refuses (torn counters,
    /// lists or bitmap), reopened with `open_torn`.
    static TORN_OPENS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// Where the region lives, and who recovers it after the kill.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// Anonymous memory: the killed `Region` itself recovers.
    Anonymous,
    /// A file that a second `Region` (another process) has open from the start; it
    /// recovers, with its own older view of the file.
    FileOther(&'a Path),
    /// A file that nobody has open after the kill: it is reopened from its path.
    FileClosed(&'a Path),
}

/// A live allocation: offset, length, pattern seed.
type Live = Vec<(Offset, u64, u64)>;

fn gen(rng: &mut Rng, live: &Live) -> Op {
    let x = rng.next();
    if !live.is_empty() && x % 3 == 0 {
        return Op::Free((x >> 8) as usize % live.len());
    }
    const SIZES: [u64; 7] = [8, 24, 40, 100, 300, 1000, 5000];
    const ALIGNS: [u64; 6] = [8, 16, 16, 64, 256, 4096];
    Op::Alloc(
        SIZES[(x >> 8) as usize % SIZES.len()],
        ALIGNS[(x >> 16) as usize % ALIGNS.len()],
    )
}

fn byte(seed: u64, i: u64) -> u8 {
    (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i) >> 7) as u8
}

fn fill(r: &Region, (off, len, seed): (Offset, u64, u64)) {
    let p = r.ptr(off, len).unwrap().as_ptr();
    for i in 0..len {
        // SAFETY: `off..off + len` is a live allocation of `r`.
        unsafe { p.add(i as usize).write(byte(seed, i)) };
    }
}

fn verify(r: &Region, live: &Live) {
    for &(off, len, seed) in live {
        let p = r.ptr(off, len).unwrap().as_ptr();
        for i in 0..len {
            // SAFETY: as in `fill`.
            let got = unsafe { p.add(i as usize).read() };
            assert_eq!(
                got,
                byte(seed, i),
                "allocation {off:?}+{len} overwritten at {i}"
            );
        }
    }
    let mut spans: Vec<(u64, u64)> = live.iter().map(|&(o, l, _)| (o.get(), l)).collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "overlapping allocations {w:?}");
    }
}

fn opts() -> RegionOptions {
    let page = os::page_size();
    RegionOptions::new()
        .initial_size(0)
        .max_size(if cfg!(miri) { 1 << 20 } else { 64 << 20 })
        .growth_step(page)
        .release_threshold(2 * page)
}

/// Runs `steps` ops of scenario `seed`; op `kill_step` is killed after `n` writes, and
/// the region is recovered as `mode` says. Returns whether the kill happened (`false`:
/// the op completed in fewer than `n` writes).
fn run(seed: u64, steps: usize, kill_step: usize, n: u64, mode: Mode<'_>) -> bool {
    let (mut r, mut other) = match mode {
        Mode::FileOther(p) | Mode::FileClosed(p) => {
            let _ = std::fs::remove_file(p);
            let r = Region::create(p, &opts()).unwrap();
            let other =
                matches!(mode, Mode::FileOther(_)).then(|| Region::open_with(p, &opts()).unwrap());
            (r, other)
        }
        Mode::Anonymous => (Region::anonymous_with(&opts()).unwrap(), None),
    };
    let mut rng = Rng(seed | 1);
    let mut live: Live = Vec::new();
    let mut killed = false;
    for step in 0..steps {
        let op = gen(&mut rng, &live);
        if step == kill_step {
            kill::arm(n);
        }
        let mut freeing = None;
        let got = match op {
            Op::Alloc(size, align) => r.alloc(size, align).map(|off| {
                assert_eq!(off.get() % align, 0);
                Some((off, size, rng.next()))
            }),
            Op::Free(i) => {
                let (off, _, _) = live.swap_remove(i);
                freeing = Some(off);
                r.free(off).map(|()| None)
            }
        };
        if step != kill_step {
            if let Some(a) = got.unwrap() {
                fill(&r, a);
                live.push(a);
            }
            continue;
        }
        killed = kill::dead();
        kill::arm(u64::MAX);
        if !killed {
            if let Some(a) = got.unwrap() {
                fill(&r, a);
                live.push(a);
            }
            continue;
        }
        if let Some(o) = other.take() {
            r = o;
        }
        if let Mode::FileClosed(p) = mode {
            r = reopen_closed(r, p);
        }
        let rep = r
            .recover()
            .unwrap_or_else(|e| panic!("step {step} {op:?} killed after {n} writes: {e}"));
        r.check()
            .unwrap_or_else(|e| panic!("step {step} {op:?} killed after {n} writes: {e}"));
        if rep.grown_to.is_some() {
            GROWN.with(|g| g.set(g.get() + 1));
        }
        let again = r.recover().unwrap();
        assert!(
            !again.rebuilt,
            "recover is not idempotent: {rep:?} then {again:?}"
        );
        assert_eq!(again.allocations, rep.allocations);
        // An allocation the dead process got (all its header writes done) stays live.
        if let Ok(Some(a)) = got {
            fill(&r, a);
            live.push(a);
        }
        verify(&r, &live);
        let leaked = rep.allocations - live.len() as u64;
        assert!(leaked <= 1, "{leaked} blocks leaked by one killed op");
        if let Some(off) = freeing {
            // A free cut short either left its block allocated, or freed it: then its
            // offset must not pass for a live allocation (a stale header inside a merged
            // free block once did, after a kill between the merge's write and its own).
            assert_eq!(
                r.allocation_size(off).is_ok(),
                leaked == 1,
                "step {step} {op:?} killed after {n} writes: the freed offset's liveness"
            );
        }
    }
    verify(&r, &live);
    r.check().unwrap();
    for (off, _, _) in live.drain(..) {
        r.free(off).unwrap();
    }
    let c = r.check().unwrap();
    assert!(c.allocations <= u64::from(killed));
    killed
}

/// The killed process's `Region` is gone (dropped: its mapping closed) and the file is
/// opened again from its path. A plain open either succeeds or, when the kill tore the
/// header's derived fields, refuses the file with `Corrupt` and leaves it byte-identical;
/// `open_torn` opens it, and then allocation and freeing wait for `recover`.
fn reopen_closed(killed: Region, p: &Path) -> Region {
    drop(killed);
    let before = std::fs::read(p).unwrap();
    match Region::open_with(p, &opts()) {
        Ok(_) => {}
        Err(Error::Corrupt { offset: 0, .. }) => {
            assert_eq!(
                std::fs::read(p).unwrap(),
                before,
                "a refused open wrote the file"
            );
            TORN_OPENS.with(|t| t.set(t.get() + 1));
        }
        Err(e) => panic!("reopening a killed region's file: {e}"),
    }
    let r = Region::open_with(p, &opts().open_torn(true)).unwrap();
    if r.needs_recovery() {
        assert!(matches!(r.alloc(8, 8), Err(Error::NeedsRecovery)));
        let some = Offset::new(r.data_start + BLOCK_HEADER).unwrap();
        assert!(matches!(r.free(some), Err(Error::NeedsRecovery)));
    }
    r
}

fn kill_everywhere(seed: u64, steps: usize, mode: Mode<'_>) -> u64 {
    let mut kills = 0;
    for kill_step in 0..steps {
        let mut n = 0;
        while run(seed, steps, kill_step, n, mode) {
            n += 1;
            kills += 1;
        }
    }
    kills
}

#[test]
fn recover_after_a_kill_at_every_write_anonymous() {
    let (seeds, steps) = if cfg!(miri) { (1, 6) } else { (4, 60) };
    let mut kills = 0;
    for seed in 0..seeds {
        kills += kill_everywhere(0x5EED + seed, steps, Mode::Anonymous);
    }
    assert!(kills > steps as u64, "only {kills} kills simulated");
}

#[test]
#[cfg_attr(miri, ignore)]
fn recover_after_a_kill_at_every_write_file_other_process() {
    kill_everywhere_in_a_file("other", 0xF11E, |p| Mode::FileOther(p));
    let grown = GROWN.with(|g| g.get());
    assert!(grown > 0, "no interrupted growth was rolled forward");
}

/// Two scenarios (seeds `seed` and `seed + 1`) of 40 steps, killed at every write of every
/// step, on a file in a scratch directory of its own, recovered as `mode` says.
fn kill_everywhere_in_a_file(name: &str, seed: u64, mode: fn(&Path) -> Mode<'_>) {
    let dir = scratch_dir(name);
    let path = dir.join("r.region");
    let kills: u64 = (0..2)
        .map(|s| kill_everywhere(seed + s, 40, mode(&path)))
        .sum();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(kills > 40, "only {kills} kills simulated");
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "offheap-recover-{name}-{}-{:x}",
        std::process::id(),
        creation_stamp()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The file case with nobody left: every kill's file is closed and reopened from its path
/// (`open_torn` when its header is torn), then recovered.
#[test]
#[cfg_attr(miri, ignore)]
fn recover_after_a_kill_at_every_write_file_closed() {
    kill_everywhere_in_a_file("closed", 0xC105, |p| Mode::FileClosed(p));
    let torn = TORN_OPENS.with(|t| t.get());
    assert!(torn > 0, "no kill left a header that a plain open refuses");
}

/// A sound file opened with `open_torn` needs no recovery and works at once.
#[test]
#[cfg_attr(miri, ignore)]
fn open_torn_on_a_sound_file_changes_nothing() {
    let dir = scratch_dir("sound");
    let path = dir.join("r.region");
    let r = Region::create(&path, &opts()).unwrap();
    let a = r.alloc(100, 8).unwrap();
    drop(r);
    let r = Region::open_with(&path, &opts().open_torn(true)).unwrap();
    assert!(!r.needs_recovery());
    let b = r.alloc(100, 8).unwrap();
    r.free(a).unwrap();
    r.free(b).unwrap();
    r.check().unwrap();
    drop(r);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn recover_on_a_sound_region_writes_nothing() {
    let r = Region::anonymous_with(&opts()).unwrap();
    let a = r.alloc(100, 8).unwrap();
    let _b = r.alloc(200, 8).unwrap();
    r.free(a).unwrap();
    let rep = r.recover().unwrap();
    assert!(!rep.rebuilt);
    assert_eq!((rep.allocations, rep.free_blocks), (1, 2));
}

#[test]
fn recover_rebuilds_lists_and_counters() {
    let r = Region::anonymous_with(&opts()).unwrap();
    let offs: Vec<Offset> = (0..8).map(|i| r.alloc(64 * (i + 1), 16).unwrap()).collect();
    for &o in offs.iter().step_by(2) {
        r.free(o).unwrap();
    }
    let before = r.check().unwrap();
    // Tear every piece of derived state: lists, bitmap, counters, last block.
    for bin in 0..BINS {
        r.hset(F_BINS_HEADS + bin * 8, 0);
    }
    r.hset(F_BITMAP, !0);
    r.hset(F_IN_USE, 7);
    r.hset(F_LAST_BLOCK, 0);
    assert!(r.check().is_err());
    let rep = r.recover().unwrap();
    assert!(rep.rebuilt && rep.counters_fixed);
    let after = r.check().unwrap();
    assert_eq!(before, after);
}

#[test]
fn recover_merges_adjacent_free_blocks() {
    let r = Region::anonymous_with(&opts()).unwrap();
    let a = r.alloc(100, 16).unwrap();
    let b = r.alloc(100, 16).unwrap();
    let _c = r.alloc(100, 16).unwrap();
    // Mark `b`'s block free by its header alone, next to the free `a` (as a torn free
    // would never do, but a torn aligned carve does).
    r.free(a).unwrap();
    let hb = b.get() - BLOCK_HEADER + 8;
    let v = r.rd(hb).unwrap();
    r.wr(hb, (v & !FLAG_MASK) | FREE).unwrap();
    let rep = r.recover().unwrap();
    assert_eq!(rep.merged, 1);
    let c = r.check().unwrap();
    assert_eq!(c.allocations, 1);
}

#[test]
fn recover_refuses_headers_that_do_not_tile() {
    let r = Region::anonymous_with(&opts()).unwrap();
    let a = r.alloc(100, 16).unwrap();
    let _b = r.alloc(100, 16).unwrap();
    let ha = a.get() - BLOCK_HEADER + 8;
    r.wr(ha, 3 << 4).unwrap(); // 48 bytes: lands inside `a`'s payload
    r.wr(a.get() + 24, 0).unwrap(); // where the chain now looks for a header
    assert!(matches!(r.recover(), Err(Error::Corrupt { .. })));
}

/// A free block whose size reaches past the address space (a hostile header, which the
/// region fuzz target wrote) is `Corrupt` to `recover`, not an overflow: `recover` takes a
/// free block that reaches past the region for a growth cut short, and its end was
/// `b + size`, unchecked.
#[test]
fn recover_refuses_a_free_block_past_the_address_space() {
    let r = Region::anonymous_with(&opts()).unwrap();
    let a = r.alloc(100, 16).unwrap();
    r.free(a).unwrap();
    let last = r.hget(F_LAST_BLOCK);
    r.wr(last + 8, !FLAG_MASK | FREE).unwrap();
    assert!(matches!(r.recover(), Err(Error::Corrupt { .. })));
}

/// The mark of the record in `alloc_into`'s test.
const MARK: u64 = 0xFD << 56;

/// One scenario of `steps` ops (those of `gen`) in anonymous memory whose allocations and
/// frees go through `alloc_into` and `free_recorded` (with `into`) or `alloc` and `free`
/// (a free's record names its block before the op); op `kill_step` is killed after `n`
/// writes and the region recovered. With `into`, the op's record is cleared after each op
/// that completes (its owner took the block), and after the kill a record that names a
/// live allocation counts as owned. Returns whether the kill happened, and how many
/// blocks then had no owner.
fn run_into(seed: u64, steps: usize, kill_step: usize, n: u64, into: bool) -> (bool, u64) {
    let r = Region::anonymous_with(&opts()).unwrap();
    let record = r.alloc(8, 8).unwrap();
    let word = r.ptr(record, 8).unwrap().as_ptr().cast::<u64>();
    // SAFETY: an 8-byte, 8-aligned live allocation of `r` (so at every access below).
    unsafe { word.write(0) };
    let mut rng = Rng(seed | 1);
    let mut live: Live = Vec::new();
    for step in 0..steps {
        let op = gen(&mut rng, &live);
        if step == kill_step {
            kill::arm(n);
        }
        let mut freeing = None;
        let got = match op {
            Op::Alloc(size, align) if into => r.alloc_into(size, align, record, 0, MARK),
            Op::Alloc(size, align) => r.alloc(size, align),
            Op::Free(i) if into => {
                let (off, _, _) = live.swap_remove(i);
                freeing = Some(off);
                // The record names the block being given back; the free clears it.
                // SAFETY: as above.
                unsafe { word.write(off.get() | MARK) };
                r.free_recorded(off, record, 0).map(|()| off)
            }
            Op::Free(i) => {
                let (off, _, _) = live.swap_remove(i);
                freeing = Some(off);
                r.free(off).map(|()| off)
            }
        };
        let killed = step == kill_step && kill::dead();
        kill::arm(u64::MAX);
        if !killed {
            let off = got.unwrap();
            if let Op::Alloc(size, _) = op {
                let a = (off, size, rng.next());
                fill(&r, a);
                live.push(a);
            }
            // SAFETY: as above.
            unsafe { word.write(0) };
            if step == kill_step {
                return (false, 0);
            }
            continue;
        }
        r.recover().unwrap();
        r.check().unwrap();
        // SAFETY: as above.
        let w = unsafe { word.read() };
        // A free cut short before its write leaves the block with its owner.
        if let Some(off) = freeing {
            let allocated = r.allocation_size(off).is_ok();
            if allocated {
                live.push((off, 0, 0));
            }
            if into {
                // The record names the block exactly while it is allocated: cleared by the
                // free (or by the recovery, which finishes what the free left in flight),
                // never before it (a leak) or after it (a record of a freed block).
                let want = if allocated { off.get() | MARK } else { 0 };
                assert_eq!(w, want, "a free's record disagrees with its block");
            }
        } else if into && w != 0 {
            // The record is the allocation's: it was 0 before the op, and it is stored only
            // once the block is allocated (by the op, or by the recovery, which finishes
            // what the op left in flight). A record of a block that is not allocated could
            // be handed to another user next and then freed as this one's.
            assert_eq!(w & MARK, MARK);
            let off = Offset::new(w & !MARK).unwrap();
            assert!(
                r.allocation_size(off).is_ok(),
                "a record names a block that is not allocated"
            );
            live.push((off, 0, 0));
        }
        verify(&r, &live);
        let c = r.check().unwrap();
        return (true, c.allocations - 1 - live.len() as u64);
    }
    unreachable!("the kill step is one of the steps");
}

/// `alloc_into` leaves no kill point that leaks its block, and no record of a block that is
/// not allocated: the recovery stores the record of an allocation that was made and not
/// yet recorded. `free_recorded` leaves its record naming the block exactly while the block
/// is allocated (the recovery clears the record of a free that was made). `alloc` leaks at each write after its commit (the boundary tag, the
/// counters), every one a block that nothing names. (Before the recovery finished the
/// record, the kill point between the allocation's write and the record's leaked: 76 of
/// them in these scenarios, and a real SIGKILL test in offheap-swiss caught it in a debug
/// build. Storing the record before the allocation's write closed the leak, but left a
/// record of a free block, which the assertion in `run_into` refuses.)
#[test]
fn records_of_alloc_into_and_free_recorded_survive_a_kill_at_every_write() {
    let (seeds, steps) = if cfg!(miri) { (1, 6) } else { (3, 40) };
    let (mut plain, mut recorded) = (0, 0);
    for seed in 0..seeds {
        for kill_step in 0..steps {
            for into in [false, true] {
                let (mut n, mut leaking) = (0, 0);
                loop {
                    let (killed, leaked) = run_into(0xA110C + seed, steps, kill_step, n, into);
                    if !killed {
                        break;
                    }
                    assert!(leaked <= 1, "{leaked} blocks leaked by one killed op");
                    leaking += leaked;
                    n += 1;
                }
                if into {
                    assert_eq!(leaking, 0, "step {kill_step}: kill points leak");
                    recorded += leaking;
                } else {
                    plain += leaking;
                }
            }
        }
    }
    eprintln!("kill points that leak a block: alloc {plain}, alloc_into {recorded}");
    // The scenarios reach kills that leak (else the zero above proves nothing).
    assert!(plain > 0, "no kill point of alloc leaked a block");
}

#[test]
fn alloc_into_refuses_a_bad_record() {
    let r = Region::anonymous_with(&opts()).unwrap();
    let rec = r.alloc(16, 8).unwrap();
    let bad = |e: Result<Offset, Error>| matches!(e, Err(Error::InvalidRecord(_)));
    assert!(bad(r.alloc_into(8, 8, rec, 4, MARK)), "unaligned place");
    assert!(bad(r.alloc_into(8, 8, rec, 16, MARK)), "past the block");
    assert!(
        bad(r.alloc_into(8, 8, rec, 0, 1 << 40)),
        "mark in offset bits"
    );
    let gone = r.alloc(16, 8).unwrap();
    r.free(gone).unwrap();
    assert!(bad(r.alloc_into(8, 8, gone, 0, MARK)), "freed record");
    assert_eq!(
        r.check().unwrap().allocations,
        1,
        "a refused call allocated"
    );
    let a = r.alloc_into(8, 8, rec, 8, MARK).unwrap();
    // SAFETY: `rec` is a live 16-byte allocation, 8-aligned.
    let w = unsafe { r.ptr(rec, 16).unwrap().as_ptr().cast::<u64>().add(1).read() };
    assert_eq!(w, a.get() | MARK);
}

/// A process killed inside `alloc_into` at each of its writes, its file closed and opened
/// again: while the allocation's intent is in flight a plain open refuses the file (its
/// bookkeeping is torn) and leaves it as it was; `open_torn` then `recover` completes the
/// record exactly when the allocation was made, and clears the intent. Afterwards the
/// record names a live block or is as it was (0), and nothing leaked.
#[test]
#[cfg_attr(miri, ignore)]
fn recover_finishes_the_record_of_an_alloc_into_cut_short() {
    let dir = scratch_dir("into");
    let path = dir.join("r.region");
    let (mut finished, mut refused, mut n) = (0, 0, 0);
    loop {
        let _ = std::fs::remove_file(&path);
        let r = Region::create(&path, &opts()).unwrap();
        let record = r.alloc(16, 8).unwrap();
        let word = |r: &Region| {
            // SAFETY: `record` is a live 16-byte allocation, 8-aligned, in every mapping.
            unsafe {
                r.ptr(record, 16)
                    .unwrap()
                    .as_ptr()
                    .cast::<u64>()
                    .add(1)
                    .read()
            }
        };
        kill::arm(n);
        let got = r.alloc_into(300, 64, record, 8, MARK);
        let killed = kill::dead();
        kill::arm(u64::MAX);
        if !killed {
            let a = got.unwrap();
            assert_eq!(word(&r), a.get() | MARK);
            break;
        }
        let in_flight = r.hget(F_INTO_WORD) != 0;
        drop(r);
        let before = std::fs::read(&path).unwrap();
        match Region::open_with(&path, &opts()) {
            Err(Error::Corrupt { offset: 0, .. }) => {
                refused += 1;
                assert_eq!(std::fs::read(&path).unwrap(), before);
            }
            Ok(_) => assert!(!in_flight, "kill {n}: opened with a record in flight"),
            Err(e) => panic!("kill {n}: {e}"),
        }
        let r = Region::open_with(&path, &opts().open_torn(true)).unwrap();
        let rep = r.recover().unwrap();
        r.check().unwrap();
        assert_eq!(r.hget(F_INTO_WORD), 0, "kill {n}: intent left set");
        let w = word(&r);
        let blocks = r.check().unwrap().allocations;
        if w == 0 {
            assert!(!rep.record_finished);
            assert_eq!(blocks, 1, "kill {n}: the block leaked");
        } else {
            let a = Offset::new(w & !MARK).unwrap();
            assert!(r.allocation_size(a).unwrap() >= 300, "kill {n}");
            assert_eq!(blocks, 2, "kill {n}");
            finished += usize::from(rep.record_finished);
            // The allocator goes on, and the recorded block is this caller's to free.
            r.free(a).unwrap();
            r.check().unwrap();
        }
        n += 1;
    }
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!(
        "{n} kill points: {finished} records finished by recover, {refused} plain opens refused"
    );
    assert!(n > 3, "only {n} kill points");
    assert!(
        finished > 0,
        "no kill fell between the allocation and its record"
    );
    assert!(refused > 0, "no kill left a file that a plain open refuses");
}

/// An intent is untrusted like the rest of a file: `recover` stores its record only into a
/// word inside the live block the intent names, and only when the named allocation is
/// live; otherwise it leaves the word alone, and clears the intent either way.
#[test]
fn recover_ignores_an_intent_that_does_not_check_out() {
    let r = Region::anonymous_with(&opts()).unwrap();
    let rec = r.alloc(16, 8).unwrap();
    let made = r.alloc(40, 8).unwrap();
    let gone = r.alloc(40, 8).unwrap();
    r.free(gone).unwrap();
    let word = rec.get() + 8;
    r.wr(word, 7).unwrap();
    let intent = |word: u64, value: u64, block: u64| {
        r.hset(F_INTO_TARGET, value & !MARK);
        r.hset(F_INTO_VALUE, value);
        r.hset(F_INTO_OLD, r.rd(word).unwrap());
        r.hset(F_INTO_BLOCK, block);
        r.hset(F_INTO_WORD, word);
        assert!(r.check().is_err(), "an intent in flight passed check");
    };
    // The word is a block header (the allocation `made`'s), not in the record's block.
    let header = made.get() - 8;
    let before = r.rd(header).unwrap();
    intent(header, made.get() | MARK, rec.get());
    assert!(!r.recover().unwrap().record_finished);
    assert_eq!(r.rd(header).unwrap(), before);
    // The word's block is not a live allocation.
    intent(word, made.get() | MARK, gone.get());
    assert!(!r.recover().unwrap().record_finished);
    // The allocation it names is not live.
    intent(word, gone.get() | MARK, rec.get());
    assert!(!r.recover().unwrap().record_finished);
    assert_eq!(r.rd(word).unwrap(), 7);
    // All of it checks out: stored.
    intent(word, made.get() | MARK, rec.get());
    assert!(r.recover().unwrap().record_finished);
    assert_eq!(r.rd(word).unwrap(), made.get() | MARK);
    assert_eq!(r.hget(F_INTO_WORD), 0);
    r.check().unwrap();
    // A free's intent: its record is cleared only if the block it frees is free.
    let free_intent = |target: Offset| {
        r.hset(F_INTO_TARGET, target.get() | INTO_FREEING);
        r.hset(F_INTO_VALUE, 0);
        r.hset(F_INTO_OLD, r.rd(word).unwrap());
        r.hset(F_INTO_BLOCK, rec.get());
        r.hset(F_INTO_WORD, word);
    };
    free_intent(made);
    assert!(
        !r.recover().unwrap().record_finished,
        "a live block's free finished"
    );
    assert_eq!(r.rd(word).unwrap(), made.get() | MARK);
    free_intent(gone);
    assert!(r.recover().unwrap().record_finished);
    assert_eq!(r.rd(word).unwrap(), 0);
    r.check().unwrap();
}

/// A free list that links a live block, with link fields that agree (they lie in the live
/// block's payload): the allocator refuses to write them (`Corrupt`) instead of changing the
/// live block's bytes. The fuzz target `swiss_file` built such a file; the O(1) open let it
/// through, and the next allocation wrote into a live segment.
#[test]
fn a_free_list_that_links_a_live_block_is_corrupt_not_written() {
    let r = Region::anonymous_with(&opts()).unwrap();
    let a = r.alloc(100, 16).unwrap();
    let b = r.alloc(100, 16).unwrap();
    let _c = r.alloc(100, 16).unwrap();
    r.free(a).unwrap();
    let (ab, bb) = (a.get() - BLOCK_HEADER, b.get() - BLOCK_HEADER);
    // `a`'s free block links `b`'s block as its next; `b`'s payload says `a` is its prev.
    r.wr(ab + NEXT, bb).unwrap();
    r.wr(bb + PREV, ab).unwrap();
    let before: Vec<u8> = (0..100)
        // SAFETY: `b` is a live 100-byte allocation.
        .map(|i| unsafe { r.ptr(b, 100).unwrap().as_ptr().add(i).read() })
        .collect();
    // Taking `a`'s block unlinks it, which would write `b`'s link fields.
    assert!(matches!(r.alloc(100, 16), Err(Error::Corrupt { .. })));
    let after: Vec<u8> = (0..100)
        // SAFETY: as above.
        .map(|i| unsafe { r.ptr(b, 100).unwrap().as_ptr().add(i).read() })
        .collect();
    assert_eq!(before, after, "a live block's bytes changed");
    assert!(
        r.check().is_err(),
        "check passed a free list that links a live block"
    );
}
