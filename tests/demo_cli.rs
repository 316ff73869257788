//! `callverify demo` as a newcomer runs it: the whole product on loopback, no trunk. Every
//! phone behaviour reaches its outcome, and the webhook verifies (the demo exits 0 only then).

use std::process::Command;

fn demo(phone: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callverify"))
        .args(["demo", "--phone", phone])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn assert_demo(phone: &str, outcome: &str, method: &str) {
    let (code, text) = demo(phone);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("Outcome: {outcome},")), "{text}");
    assert!(text.contains(&format!("DTMF by {method}")), "{text}");
    assert!(text.contains("signature verified"), "{text}");
    assert!(!text.contains("BUT IT DIFFERS"), "{text}");
}

#[test]
fn the_phone_presses_pound_and_the_sign_in_is_confirmed() {
    assert_demo("confirm", "confirmed (approved: true)", "inband");
}

#[test]
fn the_phone_reports_fraud() {
    assert_demo("fraud", "fraud_reported (approved: false)", "inband");
}

#[test]
fn a_silent_phone_ends_with_no_input() {
    assert_demo("silent", "no_input (approved: false)", "-");
}

#[test]
fn a_busy_phone_ends_busy() {
    assert_demo("busy", "busy (approved: false)", "-");
}

#[test]
fn an_authenticator_app_code_signs_in() {
    let out = Command::new(env!("CARGO_BIN_EXE_callverify"))
        .args(["demo", "--method", "code"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("otpauth://totp/callverify:alice%40example.com?secret="),
        "{text}"
    );
    assert!(
        text.contains("Outcome: confirmed (approved: true), by \"app_code\""),
        "{text}"
    );
    assert!(text.contains("signature verified"), "{text}");
    assert!(!text.contains("BUT IT DIFFERS"), "{text}");
}
