//! Talk-off: speech, music and tone sweeps must never produce a `#` (a false `#` approves a
//! sign-in nobody made), and should produce no other digit either.
//!
//! Real recordings come from Debian packages that `scripts/test` installs:
//! `asterisk-core-sounds-{en,fr,es}-wav` (1,600 prompts by professional voices, CC-BY-SA) and
//! `asterisk-moh-opsound-wav` (music on hold, CC-BY-SA); synthetic speech from `espeak-ng`.
//! A missing package fails the test: a talk-off test that silently tested nothing would be
//! worse than none.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Findings {
    audio_samples: usize,
    false_digits: Vec<String>,
}

impl Findings {
    fn new() -> Findings {
        Findings {
            audio_samples: 0,
            false_digits: Vec::new(),
        }
    }

    fn scan(&mut self, name: &str, samples: &[i16]) {
        self.audio_samples += samples.len();
        for codec in CODECS {
            for p in detect(&through(codec, samples)) {
                self.false_digits.push(format!(
                    "{name} ({codec:?}): {} at {} ms, {} ms long",
                    p.digit,
                    p.start / 8,
                    (p.end - p.start) / 8
                ));
            }
        }
    }

    fn assert_clean(&self, min_minutes: f64) {
        let minutes = self.audio_samples as f64 / 8000.0 / 60.0;
        assert!(
            minutes >= min_minutes,
            "only {minutes:.1} min of audio scanned"
        );
        let pounds: Vec<_> = self
            .false_digits
            .iter()
            .filter(|d| d.contains(": # at"))
            .collect();
        assert!(
            pounds.is_empty(),
            "false # in {minutes:.0} min of audio: {pounds:#?}"
        );
        assert!(
            self.false_digits.is_empty(),
            "false digits in {minutes:.0} min of audio: {:#?}",
            self.false_digits
        );
    }
}

fn wav_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (install the Debian package, see scripts/test)",
            dir.display()
        )
    });
    for entry in entries.flatten() {
        let path = entry.path();
        // The sounds folders hold symlinked aliases (en_US -> en); walk real folders only.
        if entry.file_type().map(|t| t.is_symlink()).unwrap_or(false) {
            continue;
        }
        if path.is_dir() {
            wav_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "wav") {
            out.push(path);
        }
    }
}

fn read_8k_mono(path: &Path) -> Option<Vec<i16>> {
    let reader = hound::WavReader::open(path).ok()?;
    let spec = reader.spec();
    (spec.sample_rate == 8000 && spec.bits_per_sample == 16 && spec.channels == 1).then(|| {
        reader
            .into_samples::<i16>()
            .filter_map(Result::ok)
            .collect()
    })
}

fn scan_folder(dir: &str, min_files: usize, min_minutes: f64) {
    let mut files = Vec::new();
    wav_files(Path::new(dir), &mut files);
    files.sort();
    assert!(
        files.len() >= min_files,
        "{dir}: {} WAV files, expected at least {min_files}",
        files.len()
    );
    let mut findings = Findings::new();
    for f in &files {
        if let Some(samples) = read_8k_mono(f) {
            findings.scan(&f.display().to_string(), &samples);
        }
    }
    findings.assert_clean(min_minutes);
}

#[test]
fn recorded_speech_in_three_languages_produces_no_digit() {
    scan_folder("/usr/share/asterisk/sounds", 1500, 60.0);
}

#[test]
fn music_on_hold_produces_no_digit() {
    scan_folder("/usr/share/asterisk/moh", 5, 15.0);
}

#[test]
fn synthetic_speech_produces_no_digit() {
    let dir = std::env::temp_dir().join(format!("callverify-talkoff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = "Hello, this is the sign-in verification service. If you are signing in, press the pound key. \
                If you did not try to sign in, press zero then pound. Nine eight seven six five four three two one. \
                The quick brown fox jumps over the lazy dog while the band plays on.";
    let mut findings = Findings::new();
    for voice in [
        "en", "en-us", "en+f3", "en+m7", "fr", "de", "es", "it", "pt", "nl", "sv", "hi", "zh",
    ] {
        for pitch in ["30", "50", "80", "99"] {
            let wav = dir.join(format!("{voice}-{pitch}.wav"));
            let raw = dir.join(format!("{voice}-{pitch}.raw"));
            let status = Command::new("espeak-ng")
                .args(["-v", voice, "-p", pitch, "-w"])
                .arg(&wav)
                .arg(text)
                .status()
                .expect("espeak-ng is installed (scripts/test)");
            assert!(status.success(), "espeak-ng {voice}");
            let status = Command::new("sox")
                .arg(&wav)
                .args([
                    "-r", "8000", "-c", "1", "-b", "16", "-e", "signed", "-t", "raw",
                ])
                .arg(&raw)
                .status()
                .expect("sox is installed (scripts/test)");
            assert!(status.success(), "sox {voice}");
            let bytes = std::fs::read(&raw).unwrap();
            let samples: Vec<i16> = bytes
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            findings.scan(&format!("espeak-ng {voice} pitch {pitch}"), &samples);
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    findings.assert_clean(5.0);
}

/// A tone gliding log-linearly from `from` to `to` Hz at `octaves_per_s`.
fn glide(from: f64, to: f64, octaves_per_s: f64, amplitude: f64) -> Vec<f64> {
    let seconds = (to / from).log2().abs() / octaves_per_s;
    let n = (seconds * 8000.0) as usize;
    let mut phase = 0.0f64;
    (0..n)
        .map(|i| {
            let f = from * (to / from).powf(i as f64 / n as f64);
            phase += std::f64::consts::TAU * f / 8000.0;
            amplitude * phase.sin()
        })
        .collect()
}

fn to_i16(x: &[f64]) -> Vec<i16> {
    x.iter()
        .map(|v| v.round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

#[test]
fn tone_sweeps_produce_no_digit() {
    let mut findings = Findings::new();
    for rate in [0.25, 0.5, 1.0, 2.0, 4.0, 8.0] {
        for (a, b) in [(300.0f64, 3400.0f64), (3400.0, 300.0)] {
            findings.scan(
                &format!("sweep {a}-{b} Hz at {rate} oct/s"),
                &to_i16(&glide(a, b, rate, 8000.0)),
            );
        }
    }
    // Two tones sliding through the low and the high group at once (two voices or
    // instruments gliding), locked to a key's frequency ratio or not, pass through key pairs.
    // Any two tones that stay within the ±2 % acceptance of a pair for 25 ms are, by Q.24's
    // own terms, a valid DTMF signal; at 2 octaves per second and faster a glide leaves the
    // acceptance sooner, or drifts measurably while in it, and must be rejected.
    for rate in [2.0, 4.0, 8.0] {
        for (a, b) in [(300.0f64, 3400.0f64), (3400.0, 300.0)] {
            let low = glide(a.clamp(600.0, 1100.0), b.clamp(600.0, 1100.0), rate, 6000.0);
            let high = glide(
                b.clamp(1100.0, 1800.0),
                a.clamp(1100.0, 1800.0),
                rate * 0.8,
                6000.0,
            );
            let both: Vec<f64> = low
                .iter()
                .zip(high.iter().cycle())
                .map(|(l, h)| l + h)
                .collect();
            findings.scan(&format!("crossing glides at {rate} oct/s"), &to_i16(&both));
        }
    }
    for rate in [2.0, 4.0, 8.0] {
        for (from, to) in [(600.0, 1000.0), (1000.0, 600.0)] {
            for ratio in [
                1209.0 / 697.0,
                1336.0 / 770.0,
                1477.0 / 852.0,
                1477.0 / 941.0,
                1633.0 / 941.0,
            ] {
                let low = glide(from, to, rate, 6000.0);
                let high = glide(from * ratio, to * ratio, rate, 6000.0);
                let both: Vec<f64> = low.iter().zip(&high).map(|(l, h)| l + h).collect();
                findings.scan(
                    &format!("locked glides {rate} oct/s ratio {ratio:.3}"),
                    &to_i16(&both),
                );
            }
        }
    }
    findings.assert_clean(0.3);
}
