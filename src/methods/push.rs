//! The `push` method (issue 12): the authenticator app's device key, its Web Push
//! subscription, and the signed messages by which it enrols, listens and answers. Parsing here
//! is of stranger input (the app's JSON): bounded, strict, never panicking (fuzzed by
//! `fuzz/fuzz_targets/push_device.rs`).
//!
//! ```text
//! enrol   POST /app/v1/register  {token, public_key (JWK), subscription?, signature}
//!         signature over  "callverify-enrol\n{token}"
//! listen  GET  /app/v1/events?method=&ts=&sig=   (EventSource: no headers, so a signed query)
//!         signature over  "callverify-events\n{method_id}\n{ts}"
//! answer  POST /app/v1/answer    {verification_id, method_id, nonce, answer, number?, signature}
//!         signature over  "callverify-answer\n{verification_id}\n{method_id}\n{nonce}\n{answer}\n{number}"
//! ```
//!
//! Signatures are ECDSA P-256 with SHA-256 in the IEEE P1363 form WebCrypto produces (R || S,
//! 64 bytes), base64url. The enrolment signature proves the registering app holds the key; the
//! key never leaves the device (WebCrypto, non-extractable), so a stolen enrolment link, once
//! used, or a stolen event-stream URL cannot approve anything.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Verifier as _;
use serde::Deserialize;

/// Longest subscription endpoint accepted, in bytes (real ones are 150 to 500).
pub const ENDPOINT_MAX_LEN: usize = 1024;
/// Largest registration or answer body, in bytes.
pub const BODY_MAX_LEN: usize = 4096;
/// Enrolment and prompt tokens: 256 bits, base64url without padding (43 characters).
pub const TOKEN_LEN: usize = 43;
/// The number matching choices: two decimal digits, as the guide shows ("choose 42").
pub const NUMBER_MIN: u8 = 10;
pub const NUMBER_MAX: u8 = 99;
/// How far an event-stream signature's time may be from ours, in milliseconds.
pub const EVENTS_SKEW_MS: i64 = 60_000;

/// Why a device message was refused. The app is a stranger until its signature checks out.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("the body is not valid JSON of the expected shape: {0}")]
    Shape(String),
    #[error("the body is larger than {BODY_MAX_LEN} bytes")]
    TooLarge,
    #[error("{0}: not valid base64url")]
    Base64(&'static str),
    #[error("public_key: not a P-256 public key (JWK kty EC, crv P-256)")]
    PublicKey,
    #[error("subscription: {0}")]
    Subscription(String),
    #[error("signature: not 64 bytes of R || S")]
    SignatureShape,
    #[error("the signature does not verify with the device key")]
    BadSignature,
    #[error("answer: one of `approve`, `deny`, `fraud`")]
    Answer,
    #[error(
        "number: approve needs a number between {NUMBER_MIN} and {NUMBER_MAX}; deny and fraud none"
    )]
    Number,
}

/// A device's public key: the P-256 point the app generated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceKey(p256::ecdsa::VerifyingKey);

impl DeviceKey {
    /// From the uncompressed SEC1 point, as stored.
    pub fn from_sec1(bytes: &[u8]) -> Result<DeviceKey, DeviceError> {
        p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
            .map(DeviceKey)
            .map_err(|_| DeviceError::PublicKey)
    }

    /// The uncompressed SEC1 point (65 bytes), as stored.
    pub fn to_sec1(&self) -> Vec<u8> {
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(self.0.as_affine(), false)
            .as_bytes()
            .to_vec()
    }

    /// Checks a P1363 signature (base64url) over `message`.
    pub fn verify(&self, message: &str, signature_b64: &str) -> Result<(), DeviceError> {
        let raw = URL_SAFE_NO_PAD
            .decode(signature_b64.trim_end_matches('='))
            .map_err(|_| DeviceError::Base64("signature"))?;
        let signature =
            p256::ecdsa::Signature::from_slice(&raw).map_err(|_| DeviceError::SignatureShape)?;
        self.0
            .verify(message.as_bytes(), &signature)
            .map_err(|_| DeviceError::BadSignature)
    }
}

/// A Web Push subscription (`PushSubscription.toJSON()`), checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub endpoint: url::Url,
    /// `keys.p256dh`: an uncompressed P-256 point on the curve.
    pub p256dh: [u8; 65],
    /// `keys.auth`: 16 bytes.
    pub auth: [u8; 16],
}

/// A device's registration, parsed (its signature not yet checked: that needs the token).
#[derive(Clone, Debug)]
pub struct Registration {
    pub token: String,
    pub key: DeviceKey,
    pub subscription: Option<Subscription>,
    pub signature: String,
}

impl Registration {
    /// The message the enrolment signature covers.
    pub fn message(&self) -> String {
        enrol_message(&self.token)
    }
}

pub fn enrol_message(token: &str) -> String {
    format!("callverify-enrol\n{token}")
}

pub fn events_message(method_id: &str, ts: i64) -> String {
    format!("callverify-events\n{method_id}\n{ts}")
}

/// What the user chose in the app.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Approve, with the number they picked.
    Approve(u8),
    /// Deny: not me now (→ `denied`).
    Deny,
    /// "This wasn't me" (→ `fraud_reported`).
    Fraud,
}

impl Choice {
    fn wire(self) -> (&'static str, String) {
        match self {
            Choice::Approve(n) => ("approve", n.to_string()),
            Choice::Deny => ("deny", String::new()),
            Choice::Fraud => ("fraud", String::new()),
        }
    }
}

/// A device's answer to one request, parsed (signature not yet checked).
#[derive(Clone, Debug)]
pub struct Answer {
    pub verification_id: String,
    pub method_id: String,
    pub nonce: String,
    pub choice: Choice,
    pub signature: String,
}

impl Answer {
    /// The message the answer's signature covers: the request's server-issued nonce, the
    /// verification, the method and the answer with its number, so no part can be swapped.
    pub fn message(&self) -> String {
        answer_message(
            &self.verification_id,
            &self.method_id,
            &self.nonce,
            self.choice,
        )
    }
}

pub fn answer_message(
    verification_id: &str,
    method_id: &str,
    nonce: &str,
    choice: Choice,
) -> String {
    let (answer, number) = choice.wire();
    format!("callverify-answer\n{verification_id}\n{method_id}\n{nonce}\n{answer}\n{number}")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwk {
    kty: String,
    crv: String,
    x: String,
    y: String,
    // WebCrypto's exportKey("jwk") adds these.
    #[serde(default)]
    #[allow(dead_code)]
    ext: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    key_ops: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    p256dh: String,
    auth: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscription {
    endpoint: String,
    #[serde(default, rename = "expirationTime")]
    #[allow(dead_code)]
    expiration_time: Option<f64>,
    keys: RawKeys,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistration {
    token: String,
    public_key: RawJwk,
    #[serde(default)]
    subscription: Option<RawSubscription>,
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnswer {
    verification_id: String,
    method_id: String,
    nonce: String,
    answer: String,
    #[serde(default)]
    number: Option<u8>,
    signature: String,
}

fn b64(field: &'static str, s: &str) -> Result<Vec<u8>, DeviceError> {
    if s.len() > 256 {
        return Err(DeviceError::Base64(field));
    }
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| DeviceError::Base64(field))
}

fn shape(bytes: &[u8]) -> Result<(), DeviceError> {
    if bytes.len() > BODY_MAX_LEN {
        return Err(DeviceError::TooLarge);
    }
    Ok(())
}

/// Where pushes may go: `https` (or `http` to a loopback address when `allow_loopback`, for
/// a local stand-in push service), no credentials, at most [`ENDPOINT_MAX_LEN`] bytes, and not
/// an address inside the operator's network (SSRF guard as for webhooks; names are also
/// re-checked when resolved, see [`crate::webhook::GuardedResolver`]).
pub fn endpoint(raw: &str, allow_loopback: bool) -> Result<url::Url, DeviceError> {
    let refuse = |m: &str| DeviceError::Subscription(m.to_owned());
    if raw.len() > ENDPOINT_MAX_LEN {
        return Err(refuse("endpoint: too long"));
    }
    let url = url::Url::parse(raw).map_err(|_| refuse("endpoint: not a URL"))?;
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::from(ip)),
        Some(url::Host::Ipv6(ip)) => Some(ip.into()),
        Some(url::Host::Domain(_)) => None,
        None => return Err(refuse("endpoint: no host")),
    };
    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
    let loopback = ip.is_some_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if allow_loopback && loopback => {}
        _ => return Err(refuse("endpoint: must be https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("endpoint: no credentials"));
    }
    let private = ip.is_some_and(|ip| !crate::webhook::is_public(ip))
        || host == "localhost"
        || host.ends_with(".localhost");
    if private && !(allow_loopback && loopback) {
        return Err(refuse(
            "endpoint: a loopback, private or link-local address",
        ));
    }
    Ok(url)
}

/// Parses a registration body (signature unchecked).
pub fn parse_registration(bytes: &[u8], allow_loopback: bool) -> Result<Registration, DeviceError> {
    shape(bytes)?;
    let raw: RawRegistration =
        serde_json::from_slice(bytes).map_err(|e| DeviceError::Shape(e.to_string()))?;
    if raw.token.len() != TOKEN_LEN {
        return Err(DeviceError::Shape("token: not an enrolment token".into()));
    }
    if raw.public_key.kty != "EC" || raw.public_key.crv != "P-256" {
        return Err(DeviceError::PublicKey);
    }
    let (x, y) = (
        b64("public_key.x", &raw.public_key.x)?,
        b64("public_key.y", &raw.public_key.y)?,
    );
    if x.len() != 32 || y.len() != 32 {
        return Err(DeviceError::PublicKey);
    }
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    let key = DeviceKey::from_sec1(&point)?;
    let subscription = raw
        .subscription
        .map(|s| -> Result<Subscription, DeviceError> {
            let endpoint = endpoint(&s.endpoint, allow_loopback)?;
            let p256dh: [u8; 65] = b64("keys.p256dh", &s.keys.p256dh)?
                .try_into()
                .map_err(|_| DeviceError::Subscription("keys.p256dh: not 65 bytes".into()))?;
            if p256dh[0] != 0x04 || p256::PublicKey::from_sec1_bytes(&p256dh).is_err() {
                return Err(DeviceError::Subscription(
                    "keys.p256dh: not an uncompressed P-256 point".into(),
                ));
            }
            let auth: [u8; 16] = b64("keys.auth", &s.keys.auth)?
                .try_into()
                .map_err(|_| DeviceError::Subscription("keys.auth: not 16 bytes".into()))?;
            Ok(Subscription {
                endpoint,
                p256dh,
                auth,
            })
        })
        .transpose()?;
    if raw.signature.len() > 128 {
        return Err(DeviceError::SignatureShape);
    }
    Ok(Registration {
        token: raw.token,
        key,
        subscription,
        signature: raw.signature,
    })
}

/// Parses an answer body (signature unchecked).
pub fn parse_answer(bytes: &[u8]) -> Result<Answer, DeviceError> {
    shape(bytes)?;
    let raw: RawAnswer =
        serde_json::from_slice(bytes).map_err(|e| DeviceError::Shape(e.to_string()))?;
    let choice = match (raw.answer.as_str(), raw.number) {
        ("approve", Some(n)) if (NUMBER_MIN..=NUMBER_MAX).contains(&n) => Choice::Approve(n),
        ("deny", None) => Choice::Deny,
        ("fraud", None) => Choice::Fraud,
        ("approve" | "deny" | "fraud", _) => return Err(DeviceError::Number),
        _ => return Err(DeviceError::Answer),
    };
    if [&raw.verification_id, &raw.method_id, &raw.nonce]
        .iter()
        .any(|s| s.len() > 64)
        || raw.signature.len() > 128
    {
        return Err(DeviceError::Shape("a field is too long".into()));
    }
    Ok(Answer {
        verification_id: raw.verification_id,
        method_id: raw.method_id,
        nonce: raw.nonce,
        choice,
        signature: raw.signature,
    })
}

/// The number to show on the sign-in screen and the three the app offers (the right one at
/// a random place among two other distinct numbers).
pub fn draw_numbers() -> (u8, [u8; 3]) {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let right = rng.random_range(NUMBER_MIN..=NUMBER_MAX);
    let mut choices = [right; 3];
    let mut i = 1;
    while i < 3 {
        let n = rng.random_range(NUMBER_MIN..=NUMBER_MAX);
        if !choices[..i].contains(&n) {
            choices[i] = n;
            i += 1;
        }
    }
    let at = rng.random_range(0..3);
    choices.swap(0, at);
    (right, choices)
}

/// A fresh request nonce: 128 random bits, hex.
pub fn nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;

    fn device() -> (p256::ecdsa::SigningKey, serde_json::Value) {
        let secret = crate::webpush::random_secret();
        let point = secret.public_key().to_encoded_point(false);
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "ext": true, "key_ops": ["verify"],
            "x": URL_SAFE_NO_PAD.encode(&point.as_bytes()[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point.as_bytes()[33..]),
        });
        (p256::ecdsa::SigningKey::from(&secret), jwk)
    }

    fn sign(key: &p256::ecdsa::SigningKey, m: &str) -> String {
        let s: p256::ecdsa::Signature = key.sign(m.as_bytes());
        URL_SAFE_NO_PAD.encode(s.to_bytes())
    }

    #[test]
    fn a_registration_parses_and_its_signature_binds_the_token() {
        let (key, jwk) = device();
        let token = "a".repeat(TOKEN_LEN);
        let ua = crate::webpush::random_secret()
            .public_key()
            .to_encoded_point(false);
        let body = serde_json::json!({
            "token": token, "public_key": jwk,
            "subscription": {"endpoint": "https://push.example.net/x", "expirationTime": null,
                "keys": {"p256dh": URL_SAFE_NO_PAD.encode(ua.as_bytes()),
                         "auth": URL_SAFE_NO_PAD.encode([1u8; 16])}},
            "signature": sign(&key, &enrol_message(&token)),
        });
        let r = parse_registration(body.to_string().as_bytes(), false).unwrap();
        r.key.verify(&r.message(), &r.signature).unwrap();
        let other = "b".repeat(TOKEN_LEN);
        assert_eq!(
            r.key.verify(&enrol_message(&other), &r.signature),
            Err(DeviceError::BadSignature)
        );
    }

    #[test]
    fn endpoints_are_https_and_public_unless_loopback_is_allowed() {
        assert!(endpoint("https://fcm.googleapis.com/fcm/send/abc", false).is_ok());
        assert!(endpoint("http://fcm.googleapis.com/fcm/send/abc", false).is_err());
        assert!(endpoint("https://10.0.0.1/x", false).is_err());
        assert!(endpoint("https://[::1]/x", false).is_err());
        assert!(endpoint("https://localhost/x", false).is_err());
        assert!(endpoint("http://127.0.0.1:9/x", false).is_err());
        assert!(endpoint("http://127.0.0.1:9/x", true).is_ok());
        assert!(endpoint("http://10.0.0.1/x", true).is_err());
        assert!(endpoint("https://u:p@push.example.net/x", false).is_err());
        assert!(
            endpoint(
                &format!("https://push.example.net/{}", "a".repeat(ENDPOINT_MAX_LEN)),
                false
            )
            .is_err()
        );
        assert!(endpoint("file:///etc/passwd", true).is_err());
    }

    #[test]
    fn answers_carry_a_number_only_when_approving() {
        let ok = |a: &str, n: Option<u8>| {
            parse_answer(
                serde_json::json!({"verification_id": "v", "method_id": "m", "nonce": "n",
                "answer": a, "number": n, "signature": "AA"})
                .to_string()
                .as_bytes(),
            )
        };
        assert_eq!(ok("approve", Some(42)).unwrap().choice, Choice::Approve(42));
        assert_eq!(ok("deny", None).unwrap().choice, Choice::Deny);
        assert_eq!(ok("fraud", None).unwrap().choice, Choice::Fraud);
        assert_eq!(ok("approve", None).unwrap_err(), DeviceError::Number);
        assert_eq!(ok("approve", Some(9)).unwrap_err(), DeviceError::Number);
        assert_eq!(ok("deny", Some(42)).unwrap_err(), DeviceError::Number);
        assert_eq!(ok("yes", None).unwrap_err(), DeviceError::Answer);
        assert!(parse_answer(b"{").is_err());
        assert_eq!(
            parse_answer(&[b' '; BODY_MAX_LEN + 1]).unwrap_err(),
            DeviceError::TooLarge
        );
    }

    #[test]
    fn three_distinct_numbers_include_the_right_one() {
        for _ in 0..200 {
            let (right, c) = draw_numbers();
            assert!(c.contains(&right));
            assert!(c[0] != c[1] && c[1] != c[2] && c[0] != c[2]);
            assert!(c.iter().all(|n| (NUMBER_MIN..=NUMBER_MAX).contains(n)));
        }
    }
}
