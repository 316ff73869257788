//! Identifiers (tags, branches, Call-IDs, cnonces) from ChaCha20, a CSPRNG.
//!
//! The core has no access to the OS: the runtime seeds the generator with 32 bytes from the
//! OS, tests with a constant so every run is reproducible. ChaCha20's outputs reveal nothing
//! of its state, so handing them to strangers (a To-tag, a branch) lets nobody predict the
//! next Call-ID. RFC 3261 §19.3 asks for at least 32 random bits in tags; every identifier
//! here carries 128.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore as _, SeedableRng as _};

/// Random bits in each identifier ([`Rng::token`]).
pub(crate) const TOKEN_BITS: usize = 128;

/// The generator. Its `Debug` shows nothing of the state.
pub(crate) struct Rng(ChaCha20Rng);

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rng(ChaCha20)")
    }
}

impl Rng {
    /// A generator keyed with `seed` (32 bytes from the OS in production).
    pub(crate) fn new(seed: [u8; 32]) -> Self {
        Self(ChaCha20Rng::from_seed(seed))
    }

    /// Next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// 128 random bits as 32 lowercase hex digits.
    pub(crate) fn token(&mut self) -> String {
        let mut bytes = [0u8; TOKEN_BITS / 8];
        self.0.fill_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_seed_and_128_bits() {
        let mut a = Rng::new([7; 32]);
        let mut b = Rng::new([7; 32]);
        let t = a.token();
        assert_eq!(t, b.token());
        assert_eq!(t.len(), 32);
        assert!(t.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(Rng::new([1; 32]).next_u64(), Rng::new([2; 32]).next_u64());
        assert_ne!(a.token(), t, "no repeats");
    }

    #[test]
    fn chacha20_reference_keystream() {
        // RFC 8439 §2.3.2 block function with an all-zero key and nonce, counter 0: the first
        // keystream bytes are 76 b8 e0 ad a0 f1 3d 90 (rand_chacha's word order, as ChaCha20).
        let mut r = Rng::new([0; 32]);
        assert_eq!(&r.token()[..16], "76b8e0ada0f13d90");
    }
}
