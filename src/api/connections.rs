//! HTTP connections (issue 8 item 5): who gets served when strangers hold sockets open.
//!
//! `axum::serve` accepts without bound and waits forever for a request head. Here every
//! connection needs a slot (`api.max_connections`) and a descriptor ([`FdBudget`]); a request
//! head must arrive within `api.header_read_timeout_secs` of the connection being ready for it
//! (hyper's timer, which also runs while a kept-alive connection waits for its next request:
//! the idle timeout), and its body within `api.body_read_timeout_secs`. When every slot is
//! taken, the connection that has been idle longest (no request in flight: dribbling a head,
//! or kept alive) is closed to make room, so a stranger holding hundreds of slow or idle
//! connections delays a genuine request by microseconds, not by a timeout. Connections busy
//! with a request are never shed; when all are, a new one waits a moment, then is refused.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::fds::{FdBudget, FdPermit};
use crate::metrics::Metrics;

/// How long a new connection may wait for a slot when every connection is busy.
const ADMIT_WAIT: Duration = Duration::from_secs(1);
/// After an accept error (the descriptor limit reached despite the budget), pause before the
/// next accept instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// A connection is never shed younger than this: it gets the time to send its request. This
/// also bounds how fast a flood of reconnecting strangers churns the slots (at most
/// `max_connections` per this interval), so the acceptor and the descriptors keep up.
const MIN_AGE_TO_SHED: Duration = Duration::from_millis(300);
/// At shutdown, how long connections get to finish their requests.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// Limits of the HTTP server.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
}

/// One open connection, as the acceptor sees it.
struct Open {
    /// Requests in flight (a response body not yet fully sent counts).
    busy: Arc<AtomicUsize>,
    /// Fired to shed the connection.
    shed: CancellationToken,
    /// When it was admitted.
    since: tokio::time::Instant,
}

/// What shedding did.
enum Shed {
    /// A connection was shed.
    Done,
    /// The oldest idle connection may be shed from this instant on.
    TooYoung(tokio::time::Instant),
    /// Every connection is busy with a request.
    AllBusy,
}

/// The open connections, oldest first (ids increase).
#[derive(Default)]
struct Registry {
    open: Mutex<BTreeMap<u64, Open>>,
    /// Signalled whenever a connection ends.
    closed: Notify,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Open>> {
        // Only inserts and removes happen under the lock: never left half-done.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sheds the connection idle the longest, if it is at least [`MIN_AGE_TO_SHED`] old: it
    /// leaves the registry at once (its slot is free for the newcomer; its task closes the
    /// socket a moment later).
    fn shed_oldest_idle(open: &mut BTreeMap<u64, Open>, now: tokio::time::Instant) -> Shed {
        let Some((id, since)) = open
            .iter()
            .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
            .map(|(id, c)| (*id, c.since))
        else {
            return Shed::AllBusy;
        };
        if since + MIN_AGE_TO_SHED > now {
            return Shed::TooYoung(since + MIN_AGE_TO_SHED);
        }
        if let Some(c) = open.remove(&id) {
            c.shed.cancel();
        }
        Shed::Done
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    budget: FdBudget,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry::default());
    let mut tasks = JoinSet::new();
    let mut next_id: u64 = 0;
    loop {
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    metrics.http_accept_error();
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let id = next_id;
        next_id += 1;
        let busy = Arc::new(AtomicUsize::new(0));
        let shed = CancellationToken::new();
        let open = Open {
            busy: Arc::clone(&busy),
            shed: shed.clone(),
            since: tokio::time::Instant::now(),
        };
        let admitted = admit(
            id,
            open,
            limits.max_connections,
            &budget,
            &registry,
            &metrics,
        );
        let Some(fd) = admitted.await else {
            metrics.http_refused();
            tracing::debug!(%peer, "HTTP connection refused: every connection is busy");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        metrics.http_opened();
        let connection = Connection {
            router: router.clone(),
            limits: limits.clone(),
            busy,
            shed,
            shutdown: shutdown.clone(),
        };
        let registry = Arc::clone(&registry);
        let metrics = Arc::clone(&metrics);
        tasks.spawn(async move {
            connection.run(stream).await;
            registry.lock().remove(&id);
            drop(fd);
            metrics.http_closed();
            registry.closed.notify_one();
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_DRAIN, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            "HTTP connections still open after the drain: closed"
        );
        tasks.abort_all();
    }
    Ok(())
}

/// Registers connection `id` with a descriptor: at once when a slot and a descriptor are
/// free, or after shedding the connection idle the longest (whose slot it takes over at
/// once), or `None` when every connection stayed busy for [`ADMIT_WAIT`]. Admission never
/// waits for a shed connection's task unless descriptors, not slots, are short.
async fn admit(
    id: u64,
    open: Open,
    max_connections: usize,
    budget: &FdBudget,
    registry: &Registry,
    metrics: &Metrics,
) -> Option<FdPermit> {
    let deadline = tokio::time::Instant::now() + ADMIT_WAIT;
    let mut open = Some(open);
    loop {
        // Registered before trying, so a close in between is not missed.
        let closed = registry.closed.notified();
        let mut wake = deadline;
        {
            let mut registered = registry.lock();
            let now = tokio::time::Instant::now();
            let shed = |registered: &mut BTreeMap<u64, Open>, wake: &mut _| {
                match Registry::shed_oldest_idle(registered, now) {
                    Shed::Done => {
                        metrics.http_shed();
                        true
                    }
                    Shed::TooYoung(at) => {
                        *wake = at.min(deadline);
                        false
                    }
                    Shed::AllBusy => false,
                }
            };
            let shed_now = registered.len() >= max_connections && shed(&mut registered, &mut wake);
            if registered.len() < max_connections {
                match budget.try_acquire() {
                    Some(fd) => {
                        let mut open = open.take()?;
                        open.since = now;
                        registered.insert(id, open);
                        return Some(fd);
                    }
                    // Slots left, descriptors not: only a closing connection gives one back.
                    None => {
                        if !shed_now {
                            shed(&mut registered, &mut wake);
                        }
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::select! {
            _ = closed => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// One accepted connection.
struct Connection {
    router: Router,
    limits: Limits,
    busy: Arc<AtomicUsize>,
    shed: CancellationToken,
    shutdown: CancellationToken,
}

impl Connection {
    async fn run(self, stream: tokio::net::TcpStream) {
        let router = self.router;
        let busy = Arc::clone(&self.busy);
        let body_timeout = self.limits.body_read_timeout;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let guard = InFlight::new(Arc::clone(&busy));
            let request = request.map(|body| Body::new(TimedBody::new(body, body_timeout)));
            let router = router.clone();
            async move {
                let response = match router.oneshot(request).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| GuardedBody {
                    body,
                    _guard: guard,
                }))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let stop = tokio::select! {
            _ = conn.as_mut() => return,
            _ = self.shed.cancelled() => self.busy.load(Ordering::Acquire) > 0,
            _ = self.shutdown.cancelled() => true,
        };
        if stop {
            // A request is in flight (or we are shutting down): let it finish, then close.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
        // Otherwise dropping the connection closes it: no request was being handled.
    }
}

/// Counts a request as in flight until its response body is dropped (sent, or the
/// connection gone).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(busy: Arc<AtomicUsize>) -> InFlight {
        busy.fetch_add(1, Ordering::AcqRel);
        InFlight(busy)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight.
struct GuardedBody {
    body: Body,
    _guard: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The request body did not arrive within `api.body_read_timeout_secs`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(Duration);

/// A request body with a deadline, counted from the request head.
struct TimedBody {
    body: Incoming,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(body: Incoming, limit: Duration) -> TimedBody {
        TimedBody {
            body,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(self.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
