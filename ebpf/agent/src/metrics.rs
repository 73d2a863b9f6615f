//! Prometheus metrics on `--metrics-listen` (`/metrics`), plus `/readyz` (programs
//! attached and a plan applied). Labels carry names, never payloads.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use prometheus::{
    Encoder as _, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tracing::info;

/// (namespace, pod) → its (container, protocol) label pairs.
type DenialSeries = HashMap<(String, String), HashSet<(String, String)>>;

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub denials: IntCounterVec,
    pub events_suppressed: IntCounter,
    /// Read from the kernel's per-CPU counters at scrape time.
    pub kernel_denials: IntGauge,
    pub redirected: IntGauge,
    pub events_lost: IntGauge,
    /// Per pod (and reason): denials whose event the kernel did not produce.
    pub pod_events_dropped: IntGaugeVec,
    pub socket_guard: IntGauge,
    pub empty_pod_list_held: IntGauge,
    pub guarded_devices: IntGauge,
    /// Per pod and container: what goes around the enforcement there.
    pub pod_risks: IntGaugeVec,
    pub enrolled_cgroups: IntGauge,
    pub enrolled_pods: IntGauge,
    pub pod_errors: IntGauge,
    pub policies: IntGauge,
    pub allow_entries: IntGauge,
    pub applies: IntCounterVec,
    pub bundle: IntGaugeVec,
    pub control_plane_connected: IntGauge,
    pub reported: IntCounter,
    pub reports_dropped: IntCounter,
    pub ready: Arc<AtomicBool>,
    /// Label sets of `denials` per (namespace, pod), to drop a pod's series when it
    /// leaves the node (they would otherwise accumulate forever).
    denial_series: Arc<std::sync::Mutex<DenialSeries>>,
}

impl Metrics {
    /// The registry, for metrics of other crates (telemetry export counters).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let denials = IntCounterVec::new(
            Opts::new(
                "vigie_egress_denials_total",
                "Connections and packets refused by the egress programs, as reported through the ring buffer.",
            ),
            &["namespace", "pod", "container", "protocol"],
        )?;
        let events_suppressed = IntCounter::new(
            "vigie_egress_events_suppressed_total",
            "Denials counted but not logged (per-pod log rate limit).",
        )?;
        let kernel_denials = IntGauge::new(
            "vigie_egress_kernel_denials",
            "Denials counted in the kernel since the maps were created (survives agent restarts).",
        )?;
        let redirected = IntGauge::new(
            "vigie_egress_redirected_connections",
            "Connections redirected to the sidecar (counted in the kernel since the maps were created).",
        )?;
        let events_lost = IntGauge::new(
            "vigie_egress_events_lost",
            "Denials whose event did not fit in the ring buffer (counted in the kernel).",
        )?;
        let pod_events_dropped = IntGaugeVec::new(
            Opts::new(
                "vigie_egress_pod_events_dropped",
                "Denials of a pod (or sidecar) with no event, counted in the kernel: rate_limit (over its own budget of 50 events/s per CPU, burst 100) or ring_full.",
            ),
            &["namespace", "pod", "role", "reason"],
        )?;
        let socket_guard = IntGauge::new(
            "vigie_egress_socket_family_guard",
            "1 when enrolled pods cannot create packet, XDP or other non-IP sockets (BPF LSM program attached); 0 when the kernel does not allow it.",
        )?;
        let empty_pod_list_held = IntGauge::new(
            "vigie_egress_empty_pod_list_held",
            "1 while an empty pod list is not believed yet (pods stay enrolled until a later read confirms it).",
        )?;
        let guarded_devices = IntGauge::new(
            "vigie_egress_guarded_devices",
            "Network devices of enrolled pods' namespaces carrying the tc backstop against packet sockets.",
        )?;
        let pod_risks = IntGaugeVec::new(
            Opts::new(
                "vigie_egress_pod_risks",
                "1 per enrolled pod, container and risk found: cap_net_raw, cap_net_admin, cap_sys_admin, cap_sys_ptrace, packet_socket, not_enforceable.",
            ),
            &["namespace", "pod", "container", "risk"],
        )?;
        let enrolled_cgroups = IntGauge::new(
            "vigie_egress_enrolled_cgroups",
            "Cgroups enforced (pods and sidecar containers).",
        )?;
        let enrolled_pods = IntGauge::new(
            "vigie_egress_enrolled_pods",
            "Enrolled pods of this node whose cgroups were found.",
        )?;
        let pod_errors = IntGauge::new(
            "vigie_egress_pod_policy_errors",
            "Enrolled pods whose policy could not be compiled (they reach nothing).",
        )?;
        let policies = IntGauge::new(
            "vigie_egress_policies",
            "Distinct compiled policies in the maps.",
        )?;
        let allow_entries =
            IntGauge::new("vigie_egress_allow_entries", "Entries in the allow trie.")?;
        let applies = IntCounterVec::new(
            Opts::new(
                "vigie_egress_applies_total",
                "Plans applied to the maps: ok, or error (the previous state stays).",
            ),
            &["result"],
        )?;
        let bundle = IntGaugeVec::new(
            Opts::new(
                "vigie_egress_policy_version_info",
                "Version of the policy bundle in force (value 1).",
            ),
            &["version"],
        )?;
        let control_plane_connected = IntGauge::new(
            "vigie_egress_control_plane_connected",
            "1 while the watch stream is up.",
        )?;
        let reported = IntCounter::new(
            "vigie_egress_denials_reported_total",
            "Aggregated denial entries accepted by the control plane.",
        )?;
        let reports_dropped = IntCounter::new(
            "vigie_egress_denial_reports_dropped_total",
            "Denial entries not reported: more than 10,000 distinct ones pending while the control plane was away.",
        )?;
        for c in [
            Box::new(reported.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reports_dropped.clone()),
            Box::new(denials.clone()),
            Box::new(events_suppressed.clone()),
            Box::new(kernel_denials.clone()),
            Box::new(redirected.clone()),
            Box::new(events_lost.clone()),
            Box::new(pod_events_dropped.clone()),
            Box::new(socket_guard.clone()),
            Box::new(empty_pod_list_held.clone()),
            Box::new(guarded_devices.clone()),
            Box::new(pod_risks.clone()),
            Box::new(enrolled_cgroups.clone()),
            Box::new(enrolled_pods.clone()),
            Box::new(pod_errors.clone()),
            Box::new(policies.clone()),
            Box::new(allow_entries.clone()),
            Box::new(applies.clone()),
            Box::new(bundle.clone()),
            Box::new(control_plane_connected.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            denials,
            events_suppressed,
            kernel_denials,
            redirected,
            events_lost,
            pod_events_dropped,
            socket_guard,
            empty_pod_list_held,
            guarded_devices,
            pod_risks,
            enrolled_cgroups,
            enrolled_pods,
            pod_errors,
            policies,
            allow_entries,
            applies,
            bundle,
            control_plane_connected,
            reported,
            reports_dropped,
            ready: Arc::new(AtomicBool::new(false)),
            denial_series: Arc::default(),
        })
    }

    /// Counts a denial of `namespace/pod` (container, protocol).
    pub fn denied(&self, namespace: &str, pod: &str, container: &str, protocol: &str) {
        self.denials
            .with_label_values(&[namespace, pod, container, protocol])
            .inc();
        if let Ok(mut s) = self.denial_series.lock() {
            s.entry((namespace.to_string(), pod.to_string()))
                .or_default()
                .insert((container.to_string(), protocol.to_string()));
        }
    }

    /// Drops the denial series of pods no longer on the node.
    pub fn forget_pods_except(&self, present: &HashSet<(String, String)>) {
        let Ok(mut s) = self.denial_series.lock() else {
            return;
        };
        s.retain(|(ns, pod), labels| {
            if present.contains(&(ns.clone(), pod.clone())) {
                return true;
            }
            for (container, protocol) in labels.iter() {
                let _ = self
                    .denials
                    .remove_label_values(&[ns, pod, container, protocol]);
            }
            false
        });
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

#[derive(Debug, serde::Deserialize)]
struct OrigQuery {
    /// Network namespace cookie of the asking sidecar (SO_NETNS_COOKIE).
    netns: u64,
    /// The accepted connection's peer, `ip:port`.
    peer: SocketAddr,
}

/// `GET /v1/original-destination?netns=N&peer=IP:PORT`: where a connection redirected
/// to the sidecar was going. 404 when it was not redirected (or is too old).
#[expect(clippy::unused_async, reason = "an axum handler")]
async fn original_destination(
    peers: crate::bpf::OrigPeers,
    q: Result<axum::extract::Query<OrigQuery>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let Ok(axum::extract::Query(q)) = q else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": "expected ?netns=<cookie>&peer=<ip>:<port>"})),
        )
            .into_response();
    };
    let addr = match q.peer.ip() {
        std::net::IpAddr::V4(a) => vigie_egress_common::v4_mapped(a.octets()),
        std::net::IpAddr::V6(a) => a.octets(),
    };
    let key = vigie_egress_common::PeerKey {
        netns: q.netns,
        addr,
        port: q.peer.port(),
        _pad: [0; 6],
    };
    let found = peers.lock().ok().and_then(|m| m.get(&key, 0).ok());
    match found {
        Some(o) => {
            let ip = std::net::Ipv6Addr::from(o.addr);
            let ip: std::net::IpAddr = ip.to_ipv4_mapped().map_or(ip.into(), Into::into);
            axum::Json(serde_json::json!({"destination": ip.to_string(), "port": o.port}))
                .into_response()
        }
        None => (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "not a redirected connection"})),
        )
            .into_response(),
    }
}

/// Serves `/metrics`, `/readyz` and the original-destination lookup until the
/// process ends; `refresh` runs before each scrape (kernel counters).
pub async fn serve(
    metrics: Metrics,
    listen: SocketAddr,
    refresh: Arc<dyn Fn() + Send + Sync>,
    peers: crate::bpf::OrigPeers,
) -> anyhow::Result<()> {
    let ready = metrics.ready.clone();
    let app = axum::Router::new()
        .route(
            "/v1/original-destination",
            axum::routing::get(move |q| original_destination(peers.clone(), q)),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                refresh();
                let body = metrics.render();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        body,
                    )
                }
            }),
        )
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ok = ready.load(Ordering::Relaxed);
                async move {
                    if ok {
                        (axum::http::StatusCode::OK, "ready\n")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "no plan applied yet\n",
                        )
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    info!(listen = %listener.local_addr()?, "metrics serving");
    axum::serve(listener, app).await?;
    Ok(())
}
