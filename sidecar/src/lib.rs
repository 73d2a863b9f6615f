//! Vigie sidecar.
//!
//! Request path: [`proxy`] (Pingora glue) → [`api`] (wire formats, errors) →
//! [`policy`] (snapshot in force) → [`dlp`] (prompt checks) → [`routing`] (pool and endpoint) → [`upstream`]
//! (connection, TLS, credentials) → back through [`proxy`] to the client.
//! [`admin`] serves health and [`telemetry`] metrics. Policies come from a file
//! ([`policy::file`]) or from the control plane's watch stream ([`control`]).

pub mod admin;
pub mod control;
pub mod metering;
pub mod policy;
pub mod proxy;
pub mod routing;
pub mod telemetry;
pub mod upstream;

/// Wire formats and DLP on them live in `vigie-wire` (no Pingora types).
pub use vigie_wire::{api, dlp};
