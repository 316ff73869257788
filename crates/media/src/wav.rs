//! WAV files of any common shape decoded to 8 kHz mono 16-bit PCM, the audio of a call:
//! prompts at load time, and the files `callverify dtmf detect` and `analyze` read.
//!
//! Integer PCM of 8 to 32 bits and 32-bit float (through `hound`), and the G.711 μ-law and
//! A-law WAVs telephony tools write (format tags 7 and 6, which `hound` does not read).
//! Channels are mixed down; other rates are resampled with `rubato`'s FFT resampler.
//! Streaming-style headers whose RIFF or data sizes overstate the file (seen from linphone)
//! are clamped to the bytes actually present. Bytes in, samples out: no files are opened here.

use std::io::Cursor;

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use crate::g711;

/// The rate everything is converted to, Hz.
pub const RATE: u32 = 8000;

/// Why a WAV file could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    /// Not a RIFF/WAVE file at all.
    #[error("not a WAV file (no RIFF/WAVE header)")]
    NotWav,
    /// A RIFF/WAVE file whose header is damaged.
    #[error("damaged WAV header: {0}")]
    Header(#[source] hound::Error),
    /// A WAV file in an encoding this reader does not handle (e.g. ADPCM).
    #[error("unsupported WAV encoding: format tag {format_tag}, {bits} bits per sample")]
    Unsupported { format_tag: u16, bits: u16 },
    /// The header is fine but there is no audio.
    #[error("the WAV file holds no audio samples")]
    Empty,
    /// A sample rate or channel count no resampler accepts (0 Hz, 0 channels).
    #[error("impossible format: {rate} Hz, {channels} channels")]
    BadFormat { rate: u32, channels: u16 },
    /// The resampler refused the conversion.
    #[error("cannot resample from {rate} Hz")]
    ResamplerSetup {
        rate: u32,
        source: rubato::ResamplerConstructionError,
    },
    /// The resampler failed on the audio.
    #[error("resampling from {rate} Hz failed")]
    Resample {
        rate: u32,
        source: rubato::ResampleError,
    },
}

/// Decodes a WAV file to 8 kHz mono 16-bit samples.
pub fn decode(bytes: &[u8]) -> Result<Vec<i16>, WavError> {
    chunks(bytes)?;
    let (rate, channels, interleaved) = match decode_g711(bytes)? {
        Some(decoded) => decoded,
        None => decode_hound(bytes)?,
    };
    if rate == 0 || channels == 0 {
        return Err(WavError::BadFormat { rate, channels });
    }
    let mono = mix_down(&interleaved, channels as usize);
    if mono.is_empty() {
        return Err(WavError::Empty);
    }
    let resampled = if rate == RATE {
        mono
    } else {
        resample(&mono, rate)?
    };
    Ok(resampled
        .iter()
        .map(|&v| (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect())
}

/// Decodes through `hound`, keeping every sample read before a truncation.
fn decode_hound(bytes: &[u8]) -> Result<(u32, u16, Vec<f32>), WavError> {
    let reader = hound::WavReader::new(Cursor::new(bytes)).map_err(|e| match e {
        hound::Error::Unsupported => WavError::Unsupported {
            format_tag: format_tag(bytes).unwrap_or(0),
            bits: 0,
        },
        other => WavError::Header(other),
    })?;
    let spec = reader.spec();
    let scale = |bits: u16| 1.0 / (1u64 << (bits.clamp(1, 32) - 1)) as f32;
    // Samples stop at the first error: a header that overstates the data (streaming writers)
    // ends in a truncated read, and everything before it is good audio.
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.into_samples::<f32>().map_while(Result::ok).collect(),
        hound::SampleFormat::Int => {
            let s = scale(spec.bits_per_sample);
            reader
                .into_samples::<i32>()
                .map_while(Result::ok)
                .map(|v| v as f32 * s)
                .collect()
        }
    };
    // Keep whole frames only.
    let channels = spec.channels.max(1) as usize;
    let whole = samples.len() - samples.len() % channels;
    let mut samples = samples;
    samples.truncate(whole);
    Ok((spec.sample_rate, spec.channels, samples))
}

/// The format tag of a RIFF/WAVE file's `fmt ` chunk, if there is one.
fn format_tag(bytes: &[u8]) -> Option<u16> {
    let fmt = chunks(bytes)
        .ok()?
        .into_iter()
        .find(|(id, _)| id == b"fmt ")?
        .1;
    Some(u16::from_le_bytes(fmt.get(0..2)?.try_into().ok()?))
}

/// A RIFF chunk: its id and its bytes.
type Chunk<'a> = ([u8; 4], &'a [u8]);

/// The chunks of a RIFF/WAVE file, each clamped to the bytes present.
fn chunks(bytes: &[u8]) -> Result<Vec<Chunk<'_>>, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWav);
    }
    let mut out = Vec::new();
    let mut at = 12usize;
    while at + 8 <= bytes.len() {
        let id: [u8; 4] = bytes[at..at + 4].try_into().unwrap_or([0; 4]);
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or([0; 4])) as usize;
        let start = at + 8;
        let end = start.saturating_add(len).min(bytes.len());
        out.push((id, &bytes[start..end]));
        // Chunks are padded to even sizes (RIFF).
        at = end.saturating_add(len & 1);
    }
    Ok(out)
}

/// G.711 WAV tags, RFC 2361: WAVE_FORMAT_ALAW and WAVE_FORMAT_MULAW.
const WAVE_FORMAT_ALAW: u16 = 6;
const WAVE_FORMAT_MULAW: u16 = 7;

/// Decodes μ-law and A-law WAVs; `None` for any other encoding.
fn decode_g711(bytes: &[u8]) -> Result<Option<(u32, u16, Vec<f32>)>, WavError> {
    let Ok(chunks) = chunks(bytes) else {
        return Ok(None);
    };
    let Some(fmt) = chunks.iter().find(|(id, _)| id == b"fmt ").map(|c| c.1) else {
        return Ok(None);
    };
    if fmt.len() < 16 {
        return Ok(None);
    }
    let tag = u16::from_le_bytes([fmt[0], fmt[1]]);
    let decode: fn(u8) -> i16 = match tag {
        WAVE_FORMAT_MULAW => g711::ulaw_to_linear,
        WAVE_FORMAT_ALAW => g711::alaw_to_linear,
        _ => return Ok(None),
    };
    let channels = u16::from_le_bytes([fmt[2], fmt[3]]);
    let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
    let bits = u16::from_le_bytes([fmt[14], fmt[15]]);
    if bits != 8 {
        return Err(WavError::Unsupported {
            format_tag: tag,
            bits,
        });
    }
    let data = chunks
        .iter()
        .find(|(id, _)| id == b"data")
        .map(|c| c.1)
        .unwrap_or(&[]);
    let whole = data.len() - data.len() % channels.max(1) as usize;
    let samples = data[..whole]
        .iter()
        .map(|&b| decode(b) as f32 / 32768.0)
        .collect();
    Ok(Some((rate, channels, samples)))
}

fn mix_down(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels == 1 {
        return interleaved.to_vec();
    }
    interleaved
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect()
}

fn resample(mono: &[f32], rate: u32) -> Result<Vec<f32>, WavError> {
    let mut resampler = Fft::<f32>::new(rate as usize, RATE as usize, 1024, 1, FixedSync::Both)
        .map_err(|source| WavError::ResamplerSetup { rate, source })?;
    // One channel, `len` frames: the slice's own length, which cannot mismatch.
    let input = InterleavedSlice::new(mono, 1, mono.len()).map_err(|_| WavError::Empty)?;
    let output = resampler
        .process_all(&input, mono.len(), None)
        .map_err(|source| WavError::Resample { rate, source })?;
    Ok(output.take_data())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(
        spec: hound::WavSpec,
        write: impl FnOnce(&mut hound::WavWriter<&mut Cursor<Vec<u8>>>),
    ) -> Vec<u8> {
        let mut cursor = Cursor::new(Vec::new());
        {
            let mut w = hound::WavWriter::new(&mut cursor, spec).unwrap();
            write(&mut w);
            w.finalize().unwrap();
        }
        cursor.into_inner()
    }

    fn tone(rate: u32, hz: f64, seconds: f64) -> Vec<f64> {
        (0..(rate as f64 * seconds) as usize)
            .map(|n| (std::f64::consts::TAU * hz * n as f64 / rate as f64).sin())
            .collect()
    }

    #[test]
    fn sixteen_bit_8k_mono_passes_through_unchanged() {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let samples: Vec<i16> = (0..800).map(|i| (i * 37 % 2000 - 1000) as i16).collect();
        let bytes = wav(spec, |w| {
            samples.iter().for_each(|&s| w.write_sample(s).unwrap())
        });
        assert_eq!(decode(&bytes).unwrap(), samples);
    }

    #[test]
    fn stereo_float_44k1_is_mixed_and_resampled() {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 44_100,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let t = tone(44_100, 1000.0, 0.5);
        let bytes = wav(spec, |w| {
            t.iter().for_each(|&v| {
                w.write_sample(v as f32 * 0.5).unwrap();
                w.write_sample(v as f32 * 0.5).unwrap();
            })
        });
        let out = decode(&bytes).unwrap();
        assert!(
            (out.len() as i64 - 4000).abs() <= 2,
            "{} samples",
            out.len()
        );
        // A 1 kHz tone at half scale: peak about 16384 away from the edges.
        let peak = out[400..3600]
            .iter()
            .map(|s| s.unsigned_abs())
            .max()
            .unwrap();
        assert!((15_500..17_300).contains(&peak), "peak {peak}");
    }

    #[test]
    fn twenty_four_bit_and_eight_bit_are_scaled() {
        for (bits, scale) in [(24u16, 8_388_607.0), (8, 127.0)] {
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: 8000,
                bits_per_sample: bits,
                sample_format: hound::SampleFormat::Int,
            };
            let bytes = wav(spec, |w| {
                (0..100).for_each(|_| w.write_sample((0.25 * scale) as i32).unwrap())
            });
            let out = decode(&bytes).unwrap();
            assert!(
                out.iter().all(|&s| (s - 8192).abs() < 300),
                "{bits} bits: {:?}",
                &out[..4]
            );
        }
    }

    fn g711_wav(tag: u16, data: &[u8], declared_data_len: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + declared_data_len).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&8000u32.to_le_bytes());
        b.extend_from_slice(&8000u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&8u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&declared_data_len.to_le_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn ulaw_and_alaw_wavs_are_decoded_and_overstated_sizes_clamped() {
        let codes: Vec<u8> = (0..=255).collect();
        let u = decode(&g711_wav(WAVE_FORMAT_MULAW, &codes, 0x7fff_f000)).unwrap();
        assert_eq!(
            u,
            codes
                .iter()
                .map(|&c| g711::ulaw_to_linear(c))
                .collect::<Vec<_>>()
        );
        let a = decode(&g711_wav(WAVE_FORMAT_ALAW, &codes, 256)).unwrap();
        assert_eq!(
            a,
            codes
                .iter()
                .map(|&c| g711::alaw_to_linear(c))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn garbage_empty_and_truncated_input_are_errors_not_panics() {
        assert!(matches!(decode(b""), Err(WavError::NotWav)));
        assert!(matches!(
            decode(b"RIFF\x04\0\0\0WAVE"),
            Err(WavError::Header(_))
        ));
        assert!(matches!(
            decode(&g711_wav(WAVE_FORMAT_MULAW, &[], 0)),
            Err(WavError::Empty)
        ));
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let bytes = wav(spec, |w| {
            (0..1000).for_each(|i| w.write_sample(i as i16).unwrap())
        });
        for cut in [0, 10, 44, 45, 46, 1000] {
            let _ = decode(&bytes[..cut]);
        }
        assert_eq!(decode(&bytes[..44 + 200]).unwrap().len(), 100);
        assert!(matches!(
            decode(&g711_wav(9, &[1, 2, 3], 3)),
            Err(WavError::Unsupported { format_tag: 9, .. }) | Err(WavError::Header(_))
        ));
    }
}
