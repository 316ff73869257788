//! `callverify call` against baresip 1.0 auto-answering on 127.0.0.1 (recipe in
//! ../shared/peers): `#` in-band from its audio file, and `#` as RFC 4733 (`sndcode`).
//!
//! Ports: baresip SIP 25240+10n (TLS takes the next port), ctrl_tcp 25450+n, RTP 28200+100n..; our RTP 40400+20n.

mod common_peers;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common_peers::*;

/// baresip's configuration directory: auto-answer, G.711 only, audio from `source`.
fn baresip(work: &Work, n: u16, source_keys: bool, certificate: Option<&Path>) -> (Peer, u16, u16) {
    let sip = 25240 + 10 * n;
    let ctrl = 25450 + n;
    let rtp = 28200 + 100 * n;
    let dir = work.path();
    // 30 s of audio (baresip hangs up when its file source ends): '#' at 1.5 s, or silence.
    let wav = dir.join("source.wav");
    let mut sox = Command::new("sox");
    sox.args(["-n", "-r", "8000", "-b", "16", "-c", "1"])
        .arg(&wav);
    if source_keys {
        sox.args([
            "synth", "0.4", "sine", "941", "sine", "1477", "channels", "1", "gain", "-n", "-6",
            "pad", "1.5", "28",
        ]);
    } else {
        sox.args(["trim", "0", "30"]);
    }
    assert!(sox.status().unwrap().success());
    let config = format!(
        "poll_method\t\tepoll\nsip_listen\t\t127.0.0.1:{sip}\nnet_interface\t\t127.0.0.1\n\
         call_local_timeout\t120\ncall_max_calls\t\t4\naudio_path\t\t.\n\
         audio_source\t\taufile,{}\naudio_player\t\taufile,{}\naudio_alert\t\taufile,{}\n\
         rtp_ports\t\t{rtp}-{}\nrtcp_mux\t\tno\njitter_buffer_delay\t5-10\n\
         module_path\t\t/usr/lib/baresip/modules\nmodule\t\t\tg711.so\nmodule\t\t\taufile.so\n\
         module_tmp\t\taccount.so\nmodule_app\t\tmenu.so\nmodule_app\t\tctrl_tcp.so\n\
         ctrl_tcp_listen\t\t127.0.0.1:{ctrl}\n",
        wav.display(),
        dir.join("rx.wav").display(),
        dir.join("rx_alert.wav").display(),
        rtp + 99
    );
    let config = match certificate {
        // TLS listens on the SIP port + 1.
        Some(cert) => format!("{config}sip_certificate\t\t{}\n", cert.display()),
        None => config,
    };
    std::fs::write(dir.join("config"), config).unwrap();
    std::fs::write(
        dir.join("accounts"),
        format!("<sip:peer@127.0.0.1:{sip}>;regint=0;answermode=auto;audio_codecs=pcmu,pcma\n"),
    )
    .unwrap();
    let mut cmd = Command::new("baresip");
    cmd.arg("-f").arg(dir).args(["-v", "-t", "120"]);
    let mut peer = Peer::spawn("baresip", dir, &mut cmd);
    peer.wait_udp(sip);
    assert!(
        wait_for_log(&peer, "baresip is ready", Duration::from_secs(15)),
        "{}",
        peer.log_text()
    );
    (peer, sip, ctrl)
}

/// baresip ctrl_tcp: one netstring-framed JSON command.
fn ctrl(port: u16, command: &str, params: &str) -> String {
    let body = serde_json::json!({"command": command, "params": params, "token": "t1"}).to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("baresip ctrl_tcp");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(format!("{}:{body},", body.len()).as_bytes())
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

fn config(work: &Work, n: u16) -> std::path::PathBuf {
    work.config(40400 + 20 * n, "", "")
}

#[test]
fn baresip_pound_inband() {
    let w = Work::new();
    let (_peer, sip, _) = baresip(&w, 0, true, None);
    let out = call(
        &[&format!("sip:peer@127.0.0.1:{sip}")],
        Some(&config(&w, 0)),
        &[],
    );
    out.assert_in(&w, "confirmed", Some("inband"));
}

#[test]
fn baresip_pound_rfc4733() {
    let w = Work::new();
    let (peer, sip, ctrl_port) = baresip(&w, 1, false, None);
    let log = peer.log.clone();
    let presser = meanwhile(move || {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            let text = std::fs::read_to_string(Path::new(&log)).unwrap_or_default();
            if text.contains("Call established") {
                // Past our guard time after answer, while the prompt plays.
                std::thread::sleep(Duration::from_millis(1500));
                let reply = ctrl(ctrl_port, "sndcode", "#");
                assert!(reply.contains("\"ok\":true"), "{reply}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("baresip never established the call");
    });
    let out = call(
        &[&format!("sip:peer@127.0.0.1:{sip}")],
        Some(&config(&w, 1)),
        &[],
    );
    presser.join().unwrap();
    out.assert_in(&w, "confirmed", Some("rfc4733"));
}

/// A private CA and a certificate for 127.0.0.1 signed by it (openssl): returns the CA file
/// and baresip's certificate + key bundle.
fn certificates(work: &Work) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = work.path();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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

#[test]
fn baresip_over_tls_with_a_private_ca() {
    let w = Work::new();
    let (ca, bundle) = certificates(&w);
    let (_peer, sip, _) = baresip(&w, 2, true, Some(&bundle));
    let target = format!("sip:peer@127.0.0.1:{};transport=tls", sip + 1);
    let cfg = w.config(40440, &format!("tls_ca = \"{}\"", ca.display()), "");
    let out = call(&[&target], Some(&cfg), &[]);
    out.assert_in(&w, "confirmed", Some("inband"));
    // Without the CA the certificate is not trusted: the transport fails, nobody is called.
    let cfg = w.config(40440, "", "");
    let out = call(&[&target], Some(&cfg), &[]);
    out.assert_in(&w, "unreachable", None);
    assert_eq!(out.events("no_response").len(), 1, "{out:#?}");
    assert!(out.events("answered").is_empty());
}
