//! Replays of the captures this project made of real peers (fixtures/capture: sipp, baresip,
//! linphone on loopback; each `<name>.json` says what was sent and how we know, see
//! fixtures/capture/ground_truth.py): every stream gives exactly the expected digits, with
//! method, SSRC and time.

use std::path::Path;
use std::time::Instant;

use serde_json::Value;

/// How far a report may be from the time the ground truth gives (the in-band receiver reports
/// once certain, tens of ms into the tone), seconds.
const TIME_TOLERANCE_S: f64 = 0.1;

#[test]
fn own_captures_replay_to_their_ground_truth() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/capture");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/capture")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    for truth_path in entries {
        let truth: Value = serde_json::from_slice(&std::fs::read(&truth_path).unwrap()).unwrap();
        let name = truth["file"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(
            bytes.len() as u64,
            truth["bytes"].as_u64().unwrap(),
            "{name}"
        );
        let capture = capture::read(&bytes);
        assert!(capture.error.is_none(), "{name}: {:?}", capture.error);
        let replays = capture::replay::replay(&capture, &bytes, Instant::now());
        let expected = truth["expected"].as_array().unwrap();
        let with_digits: Vec<_> = capture
            .streams
            .iter()
            .zip(&replays)
            .filter(|(_, r)| !r.digits.is_empty())
            .collect();
        assert_eq!(
            with_digits.len(),
            expected.len(),
            "{name}: streams with digits"
        );
        for want in expected {
            let stream_name = want["stream"].as_str().unwrap();
            let (stream, r) = with_digits
                .iter()
                .find(|(s, _)| s.name() == stream_name)
                .unwrap_or_else(|| panic!("{name}: no stream {stream_name}"));
            assert_eq!(stream.discovery.as_str(), want["discovery"], "{name}");
            let digits = want["digits"].as_array().unwrap();
            assert_eq!(r.digits.len(), digits.len(), "{name}: {:?}", r.digits);
            for (got, want) in r.digits.iter().zip(digits) {
                assert_eq!(got.digit.as_char().to_string(), want["digit"], "{name}");
                assert_eq!(got.method.as_str(), want["method"], "{name}");
                let ssrc = got.ssrc.map(|s| format!("0x{s:08x}"));
                assert_eq!(ssrc.as_deref(), want["ssrc"].as_str(), "{name}");
                let at = got.at_ns as f64 / 1e9;
                let want_at = want["at_s"].as_f64().unwrap();
                assert!(
                    (at - want_at).abs() <= TIME_TOLERANCE_S,
                    "{name}: {} at {at:.3} s, expected {want_at:.3} s",
                    want["digit"]
                );
                if let Some(ms) = want["duration_ms"].as_u64() {
                    assert_eq!(got.duration.map(|d| d.as_millis() as u64), Some(ms));
                }
            }
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} fixtures in {}", dir.display());
}
