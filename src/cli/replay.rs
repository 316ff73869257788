//! `callverify replay FILE.pcap`: every RTP stream of a capture through the receive path of a
//! live call, with the digits each carried.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use capture::replay::{self, Replay, StreamReplay};
use capture::{Capture, Discovery, Scanner, Stream};

/// Bytes read from a capture at a time: both passes read the file in pieces, so memory does
/// not grow with it.
const READ_CHUNK: usize = 256 << 10;

/// The long help of the command (the summary line comes from `cli::mod`).
const HELP: &str = r##"Reads pcap and pcapng (Ethernet, Linux cooked v1/v2, raw IP, BSD loopback; IPv4/IPv6,
fragments reassembled; UDP, SIP also over TCP). A stream is one source→destination flow.
Its payload types come from the SDP in the capture when there is one for its endpoint;
otherwise the flow is recognised as RTP from its packets, static payload types mean what
RFC 3551 says and a dynamic payload type carrying 4-byte event blocks is taken for
telephone-event/8000. SIP INFO key presses are fed into the stream their sender sends
(or reported on a stream of their own when the capture has no RTP for them).

The file is read twice, in pieces (once to find the streams, once to replay them): memory
stays small however large the capture. Beyond 4096 UDP flows, further flows are counted,
not analysed; beyond 100000 key presses, further ones are counted, not listed.

Exit status: 0 when the capture was read to its end, 2 when it is unreadable, truncated or
corrupt (what was read before the damage is still printed).

jsonl: one JSON object per line, each with a "type":

  {"type":"digit","stream":"10.0.0.1:4000->10.0.0.2:5000","ssrc":"0x34d01d16","digit":"#",
   "method":"rfc4733","at_ms":5818,"duration_ms":null}
      one per key press, in order, before its stream's summary; method is inband,
      rfc4733 or sip_info (ssrc null); at_ms counts from the first frame of the capture;
      duration_ms is given by SIP INFO only.

  {"type":"stream","index":1,"stream":"…->…","src":"…","dst":"…","discovery":"sdp",
   "call_id":"…","payload_types":[{"pt":0,"encoding":"PCMU","clock_rate":8000,
   "origin":"sdp"}],"codecs":["PCMU"],"telephone_event":{"pt":101,"clock_rate":8000},
   "first_ms":0,"last_ms":19460,"packets":974,"non_rtp":0,"dropped_source":0,
   "sip_info":0,"ssrcs":[{"ssrc":"0x…","packets":974,"expected":974,"lost":0,
   "loss_percent":0.0,"duplicates":0,"reordered":0,"late":0,"jitter_ms":0.4,
   "payload_types":{"0":854,"101":120},"dropped_payload_type":0,"undecoded":0,
   "event_packets":120,"event_end_repeats":20,"ignored_events":0}],"digits":"2013785496"}
      one per stream; discovery is sdp, heuristic or sip_info (no RTP); origin is sdp,
      static (RFC 3551 table) or guessed; packet/loss figures are per SSRC from the
      capture's sequence numbers, jitter and the drop counters from the receive path.

  {"type":"capture","file":"…","format":"pcap","frames":974,"udp":974,"tcp":0,
   "sip_messages":0,"streams":1,"complete":true,"error":null}
      last; complete false and error set when the file could not be read to its end."##;

/// Run every RTP stream of a capture through the live media path and print the digits.
#[derive(Debug, clap::Args)]
#[command(after_long_help = HELP)]
pub struct Args {
    /// The capture (pcap or pcapng).
    file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Jsonl,
}

pub fn run(args: Args) -> ExitCode {
    let cannot_read = |e: std::io::Error| {
        eprintln!(
            "callverify replay: cannot read {}: {e}",
            args.file.display()
        );
        ExitCode::from(super::EXIT_USAGE)
    };
    let mut scanner = Scanner::new();
    if let Err(e) = read_in_pieces(&args.file, |piece| scanner.push(piece)) {
        return cannot_read(e);
    }
    let capture = scanner.finish();
    if capture.format.is_none() {
        let e = capture
            .error
            .as_ref()
            .map_or_else(|| "unreadable".to_string(), |e| e.to_string());
        eprintln!("callverify replay: {}: {e}", args.file.display());
        return ExitCode::from(super::EXIT_USAGE);
    }
    let mut replay = Replay::new(&capture, Instant::now());
    if let Err(e) = read_in_pieces(&args.file, |piece| replay.push(piece)) {
        return cannot_read(e);
    }
    let replays = replay.finish();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = match args.format {
        Format::Text => write_text(&mut out, &args.file, &capture, &replays),
        Format::Jsonl => write_jsonl(&mut out, &args.file, &capture, &replays),
    };
    if let Err(e) = written.and_then(|()| out.flush())
        // The reader went away (`| head`): not an error of ours, nothing left to say.
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("callverify replay: cannot write the output: {e}");
        return ExitCode::from(super::EXIT_USAGE);
    }
    match &capture.error {
        None => ExitCode::SUCCESS,
        Some(e) => {
            eprintln!("callverify replay: {}: {e}", args.file.display());
            ExitCode::from(super::EXIT_USAGE)
        }
    }
}

/// Reads `path` from its start to its end, [`READ_CHUNK`] bytes at a time.
pub(super) fn read_in_pieces(path: &Path, mut on_piece: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => on_piece(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What the bounds left out, if anything (a line of the text output).
fn left_out(capture: &Capture, replays: &[StreamReplay]) -> Option<String> {
    let unlisted: u64 = replays.iter().map(|r| r.unlisted).sum();
    let mut parts = Vec::new();
    if capture.untracked > 0 {
        parts.push(format!(
            "{} datagrams of flows beyond the first {} not analysed",
            capture.untracked,
            capture::streams::MAX_FLOWS
        ));
    }
    if capture.sip.dropped > 0 {
        parts.push(format!(
            "{} SDP descriptions or SIP INFO key presses beyond the bounds not kept",
            capture.sip.dropped
        ));
    }
    if unlisted > 0 {
        parts.push(format!(
            "{unlisted} key presses beyond the first {} not listed",
            replay::MAX_DIGITS
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

fn secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

fn hex(ssrc: u32) -> String {
    format!("0x{ssrc:08x}")
}

fn digit_string(r: &StreamReplay) -> String {
    r.digits.iter().map(|d| d.digit.as_char()).collect()
}

/// The audio codecs actually seen in the stream's packets, in payload-type order.
fn codecs(stream: &Stream) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for pt in &stream.payload_types {
        let seen = stream
            .ssrcs
            .iter()
            .any(|s| s.payload_types.iter().any(|(p, n)| *p == pt.pt && *n > 0));
        if seen && replay::codec_of(pt).is_some() {
            let name = pt.encoding.to_string();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

fn loss_percent(lost: u64, expected: u64) -> f64 {
    if expected == 0 {
        0.0
    } else {
        (lost as f64 * 1000.0 / expected as f64).round() / 10.0
    }
}

fn write_text(
    out: &mut impl Write,
    file: &Path,
    capture: &Capture,
    replays: &[StreamReplay],
) -> std::io::Result<()> {
    let c = &capture.counts;
    writeln!(
        out,
        "{}: {}, {} frames, {} UDP datagrams, {} TCP segments, {} SIP messages",
        file.display(),
        capture.format.map_or("unknown format", |f| f.as_str()),
        c.frames,
        c.udp,
        c.tcp,
        capture.sip.messages
    )?;
    if capture.streams.is_empty() {
        writeln!(out, "no RTP streams and no SIP INFO key presses found")?;
    }
    for (n, (stream, r)) in capture.streams.iter().zip(replays).enumerate() {
        writeln!(out)?;
        let how = match &stream.discovery {
            Discovery::Sdp { call_id } => format!("from SDP, Call-ID {call_id}"),
            Discovery::Heuristic => "recognised as RTP, no SDP".to_string(),
            Discovery::SipInfoOnly { call_id } => {
                format!("SIP INFO only, no RTP, Call-ID {call_id}")
            }
        };
        writeln!(
            out,
            "stream {}: {} -> {} ({how})",
            n + 1,
            stream.src,
            stream.dst
        )?;
        if !stream.payload_types.is_empty() {
            let pts: Vec<String> = stream
                .payload_types
                .iter()
                .map(|p| {
                    format!(
                        "{} {}/{} ({})",
                        p.pt,
                        p.encoding,
                        p.clock_rate,
                        p.origin.as_str()
                    )
                })
                .collect();
            writeln!(out, "  payload types: {}", pts.join(", "))?;
        }
        for s in &stream.ssrcs {
            let path = r.stats.stream(s.ssrc);
            let pts: Vec<String> = s
                .payload_types
                .iter()
                .map(|(pt, n)| format!("PT {pt} x{n}"))
                .collect();
            write!(
                out,
                "  ssrc {}: {} packets ({}), {} to {}, lost {} of {} ({:.1} %), {} duplicate, {} reordered",
                hex(s.ssrc),
                s.packets,
                pts.join(", "),
                secs(s.first_ns),
                secs(s.last_ns),
                s.lost,
                s.expected,
                loss_percent(s.lost, s.expected),
                s.duplicates,
                s.reordered,
            )?;
            if let Some(p) = path {
                write!(out, ", jitter {:.1} ms", p.jitter_ms)?;
                if p.dropped_payload_type > 0 {
                    write!(
                        out,
                        ", {} with a PT not negotiated (dropped)",
                        p.dropped_payload_type
                    )?;
                }
                if p.undecoded > 0 {
                    write!(out, ", {} not decodable", p.undecoded)?;
                }
                if p.ignored_events > 0 {
                    write!(out, ", {} non-DTMF events", p.ignored_events)?;
                }
            }
            writeln!(out)?;
        }
        if stream.non_rtp > 0 {
            writeln!(
                out,
                "  {} datagrams of the flow are not RTP",
                stream.non_rtp
            )?;
        }
        if r.digits.is_empty() {
            writeln!(out, "  digits: none")?;
        } else {
            writeln!(out, "  digits: {}", digit_string(r))?;
            for d in &r.digits {
                let carrier = match d.ssrc {
                    Some(ssrc) => format!("ssrc {}", hex(ssrc)),
                    None => "SIP INFO".to_string(),
                };
                writeln!(
                    out,
                    "    {:>10}  {}  {:<8} {carrier}",
                    secs(d.at_ns),
                    d.digit.as_char(),
                    d.method.as_str()
                )?;
            }
        }
    }
    if let Some(note) = left_out(capture, replays) {
        writeln!(out)?;
        writeln!(out, "left out: {note}")?;
    }
    if let Some(e) = &capture.error {
        writeln!(out)?;
        writeln!(out, "incomplete: {e}")?;
    }
    Ok(())
}

/// One key press (jsonl `"type":"digit"`).
#[derive(serde::Serialize)]
struct DigitLine<'a> {
    r#type: &'static str,
    stream: &'a str,
    ssrc: Option<String>,
    digit: String,
    method: &'static str,
    at_ms: u64,
    duration_ms: Option<u64>,
}

/// One stream (jsonl `"type":"stream"`).
#[derive(serde::Serialize)]
struct StreamLine {
    r#type: &'static str,
    index: usize,
    stream: String,
    src: String,
    dst: String,
    discovery: &'static str,
    call_id: Option<String>,
    payload_types: Vec<PayloadTypeLine>,
    codecs: Vec<String>,
    telephone_event: Option<TelephoneEventLine>,
    first_ms: u64,
    last_ms: u64,
    packets: u64,
    non_rtp: u64,
    dropped_source: u64,
    sip_info: usize,
    ssrcs: Vec<SsrcLine>,
    digits: String,
}

#[derive(serde::Serialize)]
struct PayloadTypeLine {
    pt: u8,
    encoding: String,
    clock_rate: u32,
    origin: &'static str,
}

#[derive(serde::Serialize)]
struct TelephoneEventLine {
    pt: u8,
    clock_rate: u32,
}

#[derive(serde::Serialize)]
struct SsrcLine {
    ssrc: String,
    packets: u64,
    expected: u64,
    lost: u64,
    loss_percent: f64,
    duplicates: u64,
    reordered: u64,
    late: u64,
    jitter_ms: Option<f64>,
    payload_types: BTreeMap<u8, u64>,
    dropped_payload_type: u64,
    undecoded: u64,
    event_packets: u64,
    event_end_repeats: u64,
    ignored_events: u64,
}

/// The whole capture (jsonl `"type":"capture"`, last).
#[derive(serde::Serialize)]
struct CaptureLine {
    r#type: &'static str,
    file: String,
    format: Option<&'static str>,
    frames: u64,
    udp: u64,
    tcp: u64,
    sip_messages: u64,
    streams: usize,
    complete: bool,
    error: Option<String>,
    /// Present only when bounds left something out (a hostile or enormous capture).
    #[serde(skip_serializing_if = "Option::is_none")]
    left_out: Option<String>,
}

fn write_line(out: &mut impl Write, line: &impl serde::Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    writeln!(out)
}

fn write_jsonl(
    out: &mut impl Write,
    file: &Path,
    capture: &Capture,
    replays: &[StreamReplay],
) -> std::io::Result<()> {
    for (n, (stream, r)) in capture.streams.iter().zip(replays).enumerate() {
        let name = stream.name();
        for d in &r.digits {
            write_line(
                out,
                &DigitLine {
                    r#type: "digit",
                    stream: &name,
                    ssrc: d.ssrc.map(hex),
                    digit: d.digit.as_char().to_string(),
                    method: d.method.as_str(),
                    at_ms: ms(d.at_ns),
                    duration_ms: d.duration.map(|x| x.as_millis() as u64),
                },
            )?;
        }
        write_line(out, &stream_line(n + 1, stream, r))?;
    }
    let c = &capture.counts;
    write_line(
        out,
        &CaptureLine {
            r#type: "capture",
            file: file.display().to_string(),
            format: capture.format.map(|f| f.as_str()),
            frames: c.frames,
            udp: c.udp,
            tcp: c.tcp,
            sip_messages: capture.sip.messages,
            streams: capture.streams.len(),
            complete: capture.error.is_none(),
            error: capture.error.as_ref().map(|e| e.to_string()),
            left_out: left_out(capture, replays),
        },
    )
}

fn stream_line(index: usize, stream: &Stream, r: &StreamReplay) -> StreamLine {
    let call_id = match &stream.discovery {
        Discovery::Sdp { call_id } | Discovery::SipInfoOnly { call_id } => Some(call_id.clone()),
        Discovery::Heuristic => None,
    };
    let ssrcs = stream
        .ssrcs
        .iter()
        .map(|s| {
            let p = r.stats.stream(s.ssrc);
            SsrcLine {
                ssrc: hex(s.ssrc),
                packets: s.packets,
                expected: s.expected,
                lost: s.lost,
                loss_percent: loss_percent(s.lost, s.expected),
                duplicates: s.duplicates,
                reordered: s.reordered,
                late: p.map_or(0, |p| p.late),
                jitter_ms: p.map(|p| (p.jitter_ms * 100.0).round() / 100.0),
                payload_types: s.payload_types.iter().copied().collect(),
                dropped_payload_type: p.map_or(0, |p| p.dropped_payload_type),
                undecoded: p.map_or(0, |p| p.undecoded),
                event_packets: p.map_or(0, |p| p.event_packets),
                event_end_repeats: p.map_or(0, |p| p.event_end_repeats),
                ignored_events: p.map_or(0, |p| p.ignored_events),
            }
        })
        .collect();
    let last_ns = stream
        .ssrcs
        .iter()
        .map(|s| s.last_ns)
        .max()
        .unwrap_or(stream.first_ns);
    StreamLine {
        r#type: "stream",
        index,
        stream: stream.name(),
        src: stream.src.to_string(),
        dst: stream.dst.to_string(),
        discovery: stream.discovery.as_str(),
        call_id,
        payload_types: stream
            .payload_types
            .iter()
            .map(|p| PayloadTypeLine {
                pt: p.pt,
                encoding: p.encoding.to_string(),
                clock_rate: p.clock_rate,
                origin: p.origin.as_str(),
            })
            .collect(),
        codecs: codecs(stream),
        telephone_event: stream
            .telephone_event()
            .map(|(pt, clock_rate)| TelephoneEventLine { pt, clock_rate }),
        first_ms: ms(stream.first_ns),
        last_ms: ms(last_ns),
        packets: stream.packets,
        non_rtp: stream.non_rtp,
        dropped_source: r.stats.dropped_source,
        sip_info: stream.info.len(),
        ssrcs,
        digits: digit_string(r),
    }
}
