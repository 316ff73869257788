//! callverify: the service crate. Everything with sockets, threads, files and the clock lives
//! here; the protocol and signal cores in `crates/` stay sans-IO.

pub mod api;
pub mod audio;
pub mod call;
pub mod cli;
pub mod config;
pub mod demo;
pub mod detect;
pub mod dialer;
pub mod metrics;
pub mod model;
pub mod recordings;
pub mod runtime;
pub mod service;
pub mod store;
pub mod view;
pub mod webhook;
