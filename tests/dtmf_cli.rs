//! `callverify dtmf detect|generate` as a user runs them: the real recordings of
//! `../shared/fixtures/real` (WAV and raw) decode to their expected digits, generated tones
//! round-trip with their timing, an hour of audio streamed through a pipe is decoded in
//! bounded memory, and bad input exits 2 with a message, never a panic.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn callverify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callverify"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The shared real-world fixtures: `$CALLVERIFY_SHARED/fixtures/real`, else `../shared` next
/// to the checkout (where CI has it).
fn real_fixtures() -> PathBuf {
    let shared = std::env::var_os("CALLVERIFY_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let dir = shared.join("fixtures/real");
    assert!(
        dir.join("expected.json").is_file(),
        "{} is missing: the real fixtures are needed",
        dir.display()
    );
    dir
}

#[test]
fn real_recordings_decode_to_their_expected_digits() {
    let dir = real_fixtures();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap())
            .expect("expected.json parses");
    let mut checked = 0;
    for file in expected["files"].as_array().expect("files") {
        let format = file["format"].as_str().unwrap_or_default();
        if format != "wav" && format != "raw" {
            continue; // captures go through `replay`
        }
        let name = file["file"].as_str().unwrap();
        let want = file["expected_digits"].as_str().unwrap();
        let out = callverify(&["dtmf", "detect", dir.join(name).to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout(&out).trim(), want, "{name}");
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} recordings checked");
}

#[test]
fn jsonl_gives_the_timing_of_each_press() {
    let dir = real_fixtures();
    // shtoom's test file: 3@1.00 1@1.22 4@1.43 1@1.65 #@1.86 s, 110-130 ms each (MANIFEST.md).
    let out = callverify(&[
        "dtmf",
        "detect",
        "--format",
        "jsonl",
        dir.join("shtoom-dtmftestfile.raw").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let presses: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let keys: String = presses
        .iter()
        .map(|p| p["digit"].as_str().unwrap())
        .collect();
    assert_eq!(keys, "3141#");
    for (p, start) in presses.iter().zip([1000, 1220, 1430, 1650, 1860]) {
        let (s, e, r) = (
            p["start_ms"].as_u64().unwrap(),
            p["end_ms"].as_u64().unwrap(),
            p["report_ms"].as_u64().unwrap(),
        );
        assert!(s.abs_diff(start) <= 15, "{p}");
        assert!((100..=140).contains(&(e - s)), "{p}");
        assert!(r > s && r - s <= 35, "{p}");
    }
}

#[test]
fn generated_tones_round_trip_with_their_timing() {
    let dir = tempdir();
    let wav = dir.join("keys.wav");
    let out = callverify(&[
        "dtmf",
        "generate",
        "159#,0",
        "-o",
        wav.to_str().unwrap(),
        "--level-dbm0",
        "-25",
        "--twist-db",
        "4",
        "--on-ms",
        "60",
        "--off-ms",
        "80",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = callverify(&["dtmf", "detect", "--format", "jsonl", wav.to_str().unwrap()]);
    let presses: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let keys: String = presses
        .iter()
        .map(|p| p["digit"].as_str().unwrap())
        .collect();
    assert_eq!(keys, "159#0");
    // Tones at 80, 220, 360, 500 ms (60 on, 80 off), then a 1 s pause: 640 + 1000 = 1640 ms.
    for (p, start) in presses.iter().zip([80u64, 220, 360, 500, 1640]) {
        assert!(p["start_ms"].as_u64().unwrap().abs_diff(start) <= 3, "{p}");
        assert!(
            p["end_ms"].as_u64().unwrap().abs_diff(start + 60) <= 3,
            "{p}"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn unreadable_input_exits_2_with_a_message() {
    let dir = tempdir();
    let garbage = dir.join("garbage.wav");
    std::fs::write(&garbage, b"this is not audio at all").unwrap();
    let empty = dir.join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let unknown = dir.join("notes.txt");
    std::fs::write(&unknown, b"hello").unwrap();
    let missing = dir.join("missing.wav");
    for (path, says) in [
        (&garbage, "not a WAV"),
        (&empty, "not a WAV"),
        (&unknown, "--input-format"),
        (&missing, "cannot read"),
    ] {
        let out = callverify(&["dtmf", "detect", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{}: {err}", path.display());
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = callverify(&[
        "dtmf",
        "generate",
        "12x",
        "-o",
        dir.join("x.wav").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'x'"));
    std::fs::remove_dir_all(dir).ok();
}

/// Ten seconds of white noise (about -33 dBm0) with `5` and `#` at -10 dBm0, 16-bit 8 kHz.
fn block_with_keys() -> Vec<u8> {
    let mut samples = dtmf::generate(
        "5#,,,,,,,,",
        &dtmf::ToneSpec {
            on_ms: 100,
            off_ms: 100,
            ..dtmf::ToneSpec::default()
        },
    );
    samples.resize(80_000, 0);
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut bytes = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let noise = ((seed >> 53) as i16) - 1024;
        bytes.extend_from_slice(&s.saturating_add(noise).to_le_bytes());
    }
    bytes
}

/// A WAV header as streaming writers make it: sizes unknown (all ones).
fn streaming_wav_header() -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"RIFF\xff\xff\xff\xffWAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // PCM
    h.extend_from_slice(&1u16.to_le_bytes()); // mono
    h.extend_from_slice(&8000u32.to_le_bytes());
    h.extend_from_slice(&16_000u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data\xff\xff\xff\xff");
    h
}

/// A /proc/PID/status field, kB.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Pipes `blocks` ten-second blocks into `dtmf detect -`; returns the digits, the child's
/// peak resident set (VmHWM, read just before its input ends) and the largest anonymous
/// (heap and stack) resident memory seen while it read.
fn detect_through_a_pipe(blocks: usize) -> (String, u64, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_callverify"))
        .args(["dtmf", "detect", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let pid = child.id();
    let block = block_with_keys();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&streaming_wav_header()).unwrap();
    let mut anon = 0;
    for _ in 0..blocks {
        stdin.write_all(&block).unwrap();
        anon = anon.max(status_kb(pid, "RssAnon:").unwrap_or(0));
    }
    let hwm = status_kb(pid, "VmHWM:").expect("the child is alive while its input is open");
    drop(stdin);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
    (out.trim().to_string(), hwm, anon)
}

#[test]
fn an_hour_through_a_pipe_is_decoded_in_bounded_memory() {
    // 360 blocks of 10 s: one hour, 57.6 MB of samples, never a file.
    let (digits, hour_hwm, hour_anon) = detect_through_a_pipe(360);
    assert_eq!(digits, "5#".repeat(360));
    let (short, short_hwm, _) = detect_through_a_pipe(2);
    assert_eq!(short, "5#5#");
    // What the input's length adds to the peak (the rest is the binary's own pages, larger
    // in a debug build): a few buffers, not the recording.
    assert!(
        hour_hwm <= short_hwm + 6 * 1024,
        "an hour peaks at {hour_hwm} kB, 20 s at {short_hwm} kB"
    );
    assert!(hour_anon <= 16 * 1024, "{hour_anon} kB of heap and stacks");
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "callverify-dtmf-cli-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
