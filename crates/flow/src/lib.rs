//! The verification call as a sans-IO state machine.

pub mod outcome;
pub mod timeline;

pub use outcome::{CallResult, Mode};
pub use timeline::{TimelineEntry, TimelineEvent};
