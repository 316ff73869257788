//! The command line (DESIGN.md "CLI"). Exit codes: 0 success (for `call`: approved),
//! 1 completed without approval, 2 usage, configuration or input error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod analyze;
mod call;
mod demo;
mod dtmf;
mod replay;
mod serve;

/// Exit code for usage, configuration and unreadable-input errors.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "callverify",
    version,
    about = "Self-hosted voice-call verifier for multi-factor sign-in"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the verification service (HTTP API, dialer, webhooks).
    Serve(serve::Args),
    /// Place one verification call from the terminal; exit 0 only when confirmed.
    Call(call::Args),
    /// Everything on loopback with a simulated phone: one verification end to end.
    Demo(demo::Args),
    /// DTMF tools: detect digits in a WAV file, generate tones.
    #[command(subcommand)]
    Dtmf(dtmf::Command),
    /// Run every RTP stream of a capture through the live media path and print the digits.
    Replay(replay::Args),
    /// Plot the eight Goertzel band energies of a WAV or capture with the detected digits.
    Analyze(analyze::Args),
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Call(args) => call::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Dtmf(cmd) => dtmf::run(cmd),
        Command::Replay(args) => replay::run(args),
        Command::Analyze(args) => analyze::run(args),
    }
}
