//! The verification call as a sans-IO state machine: dial, ring, answer, extension, prompt,
//! collect, hang up, outcome (DESIGN.md "The call, as data flows").
//!
//! [`Switchboard`] drives many calls over one SIP user agent; each call is a chain of states
//! (see [`call`](crate::call)); the media path plugs in through [`media::Media`]. No sockets,
//! no clock: `now` comes in, packets, events and one deadline go out.

mod call;
pub mod keys;
pub mod live;
pub mod media;
pub mod outcome;
pub mod spec;
pub mod srtp;
mod switchboard;
pub mod timeline;

pub use call::{Event, Report, result_for_status};
pub use outcome::{CallResult, Mode};
pub use spec::{CallSpec, Rules, SpecError};
pub use srtp::{Srtp, SrtpPolicy, SrtpRefusal};
pub use switchboard::{CallId, Switchboard, Transmit};
pub use timeline::{TimelineEntry, TimelineEvent};
