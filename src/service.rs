//! The whole service put together, as `serve` runs it: store (recovered), HTTP API, dialer and
//! webhook outbox worker, with an orderly shutdown. Tests and `demo` start it the same way
//! with their own [`CallPlacer`] and store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, app};
use crate::call::CallPlacer;
use crate::config::{Config, ConfigError};
use crate::dialer::Dialer;
use crate::store::{self, Recovery, Store, StoreError, now_ms};
use crate::webhook::{self, OutboxWorker, WebhookError};

/// After the dialer settled, how long the outbox worker may finish its current attempt.
const OUTBOX_STOP_GRACE: Duration = Duration::from_secs(20);

/// Why the service could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("a service task panicked: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the SIP runtime cannot start: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
}

/// A service ready to start: the store is open and recovered.
pub struct Service {
    state: AppState,
    placer: Arc<dyn CallPlacer>,
    recovery: Recovery,
}

impl Service {
    /// Opens the store that `store.url` names, recovers it, builds the state.
    pub async fn open(
        config: Config,
        placer: Arc<dyn CallPlacer>,
    ) -> Result<Service, ServiceError> {
        let store = store::open(&config.store, webhook::payload).await?;
        Service::with_store(config, store, placer).await
    }

    /// The same over a store the caller opened (tests, the demo's in-memory store).
    pub async fn with_store(
        config: Config,
        store: Arc<dyn Store>,
        placer: Arc<dyn CallPlacer>,
    ) -> Result<Service, ServiceError> {
        let recovery = store.recover(now_ms()).await?;
        if recovery != Recovery::default() {
            tracing::warn!(
                calls_failed = recovery.calls_failed,
                webhooks_released = recovery.webhooks_released,
                queued = recovery.queued,
                "recovered from the previous run"
            );
        }
        let state = AppState::new(config, store)?;
        // Refuse to start with a seal key that cannot open the stored method secrets.
        state.signin.check_sealing_key().await?;
        for _ in 0..recovery.calls_failed {
            state.metrics.completed(flow::CallResult::Failed, None);
        }
        Ok(Service {
            state,
            placer,
            recovery,
        })
    }

    /// What startup recovery did.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Listens on `api.listen` and starts.
    pub async fn start(self) -> Result<Running, ServiceError> {
        let addr = self.state.config.api.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServiceError::Bind { addr, source })?;
        self.start_on(listener).await
    }

    /// Starts the API on `listener`, the dialer and the outbox worker.
    pub async fn start_on(self, listener: TcpListener) -> Result<Running, ServiceError> {
        let state = self.state;
        let config = Arc::clone(&state.config);
        let addr = listener.local_addr().map_err(ServiceError::Http)?;
        let worker = OutboxWorker::new(
            &config,
            Arc::clone(&state.store),
            Arc::clone(&state.metrics),
        )?;
        let dialer = Dialer::new(
            &config,
            Arc::clone(&state.store),
            self.placer,
            state.dialer.clone(),
            Arc::clone(&state.metrics),
            state.completions.clone(),
            state.outbox.clone(),
        );
        let shutdown = state.shutdown.clone();
        let outbox_stop = CancellationToken::new();
        let http = tokio::spawn(
            axum::serve(listener, app(state.clone()))
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .into_future(),
        );
        let grace = Duration::from_secs(config.api.shutdown_grace_secs);
        let dialer = tokio::spawn(dialer.run(shutdown.clone(), grace));
        let outbox = tokio::spawn(worker.run(state.outbox.clone(), outbox_stop.clone()));
        // Expires verifications waiting for their user; starts calls after a method switch.
        tokio::spawn(state.signin.clone().run_sweeper(shutdown.clone()));
        tracing::info!(%addr, channels = config.sip.channels, "callverify listening");
        Ok(Running {
            addr,
            state,
            outbox_stop,
            http,
            dialer,
            outbox,
        })
    }
}

/// A started service.
pub struct Running {
    addr: SocketAddr,
    state: AppState,
    outbox_stop: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    dialer: JoinHandle<()>,
    outbox: JoinHandle<()>,
}

impl Running {
    /// Where the API listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops taking work (the API closes, the dialer claims nothing more), lets calls in
    /// flight finish within `api.shutdown_grace_secs` (then hangs them up), persists their
    /// outcomes, and stops the outbox worker after its current attempt. Everything not
    /// delivered stays in the outbox for the next start.
    pub async fn shutdown(self) -> Result<(), ServiceError> {
        tracing::info!("shutting down");
        self.state.shutdown.cancel();
        let http = self.http.await?;
        self.dialer.await?;
        self.outbox_stop.cancel();
        if tokio::time::timeout(OUTBOX_STOP_GRACE, self.outbox)
            .await
            .is_err()
        {
            tracing::warn!(
                "outbox worker still busy at shutdown; its message stays leased until the next start"
            );
        }
        tracing::info!("stopped");
        http.map_err(ServiceError::Http)
    }
}
