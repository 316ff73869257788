//! The media path of a call as a sans-IO core: RTP, G.711, RFC 4733 telephone-events,
//! reorder buffer, DTMF receive path, paced prompt sending. No sockets, no clock, no threads:
//! every input comes with `now`, every output is polled.
//!
//! * [`ReceivePath`]: one direction of RTP (a live call's, or one flow of a capture) into one
//!   digit stream ([`DigitReport`]), with per-SSRC statistics ([`ReceiveStats`]).
//! * [`Session`]: a live call's media: a `ReceivePath` latched to the far end, plus prompts,
//!   comfort silence and dialled keys sent as 20 ms packets on a fixed grid.
//! * [`Prompt`]: a recording decoded once ([`wav`]) and pre-encoded to PCMU and PCMA frames.
//! * [`srtp`]: SRTP protection of a session's packets (RFC 3711, keyed by SDES).
//! * Building blocks: [`rtp`], [`rtcp`], [`rfc4733`], [`g711`], [`stats`] (RFC 3550 A.1/A.3/A.8),
//!   [`reorder`], [`merge`] (the one-press-one-digit rule), [`rng`].
//!
//! Driving a session (what the runtime does, one timer per call):
//!
//! ```
//! use std::time::{Duration, Instant};
//! use media::{Codec, DialMethod, MediaEvent, Session, SessionConfig};
//!
//! let t0 = Instant::now();
//! let mut s = Session::new(t0, SessionConfig {
//!     remote: "192.0.2.1:4000".parse().unwrap(),
//!     codec: Codec::Pcmu,
//!     audio_pt: 0,
//!     telephone_event_pt: Some(101),
//!     seed: [42; 32],
//!     srtp: None,
//! });
//! s.dial(t0, "5678", DialMethod::Rfc4733);
//! let mut packets = 0;
//! while let Some(t) = s.poll_timeout().filter(|t| *t <= t0 + Duration::from_secs(2)) {
//!     s.handle_timeout(t); // at exactly the instant asked for
//!     while let Some(tx) = s.poll_transmit() {
//!         packets += 1; // socket.send_to(&tx.payload, tx.destination)
//!     }
//!     while let Some(event) = s.poll_event() {
//!         if let MediaEvent::Digit(d) = event {
//!             println!("{} by {}", d.digit, d.method.as_str());
//!         }
//!     }
//! }
//! assert_eq!(packets, 101); // one every 20 ms, t0 included
//! ```

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
pub mod srtp;
pub mod stats;
pub mod wav;

pub use prompt::{Prompt, PromptError};
pub use receive::{Codec, DigitReport, ReceiveConfig, ReceivePath, ReceiveStats, StreamStats};
pub use session::{
    DialMethod, MediaEvent, MediaStats, Session, SessionConfig, Transmit, keep_packet_buffer,
};
pub use srtp::{MasterKey, SrtpConfig, SrtpStats, Suite};
