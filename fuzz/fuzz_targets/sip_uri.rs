//! SIP URI destinations (the service's src/api/sip_uri.rs, std only, included as is): never
//! panic; the canonical form parses back to itself; nothing that could inject into a SIP
//! message survives (no `?`, whitespace, control characters, `<`, `>`, `"`, `%`).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/api/sip_uri.rs"]
mod sip_uri;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uri) = sip_uri::SipUri::parse(raw) else {
        return;
    };
    let canonical = uri.to_string();
    assert!(
        !canonical
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "?<>\"%".contains(c)),
        "{canonical:?}"
    );
    let again = sip_uri::SipUri::parse(&canonical).expect("the canonical form parses");
    assert_eq!(again, uri, "{raw:?} -> {canonical:?}");
    assert_eq!(again.to_string(), canonical);
    if let Some(number) = uri.e164_user() {
        assert!(number.starts_with('+') && number[1..].bytes().all(|b| b.is_ascii_digit()));
    }
});
