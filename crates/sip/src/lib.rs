//! SIP user agent core, sans-IO: no sockets, threads, clock or async runtime.
//!
//! Time and packets come in as arguments, datagrams and deadlines go out (str0m and
//! quinn-proto style). The runtime owns the sockets and one timer:
//!
//! ```text
//! let mut ua = UserAgent::new(Config::new(local_sip_addr), seed_from_os);
//! let call = ua.call(now, OutgoingCall { target, from, next_hop, media, credentials, .. });
//! loop {
//!     while let Some(t) = ua.poll_transmit() { socket.send_to(&t.payload, t.destination) }
//!     while let Some(e) = ua.poll_event() { flow.handle(e) }     // Progress, Answered, Dtmf…
//!     wait until ua.poll_timeout() or a datagram arrives:
//!         datagram → ua.handle_input(now, Transport::Udp, source, &bytes)
//!         deadline → ua.handle_timeout(now)
//!         flow wants to end → ua.hangup(now, call)               // CANCEL or BYE
//! }
//! ```
//! Modules: [`message`] (parse/print), [`framer`] (TCP/TLS framing), [`auth`] (digest),
//! [`route`] (which shard owns a message), [`sdp`] (offer/answer), [`sdes`] (SRTP keys in SDP), [`info`] (DTMF in SIP INFO),
//! [`locate`] (RFC 3263 server location), [`timer`] (RFC 3261 timers),
//! [`UserAgent`] (transactions, dialogs, calls).

pub mod auth;
mod event;
pub mod framer;
pub mod info;
pub mod locate;
pub mod message;
pub mod redact;
mod rng;
pub mod route;
pub mod sdes;
pub mod sdp;
pub mod timer;
mod transaction;
mod ua;

pub use event::{AuthFailure, CallHandle, DialogInfo, EndReason, Event, Failure, Transmit};
pub use message::{Transport, Uri};
pub use ua::{Config, InputError, OutgoingCall, UsageError, UserAgent};
