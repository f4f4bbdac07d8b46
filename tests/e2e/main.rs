//! End-to-end tests: a real PostgreSQL, lockbox in-process, real clients (tokio-postgres,
//! psql, pgbench) and raw sockets for the misbehaving ones.

mod harness;

mod api_hardening;
mod attack;
mod attack2;
mod attack_11;
mod attack_tls;
mod audit_api;
mod audit_chain;
mod audit_durability;
mod audit_export;
mod audit_pg_sink;
mod audit_redaction;
mod audit_rotation;
mod audit_trail;
mod auth;
mod broken_pipe;
mod cancel_tls;
mod cli;
mod client_tls;
mod completeness;
mod demo;
mod deny_drop;
mod engineer;
mod expiry_notices;
mod fleet;
mod grammar;
mod guard;
mod https;
mod init;
mod lifecycle;
mod notify;
mod oidc;
mod openapi;
mod ops;
mod ops_limits;
mod oversize;
mod preauth;
mod protocol;
mod relay;
mod roles;
mod terminate;
mod upstream_tls;
mod vanish;
mod workflow;
