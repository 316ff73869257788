//! Property: any sequence of key presses within the specification (levels 0..−25 dBm0, twist
//! 4 dB reverse .. 8 dB normal, frequency error within ±1.5 %, tones and pauses of 40 ms or
//! more), through any of the three codecs, is decoded exactly.

mod common;

use common::*;
use dtmf::{Digit, ToneSpec};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Press {
    digit: Digit,
    spec: ToneSpec,
    pause_ms: u32,
}

fn press() -> impl Strategy<Value = Press> {
    (
        0usize..16,
        -25.0f64..0.0,
        -4.0f64..8.0,
        40u32..200,
        40u32..300,
        -0.015f64..0.015,
        -0.015f64..0.015,
    )
        .prop_map(
            |(key, level_dbm0, twist_db, on_ms, pause_ms, low_offset, high_offset)| Press {
                digit: Digit::ALL[key],
                spec: ToneSpec {
                    level_dbm0,
                    twist_db,
                    on_ms,
                    off_ms: 0,
                    low_offset,
                    high_offset,
                },
                pause_ms,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn in_spec_sequences_decode_exactly(presses in prop::collection::vec(press(), 1..8), codec in 0usize..3, lead in 0usize..400) {
        let mut audio = silence(lead);
        for p in &presses {
            audio.extend(burst(p.digit, p.spec.on_ms as usize * 8, &p.spec));
            audio.extend(silence(p.pause_ms as usize * 8));
        }
        let expected: String = presses.iter().map(|p| p.digit.as_char()).collect();
        let got = keys(&detect(&through(CODECS[codec], &audio)));
        prop_assert_eq!(got, expected);
    }
}
