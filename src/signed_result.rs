//! The hosted prompt's signed result: a compact JWS (RFC 7515, `alg` EdDSA with Ed25519,
//! RFC 8037) that the browser carries back to the auth server's `return_url`, and the JWKS
//! (RFC 7517) at `GET /v1/jwks.json` that verifies it with any JOSE library.

use std::fmt;

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// The `typ` header of the token (RFC 7519 §5.1).
const TOKEN_TYPE: &str = "JWT";

/// Why the signing key or a signature could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SignedResultError {
    /// Configuration: `signin.signing_key` is not an Ed25519 private key in PKCS#8 PEM.
    #[error(
        "not an Ed25519 private key in PKCS#8 PEM (make one with `openssl genpkey -algorithm ed25519`)"
    )]
    BadKey,
    #[error("cannot sign the result: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// The method that decided, as the token names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodClaim {
    /// `mth_…` for a verification by user; absent for a bare phone number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
}

/// The claims of a signed result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultClaims {
    /// This service (`signin.public_url`).
    pub iss: String,
    /// The API client the verification belongs to.
    pub aud: String,
    /// Seconds since the Unix epoch.
    pub iat: i64,
    pub exp: i64,
    /// Unique per token, so an auth server can refuse a token it has already used.
    pub jti: String,
    pub verification_id: String,
    /// `usr_…`, or null for a verification by phone number.
    pub user: Option<String>,
    /// The result vocabulary of the API (`confirmed`, `wrong_digits`, …).
    pub result: String,
    pub approved: bool,
    pub method: MethodClaim,
}

/// The result-signing key.
#[derive(Clone)]
pub struct ResultSigner {
    encoding: EncodingKey,
    public: [u8; 32],
    kid: String,
}

impl fmt::Debug for ResultSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResultSigner(kid {})", self.kid)
    }
}

impl ResultSigner {
    /// From `signin.signing_key`: an Ed25519 private key, PKCS#8 PEM.
    pub fn from_pem(pem: &Secret) -> Result<ResultSigner, SignedResultError> {
        let key = SigningKey::from_pkcs8_pem(pem.expose().trim())
            .map_err(|_| SignedResultError::BadKey)?;
        ResultSigner::from_signing_key(&key)
    }

    fn from_signing_key(key: &SigningKey) -> Result<ResultSigner, SignedResultError> {
        let der = key.to_pkcs8_der().map_err(|_| SignedResultError::BadKey)?;
        let public = key.verifying_key().to_bytes();
        Ok(ResultSigner {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            kid: thumbprint(&public),
            public,
        })
    }

    /// A key from 32 seed bytes (tests, the demo).
    pub fn from_seed(seed: &[u8; 32]) -> Result<ResultSigner, SignedResultError> {
        ResultSigner::from_signing_key(&SigningKey::from_bytes(seed))
    }

    /// The key id: the RFC 7638 JWK thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The compact JWS of `claims`.
    pub fn sign(&self, claims: &ResultClaims) -> Result<String, SignedResultError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = Some(TOKEN_TYPE.to_owned());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// The public key as a JWK (RFC 8037 §2: `kty` OKP, `crv` Ed25519, `x`).
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(&self.public),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// The JWK Set served at `/v1/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk()] })
    }

    /// The public key, base64url (the JWK's `x`).
    pub fn public_x(&self) -> String {
        b64url(&self.public)
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7638 §3: SHA-256 over the required members in lexicographic order, no spaces.
fn thumbprint(public: &[u8; 32]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        b64url(public)
    );
    b64url(&Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn claims() -> ResultClaims {
        ResultClaims {
            iss: "https://verify.example.com".into(),
            aud: "auth".into(),
            iat: 1_700_000_000,
            exp: 4_000_000_000,
            jti: "abc".into(),
            verification_id: "vrf_00".into(),
            user: Some("usr_01".into()),
            result: "confirmed".into(),
            approved: true,
            method: MethodClaim {
                id: Some("mth_02".into()),
                kind: "phone".into(),
            },
        }
    }

    #[test]
    fn signs_a_token_the_jwk_verifies() {
        let signer = ResultSigner::from_seed(&[9; 32]).unwrap();
        let token = signer.sign(&claims()).unwrap();
        assert_eq!(token.split('.').count(), 3);
        let key = DecodingKey::from_ed_components(&signer.public_x()).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["auth"]);
        let data = jsonwebtoken::decode::<ResultClaims>(&token, &key, &validation).unwrap();
        assert_eq!(data.claims, claims());
        assert_eq!(data.header.kid.as_deref(), Some(signer.kid()));
        // Another key does not verify it.
        let other = ResultSigner::from_seed(&[10; 32]).unwrap();
        let key = DecodingKey::from_ed_components(&other.public_x()).unwrap();
        assert!(jsonwebtoken::decode::<ResultClaims>(&token, &key, &validation).is_err());
    }

    #[test]
    fn rfc8037_appendix_a_thumbprint() {
        // RFC 8037 A.1/A.3: the public key and its RFC 7638 thumbprint.
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let x: [u8; 32] = x.try_into().unwrap();
        assert_eq!(
            thumbprint(&x),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn pem_keys_load_and_garbage_is_refused() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let pem = key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap();
        let signer = ResultSigner::from_pem(&Secret::new(pem.as_str())).unwrap();
        assert_eq!(
            signer.kid(),
            ResultSigner::from_seed(&[4; 32]).unwrap().kid()
        );
        assert!(
            ResultSigner::from_pem(&Secret::new("-----BEGIN PRIVATE KEY-----\nAAAA\n")).is_err()
        );
    }
}
