//! Audio files for the CLI (`dtmf detect`, `analyze`): WAV of any common format, or headerless
//! 8 kHz audio (16-bit little-endian linear, μ-law or A-law), read incrementally as 8 kHz mono
//! 16-bit: a piece of the file at a time, so memory stays flat however long the recording.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use media::g711;
use media::wav::{self, WavError};

/// Bytes read from the file at a time (256 KiB: 16 s of 16-bit audio; big enough that the
/// system calls cost nothing next to the decoding, small enough to be no memory to speak of).
pub const READ_CHUNK: usize = 256 << 10;

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
    OddLength { path: PathBuf, len: u64 },
    #[error("{}: holds no audio", path.display())]
    Empty { path: PathBuf },
}

/// The path that means standard input.
pub const STDIN: &str = "-";

/// Pieces of decoded audio in flight between the reading thread and the caller's: one being
/// filled, one being consumed, one queued (bounded: reading never runs far ahead).
const IN_FLIGHT: usize = 3;

/// Reads `path` (`-`: standard input) as 8 kHz mono 16-bit samples, handing them to
/// `on_samples` a piece at a time, in order. Returns how many samples there were.
///
/// Reading and decoding run on a thread of their own, so the file's bytes are fetched and
/// converted while the caller analyses the previous piece; at most [`IN_FLIGHT`] pieces of
/// [`READ_CHUNK`] bytes exist at once. Errors found in the header come before any samples; a
/// headerless 16-bit file of odd length is refused up front when its size is known (a pipe's
/// only at its end).
pub fn stream(
    path: &Path,
    format: InputFormat,
    mut on_samples: impl FnMut(&[i16]),
) -> Result<u64, AudioError> {
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<i16>>(IN_FLIGHT - 1);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<i16>>();
    for _ in 0..IN_FLIGHT {
        // Cannot fail: the receiver is alive.
        let _ = empty_tx.send(Vec::with_capacity(READ_CHUNK));
    }
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            read_into(
                path,
                format,
                || empty_rx.recv().ok(),
                |piece| full_tx.send(piece).is_ok(),
            )
        });
        let mut total = 0u64;
        for piece in full_rx {
            total += piece.len() as u64;
            on_samples(&piece);
            let _ = empty_tx.send(piece);
        }
        match reader.join() {
            Ok(result) => result.map(|read| {
                debug_assert_eq!(read, total);
                total
            }),
            // The reading thread cannot panic short of a bug; say so rather than hide it.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// As [`stream`], on the calling thread: for callers that keep their own threads busy.
pub fn read(
    path: &Path,
    format: InputFormat,
    mut on_samples: impl FnMut(&[i16]),
) -> Result<u64, AudioError> {
    let slot = std::cell::RefCell::new(Some(Vec::with_capacity(READ_CHUNK)));
    read_into(
        path,
        format,
        || slot.borrow_mut().take(),
        |piece| {
            on_samples(&piece);
            *slot.borrow_mut() = Some(piece);
            true
        },
    )
}

/// The reading side of [`stream`] and [`read`]: reads and decodes into pieces taken from `take` (None: the
/// consumer has gone), handing each filled piece to `deliver` (false: the consumer has gone).
fn read_into(
    path: &Path,
    format: InputFormat,
    mut take: impl FnMut() -> Option<Vec<i16>>,
    mut deliver: impl FnMut(Vec<i16>) -> bool,
) -> Result<u64, AudioError> {
    let io = |source| AudioError::Io {
        path: path.into(),
        source,
    };
    let mut input: Box<dyn Read> = if path.as_os_str() == STDIN {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(File::open(path).map_err(io)?)
    };
    let size = if path.as_os_str() == STDIN {
        None
    } else {
        std::fs::metadata(path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    };
    let mut buf = vec![0u8; READ_CHUNK];
    let mut len = fill(&mut input, &mut buf).map_err(io)?;
    let format = match format {
        InputFormat::Auto => detect(path, &buf[..len])
            .ok_or_else(|| AudioError::UnknownFormat { path: path.into() })?,
        other => other,
    };
    if format == InputFormat::S16le
        && let Some(size) = size
        && size % 2 != 0
    {
        return Err(AudioError::OddLength {
            path: path.into(),
            len: size,
        });
    }
    let mut decoder = Pieces::new(format);
    let mut total = 0u64;
    let mut bytes = 0u64;
    let wav_error = |source| AudioError::Wav {
        path: path.into(),
        source,
    };
    let Some(mut piece) = take() else {
        return Ok(0);
    };
    loop {
        piece.clear();
        if len == 0 {
            break;
        }
        bytes += len as u64;
        decoder.push(&buf[..len], &mut piece).map_err(wav_error)?;
        if !piece.is_empty() {
            total += piece.len() as u64;
            if !deliver(piece) {
                return Ok(total);
            }
            piece = match take() {
                Some(p) => p,
                None => return Ok(total),
            };
        }
        len = fill(&mut input, &mut buf).map_err(io)?;
    }
    match decoder.finish(&mut piece) {
        Ok(()) => {}
        Err(Finish::Wav(source)) => return Err(wav_error(source)),
        Err(Finish::OddByte) => {
            return Err(AudioError::OddLength {
                path: path.into(),
                len: bytes,
            });
        }
    }
    if !piece.is_empty() {
        total += piece.len() as u64;
        deliver(piece);
    }
    if total == 0 {
        return Err(AudioError::Empty { path: path.into() });
    }
    Ok(total)
}

/// Reads until `buf` is full or the input ends (a pipe gives less than asked at a time).
fn fill(input: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match input.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

/// The decoder of one input format.
enum Pieces {
    Wav(Box<wav::Decoder>),
    S16le { odd: Option<u8> },
    Ulaw,
    Alaw,
}

/// Why the end of the input is wrong.
enum Finish {
    Wav(WavError),
    OddByte,
}

impl Pieces {
    fn new(format: InputFormat) -> Pieces {
        match format {
            InputFormat::Auto | InputFormat::Wav => Pieces::Wav(Box::default()),
            InputFormat::S16le => Pieces::S16le { odd: None },
            InputFormat::Ulaw => Pieces::Ulaw,
            InputFormat::Alaw => Pieces::Alaw,
        }
    }

    fn push(&mut self, mut bytes: &[u8], out: &mut Vec<i16>) -> Result<(), WavError> {
        match self {
            Pieces::Wav(d) => d.push(bytes, out)?,
            Pieces::S16le { odd } => {
                if let Some((&high, rest)) = bytes.split_first()
                    && let Some(low) = odd.take()
                {
                    out.push(i16::from_le_bytes([low, high]));
                    bytes = rest;
                }
                let whole = bytes.len() & !1;
                out.extend(
                    bytes[..whole]
                        .chunks_exact(2)
                        .map(|c| i16::from_le_bytes([c[0], c[1]])),
                );
                *odd = bytes.get(whole).copied();
            }
            Pieces::Ulaw => out.extend(bytes.iter().map(|&b| g711::ulaw_to_linear(b))),
            Pieces::Alaw => out.extend(bytes.iter().map(|&b| g711::alaw_to_linear(b))),
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<i16>) -> Result<(), Finish> {
        match self {
            Pieces::Wav(d) => d.finish(out).map_err(Finish::Wav),
            Pieces::S16le { odd: Some(_) } => Err(Finish::OddByte),
            Pieces::S16le { odd: None } | Pieces::Ulaw | Pieces::Alaw => Ok(()),
        }
    }
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
