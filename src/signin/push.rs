//! Sign-in by push (issue 12): enrolment links for the authenticator app, a request per push
//! attempt (nonce, number, choices) delivered by Web Push and the app's live channel, and the
//! device's signed answers turned into results. Checks of stranger input (the app's JSON and
//! signatures) are in [`crate::methods::push`]; the single-use rules are in the store.

use flow::CallResult;

use super::{SignIn, SigninError, conflict};
use crate::methods::push::{self as device, Choice, DeviceError, DeviceKey};
use crate::store::{PushAnswered, PushRegistered, Status, UnixMs, Verification, now_ms};
use crate::user::{
    BrowserToken, Method, MethodDetail, MethodId, MethodKind, PushDevice, PushRequest,
    PushSubscription,
};
use crate::webpush::UaKeys;
use crate::webpush::send::{Sent, Target};

/// Most open requests one device is shown at once.
pub const OPEN_REQUESTS_MAX: u32 = 10;

/// What a device is told about a request (push payload and live-channel event alike).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RequestMessage {
    /// Always `"sign_in_request"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub verification_id: String,
    pub method_id: String,
    pub nonce: String,
    /// The API client asking (its configured name).
    pub client: String,
    /// What the auth server chose to show (`metadata` of the verification).
    pub metadata: Option<serde_json::Value>,
    /// Three numbers; the one on the sign-in screen is among them.
    pub choices: [u8; 3],
    /// Unix milliseconds after which an answer is refused.
    pub expires_at: UnixMs,
}

/// Why a device request was refused (each a 4xx for the app).
#[derive(Debug, thiserror::Error)]
pub enum DeviceRefused {
    #[error(transparent)]
    Invalid(#[from] DeviceError),
    /// The enrolment link is unknown, used or expired.
    #[error("this enrolment link is {0}; ask for a new one")]
    Link(&'static str),
    /// No such push method with a registered device.
    #[error("unknown device")]
    UnknownDevice,
    /// The signature does not verify with the method's key.
    #[error("the signature does not verify with this device's key")]
    Forged,
    /// The event-stream signature is too old or from the future.
    #[error("the signed time is more than a minute away from ours")]
    Stale,
    /// Replayed, expired, or not a request of this device that is still waiting.
    #[error("{0}")]
    NotOpen(&'static str),
    #[error(transparent)]
    Signin(#[from] SigninError),
}

impl SignIn {
    /// The enrolment of a new (pending) push method: a one-time link the app opens.
    pub async fn enrol_push(&self, method: &MethodId) -> Result<String, SigninError> {
        self.push_sender()?;
        let token = BrowserToken::generate();
        let ttl =
            i64::try_from(self.config.push.enrol_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        self.directory()?
            .create_push_enrolment(method, token.hash(), now_ms().saturating_add(ttl))
            .await?;
        // The token travels in the fragment: never sent to a server in a request line or a
        // Referer, so no access log keeps it.
        Ok(format!("{}/app/#enrol={}", self.base_url(), token.expose()))
    }

    /// `POST /app/v1/register`: a device proves it holds its key and uses its link once.
    pub async fn register_device(&self, body: &[u8]) -> Result<Method, DeviceRefused> {
        let registration =
            device::parse_registration(body, self.config.push.allow_loopback_endpoints)?;
        registration
            .key
            .verify(&registration.message(), &registration.signature)
            .map_err(|_| DeviceRefused::Forged)?;
        let device = PushDevice {
            public_key: registration.key.to_sec1(),
            subscription: registration.subscription.map(|s| PushSubscription {
                endpoint: s.endpoint.to_string(),
                p256dh: s.p256dh.to_vec(),
                auth: s.auth.to_vec(),
            }),
        };
        let token = BrowserToken::from_presented(&registration.token);
        match self
            .directory()?
            .register_push_device(token.hash(), device, now_ms())
            .await
            .map_err(SigninError::from)?
        {
            PushRegistered::Registered(m) => {
                tracing::info!(method = %m.id, user = %m.user_id, "push device registered");
                Ok(*m)
            }
            PushRegistered::AlreadyUsed => Err(DeviceRefused::Link("already used")),
            PushRegistered::Expired => Err(DeviceRefused::Link("expired")),
            PushRegistered::Unknown => Err(DeviceRefused::Link("unknown")),
        }
    }

    /// The device key of an active push method.
    async fn device_key(&self, method: &MethodId) -> Result<(Method, DeviceKey), DeviceRefused> {
        let m = self
            .directory()?
            .method_by_id(method)
            .await
            .map_err(SigninError::from)?
            .ok_or(DeviceRefused::UnknownDevice)?;
        let MethodDetail::Push {
            device: Some(device),
        } = &m.detail
        else {
            return Err(DeviceRefused::UnknownDevice);
        };
        let key =
            DeviceKey::from_sec1(&device.public_key).map_err(|_| DeviceRefused::UnknownDevice)?;
        Ok((m, key))
    }

    /// Checks an event-stream subscription: `sig` over the method and a time within a minute.
    pub async fn authenticate_listener(
        &self,
        method: &MethodId,
        ts: i64,
        sig: &str,
    ) -> Result<Method, DeviceRefused> {
        if (now_ms() - ts).abs() > device::EVENTS_SKEW_MS {
            return Err(DeviceRefused::Stale);
        }
        let (m, key) = self.device_key(method).await?;
        key.verify(&device::events_message(method.as_str(), ts), sig)
            .map_err(|_| DeviceRefused::Forged)?;
        Ok(m)
    }

    /// The requests a listening device should see now.
    pub async fn open_requests(
        &self,
        method: &MethodId,
    ) -> Result<Vec<RequestMessage>, SigninError> {
        let directory = self.directory()?;
        let mut out = Vec::new();
        for r in directory
            .open_push_requests(method, now_ms(), OPEN_REQUESTS_MAX)
            .await?
        {
            if let Some(v) = self.store.get(&r.verification_id).await? {
                out.push(message(&r, &v));
            }
        }
        Ok(out)
    }

    /// Starts the push attempt of `v` (new, or just switched to push): stores its request and
    /// sends it. Returns the number for the sign-in screen.
    pub async fn start_push(&self, v: &Verification) -> Result<Option<u8>, SigninError> {
        let (Some(user), Some(current)) = (&v.user_id, &v.method) else {
            return Ok(None);
        };
        if current.kind != MethodKind::Push || v.status != Status::AwaitingUser {
            return Ok(None);
        }
        let directory = self.directory()?;
        let method = directory
            .method(user, &current.id)
            .await?
            .ok_or_else(|| conflict("method_deleted", "the method was deleted"))?;
        let (number, choices) = device::draw_numbers();
        let now = now_ms();
        let timeout =
            i64::try_from(self.config.push.timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let request = PushRequest {
            verification_id: v.id.clone(),
            method_id: method.id.clone(),
            nonce: device::nonce(),
            number,
            choices,
            created_at: now,
            expires_at: now.saturating_add(timeout),
            answered_at: None,
        };
        directory.create_push_request(request.clone()).await?;
        // Listening apps re-read their open requests on any announcement.
        self.completions.announce(&v.id);
        self.sweep.notify_one();
        let subscription = match &method.detail {
            MethodDetail::Push {
                device:
                    Some(PushDevice {
                        subscription: Some(s),
                        ..
                    }),
            } => Some(s.clone()),
            _ => None,
        };
        if let (Some(sub), Ok(sender)) = (subscription, self.push_sender()) {
            let target = url::Url::parse(&sub.endpoint)
                .ok()
                .zip(UaKeys::new(&sub.p256dh, &sub.auth).ok())
                .map(|(endpoint, keys)| Target { endpoint, keys });
            let payload = serde_json::to_vec(&message(&request, v)).unwrap_or_default();
            if let Some(target) = target {
                let (sender, signin) = (sender.clone(), self.clone());
                let (id, method_id, deadline) =
                    (v.id.clone(), method.id.clone(), request.expires_at);
                tokio::spawn(async move {
                    match sender.deliver(&target, &payload, deadline).await {
                        Ok(Sent::Accepted) => tracing::info!(%id, "push sent"),
                        Ok(Sent::Gone) => {
                            tracing::warn!(%id, method = %method_id, "push subscription gone");
                            if let Ok(d) = signin.directory() {
                                let _ = d.drop_push_subscription(&method_id).await;
                            }
                        }
                        Ok(other) => tracing::warn!(%id, ?other, "push not delivered"),
                        Err(e) => tracing::warn!(%id, error = %e, "push not sent"),
                    }
                });
            }
        }
        Ok(Some(number))
    }

    /// The number to show for a verification waiting on a push attempt.
    pub async fn push_number(&self, v: &Verification) -> Result<Option<u8>, SigninError> {
        if v.method.as_ref().map(|m| m.kind) != Some(MethodKind::Push) {
            return Ok(None);
        }
        Ok(self
            .directory()?
            .push_request(&v.id)
            .await?
            .filter(|r| v.method.as_ref().is_some_and(|m| m.id == r.method_id))
            .map(|r| r.number))
    }

    /// `POST /app/v1/answer`: a signed answer from the device, checked and recorded once.
    pub async fn answer(&self, body: &[u8]) -> Result<Verification, DeviceRefused> {
        let answer = device::parse_answer(body)?;
        let method = MethodId::parse(&answer.method_id).ok_or(DeviceRefused::UnknownDevice)?;
        let id = crate::store::VerificationId::parse(&answer.verification_id)
            .ok_or(DeviceRefused::NotOpen("no such request for this device"))?;
        let (_, key) = self.device_key(&method).await?;
        key.verify(&answer.message(), &answer.signature)
            .map_err(|_| DeviceRefused::Forged)?;
        let directory = self.directory()?;
        let request = directory
            .push_request(&id)
            .await
            .map_err(SigninError::from)?
            .filter(|r| r.method_id == method)
            .ok_or(DeviceRefused::NotOpen("no such request for this device"))?;
        let result = match answer.choice {
            Choice::Approve(n) if n == request.number => CallResult::Confirmed,
            Choice::Approve(_) => CallResult::WrongDigits,
            Choice::Deny => CallResult::Denied,
            Choice::Fraud => CallResult::FraudReported,
        };
        match directory
            .answer_push(&id, &method, &answer.nonce, result, now_ms())
            .await
            .map_err(SigninError::from)?
        {
            PushAnswered::Completed(v) => {
                tracing::info!(%id, %method, result = result.as_str(), "push answered");
                self.completed(&v);
                Ok(*v)
            }
            PushAnswered::AlreadyAnswered => Err(DeviceRefused::NotOpen("already answered")),
            PushAnswered::Expired => Err(DeviceRefused::NotOpen("this request has expired")),
            PushAnswered::NotAwaiting => {
                Err(DeviceRefused::NotOpen("no such request for this device"))
            }
        }
    }

    /// Sweeper: a push attempt whose request expired unanswered completes `no_input`.
    pub(super) async fn expire_push(
        &self,
        v_id: &crate::store::VerificationId,
        now: UnixMs,
    ) -> Result<(), SigninError> {
        let directory = self.directory()?;
        let Some(request) = directory.push_request(v_id).await? else {
            return Ok(());
        };
        if request.answered_at.is_none() && now >= request.expires_at {
            let Some(v) = self.store.get(v_id).await? else {
                return Ok(());
            };
            if v.method.as_ref().is_some_and(|m| m.id == request.method_id)
                && let Some(done) = directory
                    .complete_awaiting(v_id, CallResult::NoInput, now)
                    .await?
            {
                tracing::info!(id = %done.id, "push request unanswered: no_input");
                self.completed(&done);
            }
        }
        Ok(())
    }
}

fn message(r: &PushRequest, v: &Verification) -> RequestMessage {
    RequestMessage {
        kind: "sign_in_request".to_owned(),
        verification_id: r.verification_id.as_str().to_owned(),
        method_id: r.method_id.as_str().to_owned(),
        nonce: r.nonce.clone(),
        client: v.client.clone(),
        metadata: v.metadata.clone(),
        choices: r.choices,
        expires_at: r.expires_at,
    }
}

/// The enrolment link as a QR code (SVG), for a phone's camera.
pub fn qr_svg(link: &str) -> Option<String> {
    crate::methods::totp::qr_svg(link).ok()
}
