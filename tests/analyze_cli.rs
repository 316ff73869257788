//! `callverify analyze` as a user runs it: a PNG of sane size from a WAV file and from a
//! capture, and clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common_capture;

fn callverify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callverify"))
        .args(args)
        .output()
        .expect("the binary runs")
}

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

/// Width and height from a PNG's IHDR chunk, after checking the signature.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (be(16), be(20))
}

fn analyze(input: &Path, extra: &[&str]) -> (Output, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plot.png");
    let mut args = vec![
        "analyze",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = callverify(&args);
    let png = std::fs::read(&out).unwrap_or_default();
    (o, png)
}

#[test]
fn wav_gives_a_png_with_the_digits() {
    let (o, png) = analyze(&real("restcomm-dtmfs-1-9.wav"), &[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("digits 12345#6789 (inband)"));
    assert_eq!(png_size(&png), (1600, 900));
    // A drawn plot, not an empty canvas, and not absurdly large.
    assert!(
        (20_000..5_000_000).contains(&png.len()),
        "{} bytes",
        png.len()
    );
}

#[test]
fn capture_gives_a_png_of_the_chosen_stream() {
    let (o, png) = analyze(
        &real("restcomm-inband-alaw-dtmf_4_digits_slow.pcap"),
        &["--stream", "1", "--width", "1000", "--height", "600"],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("stream 1: 192.168.1.60:63608->54.152.43.232:55920"),
        "{out}"
    );
    assert!(out.contains("digits 1234 (inband)"), "{out}");
    assert_eq!(png_size(&png), (1000, 600));
    assert!(png.len() > 10_000);

    // The default is the first stream with G.711 audio; RFC 4733 digits are marked too.
    let (o, png) = analyze(&real("asterisk-ulaw-2013785496.pcap"), &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("digits 2013785496 (rfc4733)"));
    assert_eq!(png_size(&png), (1600, 900));
}

#[test]
fn bad_input_exits_2() {
    let (o, png) = analyze(&real("sipp-dtmf_2833_pound.pcap"), &["--stream", "9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no stream 9 (the capture has 1)"));
    assert!(png.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("noise.wav");
    std::fs::write(&garbage, b"RIFF....garbage").unwrap();
    let (o, png) = analyze(&garbage, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!o.stderr.is_empty());
    assert!(png.is_empty());

    let (o, _) = analyze(&real("restcomm-dtmfs-1-9.wav"), &["--width", "5"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn long_inputs_are_drawn_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("plot.png");
    let run = |input: &Path| {
        let (o, kb) = common_capture::callverify_peak(&[
            "analyze",
            input.to_str().unwrap(),
            "-o",
            png.to_str().unwrap(),
        ]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(png_size(&std::fs::read(&png).unwrap()), (1600, 900));
        (String::from_utf8_lossy(&o.stdout).into_owned(), kb)
    };
    let short_wav = dir.path().join("short.wav");
    let hour_wav = dir.path().join("hour.wav");
    common_capture::write_wav(&short_wav, 20);
    common_capture::write_wav(&hour_wav, 3600);
    let (out, short_kb) = run(&short_wav);
    assert!(out.contains("digits ## (inband)"), "{out}");
    let (out, hour_kb) = run(&hour_wav);
    // 360 keys, the first 2000 of any file are drawn and listed.
    assert!(
        out.contains(&format!("digits {} (inband)", "#".repeat(360))),
        "{out}"
    );
    assert!(
        hour_kb <= short_kb + 8 * 1024,
        "an hour peaks at {hour_kb} kB, 20 s at {short_kb} kB"
    );

    // One stream of a long capture: its audio laid out as the file is read.
    let long = dir.path().join("long.pcap");
    common_capture::write_calls(&long, 1, 2400);
    let (out, long_kb) = run(&long);
    assert!(out.contains("digits # (inband)"), "{out}");
    assert!(
        long_kb <= short_kb + 8 * 1024,
        "40 minutes of capture peak at {long_kb} kB, 20 s of WAV at {short_kb} kB"
    );
}
