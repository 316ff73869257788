//! The deploy/ folder stays usable: the systemd unit verifies clean with `systemd-analyze
//! verify`, and the two-instance example configurations load (with their secrets from the
//! environment, as the README says) and select PostgreSQL.

use std::path::Path;
use std::process::Command;

use callverify::config::{Config, StoreBackend};

fn deploy() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy"))
}

#[test]
fn the_systemd_unit_verifies_clean() {
    let unit = std::fs::read_to_string(deploy().join("callverify@.service")).unwrap();
    for directive in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "LimitNOFILE=",
    ] {
        assert!(unit.contains(directive), "{directive} missing");
    }
    // systemd-analyze checks that ExecStart exists: point it at the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callverify@a.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/callverify",
            env!("CARGO_BIN_EXE_callverify"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze: {e} (Debian's `systemd` package; scripts/test installs it)")
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");
}

#[test]
fn the_two_instance_example_loads_with_secrets_from_the_environment() {
    let env: Vec<(String, String)> = std::fs::read_to_string(deploy().join("instance.env.example"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let mut listens = Vec::new();
    for name in ["instance-a.toml", "instance-b.toml"] {
        let path = deploy().join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let config =
            Config::from_toml(&text, &path, env.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let StoreBackend::Postgres(pg) = config.store.backend().unwrap() else {
            panic!("{name} does not use PostgreSQL")
        };
        assert_eq!(
            pg.get_password(),
            Some(&b"change-me"[..]),
            "{name}: from the env"
        );
        assert!(
            !format!("{config:?}").contains("change-me"),
            "{name}: secrets print"
        );
        listens.push((config.api.listen, config.sip.listen, config.media.rtp_ports));
    }
    assert_ne!(listens[0].0, listens[1].0, "own API addresses");
    assert_ne!(listens[0].1, listens[1].1, "own SIP addresses");
    assert_ne!(listens[0].2, listens[1].2, "own RTP ports");
}
