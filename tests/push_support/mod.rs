//! Shared by the push tests: a user agent's subscription keys made and used by independent
//! code (Python's `cryptography` generates them as a browser would; `http_ece` decrypts what
//! callverify posts; `jwcrypto` verifies its VAPID token), and a device key that signs as
//! WebCrypto does (ECDSA P-256, SHA-256, R || S).
#![allow(dead_code)]

use std::io::Write as _;
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use serde_json::{Value, json};

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

const PY_KEYS: &str = r#"
import base64, json, os
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import serialization
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
key = ec.generate_private_key(ec.SECP256R1())
pub = key.public_key().public_bytes(serialization.Encoding.X962,
                                    serialization.PublicFormat.UncompressedPoint)
pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption()).decode()
print(json.dumps({"p256dh": b64(pub), "auth": b64(os.urandom(16)), "pem": pem}))
"#;

const PY_OPEN: &str = r#"
import base64, json, os, sys, time
try:
    import http_ece
    from cryptography.hazmat.primitives import serialization
    from jwcrypto import jwk, jws
except ImportError as e:
    print("missing:", e); sys.exit(3)
d = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
body = sys.stdin.buffer.read()
key = serialization.load_pem_private_key(os.environ["UA_PEM"].encode(), None)
plain = http_ece.decrypt(body, private_key=key, auth_secret=d(os.environ["UA_AUTH"]),
                         version="aes128gcm")
auth = os.environ["AUTHORIZATION"]
assert auth.startswith("vapid "), auth
params = dict(p.strip().split("=", 1) for p in auth[len("vapid "):].split(","))
point = d(params["k"])
assert len(point) == 65 and point[0] == 4
vapid = jwk.JWK(kty="EC", crv="P-256", x=base64.urlsafe_b64encode(point[1:33]).rstrip(b"=").decode(),
                y=base64.urlsafe_b64encode(point[33:]).rstrip(b"=").decode())
token = jws.JWS()
token.deserialize(params["t"])
token.verify(vapid, alg="ES256")
claims = json.loads(token.payload)
header = token.jose_header
print(json.dumps({"plain": plain.decode(), "claims": claims, "header": header, "k": params["k"],
                  "now": int(time.time())}))
"#;

/// A user agent's push subscription keys, made by Python's `cryptography`.
pub struct UaKeys {
    pub p256dh: String,
    pub auth: String,
    pem: String,
}

impl UaKeys {
    pub fn generate() -> UaKeys {
        let out = Command::new(python())
            .arg("-c")
            .arg(PY_KEYS)
            .output()
            .expect("python with the cryptography package (scripts/test installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        UaKeys {
            p256dh: v["p256dh"].as_str().unwrap().to_owned(),
            auth: v["auth"].as_str().unwrap().to_owned(),
            pem: v["pem"].as_str().unwrap().to_owned(),
        }
    }

    /// The subscription JSON a browser's `PushSubscription.toJSON()` gives.
    pub fn subscription(&self, endpoint: &str) -> Value {
        json!({"endpoint": endpoint, "expirationTime": null,
               "keys": {"p256dh": self.p256dh, "auth": self.auth}})
    }

    /// Decrypts a posted body with http_ece and verifies its VAPID token with jwcrypto:
    /// `{"plain", "claims", "header", "k", "now"}`, or `Err` with Python's complaint.
    pub fn open(&self, body: &[u8], authorization: &str) -> Result<Value, String> {
        let mut child = Command::new(python())
            .arg("-c")
            .arg(PY_OPEN)
            .env("UA_PEM", &self.pem)
            .env("UA_AUTH", &self.auth)
            .env("AUTHORIZATION", authorization)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python");
        child.stdin.take().unwrap().write_all(body).unwrap();
        let out = child.wait_with_output().unwrap();
        match out.status.code() {
            Some(0) => Ok(serde_json::from_slice(&out.stdout).unwrap()),
            Some(3) => panic!(
                "python lacks http_ece/jwcrypto: {}",
                String::from_utf8_lossy(&out.stdout)
            ),
            _ => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }
}

/// A device key that signs as WebCrypto does.
pub struct Device {
    key: p256::ecdsa::SigningKey,
}

impl Device {
    pub fn new() -> Device {
        Device {
            key: p256::ecdsa::SigningKey::from(&callverify::webpush::random_secret()),
        }
    }

    /// `exportKey("jwk", publicKey)`.
    pub fn jwk(&self) -> Value {
        let point = self.key.verifying_key().as_affine().to_encoded_point(false);
        json!({"kty": "EC", "crv": "P-256", "ext": true, "key_ops": ["verify"],
               "x": URL_SAFE_NO_PAD.encode(&point.as_bytes()[1..33]),
               "y": URL_SAFE_NO_PAD.encode(&point.as_bytes()[33..])})
    }

    pub fn sign(&self, message: &str) -> String {
        let s: p256::ecdsa::Signature = self.key.sign(message.as_bytes());
        URL_SAFE_NO_PAD.encode(s.to_bytes())
    }

    /// The registration body for an enrolment token.
    pub fn registration(&self, token: &str, subscription: Option<Value>) -> Value {
        json!({"token": token, "public_key": self.jwk(), "subscription": subscription,
               "signature": self.sign(&format!("callverify-enrol\n{token}"))})
    }

    /// A signed answer to a request message (`answer`: approve, deny, fraud).
    pub fn answer(&self, request: &Value, answer: &str, number: Option<u8>) -> Value {
        let (vid, mid, nonce) = (
            request["verification_id"].as_str().unwrap(),
            request["method_id"].as_str().unwrap(),
            request["nonce"].as_str().unwrap(),
        );
        let n = number.map(|n| n.to_string()).unwrap_or_default();
        let signature = self.sign(&format!(
            "callverify-answer\n{vid}\n{mid}\n{nonce}\n{answer}\n{n}"
        ));
        let mut body = json!({"verification_id": vid, "method_id": mid, "nonce": nonce,
                              "answer": answer, "signature": signature});
        if let Some(n) = number {
            body["number"] = json!(n);
        }
        body
    }
}

/// The token of an `enrol_url` (`…/app/#enrol=<token>`).
pub fn enrol_token(enrol_url: &str) -> String {
    enrol_url
        .split("#enrol=")
        .nth(1)
        .expect("enrol token")
        .to_owned()
}

/// `[push]` for tests: a fresh VAPID key, loopback endpoints allowed.
pub fn push_config(timeout_secs: u64) -> String {
    let vapid = URL_SAFE_NO_PAD.encode(callverify::webpush::random_secret().to_bytes());
    format!(
        "[push]\nvapid_private_key = \"{vapid}\"\nvapid_subject = \"mailto:ops@example.com\"\n\
         timeout_secs = {timeout_secs}\nallow_loopback_endpoints = true\n"
    )
}
