//! The Vigie egress agent's parts, as a library for the binary (`main.rs`), the
//! benchmark (`examples/egress_bench.rs`) and tests.
//!
//! - [`pods`]: which pods of this node are enrolled (PodList document).
//! - [`cgroups`]: where their pod and container cgroups are (kubelet conventions).
//! - [`plan`]: the desired map content from policies and pods (pure).
//! - [`bpf`]: loading, pinning, adopting, and applying plans atomically.
//! - [`devices`]: the enrolled pods' network namespaces and devices (tc backstop).
//! - [`events`]: denials from the ring buffer to logs and metrics.
//! - [`control`]: the watch stream from the control plane.
//! - [`scan`]: capabilities and packet sockets held in enrolled pods (from `/proc`).
//! - [`metrics`]: Prometheus `/metrics` and `/readyz`.

pub mod bpf;
pub mod cgroups;
pub mod control;
pub mod devices;
pub mod events;
pub mod metrics;
pub mod plan;
pub mod pods;
pub mod scan;

/// The sidecar's proxy port and container name as the injection webhook sets them
/// (checked against `vigie-inject` in tests/defaults.rs).
pub const DEFAULT_SIDECAR_PORT: u16 = 15080;
pub const DEFAULT_SIDECAR_CONTAINER: &str = "vigie-sidecar";
