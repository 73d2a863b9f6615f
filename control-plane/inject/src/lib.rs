//! Sidecar injection for the Kubernetes mutating admission webhook.
//!
//! The API server calls the webhook for pods in namespaces labelled
//! `vigie.io/inject=enabled` (path `/inject/namespace`) and for pods labelled
//! `vigie.io/inject=enabled` elsewhere (path `/inject/pod`); the selectors live in the
//! `MutatingWebhookConfiguration` (`deploy/base/webhook.yaml`). This crate decides
//! ([`decide`]), builds the mutation ([`mutate`]) and answers the review ([`review`]).
//! It has no HTTP server: the control plane serves it over HTTPS.
//!
//! - [`config`]: what is injected (image, ports, control-plane URL, resources…).
//! - [`overrides`]: per-pod `vigie.io/*` annotations, validated.
//! - [`isolation`]: what keeps the app containers from going around the egress
//!   enforcement (capabilities dropped, the sidecar's uid and processes out of reach).
//! - [`quantity`]: Kubernetes resource quantities, parsed to compare them.

pub mod config;
pub mod decide;
pub mod isolation;
pub mod mutate;
pub mod overrides;
pub mod quantity;
pub mod review;

pub use config::InjectConfig;
pub use decide::{Decision, Trigger};
pub use review::{ReviewError, review};

/// Label on namespaces and pods: `enabled` opts in, `disabled` opts out.
pub const INJECT_LABEL: &str = "vigie.io/inject";
/// Annotation recording what was injected (JSON). Not a mark of injection: a pod may
/// carry any annotation. A pod created with a container named [`SIDECAR_NAME`] is
/// refused (see [`isolation`]).
pub const STATUS_ANNOTATION: &str = "vigie.io/status";
/// Label the egress agent selects pods to enrol by.
pub const ENROL_LABEL: &str = "vigie.io/egress";
/// Annotation set on every injected pod: `"true"` when its app containers have no way
/// around the egress enforcement the webhook knows of, `"false"` when the pod keeps
/// one (an opt-out annotation, see [`isolation`]), with the reason in
/// [`NOT_ENFORCEABLE_REASON_ANNOTATION`].
pub const ENFORCEABLE_ANNOTATION: &str = "vigie.io/egress-enforceable";
/// Why a pod is not enforceable (reasons joined with `"; "`); absent when it is.
pub const NOT_ENFORCEABLE_REASON_ANNOTATION: &str = "vigie.io/egress-not-enforceable-reason";
/// Name of the injected container.
pub const SIDECAR_NAME: &str = "vigie-sidecar";
/// Webhook paths: one per `MutatingWebhookConfiguration` entry.
pub const PATH_NAMESPACE: &str = "/inject/namespace";
pub const PATH_POD: &str = "/inject/pod";
/// Version written in the status annotation.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
