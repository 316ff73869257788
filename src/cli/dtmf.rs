//! `callverify dtmf detect|generate`: the DTMF receiver and tone generator on files.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use dtmf::{Event, ToneSpec};

use crate::audio::{self, InputFormat};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Detect DTMF digits in an audio file (any WAV; headerless 8 kHz audio by extension or
    /// --input-format).
    ///
    /// text prints the digits on one line; jsonl prints one object per key press:
    /// {"digit":"#","start_ms":1230,"end_ms":1330,"report_ms":1262}, report_ms being when the
    /// receiver was certain of the key.
    Detect {
        /// The audio file (`-`: standard input, read as it comes; WAV, or give
        /// --input-format).
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
        input_format: InputFormat,
    },
    /// Generate DTMF tones (ITU-T Q.23) into a 16-bit 8 kHz WAV file.
    Generate {
        /// Keys to send: 0-9 * # A-D; ',' is a one-second pause.
        keys: String,
        /// Output WAV file.
        #[arg(short, long)]
        output: PathBuf,
        /// Level of the low-group tone, dBm0 (G.711: a full-scale sine is +3.14 dBm0).
        #[arg(long, default_value_t = -10.0, allow_negative_numbers = true)]
        level_dbm0: f64,
        /// Twist, dB: low-group level minus high-group level (negative: high tone louder).
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        twist_db: f64,
        /// Tone duration, ms.
        #[arg(long, default_value_t = 100)]
        on_ms: u32,
        /// Silence before the first and after each tone, ms.
        #[arg(long, default_value_t = 100)]
        off_ms: u32,
    },
}

/// Most threads `detect` runs receivers on (beyond eight, reading the file is the limit).
const MAX_WORKERS: usize = 8;

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Jsonl,
}

pub fn run(cmd: Command) -> ExitCode {
    let result = match cmd {
        Command::Detect {
            file,
            format,
            input_format,
        } => detect(&file, format, input_format),
        Command::Generate {
            keys,
            output,
            level_dbm0,
            twist_db,
            on_ms,
            off_ms,
        } => {
            let spec = ToneSpec {
                level_dbm0,
                twist_db,
                on_ms,
                off_ms,
                ..ToneSpec::default()
            };
            generate(&keys, &output, &spec)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callverify dtmf: {e}");
            ExitCode::from(super::EXIT_USAGE)
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum DtmfCliError {
    #[error(transparent)]
    Audio(#[from] audio::AudioError),
    #[error(transparent)]
    Key(#[from] dtmf::ParseDigitError),
    #[error("nothing to generate: give at least one key")]
    NoKeys,
    #[error("level {0} dBm0 is outside -80..+3 dBm0")]
    Level(f64),
    #[error("twist {0} dB is outside -40..40 dB")]
    Twist(f64),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: hound::Error },
    #[error("cannot write the output: {0}")]
    Stdout(#[from] std::io::Error),
}

/// One detected key press, in milliseconds from the start of the audio.
#[derive(Debug, serde::Serialize)]
struct Press {
    digit: String,
    start_ms: u64,
    end_ms: u64,
    report_ms: u64,
}

fn detect(
    file: &std::path::Path,
    format: Format,
    input_format: InputFormat,
) -> Result<(), DtmfCliError> {
    // Presses are written as the receiver ends them, while the file is still being read:
    // nothing accumulates, whatever the length of the recording.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut written: std::io::Result<()> = Ok(());
    let mut reported = None;
    let mut on_event = |e: Event| match e {
        Event::Start { reported_at, .. } => reported = Some(reported_at),
        Event::End {
            digit,
            start,
            end,
            reported_at,
        } => {
            if written.is_err() {
                return;
            }
            written = match format {
                Format::Text => write!(out, "{digit}"),
                Format::Jsonl => {
                    let press = Press {
                        digit: digit.to_string(),
                        start_ms: dtmf::samples_to_ms(start),
                        end_ms: dtmf::samples_to_ms(end),
                        report_ms: dtmf::samples_to_ms(reported.take().unwrap_or(reported_at)),
                    };
                    // Serialising a struct of strings and integers cannot fail.
                    writeln!(out, "{}", serde_json::to_string(&press).unwrap_or_default())
                }
            };
        }
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS));
    // What was decoded before a read error still counts; the error is reported after it.
    crate::detect::detect(file, input_format, workers, &mut on_event)?;
    written?;
    if format == Format::Text {
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

fn generate(keys: &str, output: &std::path::Path, spec: &ToneSpec) -> Result<(), DtmfCliError> {
    if keys.is_empty() {
        return Err(DtmfCliError::NoKeys);
    }
    if !(-80.0..=3.0).contains(&spec.level_dbm0) {
        return Err(DtmfCliError::Level(spec.level_dbm0));
    }
    if !(-40.0..=40.0).contains(&spec.twist_db) {
        return Err(DtmfCliError::Twist(spec.twist_db));
    }
    let samples = dtmf::try_generate(keys, spec)?;
    let wav_spec = hound::WavSpec {
        channels: 1,
        sample_rate: dtmf::SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let write = || -> Result<(), hound::Error> {
        let mut w = hound::WavWriter::create(output, wav_spec)?;
        for s in &samples {
            w.write_sample(*s)?;
        }
        w.finalize()
    };
    write().map_err(|source| DtmfCliError::Write {
        path: output.into(),
        source,
    })
}
