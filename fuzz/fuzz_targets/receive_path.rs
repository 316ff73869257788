//! The receive path as a state machine: the fuzzer sends raw datagrams, well-formed RTP with
//! fuzzed fields (audio, events, unknown payload types, several SSRCs, another source), SIP
//! INFO keys, time steps, timeouts and end of stream. Nothing may panic, no deadline may be left
//! in the past after `handle_timeout(now)`, and no digit is reported at a time never seen.
#![no_main]
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use media::rtp::PacketSpec;
use media::{Codec, ReceiveConfig, ReceivePath};

fuzz_target!(|data: &[u8]| {
    let phone: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let other: SocketAddr = "192.0.2.2:4000".parse().unwrap();
    let Some((&cfg, data)) = data.split_first() else {
        return;
    };
    let mut path = ReceivePath::new(ReceiveConfig {
        audio: vec![(0, Codec::Pcmu), (8, Codec::Pcma), (96, Codec::Opus)],
        telephone_event: Some((101, if cfg & 1 == 0 { 8000 } else { 48000 })),
        source: if cfg & 2 == 0 { Some(phone) } else { None },
        reorder_window: Duration::from_millis(u64::from(cfg >> 2) * 4),
    });
    let t0 = Instant::now();
    let mut now = t0;
    let mut latest = t0;
    let mut seq = [0u16; 3];
    let mut ts = [0u32; 3];
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        match op % 8 {
            // A raw datagram of `arg` bytes.
            0 => {
                let d: Vec<u8> = bytes.by_ref().take(usize::from(arg)).collect();
                path.handle_rtp(now, phone, &d);
            }
            // Well-formed RTP: stream, payload type, sequence/timestamp steps from the fuzzer.
            1..=3 => {
                let s = usize::from(arg % 3);
                let pt = [0u8, 8, 101, 96, 13, 101, 0, 127][usize::from(arg >> 5)];
                let step = bytes.next().unwrap_or(1);
                seq[s] = seq[s].wrapping_add(u16::from(step % 8)).wrapping_sub(2);
                ts[s] = ts[s].wrapping_add(u32::from(step) * 40);
                let len = if pt == 101 { 4 } else { usize::from(bytes.next().unwrap_or(0)) };
                let payload: Vec<u8> = bytes.by_ref().take(len).collect();
                let packet = PacketSpec {
                    marker: step & 0x80 != 0,
                    payload_type: pt,
                    sequence: seq[s],
                    timestamp: ts[s],
                    ssrc: 0x1000 + s as u32,
                    payload: &payload,
                    ..PacketSpec::default()
                }
                .to_vec()
                .unwrap();
                let from = if op & 0x80 != 0 { other } else { phone };
                path.handle_rtp(now, from, &packet);
            }
            // Time steps, mostly forward; captures can also step back a little.
            4 if arg & 0x80 != 0 && now >= t0 + Duration::from_millis(u64::from(arg & 0x7f)) => {
                now -= Duration::from_millis(u64::from(arg & 0x7f));
            }
            4 => now += Duration::from_millis(u64::from(arg)),
            5 => {
                if let Some(t) = path.poll_timeout() {
                    now = now.max(t);
                }
                path.handle_timeout(now);
                assert!(
                    now < latest || path.poll_timeout().is_none_or(|t| t > now),
                    "deadline in the past"
                );
            }
            6 => {
                let key = dtmf::Digit::ALL[usize::from(arg % 16)];
                let duration = (arg & 0x10 != 0).then(|| Duration::from_millis(u64::from(arg)));
                path.handle_sip_info(now, key, duration);
            }
            _ => path.finish(now),
        }
        latest = latest.max(now);
        while let Some(d) = path.poll_digit() {
            assert!(d.at <= latest && d.at >= t0);
        }
    }
    path.finish(now);
    let stats = path.stats();
    assert!(stats.streams.len() <= media::receive::MAX_STREAMS);
});
