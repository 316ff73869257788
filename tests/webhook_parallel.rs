//! Webhooks in parallel (issue 9 item 4): a callback host that accepts the TCP connection and
//! never answers holds at most `webhook.per_host_concurrency` attempts, and delays no other
//! host's deliveries. Two real local receivers: one black-holed, one answering.

mod api_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use api_support::*;
use callverify::config::Config;
use callverify::metrics::Metrics;
use callverify::store::{
    Completion, Created, Destination, NewVerification, OutboxState, Store, VerificationId, now_ms,
};
use callverify::webhook::{OutboxWake, OutboxWorker};
use flow::{CallResult, Mode};
use tokio_util::sync::CancellationToken;

/// A host that accepts connections and never says anything; counts what it holds.
struct BlackHole {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl BlackHole {
    async fn start() -> BlackHole {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        BlackHole { addr, accepted }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
}

/// A completed verification whose webhook goes to `url`.
async fn queued_webhook(store: &Arc<dyn Store>, n: usize, url: &str) -> VerificationId {
    let t = now_ms();
    let created = store
        .create(
            NewVerification {
                id: VerificationId::generate(),
                client: "auth".into(),
                destination: Destination::Phone(format!("+120155501{n:02}")),
                extension: None,
                mode: Mode::Standard,
                digits_tag: None,
                language: "en".into(),
                callback_url: Some(url.to_owned()),
                metadata: None,
                created_at: t,
            },
            None,
            false,
            &[],
        )
        .await
        .unwrap();
    let Created::New(v) = created else {
        panic!("{created:?}")
    };
    store
        .complete(
            &v.id,
            Completion {
                result: CallResult::NoAnswer,
                dtmf_method: None,
                timeline: Vec::new(),
            },
            t,
        )
        .await
        .unwrap()
        .unwrap();
    v.id
}

fn config() -> Config {
    let mut cfg = api_support::config();
    cfg.webhook.timeout_secs = 30;
    cfg.webhook.concurrency = 8;
    cfg.webhook.per_host_concurrency = 2;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_answers_delays_no_other_host() {
    let hole = BlackHole::start().await;
    let good = Receiver::start(vec![Answer::Status(200)]).await;
    let store = memory_store().await;
    // The black-holed host's webhooks are queued first: a one-at-a-time worker would sit on
    // them for the whole timeout before the others.
    let mut stuck = Vec::new();
    for n in 0..5 {
        stuck.push(queued_webhook(&store, n, &hole.url()).await);
    }
    let mut fine = Vec::new();
    for n in 10..15 {
        fine.push(queued_webhook(&store, n, &good.url()).await);
    }
    let cfg = config();
    let worker = OutboxWorker::new(&cfg, Arc::clone(&store), Arc::new(Metrics::new())).unwrap();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(worker.run(OutboxWake::new(), stop.clone()));

    assert!(
        good.wait_for(fine.len(), Duration::from_secs(10)).await,
        "the answering host got {} of {}",
        good.count(),
        fine.len()
    );
    let elapsed = started.elapsed();
    println!(
        "5 webhooks to the answering host delivered in {} ms while the other host holds {} connections",
        elapsed.as_millis(),
        hole.accepted.load(Ordering::SeqCst)
    );
    assert!(
        elapsed < Duration::from_secs(cfg.webhook.timeout_secs),
        "delivered only after the black hole's timeout: {elapsed:?}"
    );
    // Every delivery is on record as delivered.
    let deadline = Instant::now() + Duration::from_secs(5);
    for id in &fine {
        loop {
            let outbox = store.outbox(id).await.unwrap();
            if outbox[0].state == OutboxState::Delivered {
                break;
            }
            assert!(Instant::now() < deadline, "{outbox:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The black hole holds exactly its per-host share: two attempts, in parallel; the rest
    // of its webhooks wait their turn, not yet attempted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hole.accepted.load(Ordering::SeqCst), 2);
    let mut untouched = 0;
    for id in &stuck {
        let outbox = store.outbox(id).await.unwrap();
        assert_eq!(outbox[0].state, OutboxState::Pending);
        assert!(outbox[0].attempts.is_empty(), "{outbox:?}");
        // Leased ones have their next attempt pushed past the attempt's timeout.
        if outbox[0].next_attempt_at <= now_ms() {
            untouched += 1;
        }
    }
    assert_eq!(untouched, 3, "two leased, three waiting");
    stop.cancel();
    running.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_host_limit_lets_several_attempts_to_one_host_run_at_once() {
    // A slow host answering in 1.5 s: with 2 at once, 4 webhooks take two rounds, not four.
    let slow = Receiver::start(vec![Answer::Slow(Duration::from_millis(1500))]).await;
    let store = memory_store().await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(queued_webhook(&store, n, &slow.url()).await);
    }
    let cfg = config();
    let worker = OutboxWorker::new(&cfg, Arc::clone(&store), Arc::new(Metrics::new())).unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(OutboxWake::new(), stop.clone()));
    // After the first round has started, two requests are in at once, never more.
    assert!(slow.wait_for(2, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(slow.count(), 2, "at most per_host_concurrency at once");
    assert!(slow.wait_for(4, Duration::from_secs(10)).await);
    stop.cancel();
    // Shutdown waits for the attempts in flight and records them.
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the worker stops after its attempts")
        .unwrap();
    for id in &ids {
        assert_eq!(
            store.outbox(id).await.unwrap()[0].state,
            OutboxState::Delivered
        );
    }
}
