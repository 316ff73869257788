//! One verification call as the dialer asks for it and the SIP runtime places it: the
//! [`CallPlacer`] trait and the types both sides share (below both, so neither imports the
//! other).

use std::time::Duration;

use flow::keys::SealedDigits;
use flow::{CallResult, Mode, TimelineEntry};
use futures::future::BoxFuture;
use media::DtmfMethod;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::CallConfig;
use crate::model::{Destination, VerificationId};

/// One call for the SIP runtime to place.
#[derive(Clone, Debug)]
pub struct CallRequest {
    pub id: VerificationId,
    /// E.164 number or SIP URI; redacts itself in logs.
    pub destination: Destination,
    /// Digits, `*`, `#`, and `,` for a one-second pause, sent after answer.
    pub extension: Option<String>,
    pub mode: Mode,
    /// The PIN (pin mode) or challenge digits (challenge mode), without the final `#`,
    /// sealed: the call checks entries against their tag and never sees them in clear.
    pub expected_digits: Option<SealedDigits>,
    /// Prompt language (`en`, `en-US`…), one of `media.languages`.
    pub language: String,
    /// Timeouts, fraud code, replays (`[call]`).
    pub call: CallConfig,
}

/// What a call reports while it runs, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum CallProgress {
    /// 180/183 received.
    Ringing,
    /// 200 OK to the INVITE: the callee is on the line.
    Answered,
    /// One timeline entry, as it happens (the final report carries them all again).
    Timeline(TimelineEntry),
    /// A key press was detected this long after the key was released.
    DetectorLatency(Duration),
    /// The result is settled (the key, the fraud code, a timeout, a hang-up): the verification
    /// completes now; the closing prompts and the BYE that follow never change it. The
    /// report's timeline is the record at the decision, ending with its `outcome` entry.
    Decided(CallReport),
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq)]
pub struct CallReport {
    pub result: CallResult,
    /// The method of the first key press that counted, if any.
    pub dtmf_method: Option<DtmfMethod>,
    /// Every event of the call, times relative to the start of the call.
    pub timeline: Vec<TimelineEntry>,
}

impl From<flow::Report> for CallReport {
    fn from(r: flow::Report) -> CallReport {
        CallReport {
            result: r.result,
            dtmf_method: r.dtmf_method,
            timeline: r.timeline,
        }
    }
}

/// Places calls: the SIP runtime implements this; tests use scripted placers.
///
/// `place` must finish soon after `cancel` fires (hang up or CANCEL, then report); a call
/// cancelled through the API reports `cancelled`.
pub trait CallPlacer: Send + Sync + 'static {
    fn place(
        &self,
        call: CallRequest,
        progress: mpsc::UnboundedSender<CallProgress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, CallReport>;

    /// Whether a new call can be placed now without hurting the calls in flight. While it is
    /// false the dialer claims no verification: they wait in the queue (where another
    /// instance of a cluster may take them) until `limits.queue_ttl_secs`.
    fn has_capacity(&self) -> bool {
        true
    }
}
