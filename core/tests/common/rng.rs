//! The randomized tests' seeded generator: the storage crate's (`metastore_storage::fault::Rng`,
//! which its crash tests use), with the draws these tests make. A printed seed replays a run.

use metastore_storage::fault;

#[derive(Clone)]
pub struct Rng(fault::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(fault::Rng::new(seed))
    }

    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }

    /// Percent chance.
    pub fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    /// Uniform in `lo..=hi` (`lo` if the range is empty).
    pub fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}
