//! A userspace network impairment relay between `callverify` and a SIP callee (sipp), for the
//! loss-and-jitter tests: this kernel has no `netem` qdisc, so packets are dropped, delayed,
//! reordered and duplicated here, from a seed, as str0m's `netem` crate does in userspace.
//!
//! ```text
//!  callverify ──SIP──▶ relay :sip_port ──SIP (from :sip_port+1)──▶ callee
//!             ◀──────── responses, SDP rewritten ◀────────────────
//!  callverify ══RTP══▶ relay A (per call) ~~impaired~~ relay B ══RTP══▶ callee
//!             ◀═══════════════════ ~~impaired~~ ◀══════════════════════
//! ```
//!
//! The relay is where callverify sends its INVITE. It rewrites the SDP of the offer so that the
//! callee sends its RTP to the call's B socket, and the SDP of the answer so that callverify
//! sends (and expects) RTP at the call's A socket: every packet of both directions passes
//! through the relay, and callverify's latch sees RTP come from exactly where the answer said.
//! Responses come back through the relay (the address the INVITE went to, the only one
//! callverify trusts); ACK and BYE go to the callee's Contact directly. SIP is not impaired.
//!
//! Impairment per direction: loss with probability `loss`; every packet kept is delayed by
//! `delay ± jitter` (uniform, as netem's `delay 50ms 20ms`: packets 20 ms apart with delays
//! 40 ms apart overtake each other, which is the reordering); a kept packet is sent twice with
//! probability `duplicate`. Each direction of each call draws from its own generator, seeded
//! from `seed`, the call's number and the direction.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;

/// What the relay does to RTP.
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    pub loss: f64,
    pub delay: Duration,
    pub jitter: Duration,
    pub duplicate: f64,
    pub seed: u64,
}

/// Counters over all calls and both directions.
#[derive(Debug, Default)]
pub struct Stats {
    /// RTP packets received from either side.
    pub received: AtomicU64,
    /// Dropped (loss).
    pub dropped: AtomicU64,
    /// Sent twice.
    pub duplicated: AtomicU64,
    /// Sent after a packet with a higher sequence number of the same stream.
    pub reordered: AtomicU64,
    /// Calls set up through the relay.
    pub calls: AtomicU64,
}

/// A running relay; stops when dropped.
pub struct Relay {
    runtime: tokio::runtime::Runtime,
    /// Where callverify sends SIP (its trunk).
    pub sip_addr: SocketAddr,
    pub stats: Arc<Stats>,
}

/// One call's media sockets and where each side receives RTP.
struct Call {
    /// Facing callverify: its port goes into the answer callverify sees.
    a: Arc<UdpSocket>,
    /// Facing the callee: its port goes into the offer the callee sees.
    b: Arc<UdpSocket>,
    /// callverify's RTP address (from the offer) and the callee's (from the answer).
    caller_media: Arc<Mutex<Option<SocketAddr>>>,
    callee_media: Arc<Mutex<Option<SocketAddr>>>,
}

struct Shared {
    callee_sip: SocketAddr,
    impairment: Impairment,
    stats: Arc<Stats>,
    /// Call-ID → the call's media, and the callverify SIP address to answer.
    calls: Mutex<HashMap<String, (Arc<Call>, SocketAddr)>>,
    media_ports: Mutex<Range<u16>>,
}

impl Relay {
    /// Starts a relay taking SIP on 127.0.0.1:`sip_port` (and sending to the callee from
    /// `sip_port + 1`), for a callee at `callee_sip`, with two RTP ports per call taken in turn
    /// from `media_ports`.
    pub fn start(
        callee_sip: SocketAddr,
        sip_port: u16,
        media_ports: Range<u16>,
        impairment: Impairment,
    ) -> Relay {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("relay runtime");
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared {
            callee_sip,
            impairment,
            stats: Arc::clone(&stats),
            calls: Mutex::new(HashMap::new()),
            media_ports: Mutex::new(media_ports),
        });
        let (a, b) = runtime.block_on(async {
            let a = UdpSocket::bind(("127.0.0.1", sip_port))
                .await
                .expect("relay SIP port");
            let b = UdpSocket::bind(("127.0.0.1", sip_port + 1))
                .await
                .expect("relay SIP port + 1");
            (Arc::new(a), Arc::new(b))
        });
        runtime.spawn(from_caller(
            Arc::clone(&a),
            Arc::clone(&b),
            Arc::clone(&shared),
        ));
        runtime.spawn(from_callee(a, b, shared));
        Relay {
            runtime,
            sip_addr: SocketAddr::from(([127, 0, 0, 1], sip_port)),
            stats,
        }
    }

    pub fn shutdown(self) {
        self.runtime.shutdown_background();
    }
}

/// SIP from callverify: offers rewritten to the call's B socket, everything to the callee.
async fn from_caller(a: Arc<UdpSocket>, b: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = a.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(&buf[..n]) else {
            continue;
        };
        let Some(call_id) = header(text, &["call-id", "i"]) else {
            continue;
        };
        let call = call_for(&shared, &call_id, from).await;
        let out = match (call, sdp_endpoint(text)) {
            (Some(call), Some(media)) => {
                *call.caller_media.lock().unwrap() = Some(media);
                let port = call.b.local_addr().unwrap().port();
                rewrite_sdp_port(text, port)
            }
            _ => text.to_string(),
        };
        let _ = b.send_to(out.as_bytes(), shared.callee_sip).await;
    }
}

/// SIP from the callee: answers rewritten to the call's A socket, back to its callverify.
async fn from_callee(a: Arc<UdpSocket>, b: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, _)) = b.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(&buf[..n]) else {
            continue;
        };
        let Some(call_id) = header(text, &["call-id", "i"]) else {
            continue;
        };
        let Some((call, caller)) = shared.calls.lock().unwrap().get(&call_id).cloned() else {
            continue;
        };
        let out = match sdp_endpoint(text) {
            Some(media) => {
                *call.callee_media.lock().unwrap() = Some(media);
                let port = call.a.local_addr().unwrap().port();
                rewrite_sdp_port(text, port)
            }
            None => text.to_string(),
        };
        let _ = a.send_to(out.as_bytes(), caller).await;
    }
}

/// The call of `call_id`, set up (two media sockets, two impaired directions) on first sight.
async fn call_for(shared: &Arc<Shared>, call_id: &str, caller: SocketAddr) -> Option<Arc<Call>> {
    if let Some((call, _)) = shared.calls.lock().unwrap().get(call_id) {
        return Some(Arc::clone(call));
    }
    let (pa, pb) = {
        let mut ports = shared.media_ports.lock().unwrap();
        let pa = ports.next()?;
        (pa, ports.next()?)
    };
    let a = Arc::new(UdpSocket::bind(("127.0.0.1", pa)).await.ok()?);
    let b = Arc::new(UdpSocket::bind(("127.0.0.1", pb)).await.ok()?);
    let number = shared.stats.calls.fetch_add(1, Ordering::Relaxed);
    let call = Arc::new(Call {
        a,
        b,
        caller_media: Arc::new(Mutex::new(None)),
        callee_media: Arc::new(Mutex::new(None)),
    });
    let imp = shared.impairment;
    let seed = |direction: u64| imp.seed ^ (number.wrapping_mul(0x9E37_79B9_7F4A_7C15) + direction);
    // callverify → callee: in at A, out of B.
    tokio::spawn(impaired(
        Arc::clone(&call.a),
        Arc::clone(&call.b),
        Arc::clone(&call.callee_media),
        imp,
        StdRng::seed_from_u64(seed(1)),
        Arc::clone(&shared.stats),
    ));
    // callee → callverify: in at B, out of A.
    tokio::spawn(impaired(
        Arc::clone(&call.b),
        Arc::clone(&call.a),
        Arc::clone(&call.caller_media),
        imp,
        StdRng::seed_from_u64(seed(2)),
        Arc::clone(&shared.stats),
    ));
    shared
        .calls
        .lock()
        .unwrap()
        .insert(call_id.to_string(), (Arc::clone(&call), caller));
    Some(call)
}

/// One direction of one call's RTP: what comes in at `input` goes out of `output` to `to`,
/// dropped, delayed and duplicated.
async fn impaired(
    input: Arc<UdpSocket>,
    output: Arc<UdpSocket>,
    to: Arc<Mutex<Option<SocketAddr>>>,
    imp: Impairment,
    mut rng: StdRng,
    stats: Arc<Stats>,
) {
    // Highest sequence number sent so far, per SSRC (for the reordering count).
    let sent: Arc<Mutex<HashMap<u32, u16>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, _)) = input.recv_from(&mut buf).await else {
            continue;
        };
        let Some(dest) = *to.lock().unwrap() else {
            continue;
        };
        stats.received.fetch_add(1, Ordering::Relaxed);
        if rng.random_bool(imp.loss) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let copies = if rng.random_bool(imp.duplicate) {
            stats.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let low = imp.delay.saturating_sub(imp.jitter);
            let spread = (imp.jitter * 2).as_micros() as u64;
            let delay = low + Duration::from_micros(rng.random_range(0..=spread));
            let packet = buf[..n].to_vec();
            let output = Arc::clone(&output);
            let sent = Arc::clone(&sent);
            let stats = Arc::clone(&stats);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if packet.len() >= 12 {
                    let seq = u16::from_be_bytes([packet[2], packet[3]]);
                    let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
                    let mut sent = sent.lock().unwrap();
                    let top = sent.entry(ssrc).or_insert(seq);
                    if (seq.wrapping_sub(*top) as i16) < 0 {
                        stats.reordered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        *top = seq;
                    }
                }
                let _ = output.send_to(&packet, dest).await;
            });
        }
    }
}

/// The value of the first header named one of `names` (case-insensitive).
fn header(message: &str, names: &[&str]) -> Option<String> {
    let head = message.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        names
            .iter()
            .any(|n| name.trim().eq_ignore_ascii_case(n))
            .then(|| value.trim().to_string())
    })
}

/// The `c=` address and `m=audio` port of the SDP body, if the message has one.
fn sdp_endpoint(message: &str) -> Option<SocketAddr> {
    let (_, body) = message.split_once("\r\n\r\n")?;
    let ip = body
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim()
        .parse()
        .ok()?;
    let port = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, port))
}

/// The message with its `m=audio` port replaced (all on 127.0.0.1, so `c=` stays) and its
/// Content-Length set to the new body's.
fn rewrite_sdp_port(message: &str, port: u16) -> String {
    let Some((head, body)) = message.split_once("\r\n\r\n") else {
        return message.to_string();
    };
    let body: String = body
        .split_inclusive("\r\n")
        .map(|line| match line.strip_prefix("m=audio ") {
            Some(rest) => {
                let after = rest.split_once(' ').map_or("\r\n", |(_, r)| r);
                format!("m=audio {port} {after}")
            }
            None => line.to_string(),
        })
        .collect();
    let head: Vec<String> = head
        .lines()
        .map(|line| match line.split_once(':') {
            Some((name, _))
                if name.trim().eq_ignore_ascii_case("content-length")
                    || name.trim().eq_ignore_ascii_case("l") =>
            {
                format!("Content-Length: {}", body.len())
            }
            _ => line.to_string(),
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n"))
}

#[test]
fn sdp_rewrite_keeps_the_rest_and_fixes_the_length() {
    let m = "SIP/2.0 200 OK\r\nCall-ID: abc\r\nContent-Length: 42\r\n\r\nv=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 6000 RTP/AVP 0 101\r\n";
    assert_eq!(sdp_endpoint(m), Some("127.0.0.1:6000".parse().unwrap()));
    let r = rewrite_sdp_port(m, 55_400);
    assert!(r.contains("m=audio 55400 RTP/AVP 0 101\r\n"), "{r}");
    let body = r.split_once("\r\n\r\n").unwrap().1;
    assert!(
        r.contains(&format!("Content-Length: {}", body.len())),
        "{r}"
    );
    assert_eq!(header(&r, &["call-id", "i"]).as_deref(), Some("abc"));
}
