//! Byte layout of the region header (see `docs/file-format.md`) and its validation.
//!
//! All fields are native-endian; the endianness tag lets a reader on the other byte
//! order refuse the file. Offsets below are from the start of the region (= the file).

use crate::Error;

/// Magic bytes at offset 0.
pub(crate) const MAGIC: [u8; 8] = *b"OFHPRGN\0";
/// Written as a native `u32`; reads back as [`ENDIAN_TAG`] only on the same byte order.
pub(crate) const ENDIAN_TAG: u32 = 0x0A0B_0C0D;
/// Format major version: a reader refuses any other major.
pub(crate) const VERSION_MAJOR: u16 = 1;
/// Format minor version: a reader accepts any minor of its major.
pub(crate) const VERSION_MINOR: u16 = 2;
/// Incompatible feature bits this build understands (none defined in 1.0).
pub(crate) const KNOWN_INCOMPAT: u64 = 0;

/// Bytes of the header as laid out (the header *area* is `header_size`, a whole page).
pub(crate) const HEADER_LEN: u64 = 4096;
/// Allocation granule; block offsets and sizes are multiples of it.
pub(crate) const GRANULE: u64 = 16;
/// Bytes of a block header (`prev_size`, `size_flags`).
pub(crate) const BLOCK_HEADER: u64 = 16;
/// Smallest block: header plus the two free-list links.
pub(crate) const MIN_BLOCK: u64 = 32;
/// Number of segregated free lists.
pub(crate) const BINS: usize = 256;
/// Free lists per power of two (as a shift: 4 lists).
pub(crate) const SL_SHIFT: u32 = 2;

/// Number of named root slots in the header.
pub const ROOT_SLOTS: usize = 16;
/// Maximum length in bytes of a root name.
pub const ROOT_NAME_LEN: usize = 24;

// Immutable fields (covered by the checksum).
pub(crate) const F_MAGIC: usize = 0;
pub(crate) const F_ENDIAN: usize = 8;
pub(crate) const F_MAJOR: usize = 12;
pub(crate) const F_MINOR: usize = 14;
pub(crate) const F_HEADER_SIZE: usize = 16;
pub(crate) const F_PAGE_SIZE: usize = 20;
pub(crate) const F_INCOMPAT: usize = 24;
pub(crate) const F_COMPAT: usize = 32;
pub(crate) const F_GRANULE: usize = 40;
pub(crate) const F_BLOCK_HEADER: usize = 44;
pub(crate) const F_ROOT_SLOTS: usize = 48;
pub(crate) const F_ROOT_NAME_LEN: usize = 52;
pub(crate) const F_BINS: usize = 56;
pub(crate) const F_CREATED: usize = 64;
/// Bytes `0..CHECKSUMMED` are covered by the checksum stored at [`F_CHECKSUM`].
pub(crate) const CHECKSUMMED: usize = 120;
pub(crate) const F_CHECKSUM: usize = 120;

// Mutable fields (range-validated on open).
pub(crate) const F_SIZE: usize = 128;
pub(crate) const F_LAST_BLOCK: usize = 136;
pub(crate) const F_IN_USE: usize = 144;
pub(crate) const F_FREE: usize = 152;
pub(crate) const F_ALLOCS: usize = 160;
pub(crate) const F_FREE_BLOCKS: usize = 168;
/// The intent of `Region::alloc_into` or `Region::free_recorded`, set for the length of one
/// allocation or free (format minor 1; reserved and 0 before): the offset of the record
/// word (0: none in flight), the value it is to receive, the value it held before, the
/// offset of the live block it lies in, and the block whose header write commits the
/// operation ([`INTO_FREEING`] set for a free). A recovery completes the record if the
/// operation was committed, so that no kill between the two leaks the block or leaves a
/// record of a freed one.
pub(crate) const F_INTO_WORD: usize = 176;
pub(crate) const F_INTO_VALUE: usize = 184;
pub(crate) const F_INTO_OLD: usize = 192;
pub(crate) const F_INTO_BLOCK: usize = 200;
pub(crate) const F_INTO_TARGET: usize = 208;
/// The pid namespace of the processes using the region (format minor 2; reserved and 0
/// before): [`crate::process::pid_namespace`] of the first process that opened it, or of
/// the last one that opened it while nobody else had it open; 0 where unknown.
pub(crate) const F_PID_NS: usize = 216;
/// Bit of [`F_INTO_TARGET`]: the operation frees its target (else it allocates it).
pub(crate) const INTO_FREEING: u64 = 1 << 63;
/// What `open` and `check` say of a region whose [`F_INTO_WORD`] is set.
pub(crate) const INTO_IN_FLIGHT: &str =
    "a block's record is in flight (a process died inside alloc_into or free_recorded)";
/// The bits an offset can use. No region is larger than the address space (2^47 bytes of
/// user space on x86_64, 2^48 elsewhere), so no offset has a bit from 48 up, whatever
/// process made it: bits 48 to 63 of a record word are the caller's mark (and
/// [`INTO_FREEING`]'s bit in [`F_INTO_TARGET`]).
pub(crate) const OFFSET_BITS: u64 = (1 << 48) - 1;
pub(crate) const F_BITMAP: usize = 256;
pub(crate) const F_ROOTS: usize = 512;
pub(crate) const ROOT_SLOT_LEN: usize = ROOT_NAME_LEN + 8;
pub(crate) const F_BINS_HEADS: usize = 2048;

const _: () = assert!(F_BITMAP + BINS / 8 <= F_ROOTS);
const _: () = assert!(F_ROOTS + ROOT_SLOTS * ROOT_SLOT_LEN <= F_BINS_HEADS);
const _: () = assert!(F_BINS_HEADS + BINS * 8 == HEADER_LEN as usize);

pub(crate) fn rd_u16(h: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([h[at], h[at + 1]])
}
pub(crate) fn rd_u32(h: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&h[at..at + 4]);
    u32::from_ne_bytes(b)
}
pub(crate) fn rd_u64(h: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&h[at..at + 8]);
    u64::from_ne_bytes(b)
}
fn wr_u16(h: &mut [u8], at: usize, v: u16) {
    h[at..at + 2].copy_from_slice(&v.to_ne_bytes());
}
fn wr_u32(h: &mut [u8], at: usize, v: u32) {
    h[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}
pub(crate) fn wr_u64(h: &mut [u8], at: usize, v: u64) {
    h[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// Checksum of the immutable fields.
pub(crate) fn checksum(h: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&h[..CHECKSUMMED])
}

/// Builds the header of a fresh region of `size` bytes whose data area is one free block.
pub(crate) fn new_header(page_size: u64, size: u64, created: u64) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_LEN as usize];
    h[F_MAGIC..F_MAGIC + 8].copy_from_slice(&MAGIC);
    wr_u32(&mut h, F_ENDIAN, ENDIAN_TAG);
    wr_u16(&mut h, F_MAJOR, VERSION_MAJOR);
    wr_u16(&mut h, F_MINOR, VERSION_MINOR);
    wr_u32(&mut h, F_HEADER_SIZE, header_size(page_size) as u32);
    wr_u32(&mut h, F_PAGE_SIZE, page_size as u32);
    wr_u64(&mut h, F_INCOMPAT, 0);
    wr_u64(&mut h, F_COMPAT, 0);
    wr_u32(&mut h, F_GRANULE, GRANULE as u32);
    wr_u32(&mut h, F_BLOCK_HEADER, BLOCK_HEADER as u32);
    wr_u32(&mut h, F_ROOT_SLOTS, ROOT_SLOTS as u32);
    wr_u32(&mut h, F_ROOT_NAME_LEN, ROOT_NAME_LEN as u32);
    wr_u32(&mut h, F_BINS, BINS as u32);
    wr_u64(&mut h, F_CREATED, created);
    let sum = checksum(&h);
    wr_u64(&mut h, F_CHECKSUM, sum);
    let data = header_size(page_size);
    wr_u64(&mut h, F_SIZE, size);
    wr_u64(&mut h, F_LAST_BLOCK, data);
    wr_u64(&mut h, F_IN_USE, 0);
    wr_u64(&mut h, F_FREE, size - data);
    wr_u64(&mut h, F_ALLOCS, 0);
    wr_u64(&mut h, F_FREE_BLOCKS, 1);
    let bin = bin_index(size - data);
    wr_u64(&mut h, F_BINS_HEADS + bin * 8, data);
    let word = F_BITMAP + (bin / 64) * 8;
    let bits = rd_u64(&h, word) | 1 << (bin % 64);
    wr_u64(&mut h, word, bits);
    h
}

/// The header area: one page, at least [`HEADER_LEN`].
pub(crate) fn header_size(page_size: u64) -> u64 {
    page_size.max(HEADER_LEN)
}

/// Free list holding blocks of `size` bytes (`size >= MIN_BLOCK`).
#[inline]
pub(crate) fn bin_index(size: u64) -> usize {
    debug_assert!(size >= MIN_BLOCK);
    let fl = 63 - size.leading_zeros();
    let sl = (size >> (fl - SL_SHIFT)) & ((1 << SL_SHIFT) - 1);
    (((fl - 5) << SL_SHIFT) as u64 + sl) as usize
}

/// Smallest free list whose every block holds at least `size` bytes, if any.
#[inline]
pub(crate) fn search_index(size: u64) -> Option<usize> {
    let fl = 63 - size.leading_zeros();
    let rounded = size.checked_add((1u64 << (fl - SL_SHIFT)) - 1)?;
    let i = bin_index(rounded);
    (i < BINS).then_some(i)
}

/// What an open learns from a validated header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderInfo {
    pub(crate) page_size: u64,
    pub(crate) size: u64,
    /// The first inconsistency found in the allocator's derived fields (last block, byte
    /// and block counters, free-list heads and bitmap), if any: what a process killed
    /// inside the allocator leaves, and what `Region::recover` rebuilds from the blocks.
    pub(crate) torn: Option<&'static str>,
}

/// Validates a header read from an untrusted file of `file_len` bytes. Constant work:
/// the immutable fields against the checksum, every mutable field against its range.
/// The allocator's derived fields are reported in `torn` rather than refused here: the
/// caller decides (see `RegionOptions::open_torn`).
pub(crate) fn validate(h: &[u8], file_len: u64, os_page: u64) -> Result<HeaderInfo, Error> {
    if file_len == 0 {
        return Err(Error::Empty);
    }
    if (h.len() as u64) < HEADER_LEN || file_len < HEADER_LEN {
        return Err(Error::Truncated {
            len: file_len,
            needed: HEADER_LEN,
        });
    }
    if h[F_MAGIC..F_MAGIC + 8] != MAGIC {
        return Err(Error::BadMagic);
    }
    if rd_u32(h, F_ENDIAN) != ENDIAN_TAG {
        return Err(Error::WrongEndianness);
    }
    let (major, minor) = (rd_u16(h, F_MAJOR), rd_u16(h, F_MINOR));
    if major != VERSION_MAJOR {
        return Err(Error::UnsupportedVersion { major, minor });
    }
    let stored = rd_u64(h, F_CHECKSUM);
    let computed = checksum(h);
    if stored != computed {
        return Err(Error::BadChecksum { stored, computed });
    }
    let unknown = rd_u64(h, F_INCOMPAT) & !KNOWN_INCOMPAT;
    if unknown != 0 {
        return Err(Error::UnsupportedFeatures { unknown });
    }
    let corrupt = |what| Error::Corrupt { offset: 0, what };
    let page_size = rd_u32(h, F_PAGE_SIZE) as u64;
    if !page_size.is_power_of_two() || page_size > 1 << 30 {
        return Err(corrupt("page size is not a power of two"));
    }
    if page_size % os_page != 0 {
        return Err(Error::UnsupportedPageSize {
            file: page_size,
            os: os_page,
        });
    }
    let header_sz = rd_u32(h, F_HEADER_SIZE) as u64;
    if header_sz != header_size(page_size)
        || rd_u32(h, F_GRANULE) as u64 != GRANULE
        || rd_u32(h, F_BLOCK_HEADER) as u64 != BLOCK_HEADER
        || rd_u32(h, F_ROOT_SLOTS) as usize != ROOT_SLOTS
        || rd_u32(h, F_ROOT_NAME_LEN) as usize != ROOT_NAME_LEN
        || rd_u32(h, F_BINS) as usize != BINS
    {
        return Err(corrupt("header geometry fields disagree with format 1"));
    }
    // Mutable fields.
    let size = rd_u64(h, F_SIZE);
    if size % page_size != 0 || size < header_sz + page_size.max(MIN_BLOCK) {
        return Err(corrupt("region size is not a whole number of pages"));
    }
    if size > file_len {
        return Err(Error::Truncated {
            len: file_len,
            needed: size,
        });
    }
    let torn = derived_fields_torn(h, header_sz, size);
    for slot in 0..ROOT_SLOTS {
        let at = F_ROOTS + slot * ROOT_SLOT_LEN;
        let name = &h[at..at + ROOT_NAME_LEN];
        let off = rd_u64(h, at + ROOT_NAME_LEN);
        let len = name.iter().position(|&b| b == 0).unwrap_or(ROOT_NAME_LEN);
        if name[len..].iter().any(|&b| b != 0) {
            return Err(corrupt("root name is not NUL-padded"));
        }
        if (len == 0 && off != 0) || off >= size {
            return Err(corrupt("root slot offset out of range"));
        }
    }
    Ok(HeaderInfo {
        page_size,
        size,
        torn,
    })
}

/// The first inconsistency among the allocator's derived header fields of a region of
/// `size` bytes whose data starts at `data`, if any.
fn derived_fields_torn(h: &[u8], data: u64, size: u64) -> Option<&'static str> {
    let in_block = |b: u64| b >= data && b % GRANULE == 0 && b <= size - MIN_BLOCK;
    if !in_block(rd_u64(h, F_LAST_BLOCK)) {
        return Some("last block offset out of range");
    }
    let (in_use, free) = (rd_u64(h, F_IN_USE), rd_u64(h, F_FREE));
    if in_use.checked_add(free) != Some(size - data) || in_use % GRANULE != 0 {
        return Some("block byte counts do not cover the region");
    }
    if rd_u64(h, F_INTO_WORD) != 0 {
        return Some(INTO_IN_FLIGHT);
    }
    let max_blocks = (size - data) / MIN_BLOCK;
    let (allocs, free_blocks) = (rd_u64(h, F_ALLOCS), rd_u64(h, F_FREE_BLOCKS));
    if allocs > max_blocks || free_blocks > max_blocks || (free_blocks == 0) != (free == 0) {
        return Some("block counts out of range");
    }
    for bin in 0..BINS {
        let head = rd_u64(h, F_BINS_HEADS + bin * 8);
        let bit = rd_u64(h, F_BITMAP + (bin / 64) * 8) >> (bin % 64) & 1;
        if head != 0 && !in_block(head) {
            return Some("free-list head out of range");
        }
        if (head != 0) != (bit == 1) {
            return Some("free-list bitmap disagrees with the free-list heads");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bin_lower(i: usize) -> u64 {
        let fl = (i >> SL_SHIFT) as u32 + 5;
        (1u64 << fl) + (((i & 3) as u64) << (fl - SL_SHIFT))
    }

    #[test]
    fn bins_are_monotonic_and_search_fits() {
        let mut prev = 0;
        let step = if cfg!(miri) { 4112 } else { GRANULE as usize };
        for size in (MIN_BLOCK..1 << 20).step_by(step) {
            let b = bin_index(size);
            assert!(b >= prev && b < BINS);
            prev = b;
            // Every block in the searched list (or later) holds `size`.
            let s = search_index(size).unwrap();
            assert!(s >= b);
            assert!(bin_lower(s) >= size, "bin {s} starts below {size}");
        }
        for i in 0..=bin_index(!15u64) {
            assert_eq!(bin_index(bin_lower(i)), i);
        }
        assert!(bin_index(!15u64) < BINS);
    }

    #[test]
    fn fresh_header_validates() {
        let size = 1 << 20;
        let h = new_header(4096, size, 7);
        let info = validate(&h, size, 4096).unwrap();
        assert_eq!(info.size, size);
        assert_eq!(info.page_size, 4096);
    }
}
