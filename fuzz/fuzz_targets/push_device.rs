//! What the authenticator app sends (registration and answer JSON, from any stranger on the
//! Internet): never panic; whatever parses has the shape promised. The parser file is
//! included as it is, with the SSRF address rule it uses.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../src/webhook/address.rs"]
#[allow(dead_code)]
mod address;

/// `crate::webhook::is_public`, as push.rs names it.
mod webhook {
    pub use crate::address::is_public;
}

#[path = "../../src/methods/push.rs"]
#[allow(dead_code)]
mod push;

fuzz_target!(|data: &[u8]| {
    for allow_loopback in [false, true] {
        if let Ok(r) = push::parse_registration(data, allow_loopback) {
            assert_eq!(r.token.len(), push::TOKEN_LEN);
            assert_eq!(r.key.to_sec1().len(), 65);
            if let Some(s) = &r.subscription {
                assert!(s.endpoint.as_str().len() <= push::ENDPOINT_MAX_LEN + 8);
                assert!(matches!(s.endpoint.scheme(), "https" | "http"));
                assert_eq!(s.p256dh[0], 4);
            }
            // Checking a signature never panics either.
            let _ = r.key.verify(&r.message(), &r.signature);
        }
    }
    if let Ok(a) = push::parse_answer(data) {
        if let push::Choice::Approve(n) = a.choice {
            assert!((push::NUMBER_MIN..=push::NUMBER_MAX).contains(&n));
        }
        assert!(a.message().starts_with("callverify-answer\n"));
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(url) = push::endpoint(s, false) {
            assert_eq!(url.scheme(), "https");
        }
    }
});
