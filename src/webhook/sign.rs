//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>, "Signature scheme"):
//!
//! ```text
//! webhook-id:        msg_…                         (the same on every attempt)
//! webhook-timestamp: 1674087231                    (seconds since the Unix epoch)
//! webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>
//! ```
//!
//! The key is the base64 part of the client's `whsec_…` secret, decoded.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::WebhookKey;

/// Accepted clock difference between signer and verifier (the spec's recommendation).
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

/// Header names.
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

fn mac(key: &WebhookKey, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.bytes())
        .expect("HMAC-SHA256 takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` value: `v1,<base64>`.
pub fn sign(key: &WebhookKey, id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(key, id, timestamp, body).finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// Why a received webhook did not verify.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is not an integer")]
    BadTimestamp,
    #[error("webhook-timestamp is more than five minutes away from now")]
    StaleTimestamp,
    #[error("no v1 signature in webhook-signature matches")]
    NoMatch,
}

/// Verifies a received webhook (for receivers written in Rust: tests, the demo).
/// `signatures` is the header value: space-separated `v1,<base64>` entries.
pub fn verify(
    key: &WebhookKey,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now_secs: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    if (now_secs - ts).abs() > TIMESTAMP_TOLERANCE_SECS {
        return Err(VerifyError::StaleTimestamp);
    }
    for sig in signatures.split(' ') {
        let Some(b64) = sig.strip_prefix("v1,") else {
            continue;
        };
        let Ok(tag) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            continue;
        };
        // verify_slice compares in constant time.
        if mac(key, id, ts, body).verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    /// The example of the Standard Webhooks specification and its reference libraries.
    #[test]
    fn spec_vector() {
        let key =
            WebhookKey::parse(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let ts = 1614265330;
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(&key, id, ts, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(verify(&key, id, "1614265330", &sig, body, ts + 10), Ok(()));
        assert_eq!(
            verify(&key, id, "1614265330", &sig, b"{}", ts),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&key, id, "1614265330", &sig, body, ts + 301),
            Err(VerifyError::StaleTimestamp)
        );
        let several = format!("v1,AAAA {sig}");
        assert_eq!(verify(&key, id, "1614265330", &several, body, ts), Ok(()));
    }
}
