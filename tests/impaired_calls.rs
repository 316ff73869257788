//! Calls through a lossy, jittery network (issue 9, item 6): `callverify call` against sipp
//! callees through the userspace impairment relay (tests/common_relay) with 10 % loss,
//! 50 ± 20 ms of delay (which reorders packets 20 ms apart) and 1 % duplication on both RTP
//! directions. 100 callees press `#` in-band: at least 99 calls end `confirmed`. 100 callees
//! only talk: none is approved. Eight calls run at a time.
//!
//! Ports: sipp SIP 31200 and 31202, relays 31210-31211 and 31220-31221; RTP: ours
//! 55000-55159 (20 per concurrent call), the relays' 55400-55799, sipp's 55900 and 55950.

mod common_peers;
mod common_relay;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common_peers::*;
use common_relay::{Impairment, Relay};

const CALLS: usize = 100;
const CONCURRENT: usize = 8;

/// sipp as a callee for `calls` calls in `work`'s directory.
fn sipp_callee(work: &Work, scenario: &Path, sip_port: u16, media_port: u16, calls: usize) -> Peer {
    let mut cmd = Command::new("sipp");
    cmd.arg("-sf")
        .arg(scenario)
        .args(["-i", "127.0.0.1", "-p", &sip_port.to_string()])
        .args(["-mp", &media_port.to_string()])
        .args(["-m", &calls.to_string(), "-nostdin", "-trace_err"])
        .arg("-pause_msg_ign");
    let mut peer = Peer::spawn("sipp", work.path(), &mut cmd);
    peer.wait_udp(sip_port);
    peer
}

/// Raw μ-law of speech (the built-in English and French greetings, about 20 s): a callee that
/// talks and never presses a key.
fn speech_ulaw(path: &Path) {
    let mut ulaw = Vec::new();
    for language in ["en", "fr"] {
        let wav =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("audio/{language}/greeting.wav"));
        let samples = media::wav::decode(&std::fs::read(wav).unwrap()).unwrap();
        ulaw.extend(samples.iter().map(|&s| media::g711::linear_to_ulaw(s)));
    }
    std::fs::write(path, ulaw).unwrap();
}

/// Every prompt replaced by 0.4 s of a quiet 400 Hz tone (no DTMF frequency): the test is
/// about keys, and short prompts keep 200 calls to a minute or two.
fn short_prompts(dir: &Path) {
    let en = dir.join("en");
    std::fs::create_dir_all(&en).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    for name in [
        "greeting",
        "pin",
        "challenge",
        "thanks",
        "fraud-ack",
        "goodbye",
        "no-input",
        "invalid",
    ] {
        let mut w = hound::WavWriter::create(en.join(format!("{name}.wav")), spec).unwrap();
        for i in 0..3200 {
            let v = 2000.0 * (std::f64::consts::TAU * 400.0 * f64::from(i) / 8000.0).sin();
            w.write_sample(v as i16).unwrap();
        }
        w.finalize().unwrap();
    }
}

#[test]
fn loss_and_jitter_keep_keys_and_never_approve_silence() {
    let keys = Work::new();
    keys.keys_ulaw("keys.ulaw", "#");
    let talk = Work::new();
    // The scenario streams keys.ulaw: here, speech.
    speech_ulaw(&talk.path().join("keys.ulaw"));
    let prompts = tempfile::tempdir().unwrap();
    short_prompts(prompts.path());

    let mut sipp_keys = sipp_callee(
        &keys,
        &keys.scenario("uas_keys_inband.xml", &[]),
        31_200,
        55_900,
        CALLS,
    );
    let mut sipp_talk = sipp_callee(
        &talk,
        &talk.scenario("uas_keys_inband.xml", &[]),
        31_202,
        55_950,
        CALLS,
    );
    let impairment = |seed| Impairment {
        loss: 0.10,
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(20),
        duplicate: 0.01,
        seed,
    };
    let relay_keys = Relay::start(
        "127.0.0.1:31200".parse().unwrap(),
        31_210,
        55_400..55_600,
        impairment(0x5eed_0001),
    );
    let relay_talk = Relay::start(
        "127.0.0.1:31202".parse().unwrap(),
        31_220,
        55_600..55_800,
        impairment(0x5eed_0002),
    );

    // One configuration per concurrent slot (its own RTP ports).
    let configs: Vec<_> = (0..CONCURRENT)
        .map(|slot| {
            let rtp = 55_000 + 20 * slot;
            let path = keys.path().join(format!("callverify-{slot}.toml"));
            std::fs::write(
                &path,
                format!(
                    "[sip]\nlisten = \"127.0.0.1:0\"\nallow_sip_uris = true\n\n\
                     [media]\nrtp_ports = \"{rtp}-{}\"\nprompts = \"{}\"\n\n\
                     [call]\nresponse_timeout_secs = 3\nprompt_replays = 0\n",
                    rtp + 19,
                    prompts.path().display()
                ),
            )
            .unwrap();
            path
        })
        .collect();

    let next = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<(bool, Outcome)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for config in &configs {
            let (next, outcomes) = (&next, &outcomes);
            let (relay_keys, relay_talk) = (&relay_keys, &relay_talk);
            scope.spawn(move || {
                loop {
                    let job = next.fetch_add(1, Ordering::Relaxed);
                    if job >= 2 * CALLS {
                        return;
                    }
                    // Interleaved: key-pressing and talking callees alternate.
                    let presses = job % 2 == 0;
                    let relay = if presses { relay_keys } else { relay_talk };
                    let uri = format!("sip:peer@{}", relay.sip_addr);
                    let out = call(&[&uri], Some(config), &[]);
                    outcomes.lock().unwrap().push((presses, out));
                }
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap();
    let elapsed = started.elapsed();

    let stats = |r: &Relay| {
        let s = &r.stats;
        (
            s.received.load(Ordering::Relaxed),
            s.dropped.load(Ordering::Relaxed),
            s.duplicated.load(Ordering::Relaxed),
            s.reordered.load(Ordering::Relaxed),
            s.calls.load(Ordering::Relaxed),
        )
    };
    let (k, t) = (stats(&relay_keys), stats(&relay_talk));
    let confirmed = outcomes
        .iter()
        .filter(|(p, o)| *p && o.result() == "confirmed" && o.json["approved"] == true)
        .count();
    let approved_silent = outcomes
        .iter()
        .filter(|(p, o)| !*p && o.json["approved"] == true)
        .count();
    let mut results: Vec<String> = outcomes
        .iter()
        .map(|(p, o)| format!("{}:{}", if *p { "key" } else { "talk" }, o.result()))
        .collect();
    results.sort();
    results.dedup_by(|a, b| a == b);
    let summary = format!(
        "{} calls in {elapsed:?}: {confirmed}/{CALLS} with a key confirmed, {approved_silent}/{CALLS} \
         without approved; results seen {results:?}; relay (received, dropped, duplicated, \
         reordered, calls): keys {k:?}, talk {t:?}",
        outcomes.len()
    );
    eprintln!("{summary}");

    let failures: Vec<&Outcome> = outcomes
        .iter()
        .filter(|(p, o)| *p && o.result() != "confirmed")
        .map(|(_, o)| o)
        .take(2)
        .collect();
    assert_eq!(outcomes.len(), 2 * CALLS, "{summary}");
    assert!(confirmed >= 99, "{summary}\nfirst failures: {failures:#?}");
    assert_eq!(approved_silent, 0, "{summary}");
    // The impairment happened: about 10 % lost, some duplicated and reordered, both ways.
    for (received, dropped, duplicated, reordered, calls) in [k, t] {
        assert_eq!(calls, CALLS as u64, "{summary}");
        let loss = dropped as f64 / received as f64;
        assert!((0.08..0.12).contains(&loss), "loss {loss}: {summary}");
        assert!(duplicated > 0 && reordered > 0, "{summary}");
    }
    let _ = sipp_keys.wait_exit(Duration::from_secs(30));
    let _ = sipp_talk.wait_exit(Duration::from_secs(30));
    relay_keys.shutdown();
    relay_talk.shutdown();
}
