//! Shared by the sign-in tests: a signing key, the independent authenticator (oathtool) and
//! the accessibility smoke check of the sign-in page's markup.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

use callverify::store::now_ms;

use ed25519_dalek::pkcs8::EncodePrivateKey;

/// A signing key in PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes one.
pub fn signing_pem() -> String {
    ed25519_dalek::SigningKey::from_bytes(&[42; 32])
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap()
        .to_string()
}

/// The code Debian's oathtool computes for `secret` at `unix` seconds.
pub fn oathtool(secret: &str, unix: i64) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "-b", secret, "-N", &format!("@{unix}")])
        .output()
        .expect("oathtool is installed (apt-get install oathtool; scripts/test does it)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The accessibility and CSP smoke: a lang attribute, a heading, a live status region, every
/// visible input labelled, no inline script or style.
pub fn assert_accessible(html: &str) {
    assert!(html.contains("<html lang=\""), "lang attribute");
    assert!(html.contains("<h1>"), "a heading");
    assert!(html.contains(r#"role="status""#) && html.contains(r#"aria-live="polite""#));
    for input in html.split("<input").skip(1) {
        let tag = &input[..input.find('>').unwrap()];
        if tag.contains(r#"type="hidden""#) {
            continue;
        }
        let id = tag
            .split(r#"id=""#)
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("input has an id");
        assert!(
            html.contains(&format!(r#"<label for="{id}">"#)),
            "input {id} has a label"
        );
    }
    assert!(!html.contains("style="), "no inline style attribute");
    assert!(!html.contains("<style"), "no style element");
    for script in html.split("<script").skip(1) {
        let tag = &script[..script.find('>').unwrap()];
        assert!(
            tag.contains("src=\"/prompt/assets/"),
            "only scripts from 'self': {tag}"
        );
        assert!(
            script[script.find('>').unwrap() + 1..].starts_with("</script>"),
            "no inline script"
        );
    }
    assert!(
        !html.contains(" on") || !html.contains("onclick="),
        "no inline handlers"
    );
}

/// Now, in seconds, at least 5 s away from the next 30-second step boundary (so a code
/// computed for "step + k" is still that step when it arrives).
pub async fn steady_now() -> i64 {
    loop {
        let now = now_ms() / 1000;
        if now % 30 < 25 {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
