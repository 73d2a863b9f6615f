//! Endpoint picking for GPU pools, as plain Rust (no proxy types): unit-tested and
//! benchmarked alone (`cargo run --release -p vigie-balance --example pick_overhead`).
//!
//! - [`EndpointState`]: live state of one endpoint — requests outstanding from this
//!   sidecar, the server's own queue and KV-cache use (scraped from vLLM's `/metrics`),
//!   EWMA time to first byte, and [`health`].
//! - [`pick`]: the choice among a pool's endpoints for one request.
//! - [`health`]: passive ejection after consecutive failures, with a circuit breaker
//!   that lets one probe through when the ejection ends.
//! - [`budget`]: the retry budget shared by a sidecar's requests.

pub mod budget;
pub mod classify;
pub mod health;
mod pick;
mod state;

pub use budget::RetryBudget;
pub use classify::{AttemptFailure, Verdict, classify};
pub use health::{Health, HealthConfig, Outcome};
pub use pick::{Pick, Reason, Request, pick, prefix_hash, round_robin};
pub use state::{EndpointState, HasState, ServerLoad};
