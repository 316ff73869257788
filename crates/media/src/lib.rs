//! The media path of a call as a sans-IO core: RTP, G.711, RFC 4733 telephone-events,
//! reorder buffer, DTMF receive path, paced prompt sending.

/// How a digit reached us.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DtmfMethod {
    /// Tones in the audio, found by the Goertzel receiver.
    Inband,
    /// RFC 4733 telephone-event packets.
    Rfc4733,
    /// SIP INFO (`application/dtmf-relay` or `application/dtmf`).
    SipInfo,
}

impl DtmfMethod {
    /// The name used in JSON output and the API (`inband`, `rfc4733`, `sip_info`).
    pub fn as_str(self) -> &'static str {
        match self {
            DtmfMethod::Inband => "inband",
            DtmfMethod::Rfc4733 => "rfc4733",
            DtmfMethod::SipInfo => "sip_info",
        }
    }
}

pub mod g711;
pub mod merge;
pub mod prompt;
pub mod receive;
pub mod reorder;
pub mod rfc4733;
pub mod rng;
pub mod rtcp;
pub mod rtp;
pub mod session;
pub mod stats;
pub mod wav;

pub use prompt::{Prompt, PromptError};
pub use receive::{Codec, DigitReport, ReceiveConfig, ReceivePath, ReceiveStats, StreamStats};
pub use session::{DialMethod, MediaEvent, MediaStats, Session, SessionConfig, Transmit};
