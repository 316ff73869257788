//! SIP INFO DTMF bodies: never panic; a parsed key is one of 0-9 * # A-D.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sip::info::parse_dtmf_info;

fuzz_target!(|data: &[u8]| {
    let (ct, body) = match data.first() {
        Some(b) if b % 2 == 0 => ("application/dtmf-relay", &data[1..]),
        Some(_) => ("application/dtmf", &data[1..]),
        None => return,
    };
    if let Ok(info) = parse_dtmf_info(ct, body) {
        assert!(matches!(info.key, '0'..='9' | '*' | '#' | 'A'..='D'));
    }
});
