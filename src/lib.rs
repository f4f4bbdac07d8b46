//! lockbox: a PostgreSQL access proxy that enforces customer lockbox sessions.
//!
//! The crate is split by concern; `ARCHITECTURE.md` maps the modules and how a
//! connection and an access request flow through them.

#[cfg(test)]
mod allocations;
pub mod api;
pub mod audit;
pub mod census;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod exports;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod health;
pub mod http_client;
mod https;
pub mod ids;
pub mod init;
pub mod keys;
pub mod logging;
mod memory;
pub use memory::limit_arenas;
pub mod metrics;
pub mod notify;
pub mod oidc;
pub mod policy;
mod private_files;
pub mod provision;
pub mod proxy;
mod runtime;
pub mod sandbox;
pub mod server;
pub mod service;
pub mod sql;
pub mod store;
pub mod tls;
pub mod token;
mod visible;
mod web;
pub mod wire;
