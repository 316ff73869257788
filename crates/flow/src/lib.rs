//! The verification call as a sans-IO state machine.

pub mod outcome;

pub use outcome::{CallResult, Mode};
