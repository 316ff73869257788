//! The whole service put together, as `serve` runs it: store (recovered), HTTP API, dialer,
//! webhook outbox worker and, on a shared store, the cluster heartbeat and notifications, with
//! an orderly shutdown. Tests and `demo` start it the same way with their own [`CallPlacer`]
//! and store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::connections::{self, Limits};
use crate::api::{AppState, app};
use crate::call::CallPlacer;
use crate::cluster::Cluster;
use crate::config::{Config, ConfigError};
use crate::dialer::Dialer;
use crate::fds::FdBudget;
use crate::secrets::{SecretKeyError, StoreKey};
use crate::store::{self, InstanceId, Recovery, Store, StoreError, now_ms};
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
    #[error(transparent)]
    SecretKey(#[from] SecretKeyError),
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
    budget: Option<FdBudget>,
}

impl Service {
    /// Opens the store that `store.url` names (as a new instance of the cluster, on a shared
    /// store), recovers it, builds the state.
    pub async fn open(
        config: Config,
        placer: Arc<dyn CallPlacer>,
    ) -> Result<Service, ServiceError> {
        let instance = InstanceId::generate();
        let store = store::open(&config.store, webhook::payload, instance).await?;
        Service::with_store(config, store, placer).await
    }

    /// The same over a store the caller opened (tests, the demo's in-memory store). The
    /// store secret key comes from `store.secret_key`, else the key file of `store.url`'s
    /// SQLite file, else is random (`crate::secrets`).
    pub async fn with_store(
        config: Config,
        store: Arc<dyn Store>,
        placer: Arc<dyn CallPlacer>,
    ) -> Result<Service, ServiceError> {
        let key = StoreKey::load(&config.store)?;
        let recovery = store.recover(now_ms()).await?;
        if recovery != Recovery::default() {
            tracing::warn!(
                calls_failed = recovery.calls_failed,
                webhooks_released = recovery.webhooks_released,
                queued = recovery.queued,
                "recovered from the previous run"
            );
        }
        let state = AppState::new(config, store, key)?;
        // Refuse to start with a seal key that cannot open the stored method secrets.
        state.signin.check_sealing_key().await?;
        for _ in 0..recovery.calls_failed {
            state.metrics.completed(flow::CallResult::Failed, None);
        }
        Ok(Service {
            state,
            placer,
            recovery,
            budget: None,
        })
    }

    /// Connections take their descriptors from `budget` (shared with the SIP runtime's
    /// acceptors); without it, [`Service::start_on`] makes one for the process
    /// ([`FdBudget::for_process`]).
    pub fn with_fd_budget(mut self, budget: FdBudget) -> Service {
        self.budget = Some(budget);
        self
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
        let listener = listen(addr).map_err(|source| ServiceError::Bind { addr, source })?;
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
            state.secrets.digits_key(),
        );
        let shutdown = state.shutdown.clone();
        let outbox_stop = CancellationToken::new();
        let budget = self
            .budget
            .unwrap_or_else(|| FdBudget::for_process(&config));
        let limits = Limits {
            max_connections: config.api.max_connections,
            header_read_timeout: Duration::from_secs(config.api.header_read_timeout_secs),
            body_read_timeout: Duration::from_secs(config.api.body_read_timeout_secs),
        };
        let cluster_stop = CancellationToken::new();
        let cluster = Cluster::new(
            Arc::clone(&state.store),
            config.cluster.clone(),
            state.dialer.clone(),
            state.completions.clone(),
            state.outbox.clone(),
            Arc::clone(&state.metrics),
        )
        .map(|c| tokio::spawn(c.run(cluster_stop.clone())));
        let http = tokio::spawn(connections::serve(
            listener,
            app(state.clone()),
            limits,
            budget,
            Arc::clone(&state.metrics),
            shutdown.clone(),
        ));
        let grace = Duration::from_secs(config.api.shutdown_grace_secs);
        let dialer = tokio::spawn(dialer.run(shutdown.clone(), grace));
        let outbox = tokio::spawn(worker.run(state.outbox.clone(), outbox_stop.clone()));
        // Expires verifications waiting for their user; starts calls after a method switch.
        tokio::spawn(state.signin.clone().run_sweeper(shutdown.clone()));
        let instance = state.store.shared().map(|s| s.instance().to_string());
        tracing::info!(%addr, channels = config.sip.channels, instance, "callverify listening");
        Ok(Running {
            addr,
            state,
            outbox_stop,
            cluster_stop,
            http,
            dialer,
            outbox,
            cluster,
        })
    }
}

/// Pending connections the kernel may queue for the API before it drops handshakes: under a
/// connection flood the acceptor sheds strangers quickly, and a long queue keeps a genuine
/// client's handshake from being dropped (and retried a second later) meanwhile. The kernel
/// caps it at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the API's listening socket (address reuse as `TcpListener::bind` does, a deeper
/// backlog).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A started service.
pub struct Running {
    addr: SocketAddr,
    state: AppState,
    outbox_stop: CancellationToken,
    cluster_stop: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    dialer: JoinHandle<()>,
    outbox: JoinHandle<()>,
    /// Heartbeat and notifications, on a shared store.
    cluster: Option<JoinHandle<()>>,
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
    /// delivered stays in the outbox for the next start (or, on a shared store, for the other
    /// instances: this one leaves the cluster last, releasing its webhook leases).
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
        self.cluster_stop.cancel();
        if let Some(cluster) = self.cluster {
            cluster.await?;
        }
        tracing::info!("stopped");
        http.map_err(ServiceError::Http)
    }
}
