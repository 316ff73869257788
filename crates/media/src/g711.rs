//! ITU-T G.711 μ-law and A-law, table-based and bit-exact with the ITU-T G.191 reference
//! (`g711.c`: `ulaw_compress/expand`, `alaw_compress/expand`).
//!
//! Linear samples are 16-bit; as in G.191, μ-law looks at the top 14 bits and A-law the top 12
//! and the sign.
//! Decoding is a 256-entry table; encoding a table indexed by the truncated linear value
//! (16 KiB for μ-law, 4 KiB for A-law), all built at compile time.

/// Decodes one μ-law byte to 16-bit linear.
#[inline]
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_DECODE[code as usize]
}

/// Encodes one 16-bit linear sample to μ-law (G.191 uses its top 14 bits).
#[inline]
pub fn linear_to_ulaw(sample: i16) -> u8 {
    ULAW_ENCODE[((sample as u16) >> 2) as usize]
}

/// Decodes one A-law byte to 16-bit linear.
#[inline]
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_DECODE[code as usize]
}

/// Encodes one 16-bit linear sample to A-law (G.191 uses its top 12 bits and the sign).
#[inline]
pub fn linear_to_alaw(sample: i16) -> u8 {
    ALAW_ENCODE[((sample as u16) >> 4) as usize]
}

/// G.191 `ulaw_expand` for one code: 14-bit value, left-justified in 16 bits.
const fn ulaw_expand(code: u8) -> i16 {
    let sign: i32 = if code < 0x80 { -1 } else { 1 };
    let inverted = !(code as i32);
    let exponent = (inverted >> 4) & 0x07;
    let mantissa = inverted & 0x0f;
    let step = 4 << (exponent + 1);
    // '1' before the mantissa, the mantissa, half a step, less the bias (4 · 33).
    (sign * ((0x80 << exponent) + step * mantissa + step / 2 - 4 * 33)) as i16
}

/// G.191 `ulaw_compress` for one 16-bit sample.
const fn ulaw_compress(sample: i32) -> u8 {
    // 14-bit magnitude (one's complement for negatives) plus 33, the μ-law bias.
    let mut absno = if sample < 0 {
        ((!sample) >> 2) + 33
    } else {
        (sample >> 2) + 33
    };
    if absno > 0x1fff {
        absno = 0x1fff;
    }
    let mut segno = 1;
    let mut i = absno >> 6;
    while i != 0 {
        segno += 1;
        i >>= 1;
    }
    let high_nibble = 0x08 - segno;
    let low_nibble = 0x0f - ((absno >> segno) & 0x0f);
    let mut out = (high_nibble << 4) | low_nibble;
    if sample >= 0 {
        out |= 0x80;
    }
    out as u8
}

/// G.191 `alaw_expand` for one code (16-bit scale).
const fn alaw_expand(code: u8) -> i16 {
    let ix = ((code ^ 0x55) & 0x7f) as i32;
    let exponent = ix >> 4;
    let mut mant = ix & 0x0f;
    if exponent > 0 {
        mant += 16;
    }
    // Left-justify the mantissa and add half a quantisation step.
    mant = (mant << 4) + 0x08;
    if exponent > 1 {
        mant <<= exponent - 1;
    }
    (if code > 127 { mant } else { -mant }) as i16
}

/// G.191 `alaw_compress` for one 16-bit sample.
const fn alaw_compress(sample: i32) -> u8 {
    // 12-bit magnitude (one's complement for negatives).
    let mut ix = if sample < 0 {
        (!sample) >> 4
    } else {
        sample >> 4
    };
    if ix > 15 {
        let mut exponent = 1;
        while ix > 16 + 15 {
            ix >>= 1;
            exponent += 1;
        }
        ix -= 16;
        ix += exponent << 4;
    }
    if sample >= 0 {
        ix |= 0x80;
    }
    (ix ^ 0x55) as u8
}

static ULAW_DECODE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_expand(i as u8);
        i += 1;
    }
    t
};

static ALAW_DECODE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_expand(i as u8);
        i += 1;
    }
    t
};

/// Indexed by the sample's top 14 bits (as unsigned): the bits `ulaw_compress` looks at.
static ULAW_ENCODE: [u8; 1 << 14] = {
    let mut t = [0u8; 1 << 14];
    let mut i = 0;
    while i < (1 << 14) {
        let sample = ((i as i32) << 18) >> 16; // sign-extend, back to 16-bit scale
        t[i] = ulaw_compress(sample);
        i += 1;
    }
    t
};

/// Indexed by the sample's top 12 bits (as unsigned): the bits `alaw_compress` looks at.
static ALAW_ENCODE: [u8; 1 << 12] = {
    let mut t = [0u8; 1 << 12];
    let mut i = 0;
    while i < (1 << 12) {
        let sample = ((i as i32) << 20) >> 16;
        t[i] = alaw_compress(sample);
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_known_values() {
        // G.711 Table 2a: code 0xFF and 0x7F are ±0; 0x80 is the largest positive, 0x00
        // the largest negative (±8031 in 14-bit units, ±32124 in 16-bit).
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
    }

    #[test]
    fn alaw_known_values() {
        // G.711 Table 1a: 0xD5 / 0x55 are the smallest positive / negative values (±8 in
        // 16-bit units); 0xAA / 0x2A the largest (±32256).
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0x2a), -32256);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2a);
    }

    #[test]
    fn decode_then_encode_is_identity() {
        for code in 0..=255u8 {
            // μ-law has two zeros (0x7F, 0xFF); both decode to 0 which encodes to 0xFF.
            if code != 0x7f {
                assert_eq!(
                    linear_to_ulaw(ulaw_to_linear(code)),
                    code,
                    "μ-law {code:#04x}"
                );
            }
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "A-law {code:#04x}"
            );
        }
    }

    #[test]
    fn encoding_is_monotonic() {
        let mut last_u = i32::MIN;
        let mut last_a = i32::MIN;
        for s in i16::MIN..=i16::MAX {
            let u = ulaw_to_linear(linear_to_ulaw(s)) as i32;
            let a = alaw_to_linear(linear_to_alaw(s)) as i32;
            assert!(u >= last_u && a >= last_a, "at {s}");
            last_u = u;
            last_a = a;
        }
    }
}
