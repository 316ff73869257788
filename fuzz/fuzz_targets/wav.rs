//! Arbitrary bytes as a WAV file: a typed error or audio, never a panic; and the same bytes
//! pushed in two pieces decode to exactly the same samples (or the same kind of error).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = media::wav::decode(data);
    if let Ok(samples) = &whole {
        assert!(!samples.is_empty());
    }
    let split = data.first().map_or(0, |b| usize::from(*b) * 13 % (data.len() + 1));
    let mut decoder = media::wav::Decoder::new();
    let mut out = Vec::new();
    let pieces = decoder
        .push(&data[..split], &mut out)
        .and_then(|()| decoder.push(&data[split..], &mut out))
        .and_then(|()| decoder.finish(&mut out))
        .map(|()| out);
    match (whole, pieces) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => {
            assert_eq!(std::mem::discriminant(&a), std::mem::discriminant(&b))
        }
        (a, b) => panic!("whole {a:?} but in pieces {b:?}"),
    }
});
