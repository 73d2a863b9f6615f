//! Vigie sidecar.
//!
//! Request path: [`pipeline`] — intake → guard → route → budget → attempts → relay, over
//! one request context (see `pipeline/mod.rs`). Around it: [`policy`] (the snapshot in
//! force, route plans), [`endpoint`] (endpoint state), [`upstream`] (connections, TLS,
//! credentials, probes), [`identity`] (the end user), [`telemetry`] (metrics, spans,
//! security events), [`admin`] (health), and where policies come from: a file
//! ([`policy::file`]) or the control plane's watch stream ([`control`]), run as
//! background [`services`].

pub mod admin;
pub mod control;
pub mod endpoint;
pub mod identity;
pub mod memory;
pub mod pipeline;
pub mod policy;
pub mod services;
pub mod telemetry;
pub mod upstream;

/// Wire formats and DLP on them live in `vigie-wire` (no Pingora types).
pub use vigie_wire::{api, dlp, encoding};
