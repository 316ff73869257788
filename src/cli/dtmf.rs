//! `callverify dtmf detect|generate`.

use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Detect DTMF digits in an audio file.
    Detect {},
    /// Generate DTMF tones into a WAV file.
    Generate {},
}

pub fn run(_cmd: Command) -> ExitCode {
    eprintln!("callverify dtmf: not built yet");
    ExitCode::from(super::EXIT_USAGE)
}
