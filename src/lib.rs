//! callverify: the service crate. Everything with sockets, threads, files and the clock lives
//! here; the protocol and signal cores in `crates/` stay sans-IO.

pub mod api;
pub mod audio;
pub mod call;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod detect;
pub mod dialer;
pub mod fds;
pub mod methods;
pub mod metrics;
pub mod model;
pub mod recordings;
pub mod runtime;
pub mod seal;
pub mod secrets;
pub mod service;
pub mod signed_result;
pub mod signin;
pub mod store;
pub mod user;
pub mod view;
pub mod webhook;
