//! `callverify serve` (not built yet: see the open issues).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> ExitCode {
    eprintln!("callverify serve: not built yet");
    ExitCode::from(super::EXIT_USAGE)
}
