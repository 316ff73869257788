//! `callverify demo`: one verification end to end on loopback, with a simulated phone.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::demo::{self, PhoneMode};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What the simulated phone does: press # (confirm), press 0# (fraud), stay silent, or
    /// be busy.
    #[arg(long, value_enum, default_value_t = PhoneMode::Confirm)]
    phone: PhoneMode,
    /// Folder of prompt recordings (default: the `audio` folder of this checkout).
    #[arg(long)]
    prompts: Option<PathBuf>,
}

pub fn run(args: Args) -> ExitCode {
    let prompts = args.prompts.unwrap_or_else(|| {
        let here = PathBuf::from("audio");
        if here.is_dir() {
            here
        } else {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/audio"))
        }
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callverify demo: cannot start the async runtime: {e}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let mut out = std::io::stdout();
    match runtime.block_on(demo::run(args.phone, &prompts, &mut out)) {
        Ok(outcome) if outcome.as_expected && outcome.webhook_verified => {
            println!(
                "\nThe demo ran as expected for --phone {}.",
                args.phone.as_ref()
            );
            ExitCode::SUCCESS
        }
        Ok(outcome) => {
            println!(
                "\nThe demo did NOT end as expected for --phone {}: wanted {}, webhook verified: {}.",
                args.phone.as_ref(),
                demo::expected_result(args.phone),
                outcome.webhook_verified
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("callverify demo: {e}");
            ExitCode::from(1)
        }
    }
}
