//! `callverify dtmf detect|generate` as a user runs them: the real recordings of
//! `../shared/fixtures/real` (WAV and raw) decode to their expected digits, generated tones
//! round-trip with their timing, and bad input exits 2 with a message, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "callverify-dtmf-cli-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
