//! Secrets at rest (issue 8 item 7): a pin-mode verification calls a real sipp callee that
//! rings; every file of the SQLite store (database, `-wal`, `-shm`) is searched for the PIN
//! while the phone rings and after the verification is cancelled: it is never there. What is
//! stored instead (the PIN's keyed tag) is there while it rings and gone after the cancel
//! (cleared, `secure_delete`, WAL truncated), and the idempotency fingerprint is not a plain
//! hash of the body that held the PIN.
//!
//! Ports: sipp SIP 31101, sipp RTP 54000, our RTP 54100-54119.

mod api_support;
mod common_peers;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api_support::*;
use axum::http::Method;
use callverify::config::Secret;
use callverify::secrets::{StoreKey, key_file_for};
use callverify::service::Service;
use common_peers::{Work, sipp_uas};
use sha2::Digest as _;

/// 12 digits that appear nowhere else (not in ids, times or phone numbers).
const PIN: &str = "739184620573";

fn store_files(db: &Path) -> Vec<PathBuf> {
    let name = db.file_name().unwrap().to_string_lossy().to_string();
    let mut files: Vec<PathBuf> = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy();
            f.starts_with(&name) && !f.ends_with(".key")
        })
        .collect();
    files.sort();
    files
}

/// The store files that contain `needle`.
fn holding(db: &Path, needle: &[u8]) -> Vec<String> {
    store_files(db)
        .into_iter()
        .filter(|f| {
            let bytes = std::fs::read(f).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
        .map(|f| f.file_name().unwrap().to_string_lossy().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pin_is_in_no_store_file_while_ringing_or_after_cancel() {
    let w = Work::new();
    let scenario = w.scenario("uas_ring_forever.xml", &[]);
    let mut sipp = sipp_uas(&w, &scenario, 31101, 54000);
    let prompts = w.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    let db = w.path().join("callverify.db");
    let mut cfg = config_with(&format!(
        "[sip]\nlisten = \"127.0.0.1:0\"\ntrunk = \"sip:127.0.0.1:31101\"\n\n\
         [media]\nrtp_ports = \"54100-54119\"\nprompts = \"{}\"\n",
        prompts.display()
    ));
    cfg.store.url = callverify::config::Secret::new(format!("sqlite://{}", db.display()));
    let placer = callverify::runtime::call_placer(&cfg).expect("the SIP runtime starts");
    let service = Service::open(cfg, placer).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = service.start_on(listener).await.unwrap();
    let router = callverify::api::app(running.state().clone());

    let body = format!(r#"{{"phone_number":"{US_NUMBER}","mode":"pin","pin":"{PIN}"}}"#);
    let created = send(
        &router,
        Method::POST,
        "/v1/verifications",
        Some(KEY),
        &[("idempotency-key", "login-pin-1")],
        Some(&body),
    )
    .await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.text);
    assert!(!created.text.contains(PIN));
    let id = created.json["id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    loop {
        let r = get(&router, &id).await;
        if r.json["status"] == "ringing" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never rang: {}\n{}",
            r.text,
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // What is stored instead of the PIN: its tag under the key kept next to the database.
    let key = StoreKey::from_file(&key_file_for(&db)).unwrap();
    let tag = key.seal("auth", US_NUMBER, &Secret::new(PIN)).unwrap();
    let tag_hex = hex::encode(tag.to_bytes());
    // A plain SHA-256 of the body (what an idempotency fingerprint used to be) would let a
    // reader brute-force the PIN.
    let plain = hex::encode(sha2::Sha256::digest(
        format!(r#"{{"mode":"pin","phone_number":"{US_NUMBER}","pin":"{PIN}"}}"#).as_bytes(),
    ));

    let files: Vec<String> = store_files(&db)
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("-wal")),
        "WAL mode: {files:?}"
    );
    assert!(
        !holding(&db, id.as_bytes()).is_empty(),
        "the search sees the stored record"
    );
    assert_eq!(
        holding(&db, PIN.as_bytes()),
        Vec::<String>::new(),
        "PIN while ringing"
    );
    assert!(
        !holding(&db, tag_hex.as_bytes()).is_empty(),
        "the tag is stored while the call rings"
    );
    assert_eq!(holding(&db, plain.as_bytes()), Vec::<String>::new());

    let r = send(
        &router,
        Method::DELETE,
        &format!("/v1/verifications/{id}"),
        Some(KEY),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.text);
    let r = get(&router, &format!("{id}?wait=20")).await;
    assert_eq!(r.json["result"], "cancelled", "{}", r.text);

    for f in store_files(&db) {
        println!(
            "{}: {} bytes",
            f.file_name().unwrap().to_string_lossy(),
            std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0)
        );
    }
    assert_eq!(
        holding(&db, PIN.as_bytes()),
        Vec::<String>::new(),
        "PIN after cancel"
    );
    assert_eq!(
        holding(&db, tag_hex.as_bytes()),
        Vec::<String>::new(),
        "the tag is gone from every file after cancel (cleared, zeroed, WAL truncated)"
    );
    assert_eq!(holding(&db, plain.as_bytes()), Vec::<String>::new());
    // sipp saw the CANCEL and finished its scenario.
    let status = tokio::task::spawn_blocking(move || {
        let s = sipp.wait_exit(Duration::from_secs(10));
        (s, sipp.log_text())
    })
    .await
    .unwrap();
    assert!(status.0.is_some_and(|s| s.success()), "{}", status.1);
    running.shutdown().await.unwrap();
}
