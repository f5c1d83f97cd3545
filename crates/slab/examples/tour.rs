//! A tour of the slab arena: chunks, refcounts, chains, misuse caught by typed errors, memory
//! that goes back to the source, a relocated reopen, and the arena's stats.
//!
//! Run: `cargo run --release -p offheap-slab --example tour`

use offheap_slab::{Arena, BufSource, Config, Error, Handle, ReleasePolicy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // go-slab's README parameters: 48-byte first class, 1 MiB slabs, growth factor 2.
    let mut arena = Arena::with_config(Config {
        release: ReleasePolicy::KeepEmpty(1),
        ..Config::new(48, 1 << 20, 2.0)
    })?;
    let sizes: Vec<usize> = arena.class_sizes().take(8).collect();
    println!(
        "== size classes (first 8 of {}): {sizes:?}",
        arena.class_sizes().len()
    );

    // 1. Chunks and refcounts.
    println!("\n== chunks and refcounts");
    let a = arena.alloc_from(b"hello, off-heap world")?;
    println!("alloc 21 bytes      -> {a:?}, len {}", arena.len(a)?);
    arena.add_ref(a)?;
    println!("add_ref             -> refcount {}", arena.refcount(a)?);
    let freed = arena.dec_ref(a)?;
    println!(
        "dec_ref             -> freed: {freed}, refcount {}",
        arena.refcount(a)?
    );
    println!(
        "bytes               -> {:?}",
        String::from_utf8_lossy(arena.bytes(a)?)
    );

    // 2. A chain: a 10 KiB value cut into 4 KiB chunks, linked head to tail.
    println!("\n== chains");
    let value: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let head = store_chain(&mut arena, &value, 4096)?;
    let mut n = 0;
    let mut cur = Some(head);
    while let Some(h) = cur {
        n += 1;
        cur = arena.peek_next(h)?;
    }
    println!(
        "stored {} bytes as a chain of {n} chunks, head {head:?}",
        value.len()
    );
    let back = load_chain(&mut arena, head)?;
    println!(
        "read back through get_next: {} bytes, equal: {}",
        back.len(),
        back == value
    );
    println!(
        "set_next(tail, head) would close a cycle -> {:?}",
        arena.set_next(last(&arena, head)?, Some(head)).unwrap_err()
    );
    let freed = arena.dec_ref(head)?;
    println!("dec_ref(head)       -> freed: {freed} (the whole chain, iteratively)");

    // 3. Misuse is reported, never corrupts: the arena stays usable.
    println!("\n== misuse caught by typed errors");
    arena.dec_ref(a)?; // the last reference: `a` is released
    show("dec_ref(a) again (double release)", arena.dec_ref(a));
    let reused = arena.alloc(16)?; // likely the same slot as `a`, with a new generation
    println!(
        "alloc(16) reused slot {}/{}: generation {} -> {}",
        reused.slab_index(),
        reused.chunk_index(),
        a.generation(),
        reused.generation()
    );
    show("add_ref(a) after its slot was reused", arena.add_ref(a));
    let other = Arena::new(48, 1 << 20, 2.0)?.alloc(16)?;
    show("dec_ref(handle of another arena)", arena.dec_ref(other));
    show("write past the end", arena.write(reused, 10, b"too long"));
    show("alloc(2 MiB) > slab size", arena.alloc(2 << 20));
    show("alloc(0)", arena.alloc(0).map(|h| arena.dec_ref(h)));
    show(
        "Arena::new(48, 1 MiB, growth 1.0)",
        Arena::new(48, 1 << 20, 1.0),
    );
    arena.dec_ref(reused)?;

    // 4. Memory goes back to the source: fill 64-byte chunks, release them.
    println!("\n== release policy (keep 1 empty slab per class)");
    let many: Vec<Handle> = (0..40_000)
        .map(|_| arena.alloc(64))
        .collect::<Result<_, _>>()?;
    let before = arena.stats()?;
    for h in many {
        arena.dec_ref(h)?;
    }
    let after = arena.stats()?;
    println!(
        "40 000 x 64 B: slabs held {} -> {}, slabs given back {}, heap bytes now {}",
        before.slabs,
        after.slabs,
        after.slab_frees,
        arena.source().live_bytes()
    );

    // 5. State in memory you supply: copy it to another address and reopen.
    println!("\n== relocation");
    let mut boxed = Arena::create_in(BufSource::new(1 << 20), Config::new(32, 64 << 10, 1.5))?;
    let kept = boxed.alloc_from(b"survives a move")?;
    let root = boxed.root();
    let old = boxed.into_source();
    let moved = BufSource::from_bytes(old.as_bytes());
    println!(
        "buffer moved from {:p} to {:p}",
        old.as_bytes().as_ptr(),
        moved.as_bytes().as_ptr()
    );
    drop(old);
    let reopened = Arena::open_in(moved, root)?;
    println!(
        "open_in(root {root}) -> {:?}, check: {:?}",
        String::from_utf8_lossy(reopened.bytes(kept)?),
        reopened.check()?
    );

    arena.check()?;
    println!("\n== stats of the first arena\n{}", arena.stats()?);
    Ok(())
}

/// Stores `value` as a chain of chunks of at most `piece` bytes; returns the head (one ref).
fn store_chain(arena: &mut Arena, value: &[u8], piece: usize) -> Result<Handle, Error> {
    let mut pieces = value.chunks(piece);
    let head = arena.alloc_from(pieces.next().unwrap_or(&[]))?;
    let mut tail = head;
    for p in pieces {
        let c = arena.alloc_from(p)?;
        arena.set_next(tail, Some(c))?; // the chain takes a reference
        arena.dec_ref(c)?; // and we drop ours
        tail = c;
    }
    Ok(head)
}

/// Reads a chain back with go-slab's `get_next` protocol (each next comes with a reference).
fn load_chain(arena: &mut Arena, head: Handle) -> Result<Vec<u8>, Error> {
    let mut out = arena.bytes(head)?.to_vec();
    let mut cur = arena.get_next(head)?;
    while let Some(h) = cur {
        out.extend_from_slice(arena.bytes(h)?);
        cur = arena.get_next(h)?;
        arena.dec_ref(h)?;
    }
    Ok(out)
}

fn last(arena: &Arena, head: Handle) -> Result<Handle, Error> {
    let mut h = head;
    while let Some(n) = arena.peek_next(h)? {
        h = n;
    }
    Ok(h)
}

fn show<T: std::fmt::Debug, E: std::fmt::Display>(what: &str, r: Result<T, E>) {
    match r {
        Ok(v) => println!("{what:<40} -> ok: {v:?}"),
        Err(e) => println!("{what:<40} -> error: {e}"),
    }
}
