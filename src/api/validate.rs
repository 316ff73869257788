//! Parsing a `POST /v1/verifications` body into a [`NewVerification`]: "parse, don't
//! validate". 400 for what cannot be understood, 422 for what policy refuses.
//!
//! Toll fraud (issue 8 item 6): an E.164 number must be valid, in an allowed country and of an
//! allowed type (premium-rate, shared-cost and toll-free always refused; personal, UAN, VoIP,
//! pager, voicemail access and unknown types by default, `limits.refused_number_types`). A SIP
//! URI through the trunk is only a way to write such a number: its user part must be one, and
//! the verification is stored as that number. A direct SIP URI (no trunk) may only name a host
//! of `limits.sip_uri_hosts`, and is stored in canonical form.

use std::net::IpAddr;

use flow::Mode;
use phonenumber::Type;
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppError;
use super::auth::Client;
use super::sip_uri::SipUri;
use crate::config::{Config, Secret};
use crate::secrets::StoreKey;
use crate::store::{Destination, NewVerification, VerificationId, now_ms};
use crate::webhook::is_public;

/// Shortest and longest E.164 number, digits after `+` (ITU-T E.164 §6: at most 15).
const E164_MIN_DIGITS: usize = 7;
const E164_MAX_DIGITS: usize = 15;
const EXTENSION_MAX_LEN: usize = 32;
const PIN_MIN_DIGITS: usize = 4;
const PIN_MAX_DIGITS: usize = 12;
const CALLBACK_URL_MAX_LEN: usize = 2048;

/// The request body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// E.164 (`+14255550123`); a `sip:` URI when the operator allows them.
    #[schema(example = "+14255550123")]
    pub phone_number: String,
    /// Dialled after answer: digits, `*`, `#`, and `,` for a one-second pause.
    #[schema(example = "5678")]
    pub extension: Option<String>,
    /// `standard` (press `#`, the default), `pin` (PIN then `#`), `challenge` (the digits the
    /// response shows, then `#`).
    #[schema(example = "standard")]
    pub mode: Option<String>,
    /// pin mode only: 4 to 12 digits.
    #[schema(value_type = Option<String>, example = "1234")]
    pub pin: Option<Secret>,
    /// Prompt language, one of the operator's `media.languages`.
    #[schema(example = "en")]
    pub language: Option<String>,
    /// Where the signed webhook goes; its host must be one of the client's `callback_hosts`.
    #[schema(example = "https://auth.example.com/hooks/callverify")]
    pub callback_url: Option<String>,
    /// Returned as given (a JSON object, `api.metadata_max_bytes` at most).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// The hosted sign-in page: the 201 carries a single-use `prompt_url`; once decided the
    /// page returns the browser to `return_url` with a signed result.
    pub hosted: Option<super::signin::HostedRequest>,
}

/// Turns a JSON value into the request, naming the field at fault.
pub fn request(value: serde_json::Value) -> Result<CreateRequest, AppError> {
    parse(value)
}

/// Turns a JSON object into a request body type, naming the field at fault.
pub fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, AppError> {
    if !value.is_object() {
        return Err(AppError::bad_request(
            "invalid_json",
            "the request body must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        let code = if inner.starts_with("missing field") {
            "missing_field"
        } else if inner.starts_with("unknown field") {
            "unknown_field"
        } else {
            "invalid_field"
        };
        let message = if path == "." || path.is_empty() {
            inner
        } else {
            format!("{path}: {inner}")
        };
        AppError::bad_request(code, message)
    })
}

/// A checked destination and the country it is in (`None` for a direct SIP URI).
#[derive(Clone, Debug)]
pub struct Target {
    pub destination: Destination,
    pub country: Option<String>,
}

/// Checks every field against the configuration and the client; seals the PIN, or the
/// challenge digits derived for the new id, under `key` (they are never stored in clear).
pub fn verification(
    req: CreateRequest,
    client: &Client,
    config: &Config,
    key: &StoreKey,
) -> Result<(NewVerification, Target), AppError> {
    let target = destination(&req.phone_number, config)?;
    let id = VerificationId::generate();
    let extension = req.extension.map(extension).transpose()?;
    let mode = match req.mode.as_deref() {
        None | Some("standard") => Mode::Standard,
        Some("pin") => Mode::Pin,
        Some("challenge") => Mode::Challenge,
        Some(other) => {
            return Err(AppError::bad_request(
                "invalid_mode",
                format!("unknown mode `{other}`: expected `standard`, `pin` or `challenge`"),
            ));
        }
    };
    let digits = match (mode, req.pin) {
        (Mode::Pin, None) => {
            return Err(AppError::bad_request(
                "missing_field",
                "pin: required in pin mode",
            ));
        }
        (Mode::Pin, Some(pin)) => {
            let p = pin.expose();
            if !(PIN_MIN_DIGITS..=PIN_MAX_DIGITS).contains(&p.len())
                || !p.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(AppError::bad_request(
                    "invalid_pin",
                    format!("pin: must be {PIN_MIN_DIGITS} to {PIN_MAX_DIGITS} digits"),
                ));
            }
            Some(pin)
        }
        (_, Some(_)) => {
            return Err(AppError::bad_request(
                "unexpected_field",
                "pin: only accepted in pin mode",
            ));
        }
        (Mode::Challenge, None) => Some(key.challenge_digits(&id, config.call.challenge_digits)),
        (Mode::Standard, None) => None,
    };
    let digits_tag = digits
        .map(|d| {
            key.seal(&client.name, target.destination.expose(), &d)
                .map_err(|_| AppError::bad_request("invalid_pin", "pin: must be digits"))
        })
        .transpose()?;
    let language = match req.language {
        None => config
            .media
            .languages
            .first()
            .cloned()
            .unwrap_or_else(|| "en".to_owned()),
        Some(lang) => {
            if !crate::config::is_language_tag(&lang) {
                return Err(AppError::bad_request(
                    "invalid_language",
                    format!("language: `{lang}` is not a language tag like `en` or `en-US`"),
                ));
            }
            if !config.media.languages.contains(&lang) {
                return Err(AppError::unprocessable(
                    "unsupported_language",
                    format!(
                        "language: `{lang}` is not offered (offered: {})",
                        config.media.languages.join(", ")
                    ),
                ));
            }
            lang
        }
    };
    let callback_url = req
        .callback_url
        .map(|u| callback_url(&u, client, config))
        .transpose()?;
    let metadata = match req.metadata {
        None | Some(serde_json::Value::Null) => None,
        Some(m @ serde_json::Value::Object(_)) => {
            let size = m.to_string().len();
            if size > config.api.metadata_max_bytes {
                return Err(AppError::unprocessable(
                    "metadata_too_large",
                    format!(
                        "metadata: {size} bytes, at most {} allowed",
                        config.api.metadata_max_bytes
                    ),
                ));
            }
            Some(m)
        }
        Some(_) => {
            return Err(AppError::bad_request(
                "invalid_field",
                "metadata: must be a JSON object",
            ));
        }
    };
    let new = NewVerification {
        id,
        client: client.name.clone(),
        destination: target.destination.clone(),
        extension,
        mode,
        digits_tag,
        language,
        callback_url,
        metadata,
        created_at: now_ms(),
    };
    Ok((new, target))
}

/// An E.164 number allowed by the country allowlist and number-type policy, or an allowed
/// SIP URI (through the trunk: an allowed E.164 number written as a URI; direct: to a listed
/// host), in canonical form.
pub fn destination(raw: &str, config: &Config) -> Result<Target, AppError> {
    let scheme = raw.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("sip" | "sips")) {
        if !config.sip.allow_sip_uris {
            return Err(AppError::unprocessable(
                "sip_uri_not_allowed",
                "phone_number: SIP URIs are not allowed by this service (sip.allow_sip_uris)",
            ));
        }
        let uri = SipUri::parse(raw).map_err(|e| {
            AppError::bad_request(
                "invalid_phone_number",
                format!("phone_number: not an accepted SIP URI: {e}"),
            )
        })?;
        if !config.sip.trunk.trim().is_empty() {
            // Through the trunk, a URI is only another way to write a phone number: the same
            // policy applies, and the call goes to that number.
            let number = uri.e164_user().ok_or_else(|| {
                AppError::unprocessable(
                    "sip_uri_not_e164",
                    "phone_number: a SIP URI sent through the trunk must have an E.164 number                      as its user part (sip:+14255550123@…)",
                )
            })?;
            return phone(&number, config);
        }
        let (host, port) = uri.host_port();
        let listed = config.limits.sip_uri_hosts.iter().any(|h| {
            let h = h.to_ascii_lowercase();
            h == host || h == format!("{host}:{port}")
        });
        if !listed {
            return Err(AppError::unprocessable(
                "sip_uri_host_not_allowed",
                format!("phone_number: SIP URI host `{host}` is not among limits.sip_uri_hosts"),
            ));
        }
        return Ok(Target {
            destination: Destination::SipUri(uri.to_string()),
            country: None,
        });
    }
    phone(raw, config)
}

/// The name of a number type in `limits.refused_number_types`.
fn type_name(t: Type) -> &'static str {
    match t {
        Type::FixedLine => "fixed_line",
        Type::Mobile => "mobile",
        Type::FixedLineOrMobile => "fixed_line_or_mobile",
        Type::TollFree => "toll_free",
        Type::PremiumRate => "premium_rate",
        Type::SharedCost => "shared_cost",
        Type::PersonalNumber => "personal_number",
        Type::Voip => "voip",
        Type::Pager => "pager",
        Type::Uan => "uan",
        Type::Emergency => "emergency",
        Type::Voicemail => "voicemail",
        Type::ShortCode => "short_code",
        Type::StandardRate => "standard_rate",
        Type::Carrier => "carrier",
        Type::NoInternational => "no_international",
        Type::Unknown => "unknown",
    }
}

/// An E.164 number allowed by the country allowlist and number-type policy.
fn phone(raw: &str, config: &Config) -> Result<Target, AppError> {
    let digits = raw.strip_prefix('+').unwrap_or("");
    if !(E164_MIN_DIGITS..=E164_MAX_DIGITS).contains(&digits.len())
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || digits.starts_with('0')
    {
        return Err(AppError::bad_request(
            "invalid_phone_number",
            format!(
                "phone_number: must be E.164: `+`, then {E164_MIN_DIGITS} to {E164_MAX_DIGITS} \
                 digits without spaces (e.g. +14255550123)"
            ),
        ));
    }
    let number = phonenumber::parse(None, raw)
        .map_err(|e| AppError::bad_request("invalid_phone_number", format!("phone_number: {e}")))?;
    if !number.is_valid() {
        return Err(AppError::bad_request(
            "invalid_phone_number",
            "phone_number: not a valid number in its country's numbering plan",
        ));
    }
    let country = number.country().id();
    let code = country.as_ref().map(|c| c.as_ref().to_owned());
    match &code {
        Some(c) if config.limits.countries.iter().any(|a| a == c) => {}
        Some(c) => {
            return Err(AppError::unprocessable(
                "country_not_allowed",
                format!("phone_number: calls to {c} are not allowed (limits.countries)"),
            ));
        }
        None => {
            return Err(AppError::unprocessable(
                "country_not_allowed",
                "phone_number: the number belongs to no country (limits.countries)",
            ));
        }
    }
    let kind = number.number_type(&phonenumber::metadata::DATABASE);
    // Always refused: the callee's network bills us (premium, shared cost) or the number is
    // not a person's line (toll-free).
    let always = matches!(kind, Type::PremiumRate | Type::SharedCost | Type::TollFree);
    let name = type_name(kind);
    if always || config.limits.refused_number_types.iter().any(|t| t == name) {
        return Err(AppError::unprocessable(
            "number_type_not_allowed",
            format!(
                "phone_number: {} numbers are refused{}",
                name.replace('_', "-"),
                if always {
                    ""
                } else {
                    " (limits.refused_number_types)"
                }
            ),
        ));
    }
    Ok(Target {
        destination: Destination::Phone(raw.to_owned()),
        country: code,
    })
}

/// Digits, `*`, `#` and `,` (one-second pause).
pub fn extension(raw: String) -> Result<String, AppError> {
    if raw.is_empty()
        || raw.len() > EXTENSION_MAX_LEN
        || !raw
            .bytes()
            .all(|b| b.is_ascii_digit() || b"*#,".contains(&b))
        || raw.bytes().all(|b| b == b',')
    {
        return Err(AppError::bad_request(
            "invalid_extension",
            format!(
                "extension: 1 to {EXTENSION_MAX_LEN} of digits, `*`, `#` and `,` (a one-second \
                 pause), with at least one key"
            ),
        ));
    }
    Ok(raw)
}

/// The SSRF guard at request time: scheme, the client's allowed hosts, no private literal
/// addresses (names are checked again when resolved, at delivery).
pub fn callback_url(raw: &str, client: &Client, config: &Config) -> Result<String, AppError> {
    let refuse = |msg: String| AppError::unprocessable("callback_url_not_allowed", msg);
    if raw.len() > CALLBACK_URL_MAX_LEN {
        return Err(AppError::bad_request(
            "invalid_callback_url",
            format!("callback_url: longer than {CALLBACK_URL_MAX_LEN} characters"),
        ));
    }
    let url = url::Url::parse(raw)
        .map_err(|e| AppError::bad_request("invalid_callback_url", format!("callback_url: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if config.webhook.allow_http => {}
        "http" => return Err(refuse("callback_url: must use https".to_owned())),
        other => {
            return Err(AppError::bad_request(
                "invalid_callback_url",
                format!("callback_url: scheme `{other}` is not http(s)"),
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(AppError::bad_request(
            "invalid_callback_url",
            "callback_url: must not contain credentials",
        ));
    }
    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
    let host_port = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    if !client
        .callback_hosts
        .iter()
        .any(|h| *h == host || *h == host_port)
    {
        return Err(refuse(format!(
            "callback_url: host `{host_port}` is not among this client's callback_hosts"
        )));
    }
    if !config.webhook.allow_private_networks {
        let literal: Option<IpAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(ip.into()),
            Some(url::Host::Ipv6(ip)) => Some(ip.into()),
            _ => None,
        };
        if literal.is_some_and(|ip| !is_public(ip))
            || host == "localhost"
            || host.ends_with(".localhost")
        {
            return Err(refuse(format!(
                "callback_url: `{host}` is a loopback, private or link-local address"
            )));
        }
    }
    if !client.has_webhook_secret {
        return Err(AppError::unprocessable(
            "webhook_secret_missing",
            "callback_url: this client has no webhook_secret configured to sign webhooks",
        ));
    }
    Ok(url.to_string())
}
