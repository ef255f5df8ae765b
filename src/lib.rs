//! pipegate: a lean edge API gateway whose plugins run out of process.
//!
//! A request's life: the [`server`] event loop accepts and reads it, [`http`] parses and validates
//! the head, [`config`] routes it to an API definition, the [`middleware`] chain runs the API's plugin
//! hooks through `coprocess`, and [`proxy`] forwards it to the upstream and streams the answer back.
//! [`tls`] terminates TLS on the same event loop when `use_ssl` is on, and speaks TLS to https
//! upstreams.

pub mod access_log;
pub mod admin;
pub mod bundle;
pub mod config;
pub mod coprocess;
pub mod demo;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod middleware;
pub mod plugin_bench;
pub mod proxy;
pub mod server;
pub mod store;
pub mod tls;
