//! Audio files for the CLI (`dtmf detect`, `analyze`): WAV of any common format, or headerless
//! 8 kHz audio (16-bit little-endian linear, μ-law or A-law), read as 8 kHz mono 16-bit.

use std::path::{Path, PathBuf};

use media::g711;
use media::wav::WavError;

/// How the bytes of an audio file are laid out.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// Decide from the content (RIFF header) and the file extension.
    Auto,
    /// A WAV file (any rate, channels, integer or float PCM, μ-law, A-law).
    Wav,
    /// Headerless signed 16-bit little-endian PCM at 8 kHz, mono (`.raw`, `.sln`, `.pcm`).
    S16le,
    /// Headerless G.711 μ-law at 8 kHz (`.ul`, `.ulaw`, `.pcmu`).
    Ulaw,
    /// Headerless G.711 A-law at 8 kHz (`.al`, `.alaw`, `.pcma`).
    Alaw,
}

/// Why an audio file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Wav { path: PathBuf, source: WavError },
    #[error(
        "{}: not a WAV file, and the extension does not say which headerless format it is \
         (use --input-format s16le|ulaw|alaw)",
        path.display()
    )]
    UnknownFormat { path: PathBuf },
    #[error("{}: odd number of bytes ({len}) for 16-bit samples", path.display())]
    OddLength { path: PathBuf, len: usize },
    #[error("{}: holds no audio", path.display())]
    Empty { path: PathBuf },
}

/// Reads `path` as 8 kHz mono 16-bit samples.
pub fn read(path: &Path, format: InputFormat) -> Result<Vec<i16>, AudioError> {
    let bytes = std::fs::read(path).map_err(|source| AudioError::Io {
        path: path.into(),
        source,
    })?;
    let format = match format {
        InputFormat::Auto => {
            detect(path, &bytes).ok_or_else(|| AudioError::UnknownFormat { path: path.into() })?
        }
        other => other,
    };
    let samples = match format {
        InputFormat::Wav | InputFormat::Auto => {
            media::wav::decode(&bytes).map_err(|source| AudioError::Wav {
                path: path.into(),
                source,
            })?
        }
        InputFormat::S16le => {
            if bytes.len() % 2 != 0 {
                return Err(AudioError::OddLength {
                    path: path.into(),
                    len: bytes.len(),
                });
            }
            bytes
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect()
        }
        InputFormat::Ulaw => bytes.iter().map(|&b| g711::ulaw_to_linear(b)).collect(),
        InputFormat::Alaw => bytes.iter().map(|&b| g711::alaw_to_linear(b)).collect(),
    };
    if samples.is_empty() {
        return Err(AudioError::Empty { path: path.into() });
    }
    Ok(samples)
}

fn detect(path: &Path, bytes: &[u8]) -> Option<InputFormat> {
    if bytes.starts_with(b"RIFF") {
        return Some(InputFormat::Wav);
    }
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "wav" => Some(InputFormat::Wav),
        "raw" | "sln" | "pcm" | "s16" | "s16le" => Some(InputFormat::S16le),
        "ul" | "ulaw" | "mulaw" | "pcmu" | "u" => Some(InputFormat::Ulaw),
        "al" | "alaw" | "pcma" | "a" => Some(InputFormat::Alaw),
        _ => None,
    }
}
