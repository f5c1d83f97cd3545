//! Arena parameters and the size classes they imply.

use crate::Error;

/// Largest slab size an arena accepts (2 GiB): lengths and chunk indices are stored as `u32`.
pub const MAX_SLAB_SIZE: usize = 1 << 31;
/// Largest number of size classes the parameters may imply (a growth factor very close to 1
/// with a large slab size would otherwise describe millions of classes).
pub const MAX_CLASSES: usize = 1 << 16;

/// When a slab whose chunks are all free is given back to the source.
///
/// go-slab never gives slabs back, so memory stays with the class that first used it. Giving
/// empty slabs back lets memory move between classes over a long run, at the price of asking
/// the source again when the class needs a slab later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReleasePolicy {
    /// Keep every slab (go-slab's behaviour).
    Never,
    /// Keep at most this many empty slabs per class; give further empty slabs back.
    KeepEmpty(u32),
    /// Give every slab back as soon as its last chunk is released.
    Always,
}

impl ReleasePolicy {
    /// How many empty slabs a class keeps (`u32::MAX` for never releasing).
    pub(crate) fn keep(self) -> u32 {
        match self {
            ReleasePolicy::Never => u32::MAX,
            ReleasePolicy::KeepEmpty(n) => n,
            ReleasePolicy::Always => 0,
        }
    }

    pub(crate) fn from_keep(keep: u32) -> Self {
        match keep {
            u32::MAX => ReleasePolicy::Never,
            0 => ReleasePolicy::Always,
            n => ReleasePolicy::KeepEmpty(n),
        }
    }
}

impl Default for ReleasePolicy {
    /// `Never`, as go-slab: the fastest, and no source round trips. Choose `KeepEmpty(n)` or
    /// `Always` to let memory flow back (and between classes) at the price of asking the source
    /// again when a class's use oscillates around a slab boundary.
    fn default() -> Self {
        ReleasePolicy::Never
    }
}

/// Parameters of an arena.
///
/// ```
/// use offheap_slab::{Arena, Config, ReleasePolicy};
/// let config = Config { release: ReleasePolicy::KeepEmpty(2), ..Config::new(64, 1 << 20, 2.0) };
/// let arena = Arena::with_config(config)?;
/// assert_eq!(arena.config().slab_size, 1 << 20);
/// # Ok::<(), offheap_slab::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Chunk size of the first (smallest) class, at least 1.
    pub start_chunk_size: usize,
    /// Bytes of chunk data per slab, and the largest length `alloc` serves; at least
    /// `start_chunk_size`, at most [`MAX_SLAB_SIZE`].
    pub slab_size: usize,
    /// Each class's chunk size is `ceil(previous × growth_factor)`; finite and greater than 1.
    pub growth_factor: f64,
    /// When empty slabs go back to the source.
    pub release: ReleasePolicy,
}

impl Config {
    /// Parameters with the default release policy ([`ReleasePolicy::Never`], as go-slab).
    pub const fn new(start_chunk_size: usize, slab_size: usize, growth_factor: f64) -> Self {
        Config {
            start_chunk_size,
            slab_size,
            growth_factor,
            release: ReleasePolicy::Never,
        }
    }

    /// The chunk sizes of every class these parameters imply, smallest first (validating them).
    ///
    /// ```
    /// use offheap_slab::Config;
    /// let sizes = Config::new(1, 41, 1.5).class_sizes()?;
    /// assert_eq!(sizes, [1, 2, 3, 5, 8, 12, 18, 27, 41]);
    /// # Ok::<(), offheap_slab::Error>(())
    /// ```
    pub fn class_sizes(&self) -> Result<Vec<usize>, Error> {
        self.validate()?;
        // While `size × (gf − 1) < 1` the sizes grow by exactly 1: if that holds for the first
        // MAX_CLASSES sizes and the slab is not reached by then, say so without walking them.
        if (self.growth_factor - 1.0) * ((self.start_chunk_size + MAX_CLASSES) as f64) < 1.0
            && self.slab_size - self.start_chunk_size >= MAX_CLASSES
        {
            return Err(too_many_classes());
        }
        let mut sizes = vec![self.start_chunk_size];
        let mut size = self.start_chunk_size;
        while size < self.slab_size {
            if sizes.len() == MAX_CLASSES {
                return Err(too_many_classes());
            }
            size = next_chunk_size(size, self.growth_factor);
            sizes.push(size);
        }
        Ok(sizes)
    }

    /// Checks the parameters without computing the classes.
    pub fn validate(&self) -> Result<(), Error> {
        if self.start_chunk_size == 0 {
            return Err(Error::InvalidConfig("start_chunk_size must be at least 1"));
        }
        if self.slab_size < self.start_chunk_size {
            return Err(Error::InvalidConfig(
                "slab_size must be at least start_chunk_size",
            ));
        }
        if self.slab_size > MAX_SLAB_SIZE {
            return Err(Error::InvalidConfig("slab_size must be at most 2 GiB"));
        }
        if !self.growth_factor.is_finite() || self.growth_factor <= 1.0 {
            return Err(Error::InvalidConfig(
                "growth_factor must be finite and greater than 1",
            ));
        }
        if self.growth_factor > MAX_SLAB_SIZE as f64 {
            return Err(Error::InvalidConfig("growth_factor must be at most 2^31"));
        }
        Ok(())
    }
}

impl Default for Config {
    /// go-slab's README example: 48-byte first class, 1 MiB slabs, growth factor 2.
    fn default() -> Self {
        Config::new(48, 1 << 20, 2.0)
    }
}

fn too_many_classes() -> Error {
    Error::InvalidConfig("too many size classes (growth factor too close to 1 for this slab size)")
}

/// `ceil(prev × gf)` as go-slab means it, computed with care: a product within a few ulps
/// above an integer is that integer (so 10 × 1.1, which is 11.000000000000002 in binary
/// floating point, gives 11, as the decimal intent and go-slab's documented sequence say), and
/// the result always grows by at least 1.
pub(crate) fn next_chunk_size(prev: usize, gf: f64) -> usize {
    let p = prev as f64 * gf;
    let r = p.round();
    let next = if (p - r).abs() <= p * (4.0 * f64::EPSILON) {
        r
    } else {
        p.ceil()
    };
    // `next` is at most 2^31 × 2^31, exactly representable and within u64/usize on 64-bit;
    // `as` saturates on 32-bit targets, which the class loop then stops at.
    (next as usize).max(prev + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(start: usize, slab: usize, gf: f64) -> Vec<usize> {
        Config::new(start, slab, gf).class_sizes().unwrap()
    }

    #[test]
    fn go_slab_sequences() {
        assert_eq!(
            seq(1, 1024, 2.0),
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
        );
        assert_eq!(seq(1, 41, 1.5), [1, 2, 3, 5, 8, 12, 18, 27, 41]);
        assert_eq!(seq(1, 50, 1.5), [1, 2, 3, 5, 8, 12, 18, 27, 41, 62]);
        assert_eq!(
            seq(1, 17, 1.1),
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17]
        );
        assert_eq!(seq(48, 1 << 20, 2.0)[..4], [48, 96, 192, 384]);
        assert_eq!(seq(7, 7, 2.0), [7]);
    }

    #[test]
    fn invalid_configs() {
        for (c, _) in [
            (Config::new(0, 10, 2.0), "start 0"),
            (Config::new(10, 9, 2.0), "slab < start"),
            (Config::new(1, MAX_SLAB_SIZE + 1, 2.0), "slab too big"),
            (Config::new(1, 10, 1.0), "gf 1"),
            (Config::new(1, 10, 0.5), "gf < 1"),
            (Config::new(1, 10, -2.0), "gf negative"),
            (Config::new(1, 10, f64::NAN), "nan"),
            (Config::new(1, 10, f64::INFINITY), "inf"),
            (
                Config::new(1, MAX_SLAB_SIZE, 1.000_000_01),
                "too many classes",
            ),
        ] {
            assert!(
                matches!(c.class_sizes(), Err(Error::InvalidConfig(_))),
                "{c:?}"
            );
        }
        // A limit found by walking the classes (65 536 steps: too slow under Miri).
        if !cfg!(miri) {
            let c = Config::new(1, MAX_SLAB_SIZE, 1.0001);
            assert!(matches!(c.class_sizes(), Err(Error::InvalidConfig(_))));
        }
        // Large start, growth factor close to 1, yet few classes: accepted.
        // (Miri's software floats are slow: a shorter range there.)
        let end = if cfg!(miri) { 1_002_000 } else { 1_100_000 };
        let s = seq(1_000_000, end, 1.000_01);
        assert!(s.len() > 150 && s.len() < MAX_CLASSES, "{}", s.len());
        assert!(s
            .windows(2)
            .all(|w| w[1] > w[0] && w[1] <= w[0] + w[0] / 100_000 + 1));
        // Huge growth factor: two classes, the second far above the slab size.
        assert_eq!(seq(1, 2, 1e9), [1, 1_000_000_000]);
    }
}
