//! Web Push for the `push` method (issue 12): message encryption (RFC 8291, `aes128gcm` of RFC
//! 8188) and application-server identification (VAPID, RFC 8292). Pure functions of their
//! inputs (keys, salt, time); [`send`] is the HTTP side.
//!
//! ```text
//! aes128gcm body (RFC 8188 section 2.1, one record):
//! +-----------+--------+-----------+-----------------+--------------------------------+
//! | salt (16) | rs (4) | idlen (1) | keyid (65):     | AES-128-GCM(plaintext || 0x02) |
//! |           | 4096   | 65        | as_public SEC1  | + 16-byte tag                  |
//! +-----------+--------+-----------+-----------------+--------------------------------+
//! ```

pub mod send;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::DecodePrivateKey as _;
use sha2::Sha256;

use crate::config::Secret;

/// Record size written in the header (RFC 8188 section 2.1; RFC 8291 section 4: push services
/// accept at least 4096 octets of payload, so one record of this size always fits).
pub const RECORD_SIZE: u32 = 4096;
/// Header bytes before the ciphertext: salt 16 + rs 4 + idlen 1 + keyid 65.
const HEADER_LEN: usize = 16 + 4 + 1 + 65;
/// AES-GCM tag length (RFC 8188 section 2).
const TAG_LEN: usize = 16;
/// Longest plaintext: the whole body must fit the 4096 octets push services must accept
/// (RFC 8291 section 4), after the header, the padding delimiter and the tag.
pub const MAX_PLAINTEXT: usize = RECORD_SIZE as usize - HEADER_LEN - 1 - TAG_LEN;
/// Lifetime of a VAPID token; RFC 8292 section 2: `exp` no more than 24 hours ahead.
pub const VAPID_TTL_SECS: i64 = 12 * 3600;

/// Why a push message could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PushCryptoError {
    /// The subscription's `p256dh` is not an uncompressed P-256 point (stranger input).
    #[error("keys.p256dh is not an uncompressed P-256 public key")]
    BadUaKey,
    /// The subscription's `auth` is not 16 bytes.
    #[error("keys.auth is not 16 bytes")]
    BadAuth,
    #[error("the message is {0} bytes, more than {MAX_PLAINTEXT} fit one push record")]
    TooLong(usize),
    /// The configured VAPID key cannot be read.
    #[error("VAPID key: {0}")]
    VapidKey(&'static str),
    /// The endpoint has no origin to address the token to.
    #[error("the endpoint has no https/http origin")]
    NoOrigin,
}

/// A subscription's keys as the user agent gave them (`PushSubscription.getKey`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UaKeys {
    /// `p256dh`: uncompressed SEC1 point (65 bytes, leading 0x04).
    pub p256dh: [u8; 65],
    /// `auth`: the 16-byte authentication secret.
    pub auth: [u8; 16],
}

impl UaKeys {
    /// Checks both keys (the point must be on the curve).
    pub fn new(p256dh: &[u8], auth: &[u8]) -> Result<UaKeys, PushCryptoError> {
        let p256dh: [u8; 65] = p256dh.try_into().map_err(|_| PushCryptoError::BadUaKey)?;
        if p256dh[0] != 0x04 || p256::PublicKey::from_sec1_bytes(&p256dh).is_err() {
            return Err(PushCryptoError::BadUaKey);
        }
        let auth: [u8; 16] = auth.try_into().map_err(|_| PushCryptoError::BadAuth)?;
        Ok(UaKeys { p256dh, auth })
    }
}

/// Encrypts `plaintext` for a user agent (RFC 8291 section 3.4), with the application
/// server's one-time key `as_secret` and a random `salt` (both chosen by the caller, so the
/// RFC's Appendix A example can be replayed).
pub fn encrypt(
    plaintext: &[u8],
    ua: &UaKeys,
    as_secret: &p256::SecretKey,
    salt: [u8; 16],
) -> Result<Vec<u8>, PushCryptoError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(PushCryptoError::TooLong(plaintext.len()));
    }
    let ua_public =
        p256::PublicKey::from_sec1_bytes(&ua.p256dh).map_err(|_| PushCryptoError::BadUaKey)?;
    let as_public = as_secret.public_key().to_encoded_point(false);
    let as_public = as_public.as_bytes();
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua_public.as_affine());
    // PRK_key = HMAC-SHA-256(auth_secret, ecdh_secret);
    // key_info = "WebPush: info" || 0x00 || ua_public || as_public;
    // IKM = HMAC-SHA-256(PRK_key, key_info || 0x01)  (RFC 8291 section 3.3)
    let mut key_info = Vec::with_capacity(14 + 65 + 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(&ua.p256dh);
    key_info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&ua.auth), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|_| PushCryptoError::VapidKey("hkdf length"))?;
    // RFC 8188 section 2.2 and 2.3: CEK and NONCE from the salt.
    let prk = Hkdf::<Sha256>::new(Some(&salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .and_then(|()| prk.expand(b"Content-Encoding: nonce\0", &mut nonce))
        .map_err(|_| PushCryptoError::VapidKey("hkdf length"))?;
    // One record, sequence number 0 (the nonce as derived); the last record ends with 0x02.
    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    record.push(0x02);
    let cipher = aes_gcm::Aes128Gcm::new(&cek.into());
    let sealed = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &record,
                aad: b"",
            },
        )
        .map_err(|_| PushCryptoError::TooLong(plaintext.len()))?;
    let mut body = Vec::with_capacity(HEADER_LEN + sealed.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public);
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// Decrypts a one-record `aes128gcm` push message as a user agent does (the receiving side
/// of [`encrypt`]): for the simulated device of `callverify demo --method push`. `None` when
/// the body is malformed or does not open with these keys.
pub fn decrypt(body: &[u8], ua_secret: &p256::SecretKey, auth: &[u8; 16]) -> Option<Vec<u8>> {
    if body.len() < HEADER_LEN + TAG_LEN || body[20] != 65 {
        return None;
    }
    let salt = &body[..16];
    let rs = u32::from_be_bytes(body[16..20].try_into().ok()?);
    if body.len() - HEADER_LEN > rs as usize {
        return None; // more than one record: not what we send
    }
    let as_public = p256::PublicKey::from_sec1_bytes(&body[21..86]).ok()?;
    let shared = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), as_public.as_affine());
    let ua_public = ua_secret.public_key().to_encoded_point(false);
    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(ua_public.as_bytes());
    info.extend_from_slice(&body[21..86]);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes())
        .expand(&info, &mut ikm)
        .ok()?;
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .ok()?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce).ok()?;
    let mut plain = aes_gcm::Aes128Gcm::new(&cek.into())
        .decrypt(&nonce.into(), &body[HEADER_LEN..])
        .ok()?;
    // RFC 8188 section 2: the last record's padding ends in 0x02 after optional zeros.
    while plain.last() == Some(&0) {
        plain.pop();
    }
    (plain.pop() == Some(0x02)).then_some(plain)
}

/// A fresh P-256 private key from the operating system's CSPRNG (via `rand`): a uniformly
/// random 32-byte string is a valid scalar except with probability about 2^-32; draw again then.
pub fn random_secret() -> p256::SecretKey {
    loop {
        if let Ok(key) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
            return key;
        }
    }
}

/// The application server's VAPID key (RFC 8292), from `push.vapid_private_key`.
#[derive(Clone)]
pub struct VapidKey {
    signing: p256::ecdsa::SigningKey,
    /// The uncompressed public key, base64url (the `k=` parameter and `GET /v1/vapid`).
    public_b64: String,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VapidKey(public {})", self.public_b64)
    }
}

impl VapidKey {
    /// PKCS#8 PEM, SEC1 PEM (`openssl ecparam -genkey -name prime256v1`), or the raw 32-byte
    /// scalar in base64url.
    pub fn from_config(secret: &Secret) -> Result<VapidKey, PushCryptoError> {
        let raw = secret.expose().trim();
        let key = if raw.contains("BEGIN PRIVATE KEY") {
            p256::SecretKey::from_pkcs8_pem(raw)
                .map_err(|_| PushCryptoError::VapidKey("not a P-256 PKCS#8 PEM key"))?
        } else if raw.contains("BEGIN EC PRIVATE KEY") {
            p256::SecretKey::from_sec1_pem(raw)
                .map_err(|_| PushCryptoError::VapidKey("not a P-256 SEC1 PEM key"))?
        } else {
            let bytes = URL_SAFE_NO_PAD
                .decode(raw.trim_end_matches('='))
                .map_err(|_| PushCryptoError::VapidKey("neither PEM nor base64url"))?;
            if bytes.len() != 32 {
                return Err(PushCryptoError::VapidKey(
                    "a raw key is the 32-byte private scalar",
                ));
            }
            p256::SecretKey::from_slice(&bytes)
                .map_err(|_| PushCryptoError::VapidKey("not a valid P-256 scalar"))?
        };
        Ok(VapidKey::from_secret(&key))
    }

    pub fn from_secret(key: &p256::SecretKey) -> VapidKey {
        let public = key.public_key().to_encoded_point(false);
        VapidKey {
            signing: p256::ecdsa::SigningKey::from(key),
            public_b64: URL_SAFE_NO_PAD.encode(public.as_bytes()),
        }
    }

    /// The public key, base64url of the uncompressed point (the app's
    /// `applicationServerKey`).
    pub fn public_b64(&self) -> &str {
        &self.public_b64
    }

    /// `Authorization: vapid t=<JWT>, k=<public key>` for a request to `endpoint` at `now`
    /// (unix seconds): an ES256 JWT with `aud` the endpoint's origin, `exp` within 24 hours and
    /// `sub` the operator's contact (RFC 8292 sections 2 and 3).
    pub fn authorization(
        &self,
        endpoint: &url::Url,
        subject: &str,
        now: i64,
    ) -> Result<String, PushCryptoError> {
        let origin = endpoint.origin();
        if !origin.is_tuple() {
            return Err(PushCryptoError::NoOrigin);
        }
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({
            "aud": origin.ascii_serialization(),
            "exp": now + VAPID_TTL_SECS,
            "sub": subject,
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{header}.{claims}");
        // JWS ES256 (RFC 7518 section 3.4): SHA-256, signature as R || S, 64 bytes.
        let signature: p256::ecdsa::Signature = self.signing.sign(input.as_bytes());
        let jwt = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        Ok(format!("vapid t={jwt}, k={}", self.public_b64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_opens_with_the_user_agents_keys_only() {
        let ua = random_secret();
        let auth = [7u8; 16];
        let keys = UaKeys::new(ua.public_key().to_encoded_point(false).as_bytes(), &auth).unwrap();
        let eph = random_secret();
        let body = encrypt(b"When I grow up", &keys, &eph, [1u8; 16]).unwrap();
        assert_eq!(body.len(), HEADER_LEN + 14 + 1 + TAG_LEN);
        assert_eq!(decrypt(&body, &ua, &auth).unwrap(), b"When I grow up");
        assert!(
            decrypt(&body, &random_secret(), &auth).is_none(),
            "another key"
        );
        assert!(
            decrypt(&body, &ua, &[8u8; 16]).is_none(),
            "another auth secret"
        );
        assert!(decrypt(&body[..40], &ua, &auth).is_none(), "truncated");
        let long = vec![b'x'; MAX_PLAINTEXT + 1];
        assert!(matches!(
            encrypt(&long, &keys, &eph, [1u8; 16]),
            Err(PushCryptoError::TooLong(_))
        ));
        assert!(
            encrypt(&vec![b'x'; MAX_PLAINTEXT], &keys, &eph, [1u8; 16])
                .unwrap()
                .len()
                <= 4096
        );
    }

    #[test]
    fn subscription_keys_are_checked() {
        assert!(
            UaKeys::new(&[4u8; 65], &[0u8; 16]).is_err(),
            "not on the curve"
        );
        assert!(UaKeys::new(&[4u8; 10], &[0u8; 16]).is_err());
        let ua = random_secret();
        let point = ua.public_key().to_encoded_point(false);
        assert!(UaKeys::new(point.as_bytes(), &[0u8; 15]).is_err());
        let compressed = ua.public_key().to_encoded_point(true);
        assert!(UaKeys::new(compressed.as_bytes(), &[0u8; 16]).is_err());
    }

    #[test]
    fn vapid_keys_load_from_openssl_pem() {
        // `openssl ecparam -genkey -name prime256v1 -noout` (SEC1) and
        // `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` (PKCS#8).
        const SEC1: &str = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEILJ/VC/cX0+d+1/o+31AKrN8/IMz1UbtyL5NkTJMfGjJoAoGCCqGSM49\nAwEHoUQDQgAEsmdZP/Hbt9enNwmPzSuK3nrf5FkxbsSuvKyAnUEApx/ytgj9uOZp\nTnbpCYOumQBwhXxv/Ogz+ICfLYnHG0Rc3w==\n-----END EC PRIVATE KEY-----";
        const PKCS8: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg9loY9KCy3xSe4rHk\nq7anyuoTbbgUXEWi44WTsawcFj6hRANCAAQ881K2TqXu103VlUbuOlFDhgTwQNs9\nXPQxZImHD87z8usvH95EB+IiFDbD5SGOwkpeF411dWd/UIIWtK7Gpjc2\n-----END PRIVATE KEY-----";
        for pem in [SEC1, PKCS8] {
            let key = VapidKey::from_config(&Secret::new(pem)).unwrap();
            assert_eq!(URL_SAFE_NO_PAD.decode(key.public_b64()).unwrap().len(), 65);
        }
        assert!(VapidKey::from_config(&Secret::new(SEC1.replace("MHc", "MHd"))).is_err());
    }

    #[test]
    fn vapid_tokens_are_es256_for_the_endpoint_origin() {
        use p256::ecdsa::signature::Verifier as _;
        let key = random_secret();
        let raw = Secret::new(URL_SAFE_NO_PAD.encode(key.to_bytes()));
        let vapid = VapidKey::from_config(&raw).unwrap();
        let endpoint = url::Url::parse("https://push.example.net:8443/wpush/v2/abc").unwrap();
        let header = vapid
            .authorization(&endpoint, "mailto:ops@example.com", 1_700_000_000)
            .unwrap();
        let (t, k) = header
            .strip_prefix("vapid t=")
            .unwrap()
            .split_once(", k=")
            .unwrap();
        assert_eq!(k, vapid.public_b64());
        let parts: Vec<&str> = t.split('.').collect();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://push.example.net:8443");
        assert_eq!(claims["exp"], 1_700_000_000 + VAPID_TTL_SECS);
        assert_eq!(claims["sub"], "mailto:ops@example.com");
        let sig =
            p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        let verifying = p256::ecdsa::VerifyingKey::from(key.public_key());
        verifying
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        assert!(VapidKey::from_config(&Secret::new("AAAA")).is_err());
    }
}
