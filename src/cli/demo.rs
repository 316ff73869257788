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
    /// The sign-in method: a phone call (the default), or a code from an authenticator app
    /// (enrols one, prints its otpauth:// URI, computes the code and submits it).
    #[arg(long, value_enum, default_value_t = DemoMethod::Phone)]
    method: DemoMethod,
    /// Folder of prompt recordings (default: the `audio` folder of this checkout).
    #[arg(long)]
    prompts: Option<PathBuf>,
}

/// Which sign-in method the demo shows.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoMethod {
    /// A call to the simulated phone (`--phone` says what it does).
    Phone,
    /// An authenticator app's code (RFC 6238).
    Code,
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
    if args.method == DemoMethod::Code {
        return match runtime.block_on(demo::code::run(&prompts, &mut out)) {
            Ok(outcome) if outcome.as_expected && outcome.webhook_verified => {
                println!("\nThe demo ran as expected for --method code.");
                ExitCode::SUCCESS
            }
            Ok(outcome) => {
                println!(
                    "\nThe demo did NOT end as expected for --method code: wanted confirmed, \
                     webhook verified: {}.",
                    outcome.webhook_verified
                );
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("callverify demo: {e}");
                ExitCode::from(1)
            }
        };
    }
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
