//! SIP user agent core, sans-IO.
pub mod auth;
pub mod framer;
pub mod info;
pub mod message;
pub mod redact;
mod rng;
pub mod sdp;
pub mod timer;
mod transaction;
