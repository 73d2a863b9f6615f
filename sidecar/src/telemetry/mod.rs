//! Telemetry: Prometheus metrics (this module) and structured logs (`tracing`).
//! Labels carry names chosen by the operator (pool, operation), never request content.

pub mod metrics;
pub use metrics::Metrics;
