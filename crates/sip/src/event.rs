//! What the user agent tells its owner: events, transmits, failures.

use std::fmt;
use std::net::SocketAddr;

use crate::auth::{Algorithm, AuthError};
use crate::info::DtmfInfo;
use crate::message::{Transport, Uri};
use crate::sdp::{Negotiated, SdpError, SessionDescription};

/// Identifies one call (one INVITE and its dialog, including forks) inside a [`crate::UserAgent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallHandle(pub(crate) u64);

impl CallHandle {
    /// The number behind the handle (unique per user agent), for logs.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for CallHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call#{}", self.0)
    }
}

/// A datagram (or stream message) the runtime must send.
#[derive(Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The call it belongs to (`None`: a stateless answer such as 481 or OPTIONS 200).
    pub call: Option<CallHandle>,
    /// Transport to use.
    pub transport: Transport,
    /// Where to send it.
    pub destination: SocketAddr,
    /// The SIP message.
    pub payload: Vec<u8>,
}

impl fmt::Debug for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload carries phone numbers: only its first word and size.
        let first = self
            .payload
            .split(|b| *b == b' ')
            .next()
            .unwrap_or_default();
        f.debug_struct("Transmit")
            .field("call", &self.call)
            .field("transport", &self.transport)
            .field("destination", &self.destination)
            .field("kind", &String::from_utf8_lossy(first))
            .field("len", &self.payload.len())
            .finish()
    }
}

/// Why an outgoing call failed before it was answered. Who is at fault is in each variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The far end (or the trunk) answered with a final non-2xx status (busy, decline, not
    /// found, …): a call outcome, not a protocol error.
    Rejected {
        /// Status code (300–699).
        status: u16,
    },
    /// Digest authentication failed: the trunk challenged again after we answered
    /// (wrong credentials: our configuration), or we could not answer at all.
    Auth {
        /// 401 or 407.
        status: u16,
        /// Why we could not (or no longer) answer.
        error: AuthFailure,
    },
    /// No response at all: Timer B (INVITE) or F fired (far end or trunk unreachable).
    Timeout,
    /// The runtime reported that the transport failed (ICMP unreachable, TCP reset, TLS).
    Transport,
}

/// Why a digest challenge ended the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// The challenge could not be answered (see [`AuthError`] for whose fault).
    Unanswerable(AuthError),
    /// We answered and were challenged again without `stale=true`: the credentials are wrong.
    CredentialsRejected,
    /// Too many challenge rounds (a trunk looping on challenges).
    TooManyRounds,
}

/// How a call ended; the last thing said about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Failed before answer.
    Failed(Failure),
    /// The INVITE was cancelled before answer (by us as caller, or by the caller when we
    /// are the callee), or the answer raced our CANCEL and was hung up at once.
    Cancelled,
    /// The far end hung up (BYE).
    RemoteHangup,
    /// We hung up (BYE sent, answered or timed out).
    LocalHangup,
    /// We (as callee) rejected the call with this status.
    LocalReject {
        /// Status sent.
        status: u16,
    },
    /// We (as callee) answered but the ACK never came (RFC 3261 §13.3.1.4); BYE was sent.
    AckTimeout,
}

/// The dialog an answered call runs in (RFC 3261 §12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogInfo {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The far end's tag.
    pub remote_tag: String,
    /// Where in-dialog requests go (remote Contact).
    pub remote_target: Uri,
    /// Route set (Record-Route, in the order we use it).
    pub route_set: Vec<String>,
}

/// Something the caller of [`crate::UserAgent`] should know.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Callee side: a new INVITE arrived. Answer with `ringing`/`answer`/`reject`.
    Incoming {
        /// The new call.
        call: CallHandle,
        /// Who calls (From URI).
        from: Uri,
        /// Whom they call (To URI).
        to: Uri,
        /// The SDP offer, if any and readable.
        offer: Option<SessionDescription>,
    },
    /// Caller side: a provisional response (100, 180, 183, …).
    Progress {
        /// The call.
        call: CallHandle,
        /// Status code (100–199).
        status: u16,
        /// Early media negotiated from SDP in this response, if present.
        early_media: Option<Result<Negotiated, SdpError>>,
    },
    /// Caller side: a 401/407 was answered with credentials and the request re-sent.
    Authenticating {
        /// The call.
        call: CallHandle,
        /// 401 or 407.
        status: u16,
        /// Realm challenged.
        realm: String,
        /// Algorithm used.
        algorithm: Algorithm,
    },
    /// Caller side: the call was answered (2xx, ACK sent).
    Answered {
        /// The call.
        call: CallHandle,
        /// What to do with media; an error means the answer had nothing usable
        /// (the flow should hang up and report it).
        media: Result<Negotiated, SdpError>,
        /// The dialog.
        dialog: DialogInfo,
    },
    /// Callee side: the ACK for our 2xx arrived; the call is up.
    Confirmed {
        /// The call.
        call: CallHandle,
        /// Media from an answer in the ACK (offerless INVITE), if any.
        media: Option<Result<Negotiated, SdpError>>,
    },
    /// A re-INVITE or UPDATE from the far end changed the media (hold, new address…).
    MediaChanged {
        /// The call.
        call: CallHandle,
        /// The new media parameters.
        media: Negotiated,
    },
    /// A key press from a SIP INFO (`application/dtmf-relay` or `application/dtmf`).
    Dtmf {
        /// The call.
        call: CallHandle,
        /// The key.
        info: DtmfInfo,
    },
    /// An INFO with another body (answered 415), kept for the audit log.
    Info {
        /// The call.
        call: CallHandle,
        /// Its Content-Type, if any.
        content_type: Option<String>,
    },
    /// The response to an INFO we sent (or why none came).
    InfoResponse {
        /// The call.
        call: CallHandle,
        /// Final status, or the failure (timeout, transport).
        result: Result<u16, Failure>,
    },
    /// The far end hung up (BYE received and answered).
    RemoteHangup {
        /// The call.
        call: CallHandle,
    },
    /// Caller side: the INVITE's target failed before the far end rang (RFC 3263 §4.3) and
    /// the INVITE went to the next one as a new transaction; only `to` is heard from now on.
    Rerouted {
        /// The call.
        call: CallHandle,
        /// The target that failed.
        from: std::net::SocketAddr,
        /// The target tried now.
        to: std::net::SocketAddr,
        /// How `from` failed (timeout, transport, or `Rejected { status: 503 }`).
        failure: Failure,
    },
    /// Caller side: the call failed before answer. Followed by `Terminated`.
    Failed {
        /// The call.
        call: CallHandle,
        /// Why.
        failure: Failure,
    },
    /// Nothing more will happen on this call (always the last event of a call).
    Terminated {
        /// The call.
        call: CallHandle,
        /// How it ended.
        reason: EndReason,
    },
}

impl Event {
    /// The call the event is about.
    pub fn call(&self) -> CallHandle {
        match self {
            Self::Incoming { call, .. }
            | Self::Progress { call, .. }
            | Self::Authenticating { call, .. }
            | Self::Answered { call, .. }
            | Self::Confirmed { call, .. }
            | Self::MediaChanged { call, .. }
            | Self::Dtmf { call, .. }
            | Self::Info { call, .. }
            | Self::InfoResponse { call, .. }
            | Self::RemoteHangup { call }
            | Self::Failed { call, .. }
            | Self::Rerouted { call, .. }
            | Self::Terminated { call, .. } => *call,
        }
    }
}
