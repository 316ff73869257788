//! `callverify serve [--config FILE]`: the verification service (DESIGN.md "CLI").

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;
use crate::fds::FdBudget;
use crate::runtime::counted_call_placer;
use crate::service::{Service, ServiceError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML); `CALLVERIFY_<SECTION>__<KEY>` variables override it.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> ExitCode {
    init_logging();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("callverify serve: {e}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    if config.sip.trunk.trim().is_empty() && !config.sip.allow_sip_uris {
        eprintln!(
            "callverify serve: configuration key `sip.trunk` is empty: every call goes through the \
             trunk (set sip.trunk, or sip.allow_sip_uris for SIP URI destinations only)"
        );
        return ExitCode::from(super::EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callverify serve: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(
            e @ (ServiceError::Config(_)
            | ServiceError::Bind { .. }
            | ServiceError::Runtime(_)
            | ServiceError::SecretKey(_)),
        ) => {
            eprintln!("callverify serve: {e}");
            ExitCode::from(super::EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("callverify serve: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), ServiceError> {
    // First: raise the open-files limit and count what is open before anything binds.
    let budget = FdBudget::for_process(&config);
    let (placer, sip_counters) = counted_call_placer(&config)?;
    let service = Service::open(config, placer).await?.with_fd_budget(budget);
    service.state().metrics.attach_sip(sip_counters);
    let running = service.start().await?;
    shutdown_signal().await;
    running.shutdown().await
}

/// SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}

/// Logs to stderr; `RUST_LOG` filters (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
