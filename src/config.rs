//! Configuration (DESIGN.md "Configuration"): one TOML file, then the environment.
//!
//! Every key can be overridden as `CALLVERIFY_<SECTION>__<KEY>` (e.g. `CALLVERIFY_SIP__PASSWORD`);
//! deeper paths use more `__` separators and array indices (`CALLVERIFY_API__CLIENTS__0__KEY`).
//! An override takes the type of the key it replaces (a string stays a string even when it looks
//! like a number, so `CALLVERIFY_SIP__PASSWORD=1234` works); lists may be given as TOML
//! (`["US","CA"]`) or comma-separated (`US,CA`).
//!
//! Loading is "parse, don't validate": [`Config::load`] returns a configuration whose every
//! value has been checked, with errors that name the key at fault. Secrets live in
//! [`Secret`], whose `Debug` and `Display` never print the value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Most runtime shards (`sip.shards`): threads beyond the machine's cores only add switching.
const MAX_SHARDS: u32 = 64;

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "CALLVERIFY_";
/// Separator between path segments in an environment override.
pub const ENV_SEPARATOR: &str = "__";

/// A value that must never be printed: passwords, API keys, webhook secrets, PINs.
///
/// `Debug` and `Display` print `[redacted]`; serializing writes `[redacted]` too, so a config
/// dump never leaks. Read the value with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself: call only where it is used (hashing, signing, the SIP digest).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// The whole configuration, validated.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub api: ApiConfig,
    pub sip: SipConfig,
    pub media: MediaConfig,
    pub call: CallConfig,
    pub store: StoreConfig,
    pub limits: LimitsConfig,
    pub webhook: WebhookConfig,
    pub cluster: ClusterConfig,
    pub methods: MethodsConfig,
    pub signin: SigninConfig,
    pub push: PushConfig,
}

/// `[api]`: the HTTP API and its clients.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Longest `?wait=` a client may ask for, in seconds.
    pub max_wait_secs: u64,
    /// Largest `metadata` object accepted, in bytes of compact JSON.
    pub metadata_max_bytes: usize,
    /// Largest request body accepted, in bytes.
    pub body_max_bytes: usize,
    /// On SIGTERM/SIGINT, how long calls in flight may run before they are hung up, in seconds.
    pub shutdown_grace_secs: u64,
    /// A request's head must arrive within this many seconds of the connection being ready for
    /// it (accepted, or the previous response sent): slow and idle keep-alive connections close.
    pub header_read_timeout_secs: u64,
    /// A request's body must arrive within this many seconds of its head.
    pub body_read_timeout_secs: u64,
    /// Most HTTP connections open at once (also bounded by the descriptor budget). At the cap,
    /// the connection idle the longest is closed to make room.
    pub max_connections: usize,
    /// Bearer key for `GET /metrics`; required unless `metrics_public`.
    pub metrics_key: Option<Secret>,
    /// Serve `GET /metrics` without a key (only behind a network that keeps strangers out).
    pub metrics_public: bool,
    /// The API clients (auth servers).
    pub clients: Vec<ClientConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_wait_secs: 60,
            metadata_max_bytes: 4096,
            body_max_bytes: 64 * 1024,
            shutdown_grace_secs: 30,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 10,
            max_connections: 512,
            metrics_key: None,
            metrics_public: false,
            clients: Vec::new(),
        }
    }
}

/// `[[api.clients]]`: one auth server.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Name used in logs and stored with each verification.
    pub name: String,
    /// The API key in clear (never printed; the API keeps only its SHA-256). Give `key` or
    /// `key_sha256`.
    pub key: Option<Secret>,
    /// SHA-256 of the API key, lowercase hex.
    pub key_sha256: Option<String>,
    /// Standard Webhooks secret, `whsec_<base64>`; required to use `callback_url`.
    pub webhook_secret: Option<Secret>,
    /// Hosts `callback_url` may point to (`host` or `host:port`).
    pub callback_hosts: Vec<String>,
    /// Verifications this client may create per minute (0: `limits.per_client_per_minute`).
    pub rate_per_minute: u32,
    /// Per hour (0: `limits.per_client_per_hour`).
    pub rate_per_hour: u32,
    /// Per day (0: `limits.per_client_per_day`).
    pub rate_per_day: u32,
    /// Hosts a hosted prompt's `return_url` may point to (`host` or `host:port`).
    pub return_hosts: Vec<String>,
}

/// `[sip]`: the trunk.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    pub listen: SocketAddr,
    /// Where every call is sent (`sip:host[:port][;transport=udp|tcp|tls]`).
    pub trunk: String,
    pub username: String,
    pub password: Secret,
    /// Caller id presented to the callee (E.164).
    pub caller_id: String,
    /// Concurrent calls the trunk allows.
    pub channels: u32,
    /// Destinations may be `sip:`/`sips:` URIs (operators' softphones, tests).
    pub allow_sip_uris: bool,
    /// Accept SIP INFO DTMF.
    pub sip_info_dtmf: bool,
    /// RFC 3261 T1 (round-trip estimate), in milliseconds.
    pub t1_ms: u64,
    /// PEM file of CA certificates trusted for the trunk's TLS certificate, besides the
    /// Mozilla roots (`sips:` or `;transport=tls` trunks with a private CA).
    pub tls_ca: Option<PathBuf>,
    /// SIP over TCP connections accepted at once (the ones we open to the trunk are not
    /// counted); beyond, new ones are closed at once. The lead's descriptor budget caps this.
    pub max_connections: u32,
    /// The same, from one IP address.
    pub max_connections_per_ip: u32,
    /// Runtime shards, each a thread with its own calls, timers and RTP sockets; 0: one per
    /// available core.
    pub shards: u32,
    /// An accepted connection that completes no message for this long is closed (idle or
    /// slow peers hold descriptors).
    pub connection_idle_secs: u64,
    /// SIP messages per second one IP address may send when it is not a trusted peer (the
    /// trunk, a call's far end): a token bucket; beyond it, messages are dropped unread.
    pub stranger_rate_per_sec: u32,
    /// Burst the stranger bucket holds.
    pub stranger_burst: u32,
    /// Behind 1:1 NAT (a cloud VM): the public address, `IP` or `IP:port`, that Via, Contact
    /// and Call-ID show instead of the bound one (the socket stays bound to `listen`).
    /// Empty: the bound address (or, bound to a wildcard, the local address towards the
    /// trunk).
    pub external_address: String,
    /// DNS servers (`"IP:port"`) asked for the trunk's NAPTR/SRV/A/AAAA records (RFC 3263).
    /// Empty: the system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<SocketAddr>,
}

impl SipConfig {
    /// `sip.external_address` parsed: the public IP and, if given, port.
    pub fn external(&self) -> Result<Option<(IpAddr, Option<u16>)>, &'static str> {
        let s = self.external_address.trim();
        if s.is_empty() {
            return Ok(None);
        }
        if let Ok(ip) = s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(Some((ip, None)));
        }
        match s.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => Ok(Some((a.ip(), Some(a.port())))),
            _ => Err("must be an IP address or IP:port (e.g. 203.0.113.7 or 203.0.113.7:5060)"),
        }
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 5060)),
            trunk: String::new(),
            username: String::new(),
            password: Secret::default(),
            caller_id: String::new(),
            channels: 10,
            allow_sip_uris: false,
            sip_info_dtmf: false,
            t1_ms: 500,
            tls_ca: None,
            max_connections: 128,
            max_connections_per_ip: 8,
            shards: 0,
            connection_idle_secs: 30,
            stranger_rate_per_sec: 20,
            stranger_burst: 40,
            external_address: String::new(),
            dns_servers: Vec::new(),
        }
    }
}

/// `[media]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// RTP port range, `"LOW-HIGH"`.
    pub rtp_ports: String,
    /// Folder of prompt recordings, one sub-folder per language (`<folder>/en/greeting.wav`);
    /// each file found replaces the recording built into the binary, the others stay. Empty
    /// (the default): the built-in recordings (en, es, fr, de) only.
    pub prompts: PathBuf,
    /// Languages callers may ask for; the first is the default.
    pub languages: Vec<String>,
    /// SRTP (SDES keys in the SDP, RFC 4568): `off`, `offer` or `require`.
    pub srtp: SrtpMode,
    /// Behind 1:1 NAT: the public IP the SDP (`c=`, `o=`) shows for our RTP (sockets stay
    /// bound locally). Empty: `sip.external_address`'s IP if set, else the SIP address.
    pub external_address: String,
}

impl MediaConfig {
    /// `media.external_address` parsed.
    pub fn external(&self) -> Result<Option<IpAddr>, &'static str> {
        let s = self.external_address.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse::<IpAddr>()
            .map(Some)
            .map_err(|_| "must be an IP address (e.g. 203.0.113.7)")
    }
}

/// `media.srtp`: whether calls protect their media with SRTP keyed by SDES.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SrtpMode {
    /// Plain RTP.
    #[default]
    Off,
    /// Over TLS, keys are offered and SRTP is used when the answer accepts them; a plain
    /// answer is a plain call. Over UDP/TCP no key is sent (it would travel in clear).
    Offer,
    /// SRTP or no call: the SIP transport must be TLS, and an answer without keys is hung up
    /// (`unreachable`).
    Require,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            rtp_ports: "20000-29999".to_owned(),
            prompts: PathBuf::new(),
            languages: vec!["en".to_owned()],
            srtp: SrtpMode::Off,
            external_address: String::new(),
        }
    }
}

/// `[call]`: timeouts and the digits of a verification call (DESIGN.md "The call", step 5).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallConfig {
    pub ring_timeout_secs: u64,
    /// Wait for a key after the prompt, in seconds (then one replay).
    pub response_timeout_secs: u64,
    pub prompt_replays: u32,
    pub inter_digit_timeout_secs: u64,
    /// The whole call, from INVITE to outcome.
    pub challenge_timeout_secs: u64,
    /// Digits (then `#`) that report fraud.
    pub fraud_code: String,
    /// How many digits the service picks in `challenge` mode.
    pub challenge_digits: usize,
    /// Keys pressed within this many milliseconds after answer do not count (a key held
    /// while picking up, a voicemail beep).
    pub answer_guard_ms: u64,
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            ring_timeout_secs: 30,
            response_timeout_secs: 10,
            prompt_replays: 1,
            inter_digit_timeout_secs: 3,
            challenge_timeout_secs: 180,
            fraud_code: "0#".to_owned(),
            challenge_digits: 6,
            answer_guard_ms: 1000,
        }
    }
}

/// `[store]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH`, `sqlite::memory:`, or `postgres://user:pass@host[:port]/db` for several
    /// instances on one database. A secret (it may hold the password): never printed; give it
    /// as `CALLVERIFY_STORE__URL`.
    pub url: Secret,
    /// The key that seals PINs, challenge digits and request fingerprints (64 hex digits, 32
    /// bytes), never stored in the database. Unset with a SQLite file: kept in `PATH.key`
    /// (created with mode 0600 on first start); with `sqlite::memory:`: random per process.
    pub secret_key: Option<Secret>,
    /// PostgreSQL: connections in this instance's pool.
    pub pool_size: usize,
    /// PostgreSQL: longest wait for a connection (connect, or a free one from the pool), in
    /// seconds; past it the API answers 503.
    pub timeout_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: Secret::new("sqlite://callverify.db"),
            secret_key: None,
            pool_size: 16,
            timeout_secs: 5,
        }
    }
}

/// `[cluster]`: several instances on one PostgreSQL database (DESIGN.md "Storage and scale").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// How often an instance records that it is alive, in seconds.
    pub heartbeat_secs: u64,
    /// An instance silent this long is dead: a survivor fails its calls in progress
    /// (`instance_lost`) and releases its webhook leases, in seconds.
    pub dead_after_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        // Death is noticed within dead_after + heartbeat = 25 s (the 30 s promised in
        // DESIGN.md "Storage and scale"), and 4 missed beats are needed to be declared dead.
        ClusterConfig {
            heartbeat_secs: 5,
            dead_after_secs: 20,
        }
    }
}

/// What a second request for a number that is already being verified does.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    /// The same client asking again with the same parameters gets the verification already
    /// queued or in progress (200); anything else is queued behind it.
    #[default]
    Join,
    /// Every request is a new verification, queued behind the call in progress.
    Queue,
}

/// `[limits]`: deny-by-default destination policy and rate limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// ISO 3166 alpha-2 codes of the countries that may be called.
    pub countries: Vec<String>,
    /// Number types refused besides premium-rate, shared-cost and toll-free (always refused):
    /// names from [`NUMBER_TYPES`].
    pub refused_number_types: Vec<String>,
    /// Hosts a direct SIP URI may name when there is no trunk (`host` or `host:port`).
    pub sip_uri_hosts: Vec<String>,
    /// Verifications per destination per hour (0: no limit).
    pub per_number_per_hour: u32,
    /// Verifications per destination per day (0: no limit).
    pub per_number_per_day: u32,
    /// Default verifications per client per minute (a client's `rate_per_minute` overrides).
    pub per_client_per_minute: u32,
    /// Default per client per hour (`rate_per_hour` overrides; 0: no limit).
    pub per_client_per_hour: u32,
    /// Default per client per day (`rate_per_day` overrides; 0: no limit).
    pub per_client_per_day: u32,
    /// Verifications to one country per hour, each country counted apart (0: no limit).
    pub per_country_per_hour: u32,
    /// Per country per day (0: no limit).
    pub per_country_per_day: u32,
    /// All verifications per hour (0: no limit).
    pub global_per_hour: u32,
    /// All verifications per day (0: no limit).
    pub global_per_day: u32,
    /// A verification still queued this many seconds after it was created completes as
    /// `expired` (its webhook goes out).
    pub queue_ttl_secs: u64,
    /// One call at a time per number: join or queue duplicates.
    pub duplicate: DuplicatePolicy,
}

/// Number types `limits.refused_number_types` may name (libphonenumber's types).
pub const NUMBER_TYPES: [&str; 12] = [
    "fixed_line",
    "mobile",
    "fixed_line_or_mobile",
    "personal_number",
    "voip",
    "pager",
    "uan",
    "voicemail",
    "standard_rate",
    "carrier",
    "no_international",
    "unknown",
];

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            countries: Vec::new(),
            refused_number_types: [
                "personal_number",
                "uan",
                "voip",
                "pager",
                "voicemail",
                "unknown",
            ]
            .map(str::to_owned)
            .to_vec(),
            sip_uri_hosts: Vec::new(),
            per_number_per_hour: 5,
            per_number_per_day: 10,
            per_client_per_minute: 120,
            per_client_per_hour: 1000,
            per_client_per_day: 10_000,
            per_country_per_hour: 1000,
            per_country_per_day: 10_000,
            global_per_hour: 2000,
            global_per_day: 20_000,
            queue_ttl_secs: 300,
            duplicate: DuplicatePolicy::Join,
        }
    }
}

/// `[webhook]`: delivery from the outbox (DESIGN.md "Webhooks").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// One delivery attempt, in seconds.
    pub timeout_secs: u64,
    /// Retries stop this long after the webhook was queued, in hours.
    pub retry_for_hours: u64,
    /// First retry delay, in seconds (doubled each attempt, jittered ±20 %).
    pub initial_backoff_secs: u64,
    /// Longest delay between two attempts, in seconds.
    pub max_backoff_secs: u64,
    /// Allow `http://` callback URLs (default: `https://` only).
    pub allow_http: bool,
    /// Allow callback targets on loopback, private and link-local addresses (SSRF guard off).
    pub allow_private_networks: bool,
    /// Delivery attempts in flight at once, all hosts together.
    pub concurrency: usize,
    /// Delivery attempts in flight at once to one host (`host:port`): a host that never
    /// answers holds at most this many and delays no other host.
    pub per_host_concurrency: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            timeout_secs: 15,
            retry_for_hours: 24,
            initial_backoff_secs: 5,
            max_backoff_secs: 2 * 60 * 60,
            allow_http: false,
            allow_private_networks: false,
            concurrency: 16,
            per_host_concurrency: 2,
        }
    }
}

/// `[methods]`: users' enrolled sign-in methods (DESIGN.md "Sign-in methods").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MethodsConfig {
    /// Key sealing method secrets at rest: base64 of 32 random bytes
    /// (`head -c 32 /dev/urandom | base64`). Required to enrol `app_code`; `serve` refuses to
    /// start when the store holds sealed secrets and this is missing or another key.
    pub seal_key: Option<Secret>,
    /// Wrong codes allowed in one verification before it completes as `wrong_digits`.
    pub code_attempts: u32,
    /// Wrong codes in a row for one method, across verifications, that lock it.
    pub lockout_failures: u32,
    /// How long a locked method refuses codes, in seconds.
    pub lockout_secs: u64,
    /// The issuer an authenticator app shows next to the account (otpauth:// `issuer`).
    pub totp_issuer: String,
    /// Most methods one user may enrol.
    pub max_per_user: u32,
}

impl Default for MethodsConfig {
    fn default() -> Self {
        MethodsConfig {
            seal_key: None,
            code_attempts: 3,
            lockout_failures: 6,
            lockout_secs: 900,
            totp_issuer: "callverify".to_owned(),
            max_per_user: 10,
        }
    }
}

/// `[signin]`: the hosted sign-in prompt and its signed result.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigninConfig {
    /// Where browsers reach this service (scheme, host, port; no path): the base of
    /// `prompt_url` and the `iss` of signed results. Empty: `http://` + `api.listen`.
    pub public_url: String,
    /// The Ed25519 private key (PKCS#8 PEM, `openssl genpkey -algorithm ed25519`) signing
    /// results; its public key is served at `/v1/jwks.json`. Required when a client has
    /// `return_hosts`.
    pub signing_key: Option<Secret>,
    /// How long a `prompt_url` can be opened (once), in seconds.
    pub link_ttl_secs: u64,
    /// How long the page's session lasts after the link was opened, in seconds.
    pub session_ttl_secs: u64,
    /// Lifetime of a signed result (`exp - iat`), in seconds.
    pub result_ttl_secs: u64,
}

impl Default for SigninConfig {
    fn default() -> Self {
        SigninConfig {
            public_url: String::new(),
            signing_key: None,
            link_ttl_secs: 300,
            session_ttl_secs: 900,
            result_ttl_secs: 120,
        }
    }
}

impl SigninConfig {
    /// The base URL of prompt links (no trailing slash).
    pub fn base_url(&self, listen: SocketAddr) -> String {
        if self.public_url.is_empty() {
            format!("http://{listen}")
        } else {
            self.public_url.trim_end_matches('/').to_owned()
        }
    }
}

/// `[push]`: the `push` method (issue 12): Web Push delivery to the authenticator app at
/// `/app/` and how long a request waits for its answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// The VAPID key pair (RFC 8292): a P-256 private key as PKCS#8 or SEC1 PEM, or the
    /// 32-byte scalar in base64url (`vapid --gen`, web-push's `generate-vapid-keys`). Its
    /// public key is served at `GET /v1/vapid`. Required to enrol `push`.
    pub vapid_private_key: Option<Secret>,
    /// The `sub` of VAPID tokens: a `mailto:` or `https:` contact for push services.
    pub vapid_subject: String,
    /// How long a push request waits for the device's answer before `no_input`, in seconds.
    pub timeout_secs: u64,
    /// How long an `enrol_url` can be used (once), in seconds.
    pub enrol_ttl_secs: u64,
    /// Development and tests only: subscription endpoints may be plain `http` to a loopback
    /// address (a local stand-in for the push service). Off: https to public addresses only.
    pub allow_loopback_endpoints: bool,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            vapid_private_key: None,
            vapid_subject: "mailto:admin@example.invalid".to_owned(),
            timeout_secs: 60,
            enrol_ttl_secs: 600,
            allow_loopback_endpoints: false,
        }
    }
}

/// Why a configuration could not be loaded. Every variant names the key or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid TOML: {source}")]
    Syntax {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("configuration key `{key}`: {reason}")]
    Type { key: String, reason: String },
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Reads `path` (or starts from the defaults when `None`), applies the `CALLVERIFY_…`
    /// variables of the process environment, and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        let file = path.unwrap_or(Path::new("<defaults>"));
        Config::from_toml(&text, file, std::env::vars())
    }

    /// Parses TOML text, applies the given environment (only `CALLVERIFY_` variables are
    /// looked at), validates. `file` is only used in error messages.
    pub fn from_toml(
        text: &str,
        file: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: file.to_owned(),
            source: Box::new(e),
        })?;
        let template = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Type {
            key: String::new(),
            reason: e.to_string(),
        })?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        overrides.sort();
        for (var, value) in overrides {
            apply_override(&mut table, &template, &var, &value)?;
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                ConfigError::Type {
                    key: e.path().to_string(),
                    reason: e.inner().to_string(),
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for (i, client) in self.api.clients.iter().enumerate() {
            let at = |k: &str| format!("api.clients[{i}].{k}");
            if client.name.trim().is_empty() {
                return Err(invalid(at("name"), "must not be empty"));
            }
            if !names.insert(client.name.as_str()) {
                return Err(invalid(at("name"), "two clients have this name"));
            }
            let hash = client
                .key_hash()
                .map_err(|reason| invalid(at("key"), reason))?;
            if !hashes.insert(hash) {
                return Err(invalid(at("key"), "two clients have the same API key"));
            }
            if let Some(secret) = &client.webhook_secret {
                WebhookKey::parse(secret)
                    .map_err(|reason| invalid(at("webhook_secret"), reason))?;
            }
            for (j, host) in client.callback_hosts.iter().enumerate() {
                if host.is_empty() || host.contains('/') || host.contains('@') {
                    return Err(invalid(
                        format!("api.clients[{i}].callback_hosts[{j}]"),
                        "must be a host name or host:port, without scheme or path",
                    ));
                }
            }
            for (j, host) in client.return_hosts.iter().enumerate() {
                if host.is_empty() || host.contains('/') || host.contains('@') {
                    return Err(invalid(
                        format!("api.clients[{i}].return_hosts[{j}]"),
                        "must be a host name or host:port, without scheme or path",
                    ));
                }
            }
            if !client.return_hosts.is_empty() && self.signin.signing_key.is_none() {
                return Err(invalid(
                    "signin.signing_key",
                    format!(
                        "required: client `{}` has return_hosts (hosted prompts return a signed \
                         result); make one with `openssl genpkey -algorithm ed25519`",
                        client.name
                    ),
                ));
            }
        }
        if self.api.max_wait_secs > 600 {
            return Err(invalid("api.max_wait_secs", "at most 600"));
        }
        if self.sip.channels == 0 {
            return Err(invalid("sip.channels", "must be at least 1"));
        }
        if self.sip.t1_ms == 0 {
            return Err(invalid("sip.t1_ms", "must be at least 1"));
        }
        if self.sip.shards > MAX_SHARDS {
            return Err(invalid(
                "sip.shards",
                "must be at most 64 (0: one per core)",
            ));
        }
        self.sip
            .external()
            .map_err(|reason| invalid("sip.external_address", reason))?;
        self.media
            .external()
            .map_err(|reason| invalid("media.external_address", reason))?;
        for (key, value) in [
            ("sip.max_connections", u64::from(self.sip.max_connections)),
            (
                "sip.max_connections_per_ip",
                u64::from(self.sip.max_connections_per_ip),
            ),
            ("sip.connection_idle_secs", self.sip.connection_idle_secs),
            (
                "sip.stranger_rate_per_sec",
                u64::from(self.sip.stranger_rate_per_sec),
            ),
            ("sip.stranger_burst", u64::from(self.sip.stranger_burst)),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if !self.sip.trunk.is_empty()
            && !self.sip.trunk.starts_with("sip:")
            && !self.sip.trunk.starts_with("sips:")
        {
            return Err(invalid("sip.trunk", "must be a sip: or sips: URI"));
        }
        self.media
            .rtp_port_range()
            .map_err(|reason| invalid("media.rtp_ports", reason))?;
        if self.media.languages.is_empty() {
            return Err(invalid(
                "media.languages",
                "must list at least one language",
            ));
        }
        for (i, lang) in self.media.languages.iter().enumerate() {
            if !is_language_tag(lang) {
                return Err(invalid(
                    format!("media.languages[{i}]"),
                    "must look like `en` or `en-US`",
                ));
            }
        }
        if self.call.answer_guard_ms > 10_000 {
            return Err(invalid("call.answer_guard_ms", "at most 10000"));
        }
        if self.call.challenge_digits < 4 || self.call.challenge_digits > 10 {
            return Err(invalid("call.challenge_digits", "must be between 4 and 10"));
        }
        let fraud = &self.call.fraud_code;
        if fraud.len() < 2
            || !fraud.ends_with('#')
            || !fraud[..fraud.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'*')
        {
            return Err(invalid(
                "call.fraud_code",
                "must be digits or `*`, then `#` (e.g. `0#`)",
            ));
        }
        for (key, value) in [
            ("call.ring_timeout_secs", self.call.ring_timeout_secs),
            (
                "call.response_timeout_secs",
                self.call.response_timeout_secs,
            ),
            (
                "call.inter_digit_timeout_secs",
                self.call.inter_digit_timeout_secs,
            ),
            (
                "call.challenge_timeout_secs",
                self.call.challenge_timeout_secs,
            ),
            ("webhook.timeout_secs", self.webhook.timeout_secs),
            (
                "webhook.initial_backoff_secs",
                self.webhook.initial_backoff_secs,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.webhook.max_backoff_secs < self.webhook.initial_backoff_secs {
            return Err(invalid(
                "webhook.max_backoff_secs",
                "must not be less than webhook.initial_backoff_secs",
            ));
        }
        for (i, country) in self.limits.countries.iter().enumerate() {
            if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(invalid(
                    format!("limits.countries[{i}]"),
                    "must be an ISO 3166 alpha-2 code in capitals, like `US`",
                ));
            }
            if country.parse::<phonenumber::country::Id>().is_err() {
                return Err(invalid(
                    format!("limits.countries[{i}]"),
                    format!("`{country}` is not a country with a telephone numbering plan"),
                ));
            }
        }
        self.store
            .backend()
            .map_err(|reason| invalid("store.url", reason))?;
        if let Some(key) = &self.store.secret_key {
            crate::secrets::StoreKey::parse_hex(key.expose())
                .map_err(|reason| invalid("store.secret_key", reason))?;
        } else if matches!(self.store.backend(), Ok(StoreBackend::Postgres(_))) {
            // Instances on one database must seal with one key: a PIN sealed by the instance
            // that took the request is checked by whichever instance claims the call.
            return Err(invalid(
                "store.secret_key",
                "is required with a postgres:// store (every instance must hold the same key; \
                 `openssl rand -hex 32`, given as CALLVERIFY_STORE__SECRET_KEY)",
            ));
        }
        for (i, kind) in self.limits.refused_number_types.iter().enumerate() {
            if !NUMBER_TYPES.contains(&kind.as_str()) {
                return Err(invalid(
                    format!("limits.refused_number_types[{i}]"),
                    format!(
                        "unknown number type `{kind}` (known: {})",
                        NUMBER_TYPES.join(", ")
                    ),
                ));
            }
        }
        for (i, host) in self.limits.sip_uri_hosts.iter().enumerate() {
            if host.is_empty() || host.contains(['/', '@', ';', '?', ' ']) {
                return Err(invalid(
                    format!("limits.sip_uri_hosts[{i}]"),
                    "must be a host name or host:port, without scheme, user or parameters",
                ));
            }
        }
        for (key, value) in [
            (
                "api.header_read_timeout_secs",
                self.api.header_read_timeout_secs,
            ),
            (
                "api.body_read_timeout_secs",
                self.api.body_read_timeout_secs,
            ),
            ("limits.queue_ttl_secs", self.limits.queue_ttl_secs),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for (key, value) in [
            ("api.max_connections", self.api.max_connections),
            ("webhook.concurrency", self.webhook.concurrency),
            (
                "webhook.per_host_concurrency",
                self.webhook.per_host_concurrency,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.webhook.per_host_concurrency > self.webhook.concurrency {
            return Err(invalid(
                "webhook.per_host_concurrency",
                "must not be more than webhook.concurrency",
            ));
        }
        match (&self.api.metrics_key, self.api.metrics_public) {
            (Some(_), true) => {
                return Err(invalid(
                    "api.metrics_public",
                    "give api.metrics_key or set api.metrics_public, not both",
                ));
            }
            (Some(key), false) if key.expose().len() < 16 => {
                return Err(invalid("api.metrics_key", "must be at least 16 characters"));
            }
            _ => {}
        }
        if self.store.pool_size == 0 {
            return Err(invalid("store.pool_size", "must be at least 1"));
        }
        if self.store.timeout_secs == 0 {
            return Err(invalid("store.timeout_secs", "must be at least 1"));
        }
        if self.cluster.heartbeat_secs == 0 {
            return Err(invalid("cluster.heartbeat_secs", "must be at least 1"));
        }
        if self.cluster.dead_after_secs < 2 * self.cluster.heartbeat_secs {
            return Err(invalid(
                "cluster.dead_after_secs",
                "must be at least twice cluster.heartbeat_secs (one late beat is not a death)",
            ));
        }
        self.validate_signin()?;
        Ok(())
    }

    /// `[methods]` and `[signin]`.
    fn validate_signin(&self) -> Result<(), ConfigError> {
        if let Some(key) = &self.methods.seal_key {
            crate::seal::Sealer::from_config(key)
                .map_err(|e| invalid("methods.seal_key", e.to_string()))?;
        }
        if let Some(key) = &self.signin.signing_key {
            crate::signed_result::ResultSigner::from_pem(key)
                .map_err(|e| invalid("signin.signing_key", e.to_string()))?;
        }
        if let Some(key) = &self.push.vapid_private_key {
            crate::webpush::VapidKey::from_config(key)
                .map_err(|e| invalid("push.vapid_private_key", e.to_string()))?;
        }
        let subject = &self.push.vapid_subject;
        if !(subject.starts_with("mailto:") || subject.starts_with("https://")) {
            return Err(invalid(
                "push.vapid_subject",
                "must be a mailto: or https: URI (RFC 8292 section 2.1)",
            ));
        }
        // A push request lives at most as long as a verification waits for its user.
        if self.push.timeout_secs == 0 || self.push.timeout_secs > 300 {
            return Err(invalid("push.timeout_secs", "must be between 1 and 300"));
        }
        if self.push.enrol_ttl_secs == 0 {
            return Err(invalid("push.enrol_ttl_secs", "must be at least 1"));
        }
        for (key, value) in [
            ("methods.code_attempts", self.methods.code_attempts as u64),
            (
                "methods.lockout_failures",
                self.methods.lockout_failures as u64,
            ),
            ("methods.lockout_secs", self.methods.lockout_secs),
            ("methods.max_per_user", self.methods.max_per_user as u64),
            ("signin.link_ttl_secs", self.signin.link_ttl_secs),
            ("signin.session_ttl_secs", self.signin.session_ttl_secs),
            ("signin.result_ttl_secs", self.signin.result_ttl_secs),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.methods.totp_issuer.is_empty() || self.methods.totp_issuer.contains(':') {
            return Err(invalid(
                "methods.totp_issuer",
                "must be a non-empty name without `:`",
            ));
        }
        if !self.signin.public_url.is_empty() {
            let url = url::Url::parse(&self.signin.public_url)
                .map_err(|e| invalid("signin.public_url", e.to_string()))?;
            if !matches!(url.scheme(), "http" | "https")
                || url.host_str().is_none()
                || url.path() != "/"
                || url.query().is_some()
                || url.fragment().is_some()
                || !url.username().is_empty()
            {
                return Err(invalid(
                    "signin.public_url",
                    "must be http(s)://host[:port] without path, query or credentials",
                ));
            }
        }
        Ok(())
    }
}

impl ClientConfig {
    /// SHA-256 of the client's API key, from `key` or `key_sha256` (exactly one must be given).
    pub fn key_hash(&self) -> Result<[u8; 32], &'static str> {
        match (&self.key, &self.key_sha256) {
            (Some(_), Some(_)) => Err("give `key` or `key_sha256`, not both"),
            (None, None) => Err("missing: give `key` or `key_sha256`"),
            (Some(key), None) => {
                if key.expose().len() < 16 {
                    return Err("an API key must be at least 16 characters");
                }
                Ok(Sha256::digest(key.expose().as_bytes()).into())
            }
            (None, Some(hex_hash)) => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(hex_hash, &mut out)
                    .map_err(|_| "`key_sha256` must be 64 hex digits")?;
                Ok(out)
            }
        }
    }
}

impl MediaConfig {
    /// The RTP port range, inclusive.
    pub fn rtp_port_range(&self) -> Result<(u16, u16), &'static str> {
        let (low, high) = self
            .rtp_ports
            .split_once('-')
            .ok_or("must be `LOW-HIGH`, like `20000-29999`")?;
        let low: u16 = low.trim().parse().map_err(|_| "LOW is not a port number")?;
        let high: u16 = high
            .trim()
            .parse()
            .map_err(|_| "HIGH is not a port number")?;
        if low == 0 || low > high || !low.is_multiple_of(2) {
            return Err("LOW must be even, non-zero and not above HIGH");
        }
        Ok((low, high))
    }
}

/// Which store implementation a `store.url` selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    /// A SQLite file.
    SqliteFile(PathBuf),
    /// A private in-memory SQLite database (tests, demo): nothing survives the process.
    SqliteMemory,
    /// A PostgreSQL database that several instances may share (the parsed URL holds the
    /// password: its `Debug` prints it redacted).
    Postgres(Box<tokio_postgres::Config>),
}

impl StoreConfig {
    /// Parses `url` into a backend. Error messages never repeat the URL (it is a secret).
    pub fn backend(&self) -> Result<StoreBackend, String> {
        let url = self.url.expose();
        if url == "sqlite::memory:" || url == "sqlite://:memory:" {
            return Ok(StoreBackend::SqliteMemory);
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("`sqlite://` needs a file path".to_owned());
            }
            return Ok(StoreBackend::SqliteFile(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let config: tokio_postgres::Config = url
                .parse()
                .map_err(|e| format!("not a PostgreSQL URL: {}", error_text(&e)))?;
            if config.get_user().is_none_or(str::is_empty) {
                return Err(
                    "the PostgreSQL URL needs a user (`postgres://USER@host/db`)".to_owned(),
                );
            }
            if config.get_hosts().is_empty() {
                return Err(
                    "the PostgreSQL URL needs a host (`postgres://user@HOST/db`)".to_owned(),
                );
            }
            if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
                return Err(
                    "sslmode=require: TLS to PostgreSQL is not supported; reach the database \
                     over a private network or a local socket"
                        .to_owned(),
                );
            }
            return Ok(StoreBackend::Postgres(Box::new(config)));
        }
        Err("must start with `sqlite://` or `postgres://` (or be `sqlite::memory:`)".to_owned())
    }
}

/// An error with its causes, for messages that must not quote the input.
fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The key of a Standard Webhooks secret (`whsec_` + base64 of the key bytes).
#[derive(Clone)]
pub struct WebhookKey(Vec<u8>);

impl WebhookKey {
    /// Prefix of a Standard Webhooks secret.
    pub const PREFIX: &'static str = "whsec_";

    /// Decodes `whsec_<base64>`.
    pub fn parse(secret: &Secret) -> Result<WebhookKey, &'static str> {
        let b64 = secret
            .expose()
            .strip_prefix(Self::PREFIX)
            .ok_or("must start with `whsec_`")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "the part after `whsec_` must be base64")?;
        if bytes.len() < 16 || bytes.len() > 64 {
            return Err("the key must be between 16 and 64 bytes (24 to 88 base64 characters)");
        }
        Ok(WebhookKey(bytes))
    }

    /// The HMAC key bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookKey([redacted])")
    }
}

impl CallConfig {
    pub fn ring_timeout(&self) -> Duration {
        Duration::from_secs(self.ring_timeout_secs)
    }
    pub fn response_timeout(&self) -> Duration {
        Duration::from_secs(self.response_timeout_secs)
    }
    pub fn inter_digit_timeout(&self) -> Duration {
        Duration::from_secs(self.inter_digit_timeout_secs)
    }
    pub fn challenge_timeout(&self) -> Duration {
        Duration::from_secs(self.challenge_timeout_secs)
    }
    pub fn answer_guard(&self) -> Duration {
        Duration::from_millis(self.answer_guard_ms)
    }
}

/// `en` or `en-US`.
pub fn is_language_tag(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        2 => b.iter().all(u8::is_ascii_lowercase),
        5 => {
            b[..2].iter().all(u8::is_ascii_lowercase)
                && b[2] == b'-'
                && b[3..].iter().all(u8::is_ascii_uppercase)
        }
        _ => false,
    }
}

/// Applies one `CALLVERIFY_A__B__C=value` to the table.
fn apply_override(
    table: &mut toml::Table,
    template: &toml::Table,
    var: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let env_err = |reason: String| ConfigError::Env {
        var: var.to_owned(),
        reason,
    };
    let rest = &var[ENV_PREFIX.len()..];
    let path: Vec<String> = rest
        .split(ENV_SEPARATOR)
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if path.len() < 2 || path.iter().any(String::is_empty) {
        return Err(env_err(format!(
            "must be {ENV_PREFIX}<SECTION>{ENV_SEPARATOR}<KEY> (e.g. CALLVERIFY_SIP__PASSWORD)"
        )));
    }
    if !template.contains_key(&path[0]) {
        let sections: Vec<&str> = template.keys().map(String::as_str).collect();
        return Err(env_err(format!(
            "unknown section `{}` (sections: {})",
            path[0],
            sections.join(", ")
        )));
    }
    // The type the key has in the file, else in the defaults, decides how the value is read.
    let existing = lookup(&toml::Value::Table(table.clone()), &path)
        .or_else(|| lookup(&toml::Value::Table(template.clone()), &path));
    let parsed = typed_value(existing.as_ref(), value).map_err(env_err)?;
    let mut node = &mut *table;
    let (last, parents) = path
        .split_last()
        .expect("path has at least two segments (checked)");
    let mut i = 0;
    while i < parents.len() {
        let seg = &parents[i];
        // An array segment followed by an index: `clients__0__key`.
        if let Some(index) = parents.get(i + 1).and_then(|s| s.parse::<usize>().ok()) {
            let array = node
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            let toml::Value::Array(array) = array else {
                return Err(env_err(format!("`{seg}` is not a list")));
            };
            if index > array.len() {
                return Err(env_err(format!(
                    "index {index} skips entries: `{seg}` has {} entries",
                    array.len()
                )));
            }
            if index == array.len() {
                array.push(toml::Value::Table(toml::Table::new()));
            }
            let toml::Value::Table(t) = &mut array[index] else {
                return Err(env_err(format!("`{seg}[{index}]` is not a table")));
            };
            node = t;
            i += 2;
            continue;
        }
        let child = node
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(t) = child else {
            return Err(env_err(format!("`{seg}` is not a table")));
        };
        node = t;
        i += 1;
    }
    node.insert(last.clone(), parsed);
    Ok(())
}

fn lookup(root: &toml::Value, path: &[String]) -> Option<toml::Value> {
    let mut node = root;
    for seg in path {
        node = match node {
            toml::Value::Table(t) => t.get(seg)?,
            toml::Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node.clone())
}

fn typed_value(existing: Option<&toml::Value>, raw: &str) -> Result<toml::Value, String> {
    let parse_list = |raw: &str| -> Result<toml::Value, String> {
        if raw.trim_start().starts_with('[') {
            let doc: BTreeMap<String, toml::Value> = toml::from_str(&format!("v = {raw}"))
                .map_err(|e| format!("not a TOML list: {e}"))?;
            doc.get("v")
                .cloned()
                .ok_or_else(|| "not a TOML list".to_owned())
        } else {
            Ok(toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ))
        }
    };
    match existing {
        Some(toml::Value::Integer(_)) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("`{raw}` is not an integer")),
        Some(toml::Value::Boolean(_)) => match raw.trim() {
            "true" | "1" => Ok(toml::Value::Boolean(true)),
            "false" | "0" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("`{raw}` is not true or false")),
        },
        Some(toml::Value::Float(_)) => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| format!("`{raw}` is not a number")),
        Some(toml::Value::Array(_)) => parse_list(raw),
        Some(_) => Ok(toml::Value::String(raw.to_owned())),
        None if raw.trim_start().starts_with('[') => parse_list(raw),
        None => Ok(toml::Value::String(raw.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            Path::new("test.toml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    const CLIENT: &str = r#"
[[api.clients]]
name = "auth"
key = "cv_test_0123456789abcdef"
webhook_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
callback_hosts = ["auth.example.com"]
"#;

    #[test]
    fn the_example_config_loads() {
        let text = include_str!("../config/callverify.example.toml");
        let config = load(text, &[]).expect("example config is valid");
        assert_eq!(config.api.clients.len(), 1);
        assert_eq!(config.limits.countries, vec!["US".to_owned()]);
    }

    #[test]
    fn env_overrides_keep_the_type_of_the_key() {
        let config = load(
            CLIENT,
            &[
                ("CALLVERIFY_SIP__PASSWORD", "1234"),
                ("CALLVERIFY_SIP__CHANNELS", "7"),
                ("CALLVERIFY_SIP__ALLOW_SIP_URIS", "true"),
                ("CALLVERIFY_LIMITS__COUNTRIES", "US,CA"),
                ("CALLVERIFY_API__CLIENTS__0__KEY", "cv_from_env_0123456789"),
                ("OTHER_VAR", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(config.sip.password.expose(), "1234");
        assert_eq!(config.sip.channels, 7);
        assert!(config.sip.allow_sip_uris);
        assert_eq!(config.limits.countries, vec!["US", "CA"]);
        assert_eq!(
            config.api.clients[0].key.as_ref().unwrap().expose(),
            "cv_from_env_0123456789"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = load("[sip]\nchannels = 0\n", &[]).unwrap_err();
        assert!(e.to_string().contains("sip.channels"), "{e}");
        let e = load("[sip]\nchannels = \"many\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("sip.channels"), "{e}");
        let e = load("[sip]\nchanels = 3\n", &[]).unwrap_err();
        assert!(e.to_string().contains("chanels"), "{e}");
        let e = load("", &[("CALLVERIFY_SIP__CHANNELS", "lots")]).unwrap_err();
        assert!(e.to_string().contains("CALLVERIFY_SIP__CHANNELS"), "{e}");
        let e = load("", &[("CALLVERIFY_NOPE__X", "1")]).unwrap_err();
        assert!(e.to_string().contains("unknown section `nope`"), "{e}");
        let e = load("[limits]\ncountries = [\"usa\"]\n", &[]).unwrap_err();
        assert!(e.to_string().contains("limits.countries[0]"), "{e}");
        let bad_secret = CLIENT.replace("whsec_MfKQ", "MfKQ");
        let e = load(&bad_secret, &[]).unwrap_err();
        assert!(
            e.to_string().contains("api.clients[0].webhook_secret"),
            "{e}"
        );
        let e = load("[store]\nurl = \"mysql://x\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("store.url"), "{e}");
        let e = load("[store]\nurl = \"postgres://127.0.0.1/cv\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("needs a user"), "{e}");
        let e = load("[cluster]\nheartbeat_secs = 5\ndead_after_secs = 6\n", &[]).unwrap_err();
        assert!(e.to_string().contains("cluster.dead_after_secs"), "{e}");
    }

    #[test]
    fn a_postgres_url_selects_postgres_and_never_prints() {
        let url = "postgres://cv:s3cret-pw@db.internal:5433/callverify";
        let key = "6b".repeat(32);
        // Without the store key the instances would seal with different keys: refused.
        let e = load("", &[("CALLVERIFY_STORE__URL", url)]).unwrap_err();
        assert!(e.to_string().contains("store.secret_key"), "{e}");
        let config = load(
            "",
            &[
                ("CALLVERIFY_STORE__URL", url),
                ("CALLVERIFY_STORE__SECRET_KEY", key.as_str()),
            ],
        )
        .unwrap();
        let StoreBackend::Postgres(pg) = config.store.backend().unwrap() else {
            panic!("not postgres")
        };
        assert_eq!(pg.get_user(), Some("cv"));
        assert_eq!(pg.get_dbname(), Some("callverify"));
        assert_eq!(pg.get_ports(), &[5433]);
        for text in [
            format!("{config:?}"),
            format!("{pg:?}"),
            toml::to_string(&config).unwrap(),
        ] {
            assert!(!text.contains("s3cret-pw"), "{text}");
            assert!(!text.contains(&key), "{text}");
        }
        let e = load(
            "",
            &[(
                "CALLVERIFY_STORE__URL",
                "postgres://cv:s3cret-pw@h/db?bogus=1",
            )],
        )
        .unwrap_err();
        assert!(e.to_string().contains("store.url"), "{e}");
        assert!(!e.to_string().contains("s3cret-pw"), "{e}");
    }

    #[test]
    fn sign_in_keys_are_checked_at_load() {
        let e = load("[methods]\nseal_key = \"c2hvcnQ=\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("methods.seal_key"), "{e}");
        let e = load("[signin]\nsigning_key = \"not a key\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("signin.signing_key"), "{e}");
        let hosted = CLIENT.replace(
            "callback_hosts = [\"auth.example.com\"]",
            "callback_hosts = [\"auth.example.com\"]\nreturn_hosts = [\"app.example.com\"]",
        );
        let e = load(&hosted, &[]).unwrap_err();
        assert!(e.to_string().contains("signin.signing_key"), "{e}");
        let e = load("[signin]\npublic_url = \"https://x.example/path\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("signin.public_url"), "{e}");
        let ok = load(
            "[methods]\nseal_key = \"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\"\n",
            &[],
        )
        .unwrap();
        assert!(
            !format!("{ok:?}").contains("AQIDBAUG"),
            "the seal key never prints"
        );
    }

    #[test]
    fn secrets_never_print() {
        let config = load(CLIENT, &[("CALLVERIFY_SIP__PASSWORD", "hunter2-pass")]).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2-pass"));
        assert!(!debug.contains("cv_test_0123456789abcdef"));
        assert!(!debug.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        let dumped = toml::to_string(&config).unwrap();
        assert!(!dumped.contains("hunter2-pass"));
        assert_eq!(config.sip.password.to_string(), "[redacted]");
    }
}
