//! RTP parser and builder: never panic; whatever parses is rebuilt to the same header, CSRCs,
//! extension and payload, and the rebuilt packet parses to the same fields. The RTCP parser
//! (which shares the port under RFC 5761) too: what it reads, it writes back and reads again
//! the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use media::rtcp;
use media::rtp::{PacketSpec, RtpPacket};

fuzz_target!(|data: &[u8]| {
    if let Ok(packets) = rtcp::parse(data) {
        let written = rtcp::write_compound(&packets);
        let again = rtcp::parse(&written).expect("our own RTCP parses");
        let known: Vec<_> = packets
            .into_iter()
            .filter(|p| !matches!(p, rtcp::RtcpPacket::Other { .. }))
            .map(|p| match p {
                // Names are written at most 255 bytes long, and read lossily as UTF-8.
                rtcp::RtcpPacket::Cname { ssrc, cname } => rtcp::RtcpPacket::Cname {
                    ssrc,
                    cname: String::from_utf8_lossy(&cname.as_bytes()[..cname.len().min(255)])
                        .into_owned(),
                },
                p => p,
            })
            .collect();
        assert_eq!(again, known);
    }
    let Ok(p) = RtpPacket::parse(data) else {
        return;
    };
    let csrcs: Vec<u32> = p.csrcs().collect();
    let spec = PacketSpec {
        marker: p.marker,
        payload_type: p.payload_type,
        sequence: p.sequence.0,
        timestamp: p.timestamp,
        ssrc: p.ssrc,
        csrcs: &csrcs,
        extension: p.extension,
        payload: p.payload,
        padding: usize::from(p.padding),
    };
    let built = spec.to_vec().expect("a parsed packet can be rebuilt");
    assert_eq!(built.len(), data.len());
    // Padding bytes other than the count are not preserved (they are zeros when we write).
    let body = data.len() - usize::from(p.padding);
    assert_eq!(built[..body], data[..body]);
    assert_eq!(built.last(), data.last());
    let again = RtpPacket::parse(&built).expect("our own packet parses");
    assert_eq!(again, p);
});
