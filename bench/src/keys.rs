//! Keys and the choice among them. A key is its index in the key space written as zero-padded
//! decimal filling exactly `--key-size` bytes, so keys in index order sort in byte order (and a
//! range over the key space reads them in the order they were written). The random choice is a
//! small seeded generator (SplitMix64): reproducible runs, no dependency, a few ns per key.

/// Whether every index below `space` fits in `key_size` decimal digits.
pub fn key_space_fits(key_size: usize, space: u64) -> bool {
    // 10^20 > u64::MAX: twenty digits hold any index.
    key_size >= 20 || (space - 1) < 10u64.pow(key_size as u32)
}

/// Writes `index` into `key` as zero-padded decimal filling the whole slice. The caller checked
/// with [`key_space_fits`] that it fits; digits that do not fit are dropped from the left.
pub fn write_key(key: &mut [u8], mut index: u64) {
    for b in key.iter_mut().rev() {
        *b = b'0' + (index % 10) as u8;
        index /= 10;
    }
}

/// The key of `index`, as a new vector (for building request templates and in tests).
pub fn key(key_size: usize, index: u64) -> Vec<u8> {
    let mut k = vec![0; key_size];
    write_key(&mut k, index);
    k
}

/// SplitMix64: one 64-bit state, full period, good enough to spread keys uniformly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0), by Lemire's multiply-shift (bias below 2^-32 for any `n` here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks the key index of each operation: sequential (the operation's number modulo the key
/// space, as etcd's `--sequential-keys`) or uniformly random.
#[derive(Debug, Clone)]
pub struct KeyPicker {
    space: u64,
    sequential: bool,
    rng: Rng,
}

impl KeyPicker {
    pub fn new(space: u64, sequential: bool, seed: u64) -> Self {
        KeyPicker { space: space.max(1), sequential, rng: Rng::new(seed) }
    }

    pub fn pick(&mut self, op_number: u64) -> u64 {
        if self.sequential {
            op_number % self.space
        } else {
            self.rng.below(self.space)
        }
    }

    /// The generator, shared with the read/write choice of txn-mixed.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_zero_padded_to_the_key_size() {
        assert_eq!(key(8, 0), b"00000000");
        assert_eq!(key(8, 42), b"00000042");
        assert_eq!(key(8, 99_999_999), b"99999999");
        assert_eq!(key(3, 7), b"007");
        assert_eq!(key(1, 9), b"9");
        let long = key(32, u64::MAX);
        assert_eq!(long.len(), 32);
        assert_eq!(&long[..12], b"000000000000");
        assert_eq!(&long[12..], u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn sequential_keys_sort_in_index_order() {
        let keys: Vec<Vec<u8>> = (0..1000).map(|i| key(4, i)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn key_space_limits() {
        assert!(key_space_fits(1, 10));
        assert!(!key_space_fits(1, 11));
        assert!(key_space_fits(8, 100_000_000));
        assert!(!key_space_fits(8, 100_000_001));
        assert!(key_space_fits(19, 10u64.pow(19)));
        assert!(!key_space_fits(19, u64::MAX));
        assert!(key_space_fits(20, u64::MAX));
    }

    #[test]
    fn picker_sequential_and_random() {
        let mut p = KeyPicker::new(10, true, 1);
        assert_eq!((0..12).map(|i| p.pick(i)).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
        let mut r = KeyPicker::new(10, false, 7);
        let mut seen = [0u32; 10];
        for i in 0..10_000 {
            seen[r.pick(i) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "not uniform: {seen:?}");
        // The same seed gives the same keys.
        let a: Vec<u64> = (0..5).map(|i| KeyPicker::new(1000, false, 3).pick(i)).collect();
        let b: Vec<u64> = (0..5).map(|i| KeyPicker::new(1000, false, 3).pick(i)).collect();
        assert_eq!(a, b);
        let mut one = KeyPicker::new(1, false, 3);
        assert!((0..100).all(|i| one.pick(i) == 0));
        let u = Rng::new(5).unit();
        assert!((0.0..1.0).contains(&u));
    }
}
