//! Sign-in by user (DESIGN.md "Sign-in methods"): what the API's `/code` and `/switch` and
//! the hosted sign-in page ([`page`]) share — checking an app code, switching methods,
//! expiring verifications that wait for their user, and the hosted prompt's link, session and
//! signed result. Below the API (which mounts [`page::routes`]), above the store and dialer.

pub mod app;
pub mod input;
pub mod page;
pub mod push;
pub mod text;

use std::sync::Arc;
use std::time::Duration;

use flow::CallResult;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::dialer::DialerHandle;
use crate::methods::totp::{self, Code};
use crate::metrics::Metrics;
use crate::seal::{SealError, Sealer};
use crate::signed_result::{MethodClaim, ResultClaims, ResultSigner, SignedResultError};
use crate::store::{
    CodeConfirmed, Completions, Directory, PromptOpened, Status, Store, StoreError, Switched,
    UnixMs, Verification, VerificationId, now_ms,
};
use crate::user::{BrowserToken, Method, MethodId, MethodKind, MethodStatus, NewPrompt, Prompt};
use crate::webhook::OutboxWake;

/// How often the sweeper looks at verifications waiting for their user.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Most waiting verifications handled per sweep.
const SWEEP_BATCH: u32 = 500;
/// A verification by user waits for its user at most this long after it was created, then
/// completes `expired` (DESIGN.md "Outcome vocabulary").
pub const AWAITING_TIMEOUT: Duration = Duration::from_secs(300);
/// Query parameter of `return_url` carrying the signed result.
pub const RESULT_PARAM: &str = "callverify_token";

/// Why a sign-in operation was refused. The API and the page each render these their way.
#[derive(Debug, thiserror::Error)]
pub enum SigninError {
    /// The store backend has no directory yet (users and methods need one).
    #[error("users and methods are not available with this store backend")]
    NoDirectory,
    /// `push.vapid_private_key` is missing: push cannot be enrolled or sent.
    #[error(
        "push needs push.vapid_private_key (CALLVERIFY_PUSH__VAPID_PRIVATE_KEY) to be configured"
    )]
    NoVapidKey,
    /// `methods.seal_key` is missing: app codes cannot be enrolled or checked.
    #[error("app_code needs methods.seal_key (CALLVERIFY_METHODS__SEAL_KEY) to be configured")]
    NoSealKey,
    #[error("{0}")]
    NotFound(String),
    /// The state of the verification or method does not allow it.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Understood, refused by policy.
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// Too many wrong codes for this method.
    #[error("too many wrong codes for this method; try again later or use another method")]
    Locked { until: UnixMs },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed secret does not open: the key changed or the record is damaged.
    #[error("a method secret cannot be opened: {0}")]
    Seal(#[from] SealError),
    #[error(transparent)]
    Sign(#[from] SignedResultError),
}

fn conflict(code: &'static str, message: impl Into<String>) -> SigninError {
    SigninError::Conflict {
        code,
        message: message.into(),
    }
}

/// What the sign-in operations share (cheap to clone).
#[derive(Clone)]
pub struct SignIn {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub directory: Option<Arc<dyn Directory>>,
    sealer: Option<Sealer>,
    signer: Option<ResultSigner>,
    push: Option<crate::webpush::send::PushSender>,
    pub dialer: DialerHandle,
    pub completions: Completions,
    pub outbox: OutboxWake,
    pub metrics: Arc<Metrics>,
    sweep: Arc<Notify>,
}

/// A hosted prompt's session, once its cookie checked out.
#[derive(Clone, Debug)]
pub struct Session {
    pub prompt: Prompt,
    /// The CSRF token the page's forms carry (derived from the session cookie).
    pub csrf: String,
}

impl SignIn {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        dialer: DialerHandle,
        completions: Completions,
        outbox: OutboxWake,
        metrics: Arc<Metrics>,
    ) -> Result<SignIn, ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.to_owned(),
            reason,
        };
        let sealer = config
            .methods
            .seal_key
            .as_ref()
            .map(Sealer::from_config)
            .transpose()
            .map_err(|e| invalid("methods.seal_key", e.to_string()))?;
        let signer = config
            .signin
            .signing_key
            .as_ref()
            .map(ResultSigner::from_pem)
            .transpose()
            .map_err(|e| invalid("signin.signing_key", e.to_string()))?;
        let push = config
            .push
            .vapid_private_key
            .as_ref()
            .map(|key| {
                let vapid = crate::webpush::VapidKey::from_config(key)
                    .map_err(|e| invalid("push.vapid_private_key", e.to_string()))?;
                crate::webpush::send::PushSender::new(&config, vapid)
                    .map_err(|e| invalid("push", e.to_string()))
            })
            .transpose()?;
        Ok(SignIn {
            push,
            directory: store.directory(),
            config,
            store,
            sealer,
            signer,
            dialer,
            completions,
            outbox,
            metrics,
            sweep: Arc::new(Notify::new()),
        })
    }

    pub fn directory(&self) -> Result<&Arc<dyn Directory>, SigninError> {
        self.directory.as_ref().ok_or(SigninError::NoDirectory)
    }

    pub fn sealer(&self) -> Result<&Sealer, SigninError> {
        self.sealer.as_ref().ok_or(SigninError::NoSealKey)
    }

    /// The Web Push sender (present with `push.vapid_private_key`).
    pub fn push_sender(&self) -> Result<&crate::webpush::send::PushSender, SigninError> {
        self.push.as_ref().ok_or(SigninError::NoVapidKey)
    }

    /// The result signer (present whenever a client may use hosted prompts).
    pub fn signer(&self) -> Option<&ResultSigner> {
        self.signer.as_ref()
    }

    /// Base URL of prompt links and `iss` of signed results.
    pub fn base_url(&self) -> String {
        self.config.signin.base_url(self.config.api.listen)
    }

    /// Startup: refuses a store whose sealed secrets this configuration cannot open.
    pub async fn check_sealing_key(&self) -> Result<(), ConfigError> {
        let Some(directory) = &self.directory else {
            return Ok(());
        };
        let sample = directory
            .sealed_secret_sample()
            .await
            .map_err(|e| ConfigError::Invalid {
                key: "methods.seal_key".into(),
                reason: format!("cannot read the store to check the key: {e}"),
            })?;
        match (sample, &self.sealer) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(ConfigError::Invalid {
                key: "methods.seal_key".into(),
                reason: "the store holds app_code secrets sealed with a key; configure that key \
                         (CALLVERIFY_METHODS__SEAL_KEY)"
                    .into(),
            }),
            (Some((_, sealed)), Some(sealer)) => {
                sealer
                    .made_with_this_key(&sealed)
                    .map_err(|e| ConfigError::Invalid {
                        key: "methods.seal_key".into(),
                        reason: format!("does not open the stored method secrets: {e}"),
                    })
            }
        }
    }

    /// The verification if it belongs to `client`.
    async fn owned(&self, client: &str, id: &VerificationId) -> Result<Verification, SigninError> {
        self.store
            .get(id)
            .await?
            .filter(|v| v.client == client)
            .ok_or_else(|| SigninError::NotFound(format!("no verification `{id}`")))
    }

    /// Announces a completion to long-polls, the page, metrics and the outbox.
    fn completed(&self, v: &Verification) {
        if let Some(result) = v.result {
            self.metrics.completed(result, None);
        }
        self.completions.announce(&v.id);
        self.outbox.wake();
    }

    /// Checks an app code for the verification's current method. `Ok`: the verification after
    /// the code (completed `confirmed`, still waiting after a wrong code, or completed
    /// `wrong_digits` after the last allowed one).
    pub async fn submit_code(
        &self,
        client: &str,
        id: &VerificationId,
        code: &Code,
    ) -> Result<Verification, SigninError> {
        let directory = self.directory()?;
        let v = self.owned(client, id).await?;
        if v.status == Status::Completed {
            return Err(conflict(
                "already_completed",
                format!("verification `{id}` is already completed"),
            ));
        }
        let (Some(user), Some(current)) = (&v.user_id, &v.method) else {
            return Err(conflict(
                "not_awaiting_code",
                "this verification is not by user: it takes no code",
            ));
        };
        if current.kind != MethodKind::AppCode || v.status != Status::AwaitingUser {
            return Err(conflict(
                "not_awaiting_code",
                format!(
                    "the current method of this verification is `{}`, not an app code",
                    current.kind.as_str()
                ),
            ));
        }
        let method = directory
            .method(user, &current.id)
            .await?
            .ok_or_else(|| conflict("method_deleted", "the method was deleted"))?;
        let now = now_ms();
        if let Some(until) = method.locked_until.filter(|u| *u > now) {
            return Err(SigninError::Locked { until });
        }
        let sealer = self.sealer()?;
        let unix_secs = u64::try_from(now / 1000).unwrap_or(0);
        let m = &self.config.methods;
        let lock_ms = i64::try_from(m.lockout_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        match totp::check(sealer, &method, code, unix_secs)? {
            Some(step) => match directory.confirm_code(id, &method.id, step, now).await? {
                CodeConfirmed::Confirmed(done) => {
                    tracing::info!(%id, method = %method.id, "app code accepted");
                    self.completed(&done);
                    Ok(*done)
                }
                CodeConfirmed::Replayed => {
                    directory
                        .record_code_failure(&method.id, now, m.lockout_failures, lock_ms)
                        .await?;
                    tracing::info!(%id, method = %method.id, "app code replayed: refused");
                    Err(conflict(
                        "code_already_used",
                        "this code was already used; wait for the app's next code",
                    ))
                }
                CodeConfirmed::NotAwaiting => Err(conflict(
                    "not_awaiting_code",
                    "the verification stopped waiting for a code",
                )),
            },
            None => {
                let rejected = directory
                    .reject_code(
                        id,
                        &method.id,
                        now,
                        m.code_attempts,
                        m.lockout_failures,
                        lock_ms,
                    )
                    .await?;
                if let Some(until) = rejected.locked_until {
                    tracing::warn!(%id, method = %method.id, until, "method locked after wrong codes");
                }
                let v = rejected.verification.ok_or_else(|| {
                    conflict(
                        "not_awaiting_code",
                        "the verification stopped waiting for a code",
                    )
                })?;
                if v.status == Status::Completed {
                    self.completed(&v);
                }
                Ok(v)
            }
        }
    }

    /// "Use a different verification option": ends the current attempt (hanging up its call)
    /// and starts `method_id`'s.
    pub async fn switch(
        &self,
        client: &str,
        id: &VerificationId,
        method_id: &MethodId,
    ) -> Result<Verification, SigninError> {
        let directory = self.directory()?;
        let v = self.owned(client, id).await?;
        let Some(user) = &v.user_id else {
            return Err(SigninError::Unprocessable {
                code: "not_by_user",
                message: "only a verification by user can switch methods".into(),
            });
        };
        let method = directory
            .method(user, method_id)
            .await?
            .ok_or_else(|| SigninError::NotFound(format!("no method `{method_id}`")))?;
        if method.status != MethodStatus::Active {
            return Err(SigninError::Unprocessable {
                code: "method_not_active",
                message: format!("method `{method_id}` is not active (enrolment unfinished)"),
            });
        }
        if method.kind() == MethodKind::AppCode && self.sealer.is_none() {
            return Err(SigninError::NoSealKey);
        }
        if method.kind() == MethodKind::Push && self.push.is_none() {
            return Err(SigninError::NoVapidKey);
        }
        match directory
            .switch_method(id, client, &method, now_ms())
            .await?
        {
            Switched::NotFound => Err(SigninError::NotFound(format!("no verification `{id}`"))),
            Switched::Completed(_) => Err(conflict(
                "already_completed",
                format!("verification `{id}` is already completed"),
            )),
            Switched::Switched {
                verification,
                was_in_call,
            } => {
                tracing::info!(%id, to = %method.id, kind = method.kind().as_str(), was_in_call, "method switched");
                if was_in_call {
                    self.dialer.hang_up_if_placing(id);
                }
                // Wake whoever shows the status (long-polls re-read it).
                self.completions.announce(id);
                if method.kind() == MethodKind::Phone {
                    if let Some(started) = self.start_phone_if_free(id).await? {
                        return Ok(started);
                    }
                    self.sweep.notify_one();
                }
                if method.kind() == MethodKind::Push {
                    self.start_push(&verification).await?;
                }
                Ok(verification)
            }
        }
    }

    /// Queues the phone attempt of a switched verification unless its previous call is still
    /// hanging up (then the sweeper does it).
    async fn start_phone_if_free(
        &self,
        id: &VerificationId,
    ) -> Result<Option<Verification>, SigninError> {
        if self.dialer.is_placing(id) {
            return Ok(None);
        }
        let started = self.directory()?.start_phone_attempt(id, now_ms()).await?;
        if let Some(v) = &started {
            if v.status == Status::Completed {
                self.completed(v);
            } else {
                self.dialer.wake();
            }
        }
        Ok(started)
    }

    /// Cancels a verification that waits for its user (`DELETE` on one that has no call).
    pub async fn cancel_awaiting(
        &self,
        id: &VerificationId,
    ) -> Result<Option<Verification>, SigninError> {
        let done = self
            .directory()?
            .complete_awaiting(id, CallResult::Cancelled, now_ms())
            .await?;
        if let Some(v) = &done {
            self.completed(v);
        }
        Ok(done)
    }

    /// One look at the verifications waiting for their user: a call still up for one is hung
    /// up; a phone attempt whose previous call ended is queued; the stale ones expire.
    pub async fn sweep_once(&self, now: UnixMs) -> Result<(), SigninError> {
        let Some(directory) = &self.directory else {
            return Ok(());
        };
        let timeout_ms = i64::try_from(AWAITING_TIMEOUT.as_millis()).unwrap_or(i64::MAX);
        for waiting in directory.awaiting(SWEEP_BATCH).await? {
            if self.dialer.hang_up_if_placing(&waiting.id) {
                continue;
            }
            if now.saturating_sub(waiting.created_at) >= timeout_ms {
                if let Some(v) = directory
                    .complete_awaiting(&waiting.id, CallResult::Expired, now)
                    .await?
                {
                    tracing::info!(id = %v.id, "verification expired waiting for its user");
                    self.completed(&v);
                }
                continue;
            }
            match waiting.kind {
                MethodKind::Phone => {
                    self.start_phone_if_free(&waiting.id).await?;
                }
                MethodKind::Push => self.expire_push(&waiting.id, now).await?,
                MethodKind::AppCode => {}
            }
        }
        Ok(())
    }

    /// Runs the sweeper until `shutdown`.
    pub async fn run_sweeper(self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.sweep_once(now_ms()).await {
                tracing::warn!(error = %e, "sign-in sweeper");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.sweep.notified() => {}
                _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
        }
    }

    /// Stores the hosted prompt of `v` and returns its single-use link.
    pub async fn create_prompt(
        &self,
        v: &Verification,
        return_url: String,
    ) -> Result<String, SigninError> {
        let token = BrowserToken::generate();
        let ttl = i64::try_from(self.config.signin.link_ttl_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        self.directory()?
            .create_prompt(NewPrompt {
                verification_id: v.id.clone(),
                client: v.client.clone(),
                return_url,
                token_hash: token.hash(),
                token_expires_at: now_ms().saturating_add(ttl),
            })
            .await?;
        Ok(format!("{}/prompt/{}", self.base_url(), token.expose()))
    }

    /// Exchanges a prompt link's token for a session (once): the session cookie value.
    pub async fn open_prompt(
        &self,
        token: &str,
    ) -> Result<Result<(Prompt, BrowserToken), PromptOpened>, SigninError> {
        if !input::is_token(token) {
            return Ok(Err(PromptOpened::Unknown));
        }
        let session = BrowserToken::generate();
        let csrf = BrowserToken::from_presented(&csrf_of(&session));
        let now = now_ms();
        let ttl = i64::try_from(self.config.signin.session_ttl_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let opened = self
            .directory()?
            .open_prompt(
                BrowserToken::from_presented(token).hash(),
                session.hash(),
                csrf.hash(),
                now,
                now.saturating_add(ttl),
            )
            .await?;
        Ok(match opened {
            PromptOpened::Opened(prompt) => Ok((prompt, session)),
            other => Err(other),
        })
    }

    /// The session of `id` whose cookie is `cookie`, if live.
    pub async fn session(
        &self,
        id: &VerificationId,
        cookie: &str,
    ) -> Result<Option<Session>, SigninError> {
        if !input::is_token(cookie) {
            return Ok(None);
        }
        let token = BrowserToken::from_presented(cookie);
        let prompt = self
            .directory()?
            .prompt_session(id, token.hash(), now_ms())
            .await?;
        Ok(prompt.map(|prompt| Session {
            prompt,
            csrf: csrf_of(&token),
        }))
    }

    /// The signed result of a completed verification, for its prompt's `return_url`.
    pub fn signed_result(&self, v: &Verification) -> Result<Option<String>, SigninError> {
        let (Some(signer), Some(result)) = (&self.signer, v.result) else {
            return Ok(None);
        };
        let iat = now_ms() / 1000;
        let ttl = i64::try_from(self.config.signin.result_ttl_secs).unwrap_or(i64::MAX);
        let claims = ResultClaims {
            iss: self.base_url(),
            aud: v.client.clone(),
            iat,
            exp: iat.saturating_add(ttl),
            jti: hex::encode(rand::random::<[u8; 16]>()),
            verification_id: v.id.as_str().to_owned(),
            user: v.user_id.as_ref().map(|u| u.as_str().to_owned()),
            result: result.as_str().to_owned(),
            approved: v.approved(),
            method: match &v.method {
                Some(m) => MethodClaim {
                    id: Some(m.id.as_str().to_owned()),
                    kind: m.kind.as_str().to_owned(),
                },
                None => MethodClaim {
                    id: None,
                    kind: MethodKind::Phone.as_str().to_owned(),
                },
            },
        };
        Ok(Some(signer.sign(&claims)?))
    }

    /// `return_url` with the signed result appended as `callverify_token`.
    pub fn return_with_result(&self, return_url: &str, token: &str) -> String {
        match url::Url::parse(return_url) {
            Ok(mut url) => {
                url.query_pairs_mut().append_pair(RESULT_PARAM, token);
                url.to_string()
            }
            Err(_) => return_url.to_owned(),
        }
    }

    /// The methods a page may offer besides the current one: active, the user's order.
    pub async fn alternates(&self, v: &Verification) -> Result<Vec<Method>, SigninError> {
        let Some(user) = &v.user_id else {
            return Ok(Vec::new());
        };
        let current = v.method.as_ref().map(|m| &m.id);
        Ok(self
            .directory()?
            .methods(user)
            .await?
            .into_iter()
            .filter(|m| m.status == MethodStatus::Active && Some(&m.id) != current)
            .filter(|m| m.kind() != MethodKind::AppCode || self.sealer.is_some())
            .filter(|m| m.kind() != MethodKind::Push || self.push.is_some())
            .collect())
    }
}

/// The CSRF token of a session: derived from the session cookie (which script cannot read),
/// so the page can render it on every load without storing it in clear.
fn csrf_of(session: &BrowserToken) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("callverify csrf:{}", session.expose()).as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// Until some verification completes or `poll` passes, whichever is first (a closed channel
/// waits the whole `poll`): the sign-in event streams then look at their state again.
async fn completion_or(
    completions: &mut tokio::sync::broadcast::Receiver<crate::store::VerificationId>,
    poll: Duration,
) {
    tokio::select! {
        _ = tokio::time::sleep(poll) => {}
        r = completions.recv() => {
            if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                tokio::time::sleep(poll).await;
            }
        }
    }
}
