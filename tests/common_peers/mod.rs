//! Real SIP peers on 127.0.0.1 for the `callverify call` tests (recipes in ../shared/peers):
//! start them in a temporary directory, wait until they listen, run the built binary against
//! them, kill them on drop. Each test uses its own ports, so tests never share a peer.

#![allow(dead_code)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a peer gets to bind its port.
const PEER_START: Duration = Duration::from_secs(15);
/// Longest a whole `callverify call` may take in a test.
pub const CALL_LIMIT: Duration = Duration::from_secs(90);

/// A temporary working directory for one test.
pub struct Work {
    pub dir: tempfile::TempDir,
}

impl Work {
    pub fn new() -> Work {
        Work {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a configuration for `callverify call`: RTP ports `rtp_base..rtp_base+19`,
    /// an empty prompts folder (beeps: the same short prompt in every test), and `extra` TOML
    /// appended (sections `[sip]`, `[call]` …).
    pub fn config(&self, rtp_base: u16, sip: &str, call: &str) -> PathBuf {
        let prompts = self.path().join("prompts");
        std::fs::create_dir_all(&prompts).unwrap();
        let text = format!(
            "[sip]\nlisten = \"127.0.0.1:0\"\nallow_sip_uris = true\n{sip}\n\n\
             [media]\nrtp_ports = \"{rtp_base}-{}\"\nprompts = \"{}\"\n\n[call]\n{call}\n",
            rtp_base + 19,
            prompts.display()
        );
        let path = self.path().join("callverify.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Every log the peers wrote in this directory (the last 6000 characters of each).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let Ok(dir) = std::fs::read_dir(self.path()) else {
            return out;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.ends_with(".log") && !name.ends_with(".out") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: String = {
                let chars: Vec<char> = text.chars().collect();
                chars[chars.len().saturating_sub(6000)..].iter().collect()
            };
            out.push_str(&format!("=== {name}\n{tail}\n"));
        }
        out
    }

    /// Copies a scenario from tests/scenarios, replacing `@NAME@` placeholders.
    pub fn scenario(&self, name: &str, replace: &[(&str, &str)]) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/scenarios")
            .join(name);
        let mut text = std::fs::read_to_string(&src).unwrap();
        for (k, v) in replace {
            text = text.replace(&format!("@{k}@"), v);
        }
        let dst = self.path().join(name);
        std::fs::write(&dst, text).unwrap();
        dst
    }

    /// Raw 8 kHz μ-law with 1.5 s of silence, then each key as a 200 ms DTMF tone (sox, as in
    /// the peers' recipe: two sines mixed, -6 dBFS) followed by 300 ms of silence, then 1 s.
    pub fn keys_ulaw(&self, name: &str, keys: &str) -> PathBuf {
        let dir = self.path();
        let mut parts = vec![silence(dir, "lead", 1.5)];
        for (i, key) in keys.chars().enumerate() {
            let (low, high) = dtmf_pair(key);
            let tone = dir.join(format!("tone{i}.wav"));
            run(Command::new("sox").args([
                "-n",
                "-r",
                "8000",
                "-b",
                "16",
                "-c",
                "1",
                tone.to_str().unwrap(),
                "synth",
                "0.2",
                "sine",
                &low.to_string(),
                "sine",
                &high.to_string(),
                "channels",
                "1",
                "gain",
                "-n",
                "-6",
            ]));
            parts.push(tone);
            parts.push(silence(dir, &format!("gap{i}"), 0.3));
        }
        parts.push(silence(dir, "tail", 1.0));
        let out = dir.join(name);
        let mut cmd = Command::new("sox");
        cmd.args(&parts)
            .args(["-e", "u-law", "-t", "raw"])
            .arg(&out);
        run(&mut cmd);
        out
    }

    /// pound_inband.ulaw by the peers' recipe (tests/scenarios/make_pound_ulaw.sh).
    pub fn pound_ulaw(&self) {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/make_pound_ulaw.sh");
        let mut cmd = Command::new("sh");
        cmd.arg(script)
            .arg("pound_inband.ulaw")
            .current_dir(self.path());
        run(&mut cmd);
    }
}

fn silence(dir: &Path, name: &str, secs: f64) -> PathBuf {
    let path = dir.join(format!("{name}.wav"));
    run(Command::new("sox").args([
        "-n",
        "-r",
        "8000",
        "-c",
        "1",
        "-b",
        "16",
        path.to_str().unwrap(),
        "trim",
        "0",
        &secs.to_string(),
    ]));
    path
}

/// ITU-T Q.23 frequencies of a key.
fn dtmf_pair(key: char) -> (u32, u32) {
    let rows = [697, 770, 852, 941];
    let cols = [1209, 1336, 1477, 1633];
    let (r, c) = match key {
        '1' => (0, 0),
        '2' => (0, 1),
        '3' => (0, 2),
        'A' => (0, 3),
        '4' => (1, 0),
        '5' => (1, 1),
        '6' => (1, 2),
        'B' => (1, 3),
        '7' => (2, 0),
        '8' => (2, 1),
        '9' => (2, 2),
        'C' => (2, 3),
        '*' => (3, 0),
        '0' => (3, 1),
        '#' => (3, 2),
        'D' => (3, 3),
        other => panic!("not a DTMF key: {other}"),
    };
    (rows[r], cols[c])
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A peer process, killed (and reaped) on drop.
pub struct Peer {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Peer {
    /// Starts `cmd` in `dir` with stdout/stderr to `<name>.log`.
    pub fn spawn(name: &str, dir: &Path, cmd: &mut Command) -> Peer {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Peer {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// Waits until something holds UDP `port` on 127.0.0.1 (the peer is listening).
    pub fn wait_udp(&mut self, port: u16) {
        let start = Instant::now();
        while !udp_bound(port) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited early ({status}): {}", self.name, self.log_text());
            }
            assert!(
                start.elapsed() < PEER_START,
                "{} did not bind UDP {port}: {}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `limit` for the peer to exit; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether some socket is bound to UDP `port`, read from the kernel's tables. Probing by
/// binding the port ourselves raced the peer: a peer binding it during our probe's moment
/// failed with EADDRINUSE and exited.
pub fn udp_bound(port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().nth(1))
            .any(|local| local.ends_with(&suffix))
    })
}

/// sipp as callee on `sip_port` (RTP on `media_port`), one call, in `work`'s directory.
pub fn sipp_uas(work: &Work, scenario: &Path, sip_port: u16, media_port: u16) -> Peer {
    let mut cmd = Command::new("sipp");
    cmd.arg("-sf")
        .arg(scenario)
        .args(["-i", "127.0.0.1", "-p", &sip_port.to_string()])
        .args(["-mp", &media_port.to_string()])
        .args(["-m", "1", "-nostdin", "-trace_err", "-trace_msg"])
        // A retransmission arriving while the scenario pauses (a proxy re-sending the INVITE
        // under load, our BYE before the scenario's last pause ends) must not abort the call:
        // the sender retransmits and the scenario takes it when it is ready.
        .arg("-pause_msg_ign");
    let mut peer = Peer::spawn("sipp", work.path(), &mut cmd);
    peer.wait_udp(sip_port);
    peer
}

/// What `callverify call --format json` said.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub json: serde_json::Value,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn result(&self) -> &str {
        self.json["result"].as_str().unwrap_or("")
    }

    pub fn method(&self) -> Option<&str> {
        self.json["dtmf_method"].as_str()
    }

    /// Timeline events named `event`.
    pub fn events(&self, event: &str) -> Vec<&serde_json::Value> {
        self.json["timeline"]
            .as_array()
            .map(|a| a.iter().filter(|e| e["event"] == event).collect())
            .unwrap_or_default()
    }

    /// [`Outcome::assert`], with the peers' logs from `work` in the failure message.
    pub fn assert_in(&self, work: &Work, result: &str, method: Option<&str>) {
        if self.result() != result || self.method() != method {
            panic!(
                "expected {result} by {method:?}, got {} by {:?}\n{self:#?}\n--- peer logs ---\n{}",
                self.result(),
                self.method(),
                work.logs()
            );
        }
        self.assert(result, method);
    }

    /// Asserts result, approval, exit code and the method that carried the keys.
    pub fn assert(&self, result: &str, method: Option<&str>) {
        assert_eq!(self.result(), result, "{self:#?}");
        let approved = result == "confirmed";
        assert_eq!(self.json["approved"], approved, "{self:#?}");
        assert_eq!(self.code, if approved { 0 } else { 1 }, "{self:#?}");
        assert_eq!(self.method(), method, "{self:#?}");
    }
}

/// Runs `callverify call <args> --format json` (config and environment as given).
pub fn call(args: &[&str], config: Option<&Path>, env: &[(&str, &str)]) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callverify"));
    cmd.arg("call").args(args).args(["--format", "json"]);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Never inherit an operator's overrides into a test.
    for (k, _) in std::env::vars() {
        if k.starts_with("CALLVERIFY_") && !env.iter().any(|(e, _)| *e == k) {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "warn");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("callverify binary");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > CALL_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "callverify call did not finish in {CALL_LIMIT:?}: {}",
                err_thread.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    let json = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    Outcome {
        code: status.code().unwrap_or(-1),
        json,
        stdout,
        stderr,
    }
}

/// Waits until `path` (a peer's log) contains `needle`.
pub fn wait_for_log(peer: &Peer, needle: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if peer.log_text().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Runs `f` on a thread while the call runs (e.g. to press a key on a softphone once the
/// call is up).
pub fn meanwhile<F: FnOnce() + Send + 'static>(f: F) -> std::thread::JoinHandle<()> {
    std::thread::spawn(f)
}

/// A private CA and a certificate for 127.0.0.1 signed by it (openssl), in `work`: returns the
/// CA file (for `sip.tls_ca`) and the certificate + key bundle (for the peer).
pub fn certificates(work: &Work) -> (PathBuf, PathBuf) {
    let dir = work.path();
    let openssl = |args: &[&str]| {
        let mut cmd = Command::new("openssl");
        cmd.args(args).current_dir(dir);
        run(&mut cmd);
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=callverify test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let mut bundle = std::fs::read(dir.join("leaf.pem")).unwrap();
    bundle.extend(std::fs::read(dir.join("leaf.key")).unwrap());
    std::fs::write(dir.join("bundle.pem"), bundle).unwrap();
    (dir.join("ca.pem"), dir.join("bundle.pem"))
}
