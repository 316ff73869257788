//! The committed prompt recordings: every language has every prompt, each is 8 kHz 16-bit mono
//! PCM, loads as a `Prompt`, and none of them sounds like a key press to the Goertzel receiver
//! (a prompt echoed back by the far end must not confirm a sign-in).

use std::path::PathBuf;

use media::{Codec, Prompt};

const NAMES: [&str; 8] = [
    "greeting",
    "pin",
    "challenge",
    "thanks",
    "fraud-ack",
    "goodbye",
    "no-input",
    "invalid",
];
const LANGUAGES: [&str; 4] = ["en", "es", "fr", "de"];

fn audio_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../audio")
}

#[test]
fn every_prompt_loads_and_never_talks_off() {
    for lang in LANGUAGES {
        for name in NAMES {
            let path = audio_dir().join(lang).join(format!("{name}.wav"));
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            // RIFF/WAVE, PCM (format tag 1), 1 channel, 8000 Hz, 16 bits.
            assert_eq!(&bytes[..4], b"RIFF", "{path:?}");
            assert_eq!(&bytes[8..12], b"WAVE", "{path:?}");
            assert_eq!(u16::from_le_bytes([bytes[20], bytes[21]]), 1, "{path:?}");
            assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 1, "{path:?}");
            assert_eq!(
                u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]),
                8000
            );
            assert_eq!(u16::from_le_bytes([bytes[34], bytes[35]]), 16, "{path:?}");

            let prompt = Prompt::from_wav(name, &bytes).unwrap();
            assert_eq!(prompt.name(), name);
            assert!(prompt.duration().as_millis() >= 1000, "{path:?} too short");

            // Through G.711 and back, as the far end would echo it.
            for codec in [Codec::Pcmu, Codec::Pcma] {
                let mut rx = dtmf::Receiver::new();
                let mut digits = Vec::new();
                for i in 0..prompt.frames() {
                    let frame = prompt.frame(codec, i).unwrap();
                    let pcm: Vec<i16> = frame
                        .iter()
                        .map(|&b| match codec {
                            Codec::Pcmu => media::g711::ulaw_to_linear(b),
                            _ => media::g711::alaw_to_linear(b),
                        })
                        .collect();
                    rx.process(&pcm, |e| {
                        if let dtmf::Event::Start { digit, .. } = e {
                            digits.push(digit)
                        }
                    });
                }
                assert!(digits.is_empty(), "{path:?} talks off as {digits:?}");
            }
        }
    }
}

#[test]
fn a_broken_file_is_an_error_not_a_panic() {
    assert!(Prompt::from_wav("x", b"not a wav").is_err());
    assert!(Prompt::from_wav("x", b"RIFF\x04\x00\x00\x00WAVE").is_err());
    let e = Prompt::from_wav("greeting", &[]).unwrap_err();
    assert!(e.to_string().contains("greeting"));
}
