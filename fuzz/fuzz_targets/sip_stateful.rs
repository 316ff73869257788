//! Two user agents wired together, and strangers: the fuzzer decides delivery order, loss,
//! duplication, corruption, time steps, every API call, and who each packet seems to come
//! from (the real peer, the real peer over another transport, or a stranger who saw it all).
//! Nothing may panic; after `handle_timeout(now)` no deadline may be in the past; and input
//! from a source the caller does not know changes nothing: no packet out, no event, no state.
#![no_main]
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sip::sdp::LocalMedia;
use sip::{CallHandle, Config, Event, OutgoingCall, Transport, Uri, UserAgent};

/// Where a delivered packet seems to come from.
fn source(pick: u8, real: SocketAddr) -> (Transport, SocketAddr) {
    match pick % 5 {
        0 | 1 => (Transport::Udp, real),
        2 => (Transport::Tcp, real),
        3 => (Transport::Udp, "127.0.0.1:5099".parse().unwrap()),
        _ => (Transport::Udp, "[2001:db8::66]:5070".parse().unwrap()),
    }
}

fuzz_target!(|data: &[u8]| {
    let a_addr: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let b_addr: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let mut ca = Config::new(a_addr);
    if data.first().is_some_and(|b| b & 1 == 1) {
        ca.trusted_peers = vec![b_addr];
    }
    let mut cb = Config::new(b_addr);
    cb.accept_incoming = true;
    let mut uas = [UserAgent::new(ca, [1; 32]), UserAgent::new(cb, [2; 32])];
    let addrs = [a_addr, b_addr];
    let mut now = Instant::now();
    let mut flight: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut handles: [Vec<CallHandle>; 2] = [Vec::new(), Vec::new()];
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0) as usize;
        let who = (op as usize >> 4) & 1;
        // (receiver, transport, source, payload) of a packet to deliver.
        let mut deliver: Option<(usize, Transport, SocketAddr, Vec<u8>)> = None;
        match op % 13 {
            0..=2 if !flight.is_empty() => {
                let (to, payload) = flight.remove(arg % flight.len());
                let (t, from) = source(bytes.next().unwrap_or(0), addrs[1 - to]);
                deliver = Some((to, t, from, payload));
            }
            3 if !flight.is_empty() => {
                let i = arg % flight.len();
                let (to, mut payload) = flight[i].clone();
                if !payload.is_empty() {
                    let j = (arg * 31) % payload.len();
                    payload[j] ^= bytes.next().unwrap_or(1);
                }
                let (t, from) = source(bytes.next().unwrap_or(0), addrs[1 - to]);
                deliver = Some((to, t, from, payload));
            }
            4 if !flight.is_empty() => {
                flight.remove(arg % flight.len());
            }
            5 => {
                now += Duration::from_millis((arg as u64) * 250);
                for ua in &mut uas {
                    ua.handle_timeout(now);
                    if let Some(t) = ua.poll_timeout() {
                        assert!(t > now, "deadline left in the past");
                    }
                }
            }
            6 => {
                let call = OutgoingCall {
                    target: Uri::parse("sip:+14255550123@127.0.0.1:5070").unwrap(),
                    from: Uri::parse("sip:verifier@127.0.0.1").unwrap(),
                    display_name: None,
                    next_hop: addrs[1 - who],
                    peers: Vec::new(),
                    alternates: Vec::new(),
                    transport: Transport::Udp,
                    media: LocalMedia::new("127.0.0.1:27000".parse().unwrap(), 1),
                    credentials: None,
                };
                handles[who].push(uas[who].call(now, call));
            }
            7..=11 if !handles[who].is_empty() => {
                let h = handles[who][arg % handles[who].len()];
                let _ = match op % 13 {
                    7 => uas[who].hangup(now, h),
                    8 => uas[who].answer(now, h).map(|_| ()),
                    9 => uas[who].ringing(now, h),
                    10 => uas[who].reject(now, h, 300 + (arg as u16 % 400)),
                    _ => uas[who].send_dtmf_info(now, h, '#', Duration::from_millis(100)),
                };
            }
            12 => {
                // Raw bytes of the fuzzer's own, from anyone.
                let len = bytes.next().unwrap_or(0) as usize;
                let payload: Vec<u8> = bytes.by_ref().take(len).collect();
                let (t, from) = source(arg as u8, addrs[1 - who]);
                deliver = Some((who, t, from, payload));
            }
            _ => {}
        }
        if let Some((to, transport, from, payload)) = deliver {
            let stranger = !uas[to].knows(from);
            let calls = uas[to].call_count();
            let servers = uas[to].server_transactions();
            let result = uas[to].handle_input(now, transport, from, &payload);
            if stranger && to == 0 {
                // The caller (the service) does not take calls: a stranger is not heard.
                assert_eq!(result, Err(sip::InputError::UntrustedSource));
                assert!(uas[0].poll_transmit().is_none(), "answered a stranger");
                assert!(uas[0].poll_event().is_none(), "a stranger moved a call");
                assert_eq!(uas[0].call_count(), calls);
                assert_eq!(uas[0].server_transactions(), servers);
            }
        }
        for (i, ua) in uas.iter_mut().enumerate() {
            while let Some(t) = ua.poll_transmit() {
                if t.destination == addrs[1 - i] && flight.len() < 256 {
                    flight.push((1 - i, t.payload));
                }
            }
            while let Some(e) = ua.poll_event() {
                if let Event::Incoming { call, .. } = e {
                    handles[i].push(call);
                }
            }
        }
    }
});
