//! Replays of real captures made by others (../shared/fixtures/real, read in place, never
//! copied; MANIFEST.md and expected.json there) and of the pcaps Debian's `sip-tester`
//! installs: every stream must give exactly its expected digits, with the expected method.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

/// `(src, dst)` → digits with their SSRC (hex, or `info` for SIP INFO) and method.
type Got = BTreeMap<(String, String), Vec<(String, char, &'static str)>>;

/// `$CALLVERIFY_SHARED/fixtures/real`, else `../shared/fixtures/real` beside the repository.
fn shared_real() -> PathBuf {
    std::env::var_os("CALLVERIFY_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
        .join("fixtures/real")
}

/// Scans and replays `bytes` fed in pieces of `piece` bytes, as the CLI reads a file.
fn replay_in_pieces(bytes: &[u8], piece: usize) -> (capture::Capture, Vec<String>) {
    let mut scanner = capture::Scanner::new();
    bytes.chunks(piece).for_each(|p| scanner.push(p));
    let capture = scanner.finish();
    let mut replay = capture::replay::Replay::new(&capture, Instant::now());
    bytes.chunks(piece).for_each(|p| replay.push(p));
    let digits = replay
        .finish()
        .iter()
        .map(|r| {
            let d: Vec<String> = r
                .digits
                .iter()
                .map(|d| format!("{}{}@{}", d.digit.as_char(), d.method.as_str(), d.at_ns))
                .collect();
            format!("{} {:?}", d.join(","), r.stats)
        })
        .collect();
    (capture, digits)
}

fn replay(path: &Path) -> (capture::Capture, Got) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let capture = capture::read(&bytes);
    let replays = capture::replay::replay(&capture, &bytes, Instant::now());
    let mut got = Got::new();
    for (stream, r) in capture.streams.iter().zip(&replays) {
        let entry = got
            .entry((stream.src.to_string(), stream.dst.to_string()))
            .or_default();
        for d in &r.digits {
            let ssrc = d.ssrc.map_or("info".to_string(), |s| format!("0x{s:08x}"));
            entry.push((ssrc, d.digit.as_char(), d.method.as_str()));
        }
    }
    (capture, got)
}

fn digits_of(got: &Got, src: &str, dst: &str, ssrc: &str) -> String {
    got.get(&(src.to_string(), dst.to_string()))
        .map(|v| {
            v.iter()
                .filter(|(s, ..)| s == ssrc)
                .map(|(_, d, _)| *d)
                .collect()
        })
        .unwrap_or_default()
}

/// The digits expected on one stream of expected.json: RFC 4733 events (fax and NSE events,
/// written `[ev32]`, are not keys), or the in-band tones of a file whose method is in-band.
fn expected_stream_digits(file: &Value, stream: &Value) -> String {
    if let Some(events) = stream["event_digits"].as_str() {
        return events.split('[').next().unwrap_or("").to_string();
    }
    if file["method"] == "inband" {
        return file["expected_digits"].as_str().unwrap_or("").to_string();
    }
    String::new()
}

#[test]
fn every_real_capture_replays_to_its_expected_digits() {
    let dir = shared_real();
    let expected: Value = serde_json::from_slice(
        &std::fs::read(dir.join("expected.json")).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (is ../shared beside the repository?)",
                dir.display()
            )
        }),
    )
    .expect("expected.json is JSON");
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in expected["files"].as_array().expect("files") {
        let name = file["file"].as_str().expect("file name");
        if !(name.ends_with(".pcap") || name.ends_with(".cap")) {
            continue; // WAV and raw files go through `dtmf detect`.
        }
        let (capture, got) = replay(&dir.join(name));
        assert!(capture.error.is_none(), "{name}: {:?}", capture.error);
        let single_method = match file["method"].as_str() {
            Some("rfc2833") => Some("rfc4733"),
            Some("inband") => Some("inband"),
            Some("sip-info") => Some("sip_info"),
            _ => None,
        };
        // Every expected stream gives its digits.
        let mut accounted = 0;
        for stream in file["rtp_streams"].as_array().expect("rtp_streams") {
            let (src, dst, ssrc) = (
                stream["src"].as_str().unwrap(),
                stream["dst"].as_str().unwrap(),
                stream["ssrc"].as_str().unwrap(),
            );
            let want = expected_stream_digits(file, stream);
            let have = digits_of(&got, src, dst, ssrc);
            accounted += have.len();
            if want != have {
                failures.push(format!(
                    "{name}: {src}->{dst} ssrc {ssrc}: expected {want:?}, got {have:?}"
                ));
            }
        }
        // SIP INFO key presses, in order, wherever they were reported.
        let want_info: String = file["sip_info"]
            .as_array()
            .map(|v| v.iter().filter_map(|i| i["signal"].as_str()).collect())
            .unwrap_or_default();
        let have_info: String = got
            .values()
            .flatten()
            .filter(|(s, ..)| s == "info")
            .map(|(_, d, _)| *d)
            .collect();
        accounted += have_info.len();
        if want_info != have_info {
            failures.push(format!(
                "{name}: SIP INFO expected {want_info:?}, got {have_info:?}"
            ));
        }
        // No digit anywhere else, and the method is the one the file uses.
        let total: usize = got.values().map(Vec::len).sum();
        if total != accounted {
            failures.push(format!(
                "{name}: {} unexpected digits: {got:?}",
                total - accounted
            ));
        }
        if let Some(method) = single_method {
            for (flow, digits) in &got {
                for (_, d, m) in digits {
                    if *m != method {
                        failures.push(format!("{name}: {flow:?} {d} by {m}, expected {method}"));
                    }
                }
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 13,
        "only {checked} captures found in {}",
        dir.display()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The RFC 4733 pcaps of Debian's sip-tester (SIPp's `play_pcap_audio` samples): one key each,
/// on a stream with no SDP, PT 101; and its G.711 A-law sample with no key at all.
#[test]
fn sip_tester_pcaps() {
    let dir = Path::new("/usr/share/sip-tester");
    if !dir.is_dir() {
        eprintln!(
            "skipped: {} not installed (Debian package sip-tester)",
            dir.display()
        );
        return;
    }
    let keys = [
        ("0", '0'),
        ("1", '1'),
        ("2", '2'),
        ("3", '3'),
        ("4", '4'),
        ("5", '5'),
        ("6", '6'),
        ("7", '7'),
        ("8", '8'),
        ("9", '9'),
        ("pound", '#'),
        ("star", '*'),
    ];
    for (name, key) in keys {
        let path = dir.join(format!("dtmf_2833_{name}.pcap"));
        let (capture, got) = replay(&path);
        assert!(capture.error.is_none(), "{name}: {:?}", capture.error);
        let all: Vec<_> = got.values().flatten().collect();
        assert_eq!(all.len(), 1, "{name}: {got:?}");
        assert_eq!((all[0].1, all[0].2), (key, "rfc4733"), "{name}");
    }
    let (capture, got) = replay(&dir.join("g711a.pcap"));
    assert!(capture.error.is_none());
    assert_eq!(capture.streams.len(), 1);
    assert!(got.values().all(Vec::is_empty), "{got:?}");
}

#[test]
fn pieces_of_any_size_read_like_the_whole_file() {
    let dir = shared_real();
    for name in [
        "asterisk-ulaw-2013785496.pcap",
        "wireshark-wiki-DTMFsipinfo.pcap",
        "restcomm-inband-alaw-dtmf_4_digits_slow.pcap",
        "wireshark-wiki-FAX-Call-t38-CA-TDM-SIP-FB-1.pcap",
    ] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let (whole, want) = replay_in_pieces(&bytes, bytes.len());
        assert!(!whole.streams.is_empty(), "{name}");
        for piece in [1, 13, 4096] {
            let (capture, got) = replay_in_pieces(&bytes, piece);
            assert_eq!(capture.counts, whole.counts, "{name} in {piece}");
            assert_eq!(capture.error, whole.error, "{name} in {piece}");
            assert_eq!(capture.sip.media, whole.sip.media, "{name} in {piece}");
            assert_eq!(got, want, "{name} in {piece}");
        }
    }
}
