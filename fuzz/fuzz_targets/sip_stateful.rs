//! Two user agents wired together; the fuzzer decides delivery order, loss, duplication,
//! corruption, time steps and every API call. Nothing may panic, and after
//! `handle_timeout(now)` no deadline may be in the past.
#![no_main]
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sip::sdp::LocalMedia;
use sip::{CallHandle, Config, Event, OutgoingCall, Transport, Uri, UserAgent};

fuzz_target!(|data: &[u8]| {
    let a_addr: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let b_addr: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let mut cb = Config::new(b_addr);
    cb.accept_incoming = true;
    let mut uas = [UserAgent::new(Config::new(a_addr), 1), UserAgent::new(cb, 2)];
    let addrs = [a_addr, b_addr];
    let mut now = Instant::now();
    let mut flight: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut handles: [Vec<CallHandle>; 2] = [Vec::new(), Vec::new()];
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0) as usize;
        let who = (op as usize >> 4) & 1;
        match op % 12 {
            0 | 1 | 2 if !flight.is_empty() => {
                let (to, payload) = flight.remove(arg % flight.len());
                let _ = uas[to].handle_input(now, Transport::Udp, addrs[1 - to], &payload);
            }
            3 if !flight.is_empty() => {
                let i = arg % flight.len();
                let (to, mut payload) = flight[i].clone();
                if !payload.is_empty() {
                    let j = (arg * 31) % payload.len();
                    payload[j] ^= bytes.next().unwrap_or(1);
                }
                let _ = uas[to].handle_input(now, Transport::Udp, addrs[1 - to], &payload);
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
                    transport: Transport::Udp,
                    media: LocalMedia::new("127.0.0.1:27000".parse().unwrap(), 1),
                    credentials: None,
                };
                handles[who].push(uas[who].call(now, call));
            }
            7..=11 if !handles[who].is_empty() => {
                let h = handles[who][arg % handles[who].len()];
                let _ = match op % 12 {
                    7 => uas[who].hangup(now, h),
                    8 => uas[who].answer(now, h).map(|_| ()),
                    9 => uas[who].ringing(now, h),
                    10 => uas[who].reject(now, h, 300 + (arg as u16 % 400)),
                    _ => uas[who].send_dtmf_info(now, h, '#', Duration::from_millis(100)),
                };
            }
            _ => {}
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
