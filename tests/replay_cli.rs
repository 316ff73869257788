//! `callverify replay` as a user runs it: text and jsonl output over real captures, SIP INFO,
//! and damaged input (a real capture cut short, garbage, a missing file) exiting 2 with a
//! message and whatever could be read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common_capture;

fn callverify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callverify"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `../shared/fixtures/real` next to the checkout (where CI has it), or
/// `$CALLVERIFY_SHARED/fixtures/real`.
fn real(name: &str) -> PathBuf {
    let shared = std::env::var_os("CALLVERIFY_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let path = shared.join("fixtures/real").join(name);
    assert!(
        path.is_file(),
        "{} is missing: the real fixtures are needed",
        path.display()
    );
    path
}

fn jsonl(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn of_type<'a>(lines: &'a [Value], t: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == t).collect()
}

#[test]
fn text_lists_stream_payload_types_loss_and_digits() {
    let o = callverify(&[
        "replay",
        real("asterisk-ulaw-2013785496.pcap").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("stream 1: 10.0.0.51:4000 -> 10.0.0.45:10866"),
        "{text}"
    );
    assert!(text.contains("0 PCMU/8000 (static)"), "{text}");
    assert!(
        text.contains("101 telephone-event/8000 (guessed)"),
        "{text}"
    );
    assert!(text.contains("ssrc 0x34d01d16: 974 packets"), "{text}");
    assert!(text.contains("lost 0 of 974 (0.0 %)"), "{text}");
    assert!(text.contains("digits: 2013785496"), "{text}");
    // The in-band tails of each key are the same key presses: reported once, by RFC 4733.
    assert_eq!(text.matches(" rfc4733 ").count(), 10, "{text}");
    assert!(!text.contains("inband"), "{text}");
}

#[test]
fn jsonl_digits_and_stream_summary() {
    let o = callverify(&[
        "replay",
        "--format",
        "jsonl",
        real("restcomm-cisco-spa-525G2-zendesk34432.pcap")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines = jsonl(&o);
    let digits = of_type(&lines, "digit");
    let keys: String = digits
        .iter()
        .map(|d| d["digit"].as_str().unwrap())
        .collect();
    assert_eq!(keys, "6688#6688#");
    for d in &digits {
        assert_eq!(d["stream"], "79.131.109.245:16402->10.0.0.8:65048");
        assert_eq!(d["ssrc"], "0xa6edac97");
        assert_eq!(d["method"], "rfc4733");
    }
    // MANIFEST: first event at 2.522 s from the first packet.
    assert!(
        (2515..=2530).contains(&digits[0]["at_ms"].as_u64().unwrap()),
        "{:?}",
        digits[0]
    );
    let streams = of_type(&lines, "stream");
    assert_eq!(streams.len(), 1);
    let s = streams[0];
    assert_eq!(s["discovery"], "heuristic");
    assert_eq!(s["codecs"], serde_json::json!(["PCMU"]));
    assert_eq!(
        s["telephone_event"],
        serde_json::json!({"pt": 101, "clock_rate": 8000})
    );
    assert_eq!(s["packets"], 632);
    assert_eq!(
        s["ssrcs"][0]["payload_types"],
        serde_json::json!({"0": 481, "101": 151})
    );
    assert_eq!(s["digits"], "6688#6688#");
    let capture = of_type(&lines, "capture");
    assert_eq!(capture.len(), 1);
    assert_eq!(capture[0]["complete"], true);
    assert_eq!(capture[0]["frames"], 632);
    // The capture line is the last.
    assert_eq!(lines.last().unwrap()["type"], "capture");
}

#[test]
fn sip_info_digits_are_reported_with_their_method() {
    let o = callverify(&[
        "replay",
        "--format",
        "jsonl",
        real("wireshark-wiki-DTMFsipinfo.pcap").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines = jsonl(&o);
    let digits = of_type(&lines, "digit");
    let keys: String = digits
        .iter()
        .map(|d| d["digit"].as_str().unwrap())
        .collect();
    assert_eq!(keys, "1342");
    for d in &digits {
        assert_eq!(d["method"], "sip_info");
        assert_eq!(d["ssrc"], Value::Null);
        assert_eq!(d["duration_ms"], 180);
    }
    assert!((7020..=7030).contains(&digits[0]["at_ms"].as_u64().unwrap()));
    let stream = of_type(&lines, "stream")[0];
    assert_eq!(stream["discovery"], "sip_info");
    assert_eq!(of_type(&lines, "capture")[0]["sip_messages"], 32);
}

#[test]
fn sdp_negotiated_payload_types_are_used() {
    let o = callverify(&[
        "replay",
        real("wireshark-wiki-FAX-Call-t38-CA-TDM-SIP-FB-1.pcap")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    // telephone-event on 102 from SDP (not 101), fax events are not keys, PT 100 (NSE) and
    // CN are not negotiated.
    assert!(text.contains("102 telephone-event/8000 (sdp)"), "{text}");
    assert!(text.contains("from SDP, Call-ID"), "{text}");
    assert!(text.contains("not negotiated (dropped)"), "{text}");
    assert!(
        !text.contains("digits: ") || text.matches("digits: none").count() == 2,
        "{text}"
    );
}

#[test]
fn truncated_capture_exits_2_with_what_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let whole = std::fs::read(real("asterisk-ulaw-2013785496.pcap")).unwrap();
    let cut = dir.path().join("cut.pcap");
    // Cut in the middle of a record, after the first five key presses (about 12 s of 19).
    std::fs::write(&cut, &whole[..whole.len() * 64 / 100 + 7]).unwrap();

    let o = callverify(&["replay", cut.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("digits: 20137"), "{text}");
    assert!(text.contains("incomplete: capture is truncated"), "{text}");

    let o = callverify(&["replay", "--format", "jsonl", cut.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let lines = jsonl(&o);
    let keys: String = of_type(&lines, "digit")
        .iter()
        .map(|d| d["digit"].as_str().unwrap())
        .collect();
    assert!(
        keys.starts_with("20137") && "2013785496".starts_with(&keys),
        "{keys}"
    );
    let capture = lines.last().unwrap();
    assert_eq!(capture["complete"], false);
    assert!(capture["error"].as_str().unwrap().contains("truncated"));
}

#[test]
fn garbage_and_missing_files_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pcap");
    std::fs::write(&garbage, b"this is not a capture at all, just some text\n").unwrap();
    let o = callverify(&["replay", garbage.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not a pcap or pcapng capture"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty());

    let empty = dir.path().join("empty.pcap");
    std::fs::write(&empty, b"").unwrap();
    let o = callverify(&["replay", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));

    let o = callverify(&["replay", dir.path().join("missing.pcap").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read"), "{}", stderr(&o));
}

#[test]
fn help_documents_the_jsonl_schema() {
    let o = callverify(&["replay", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = stdout(&o);
    for key in [
        "\"type\":\"digit\"",
        "\"type\":\"stream\"",
        "\"type\":\"capture\"",
        "at_ms",
        "sip_info",
    ] {
        assert!(help.contains(key), "{key} missing from --help:\n{help}");
    }
}

#[test]
fn a_long_capture_is_replayed_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.pcap");
    let long = dir.path().join("long.pcap");
    common_capture::write_calls(&short, 2, 6);
    // 400 calls of 6 s one after the other: 120,000 packets, 40 minutes, 25 MB.
    let packets = common_capture::write_calls(&long, 400, 6);
    assert_eq!(packets, 120_000);

    let (o, short_kb) =
        common_capture::callverify_peak(&["replay", "--format", "jsonl", short.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (o, long_kb) =
        common_capture::callverify_peak(&["replay", "--format", "jsonl", long.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines = jsonl(&o);
    let streams = of_type(&lines, "stream");
    assert_eq!(streams.len(), 400);
    assert!(
        streams
            .iter()
            .all(|s| s["digits"] == "#" && s["packets"] == 300)
    );
    assert_eq!(of_type(&lines, "digit").len(), 400);
    // What 25 MB of capture adds to the peak: small buffers and 400 streams' summaries, not
    // the capture (the rest is the binary itself, larger in a debug build).
    assert!(
        long_kb <= short_kb + 6 * 1024,
        "40 minutes peak at {long_kb} kB, 12 s at {short_kb} kB"
    );
}
