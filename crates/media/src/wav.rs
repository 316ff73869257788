//! WAV files of any common shape decoded to 8 kHz mono 16-bit PCM, the audio of a call:
//! prompts at load time, and the files `callverify dtmf detect` and `analyze` read.
//!
//! Integer PCM of 8 to 32 bits, 32- and 64-bit float, `WAVE_FORMAT_EXTENSIBLE` around either,
//! and the G.711 μ-law and A-law WAVs telephony tools write (format tags 7 and 6). Channels are
//! mixed down; other rates are resampled with `rubato`'s FFT resampler. Streaming-style
//! headers whose data size overstates the file (seen from linphone) are read to the bytes
//! actually present.
//!
//! Bytes in, samples out, incrementally: [`Decoder`] takes the file in pieces of any size and
//! holds no more than one resampler chunk and one partial frame, so an hour-long recording is
//! decoded in constant memory. [`decode`] is the whole-file shorthand. No files are opened here.
//!
//! ```text
//!  "RIFF" size "WAVE" │ chunk id(4) len(4) body [pad to even] │ ... │ "fmt " │ ... │ "data" samples
//! ```
//! Chunks before `data` other than `fmt ` are skipped unread; whatever follows the `data`
//! chunk is ignored.

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

use crate::g711;

/// The rate everything is converted to, Hz.
pub const RATE: u32 = 8000;

/// Highest sample rate accepted, Hz (the top rate of studio audio; the FFT resampler's size
/// grows with the rate, so an absurd header must not size it).
pub const MAX_RATE: u32 = 384_000;
/// Most channels accepted (WAVE_FORMAT_EXTENSIBLE's channel mask names 18 positions; anything
/// beyond a few dozen is a damaged header).
pub const MAX_CHANNELS: u16 = 64;
/// Bytes of a `fmt ` chunk kept (16 for PCM, 18 with cbSize, 40 for WAVE_FORMAT_EXTENSIBLE);
/// the rest of a longer one is skipped.
const MAX_FMT: usize = 64;
/// Frames per resampler chunk (rubato's FFT resampler, fixed input and output sizes).
const RESAMPLER_CHUNK: usize = 1024;

/// RFC 2361 format tags.
const WAVE_FORMAT_PCM: u16 = 1;
const WAVE_FORMAT_IEEE_FLOAT: u16 = 3;
/// G.711 WAV tags, RFC 2361: WAVE_FORMAT_ALAW and WAVE_FORMAT_MULAW.
const WAVE_FORMAT_ALAW: u16 = 6;
const WAVE_FORMAT_MULAW: u16 = 7;
/// The real tag is the first two bytes of the sub-format GUID at offset 24 of the `fmt ` body.
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xfffe;

/// Why a WAV file could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    /// Not a RIFF/WAVE file at all.
    #[error("not a WAV file (no RIFF/WAVE header)")]
    NotWav,
    /// A RIFF/WAVE file whose header is damaged.
    #[error("damaged WAV header: {0}")]
    Header(#[source] HeaderError),
    /// A WAV file in an encoding this reader does not handle (e.g. ADPCM).
    #[error("unsupported WAV encoding: format tag {format_tag}, {bits} bits per sample")]
    Unsupported { format_tag: u16, bits: u16 },
    /// The header is fine but there is no audio.
    #[error("the WAV file holds no audio samples")]
    Empty,
    /// A sample rate or channel count out of range (0 Hz, 0 channels, above 384 kHz or 64
    /// channels).
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

/// What is wrong with a RIFF/WAVE header.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The file ends before a `data` chunk (or before any `fmt ` chunk).
    #[error("the file ends before the audio data")]
    NoData,
    /// A `data` chunk comes before the `fmt ` chunk that describes it.
    #[error("data chunk before the fmt chunk")]
    DataBeforeFormat,
    /// The `fmt ` chunk is shorter than the 16 bytes every WAV format has.
    #[error("fmt chunk of {0} bytes (at least 16 needed)")]
    ShortFormat(usize),
}

/// The encoding of the samples in the `data` chunk.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Unsigned 8-bit PCM.
    U8,
    /// Signed little-endian PCM in containers of 2, 3 or 4 bytes (left-justified).
    Int { bytes: u8 },
    /// IEEE float, 4 or 8 bytes.
    Float { bytes: u8 },
    /// G.711 μ-law, one byte.
    Ulaw,
    /// G.711 A-law, one byte.
    Alaw,
}

impl Encoding {
    fn bytes(self) -> usize {
        match self {
            Encoding::U8 | Encoding::Ulaw | Encoding::Alaw => 1,
            Encoding::Int { bytes } | Encoding::Float { bytes } => usize::from(bytes),
        }
    }
}

/// The format of a WAV file, from its `fmt ` chunk.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Format {
    pub encoding: Encoding,
    pub channels: u16,
    pub rate: u32,
}

impl Format {
    /// Bytes of one frame (a sample of every channel).
    pub fn frame_bytes(&self) -> usize {
        self.encoding.bytes() * usize::from(self.channels)
    }
}

/// Decodes a whole WAV file to 8 kHz mono 16-bit samples.
pub fn decode(bytes: &[u8]) -> Result<Vec<i16>, WavError> {
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    decoder.push(bytes, &mut out)?;
    decoder.finish(&mut out)?;
    Ok(out)
}

/// Where the decoder is in the file.
#[derive(Debug)]
enum Stage {
    /// The 12-byte RIFF/WAVE header.
    Riff,
    /// The 8-byte header of the next chunk.
    ChunkHeader,
    /// Inside a `fmt ` chunk: bytes still to read (kept up to [`MAX_FMT`]), then the padding.
    Fmt { left: u64, pad: bool },
    /// Inside a chunk we do not read: bytes still to skip.
    Skip { left: u64 },
    /// Inside the `data` chunk: bytes still to come (at most; the file may end first).
    Data { left: u64 },
    /// After the `data` chunk: nothing more is read.
    Done,
}

/// Sample conversion and resampling from one format to 8 kHz mono.
struct Converter {
    format: Format,
    /// 16-bit mono at 8 kHz: bytes straight to samples.
    direct: bool,
    resampler: Option<Resampling>,
}

/// A resampler and its fixed-size buffers.
struct Resampling {
    fft: Fft<f32>,
    /// Input frames waiting for a whole chunk.
    input: Vec<f32>,
    chunk: usize,
    output: Vec<f32>,
    /// Output frames still to drop (the resampler's delay).
    to_trim: usize,
    /// Frames given to the resampler, and frames handed out.
    frames_in: u64,
    frames_out: u64,
}

/// An incremental WAV decoder: feed the file in pieces with [`Decoder::push`], end with
/// [`Decoder::finish`]. An error is final: the decoder decodes nothing after it.
pub struct Decoder {
    stage: Stage,
    /// Bytes of a header, chunk header or `fmt ` body not complete yet.
    pending: Vec<u8>,
    fmt: Option<Vec<u8>>,
    converter: Option<Converter>,
    /// Bytes of a frame split between two pieces.
    partial: Vec<u8>,
    /// Whole frames decoded.
    frames: u64,
    failed: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("stage", &self.stage)
            .field("format", &self.format())
            .field("frames", &self.frames)
            .finish()
    }
}

impl Decoder {
    /// A decoder at the start of a file.
    pub fn new() -> Decoder {
        Decoder {
            stage: Stage::Riff,
            pending: Vec::with_capacity(12),
            fmt: None,
            converter: None,
            partial: Vec::new(),
            frames: 0,
            failed: false,
        }
    }

    /// The format, once the `data` chunk has begun.
    pub fn format(&self) -> Option<Format> {
        self.converter.as_ref().map(|c| c.format)
    }

    /// Decodes the next `bytes` of the file, appending 8 kHz mono samples to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<i16>) -> Result<(), WavError> {
        if self.failed {
            return Ok(());
        }
        let result = self.take(bytes, out);
        self.failed = result.is_err();
        result
    }

    /// End of the file: the resampler's last samples, or why there was no audio.
    pub fn finish(&mut self, out: &mut Vec<i16>) -> Result<(), WavError> {
        if self.failed {
            return Ok(());
        }
        self.failed = true;
        match self.stage {
            Stage::Riff => return Err(WavError::NotWav),
            Stage::ChunkHeader | Stage::Fmt { .. } | Stage::Skip { .. } => {
                return Err(WavError::Header(HeaderError::NoData));
            }
            Stage::Data { .. } | Stage::Done => {}
        }
        if self.frames == 0 {
            return Err(WavError::Empty);
        }
        match self.converter.as_mut().and_then(|c| c.resampler.as_mut()) {
            Some(r) => r.finish(out),
            None => Ok(()),
        }
    }

    fn take(&mut self, mut bytes: &[u8], out: &mut Vec<i16>) -> Result<(), WavError> {
        while !bytes.is_empty() {
            match &mut self.stage {
                Stage::Riff => {
                    let n = (12 - self.pending.len()).min(bytes.len());
                    self.pending.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    let p = &self.pending;
                    let riff = p.iter().zip(b"RIFF").all(|(a, b)| a == b);
                    let wave = p.iter().skip(8).zip(b"WAVE").all(|(a, b)| a == b);
                    if !riff || !wave {
                        return Err(WavError::NotWav);
                    }
                    if p.len() == 12 {
                        self.pending.clear();
                        self.stage = Stage::ChunkHeader;
                    }
                }
                Stage::ChunkHeader => {
                    let n = (8 - self.pending.len()).min(bytes.len());
                    self.pending.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if self.pending.len() < 8 {
                        continue;
                    }
                    let p = &self.pending;
                    let id = [p[0], p[1], p[2], p[3]];
                    let len = u64::from(u32::from_le_bytes([p[4], p[5], p[6], p[7]]));
                    self.pending.clear();
                    self.stage = match &id {
                        b"fmt " => {
                            self.fmt = Some(Vec::new());
                            Stage::Fmt {
                                left: len,
                                pad: len & 1 == 1,
                            }
                        }
                        b"data" => {
                            let fmt = self
                                .fmt
                                .as_deref()
                                .ok_or(WavError::Header(HeaderError::DataBeforeFormat))?;
                            self.converter = Some(Converter::new(fmt)?);
                            Stage::Data { left: len }
                        }
                        // Chunks are padded to even sizes (RIFF).
                        _ => Stage::Skip {
                            left: len + (len & 1),
                        },
                    };
                }
                Stage::Fmt { left, pad } => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    if let Some(fmt) = self.fmt.as_mut() {
                        let keep = n.min(MAX_FMT.saturating_sub(fmt.len()));
                        fmt.extend_from_slice(&bytes[..keep]);
                    }
                    bytes = &bytes[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        self.stage = Stage::Skip {
                            left: u64::from(*pad),
                        };
                    }
                }
                Stage::Skip { left } => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    bytes = &bytes[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        self.stage = Stage::ChunkHeader;
                    }
                }
                Stage::Data { left } => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    *left -= n as u64;
                    if *left == 0 {
                        self.stage = Stage::Done;
                    }
                    self.data(&bytes[..n], out)?;
                    bytes = &bytes[n..];
                }
                Stage::Done => return Ok(()),
            }
        }
        Ok(())
    }

    /// Samples of the `data` chunk: whole frames converted, a split frame kept for the next
    /// piece.
    fn data(&mut self, mut bytes: &[u8], out: &mut Vec<i16>) -> Result<(), WavError> {
        let Some(converter) = self.converter.as_mut() else {
            return Ok(());
        };
        let frame = converter.format.frame_bytes();
        if !self.partial.is_empty() {
            let n = (frame - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.partial.len() < frame {
                return Ok(());
            }
            converter.convert(&self.partial, out)?;
            self.partial.clear();
            self.frames += 1;
        }
        let whole = bytes.len() - bytes.len() % frame;
        converter.convert(&bytes[..whole], out)?;
        self.frames += (whole / frame) as u64;
        self.partial.extend_from_slice(&bytes[whole..]);
        Ok(())
    }
}

impl Converter {
    fn new(fmt: &[u8]) -> Result<Converter, WavError> {
        if fmt.len() < 16 {
            return Err(WavError::Header(HeaderError::ShortFormat(fmt.len())));
        }
        let u16_at = |i: usize| u16::from_le_bytes([fmt[i], fmt[i + 1]]);
        let mut tag = u16_at(0);
        let channels = u16_at(2);
        let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
        // For WAVE_FORMAT_EXTENSIBLE this is the container size; valid bits are
        // left-justified in it, so scaling by the container is right either way.
        let bits = u16_at(14);
        if tag == WAVE_FORMAT_EXTENSIBLE {
            if fmt.len() < 26 {
                return Err(WavError::Unsupported {
                    format_tag: tag,
                    bits,
                });
            }
            tag = u16_at(24);
        }
        let unsupported = WavError::Unsupported {
            format_tag: tag,
            bits,
        };
        let encoding = match (tag, bits) {
            (WAVE_FORMAT_PCM, 1..=8) => Encoding::U8,
            (WAVE_FORMAT_PCM, 9..=16) => Encoding::Int { bytes: 2 },
            (WAVE_FORMAT_PCM, 17..=24) => Encoding::Int { bytes: 3 },
            (WAVE_FORMAT_PCM, 25..=32) => Encoding::Int { bytes: 4 },
            (WAVE_FORMAT_IEEE_FLOAT, 32) => Encoding::Float { bytes: 4 },
            (WAVE_FORMAT_IEEE_FLOAT, 64) => Encoding::Float { bytes: 8 },
            (WAVE_FORMAT_MULAW, 8) => Encoding::Ulaw,
            (WAVE_FORMAT_ALAW, 8) => Encoding::Alaw,
            _ => return Err(unsupported),
        };
        if rate == 0 || rate > MAX_RATE || channels == 0 || channels > MAX_CHANNELS {
            return Err(WavError::BadFormat { rate, channels });
        }
        let format = Format {
            encoding,
            channels,
            rate,
        };
        let direct = channels == 1
            && rate == RATE
            && matches!(
                encoding,
                Encoding::Int { bytes: 2 } | Encoding::Ulaw | Encoding::Alaw
            );
        let resampler = if rate == RATE {
            None
        } else {
            Some(Resampling::new(rate)?)
        };
        Ok(Converter {
            format,
            direct,
            resampler,
        })
    }

    /// Converts whole frames.
    fn convert(&mut self, bytes: &[u8], out: &mut Vec<i16>) -> Result<(), WavError> {
        if self.direct {
            // 16-bit or G.711 mono at 8 kHz: exactly what the float path would give, faster.
            match self.format.encoding {
                Encoding::Ulaw => out.extend(bytes.iter().map(|&b| g711::ulaw_to_linear(b))),
                Encoding::Alaw => out.extend(bytes.iter().map(|&b| g711::alaw_to_linear(b))),
                _ => out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|c| i16::from_le_bytes([c[0], c[1]])),
                ),
            }
            return Ok(());
        }
        let encoding = self.format.encoding;
        let width = encoding.bytes();
        let channels = usize::from(self.format.channels);
        for frame in bytes.chunks_exact(width * channels) {
            let mono = if channels == 1 {
                sample(encoding, frame)
            } else {
                frame
                    .chunks_exact(width)
                    .map(|s| sample(encoding, s))
                    .sum::<f32>()
                    / channels as f32
            };
            match self.resampler.as_mut() {
                Some(r) => r.push(mono, out)?,
                None => out.push(to_i16(mono)),
            }
        }
        Ok(())
    }
}

/// One sample as a float in -1..1.
fn sample(encoding: Encoding, b: &[u8]) -> f32 {
    /// 1 / 2^(bits - 1): full scale of a signed container.
    const SCALE_8: f32 = 1.0 / 128.0;
    const SCALE_16: f32 = 1.0 / 32_768.0;
    const SCALE_24: f32 = 1.0 / 8_388_608.0;
    const SCALE_32: f32 = 1.0 / 2_147_483_648.0;
    match encoding {
        Encoding::U8 => (i32::from(b[0]) - 128) as f32 * SCALE_8,
        Encoding::Int { bytes: 2 } => f32::from(i16::from_le_bytes([b[0], b[1]])) * SCALE_16,
        Encoding::Int { bytes: 3 } => {
            (i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8) as f32 * SCALE_24
        }
        Encoding::Int { .. } => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 * SCALE_32,
        Encoding::Float { bytes: 4 } => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        Encoding::Float { .. } => {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }
        Encoding::Ulaw => f32::from(g711::ulaw_to_linear(b[0])) / 32_768.0,
        Encoding::Alaw => f32::from(g711::alaw_to_linear(b[0])) / 32_768.0,
    }
}

fn to_i16(v: f32) -> i16 {
    (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

impl Resampling {
    fn new(rate: u32) -> Result<Resampling, WavError> {
        let fft = Fft::<f32>::new(
            rate as usize,
            RATE as usize,
            RESAMPLER_CHUNK,
            1,
            FixedSync::Both,
        )
        .map_err(|source| WavError::ResamplerSetup { rate, source })?;
        let chunk = fft.input_frames_next();
        let output = vec![0.0; fft.output_frames_max()];
        let to_trim = fft.output_delay();
        Ok(Resampling {
            fft,
            input: Vec::with_capacity(chunk),
            chunk,
            output,
            to_trim,
            frames_in: 0,
            frames_out: 0,
        })
    }

    fn rate(&self) -> u32 {
        (f64::from(RATE) / self.fft.resample_ratio()).round() as u32
    }

    fn push(&mut self, v: f32, out: &mut Vec<i16>) -> Result<(), WavError> {
        self.input.push(v);
        self.frames_in += 1;
        if self.input.len() == self.chunk {
            self.process(None, u64::MAX, out)?;
        }
        Ok(())
    }

    /// Runs one chunk (the input held, padded with silence when `partial` says how much of
    /// it is audio) and hands out what follows the resampler's delay, up to `limit` frames in
    /// all.
    fn process(
        &mut self,
        partial: Option<usize>,
        limit: u64,
        out: &mut Vec<i16>,
    ) -> Result<(), WavError> {
        self.input.resize(self.chunk, 0.0);
        let rate = self.rate();
        let input =
            InterleavedSlice::new(&self.input[..], 1, self.chunk).map_err(|_| WavError::Empty)?;
        let frames = self.output.len();
        let mut output = InterleavedSlice::new_mut(&mut self.output[..], 1, frames)
            .map_err(|_| WavError::Empty)?;
        let indexing = Indexing {
            partial_len: partial,
            ..Indexing::default()
        };
        let (_, produced) = self
            .fft
            .process_into_buffer(&input, &mut output, Some(&indexing))
            .map_err(|source| WavError::Resample { rate, source })?;
        self.input.clear();
        let skip = self.to_trim.min(produced);
        self.to_trim -= skip;
        for &v in &self.output[skip..produced] {
            if self.frames_out >= limit {
                break;
            }
            out.push(to_i16(v));
            self.frames_out += 1;
        }
        Ok(())
    }

    /// The last, partial chunk, then silence through the delay until the output is as long
    /// as the input at the new rate (rubato's `process_all`, incrementally).
    fn finish(&mut self, out: &mut Vec<i16>) -> Result<(), WavError> {
        let expected = (self.fft.resample_ratio() * self.frames_in as f64).ceil() as u64;
        if !self.input.is_empty() {
            let n = self.input.len();
            self.process(Some(n), expected, out)?;
        }
        while self.frames_out < expected {
            let before = (self.frames_out, self.to_trim);
            self.process(Some(0), expected, out)?;
            if (self.frames_out, self.to_trim) == before {
                // A resampler that produces nothing more: what there is, is all there is.
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use audioadapter_buffers::direct::InterleavedSlice;

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

    /// The file fed in pieces of `piece` bytes.
    fn decode_in_pieces(bytes: &[u8], piece: usize) -> Result<Vec<i16>, WavError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for p in bytes.chunks(piece) {
            d.push(p, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
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
    fn incremental_resampling_equals_rubato_on_the_whole_clip() {
        // The reference: the clip mixed down in memory and resampled by rubato's process_all.
        for (rate, seconds) in [
            (44_100u32, 0.73),
            (16_000, 2.0),
            (11_025, 0.01),
            (6_000, 1.0),
        ] {
            let t = tone(rate, 697.0, seconds);
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let ints: Vec<i16> = t.iter().map(|v| (v * 12_000.0) as i16).collect();
            let bytes = wav(spec, |w| {
                ints.iter().for_each(|&s| w.write_sample(s).unwrap())
            });
            let mono: Vec<f32> = ints.iter().map(|&s| f32::from(s) / 32_768.0).collect();
            let mut fft =
                Fft::<f32>::new(rate as usize, 8000, RESAMPLER_CHUNK, 1, FixedSync::Both).unwrap();
            let input = InterleavedSlice::new(&mono[..], 1, mono.len()).unwrap();
            let whole: Vec<i16> = fft
                .process_all(&input, mono.len(), None)
                .unwrap()
                .take_data()
                .into_iter()
                .map(to_i16)
                .collect();
            for piece in [1, 7, 4096, bytes.len()] {
                assert_eq!(
                    decode_in_pieces(&bytes, piece).unwrap(),
                    whole,
                    "{rate} Hz in pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn any_split_of_the_bytes_gives_the_same_samples() {
        let spec = hound::WavSpec {
            channels: 3,
            sample_rate: 8000,
            bits_per_sample: 24,
            sample_format: hound::SampleFormat::Int,
        };
        let bytes = wav(spec, |w| {
            (0..300).for_each(|i| w.write_sample((i * 9973 % 2_000_000) - 1_000_000).unwrap())
        });
        let whole = decode(&bytes).unwrap();
        assert_eq!(whole.len(), 100);
        for piece in 1..=13 {
            assert_eq!(decode_in_pieces(&bytes, piece).unwrap(), whole, "{piece}");
        }
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
    fn chunks_before_data_are_skipped_and_what_follows_it_ignored() {
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF\0\0\0\0WAVE");
        // An odd-sized LIST chunk (padded), then fmt, then data of 4 bytes, then junk.
        b.extend_from_slice(b"LIST\x03\0\0\0abc\0");
        let fmt = g711_wav(WAVE_FORMAT_MULAW, &[], 0);
        b.extend_from_slice(&fmt[12..36]);
        b.extend_from_slice(b"data\x04\0\0\0");
        b.extend_from_slice(&[0xff, 0x7f, 0x00, 0x80]);
        b.extend_from_slice(b"LIST\xff\xff\xff\xffjunk");
        for piece in [1, 5, b.len()] {
            assert_eq!(decode_in_pieces(&b, piece).unwrap().len(), 4);
        }
    }

    #[test]
    fn garbage_empty_and_truncated_input_are_errors_not_panics() {
        assert!(matches!(decode(b""), Err(WavError::NotWav)));
        assert!(matches!(decode(b"RIFX"), Err(WavError::NotWav)));
        assert!(matches!(
            decode(b"RIFF\x04\0\0\0WAVE"),
            Err(WavError::Header(HeaderError::NoData))
        ));
        assert!(matches!(
            decode(b"RIFF\x04\0\0\0WAVEdata\0\0\0\0"),
            Err(WavError::Header(HeaderError::DataBeforeFormat))
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
            Err(WavError::Unsupported { format_tag: 9, .. })
        ));
        // Absurd rates and channel counts are refused before anything is sized by them.
        let mut huge = g711_wav(WAVE_FORMAT_MULAW, &[1, 2], 2);
        huge[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(WavError::BadFormat { .. })));
        let mut wide = g711_wav(WAVE_FORMAT_MULAW, &[1, 2], 2);
        wide[22..24].copy_from_slice(&1000u16.to_le_bytes());
        assert!(matches!(decode(&wide), Err(WavError::BadFormat { .. })));
    }
}
