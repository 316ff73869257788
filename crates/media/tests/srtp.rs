//! Two sessions keyed by SDES on a simulated clock: each side's key protects what it sends,
//! digits and prompt cross an impaired link, and what a stranger or a replay injects is
//! dropped and counted.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use media::rng::SplitMix64;
use media::{
    Codec, DialMethod, MasterKey, MediaEvent, Prompt, Session, SessionConfig, SrtpConfig, Suite,
};

const US: &str = "203.0.113.5:30000";

fn key(seed: u64) -> MasterKey {
    let mut rng = SplitMix64::new(seed);
    let mut k = [0u8; 30];
    for b in &mut k {
        *b = rng.next_u64() as u8;
    }
    MasterKey::new(k)
}

fn seed32(n: u64) -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    seed
}

fn pair(t0: Instant, suite: Suite, seed: u64) -> (Session, Session) {
    let (ours, theirs) = (key(seed), key(seed + 1));
    let config = |remote: &str, local: &MasterKey, far: &MasterKey, seed: u64| SessionConfig {
        remote: addr(remote),
        codec: Codec::Pcmu,
        audio_pt: 0,
        telephone_event_pt: Some(101),
        seed: seed32(seed),
        srtp: Some(SrtpConfig {
            suite,
            local: local.clone(),
            remote: far.clone(),
        }),
    };
    (
        Session::new(t0, config(PHONE, &ours, &theirs, seed)),
        Session::new(t0 + ms(7), config(US, &theirs, &ours, seed + 1000)),
    )
}

fn tone_prompt(ms_len: usize) -> Arc<Prompt> {
    // 400 Hz: not a DTMF frequency.
    let samples: Vec<i16> = (0..ms_len * 8)
        .map(|i| (8000.0 * (i as f64 * 400.0 * std::f64::consts::TAU / 8000.0).sin()) as i16)
        .collect();
    Arc::new(Prompt::from_samples("greeting", &samples))
}

/// What crossed the link, for the checks after the call.
#[derive(Default)]
struct Wire {
    to_phone: Vec<Vec<u8>>,
    to_caller: Vec<Vec<u8>>,
}

/// Runs both sessions for 5 s over a link with 3 % loss, up to 50 ms of jitter (reordering)
/// and 5 % duplicates; `inject` may add datagrams to the caller at each step. The caller's
/// digits.
fn run(
    caller: &mut Session,
    phone: &mut Session,
    seed: u64,
    wire: &mut Wire,
    mut inject: impl FnMut(Instant, &mut Session, &Wire),
) -> String {
    let t0 = caller.origin();
    let mut rng = SplitMix64::new(seed);
    let mut link: Vec<(Instant, bool, Vec<u8>)> = Vec::new();
    let mut digits = String::new();
    let end = t0 + Duration::from_secs(5);
    loop {
        let next = [
            caller.poll_timeout(),
            phone.poll_timeout(),
            link.iter().map(|l| l.0).min(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap();
        if next > end {
            break;
        }
        let (due, rest): (Vec<_>, Vec<_>) = link.into_iter().partition(|l| l.0 <= next);
        link = rest;
        for (at, to_caller, bytes) in due {
            if to_caller {
                caller.handle_datagram(at, addr(PHONE), &bytes);
            } else {
                phone.handle_datagram(at, addr(US), &bytes);
            }
        }
        inject(next, caller, wire);
        caller.handle_timeout(next);
        phone.handle_timeout(next);
        for (s, to_caller) in [(&mut *caller, false), (&mut *phone, true)] {
            while let Some(tx) = s.poll_transmit() {
                if to_caller {
                    wire.to_caller.push(tx.payload.clone());
                } else {
                    wire.to_phone.push(tx.payload.clone());
                }
                if rng.chance(0.03) {
                    continue;
                }
                if rng.chance(0.05) {
                    let again = next + Duration::from_millis(20 + rng.below(80));
                    link.push((again, to_caller, tx.payload.clone()));
                }
                let delay = Duration::from_millis(20 + rng.below(50));
                link.push((next + delay, to_caller, tx.payload));
            }
        }
        while let Some(e) = caller.poll_event() {
            if let MediaEvent::Digit(d) = e {
                digits.push(d.digit.as_char());
            }
        }
        while phone.poll_event().is_some() {}
    }
    digits
}

#[test]
fn keys_and_prompt_cross_an_impaired_link_in_both_directions() {
    for seed in 0..8 {
        let suite = Suite::ALL[seed as usize % 2];
        let method = if seed % 4 < 2 {
            DialMethod::Rfc4733
        } else {
            DialMethod::Inband
        };
        let t0 = Instant::now();
        let (mut caller, mut phone) = pair(t0, suite, seed);
        caller.play(t0, tone_prompt(2000));
        phone.dial(t0, ",1234#", method);
        let mut wire = Wire::default();
        let digits = run(&mut caller, &mut phone, seed, &mut wire, |_, _, _| {});
        assert_eq!(digits, "1234#", "seed {seed} {suite} {method:?}");

        // Their key protected what they sent: everything that arrived authenticated, the
        // duplicates were caught as replays, nothing else was refused.
        let rx = caller.stats().srtp.unwrap();
        assert!(rx.unprotected > 200, "{rx:?}");
        assert!(rx.replays > 0, "seed {seed}: {rx:?}");
        assert_eq!((rx.auth_failures, rx.malformed), (0, 0), "{rx:?}");
        // Ours protected what we sent: the phone decoded the whole prompt.
        let phone_stats = phone.stats();
        let heard = &phone_stats.receive.streams;
        assert_eq!(heard.len(), 1);
        assert!(heard[0].packets > 200, "{heard:?}");
        assert_eq!(phone_stats.srtp.unwrap().auth_failures, 0);

        // On the wire nothing is G.711 of the prompt: the prompt's first frame, encoded as
        // we would send it in clear, appears in no packet.
        let prompt = tone_prompt(2000);
        let clear = prompt.frame(Codec::Pcmu, 1).unwrap();
        for packet in &wire.to_phone {
            assert_eq!(packet.len(), 12 + 160 + suite.rtp_tag_len());
            assert!(packet.windows(160).all(|w| w != clear.as_slice()));
        }
    }
}

#[test]
fn a_strangers_plain_or_replayed_key_never_counts() {
    let t0 = Instant::now();
    let (mut caller, mut phone) = pair(t0, Suite::AesCm128HmacSha1_80, 42);
    caller.play(t0, tone_prompt(2000));
    // The genuine phone presses nothing.
    let mut stranger = Phone::new(Codec::Pcmu, 0);
    stranger.silence(200);
    stranger.event(dtmf::Digit::Pound, 200, Style::Standard);
    stranger.tone(dtmf::Digit::Pound, 200);
    stranger.silence(200);
    let forged: Vec<_> = stranger.packets();
    let mut sent = 0;
    let mut replayed = 0;
    let mut wire = Wire::default();
    let digits = run(
        &mut caller,
        &mut phone,
        7,
        &mut wire,
        |now, caller, wire| {
            // Plain RTP `#`, in-band and RFC 4733, spoofed from the phone's own address.
            if sent < forged.len() && now >= t0 + ms(1000) + forged[sent].at {
                caller.handle_datagram(now, addr(PHONE), &forged[sent].bytes);
                sent += 1;
            }
            // And the phone's own authentic packets, recorded earlier, played back.
            if now >= t0 + ms(3000) && replayed < wire.to_caller.len().min(50) {
                caller.handle_datagram(now, addr(PHONE), &wire.to_caller[replayed]);
                replayed += 1;
            }
        },
    );
    assert_eq!(digits, "");
    assert_eq!(sent, forged.len());
    let rx = caller.stats().srtp.unwrap();
    // Short event packets cannot even hold a tag (malformed); the rest fail authentication.
    assert_eq!(
        (rx.auth_failures + rx.malformed) as usize,
        forged.len(),
        "{rx:?}"
    );
    assert!(rx.auth_failures > 0 && rx.malformed > 0, "{rx:?}");
    assert!(rx.replays >= 50, "{rx:?}");
    // Nothing forged reached the receive path: only the phone's one SSRC is known there.
    assert_eq!(caller.stats().receive.streams.len(), 1);
}
