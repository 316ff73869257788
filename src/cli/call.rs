//! `callverify call <+E.164 | sip:URI>`: one verification call from the terminal, with live
//! progress on stderr and the outcome on stdout. Exit 0 only when approved, 1 when the call
//! completed without approval, 2 for usage or configuration errors (DESIGN.md "CLI").

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use flow::{Mode, TimelineEntry, TimelineEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::call::{CallProgress, CallReport};
use crate::config::Config;
use crate::metrics::{Dropped, SipCounters};
use crate::runtime::{CallOrder, Runtime, RuntimeConfig, Trunk};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Whom to call: an E.164 number (`+14255550123`, through the trunk) or a SIP URI
    /// (`sip:peer@192.0.2.10:5060`; through the trunk when one is configured, else direct).
    destination: String,
    /// Digits, `*`, `#` and `,` (one second pause) sent after the call is answered.
    #[arg(long)]
    extension: Option<String>,
    /// What the callee must key in.
    #[arg(long, value_enum, default_value = "standard")]
    mode: ModeArg,
    /// The PIN to expect (pin mode). Never printed.
    #[arg(long)]
    pin: Option<String>,
    /// The digits to expect (challenge mode).
    #[arg(long)]
    digits: Option<String>,
    /// Configuration file (TOML); `CALLVERIFY_<SECTION>__<KEY>` variables override it.
    /// Without one, the defaults apply, except that keys sent by SIP INFO count too.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The trunk to send the call to (`sip:host[:port][;transport=udp|tcp|tls]`); overrides
    /// `sip.trunk`.
    #[arg(long, value_name = "URI")]
    trunk: Option<String>,
    /// Prompt language (default: the first of `media.languages`).
    #[arg(long)]
    language: Option<String>,
    /// Output format of the outcome.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Copy, Clone, Debug, clap::ValueEnum)]
enum ModeArg {
    Standard,
    Pin,
    Challenge,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

/// A usage or configuration error: the command line or the configuration is at fault.
#[derive(Debug, thiserror::Error)]
enum UsageError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("destination must be an E.164 number (+ and 8 to 15 digits) or a sip:/sips: URI")]
    Destination,
    #[error("{0} mode needs {1}")]
    MissingDigits(&'static str, &'static str),
    #[error("{0} must be digits 0-9")]
    NotDigits(&'static str),
    #[error("--pin and --digits only apply to --mode pin and --mode challenge")]
    UnusedDigits,
    #[error("--extension may only hold 0-9, *, #, A-D and `,`")]
    Extension,
    #[error("calling a phone number needs a trunk: give --trunk or set sip.trunk")]
    NoTrunk,
    #[error("language `{0}` is not in media.languages")]
    Language(String),
    #[error(
        "media.srtp = \"require\" needs SIP over TLS: give a sips: or ;transport=tls destination or trunk (SRTP keys are never sent over clear SIP)"
    )]
    SrtpNeedsTls,
    #[error("cannot start the async runtime: {0}")]
    Tokio(std::io::Error),
}

pub fn run(args: Args) -> ExitCode {
    init_logging();
    let format = args.format;
    let prepared = match prepare(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("callverify call: {e}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callverify call: {}", UsageError::Tokio(e));
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let (report, dropped) = match rt.block_on(place(prepared)) {
        Ok(done) => done,
        Err(e) => {
            eprintln!("callverify call: {e}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    print_outcome(&report, &dropped, format);
    if report.result.approved() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

struct Prepared {
    runtime: RuntimeConfig,
    order: CallOrder,
    shown_destination: String,
}

fn prepare(args: Args) -> Result<Prepared, UsageError> {
    let mut config = Config::load(args.config.as_deref())?;
    if args.config.is_none() && std::env::var_os("CALLVERIFY_SIP__SIP_INFO_DTMF").is_none() {
        // A test call from the terminal listens to every DTMF method unless told otherwise;
        // the service keeps `sip.sip_info_dtmf`'s default (off).
        config.sip.sip_info_dtmf = true;
    }
    if let Some(trunk) = &args.trunk {
        Trunk::parse(trunk)?;
        config.sip.trunk = trunk.clone();
    }
    let dest = args.destination.trim().to_string();
    let phone = dest.starts_with('+');
    if phone {
        let digits = &dest[1..];
        if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(UsageError::Destination);
        }
        if config.sip.trunk.is_empty() {
            return Err(UsageError::NoTrunk);
        }
    } else if sip::Uri::parse(&dest).is_err() {
        return Err(UsageError::Destination);
    }
    let mode = match args.mode {
        ModeArg::Standard => Mode::Standard,
        ModeArg::Pin => Mode::Pin,
        ModeArg::Challenge => Mode::Challenge,
    };
    let expected = match (mode, &args.pin, &args.digits) {
        (Mode::Standard, None, None) => None,
        (Mode::Standard, _, _) => return Err(UsageError::UnusedDigits),
        (Mode::Pin, Some(pin), None) => Some(("--pin", pin.clone())),
        (Mode::Pin, _, _) => {
            return Err(UsageError::MissingDigits("pin", "--pin (and not --digits)"));
        }
        (Mode::Challenge, None, Some(d)) => Some(("--digits", d.clone())),
        (Mode::Challenge, _, _) => {
            return Err(UsageError::MissingDigits(
                "challenge",
                "--digits (and not --pin)",
            ));
        }
    };
    if let Some((flag, d)) = &expected
        && (d.is_empty() || !d.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(UsageError::NotDigits(flag));
    }
    if let Some(ext) = &args.extension
        && !ext
            .chars()
            .all(|c| c == ',' || dtmf::Digit::from_char(c).is_some())
    {
        return Err(UsageError::Extension);
    }
    let language = match args.language {
        Some(l) if !config.media.languages.contains(&l) => return Err(UsageError::Language(l)),
        Some(l) => l,
        None => config.media.languages[0].clone(),
    };
    if config.media.srtp == crate::config::SrtpMode::Require {
        // Refused before anything is dialled: the trunk's transport, else the destination's.
        let transport = match config.sip.trunk.as_str() {
            "" => Trunk::parse(&dest).map(|t| t.transport),
            trunk => Trunk::parse(trunk).map(|t| t.transport),
        };
        if !matches!(transport, Ok(sip::Transport::Tls)) {
            return Err(UsageError::SrtpNeedsTls);
        }
    }
    let mut runtime = RuntimeConfig::from_config(&config)?;
    // One-off call: any free port on the configured address, so a running `serve` is no obstacle.
    runtime.listen = SocketAddr::new(config.sip.listen.ip(), 0);
    if runtime.route_probe.is_none()
        && !phone
        && let Ok(t) = Trunk::parse(&dest)
    {
        runtime.route_probe = crate::runtime::probe_address(&t.host, t.port);
    }
    let shown_destination = if phone {
        crate::store::Destination::Phone(dest.clone()).to_string()
    } else {
        crate::store::Destination::SipUri(dest.clone()).to_string()
    };
    Ok(Prepared {
        runtime,
        order: CallOrder {
            destination: dest,
            extension: args.extension,
            mode,
            // A one-off call keeps its digits in memory only: sealed under a key of its own.
            expected_digits: expected
                .map(|(flag, d)| {
                    flow::keys::DigitsKey::new(rand::random())
                        .seal_digits(b"callverify call", &d)
                        .map_err(|_| UsageError::NotDigits(flag))
                })
                .transpose()?,
            language,
            call: config.call.clone(),
        },
        shown_destination,
    })
}

/// What the runtime dropped during the call, by reason (only reasons that happened).
type DropCounts = Vec<(&'static str, u64)>;

fn drop_counts(counters: &SipCounters) -> DropCounts {
    Dropped::ALL
        .iter()
        .map(|r| (r.as_str(), counters.sip(*r)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

async fn place(p: Prepared) -> Result<(CallReport, DropCounts), UsageError> {
    let runtime = Runtime::start(p.runtime)?;
    let counters = runtime.counters();
    eprintln!(
        "calling {} from {}",
        p.shown_destination,
        runtime.local_sip()
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let call = runtime.call(p.order, tx, cancel.clone());
    tokio::pin!(call);
    let mut interrupted = false;
    loop {
        tokio::select! {
            report = &mut call => {
                while let Ok(progress) = rx.try_recv() {
                    show(&progress);
                }
                let dropped = drop_counts(&counters);
                if !dropped.is_empty() {
                    let list: Vec<String> =
                        dropped.iter().map(|(r, n)| format!("{r} {n}")).collect();
                    eprintln!("SIP input dropped: {}", list.join(", "));
                }
                return Ok((report, dropped));
            }
            Some(progress) = rx.recv() => show(&progress),
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                eprintln!("interrupted: hanging up");
                cancel.cancel();
            }
        }
    }
}

/// One line of live progress on stderr. PIN digits arrive masked already.
fn show(progress: &CallProgress) {
    let CallProgress::Timeline(entry) = progress else {
        return;
    };
    if let Some(text) = describe(entry) {
        eprintln!("[{:>7.3}s] {text}", entry.at_ms as f64 / 1000.0);
    }
}

fn describe(entry: &TimelineEntry) -> Option<String> {
    use TimelineEvent as E;
    Some(match &entry.event {
        E::InviteSent => "INVITE sent".into(),
        E::Provisional { code: 180 } => "ringing (180)".into(),
        E::Provisional { code } => format!("progress ({code})"),
        E::AuthChallenge { code } => format!("trunk asks for credentials ({code})"),
        E::Authenticating { algorithm, .. } => format!("sending credentials ({algorithm})"),
        E::AuthFailed { code, reason } => format!("authentication failed ({code}): {reason}"),
        E::Answered => "answered".into(),
        E::MediaNegotiated {
            codec,
            telephone_event,
            srtp,
        } => {
            let events = match telephone_event {
                Some(pt) => format!("RFC 4733 events on PT {pt}"),
                None => "no RFC 4733 events".to_string(),
            };
            let protection = match srtp {
                Some(suite) => format!("SRTP {suite}"),
                None => "plain RTP".to_string(),
            };
            format!("media: {codec}, {events}, {protection}")
        }
        E::MediaUnusable { reason } => format!("answer has no usable media: {reason}"),
        E::MediaChanged { on_hold: true } => "the far end put the call on hold".into(),
        E::MediaChanged { on_hold: false } => "the far end changed the media".into(),
        E::Rejected { code } => format!("call refused ({code})"),
        E::NoResponse { reason } => reason.clone(),
        E::Rerouted { from, to, reason } => format!("{from} failed ({reason}): trying {to}"),
        E::ExtensionSent => "extension dialled".into(),
        E::PromptStarted { prompt } => format!("prompt: {prompt}"),
        E::PromptFinished { .. } => return None,
        E::Digit { digit, method } => format!("key {digit} ({method})"),
        E::DigitIgnored {
            digit,
            method,
            reason,
        } => format!("key {digit} ({method}) ignored: {reason}"),
        E::Timeout { timer } => format!("{} timeout", timer.replace('_', "-")),
        E::CancelSent => "hanging up (CANCEL)".into(),
        E::ByeSent => "hanging up (BYE)".into(),
        E::ByeReceived => "the callee hung up".into(),
        E::Outcome { result } => format!("outcome: {result}"),
        E::InstanceLost => "the instance running the call was lost".into(),
    })
}

fn print_outcome(report: &CallReport, dropped: &DropCounts, format: Format) {
    let mut out = std::io::stdout().lock();
    let method = report.dtmf_method.map(|m| m.as_str());
    match format {
        Format::Json => {
            let dropped: serde_json::Map<String, serde_json::Value> = dropped
                .iter()
                .map(|(r, n)| ((*r).to_string(), (*n).into()))
                .collect();
            let value = serde_json::json!({
                "result": report.result,
                "approved": report.result.approved(),
                "dtmf_method": method,
                "timeline": report.timeline,
                "sip_dropped": dropped,
            });
            let _ = writeln!(out, "{value}");
        }
        Format::Text => {
            let decision = if report.result.approved() {
                "approved"
            } else {
                "not approved"
            };
            let _ = writeln!(out, "{} ({decision})", report.result);
            if let Some(m) = method {
                let _ = writeln!(out, "dtmf method: {m}");
            }
        }
    }
}

/// Warnings (missing prompts, transport errors) to stderr; `RUST_LOG` filters.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
