//! `Arena::repair` and `Arena::collect` after a simulated kill at every store of every
//! operation: `kill::arm(n)` lets `n` stores to source memory through and then unwinds out
//! of the arena, as if the process had died at that instruction boundary. Afterwards a
//! repairer (a fresh `Arena` on the same memory) repairs; `check` must pass; collecting with
//! the roots the test still holds must leave exactly the chunks they reach, with their bytes
//! and chains intact; a bystander `Arena` whose caches were filled before the kill must go on
//! working (under miri, a stale cache would be a use after free); and later operations must
//! never hand out a live chunk again.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::kill;
use crate::*;

/// A source that shares one `HeapSource` between several arenas (as processes share a
/// file): the tests use them one at a time.
#[derive(Clone, Copy)]
struct Shared(*mut HeapSource);

// SAFETY: forwards to the `HeapSource` (which outlives every arena of a test); the arenas
// sharing it are used one at a time, and each drops its caches when the header's epoch moves,
// which is the contract this test checks.
unsafe impl SlabSource for Shared {
    /// Fresh blocks hold garbage, as reused memory of a region does.
    fn alloc(&mut self, size: usize, align: usize) -> Option<u64> {
        // SAFETY: the heap source is alive and not borrowed elsewhere during this call.
        let off = unsafe { (*self.0).alloc(size, align) }?;
        // SAFETY: a fresh block of `size` bytes.
        unsafe { std::ptr::write_bytes(self.ptr(off), 0xA5, size) };
        Some(off)
    }
    unsafe fn free(&mut self, off: u64, size: usize, align: usize) {
        // SAFETY: forwarded; as above.
        unsafe { (*self.0).free(off, size, align) }
    }
    fn ptr(&self, off: u64) -> *mut u8 {
        // SAFETY: as above.
        unsafe { (*self.0).ptr(off) }
    }
    fn contains(&self, off: u64, len: usize) -> bool {
        // SAFETY: as above.
        unsafe { (*self.0).contains(off, len) }
    }
    fn is_block(&self, off: u64) -> Option<bool> {
        // SAFETY: as above.
        unsafe { (*self.0).is_block(off) }
    }
}

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
    Alloc(usize),
    Drop(usize),
    AddRef(usize),
    Link(usize, usize),
    Unlink(usize),
}

/// What the test knows: the references it holds (roots) and, per chunk, its bytes' seed and
/// its next.
#[derive(Default)]
struct Model {
    roots: Vec<Handle>,
    seed: HashMap<Handle, (u64, usize)>,
    next: HashMap<Handle, Handle>,
}

impl Model {
    fn reach(&self, from: Handle) -> Vec<Handle> {
        let mut out = vec![from];
        let mut h = from;
        while let Some(&n) = self.next.get(&h) {
            if out.contains(&n) {
                break;
            }
            out.push(n);
            h = n;
        }
        out
    }
    fn reachable(&self) -> Vec<Handle> {
        let mut all: Vec<Handle> = self.roots.iter().flat_map(|&r| self.reach(r)).collect();
        all.sort_unstable_by_key(|h| h.to_bits());
        all.dedup();
        all
    }
    /// Forgets chunks no root reaches.
    fn prune(&mut self) {
        let keep = self.reachable();
        self.seed.retain(|h, _| keep.contains(h));
        self.next.retain(|h, _| keep.contains(h));
    }
}

fn byte(seed: u64, i: usize) -> u8 {
    (seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(i as u64)
        >> 11) as u8
}

fn gen(rng: &mut Rng, m: &Model) -> Op {
    let x = rng.next();
    let n = m.roots.len();
    let i = (x >> 8) as usize % n.max(1);
    let j = (x >> 24) as usize % n.max(1);
    match x % 10 {
        _ if n < 2 => Op::Alloc((x >> 40) as usize % 100),
        0..=3 => Op::Alloc((x >> 40) as usize % 100),
        4 | 5 => Op::Drop(i),
        6 => Op::AddRef(i),
        7 | 8 if i != j => Op::Link(i, j),
        _ => Op::Unlink(i),
    }
}

/// Applies `op` to `a`; updates the model if it completed.
fn apply<S: SlabSource>(a: &mut Arena<S>, m: &mut Model, op: Op, rng: &mut Rng) {
    match op {
        Op::Alloc(len) => {
            let h = a.alloc(len).unwrap();
            let seed = rng.next();
            for (i, b) in a.bytes_mut(h).unwrap().iter_mut().enumerate() {
                *b = byte(seed, i);
            }
            m.roots.push(h);
            m.seed.insert(h, (seed, len));
        }
        Op::Drop(i) => {
            let h = m.roots.swap_remove(i);
            a.dec_ref(h).unwrap();
            m.prune();
        }
        Op::AddRef(i) => {
            a.add_ref(m.roots[i]).unwrap();
            m.roots.push(m.roots[i]);
        }
        Op::Link(i, j) => {
            let (x, y) = (m.roots[i], m.roots[j]);
            let cycle = m.reach(y).contains(&x);
            match a.set_next(x, Some(y)) {
                Err(Error::Cycle) => assert!(cycle, "cycle refused wrongly"),
                r => {
                    r.unwrap();
                    assert!(!cycle, "cycle accepted");
                    m.next.insert(x, y);
                    m.prune();
                }
            }
        }
        Op::Unlink(i) => {
            a.set_next(m.roots[i], None).unwrap();
            m.next.remove(&m.roots[i]);
            m.prune();
        }
    }
}

/// The arena holds exactly what the model says, bytes and links included.
fn verify<S: SlabSource>(a: &Arena<S>, m: &Model) {
    let reach = m.reachable();
    for &h in &reach {
        let (seed, len) = m.seed[&h];
        let b = a
            .bytes(h)
            .unwrap_or_else(|e| panic!("chunk {h:?} lost: {e}"));
        assert_eq!(b.len(), len);
        for (i, &x) in b.iter().enumerate() {
            assert_eq!(x, byte(seed, i), "chunk {h:?} overwritten at {i}");
        }
        assert_eq!(a.peek_next(h).unwrap(), m.next.get(&h).copied());
    }
    let rep = a.check().unwrap();
    assert_eq!(rep.chunks_in_use, reach.len(), "chunks in use");
}

fn config(release: ReleasePolicy) -> Config {
    Config {
        release,
        ..Config::new(16, 256, 2.0)
    }
}

/// Silences the default panic message of simulated kills (other panics still print).
fn quiet_kills() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<kill::Killed>().is_none() {
                prev(info);
            }
        }));
    });
}

std::thread_local! {
    /// Blocks that repairs gave back (an operation cut short had taken or unnamed them).
    static GIVEN_BACK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `steps` ops of scenario `seed`; op `kill_step` is killed after `n` stores. Returns
/// whether the kill happened (`false`: the op completed in fewer than `n` stores).
fn run(seed: u64, steps: usize, kill_step: usize, n: u64, release: ReleasePolicy) -> bool {
    let heap = Box::into_raw(Box::new(HeapSource::new()));
    let src = Shared(heap);
    let mut victim = Arena::create_in(src, config(release)).unwrap();
    let root = victim.root();
    let mut bystander = Arena::open_in(src, root).unwrap();
    let mut rng = Rng(seed | 1);
    let mut m = Model::default();
    let mut killed = false;
    for step in 0..steps {
        let op = gen(&mut rng, &m);
        if step != kill_step {
            apply(&mut victim, &mut m, op, &mut rng);
            continue;
        }
        // The bystander fills its caches with the state just before the kill.
        verify(&bystander, &m);
        let before = m.roots.clone();
        kill::arm(n);
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut m2 = Model {
                roots: m.roots.clone(),
                seed: m.seed.clone(),
                next: m.next.clone(),
            };
            let mut rng2 = Rng(rng.0);
            apply(&mut victim, &mut m2, op, &mut rng2);
            (m2, rng2.0)
        }));
        kill::arm(u64::MAX);
        match r {
            Ok((m2, r2)) => {
                m = m2;
                rng.0 = r2;
                continue;
            }
            Err(p) => {
                assert!(
                    p.downcast_ref::<kill::Killed>().is_some(),
                    "{op:?} panicked"
                );
            }
        }
        killed = true;
        // The victim is dead; a fresh arena on the same memory repairs.
        let mut repairer = Arena::open_in(src, root).unwrap();
        let rep = repairer
            .repair()
            .unwrap_or_else(|e| panic!("step {step} {op:?} killed after {n}: {e}"));
        repairer
            .check()
            .unwrap_or_else(|e| panic!("step {step} {op:?} killed after {n}: {e} {rep:?}"));
        let again = repairer.repair().unwrap();
        assert_eq!(
            again.fixed, 0,
            "repair is not idempotent: {rep:?} then {again:?}"
        );
        assert_eq!(again.refcounts_raised, 0);
        // Every reference the test held before the op still names its chunk, except the one
        // a `Drop` was releasing.
        let held: Vec<Handle> = match op {
            Op::Drop(i) => {
                let mut r = before.clone();
                r.swap_remove(i);
                r
            }
            _ => before.clone(),
        };
        for &h in &held {
            assert!(repairer.owns(h), "step {step} {op:?} after {n}: {h:?} lost");
        }
        // The link a cut-short set_next was changing: old, new or none.
        if let Op::Link(i, _) | Op::Unlink(i) = op {
            let x = before[i];
            match repairer.peek_next(x).unwrap() {
                Some(y) => {
                    m.next.insert(x, y);
                }
                None => {
                    m.next.remove(&x);
                }
            }
        }
        m.roots = held;
        m.prune();
        let c = repairer.collect(&m.roots).unwrap();
        assert_eq!(c.chunks_in_use, m.reachable().len());
        verify(&repairer, &m);
        // No block of the source leaked: it holds exactly the blocks the arena names.
        // SAFETY: the heap source outlives the test's arenas, used one at a time.
        let held = unsafe { (*heap).live_blocks() };
        assert_eq!(
            held,
            repairer.blocks_held().unwrap(),
            "step {step} {op:?} killed after {n}: source blocks leaked ({rep:?})"
        );
        GIVEN_BACK.with(|g| g.set(g.get() + rep.blocks_given_back));
        drop(repairer);
        // The bystander, with caches from before the kill, carries on.
        victim = bystander;
        bystander = Arena::open_in(src, root).unwrap();
    }
    verify(&victim, &m);
    // Nothing is handed out twice: fill many new chunks, then check every old one.
    for _ in 0..if cfg!(miri) { 8 } else { 64 } {
        apply(&mut victim, &mut m, Op::Alloc(40), &mut rng);
    }
    verify(&victim, &m);
    for &r in &m.roots {
        victim.dec_ref(r).unwrap();
    }
    assert_eq!(victim.check().unwrap().chunks_in_use, 0);
    drop(victim);
    drop(bystander);
    // SAFETY: every arena using it is dropped.
    drop(unsafe { Box::from_raw(heap) });
    killed
}

/// Kills each of `steps` ops after every number of stores it makes (under miri, after every
/// fifth number, from a different start at each step, to keep the interpreter's time down).
fn kill_everywhere(seed: u64, steps: usize, release: ReleasePolicy) -> u64 {
    quiet_kills();
    let stride = if cfg!(miri) { 5 } else { 1 };
    let mut kills = 0;
    for kill_step in 0..steps {
        let mut n = (kill_step as u64 * 2) % stride;
        while run(seed, steps, kill_step, n, release) {
            n += stride;
            kills += 1;
        }
    }
    kills
}

/// The kill scenarios for one release policy (3 seeds of 60 ops; under miri 1 of 4).
fn kill_scenarios(base_seed: u64, release: ReleasePolicy) {
    let (seeds, steps) = if cfg!(miri) { (1, 4) } else { (3, 60) };
    let mut kills = 0;
    GIVEN_BACK.with(|g| g.set(0));
    for seed in 0..seeds {
        kills += kill_everywhere(base_seed + seed, steps, release);
    }
    let given = GIVEN_BACK.with(|g| g.get());
    eprintln!("{release:?}: {kills} kills, {given} blocks given back by repairs");
    assert!(kills >= steps as u64, "only {kills} kills simulated");
    // The scenarios reach kills inside a slab's or table's taking (else the leak check
    // above proves nothing about the records).
    assert!(
        given > 0,
        "no kill fell between a block's taking and its naming"
    );
}

/// Under miri only the test with `Always` runs (it covers every path of this one, and slab
/// releases too, whose stale caches miri would catch).
#[test]
#[cfg_attr(miri, ignore)]
fn repair_after_a_kill_at_every_store_never_release() {
    kill_scenarios(0xA4E5, ReleasePolicy::Never);
}

#[test]
fn repair_after_a_kill_at_every_store_always_release() {
    kill_scenarios(0x7E1E, ReleasePolicy::Always);
}

#[test]
fn repair_of_a_sound_arena_changes_nothing() {
    let mut a = Arena::with_config(config(ReleasePolicy::KeepEmpty(1))).unwrap();
    let hs: Vec<Handle> = (0..100).map(|i| a.alloc(i % 90).unwrap()).collect();
    for (i, &h) in hs.iter().enumerate() {
        if i % 3 == 0 {
            a.dec_ref(h).unwrap();
        }
    }
    a.set_next(hs[1], Some(hs[2])).unwrap();
    let before = a.check().unwrap();
    let rep = a.repair().unwrap();
    assert_eq!(
        (rep.fixed, rep.refcounts_raised, rep.slabs_released),
        (0, 0, 0)
    );
    assert_eq!(rep.chunks_in_use, before.chunks_in_use);
    assert_eq!(a.check().unwrap(), before);
}

#[test]
fn repair_rebuilds_torn_lists_and_counters() {
    let mut a = Arena::with_config(config(ReleasePolicy::Never)).unwrap();
    let hs: Vec<Handle> = (0..200).map(|i| a.alloc(i % 60).unwrap()).collect();
    for &h in hs.iter().step_by(2) {
        a.dec_ref(h).unwrap();
    }
    let before = a.check().unwrap();
    // Tear derived state: every free list, partial list and counter.
    let (tab, len) = a.slab_table().unwrap();
    for s in 0..len as usize {
        // SAFETY: `s < slab_len`.
        unsafe {
            (*tab.add(s)).free_head = crate::layout::NONE;
            (*tab.add(s)).in_use = 7;
            (*tab.add(s)).next = 3;
        }
    }
    let (ctab, count) = a.class_table().unwrap();
    for c in 0..count as usize {
        // SAFETY: `c < class_count`.
        unsafe { (*ctab.add(c)).partial_head = 0 };
    }
    assert!(a.check().is_err());
    let rep = a.repair().unwrap();
    assert!(rep.fixed > 0);
    assert_eq!(a.check().unwrap(), before);
    for (i, &h) in hs.iter().enumerate() {
        assert_eq!(a.owns(h), i % 2 == 1);
    }
}

#[test]
fn collect_frees_what_no_root_reaches_and_fixes_refcounts() {
    let mut a = Arena::with_config(config(ReleasePolicy::Never)).unwrap();
    let x = a.alloc(10).unwrap();
    let y = a.alloc(10).unwrap();
    let z = a.alloc(10).unwrap();
    a.set_next(x, Some(y)).unwrap();
    a.dec_ref(y).unwrap();
    a.add_ref(x).unwrap(); // an over-count, as a cut-short operation can leave
    let rep = a.collect(&[x]).unwrap();
    assert_eq!(
        (rep.freed, rep.refcounts_fixed, rep.chunks_in_use),
        (1, 1, 2)
    );
    assert!(!a.owns(z));
    assert_eq!(a.refcount(x).unwrap(), 1);
    assert!(a.dec_ref(x).unwrap());
    assert!(!a.owns(y));
    assert_eq!(a.check().unwrap().chunks_in_use, 0);
    assert_eq!(a.collect(&[z]), Err(Error::StaleHandle));
}

#[test]
fn repair_refuses_a_truth_that_does_not_check_out() {
    let mut a = Arena::with_config(config(ReleasePolicy::Never)).unwrap();
    let x = a.alloc(10).unwrap();
    let (tab, _) = a.slab_table().unwrap();
    // SAFETY: slab 0 exists.
    unsafe { (*tab.add(x.slab as usize)).frontier = 1000 };
    assert!(matches!(a.repair(), Err(Error::Corrupt(_))));
    // SAFETY: as above.
    unsafe { (*tab.add(x.slab as usize)).frontier = 1 };
    a.repair().unwrap();
    a.check().unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: if cfg!(miri) { 2 } else { 256 },
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Random scenarios, a random op killed after a random number of stores, every release
    /// policy (`KeepEmpty(1)` too): the same checks as the exhaustive tests.
    #[test]
    fn repair_after_a_random_kill(
        seed in proptest::prelude::any::<u64>(),
        kill_step in 0usize..24,
        n in 0u64..120,
        keep in 0u32..3,
    ) {
        quiet_kills();
        let release = [ReleasePolicy::Never, ReleasePolicy::KeepEmpty(1), ReleasePolicy::Always]
            [keep as usize];
        let steps = if cfg!(miri) { 6 } else { 24 };
        run(seed, steps, kill_step % steps, n, release);
    }
}
