//! From a captured frame to a UDP datagram or TCP segment: link layer (Ethernet with VLANs,
//! Linux cooked v1 and v2, raw IP, BSD loopback/null), IPv4/IPv6 with fragment reassembly,
//! UDP and TCP.

use std::net::SocketAddr;

use etherparse::defrag::IpDefragPool;
use etherparse::{EtherType, IpNumber, NetSlice, SlicedPacket, TransportSlice, UdpSlice};

use crate::container::Frame;

/// LINKTYPE_* values we read (tcpdump.org link-layer header types).
mod link {
    pub const NULL: u32 = 0;
    pub const ETHERNET: u32 = 1;
    /// DLT_RAW as OpenBSD (14) and others (12) wrote it before LINKTYPE_RAW existed.
    pub const RAW_OLD_12: u32 = 12;
    pub const RAW_OLD_14: u32 = 14;
    pub const RAW: u32 = 101;
    pub const LOOP: u32 = 108;
    pub const LINUX_SLL: u32 = 113;
    pub const IPV4: u32 = 228;
    pub const IPV6: u32 = 229;
    pub const LINUX_SLL2: u32 = 276;
}

/// Linux cooked v1 header: packet type, ARPHRD, address length, 8-byte address, protocol.
const SLL_HEADER: usize = 16;
/// Offset of the protocol (EtherType) field in a Linux cooked v1 header.
const SLL_PROTOCOL: usize = 14;
/// Linux cooked v2 header: protocol first, then interface index, ARPHRD, type, address.
const SLL2_HEADER: usize = 20;
/// BSD loopback/null header: the address family, 4 bytes.
const NULL_HEADER: usize = 4;
/// Fragments older than this (ns) are given up on (RFC 791 reassembly timeout is 15 s; a
/// capture is not a live host, so be generous).
const FRAGMENT_TIMEOUT_NS: i128 = 60_000_000_000;
/// Bytes of fragments held for reassembly, at most: beyond this (fragments that never
/// complete, from a broken or hostile capture) everything held is given up.
const MAX_FRAGMENT_BYTES: usize = 4 << 20;

/// How a datagram travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A UDP datagram.
    Udp,
    /// A TCP segment with its sequence number (SIP over TCP is reassembled from these).
    Tcp {
        /// TCP sequence number of the first payload byte.
        seq: u32,
    },
}

/// One UDP datagram (or TCP segment) of the capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Capture time since the first frame of the capture, ns (0 for frames stamped earlier).
    pub at_ns: u64,
    /// 1-based frame number in the file.
    pub frame: u64,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
    /// The UDP or TCP payload.
    pub payload: Vec<u8>,
}

/// What became of the frames that are not datagrams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCounts {
    /// Frames in the file.
    pub frames: u64,
    /// UDP datagrams found (after reassembly).
    pub udp: u64,
    /// TCP segments with payload found.
    pub tcp: u64,
    /// Frames on a link type we do not read.
    pub unsupported_link: u64,
    /// Frames that are not IP (ARP, LLDP, …) or not UDP/TCP (ICMP, …).
    pub other: u64,
    /// Frames whose headers are cut short or inconsistent.
    pub undecodable: u64,
    /// IP fragments (a reassembled datagram counts once in `udp`/`tcp`).
    pub fragments: u64,
}

/// Turns frames into datagrams, keeping fragment reassembly state.
pub(crate) struct Decoder {
    first_ns: Option<i128>,
    defrag: IpDefragPool<i128, ()>,
    pub counts: FrameCounts,
    /// The link type of the first frame we could not read, for the error message.
    pub unsupported: Option<u32>,
    /// Fragment bytes taken in since the pool was last emptied, less those reassembled.
    fragment_bytes: usize,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            first_ns: None,
            defrag: IpDefragPool::new(),
            counts: FrameCounts::default(),
            unsupported: None,
            fragment_bytes: 0,
        }
    }

    /// Decodes one frame; a datagram comes out when the frame completes one.
    pub fn frame(&mut self, frame: Frame<'_>) -> Option<Datagram> {
        self.counts.frames += 1;
        let number = self.counts.frames;
        let first = *self.first_ns.get_or_insert(frame.at_ns);
        let at_ns = u64::try_from((frame.at_ns - first).max(0)).unwrap_or(u64::MAX);
        let sliced = match slice(frame.link_type, frame.data) {
            Ok(p) => p,
            Err(NotSliced::Unsupported) => {
                self.counts.unsupported_link += 1;
                self.unsupported.get_or_insert(frame.link_type);
                return None;
            }
            Err(NotSliced::NotIp) => {
                self.counts.other += 1;
                return None;
            }
            Err(NotSliced::Broken) => {
                self.counts.undecodable += 1;
                return None;
            }
        };
        let net = match &sliced.net {
            Some(net @ (NetSlice::Ipv4(_) | NetSlice::Ipv6(_))) => net,
            _ => {
                self.counts.other += 1;
                return None;
            }
        };
        let (src_ip, dst_ip, fragmenting) = match net {
            NetSlice::Ipv4(v4) => (
                v4.header().source_addr().into(),
                v4.header().destination_addr().into(),
                v4.is_payload_fragmented(),
            ),
            NetSlice::Ipv6(v6) => (
                v6.header().source_addr().into(),
                v6.header().destination_addr().into(),
                v6.is_payload_fragmented(),
            ),
            NetSlice::Arp(_) => return None,
        };
        if fragmenting {
            self.counts.fragments += 1;
            self.defrag
                .retain(|t| frame.at_ns - *t < FRAGMENT_TIMEOUT_NS);
            self.fragment_bytes += frame.data.len();
            if self.fragment_bytes > MAX_FRAGMENT_BYTES {
                self.defrag.retain(|_| false);
                self.fragment_bytes = frame.data.len();
            }
            let whole = match self.defrag.process_sliced_packet(&sliced, frame.at_ns, ()) {
                Ok(Some(whole)) => whole,
                Ok(None) => return None,
                Err(_) => {
                    self.counts.undecodable += 1;
                    return None;
                }
            };
            if whole.ip_number != IpNumber::UDP {
                self.counts.other += 1;
                return None;
            }
            self.fragment_bytes = self.fragment_bytes.saturating_sub(whole.payload.len());
            let Ok(udp) = UdpSlice::from_slice(&whole.payload) else {
                self.counts.undecodable += 1;
                return None;
            };
            self.counts.udp += 1;
            let datagram = Datagram {
                at_ns,
                frame: number,
                src: SocketAddr::new(src_ip, udp.source_port()),
                dst: SocketAddr::new(dst_ip, udp.destination_port()),
                transport: Transport::Udp,
                payload: udp.payload().to_vec(),
            };
            self.defrag.return_buf(whole);
            return Some(datagram);
        }
        match &sliced.transport {
            Some(TransportSlice::Udp(udp)) => {
                self.counts.udp += 1;
                Some(Datagram {
                    at_ns,
                    frame: number,
                    src: SocketAddr::new(src_ip, udp.source_port()),
                    dst: SocketAddr::new(dst_ip, udp.destination_port()),
                    transport: Transport::Udp,
                    payload: udp.payload().to_vec(),
                })
            }
            Some(TransportSlice::Tcp(tcp)) => {
                if tcp.payload().is_empty() {
                    self.counts.other += 1;
                    return None;
                }
                self.counts.tcp += 1;
                Some(Datagram {
                    at_ns,
                    frame: number,
                    src: SocketAddr::new(src_ip, tcp.source_port()),
                    dst: SocketAddr::new(dst_ip, tcp.destination_port()),
                    transport: Transport::Tcp {
                        seq: tcp.sequence_number(),
                    },
                    payload: tcp.payload().to_vec(),
                })
            }
            _ => {
                self.counts.other += 1;
                None
            }
        }
    }
}

/// Why a frame gave no IP packet.
enum NotSliced {
    Unsupported,
    NotIp,
    Broken,
}

fn slice(link_type: u32, data: &[u8]) -> Result<SlicedPacket<'_>, NotSliced> {
    let result = match link_type {
        link::ETHERNET => match pppoe_ip(data) {
            Some(ip) => SlicedPacket::from_ip(ip),
            None => SlicedPacket::from_ethernet(data),
        },
        link::RAW | link::RAW_OLD_12 | link::RAW_OLD_14 | link::IPV4 | link::IPV6 => {
            SlicedPacket::from_ip(data)
        }
        link::NULL | link::LOOP => match data.get(NULL_HEADER..) {
            // The address family is in host byte order (NULL) or network order (LOOP) and
            // its value for IPv6 differs between BSDs; the IP version nibble says it all.
            Some(ip) => SlicedPacket::from_ip(ip),
            None => return Err(NotSliced::Broken),
        },
        link::LINUX_SLL => match (
            data.get(SLL_PROTOCOL..SLL_PROTOCOL + 2),
            data.get(SLL_HEADER..),
        ) {
            (Some(p), Some(rest)) => from_ether_type(u16::from_be_bytes([p[0], p[1]]), rest),
            _ => return Err(NotSliced::Broken),
        },
        link::LINUX_SLL2 => match (data.get(0..2), data.get(SLL2_HEADER..)) {
            (Some(p), Some(rest)) => from_ether_type(u16::from_be_bytes([p[0], p[1]]), rest),
            _ => return Err(NotSliced::Broken),
        },
        _ => return Err(NotSliced::Unsupported),
    };
    match result {
        Ok(p) if p.net.is_some() => Ok(p),
        Ok(_) => Err(NotSliced::NotIp),
        Err(_) => Err(NotSliced::Broken),
    }
}

/// The IP packet inside a PPPoE session frame (RFC 2516 §4: Ethernet, EtherType 0x8864, the
/// 6-byte PPPoE header, the 2-byte PPP protocol: 0x0021 IPv4, 0x0057 IPv6), as DSL captures have.
fn pppoe_ip(data: &[u8]) -> Option<&[u8]> {
    const ETHERTYPE_PPPOE_SESSION: [u8; 2] = [0x88, 0x64];
    const PPP_IPV4: [u8; 2] = [0x00, 0x21];
    const PPP_IPV6: [u8; 2] = [0x00, 0x57];
    const ETHERNET_HEADER: usize = 14;
    const PPPOE_HEADER: usize = 6;
    let ppp = ETHERNET_HEADER + PPPOE_HEADER;
    if data.get(12..14)? != ETHERTYPE_PPPOE_SESSION {
        return None;
    }
    let protocol = data.get(ppp..ppp + 2)?;
    (protocol == PPP_IPV4 || protocol == PPP_IPV6).then(|| data.get(ppp + 2..))?
}

fn from_ether_type(
    ether_type: u16,
    rest: &[u8],
) -> Result<SlicedPacket<'_>, etherparse::err::packet::SliceError> {
    SlicedPacket::from_ether_type(EtherType(ether_type), rest)
}
