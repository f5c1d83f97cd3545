//! Chunk handles.

use std::fmt;

/// A reference to a chunk of an [`Arena`](crate::Arena): a small `Copy` value, not an address.
///
/// It carries the chunk's slab index, its index in the slab, the chunk's generation when the
/// handle was issued, and the arena's tag. The arena checks all four on every use, so a handle
/// whose chunk was released (even if the chunk was handed out again since), and a handle from
/// another arena, are reported as errors instead of touching memory. Because it holds indices,
/// a handle stays valid when the arena's memory is mapped at another address or reopened by
/// another process.
///
/// A handle does not own a reference by itself: the refcount rules are the caller's, as in
/// go-slab (`alloc` and `get_next` return a handle with one reference that the caller releases
/// with [`dec_ref`](crate::Arena::dec_ref)).
///
/// Generations are 32-bit: a stale handle goes undetected only if its chunk has been released
/// exactly a multiple of 2<sup>32</sup> times since it was issued.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle {
    pub(crate) slab: u32,
    pub(crate) chunk: u32,
    pub(crate) gen: u32,
    pub(crate) tag: u32,
}

impl Handle {
    /// The handle as 128 bits (`tag << 96 | generation << 64 | slab << 32 | chunk`), for storing
    /// it in a table or in arena memory.
    #[inline]
    pub const fn to_bits(self) -> u128 {
        (self.tag as u128) << 96
            | (self.gen as u128) << 64
            | (self.slab as u128) << 32
            | self.chunk as u128
    }

    /// The handle whose [`to_bits`](Handle::to_bits) is `bits`. Any value is accepted: the
    /// arena validates a handle when it is used, so a damaged value yields an error then.
    #[inline]
    pub const fn from_bits(bits: u128) -> Self {
        Handle {
            tag: (bits >> 96) as u32,
            gen: (bits >> 64) as u32,
            slab: (bits >> 32) as u32,
            chunk: bits as u32,
        }
    }

    /// Index of the chunk's slab in the arena's slab table.
    pub const fn slab_index(self) -> u32 {
        self.slab
    }

    /// Index of the chunk in its slab.
    pub const fn chunk_index(self) -> u32 {
        self.chunk
    }

    /// The chunk's generation when the handle was issued.
    pub const fn generation(self) -> u32 {
        self.gen
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Handle(slab {}, chunk {}, gen {}, arena {:08x})",
            self.slab, self.chunk, self.gen, self.tag
        )
    }
}
