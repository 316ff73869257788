//! callverify: the service crate. Everything with sockets, threads, files and the clock lives
//! here; the protocol and signal cores in `crates/` stay sans-IO.

pub mod audio;
pub mod cli;
pub mod demo;
pub mod config;
pub mod store;
pub mod api;
pub mod dialer;
pub mod metrics;
pub mod webhook;
pub mod service;
pub mod runtime;
