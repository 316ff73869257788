//! SIP message parser and stream framer: never panic; whatever parses prints and re-parses.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sip::framer::StreamFramer;
use sip::message::{HeaderAccess, Limits, Message};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(msg) = Message::parse(data, &limits) {
        let printed = msg.to_bytes();
        let again = Message::parse(&printed, &limits).expect("our own output must parse");
        assert_eq!(again.to_bytes(), printed, "printing is stable");
        if let Message::Request(r) = &msg {
            let _ = (r.top_via(), r.cseq(), r.header_from(), r.header_to(), r.contact(), r.call_id());
            let _ = (r.uri.socket_addr(), r.uri.to_string(), format!("{r:?}"));
        }
        for v in msg.headers().list("Proxy-Authenticate") {
            let _ = sip::auth::Challenge::parse(v);
        }
    }
    let mut framer = StreamFramer::new(&limits);
    for chunk in data.chunks(97) {
        framer.push(chunk);
        while let Some(Ok(m)) = framer.next_message() {
            let _ = Message::parse(&m, &limits);
        }
    }
});
