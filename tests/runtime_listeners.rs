//! What the SIP runtime listens on (issue 8 item 1: no UDP when the trunk is TLS-only): the
//! sockets a `Runtime` opens, read from /proc/self/fd and /proc/net. One test in its own
//! process, so that no other test's sockets are counted.

use std::collections::HashSet;

use callverify::config::Config;
use callverify::runtime::{Runtime, RuntimeConfig};

/// Inodes of the sockets this process holds.
fn sockets() -> HashSet<u64> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// The inodes listed in a /proc/net table (udp, tcp, …).
fn table(name: &str) -> HashSet<u64> {
    let text = std::fs::read_to_string(format!("/proc/net/{name}")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(9)?.parse().ok())
        .collect()
}

/// (UDP, TCP) sockets a runtime for `trunk` opens.
fn opened(trunk: &str) -> (usize, usize, Runtime) {
    let prompts = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.sip.listen = "127.0.0.1:0".parse().unwrap();
    config.sip.trunk = trunk.to_string();
    config.media.prompts = prompts.path().to_path_buf();
    let before = sockets();
    let runtime = Runtime::start(RuntimeConfig::from_config(&config).unwrap()).unwrap();
    let new: HashSet<u64> = sockets().difference(&before).copied().collect();
    let udp: HashSet<u64> = table("udp").union(&table("udp6")).copied().collect();
    let tcp: HashSet<u64> = table("tcp").union(&table("tcp6")).copied().collect();
    (
        new.intersection(&udp).count(),
        new.intersection(&tcp).count(),
        runtime,
    )
}

#[tokio::test(flavor = "current_thread")]
async fn nothing_listens_with_a_tls_only_trunk() {
    let (udp, tcp, tls) = opened("sip:127.0.0.1:31097;transport=tls");
    assert_eq!(
        (udp, tcp),
        (0, 0),
        "a TLS-only trunk: no UDP, no TCP listener"
    );
    drop(tls);
    let (udp, tcp, _plain) = opened("sip:127.0.0.1:31097");
    assert_eq!(
        (udp, tcp),
        (1, 1),
        "a UDP trunk: the SIP socket and the TCP listener"
    );
}
