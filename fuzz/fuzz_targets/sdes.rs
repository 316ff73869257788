//! SDES `a=crypto` parser (RFC 4568) and SRTP unprotect: never panic; what parses writes back
//! to an attribute that parses to the same tag, suite and key; any datagram given to an SRTP
//! receiver is refused or authenticated, never a panic, and a forged one never authenticates.
#![no_main]
use libfuzzer_sys::fuzz_target;
use media::srtp::{MasterKey, Srtp, SrtpConfig, Suite, UnprotectError};
use sip::sdes::Crypto;
use sip::sdp::{LocalMedia, SessionDescription, build_answer};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = Crypto::parse(text) {
            assert_eq!(Crypto::parse(&c.to_value()), Ok(c));
        }
        // As a media-level attribute of an offer we answer with keys of our own.
        let sdp = format!("v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:{text}\r\n");
        if let Ok(sd) = SessionDescription::parse(sdp.as_bytes()) {
            let mut local = LocalMedia::new("127.0.0.1:40000".parse().unwrap(), 1);
            local.sdes = Some(sip::sdes::LocalSdes {
                savp: true,
                keys: [sip::sdes::SdesKey::new([7; 30]), sip::sdes::SdesKey::new([9; 30])],
            });
            if let Ok((answer, n)) = build_answer(&sd, &local, 2) {
                let back = SessionDescription::parse(answer.as_bytes()).expect("our answer parses");
                let m = back.negotiate().expect("our answer is usable");
                assert_eq!(
                    matches!(m.sdes, sip::sdes::Sdes::Usable(_)),
                    matches!(n.sdes, sip::sdes::Sdes::Usable(_))
                );
            }
        }
    }
    let suite = if data.first().is_some_and(|b| b & 1 == 1) {
        Suite::AesCm128HmacSha1_32
    } else {
        Suite::AesCm128HmacSha1_80
    };
    let mut srtp = Srtp::new(&SrtpConfig {
        suite,
        local: MasterKey::new([1; 30]),
        remote: MasterKey::new([2; 30]),
    });
    for chunk in data.chunks(200) {
        let r = srtp.unprotect_rtp(chunk);
        // Without the far end's key (the fuzzer has it not) nothing authenticates.
        assert!(
            matches!(r, Err(UnprotectError::AuthFailed | UnprotectError::Malformed)),
            "{r:?}"
        );
    }
    let _ = srtp.protect_rtp(data);
});
