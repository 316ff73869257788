//! The store secret key: keeps PINs, challenge digits and request fingerprints out of the
//! database in clear (issue 8 item 7).
//!
//! One 32-byte key, never written to the database: from `store.secret_key` (or
//! `CALLVERIFY_STORE__SECRET_KEY`), else from a key file next to the SQLite file (`PATH.key`,
//! created with mode 0600 on first start), else — for a throwaway in-memory store — random per
//! process. Three keys are derived from it by HMAC-SHA256 with distinct labels:
//!
//! - the digits key ([`flow::keys::DigitsKey`]): PINs and challenge digits are stored as a tag
//!   only, which the call flow checks entries against;
//! - the challenge key: challenge digits are a function of the key and the verification id,
//!   so the `POST` response (and its idempotent replay) can show them without storing them;
//! - the fingerprint key: the idempotency fingerprint of a request body (which may hold a PIN)
//!   is a MAC, not a plain hash a 4-digit PIN could be brute-forced from.
//!
//! Losing the key only fails the verifications open at the time (their digits no longer
//! match): nothing else depends on it.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use flow::keys::{DigitsKey, DigitsTag, SEAL_LEN};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{Secret, StoreBackend, StoreConfig};
use crate::model::VerificationId;

/// Derivation labels: each derived key serves one purpose only.
const LABEL_DIGITS: &[u8] = b"callverify/store-key/digits/v1";
const LABEL_CHALLENGE: &[u8] = b"callverify/store-key/challenge/v1";
const LABEL_FINGERPRINT: &[u8] = b"callverify/store-key/fingerprint/v1";
/// Suffix of the key file next to a SQLite database.
const KEY_FILE_SUFFIX: &str = ".key";
/// Permission bits a key file may not have: anything for group or others.
const KEY_FILE_FORBIDDEN_MODE: u32 = 0o077;

/// Why the key cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    /// `store.secret_key` is malformed (our configuration).
    #[error("configuration key `store.secret_key`: {0}")]
    Config(&'static str),
    /// The key file cannot be read or created.
    #[error("store secret key file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key file is malformed.
    #[error("store secret key file {path}: {reason}")]
    Malformed { path: PathBuf, reason: &'static str },
    /// The key file may be read by other users.
    #[error(
        "store secret key file {path} is readable by group or others (mode {mode:o}): \
         `chmod 600` it"
    )]
    Permissions { path: PathBuf, mode: u32 },
}

/// The store secret key. `Debug` never prints it.
#[derive(Clone)]
pub struct StoreKey([u8; SEAL_LEN]);

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey([redacted])")
    }
}

impl StoreKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; SEAL_LEN]) -> StoreKey {
        StoreKey(bytes)
    }

    /// A fresh random key (OS randomness).
    pub fn generate() -> StoreKey {
        StoreKey(rand::random())
    }

    /// Parses 64 hex digits.
    pub fn parse_hex(text: &str) -> Result<StoreKey, &'static str> {
        let mut out = [0u8; SEAL_LEN];
        hex::decode_to_slice(text.trim(), &mut out)
            .map_err(|_| "must be 64 hex digits (32 bytes: `openssl rand -hex 32`)")?;
        if out.iter().all(|b| *b == 0) {
            return Err("must not be all zeros");
        }
        Ok(StoreKey(out))
    }

    /// The key for `config`: `store.secret_key`, else the key file next to a SQLite file
    /// (created if absent), else a random key for an in-memory store.
    pub fn load(config: &StoreConfig) -> Result<StoreKey, SecretKeyError> {
        if let Some(key) = &config.secret_key {
            return StoreKey::parse_hex(key.expose()).map_err(SecretKeyError::Config);
        }
        match config.backend() {
            Ok(StoreBackend::SqliteFile(db)) => StoreKey::from_file(&key_file_for(&db)),
            // An in-memory store forgets everything at exit: so may its key. Any other backend
            // is refused by `store.url` validation before this is reached.
            _ => Ok(StoreKey::generate()),
        }
    }

    /// Reads the key file, or creates it (mode 0600, 32 random bytes as hex) when absent.
    pub fn from_file(path: &Path) -> Result<StoreKey, SecretKeyError> {
        let file_err = |source| SecretKeyError::File {
            path: path.to_owned(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                check_permissions(path)?;
                StoreKey::parse_hex(&text).map_err(|reason| SecretKeyError::Malformed {
                    path: path.to_owned(),
                    reason,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = StoreKey::generate();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = match options.open(path) {
                    Ok(f) => f,
                    // Another process created it in between: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return StoreKey::from_file(path);
                    }
                    Err(e) => return Err(file_err(e)),
                };
                file.write_all(format!("{}\n", hex::encode(key.0)).as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(file_err)?;
                tracing::warn!(path = %path.display(), "created the store secret key file: back it up apart from the database");
                Ok(key)
            }
            Err(e) => Err(file_err(e)),
        }
    }

    fn derive(&self, label: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC-SHA256 takes keys of any length");
        mac.update(label);
        mac
    }

    fn derived(&self, label: &[u8]) -> [u8; SEAL_LEN] {
        self.derive(label).finalize().into_bytes().into()
    }

    /// The key the call flow checks sealed digits with.
    pub fn digits_key(&self) -> DigitsKey {
        DigitsKey::new(self.derived(LABEL_DIGITS))
    }

    /// The tag of `digits` for the verification of `client` to `destination` (the seal's
    /// context: the same PIN for the same client and number gives the same tag, so an
    /// identical request can join an open one; other rows' tags say nothing about it).
    pub fn seal(
        &self,
        client: &str,
        destination: &str,
        digits: &Secret,
    ) -> Result<DigitsTag, flow::SpecError> {
        self.digits_key()
            .seal(&digits_context(client, destination), digits.expose())
    }

    /// The challenge digits of verification `id`: `count` decimal digits from a keyed PRF of
    /// the id, uniformly distributed (rejection sampling), the same every time they are asked.
    pub fn challenge_digits(&self, id: &VerificationId, count: usize) -> Secret {
        let key = self.derived(LABEL_CHALLENGE);
        let mut digits = String::with_capacity(count);
        let mut block: u32 = 0;
        while digits.len() < count {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
                .expect("HMAC-SHA256 takes keys of any length");
            mac.update(id.as_str().as_bytes());
            mac.update(&block.to_be_bytes());
            for byte in mac.finalize().into_bytes() {
                // 250 = 25 · 10: bytes below it map to digits without bias.
                if byte < 250 && digits.len() < count {
                    digits.push(char::from(b'0' + byte % 10));
                }
            }
            block += 1;
        }
        Secret::new(digits)
    }

    /// The idempotency fingerprint of a canonical request body, hex.
    pub fn fingerprint(&self, canonical_body: &[u8]) -> String {
        let key = self.derived(LABEL_FINGERPRINT);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
            .expect("HMAC-SHA256 takes keys of any length");
        mac.update(canonical_body);
        hex::encode(mac.finalize().into_bytes())
    }
}

/// The seal context of a verification's digits.
pub fn digits_context(client: &str, destination: &str) -> Vec<u8> {
    let mut context = Vec::with_capacity(client.len() + destination.len() + 9);
    context.extend_from_slice(&(client.len() as u64).to_be_bytes());
    context.extend_from_slice(client.as_bytes());
    context.extend_from_slice(destination.as_bytes());
    context
}

/// `callverify.db` → `callverify.db.key`.
pub fn key_file_for(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(KEY_FILE_SUFFIX);
    PathBuf::from(name)
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), SecretKeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|source| SecretKeyError::File {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & KEY_FILE_FORBIDDEN_MODE != 0 {
        return Err(SecretKeyError::Permissions {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path) -> Result<(), SecretKeyError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_digits_are_stable_per_id_and_key() {
        let key = StoreKey::from_bytes([3; SEAL_LEN]);
        let id = VerificationId::parse("vrf_00112233445566778899aabbccddeeff").unwrap();
        let a = key.challenge_digits(&id, 10);
        assert_eq!(a.expose().len(), 10);
        assert!(a.expose().bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(a.expose(), key.challenge_digits(&id, 10).expose());
        let other = VerificationId::parse("vrf_00112233445566778899aabbccddeef0").unwrap();
        assert_ne!(a.expose(), key.challenge_digits(&other, 10).expose());
        let other_key = StoreKey::from_bytes([4; SEAL_LEN]);
        assert_ne!(a.expose(), other_key.challenge_digits(&id, 10).expose());
        // Roughly uniform: over many ids every digit shows up about a tenth of the time.
        let mut counts = [0u32; 10];
        for i in 0..2000u32 {
            let id = VerificationId::parse(&format!("vrf_{i:032x}")).unwrap();
            for b in key.challenge_digits(&id, 6).expose().bytes() {
                counts[usize::from(b - b'0')] += 1;
            }
        }
        for c in counts {
            assert!((1000..1400).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn sealed_digits_check_and_fingerprints_are_keyed() {
        let key = StoreKey::from_bytes([3; SEAL_LEN]);
        let tag = key
            .seal("auth", "+14255550123", &Secret::new("2468"))
            .unwrap();
        let ctx = digits_context("auth", "+14255550123");
        assert!(key.digits_key().sealed(&ctx, tag).matches("2468"));
        assert!(!key.digits_key().sealed(&ctx, tag).matches("2469"));
        let other_ctx = digits_context("other", "+14255550123");
        assert!(!key.digits_key().sealed(&other_ctx, tag).matches("2468"));
        assert_ne!(
            key.fingerprint(b"{\"pin\":\"2468\"}"),
            StoreKey::from_bytes([4; SEAL_LEN]).fingerprint(b"{\"pin\":\"2468\"}")
        );
        assert!(StoreKey::parse_hex("00").is_err());
        assert!(StoreKey::parse_hex(&"0".repeat(64)).is_err());
        assert!(StoreKey::parse_hex(&"ab".repeat(32)).is_ok());
        assert!(!format!("{key:?}").contains("03"));
    }

    #[cfg(unix)]
    #[test]
    fn the_key_file_is_created_0600_reused_and_refused_when_others_can_read_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = key_file_for(&dir.path().join("c.db"));
        let key = StoreKey::from_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = StoreKey::from_file(&path).unwrap();
        assert_eq!(key.0, again.0);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            StoreKey::from_file(&path),
            Err(SecretKeyError::Permissions { .. })
        ));
    }
}
