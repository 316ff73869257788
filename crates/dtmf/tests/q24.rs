//! The receiver against its specification, case by case (ITU-T Q.24 and the Bellcore/Mitel
//! receiver tests as SpanDSP's `tests/dtmf_rx_tests.c` lays them out), every case through
//! linear PCM, G.711 μ-law and G.711 A-law, tones from the crate's own Q.23 generator.

mod common;

use common::*;
use dtmf::{Digit, Receiver, ToneSpec};

/// 50 ms of silence, a tone burst of `len` samples, 50 ms of silence; the burst starts
/// `lead` samples later than that so every alignment with the analysis windows is tried.
fn case(d: Digit, len: usize, spec: &ToneSpec, lead: usize) -> Vec<i16> {
    [silence(400 + lead), burst(d, len, spec), silence(400)].concat()
}

fn assert_detects(audio: &[i16], expected: &str, what: &str) {
    let got = keys(&detect(audio));
    assert_eq!(got, expected, "{what}");
}

const ALIGNMENTS: [usize; 6] = [0, 9, 17, 26, 34, 50];

/// Runs `check` for every key through every codec.
fn for_every_key(mut check: impl FnMut(Codec, Digit)) {
    for codec in CODECS {
        for d in Digit::ALL {
            check(codec, d);
        }
    }
}

#[test]
fn every_key_is_decoded() {
    for codec in CODECS {
        let audio = through(
            codec,
            &dtmf::generate("0123456789*#ABCD", &ToneSpec::default()),
        );
        assert_detects(&audio, "0123456789*#ABCD", &format!("{codec:?}"));
    }
}

#[test]
fn frequency_error_of_1_5_percent_is_accepted() {
    let combos = [
        (0.015, 0.0),
        (-0.015, 0.0),
        (0.0, 0.015),
        (0.0, -0.015),
        (0.015, 0.015),
        (-0.015, -0.015),
        (0.015, -0.015),
        (-0.015, 0.015),
    ];
    for_every_key(|codec, d| {
        for (low_offset, high_offset) in combos {
            let spec = ToneSpec {
                low_offset,
                high_offset,
                ..ToneSpec::default()
            };
            let audio = through(codec, &case(d, 400, &spec, 13));
            assert_detects(
                &audio,
                &d.to_string(),
                &format!("{codec:?} {d} {low_offset} {high_offset}"),
            );
        }
    });
}

#[test]
fn frequency_error_of_3_5_percent_and_more_is_rejected() {
    for_every_key(|codec, d| {
        for offset in [0.035, -0.035, 0.05, -0.05] {
            for (low_offset, high_offset) in [(offset, 0.0), (0.0, offset), (offset, offset)] {
                let spec = ToneSpec {
                    low_offset,
                    high_offset,
                    ..ToneSpec::default()
                };
                let audio = through(codec, &case(d, 400, &spec, 13));
                assert_detects(
                    &audio,
                    "",
                    &format!("{codec:?} {d} {low_offset} {high_offset}"),
                );
            }
        }
    });
}

/// Q.24 asks for 4 dB reverse; 6 dB reverse is accepted too (Asterisk sends its in-band tones
/// so).
#[test]
fn twist_up_to_8_db_normal_and_4_db_reverse_is_accepted() {
    for_every_key(|codec, d| {
        for twist_db in [8.0, 6.0, 3.0, 0.0, -2.0, -4.0, -6.0] {
            for level_dbm0 in [-3.0, -20.0] {
                let spec = ToneSpec {
                    twist_db,
                    level_dbm0,
                    ..ToneSpec::default()
                };
                let audio = through(codec, &case(d, 400, &spec, 21));
                assert_detects(
                    &audio,
                    &d.to_string(),
                    &format!("{codec:?} {d} twist {twist_db} at {level_dbm0}"),
                );
            }
        }
    });
}

#[test]
fn twist_of_10_db_and_more_is_rejected() {
    for_every_key(|codec, d| {
        for twist_db in [10.0, 12.0, -10.0, -12.0, -20.0, 20.0] {
            let spec = ToneSpec {
                twist_db,
                ..ToneSpec::default()
            };
            let audio = through(codec, &case(d, 400, &spec, 21));
            assert_detects(&audio, "", &format!("{codec:?} {d} twist {twist_db}"));
        }
    });
}

#[test]
fn tones_of_40_ms_are_accepted_at_every_alignment() {
    for_every_key(|codec, d| {
        for lead in 0..51 {
            let audio = through(codec, &case(d, 320, &ToneSpec::default(), lead));
            assert_detects(
                &audio,
                &d.to_string(),
                &format!("{codec:?} {d} 40 ms at +{lead}"),
            );
        }
    });
}

#[test]
fn tones_of_20_ms_and_less_are_rejected_at_every_alignment() {
    for_every_key(|codec, d| {
        for lead in 0..51 {
            for len in [160, 120, 80] {
                let audio = through(codec, &case(d, len, &ToneSpec::default(), lead));
                assert_detects(
                    &audio,
                    "",
                    &format!("{codec:?} {d} {len} samples at +{lead}"),
                );
            }
        }
    });
}

#[test]
fn a_pause_of_40_ms_separates_repeated_keys() {
    let spec = ToneSpec::default();
    for_every_key(|codec, d| {
        for lead in ALIGNMENTS {
            let audio = [
                silence(400 + lead),
                burst(d, 400, &spec),
                silence(320),
                burst(d, 400, &spec),
                silence(400),
            ]
            .concat();
            let expected: String = [d.as_char(); 2].iter().collect();
            assert_detects(
                &through(codec, &audio),
                &expected,
                &format!("{codec:?} {d} at +{lead}"),
            );
        }
    });
}

#[test]
fn a_dropout_of_10_ms_does_not_split_a_key() {
    let spec = ToneSpec::default();
    for_every_key(|codec, d| {
        for at in 0..51 {
            let mut tone = burst(d, 800, &spec);
            tone[300 + at..380 + at].fill(0);
            let audio = through(codec, &[silence(400), tone, silence(400)].concat());
            assert_detects(
                &audio,
                &d.to_string(),
                &format!("{codec:?} {d} dropout at +{at}"),
            );
        }
    });
}

#[test]
fn levels_from_0_to_minus_40_dbm0_are_accepted() {
    for_every_key(|codec, d| {
        for level_dbm0 in [0.0, -3.0, -10.0, -20.0, -25.0, -30.0, -35.0, -40.0] {
            let spec = ToneSpec {
                level_dbm0,
                ..ToneSpec::default()
            };
            let audio = through(codec, &case(d, 400, &spec, 30));
            assert_detects(
                &audio,
                &d.to_string(),
                &format!("{codec:?} {d} at {level_dbm0} dBm0"),
            );
        }
    });
}

#[test]
fn levels_of_minus_50_dbm0_and_below_are_rejected() {
    for_every_key(|codec, d| {
        for level_dbm0 in [-50.0, -55.0, -60.0] {
            let spec = ToneSpec {
                level_dbm0,
                ..ToneSpec::default()
            };
            let audio = through(codec, &case(d, 400, &spec, 30));
            assert_detects(&audio, "", &format!("{codec:?} {d} at {level_dbm0} dBm0"));
        }
    });
}

#[test]
fn white_noise_at_15_db_snr_costs_no_digits_and_adds_none() {
    let mut rng = Rng::new(0x15db);
    for codec in CODECS {
        for run in 0..10 {
            let spec = ToneSpec {
                level_dbm0: -3.0 - 2.5 * run as f64,
                ..ToneSpec::default()
            };
            let clean = dtmf::generate("0123456789*#ABCD", &spec);
            let audio = through(codec, &add_noise(&clean, 15.0, &mut rng));
            assert_detects(&audio, "0123456789*#ABCD", &format!("{codec:?} run {run}"));
        }
        // The hardest in-spec corners with noise: twist at its limits, offsets, 40 ms.
        for d in Digit::ALL {
            for spec in [
                ToneSpec {
                    twist_db: 8.0,
                    level_dbm0: -20.0,
                    ..ToneSpec::default()
                },
                ToneSpec {
                    twist_db: -4.0,
                    level_dbm0: -20.0,
                    ..ToneSpec::default()
                },
                ToneSpec {
                    low_offset: 0.015,
                    high_offset: -0.015,
                    ..ToneSpec::default()
                },
                ToneSpec {
                    on_ms: 40,
                    ..ToneSpec::default()
                },
            ] {
                for _ in 0..4 {
                    let lead = rng.below(102) as usize;
                    let clean = case(d, spec.on_ms as usize * 8, &spec, lead);
                    let audio = through(codec, &add_noise(&clean, 15.0, &mut rng));
                    assert_detects(&audio, &d.to_string(), &format!("{codec:?} {d} {spec:?}"));
                }
            }
        }
        for level_dbm0 in [-40.0, -20.0, -10.0, -3.0] {
            let sigma = dtmf::DBM0_PEAK * 10f64.powf(level_dbm0 / 20.0) / 2f64.sqrt();
            let noise: Vec<i16> = (0..8000 * 10)
                .map(|_| (sigma * rng.gaussian()).round().clamp(-32768.0, 32767.0) as i16)
                .collect();
            assert_detects(
                &through(codec, &noise),
                "",
                &format!("{codec:?} noise alone at {level_dbm0} dBm0"),
            );
        }
    }
}

#[test]
fn fast_dialling_at_40_ms_on_40_ms_off_is_decoded_exactly() {
    let mut rng = Rng::new(4040);
    for codec in CODECS {
        for run in 0..20 {
            // Half the runs draw from two keys only, so repeats are frequent.
            let keys_from = if run % 2 == 0 { 16 } else { 2 };
            let digits: String = (0..12)
                .map(|_| Digit::ALL[rng.below(keys_from) as usize].as_char())
                .collect();
            let spec = ToneSpec {
                on_ms: 40,
                off_ms: 40,
                level_dbm0: -5.0 - 20.0 * rng.uniform(),
                ..ToneSpec::default()
            };
            let audio = through(codec, &dtmf::generate(&digits, &spec));
            assert_detects(&audio, &digits, &format!("{codec:?} {spec:?}"));
        }
    }
}

#[test]
fn a_key_is_reported_within_35_ms_of_onset_at_the_95th_percentile() {
    let mut latencies = Vec::new();
    for d in Digit::ALL {
        for lead in 0..102 {
            let onset = 800 + lead;
            let audio = [
                silence(onset),
                burst(d, 800, &ToneSpec::default()),
                silence(400),
            ]
            .concat();
            let presses = detect(&audio);
            assert_eq!(presses.len(), 1);
            latencies.push(presses[0].reported_at - onset as u64);
        }
    }
    latencies.sort_unstable();
    let p95 = latencies[latencies.len() * 95 / 100];
    assert!(
        p95 <= dtmf::ms_to_samples(35),
        "p95 latency {} ms",
        p95 as f64 / 8.0
    );
}

#[test]
fn start_and_end_are_placed_within_2_ms() {
    for_every_key(|codec, d| {
        for lead in ALIGNMENTS {
            let onset = (400 + lead) as u64;
            let presses = detect(&through(codec, &case(d, 480, &ToneSpec::default(), lead)));
            assert_eq!(presses.len(), 1);
            let p = presses[0];
            assert!(
                p.start.abs_diff(onset) <= 16,
                "{codec:?} {d}: start {} vs {onset}",
                p.start
            );
            assert!(
                p.end.abs_diff(onset + 480) <= 16,
                "{codec:?} {d}: end {} vs {}",
                p.end,
                onset + 480
            );
        }
    });
}

#[test]
fn chunking_does_not_change_the_result() {
    let audio = dtmf::generate(
        "159#",
        &ToneSpec {
            on_ms: 60,
            off_ms: 50,
            ..ToneSpec::default()
        },
    );
    let reference = detect_chunked(&audio, audio.len());
    for chunk in [1, 7, 51, 80, 160, 1000] {
        assert_eq!(
            detect_chunked(&audio, chunk),
            reference,
            "chunks of {chunk}"
        );
    }
}

#[test]
fn lost_packets_inside_a_key_are_bridged_and_long_gaps_end_it() {
    let spec = ToneSpec::default();
    let tone = burst(Digit::Pound, 1600, &spec);
    for lost in [80u64, 160, 320, 480] {
        let mut rx = Receiver::new();
        let mut events = Vec::new();
        rx.process(&silence(400), |e| events.push(e));
        rx.process(&tone[..600], |e| events.push(e));
        rx.fill_in(lost, |e| events.push(e));
        rx.process(&tone[600 + lost as usize..], |e| events.push(e));
        rx.process(&silence(400), |e| events.push(e));
        rx.finish(|e| events.push(e));
        assert_eq!(events.len(), 2, "{lost} samples lost: {events:?}");
    }
    // 100 ms lost: nobody knows whether the key was held through it.
    let mut rx = Receiver::new();
    let mut starts = 0;
    let mut count = |e: dtmf::Event| starts += matches!(e, dtmf::Event::Start { .. }) as usize;
    rx.process(&silence(400), &mut count);
    rx.process(&tone[..600], &mut count);
    rx.fill_in(800, &mut count);
    rx.process(&tone[1400..], &mut count);
    rx.process(&tone[..400], &mut count);
    rx.finish(&mut count);
    assert_eq!(starts, 2);
}

#[test]
fn the_receiver_state_is_small_and_fixed() {
    // No heap: everything lives in the struct.
    assert!(
        std::mem::size_of::<Receiver>() < 1024,
        "{} bytes",
        std::mem::size_of::<Receiver>()
    );
}
