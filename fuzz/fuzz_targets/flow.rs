//! The call flow (Switchboard with the real media path) against a far-end user agent the
//! fuzzer drives: ring, answer, refuse with any status, hang up, SIP INFO keys, plus lost,
//! corrupted and random SIP messages, copies sent by a stranger, random RTP, cancels and time
//! steps. Nothing may panic; every call reports exactly one outcome, last; no deadline stays in
//! the past; a stranger's copy changes nothing.
#![no_main]
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flow::live::{LiveFactory, PromptBook};
use flow::spec::Rules;
use flow::{CallId, CallSpec, Event, Mode, Switchboard, Transmit};
use libfuzzer_sys::fuzz_target;
use sip::sdp::LocalMedia;
use sip::{CallHandle, Config, Transport, Uri, UserAgent};

fuzz_target!(|data: &[u8]| {
    let us: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let phone: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let rtp: SocketAddr = "127.0.0.1:27000".parse().unwrap();
    let mut pc = Config::new(phone);
    pc.accept_incoming = true;
    let mut far = UserAgent::new(pc, [2; 32]);
    let mut board = Switchboard::new(
        Config::new(us),
        [1; 32],
        LiveFactory::new(Arc::new(PromptBook::new("en"))),
    );
    let mut now = Instant::now();
    let mut to_far: Vec<Vec<u8>> = Vec::new();
    let mut to_us: Vec<Vec<u8>> = Vec::new();
    let mut ours: Vec<CallId> = Vec::new();
    let mut theirs: Vec<CallHandle> = Vec::new();
    let mut finished: HashSet<CallId> = HashSet::new();
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        let pick = |n: usize| arg as usize % n.max(1);
        match op % 14 {
            0 if ours.len() < 4 => {
                let mode = [Mode::Standard, Mode::Pin, Mode::Challenge][pick(3)];
                let spec = CallSpec {
                    target: Uri::parse("sip:+14255550123@127.0.0.1:5070").unwrap(),
                    from: Uri::parse("sip:+14255550100@127.0.0.1").unwrap(),
                    display_name: None,
                    next_hop: phone,
                    peers: Vec::new(),
                    alternates: Vec::new(),
                    transport: Transport::Udp,
                    local_rtp: rtp,
                    credentials: None,
                    mode,
                    expected_digits: (mode != Mode::Standard).then(|| {
                        flow::keys::DigitsKey::new([0x5a; flow::keys::SEAL_LEN])
                            .seal_digits(b"fuzz", "1234")
                            .expect("digits")
                    }),
                    extension: (arg & 1 == 1).then(|| "1,2".to_string()),
                    language: "en".into(),
                    rules: Rules {
                        sip_info_dtmf: arg & 2 == 2,
                        ..Rules::default()
                    },
                    srtp: None,
                };
                if let Ok(id) = board.place(now, spec) {
                    ours.push(id);
                }
            }
            1 | 2 if !to_far.is_empty() => {
                let m = to_far.remove(pick(to_far.len()));
                let _ = far.handle_input(now, Transport::Udp, us, &m);
            }
            3 if !to_us.is_empty() => {
                let m = to_us.remove(pick(to_us.len()));
                let _ = board.handle_sip(now, Transport::Udp, phone, &m);
            }
            4 if !to_us.is_empty() => {
                // A stranger who saw the message sends a copy from its own port: nothing
                // may come of it (no packet, no event).
                let m = to_us[pick(to_us.len())].clone();
                let stranger: SocketAddr = "127.0.0.1:5099".parse().unwrap();
                let r = board.handle_sip(now, Transport::Udp, stranger, &m);
                assert_eq!(r, Err(sip::InputError::UntrustedSource));
                assert!(board.poll_transmit().is_none(), "answered a stranger");
                assert!(board.poll_event().is_none(), "a stranger moved a call");
            }
            5 if !to_us.is_empty() => {
                // Corrupt one message on its way to us.
                let mut m = to_us[pick(to_us.len())].clone();
                if !m.is_empty() {
                    let i = (arg as usize * 7) % m.len();
                    m[i] ^= bytes.next().unwrap_or(0x20);
                }
                let _ = board.handle_sip(now, Transport::Udp, phone, &m);
            }
            6 => {
                now += Duration::from_millis(u64::from(arg) * 200);
                board.handle_timeout(now);
                far.handle_timeout(now);
                if let Some(t) = board.poll_timeout() {
                    assert!(t > now, "deadline left in the past");
                }
            }
            7 if !theirs.is_empty() => {
                let h = theirs[pick(theirs.len())];
                let _ = far.ringing(now, h);
            }
            8 if !theirs.is_empty() => {
                let h = theirs[pick(theirs.len())];
                let _ = far.answer_with(
                    now,
                    h,
                    LocalMedia::new("127.0.0.1:30000".parse().unwrap(), 3),
                );
            }
            9 if !theirs.is_empty() => {
                let h = theirs[pick(theirs.len())];
                let status = 300 + u16::from(bytes.next().unwrap_or(0)) % 400;
                let _ = far.reject(now, h, status);
            }
            10 if !theirs.is_empty() => {
                let h = theirs[pick(theirs.len())];
                let _ = far.hangup(now, h);
            }
            11 if !theirs.is_empty() => {
                let h = theirs[pick(theirs.len())];
                let key = b"0123456789*#"[pick(12)] as char;
                let _ = far.send_dtmf_info(now, h, key, Duration::from_millis(200));
            }
            12 if !ours.is_empty() => {
                let id = ours[pick(ours.len())];
                board.cancel(now, id);
            }
            13 if !ours.is_empty() => {
                // Random RTP (or anything) on a call's socket, from the phone or elsewhere.
                let id = ours[pick(ours.len())];
                let len = bytes.next().unwrap_or(0) as usize;
                let payload: Vec<u8> = bytes.by_ref().take(len).collect();
                let source: SocketAddr = if arg & 1 == 0 {
                    "127.0.0.1:30000".parse().unwrap()
                } else {
                    "127.0.0.1:40000".parse().unwrap()
                };
                board.handle_rtp(now, id, source, &payload);
            }
            _ => {}
        }
        while let Some(t) = board.poll_transmit() {
            if let Transmit::Sip(t) = t {
                to_far.push(t.payload);
            }
        }
        while let Some(t) = far.poll_transmit() {
            to_us.push(t.payload);
        }
        while let Some(e) = far.poll_event() {
            if let sip::Event::Incoming { call, .. } = e {
                theirs.push(call);
            }
        }
        while let Some((id, e)) = board.poll_event() {
            assert!(!finished.contains(&id), "event after the outcome: {e:?}");
            if let Event::Finished(r) = e {
                assert!(matches!(
                    r.timeline.last().map(|e| &e.event),
                    Some(flow::TimelineEvent::Outcome { .. })
                ));
                finished.insert(id);
            }
        }
    }
});
