//! Sealing method secrets at rest: XChaCha20-Poly1305 under a key from configuration (never
//! from the database), the method id as associated data so a sealed secret cannot be moved to
//! another method.
//!
//! Layout of a sealed secret (all in one BLOB):
//!
//! ```text
//! +---------+-------------+-------------------+----------------------------+
//! | version | key id      | nonce             | ciphertext + Poly1305 tag  |
//! | 1 byte  | 4 bytes     | 24 bytes (random) | len(secret) + 16 bytes     |
//! +---------+-------------+-------------------+----------------------------+
//! ```
//!
//! The key id (the first 4 bytes of SHA-256 of the key) tells a wrong key from a damaged
//! record, so `serve` can refuse to start with the wrong key instead of failing every sign-in.

use std::fmt;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::config::Secret;
use crate::user::{MethodId, SealedSecret};

/// Format version of a sealed secret.
const VERSION: u8 = 1;
/// Key length of XChaCha20-Poly1305 (RFC 8439 §2.3 key, 256 bits).
pub const KEY_LEN: usize = 32;
const KEY_ID_LEN: usize = 4;
/// XChaCha20 nonce (draft-irtf-cfrg-xchacha §2): 192 bits, safe to draw at random.
const NONCE_LEN: usize = 24;
/// Poly1305 tag (RFC 8439 §2.5): 128 bits.
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
/// Longest secret sealed (a TOTP secret is 20 bytes; room for later method kinds).
pub const MAX_SECRET_LEN: usize = 4096;
/// Domain separation in the associated data.
const AAD_PREFIX: &[u8] = b"callverify/method-secret/v1:";

/// Why a key or a sealed secret was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Configuration: `methods.seal_key` is not base64 of 32 bytes.
    #[error("the seal key must be base64 of exactly {KEY_LEN} bytes")]
    BadKey,
    /// The record was sealed with another key (configuration changed).
    #[error("sealed with another key (key id {found}, configured {configured})")]
    OtherKey { found: String, configured: String },
    /// Too short, unknown version, or longer than any secret we seal.
    #[error("not a sealed secret (bad length or version)")]
    Malformed,
    /// Authentication failed: damaged, or bound to another method.
    #[error("the sealed secret does not authenticate (damaged, or another method's)")]
    Forged,
    #[error("secret longer than {MAX_SECRET_LEN} bytes")]
    TooLong,
}

/// The sealing key.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    key_id: [u8; KEY_ID_LEN],
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealer(key id {})", hex::encode(self.key_id))
    }
}

impl Sealer {
    /// The key from configuration: standard or URL-safe base64 of 32 bytes.
    pub fn from_config(secret: &Secret) -> Result<Sealer, SealError> {
        let text = secret.expose().trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
            .map_err(|_| SealError::BadKey)?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| SealError::BadKey)?;
        Ok(Sealer::from_key(&key))
    }

    pub fn from_key(key: &[u8; KEY_LEN]) -> Sealer {
        let digest = Sha256::digest(key);
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Sealer {
            cipher: XChaCha20Poly1305::new(key.into()),
            key_id,
        }
    }

    /// Seals `secret` for `method`.
    pub fn seal(&self, method: &MethodId, secret: &[u8]) -> Result<SealedSecret, SealError> {
        if secret.len() > MAX_SECRET_LEN {
            return Err(SealError::TooLong);
        }
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = associated_data(method);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: &aad,
                },
            )
            // Encryption only fails for plaintexts beyond 256 GiB; ours are bounded above.
            .map_err(|_| SealError::TooLong)?;
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(SealedSecret(out))
    }

    /// Opens what [`Sealer::seal`] made for the same method with the same key.
    pub fn open(&self, method: &MethodId, sealed: &SealedSecret) -> Result<Vec<u8>, SealError> {
        let bytes = &sealed.0;
        let framed = frame(bytes)?;
        if framed.key_id != self.key_id {
            return Err(SealError::OtherKey {
                found: hex::encode(framed.key_id),
                configured: hex::encode(self.key_id),
            });
        }
        let aad = associated_data(method);
        self.cipher
            .decrypt(
                XNonce::from_slice(framed.nonce),
                Payload {
                    msg: framed.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Forged)
    }

    /// Whether `sealed` was made with this key (startup check).
    pub fn made_with_this_key(&self, sealed: &SealedSecret) -> Result<(), SealError> {
        let framed = frame(&sealed.0)?;
        if framed.key_id == self.key_id {
            Ok(())
        } else {
            Err(SealError::OtherKey {
                found: hex::encode(framed.key_id),
                configured: hex::encode(self.key_id),
            })
        }
    }
}

struct Framed<'a> {
    key_id: [u8; KEY_ID_LEN],
    nonce: &'a [u8],
    ciphertext: &'a [u8],
}

/// Splits a sealed record into its parts, refusing anything of the wrong shape.
fn frame(bytes: &[u8]) -> Result<Framed<'_>, SealError> {
    if bytes.len() < HEADER_LEN + TAG_LEN
        || bytes.len() > HEADER_LEN + MAX_SECRET_LEN + TAG_LEN
        || bytes[0] != VERSION
    {
        return Err(SealError::Malformed);
    }
    let mut key_id = [0u8; KEY_ID_LEN];
    key_id.copy_from_slice(&bytes[1..1 + KEY_ID_LEN]);
    Ok(Framed {
        key_id,
        nonce: &bytes[1 + KEY_ID_LEN..HEADER_LEN],
        ciphertext: &bytes[HEADER_LEN..],
    })
}

fn associated_data(method: &MethodId) -> Vec<u8> {
    let mut aad = AAD_PREFIX.to_vec();
    aad.extend_from_slice(method.as_str().as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> Sealer {
        Sealer::from_key(&[byte; KEY_LEN])
    }

    #[test]
    fn round_trip_and_binding_to_the_method() {
        let s = sealer(7);
        let m = MethodId::generate();
        let sealed = s.seal(&m, b"12345678901234567890").unwrap();
        assert_eq!(sealed.0.len(), HEADER_LEN + 20 + TAG_LEN);
        assert_eq!(s.open(&m, &sealed).unwrap(), b"12345678901234567890");
        // Moved to another method: refused.
        assert_eq!(
            s.open(&MethodId::generate(), &sealed),
            Err(SealError::Forged)
        );
        // Another key: named as such.
        assert!(matches!(
            sealer(8).open(&m, &sealed),
            Err(SealError::OtherKey { .. })
        ));
        // Every flipped bit after the header is caught.
        for i in HEADER_LEN..sealed.0.len() {
            let mut bad = sealed.clone();
            bad.0[i] ^= 1;
            assert_eq!(s.open(&m, &bad), Err(SealError::Forged), "byte {i}");
        }
        // Two seals of one secret differ (random nonce).
        assert_ne!(s.seal(&m, b"x").unwrap(), s.seal(&m, b"x").unwrap());
    }

    #[test]
    fn malformed_records_are_refused_without_panic() {
        let s = sealer(1);
        let m = MethodId::generate();
        for len in 0..HEADER_LEN + TAG_LEN {
            assert_eq!(
                s.open(&m, &SealedSecret(vec![VERSION; len])),
                Err(SealError::Malformed)
            );
        }
        let mut v2 = s.seal(&m, b"abc").unwrap();
        v2.0[0] = 2;
        assert_eq!(s.open(&m, &v2), Err(SealError::Malformed));
    }

    #[test]
    fn keys_from_configuration() {
        let key = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
        assert!(Sealer::from_config(&Secret::new(key)).is_ok());
        let short = base64::engine::general_purpose::STANDARD.encode([3u8; 16]);
        assert_eq!(
            Sealer::from_config(&Secret::new(short)).unwrap_err(),
            SealError::BadKey
        );
        assert_eq!(
            Sealer::from_config(&Secret::new("not base64!")).unwrap_err(),
            SealError::BadKey
        );
    }
}
