//! What a browser sends the hosted sign-in page (cookie header, form bodies, typed codes):
//! never panic; whatever parses has the shape promised. The parser file is included as it is
//! (it needs only std and `url`).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../src/signin/input.rs"]
#[allow(dead_code)]
mod input;

fuzz_target!(|data: &[u8]| {
    if let Ok(form) = input::parse_form(data) {
        for value in [&form.csrf, &form.code, &form.method_id].into_iter().flatten() {
            assert!(value.len() <= input::FORM_MAX_BYTES);
        }
        if let Some(code) = form.code.as_deref().and_then(input::six_digits) {
            assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()));
        }
    }
    let text = String::from_utf8_lossy(data);
    let headers: Vec<&str> = text.split('\n').collect();
    if let Some(token) = input::session_cookie(headers.iter().copied()) {
        assert!(input::is_token(token));
    }
});
