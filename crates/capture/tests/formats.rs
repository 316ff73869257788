//! Every container, link layer and transport the reader claims, on captures built byte by byte
//! here: one RFC 4733 '#' (as sipp's dtmf_2833_pound.pcap sends it) wrapped every way, and the
//! damaged files a user may hand in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use capture::{CaptureError, Discovery, Format};
use etherparse::{IpFragOffset, IpNumber, Ipv4Header, PacketBuilder};

const SRC: [u8; 4] = [192, 168, 0, 3];
const DST: [u8; 4] = [192, 168, 0, 1];
const SRC_PORT: u16 = 49176;
const DST_PORT: u16 = 10000;
const SSRC: u32 = 0x0e05_384e;
/// LINKTYPE_* values (tcpdump.org).
const ETHERNET: u32 = 1;
const NULL: u32 = 0;
const RAW: u32 = 101;
const LINUX_SLL: u32 = 113;
const IPV6: u32 = 229;
const LINUX_SLL2: u32 = 276;
const IEEE802_11: u32 = 105;

fn rtp(seq: u16, timestamp: u32, pt: u8, marker: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&timestamp.to_be_bytes());
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// One '#' (event 11, volume 10): 7 updates 20 ms apart, then the end packet three times.
fn pound(pt: u8) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for k in 0..10u16 {
        let end = k >= 7;
        let duration = 320 * k.min(7);
        let payload = [
            11,
            if end { 0x80 } else { 0 } | 10,
            (duration >> 8) as u8,
            duration as u8,
        ];
        let at_ns = 20_000_000 * u64::from(k.min(7)) + u64::from(k.saturating_sub(7)) * 100_000;
        out.push((at_ns, rtp(8434 + k.min(7), 92_640, pt, k == 0, &payload)));
    }
    out
}

fn udp_v4(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(SRC, DST, 64)
        .udp(SRC_PORT, DST_PORT)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn udp_v6(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let src = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3).octets();
    let dst = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets();
    PacketBuilder::ipv6(src, dst, 64)
        .udp(SRC_PORT, DST_PORT)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn ethernet(ip: &[u8], ether_type: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

/// Classic pcap in either byte order, µs or ns timestamps.
fn pcap(link: u32, frames: &[(u64, Vec<u8>)], big_endian: bool, nanos: bool) -> Vec<u8> {
    let u32b = |v: u32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let u16b = |v: u16| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut out = Vec::new();
    out.extend_from_slice(&u32b(if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }));
    out.extend_from_slice(&u16b(2));
    out.extend_from_slice(&u16b(4));
    out.extend_from_slice(&u32b(0));
    out.extend_from_slice(&u32b(0));
    out.extend_from_slice(&u32b(65535));
    out.extend_from_slice(&u32b(link));
    let base_s = 1_700_000_000u64;
    for (at_ns, data) in frames {
        let secs = base_s + at_ns / 1_000_000_000;
        let frac = at_ns % 1_000_000_000;
        out.extend_from_slice(&u32b(secs as u32));
        out.extend_from_slice(&u32b(if nanos { frac } else { frac / 1000 } as u32));
        out.extend_from_slice(&u32b(data.len() as u32));
        out.extend_from_slice(&u32b(data.len() as u32));
        out.extend_from_slice(data);
    }
    out
}

/// pcapng: one section, one interface (µs), enhanced packet blocks.
fn pcapng(link: u32, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let block = |out: &mut Vec<u8>, kind: u32, body: &[u8]| {
        let len = 12 + body.len().next_multiple_of(4);
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(body);
        out.resize(out.len() + body.len().next_multiple_of(4) - body.len(), 0);
        out.extend_from_slice(&(len as u32).to_le_bytes());
    };
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    block(&mut out, 0x0a0d_0d0a, &shb);
    let mut idb = Vec::new();
    idb.extend_from_slice(&(link as u16).to_le_bytes());
    idb.extend_from_slice(&0u16.to_le_bytes());
    idb.extend_from_slice(&65535u32.to_le_bytes());
    block(&mut out, 1, &idb);
    for (at_ns, data) in frames {
        let micros = 1_700_000_000_000_000u64 + at_ns / 1000;
        let mut epb = Vec::new();
        epb.extend_from_slice(&0u32.to_le_bytes());
        epb.extend_from_slice(&((micros >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(micros as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(data);
        block(&mut out, 6, &epb);
    }
    out
}

fn framed(frames: Vec<(u64, Vec<u8>)>, wrap: impl Fn(&[u8]) -> Vec<u8>) -> Vec<(u64, Vec<u8>)> {
    frames.into_iter().map(|(t, p)| (t, wrap(&p))).collect()
}

/// Reads and replays; returns the keys, their methods, and the capture.
fn replay(bytes: &[u8]) -> (String, Vec<&'static str>, capture::Capture) {
    let capture = capture::read(bytes);
    let replays = capture::replay::replay(&capture, bytes, Instant::now());
    let digits: Vec<_> = replays.iter().flat_map(|r| r.digits.iter()).collect();
    (
        digits.iter().map(|d| d.digit.as_char()).collect(),
        digits.iter().map(|d| d.method.as_str()).collect(),
        capture,
    )
}

fn assert_pound(bytes: &[u8], what: &str) -> capture::Capture {
    let (keys, methods, capture) = replay(bytes);
    assert!(capture.error.is_none(), "{what}: {:?}", capture.error);
    assert_eq!(keys, "#", "{what}: {:?}", capture.counts);
    assert_eq!(methods, ["rfc4733"], "{what}");
    assert_eq!(capture.streams.len(), 1, "{what}");
    assert_eq!(capture.streams[0].ssrcs[0].ssrc, SSRC, "{what}");
    capture
}

#[test]
fn every_container_and_link_layer() {
    let v4 = framed(pound(101), udp_v4);
    let v6 = framed(pound(101), udp_v6);
    let eth = framed(pound(101), |p| ethernet(&udp_v4(p), 0x0800));

    let c = assert_pound(&pcap(ETHERNET, &eth, false, false), "pcap Ethernet");
    assert_eq!(c.format, Some(Format::Pcap));
    assert_eq!(
        c.streams[0].src,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(SRC)), SRC_PORT)
    );
    assert_eq!(c.streams[0].discovery, Discovery::Heuristic);
    // The ends come 0.1 ms apart 140 ms in; time is kept to the microsecond.
    assert_eq!(c.streams[0].ssrcs[0].last_ns, 140_200_000);

    assert_pound(&pcap(ETHERNET, &eth, true, false), "big-endian pcap");
    let c = assert_pound(&pcap(ETHERNET, &eth, false, true), "nanosecond pcap");
    assert_eq!(c.streams[0].ssrcs[0].last_ns, 140_200_000);
    let c = assert_pound(&pcapng(ETHERNET, &eth), "pcapng");
    assert_eq!(c.format, Some(Format::PcapNg));
    assert_eq!(c.streams[0].ssrcs[0].last_ns, 140_200_000);

    assert_pound(&pcap(RAW, &v4, false, false), "raw IPv4");
    let c = assert_pound(&pcap(IPV6, &v6, false, false), "raw IPv6");
    assert!(c.streams[0].src.is_ipv6());
    assert_pound(&pcapng(RAW, &v6), "pcapng raw IPv6");

    let sll = framed(pound(101), |p| {
        let mut f = vec![0, 0, 3, 4, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00];
        f.extend_from_slice(&udp_v4(p));
        f
    });
    assert_pound(&pcap(LINUX_SLL, &sll, false, false), "Linux cooked v1");
    let sll2 = framed(pound(101), |p| {
        let mut f = vec![
            0x86, 0xdd, 0, 0, 0, 0, 0, 1, 3, 4, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        f.extend_from_slice(&udp_v6(p));
        f
    });
    assert_pound(&pcapng(LINUX_SLL2, &sll2), "Linux cooked v2, IPv6");
    let null = framed(pound(101), |p| {
        let mut f = 2u32.to_le_bytes().to_vec();
        f.extend_from_slice(&udp_v4(p));
        f
    });
    assert_pound(&pcap(NULL, &null, false, false), "BSD loopback");
    let vlan = framed(pound(101), |p| {
        let mut f = ethernet(&[0x00, 0x64, 0x08, 0x00], 0x8100);
        f.extend_from_slice(&udp_v4(p));
        f
    });
    assert_pound(&pcap(ETHERNET, &vlan, false, false), "802.1Q VLAN");
    let pppoe = framed(pound(101), |p| {
        let ip = udp_v4(p);
        let mut f = ethernet(&[0x11, 0x00, 0x12, 0x34], 0x8864);
        f.extend_from_slice(&((ip.len() + 2) as u16).to_be_bytes());
        f.extend_from_slice(&[0x00, 0x21]);
        f.extend_from_slice(&ip);
        f
    });
    assert_pound(&pcap(ETHERNET, &pppoe, false, false), "PPPoE");
}

/// A SIP INVITE whose SDP puts telephone-event on PT 102 at 192.168.0.1:10000.
fn invite() -> Vec<u8> {
    let sdp = "v=0\r\no=- 1 1 IN IP4 192.168.0.1\r\ns=-\r\nc=IN IP4 192.168.0.1\r\nt=0 0\r\n\
m=audio 10000 RTP/AVP 8 102\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:102 telephone-event/8000\r\n\
a=fmtp:102 0-15\r\n";
    // Padding headers make the INVITE larger than one Ethernet MTU, as real INVITEs are.
    let padding: String = (0..30)
        .map(|i| format!("X-Padding-{i}: {}\r\n", "p".repeat(60)))
        .collect();
    format!(
        "INVITE sip:callee@192.168.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.0.3:5060;branch=z9hG4bK1\r\n\
Max-Forwards: 70\r\nFrom: <sip:caller@192.168.0.3>;tag=1\r\nTo: <sip:callee@192.168.0.1>\r\n\
Call-ID: formats-test\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@192.168.0.3:5060>\r\n{padding}\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

/// The IPv4 fragments of one UDP datagram from 192.168.0.3:5060 to 192.168.0.1:5060.
fn fragments(payload: &[u8], mtu_payload: usize) -> Vec<Vec<u8>> {
    let mut whole = Vec::new();
    PacketBuilder::ipv4(DST, SRC, 64)
        .udp(5060, 5060)
        .write(&mut whole, payload)
        .unwrap();
    let ip_payload = &whole[20..];
    let mut out = Vec::new();
    for (k, chunk) in ip_payload.chunks(mtu_payload).enumerate() {
        let mut h = Ipv4Header::new(chunk.len() as u16, 64, IpNumber::UDP, SRC, DST).unwrap();
        h.identification = 0x4242;
        h.dont_fragment = false;
        h.more_fragments = (k + 1) * mtu_payload < ip_payload.len();
        h.fragment_offset = IpFragOffset::try_new((k * mtu_payload / 8) as u16).unwrap();
        let mut f = Vec::new();
        h.write(&mut f).unwrap();
        f.extend_from_slice(chunk);
        out.push(f);
    }
    out
}

#[test]
fn fragmented_sip_gives_the_sdp_payload_types() {
    let invite = invite();
    assert!(invite.len() > 1500);
    let mut frames: Vec<(u64, Vec<u8>)> = fragments(&invite, 1480)
        .into_iter()
        .rev() // out of order, as captures sometimes have them
        .map(|f| (0, ethernet(&f, 0x0800)))
        .collect();
    frames.extend(framed(pound(102), |p| ethernet(&udp_v4(p), 0x0800)));
    let (keys, _, capture) = replay(&pcap(ETHERNET, &frames, false, false));
    assert_eq!(capture.counts.fragments, 2);
    assert_eq!(capture.sip.messages, 1);
    assert_eq!(keys, "#");
    let stream = &capture.streams[0];
    assert_eq!(
        stream.discovery,
        Discovery::Sdp {
            call_id: "formats-test".into()
        }
    );
    assert_eq!(stream.telephone_event(), Some((102, 8000)));
}

#[test]
fn sip_over_tcp_split_across_segments() {
    let invite = invite();
    let (a, b) = invite.split_at(700);
    let segment = |seq: u32, data: &[u8]| {
        let mut out = Vec::new();
        PacketBuilder::ipv4(SRC, DST, 64)
            .tcp(5060, 5060, seq, 65535)
            .write(&mut out, data)
            .unwrap();
        ethernet(&out, 0x0800)
    };
    let mut frames = vec![
        (0, segment(1000, a)),
        (0, segment(1000, a)), // a retransmission
        (0, segment(1700, b)),
    ];
    frames.extend(framed(pound(102), |p| ethernet(&udp_v4(p), 0x0800)));
    let (keys, _, capture) = replay(&pcap(ETHERNET, &frames, false, false));
    assert_eq!(capture.sip.messages, 1);
    assert_eq!(capture.sip.media.len(), 1);
    assert_eq!(keys, "#");
    assert!(matches!(
        capture.streams[0].discovery,
        Discovery::Sdp { .. }
    ));
}

#[test]
fn events_on_a_payload_type_the_sdp_does_not_map_are_not_keys() {
    // The SDP maps 102; the far end sends events on 101 anyway (sipp does): a live call drops
    // them, and so does the replay.
    let mut frames = vec![(0, ethernet(&udp_v4_sip(&invite()), 0x0800))];
    frames.extend(framed(pound(101), |p| ethernet(&udp_v4(p), 0x0800)));
    let (keys, _, capture) = replay(&pcap(ETHERNET, &frames, false, false));
    assert!(matches!(
        capture.streams[0].discovery,
        Discovery::Sdp { .. }
    ));
    assert_eq!(keys, "");
}

fn udp_v4_sip(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(SRC, DST, 64)
        .udp(5060, 5060)
        .write(&mut out, payload)
        .unwrap();
    out
}

#[test]
fn damaged_files_give_what_was_read_and_a_typed_error() {
    let eth = framed(pound(101), |p| ethernet(&udp_v4(p), 0x0800));
    let whole = pcap(ETHERNET, &eth, false, false);

    // Cut inside the last record: nine frames read, the key is still there.
    let cut = &whole[..whole.len() - 5];
    let (keys, _, capture) = replay(cut);
    assert_eq!(keys, "#");
    assert_eq!(capture.counts.frames, 9);
    assert!(matches!(
        capture.error,
        Some(CaptureError::Truncated { frames: 9, .. })
    ));

    // Cut inside the header.
    let capture = capture::read(&whole[..10]);
    assert!(matches!(
        capture.error,
        Some(CaptureError::Truncated { frames: 0, .. })
    ));

    let ng = pcapng(ETHERNET, &eth);
    let (keys, _, capture) = replay(&ng[..ng.len() - 30]);
    assert_eq!(keys, "#");
    assert!(
        matches!(
            capture.error,
            Some(CaptureError::Truncated { frames: 9, .. })
        ),
        "{:?}",
        capture.error
    );

    // A packet block naming an interface that was never described.
    let mut bad = ng.clone();
    let first_epb = 28 + 20; // SHB (28) + IDB (20)
    bad[first_epb + 8] = 7;
    assert!(matches!(
        capture::read(&bad).error,
        Some(CaptureError::Malformed { frames: 0, .. })
    ));

    assert_eq!(capture::read(b"").error, Some(CaptureError::NotACapture));
    assert_eq!(
        capture::read(b"hello, world").error,
        Some(CaptureError::NotACapture)
    );

    let wifi = pcap(IEEE802_11, &eth, false, false);
    let capture = capture::read(&wifi);
    assert_eq!(
        capture.error,
        Some(CaptureError::UnsupportedLinkType(IEEE802_11))
    );
    assert!(capture.streams.is_empty());
}

#[test]
fn random_udp_is_not_rtp() {
    // DNS-like datagrams with random first bytes: version 2 by chance, but no SSRC/sequence
    // continuity.
    let mut state = 0x1234_5678u32;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let frames: Vec<(u64, Vec<u8>)> = (0..200)
        .map(|k| {
            let payload: Vec<u8> = (0..40).map(|_| next() as u8).collect();
            (k * 1_000_000, ethernet(&udp_v4(&payload), 0x0800))
        })
        .collect();
    let (keys, _, capture) = replay(&pcap(ETHERNET, &frames, false, false));
    assert_eq!(keys, "");
    assert!(capture.streams.is_empty(), "{:?}", capture.streams.len());
}

#[test]
fn sloppy_sip_still_gives_its_info_digits_once() {
    // A header line without a colon: our SIP parser refuses the message, the key press is
    // still there; sent twice (a retransmission), it is one key.
    let info = b"INFO sip:callee@192.168.0.1 SIP/2.0\r\nCall-ID: sloppy\r\nCSeq: 5 INFO\r\nX-Broken header\r\n\
Content-Type: application/dtmf-relay\r\nContent-Length: 24\r\n\r\nSignal= 5\r\nDuration=100\r\n";
    let frame = ethernet(&udp_v4_sip(info), 0x0800);
    let frames = vec![(0, frame.clone()), (500_000_000, frame)];
    let (keys, methods, capture) = replay(&pcap(ETHERNET, &frames, false, false));
    assert_eq!(capture.sip.unparsed, 2);
    assert_eq!(keys, "5");
    assert_eq!(methods, ["sip_info"]);
    assert_eq!(
        capture.streams[0].discovery,
        Discovery::SipInfoOnly {
            call_id: "sloppy".into()
        }
    );
}

#[test]
fn a_flow_that_changes_ssrc_often_is_still_rtp() {
    // Four calls in a row on the same ports (or an SBC that renumbers on every re-INVITE):
    // four SSRCs, the last one carrying the key.
    let mut frames = Vec::new();
    for call in 0..4u32 {
        for k in 0..20u16 {
            let mut p = rtp(
                100 * call as u16 + k,
                160 * u32::from(k),
                0,
                k == 0,
                &[0xff; 160],
            );
            p[8..12].copy_from_slice(&(0x1000 + call).to_be_bytes());
            frames.push((
                u64::from(call) * 1_000_000_000 + u64::from(k) * 20_000_000,
                p,
            ));
        }
    }
    frames.extend(pound(101).into_iter().map(|(t, p)| (t + 4_000_000_000, p)));
    let frames = framed(frames, |p| ethernet(&udp_v4(p), 0x0800));
    let (keys, _, capture) = replay(&pcap(ETHERNET, &frames, false, false));
    assert_eq!(capture.streams.len(), 1);
    assert_eq!(capture.streams[0].ssrcs.len(), 5);
    assert_eq!(keys, "#");
}

#[test]
fn stun_and_rtcp_on_the_rtp_port_do_not_hide_a_flow() {
    // linphone sends a STUN binding request every 500 ms on its RTP port, and RTCP reports.
    let mut frames = pound(101);
    for k in 0..12u64 {
        let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[k as u8; 12]);
        frames.push((k * 10_000_000, stun));
    }
    frames.push((
        50_000_000,
        vec![0x80, 200, 0, 6, 0x0e, 0x05, 0x38, 0x4e, 0, 0, 0, 0],
    ));
    frames.sort_by_key(|(t, _)| *t);
    let frames = framed(frames, |p| ethernet(&udp_v4(p), 0x0800));
    let (keys, _, capture) = replay(&pcap(ETHERNET, &frames, false, false));
    assert_eq!(keys, "#");
    assert_eq!(capture.streams[0].non_rtp, 13);
}
