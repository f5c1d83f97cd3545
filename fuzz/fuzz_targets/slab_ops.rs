//! Fuzzes offheap-slab: an op sequence run against the arena and a plain model, asserting that
//! they agree after every step (bytes, refcounts, chains, counters); and, in a second mode, an
//! arena whose memory is corrupted byte by byte and reopened, which must give typed errors and
//! never panic or misbehave.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use offheap_slab::{Arena, BufSource, Config, Error, Handle, ReleasePolicy};

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc(u16),
    AddRef(u8),
    DecRef(u8),
    SetNext(u8, Option<u8>),
    GetNext(u8),
    Write(u8, u16, Vec<u8>),
    Read(u8, u16, u8),
    Foreign(u8),
    Check,
}

#[derive(Arbitrary, Debug)]
struct Params {
    start: u8,
    slab: u16,
    growth: u8,
    release: u8,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Model(Params, Vec<Op>),
    Corrupt(Params, Vec<Op>, Vec<(u16, u8)>, Vec<Op>),
}

fn config(p: &Params) -> Config {
    let start = 1 + p.start as usize % 16;
    Config {
        release: match p.release % 3 {
            0 => ReleasePolicy::Never,
            1 => ReleasePolicy::KeepEmpty(1),
            _ => ReleasePolicy::Always,
        },
        ..Config::new(start, start + p.slab as usize % 2048, 1.05 + p.growth as f64 / 64.0)
    }
}

struct MChunk {
    rc: u32,
    data: Vec<u8>,
    next: Option<Handle>,
}

#[derive(Default)]
struct Model {
    live: HashMap<Handle, MChunk>,
    issued: Vec<Handle>,
    allocs: u64,
    zeroes: u64,
}

impl Model {
    fn pick(&self, i: u8) -> Option<Handle> {
        (!self.issued.is_empty()).then(|| self.issued[i as usize % self.issued.len()])
    }
    fn links_to(&self, h: Handle) -> u32 {
        self.live.values().filter(|c| c.next == Some(h)).count() as u32
    }
    fn release(&mut self, mut h: Handle) {
        loop {
            let c = self.live.get_mut(&h).unwrap();
            c.rc -= 1;
            if c.rc > 0 {
                return;
            }
            let c = self.live.remove(&h).unwrap();
            self.zeroes += 1;
            match c.next {
                Some(n) => h = n,
                None => return,
            }
        }
    }
    fn reaches(&self, from: Handle, to: Handle) -> bool {
        let mut cur = Some(from);
        while let Some(c) = cur {
            if c == to {
                return true;
            }
            cur = self.live[&c].next;
        }
        false
    }
}

fn model_step(a: &mut Arena<BufSource>, m: &mut Model, op: &Op) {
    let slab = a.config().slab_size;
    let live = |m: &Model, h: Handle| m.live.contains_key(&h);
    match op {
        Op::Alloc(len) => {
            let len = *len as usize % (slab + 8);
            match a.alloc(len) {
                Ok(h) => {
                    assert!(len <= slab && !live(m, h));
                    let data = a.bytes(h).unwrap().to_vec();
                    m.live.insert(h, MChunk { rc: 1, data, next: None });
                    m.issued.push(h);
                    m.allocs += 1;
                }
                Err(Error::TooBig { .. }) => assert!(len > slab),
                Err(Error::OutOfMemory) => {} // the buffer is bounded
                Err(e) => panic!("alloc: {e}"),
            }
        }
        Op::AddRef(i) => {
            let Some(h) = m.pick(*i) else { return };
            let r = a.add_ref(h);
            match m.live.get_mut(&h) {
                Some(c) => {
                    r.unwrap();
                    c.rc += 1;
                }
                None => assert_eq!(r, Err(Error::StaleHandle)),
            }
        }
        Op::DecRef(i) => {
            let Some(h) = m.pick(*i) else { return };
            match m.live.get(&h) {
                Some(c) if c.rc <= m.links_to(h) => {} // only links hold refs: not ours
                Some(c) => {
                    assert_eq!(a.dec_ref(h).unwrap(), c.rc == 1);
                    m.release(h);
                }
                None => assert_eq!(a.dec_ref(h), Err(Error::StaleHandle)),
            }
        }
        Op::SetNext(i, j) => {
            let Some(h) = m.pick(*i) else { return };
            let n = j.and_then(|j| m.pick(j));
            let r = a.set_next(h, n);
            if !live(m, h) || n.is_some_and(|n| !live(m, n)) {
                assert_eq!(r, Err(Error::StaleHandle));
            } else if n.is_some_and(|n| m.reaches(n, h)) {
                assert_eq!(r, Err(Error::Cycle));
            } else {
                r.unwrap();
                if let Some(n) = n {
                    m.live.get_mut(&n).unwrap().rc += 1;
                }
                let old = std::mem::replace(&mut m.live.get_mut(&h).unwrap().next, n);
                if let Some(o) = old {
                    m.release(o);
                }
            }
        }
        Op::GetNext(i) => {
            let Some(h) = m.pick(*i) else { return };
            let r = a.get_next(h);
            match m.live.get(&h) {
                Some(c) => {
                    let want = c.next;
                    assert_eq!(r.unwrap(), want);
                    if let Some(n) = want {
                        m.live.get_mut(&n).unwrap().rc += 1;
                    }
                }
                None => assert_eq!(r, Err(Error::StaleHandle)),
            }
        }
        Op::Write(i, off, data) => {
            let Some(h) = m.pick(*i) else { return };
            let off = *off as usize;
            let r = a.write(h, off, data);
            match m.live.get_mut(&h) {
                Some(c) if off + data.len() <= c.data.len() => {
                    r.unwrap();
                    c.data[off..off + data.len()].copy_from_slice(data);
                }
                Some(_) => assert!(matches!(r, Err(Error::OutOfBounds { .. }))),
                None => assert_eq!(r, Err(Error::StaleHandle)),
            }
        }
        Op::Read(i, off, n) => {
            let Some(h) = m.pick(*i) else { return };
            let (off, n) = (*off as usize, *n as usize);
            let mut buf = vec![0; n];
            let r = a.read(h, off, &mut buf);
            match m.live.get(&h) {
                Some(c) if off + n <= c.data.len() => {
                    r.unwrap();
                    assert_eq!(buf, c.data[off..off + n]);
                }
                Some(_) => assert!(matches!(r, Err(Error::OutOfBounds { .. }))),
                None => assert_eq!(r, Err(Error::StaleHandle)),
            }
        }
        Op::Foreign(i) => {
            let Some(h) = m.pick(*i) else { return };
            let f = Handle::from_bits(h.to_bits() ^ (1 << 99));
            assert_eq!(a.dec_ref(f), Err(Error::ForeignHandle));
        }
        Op::Check => {
            a.check().unwrap();
        }
    }
}

fn verify(a: &Arena<BufSource>, m: &Model) {
    for (h, c) in &m.live {
        assert_eq!(a.bytes(*h).unwrap(), &c.data[..]);
        assert_eq!(a.refcount(*h).unwrap(), c.rc);
        assert_eq!(a.peek_next(*h).unwrap(), c.next);
    }
    let st = a.stats().unwrap();
    assert_eq!((st.allocs, st.dec_ref_zeroes), (m.allocs, m.zeroes));
    assert_eq!(st.in_use(), m.live.len());
    assert_eq!(st.errors.corrupt, 0);
}

/// Runs ops without expectations (memory may be corrupt): only "no panic, no UB" is checked.
fn blind_step(a: &mut Arena<BufSource>, hs: &mut Vec<Handle>, op: &Op) {
    let pick = |hs: &Vec<Handle>, i: u8| (!hs.is_empty()).then(|| hs[i as usize % hs.len()]);
    match op {
        Op::Alloc(len) => {
            if let Ok(h) = a.alloc(*len as usize) {
                hs.push(h);
            }
        }
        Op::AddRef(i) => drop(pick(hs, *i).map(|h| a.add_ref(h))),
        Op::DecRef(i) => drop(pick(hs, *i).map(|h| a.dec_ref(h))),
        Op::SetNext(i, j) => {
            if let Some(h) = pick(hs, *i) {
                let _ = a.set_next(h, j.and_then(|j| pick(hs, j)));
            }
        }
        Op::GetNext(i) => {
            if let Some(Ok(Some(n))) = pick(hs, *i).map(|h| a.get_next(h)) {
                hs.push(n);
            }
        }
        Op::Write(i, off, d) => drop(pick(hs, *i).map(|h| a.write(h, *off as usize, d))),
        Op::Read(i, off, n) => {
            let mut buf = vec![0; *n as usize];
            let _ = pick(hs, *i).map(|h| a.read(h, *off as usize, &mut buf));
        }
        Op::Foreign(i) => drop(pick(hs, *i).map(|h| a.peek_next(h))),
        Op::Check => drop(a.check()),
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Model(p, ops) => {
            let Ok(mut a) = Arena::create_in(BufSource::new(1 << 20), config(&p)) else {
                return;
            };
            let mut m = Model::default();
            for op in ops.iter().take(512) {
                model_step(&mut a, &mut m, op);
                verify(&a, &m);
            }
            a.check().unwrap();
        }
        Input::Corrupt(p, before, patches, after) => {
            let Ok(mut a) = Arena::create_in(BufSource::new(1 << 16), config(&p)) else {
                return;
            };
            let mut hs = Vec::new();
            for op in before.iter().take(128) {
                blind_step(&mut a, &mut hs, op);
            }
            // Blind ops may misuse references (more `dec_ref`s than a handle's share, which
            // frees a chunk that another still links to); `check` reports that as `Corrupt`
            // rather than passing, and the corruption below goes on from there either way.
            // (The model mode is where valid use must keep `check` clean.)
            let _ = a.check();
            let root = a.root();
            let src = a.into_source();
            let used = src.used().max(1);
            let mut bytes = src.as_bytes().to_vec();
            for (pos, v) in patches.iter().take(16) {
                bytes[*pos as usize % used] = *v;
            }
            let Ok(mut a) = Arena::open_in(BufSource::from_bytes(&bytes), root) else {
                return;
            };
            let _ = a.check();
            let _ = a.stats();
            for op in after.iter().take(128) {
                blind_step(&mut a, &mut hs, op);
            }
            let _ = a.check();
        }
    }
});
