//! SDP parser and negotiation: never panic; an answer to any usable offer parses back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sip::sdp::{build_answer, LocalMedia, SessionDescription};

fuzz_target!(|data: &[u8]| {
    let _ = sip::auth::Challenge::select(std::str::from_utf8(data).ok());
    let Ok(sd) = SessionDescription::parse(data) else { return };
    let local = LocalMedia::new("127.0.0.1:40000".parse().unwrap(), 1);
    if let Ok((answer, negotiated)) = build_answer(&sd, &local, 2) {
        let back = SessionDescription::parse(answer.as_bytes()).expect("our answer parses");
        let n = back.negotiate().expect("our answer is usable");
        assert_eq!(n.codec, negotiated.codec);
    }
});
