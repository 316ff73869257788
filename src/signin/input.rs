//! What a browser sends the sign-in page, parsed strictly: the session cookie and the
//! `application/x-www-form-urlencoded` bodies of its two forms. Std and `url` only, so the
//! fuzz target includes this file as it is (fuzz/fuzz_targets/signin_input.rs).

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "cv_session";
/// Length of a browser token: 32 bytes in base64url without padding.
pub const TOKEN_LEN: usize = 43;
/// Largest form body read, in bytes (a code, a method id and a CSRF token fit in 200).
pub const FORM_MAX_BYTES: usize = 2048;
/// Longest single field value.
const FIELD_MAX_LEN: usize = 128;

/// Whether `s` has the exact shape of a token we issue (base64url, 43 characters).
pub fn is_token(s: &str) -> bool {
    s.len() == TOKEN_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The session token from `Cookie` header values. Several `cv_session` cookies (or one of
/// the wrong shape) give nothing: the page then asks for a new link.
pub fn session_cookie<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut found = None;
    for header in headers {
        for pair in header.split(';') {
            let Some((name, value)) = pair.trim().split_once('=') else {
                continue;
            };
            if name.trim() == SESSION_COOKIE {
                if found.is_some() {
                    return None;
                }
                found = Some(value.trim());
            }
        }
    }
    found.filter(|v| is_token(v))
}

/// The fields of the page's forms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Form {
    pub csrf: Option<String>,
    pub code: Option<String>,
    pub method_id: Option<String>,
}

/// Why a form body was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum FormError {
    TooLarge,
    /// A field twice, or a value longer than any we expect.
    Malformed,
}

impl std::fmt::Display for FormError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FormError::TooLarge => "form body too large",
            FormError::Malformed => "malformed form body",
        })
    }
}

/// Parses a form body; fields other than ours are ignored.
pub fn parse_form(body: &[u8]) -> Result<Form, FormError> {
    if body.len() > FORM_MAX_BYTES {
        return Err(FormError::TooLarge);
    }
    let mut form = Form::default();
    for (key, value) in url::form_urlencoded::parse(body) {
        let slot = match key.as_ref() {
            "csrf" => &mut form.csrf,
            "code" => &mut form.code,
            "method_id" => &mut form.method_id,
            _ => continue,
        };
        if slot.is_some() || value.len() > FIELD_MAX_LEN {
            return Err(FormError::Malformed);
        }
        *slot = Some(value.into_owned());
    }
    Ok(form)
}

/// Exactly six ASCII digits after trimming spaces (a TOTP code as typed or pasted).
pub fn six_digits(s: &str) -> Option<&str> {
    let s = s.trim();
    (s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";

    #[test]
    fn the_session_cookie_is_found_once_and_only_in_shape() {
        let h = format!("theme=dark; {SESSION_COOKIE}={T}; x=1");
        assert_eq!(session_cookie([h.as_str()]), Some(T));
        let twice = format!("{SESSION_COOKIE}={T}; {SESSION_COOKIE}={T}");
        assert_eq!(session_cookie([twice.as_str()]), None);
        assert_eq!(
            session_cookie([format!("{SESSION_COOKIE}=short").as_str()]),
            None
        );
        assert_eq!(session_cookie(["nothing", ""]), None);
    }

    #[test]
    fn forms_parse_and_refuse_duplicates_and_floods() {
        let f = parse_form(b"code=123456&csrf=abc&other=1").unwrap();
        assert_eq!(f.code.as_deref(), Some("123456"));
        assert_eq!(f.csrf.as_deref(), Some("abc"));
        assert_eq!(parse_form(b"code=1&code=2"), Err(FormError::Malformed));
        assert_eq!(
            parse_form(&vec![b'a'; FORM_MAX_BYTES + 1]),
            Err(FormError::TooLarge)
        );
        let long = format!("code={}", "1".repeat(FIELD_MAX_LEN + 1));
        assert_eq!(parse_form(long.as_bytes()), Err(FormError::Malformed));
        assert_eq!(parse_form(b"%FF%FE=%80").unwrap(), Form::default());
    }

    #[test]
    fn six_digits_only() {
        assert_eq!(six_digits(" 012345 "), Some("012345"));
        assert_eq!(six_digits("01234"), None);
        assert_eq!(six_digits("0123456"), None);
        assert_eq!(six_digits("01234x"), None);
    }
}
