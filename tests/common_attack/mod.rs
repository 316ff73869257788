//! The attacker's kit for the tests/attack_*.rs tests: what an on-path stranger on the same
//! network sees (a `tshark -i lo` capture, as anyone with a mirrored switch port has), how it
//! forges SIP from what it saw, how it builds RTP key presses, and how it spoofs a UDP source
//! port (a raw socket: the tests run as root, as CI does).
//!
//! Everything here is real traffic on 127.0.0.1: the callee is sipp, the verifier is the
//! built `callverify` binary, the stranger is this test process on its own ports.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dtmf::{Digit, Generator, ToneSpec};
use media::rfc4733::EventSchedule;
use media::rtp::{PacketSpec, RtpPacket};
use sip::message::{HeaderAccess as _, Limits, Message, Request, Response};

/// How long tshark gets to start capturing.
const SNIFFER_START: Duration = Duration::from_secs(20);
/// Where a sniffer's probe datagrams go (nothing listens there).
pub const PROBE_PORT: u16 = 31099;

/// One UDP datagram seen on `lo`.
#[derive(Clone, Debug)]
pub struct Captured {
    /// Kernel capture time, seconds since the epoch.
    pub time: f64,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: Vec<u8>,
}

impl Captured {
    /// The payload as a SIP message, if it is one.
    pub fn sip(&self) -> Option<Message> {
        Message::parse(&self.payload, &Limits::default()).ok()
    }
}

/// A `tshark -i lo` capture running in the background (killed on drop).
pub struct Sniffer {
    child: Child,
    seen: Arc<Mutex<Vec<Captured>>>,
    log: PathBuf,
}

impl Sniffer {
    /// Captures UDP on `lo` matching the BPF `filter`; returns once tshark captures (a probe
    /// datagram to [`PROBE_PORT`] was seen: tshark says "Capturing on" a little before).
    pub fn start(dir: &Path, name: &str, filter: &str) -> Sniffer {
        let log = dir.join(format!("{name}.log"));
        let err = std::fs::File::create(&log).unwrap();
        let filter = format!("({filter}) or (udp dst port {PROBE_PORT})");
        let mut child = Command::new("tshark")
            .args(["-i", "lo", "-l", "-n", "-p", "-B", "64", "-f", &filter])
            .args(["-T", "fields", "-E", "separator=,"])
            .args([
                "-e",
                "frame.time_epoch",
                "-e",
                "udp.srcport",
                "-e",
                "udp.dstport",
            ])
            .args(["-e", "udp.payload"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("tshark (apt install tshark)");
        let stdout = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let f: Vec<&str> = line.split(',').collect();
                if f.len() < 4 {
                    continue;
                }
                let (Ok(time), Ok(src_port), Ok(dst_port)) =
                    (f[0].parse(), f[1].parse(), f[2].parse())
                else {
                    continue;
                };
                let Some(payload) = unhex(f[3]) else { continue };
                into.lock().unwrap().push(Captured {
                    time,
                    src_port,
                    dst_port,
                    payload,
                });
            }
        });
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let start = Instant::now();
        loop {
            let _ = probe.send_to(b"probe", ("127.0.0.1", PROBE_PORT));
            if seen
                .lock()
                .unwrap()
                .iter()
                .any(|p| p.dst_port == PROBE_PORT)
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "tshark exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < SNIFFER_START,
                "tshark never captured: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Sniffer { child, seen, log }
    }

    /// Waits until tshark has printed everything up to now (a probe sent now is seen).
    pub fn sync(&self) {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let token = format!("sync {:?}", Instant::now()).into_bytes();
        let _ = probe.send_to(&token, ("127.0.0.1", PROBE_PORT));
        self.wait_for(Duration::from_secs(20), |p| {
            (p.payload == token).then_some(())
        });
    }

    /// Everything captured so far.
    pub fn packets(&self) -> Vec<Captured> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits up to `limit` for a packet `pick` accepts (the first one, in capture order).
    pub fn wait_for<T>(&self, limit: Duration, mut pick: impl FnMut(&Captured) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(t) = self.packets().iter().find_map(&mut pick) {
                return t;
            }
            if start.elapsed() >= limit {
                let seen: Vec<String> = self
                    .packets()
                    .iter()
                    .take(20)
                    .map(|p| {
                        let head = p.payload.split(|b| *b == b'\n').next().unwrap_or(&[]);
                        format!(
                            "{} -> {}: {}",
                            p.src_port,
                            p.dst_port,
                            String::from_utf8_lossy(&head[..head.len().min(60)])
                        )
                    })
                    .collect();
                panic!(
                    "not seen on the wire in {limit:?} ({} packets captured):\n{}",
                    self.packets().len(),
                    seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.log;
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// What a stranger learns from callverify's INVITE to the callee.
#[derive(Clone, Debug)]
pub struct SeenInvite {
    pub request: Request,
    pub text: String,
    /// callverify's SIP address (the Via sent-by, where it listens).
    pub sip: SocketAddr,
    /// callverify's RTP address (the SDP offer).
    pub rtp: SocketAddr,
}

/// Waits for callverify's INVITE to `callee_port` on the wire.
pub fn sniff_invite(sniffer: &Sniffer, callee_port: u16) -> SeenInvite {
    sniffer.wait_for(Duration::from_secs(30), |p| {
        if p.dst_port != callee_port {
            return None;
        }
        let Some(Message::Request(r)) = p.sip() else {
            return None;
        };
        if r.method.as_str() != "INVITE" {
            return None;
        }
        let text = String::from_utf8_lossy(&p.payload).into_owned();
        let via = r.top_via().ok()?;
        let sip: SocketAddr = via.sent_by.parse().ok()?;
        let rtp = sdp_address(&text)?;
        Some(SeenInvite {
            request: r,
            text,
            sip,
            rtp,
        })
    })
}

/// The `c=` address and `m=audio` port of an SDP body inside `text`.
pub fn sdp_address(text: &str) -> Option<SocketAddr> {
    let ip = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))?
        .trim();
    let port = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?;
    format!("{ip}:{port}").parse().ok()
}

/// The first 2xx to the INVITE that `from_port` (the genuine callee) sent on the wire.
pub fn sniff_answer(sniffer: &Sniffer, from_port: u16) -> Response {
    sniffer.wait_for(Duration::from_secs(30), |p| {
        if p.src_port != from_port {
            return None;
        }
        match p.sip() {
            Some(Message::Response(r))
                if r.status == 200 && r.cseq().is_ok_and(|c| c.method.as_str() == "INVITE") =>
            {
                Some(r)
            }
            _ => None,
        }
    })
}

/// SDP an attacker puts in a forged answer or re-INVITE: its own RTP port.
pub fn attacker_sdp(rtp_port: u16) -> String {
    format!(
        "v=0\r\no=evil 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n"
    )
}

/// A `200 OK` to `invite` forged by a stranger listening on `sip_port` with media on
/// `rtp_port`: with the INVITE's own Via (its real branch), or `branch` in its place.
pub fn forged_200(invite: &Request, branch: Option<&str>, sip_port: u16, rtp_port: u16) -> Vec<u8> {
    let mut via = invite.headers.get("Via").unwrap().to_string();
    if let Some(b) = branch {
        let real = invite.top_via().unwrap().branch().unwrap().to_string();
        via = via.replace(&real, b);
    }
    let sdp = attacker_sdp(rtp_port);
    format!(
        "SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: {}\r\nTo: {};tag=evil{sip_port}\r\nCall-ID: {}\r\n\
         CSeq: {}\r\nContact: <sip:evil@127.0.0.1:{sip_port}>\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        invite.headers.get("From").unwrap(),
        invite.headers.get("To").unwrap(),
        invite.call_id().unwrap(),
        invite.headers.get("CSeq").unwrap(),
        sdp.len()
    )
    .into_bytes()
}

/// A request in the dialog of `invite` (sent by callverify) answered by `answer` (from the
/// genuine callee), as the callee would send it, but from the stranger's `sip_port`.
pub fn forged_in_dialog(
    invite: &Request,
    answer: &Response,
    method: &str,
    cseq: u32,
    sip_port: u16,
    headers: &str,
    body: &str,
) -> Vec<u8> {
    let contact = invite.headers.get("Contact").unwrap();
    let uri = contact
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string();
    format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bKevil{method}{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n\
         Contact: <sip:evil@127.0.0.1:{sip_port}>\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        answer.headers.get("To").unwrap(),
        invite.headers.get("From").unwrap(),
        invite.call_id().unwrap(),
        body.len()
    )
    .into_bytes()
}

/// RTP packets of a '#' (or any key) press as the attacker sends them: first 200 ms of the
/// tone in PCMU (payload type 0), then a whole RFC 4733 event (payload type 101, seven
/// packets). Sequence numbers and timestamps start at `seq`/`ts`.
pub fn key_packets(key: char, ssrc: u32, seq: u16, ts: u32) -> Vec<Vec<u8>> {
    let digit = Digit::from_char(key).unwrap();
    let mut out = Vec::new();
    let mut generator = Generator::new(ToneSpec {
        on_ms: 200,
        off_ms: 0,
        ..ToneSpec::default()
    });
    generator.push_digit(digit);
    let (mut seq, mut ts) = (seq, ts);
    loop {
        let mut pcm = [0i16; 160];
        if generator.fill(&mut pcm) == 0 {
            break;
        }
        let payload: Vec<u8> = pcm
            .iter()
            .map(|s| media::g711::linear_to_ulaw(*s))
            .collect();
        out.push(rtp(0, false, seq, ts, ssrc, &payload));
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(160);
    }
    let mut schedule = EventSchedule::new(
        digit,
        Duration::from_millis(100),
        Duration::from_millis(20),
        8000,
        10,
    );
    while let Some(p) = schedule.next_packet() {
        out.push(rtp(101, p.marker, seq, ts, ssrc, &p.payload.to_bytes()));
        seq = seq.wrapping_add(1);
    }
    out
}

/// One RTP packet.
pub fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    PacketSpec {
        marker,
        payload_type: pt,
        sequence: seq,
        timestamp: ts,
        ssrc,
        payload,
        ..PacketSpec::default()
    }
    .to_vec()
    .unwrap()
}

/// Sends `packets` from `socket` to `to`, one every 20 ms (as a phone would).
pub fn send_paced(socket: &UdpSocket, to: SocketAddr, packets: &[Vec<u8>]) {
    for p in packets {
        let _ = socket.send_to(p, to);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last RTP packet `from_port` sent on the wire: (SSRC, sequence number, timestamp).
pub fn last_rtp(sniffer: &Sniffer, from_port: u16) -> Option<(u32, u16, u32)> {
    sniffer
        .packets()
        .iter()
        .rev()
        .filter(|p| p.src_port == from_port)
        .find_map(|p| {
            let r = RtpPacket::parse(&p.payload).ok()?;
            Some((r.ssrc, r.sequence.0, r.timestamp))
        })
}

/// A raw IPv4 socket for UDP with a source port of the stranger's choosing (root only):
/// the kernel writes the IP header (source 127.0.0.1), we write the UDP header.
pub struct Spoofer(socket2::Socket);

impl Spoofer {
    pub fn new() -> Spoofer {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::UDP),
        )
        .expect("a raw socket (run the tests as root, as CI does)");
        Spoofer(s)
    }

    /// One datagram that seems to come from 127.0.0.1:`from_port`.
    pub fn send(&self, from_port: u16, to: SocketAddr, payload: &[u8]) {
        let len = u16::try_from(8 + payload.len()).unwrap();
        let mut d = Vec::with_capacity(usize::from(len));
        d.extend_from_slice(&from_port.to_be_bytes());
        d.extend_from_slice(&to.port().to_be_bytes());
        d.extend_from_slice(&len.to_be_bytes());
        // Checksum 0: none (RFC 768), which IPv4 receivers accept.
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(payload);
        self.0
            .send_to(&d, &to.into())
            .expect("raw send to loopback");
    }
}

/// Counts what arrives on a socket of the stranger's for `limit` (its share of answers).
pub fn count_received(socket: &UdpSocket, limit: Duration) -> usize {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 65_536];
    let mut n = 0;
    while start.elapsed() < limit {
        if socket.recv_from(&mut buf).is_ok() {
            n += 1;
        }
    }
    n
}

/// Raw 8 kHz mu-law (sipp's `rtp_stream` format): for each part, `ms` of silence or of a key's
/// tone (ITU-T Q.23 at -10 dBm0).
pub fn ulaw(path: &Path, parts: &[(Option<char>, u32)]) {
    let mut pcm: Vec<i16> = Vec::new();
    for (key, ms) in parts {
        let n = (*ms as usize) * 8;
        match key.and_then(Digit::from_char) {
            Some(d) => {
                let mut g = Generator::new(ToneSpec {
                    on_ms: *ms,
                    off_ms: 0,
                    ..ToneSpec::default()
                });
                g.push_digit(d);
                let mut tone = vec![0i16; n];
                let got = g.fill(&mut tone);
                pcm.extend_from_slice(&tone[..got]);
            }
            None => pcm.extend(std::iter::repeat_n(0, n)),
        }
    }
    let bytes: Vec<u8> = pcm
        .iter()
        .map(|s| media::g711::linear_to_ulaw(*s))
        .collect();
    std::fs::write(path, bytes).unwrap();
}

/// `callverify serve` as a process (the built binary), killed on drop.
pub struct Serve {
    child: Child,
    pub api: SocketAddr,
    pub key: String,
    log: PathBuf,
}

/// The API key the serve tests use.
pub const API_KEY: &str = "cv_test_attack_key_000000001";

impl Serve {
    /// Starts `callverify serve` with `config` (TOML) under a descriptor limit of `nofile`
    /// (what systemd gives a service: 1024), and waits until its API answers.
    pub fn start(dir: &Path, config: &str, api: SocketAddr, nofile: u32) -> Serve {
        let path = dir.join("serve.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("serve.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "ulimit -n {nofile} && exec \"$0\" serve --config \"$1\""
            ))
            .arg(env!("CARGO_BIN_EXE_callverify"))
            .arg(&path)
            .env("RUST_LOG", "warn");
        for (k, _) in std::env::vars() {
            if k.starts_with("CALLVERIFY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut serve = Serve {
            child,
            api,
            key: API_KEY.to_string(),
            log,
        };
        let start = Instant::now();
        while serve.http("GET", "/healthz", None).is_none() {
            if let Ok(Some(status)) = serve.child.try_wait() {
                panic!("serve exited ({status}): {}", serve.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "serve never answered: {}",
                serve.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        serve
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One HTTP/1.1 request; the status and body (None: no answer).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.api, Duration::from_secs(5)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(40))).ok()?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.api,
            self.key,
            body.len()
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        // Chunked bodies: good enough to search for JSON fields and metric lines.
        Some((status, body.to_string()))
    }

    /// Creates a verification of `destination`; its id.
    pub fn verify(&self, destination: &str) -> String {
        let body = format!(r#"{{"phone_number": "{destination}", "mode": "standard"}}"#);
        let (status, text) = self
            .http("POST", "/v1/verifications", Some(&body))
            .expect("the API answers");
        assert_eq!(status, 201, "{text}\n{}", self.log_text());
        let v: serde_json::Value = serde_json::from_str(json_part(&text)).unwrap();
        v["id"].as_str().unwrap().to_string()
    }

    /// Long-polls verification `id` until it is completed (or `limit` passes).
    pub fn outcome(&self, id: &str, limit: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            if let Some((200, text)) =
                self.http("GET", &format!("/v1/verifications/{id}?wait=10"), None)
            {
                let v: serde_json::Value =
                    serde_json::from_str(json_part(&text)).unwrap_or(serde_json::Value::Null);
                if v["status"] == "completed" {
                    return v;
                }
            }
            assert!(
                start.elapsed() < limit,
                "verification {id} not completed: {}",
                self.log_text()
            );
        }
    }

    /// The value of the metric line starting with `name` (e.g. a label set), 0 if absent.
    pub fn metric(&self, name: &str) -> u64 {
        let (_, text) = self.http("GET", "/metrics", None).expect("metrics");
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}

/// The JSON object inside a (possibly chunked) HTTP body.
fn json_part(body: &str) -> &str {
    match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b > a => &body[a..=b],
        _ => body,
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A serve configuration: API on `api`, SIP on `sip`, RTP ports `rtp..rtp+19`, SIP URIs
/// allowed to 127.0.0.1 without per-number caps (the attack tests call one peer many times),
/// `/metrics` behind the client's key, an empty prompt folder (beeps), an in-memory store, `extra` TOML appended.
pub fn serve_config(dir: &Path, api: SocketAddr, sip: SocketAddr, rtp: u16, extra: &str) -> String {
    let prompts = dir.join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    format!(
        "[api]\nlisten = \"{api}\"\nmetrics_key = \"{API_KEY}\"\n\n\
         [[api.clients]]\nname = \"attack-test\"\nkey = \"{API_KEY}\"\n\n\
         [sip]\nlisten = \"{sip}\"\nallow_sip_uris = true\n{extra}\n\n\
         [media]\nrtp_ports = \"{rtp}-{}\"\nprompts = \"{}\"\n\n[store]\nurl = \"sqlite::memory:\"\n\n\
         [limits]\ncountries = [\"US\"]\nsip_uri_hosts = [\"127.0.0.1\"]\n\
         per_number_per_hour = 0\nper_number_per_day = 0\n",
        rtp + 19,
        prompts.display()
    )
}
