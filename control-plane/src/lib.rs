//! Vigie control plane: the policy API security teams drive with grpcurl, revisions
//! and audit, and the watch stream that pushes effective policies to sidecars.
//!
//! - [`store`]: persistent state (SQLite file or PostgreSQL) behind one trait.
//! - [`auth`]: bearer tokens with roles; [`gate`]: tokens and message sizes checked
//!   before anything is decoded.
//! - [`policy`]: effective policy of a workload, change summaries.
//! - [`hub`]: in-memory policies and connected watchers of one replica.
//! - [`service`]: the gRPC services.
//! - [`server`]: wiring (health, reflection, TLS).
//! - [`webhook`]: HTTPS server of the sidecar-injection webhook.

pub mod auth;
pub mod events;
pub mod gate;
pub mod gitops;
pub mod hub;
pub mod k8s_tokens;
pub mod lanes;
pub mod metrics;
pub mod policy;
pub mod retention;
pub mod server;
pub mod service;
pub mod store;
pub mod users;
pub mod webhook;
