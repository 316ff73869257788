//! The prompts `callverify call` plays, heard by a sipp callee whose SDP points the media at
//! a socket of this test (the capture): run from an empty directory with no `media.prompts`,
//! the built-in English recordings arrive byte for byte; with a folder holding one file, that
//! file replaces only its prompt.
//!
//! Ports: sipp SIP 31200+n, sipp RTP 55100+10n, the capture 55200+10n, our RTP 55000+20n.

mod common_peers;

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common_peers::*;
use media::{Codec, Prompt};

/// The PCMU payloads of every RTP packet sent to `socket` until `stop`, concatenated.
fn capture(socket: &UdpSocket, stop: &AtomicBool) -> Vec<u8> {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut audio = Vec::new();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = socket.recv(&mut buf) else {
            continue;
        };
        let packet = &buf[..n];
        // RFC 3550 §5.1: version 2, PT 0 (PCMU); skip CSRCs and an extension.
        if n < 12 || packet[0] >> 6 != 2 || packet[1] & 0x7f != 0 {
            continue;
        }
        let mut at = 12 + 4 * usize::from(packet[0] & 0x0f);
        if packet[0] & 0x10 != 0 && n >= at + 4 {
            at += 4 + 4 * usize::from(u16::from_be_bytes([packet[at + 2], packet[at + 3]]));
        }
        if let Some(payload) = packet.get(at..) {
            audio.extend_from_slice(payload);
        }
    }
    audio
}

/// A prompt as the PCMU bytes it is sent as.
fn pcmu(prompt: &Prompt) -> Vec<u8> {
    (0..prompt.frames())
        .flat_map(|i| prompt.frame(Codec::Pcmu, i).unwrap().to_vec())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn built_in(name: &str) -> Prompt {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("audio/en/{name}.wav"));
    Prompt::from_wav(name, &std::fs::read(path).unwrap()).unwrap()
}

/// One call that nobody answers with a key, from an empty working directory; what the
/// callee heard, and the outcome.
fn call_and_listen(n: u16, prompts: Option<&Path>) -> (String, Vec<u8>) {
    let work = Work::new();
    let listen_port = 55_200 + 10 * n;
    let socket = UdpSocket::bind(("127.0.0.1", listen_port)).unwrap();
    let scenario = work.scenario(
        "uas_listen.xml",
        &[("RTP_PORT", listen_port.to_string().as_str())],
    );
    let sip_port = 31_200 + n;
    let mut sipp = sipp_uas(&work, &scenario, sip_port, 55_100 + 10 * n);
    let rtp = 55_000 + 20 * n;
    let prompts_line = prompts.map_or(String::new(), |p| {
        format!("prompts = \"{}\"\n", p.display())
    });
    let config = work.path().join("callverify.toml");
    std::fs::write(
        &config,
        format!(
            "[sip]\nlisten = \"127.0.0.1:0\"\nallow_sip_uris = true\n\n\
             [media]\nrtp_ports = \"{rtp}-{}\"\n{prompts_line}\n\
             [call]\nresponse_timeout_secs = 1\nprompt_replays = 0\n",
            rtp + 19
        ),
    )
    .unwrap();
    // Nothing here: no audio/ folder to find by chance.
    let elsewhere = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let (out, audio) = std::thread::scope(|scope| {
        let listener = scope.spawn(|| capture(&socket, &stop));
        let out = Command::new(env!("CARGO_BIN_EXE_callverify"))
            .current_dir(elsewhere.path())
            .args(["call", &format!("sip:peer@127.0.0.1:{sip_port}")])
            .arg("--config")
            .arg(&config)
            .args(["--format", "json"])
            .env("RUST_LOG", "warn")
            .output()
            .expect("callverify runs");
        stop.store(true, Ordering::Relaxed);
        (out, listener.join().unwrap())
    });
    let _ = sipp.wait_exit(Duration::from_secs(10));
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    let result = json["result"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        result,
        "no_input",
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        work.logs()
    );
    (result, audio)
}

#[test]
fn run_from_anywhere_the_built_in_recordings_speak() {
    let (_, heard) = call_and_listen(0, None);
    let greeting = pcmu(&built_in("greeting"));
    let no_input = pcmu(&built_in("no-input"));
    // 10 s of speech, every byte as recorded (a beep would be 1.3 s of 440 Hz).
    assert!(greeting.len() > 60_000, "{} bytes", greeting.len());
    assert!(
        contains(&heard, &greeting),
        "the greeting never arrived whole"
    );
    assert!(
        contains(&heard, &no_input),
        "the no-input prompt never arrived"
    );
}

#[test]
fn a_recording_in_the_folder_replaces_only_its_prompt() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::create_dir(folder.path().join("en")).unwrap();
    // The override: 1.2 s of a 500 Hz tone (no DTMF frequency), as any WAV an operator has.
    let tone: Vec<i16> = (0..9600)
        .map(|i| (8000.0 * (std::f64::consts::TAU * 500.0 * f64::from(i) / 8000.0).sin()) as i16)
        .collect();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let path = folder.path().join("en/greeting.wav");
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    tone.iter().for_each(|&s| w.write_sample(s).unwrap());
    w.finalize().unwrap();

    let (_, heard) = call_and_listen(1, Some(folder.path()));
    let replaced = pcmu(&Prompt::from_samples("greeting", &tone));
    assert!(
        contains(&heard, &replaced),
        "the replacement greeting never arrived"
    );
    let built_in_greeting = pcmu(&built_in("greeting"));
    assert!(
        !contains(&heard, &built_in_greeting[..16_000]),
        "the built-in greeting played although replaced"
    );
    assert!(
        contains(&heard, &pcmu(&built_in("no-input"))),
        "the no-input prompt, not replaced, is no longer the built-in one"
    );
}
