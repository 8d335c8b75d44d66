//! Seeded pseudo-random numbers (xorshift64*) for synthetic models, tests, benchmarks and
//! examples: the same stream for the same seed on every machine. Not for sampling tokens: the
//! sampler has its own generator (PCG32), whose streams are part of `--seed`'s promise.

/// A xorshift64* generator.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// The generator for `seed` (any value, 0 included): the seed is spread by the golden-ratio
    /// multiplier so that nearby seeds give unrelated streams.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The generator whose state is `state` (made odd, so never zero): for streams that must
    /// match ones written down before [`Rng::new`] spread seeds.
    pub fn from_state(state: u64) -> Self {
        Rng(state | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The next 32 random bits (the high half, the better mixed one).
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is negligible for test sizes).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[0, 1)`, 24 bits.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[−a, a)`.
    pub fn uniform(&mut self, a: f32) -> f32 {
        (2.0 * self.unit() - 1.0) * a
    }

    /// Roughly Gaussian with mean 0 and variance 1: four 16-bit uniforms summed.
    pub fn gaussian(&mut self) -> f32 {
        let r = self.next_u64();
        let sum: u32 = (0..4).map(|k| ((r >> (16 * k)) & 0xFFFF) as u32).sum();
        // Four uniforms on [0, 1) sum to mean 2 and variance 1/3.
        (sum as f32 / 65536.0 - 2.0) * 1.732_050_8
    }

    /// Any `i8`.
    pub fn i8(&mut self) -> i8 {
        (self.next_u64() >> 56) as i8
    }

    /// Any `u8`.
    pub fn u8(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    /// `n` values uniform in `[−a, a)`.
    pub fn floats(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(a)).collect()
    }

    /// Fills `out` with random bytes.
    pub fn fill_bytes(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_seeds_differ() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let mut r = Rng::new(7);
        assert_eq!(a, (0..4).map(|_| r.next_u64()).collect::<Vec<_>>());
        assert_ne!(Rng::new(7).next_u64(), Rng::new(8).next_u64());
        assert_ne!(Rng::new(0).next_u64(), 0);
    }

    #[test]
    fn ranges_hold() {
        let mut r = Rng::new(1);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            let v = r.uniform(3.0);
            assert!((-3.0..3.0).contains(&v));
            assert!(r.below(7) < 7);
        }
        let mean = (0..10_000).map(|_| r.gaussian() as f64).sum::<f64>() / 1e4;
        assert!(mean.abs() < 0.05, "gaussian mean {mean}");
    }
}
