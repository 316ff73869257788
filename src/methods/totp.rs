//! `app_code`: RFC 6238 TOTP (SHA-1, 6 digits, 30-second steps, 160-bit secret), the code
//! check with its ±1 step window, and the enrolment ceremony (the pending state the caller
//! keeps and hands back with the first code, so activation cannot skip the proof).

use std::fmt;

use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

use crate::seal::{SealError, Sealer};
use crate::user::{Method, MethodDetail, MethodId, MethodStatus, SealedSecret};

/// Digits of a code (RFC 6238 §5.3 / RFC 4226 §5.3: 6 is the usual Digit value).
pub const DIGITS: usize = 6;
/// Time step X (RFC 6238 §4.1 default, and what authenticator apps assume), seconds.
pub const STEP_SECS: u64 = 30;
/// Secret length: 160 bits, the HMAC-SHA-1 output size (RFC 4226 §4 R6 recommends it).
pub const SECRET_LEN: usize = 20;
/// Steps accepted either side of now (RFC 6238 §5.2: "at most one time step" of delay is the
/// recommended network-delay allowance; clock drift of authenticator apps is similar).
pub const WINDOW_STEPS: u64 = 1;

/// The RFC 6238 time step of a Unix time in seconds (T0 = 0).
pub fn step_at(unix_secs: u64) -> u64 {
    unix_secs / STEP_SECS
}

/// A code as typed: exactly six ASCII digits ("parse, don't validate"). `Debug` redacts.
#[derive(Clone, PartialEq, Eq)]
pub struct Code(String);

impl Code {
    /// Exactly [`DIGITS`] ASCII digits; surrounding spaces are forgiven (copy-paste), inner
    /// ones are not.
    pub fn parse(s: &str) -> Option<Code> {
        let s = s.trim();
        (s.len() == DIGITS && s.bytes().all(|b| b.is_ascii_digit())).then(|| Code(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Code(******)")
    }
}

/// A TOTP generator over one secret.
pub struct Totp {
    inner: TOTP,
}

impl fmt::Debug for Totp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Totp([redacted])")
    }
}

impl Totp {
    /// Over `secret`, labelled for authenticator apps as `issuer:account`.
    pub fn new(secret: Vec<u8>, issuer: &str, account: &str) -> Totp {
        Totp::with_digits(secret, DIGITS, issuer, account)
    }

    fn with_digits(secret: Vec<u8>, digits: usize, issuer: &str, account: &str) -> Totp {
        // The otpauth label is `issuer:account`; a `:` inside either would split it wrongly.
        let clean = |s: &str| s.replace(':', "_");
        Totp {
            inner: TOTP::new_unchecked(
                Algorithm::SHA1,
                digits,
                0,
                STEP_SECS,
                secret,
                Some(clean(issuer)),
                clean(account),
            ),
        }
    }

    /// A fresh random 160-bit secret.
    pub fn random_secret() -> Vec<u8> {
        rand::random::<[u8; SECRET_LEN]>().to_vec()
    }

    /// The code of time step `step`.
    pub fn code_at_step(&self, step: u64) -> String {
        self.inner.generate(step.saturating_mul(STEP_SECS))
    }

    /// The step within ±[`WINDOW_STEPS`] of `unix_secs` whose code is `code`, comparing every
    /// candidate in constant time.
    pub fn matching_step(&self, code: &Code, unix_secs: u64) -> Option<u64> {
        let now = step_at(unix_secs);
        let mut found = None;
        for step in now.saturating_sub(WINDOW_STEPS)..=now.saturating_add(WINDOW_STEPS) {
            let candidate = self.code_at_step(step);
            if bool::from(candidate.as_bytes().ct_eq(code.as_str().as_bytes())) {
                found = Some(step);
            }
        }
        found
    }

    /// The `otpauth://totp/…` URI (Google Authenticator key URI format) an app scans.
    pub fn otpauth_uri(&self) -> String {
        self.inner.get_url()
    }

    /// The secret in base32 (what a person types when they cannot scan).
    pub fn secret_base32(&self) -> String {
        self.inner.get_secret_base32()
    }
}

/// Why an enrolment step failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("the QR code cannot be drawn: {0}")]
    Qr(#[from] qrcode::types::QrError),
    /// The code does not match: the app does not have the secret (or its clock is off).
    #[error("the code does not match")]
    WrongCode,
}

/// What the user sees once, at enrolment: the URI to scan and its QR code.
#[derive(Debug)]
pub struct AppCodeOffer {
    pub otpauth_uri: String,
    /// An `<svg …>` element (no XML declaration), ready to inline in a page.
    pub qr_svg: String,
}

/// An enrolment begun and not proven: the sealed secret the store keeps with the `pending`
/// method. Only [`PendingAppCode::finish`] with a valid code turns it into an active method.
#[derive(Debug)]
pub struct PendingAppCode {
    pub method: MethodId,
    pub secret: SealedSecret,
}

/// An enrolment proven by a code at `step` (never accepted again for sign-in).
#[derive(Debug)]
pub struct ProvenAppCode {
    pub method: MethodId,
    pub step: u64,
}

/// Starts an `app_code` enrolment for `method`: a fresh secret, sealed for the store, and the
/// offer to show once.
pub fn begin_enrolment(
    sealer: &Sealer,
    method: &MethodId,
    issuer: &str,
    account: &str,
) -> Result<(PendingAppCode, AppCodeOffer), EnrolError> {
    let secret = Totp::random_secret();
    let sealed = sealer.seal(method, &secret)?;
    let totp = Totp::new(secret, issuer, account);
    let otpauth_uri = totp.otpauth_uri();
    let qr_svg = qr_svg(&otpauth_uri)?;
    Ok((
        PendingAppCode {
            method: method.clone(),
            secret: sealed,
        },
        AppCodeOffer {
            otpauth_uri,
            qr_svg,
        },
    ))
}

impl PendingAppCode {
    /// The pending enrolment a stored method is in: `None` unless it is a pending app code.
    pub fn of(method: &Method) -> Option<PendingAppCode> {
        match (&method.status, &method.detail) {
            (MethodStatus::Pending, MethodDetail::AppCode { secret }) => Some(PendingAppCode {
                method: method.id.clone(),
                secret: secret.clone(),
            }),
            _ => None,
        }
    }

    /// Checks the first code the app shows.
    pub fn finish(
        self,
        sealer: &Sealer,
        code: &Code,
        unix_secs: u64,
    ) -> Result<ProvenAppCode, EnrolError> {
        let secret = sealer.open(&self.method, &self.secret)?;
        let totp = Totp::new(secret, "", "");
        let step = totp
            .matching_step(code, unix_secs)
            .ok_or(EnrolError::WrongCode)?;
        Ok(ProvenAppCode {
            method: self.method,
            step,
        })
    }
}

/// Checks a sign-in code against an active app-code method: the matching step, if any.
pub fn check(
    sealer: &Sealer,
    method: &Method,
    code: &Code,
    unix_secs: u64,
) -> Result<Option<u64>, SealError> {
    let MethodDetail::AppCode { secret } = &method.detail else {
        return Ok(None);
    };
    let secret = sealer.open(&method.id, secret)?;
    Ok(Totp::new(secret, "", "").matching_step(code, unix_secs))
}

/// The QR code of `data` as an inline `<svg>` element.
fn qr_svg(data: &str) -> Result<String, qrcode::types::QrError> {
    let code = qrcode::QrCode::with_error_correction_level(data, qrcode::EcLevel::M)?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    Ok(match svg.find("<svg") {
        Some(at) => svg[at..].to_owned(),
        None => svg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B: the SHA-1 rows (seed "12345678901234567890", 8 digits).
    #[test]
    fn rfc6238_appendix_b_sha1_vectors() {
        let totp = Totp::with_digits(b"12345678901234567890".to_vec(), 8, "x", "y");
        for (time, expected) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(totp.code_at_step(step_at(time)), expected, "T = {time}");
        }
    }

    #[test]
    fn the_window_is_one_step_either_side() {
        let totp = Totp::new(b"12345678901234567890".to_vec(), "x", "y");
        let t = 1_234_567_890;
        let now = step_at(t);
        for (offset, accepted) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
            let step = now.checked_add_signed(offset).unwrap();
            let code = Code::parse(&totp.code_at_step(step)).unwrap();
            assert_eq!(
                totp.matching_step(&code, t),
                accepted.then_some(step),
                "offset {offset}"
            );
        }
    }

    #[test]
    fn codes_parse_strictly() {
        assert!(Code::parse("123456").is_some());
        assert!(Code::parse(" 123456\n").is_some());
        for bad in [
            "",
            "12345",
            "1234567",
            "12 456",
            "12345a",
            "１２３４５６",
            "-12345",
        ] {
            assert!(Code::parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(
            format!("{:?}", Code::parse("123456").unwrap()),
            "Code(******)"
        );
    }

    #[test]
    fn enrolment_needs_the_right_code_and_the_uri_carries_the_secret() {
        let sealer = Sealer::from_key(&[5; 32]);
        let id = MethodId::generate();
        let (pending, offer) =
            begin_enrolment(&sealer, &id, "callverify", "alice@example.com").unwrap();
        assert!(
            offer
                .otpauth_uri
                .starts_with("otpauth://totp/callverify:alice%40example.com?secret="),
            "{}",
            offer.otpauth_uri
        );
        assert!(offer.qr_svg.starts_with("<svg"), "{}", &offer.qr_svg[..40]);
        let secret = sealer.open(&id, &pending.secret).unwrap();
        assert_eq!(secret.len(), SECRET_LEN);
        let totp = Totp::new(secret, "", "");
        assert!(offer.otpauth_uri.contains(&totp.secret_base32()));
        let t = 1_700_000_000;
        let wrong = Code::parse(if totp.code_at_step(step_at(t)) == "000000" {
            "111111"
        } else {
            "000000"
        })
        .unwrap();
        assert!(matches!(
            pending.finish(&sealer, &wrong, t),
            Err(EnrolError::WrongCode)
        ));
        let pending = PendingAppCode {
            method: id.clone(),
            secret: sealer
                .seal(&id, &totp_secret(&sealer, &id, &offer))
                .unwrap(),
        };
        let right = Code::parse(&totp.code_at_step(step_at(t))).unwrap();
        let proven = pending.finish(&sealer, &right, t).unwrap();
        assert_eq!(proven.step, step_at(t));
    }

    /// The secret as an app would read it from the URI.
    fn totp_secret(_: &Sealer, _: &MethodId, offer: &AppCodeOffer) -> Vec<u8> {
        let b32 = offer
            .otpauth_uri
            .split("secret=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        totp_rs::Secret::Encoded(b32.to_owned()).to_bytes().unwrap()
    }
}
