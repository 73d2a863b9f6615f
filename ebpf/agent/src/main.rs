//! `vigie-egress`: the node agent of Vigie's zero-trust egress.
//!
//! Loads the eBPF programs once (pinned, so enforcement outlives the agent), then
//! keeps the maps in step with two inputs: the enrolled pods of this node (their
//! cgroups found by the kubelet's naming conventions) and the policies from the
//! control plane. Denials are drained from the kernel, counted and logged as
//! security events. See docs/egress.md.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use vigie_proto::v1::{ClientKind, EgressBundle, Identity};

use vigie_egress::bpf::{self, Enforcer};
use vigie_egress::plan::{self, ResolvedPod, Settings};
use vigie_egress::{cgroups, control, events, metrics, pods};

#[derive(Debug, Parser)]
#[command(
    name = "vigie-egress",
    version,
    about = "Vigie egress agent (eBPF, per node)"
)]
struct Args {
    /// This node's name (pods scheduled elsewhere are ignored).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The control plane, e.g. http://vigie-control-plane.vigie-system:50051.
    #[arg(long, env = "VIGIE_CONTROL_PLANE_URL")]
    control_plane: String,
    /// Token with the agent role (or the agent's projected service-account token).
    #[arg(long, env = "VIGIE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// CA of an https control plane.
    #[arg(long, env = "VIGIE_CONTROL_PLANE_CA")]
    control_plane_ca: Option<PathBuf>,
    /// The node's pods as a Kubernetes PodList document, re-read when it changes.
    #[arg(long, env = "VIGIE_PODS_FILE")]
    pods_file: PathBuf,
    /// Cgroup the programs attach to, under which pod cgroups are searched (default:
    /// the cgroup v2 mount point, found in the mount table).
    #[arg(long, env = "VIGIE_CGROUP_ROOT")]
    cgroup_root: Option<PathBuf>,
    /// Directory on a bpf file system for the pinned maps and links.
    #[arg(long, env = "VIGIE_PIN_DIR", default_value = "/sys/fs/bpf/vigie")]
    pin_dir: PathBuf,
    /// Where the last applied bundle is kept (used at start if the control plane is away).
    #[arg(long, env = "VIGIE_STATE_DIR", default_value = "/var/lib/vigie-egress")]
    state_dir: PathBuf,
    /// The sidecar's proxy port (app containers may reach it on loopback).
    #[arg(long, env = "VIGIE_SIDECAR_PORT", default_value_t = vigie_egress::DEFAULT_SIDECAR_PORT)]
    sidecar_port: u16,
    #[arg(long, env = "VIGIE_SIDECAR_CONTAINER", default_value = vigie_egress::DEFAULT_SIDECAR_CONTAINER)]
    sidecar_container: String,
    /// DNS resolvers when a policy names none (default: nameservers of /etc/resolv.conf).
    #[arg(long, env = "VIGIE_DNS", value_delimiter = ',')]
    dns: Vec<IpAddr>,
    /// Metrics, readiness, and the original-destination lookup for sidecars.
    #[arg(long, env = "VIGIE_METRICS_LISTEN", default_value = "0.0.0.0:15095")]
    metrics_listen: SocketAddr,
    /// How sidecars reach this agent's lookup, `host:port` (e.g. a node-local
    /// Service); their egress rules allow its addresses. Default: none.
    #[arg(long, env = "VIGIE_LOOKUP_ADDRESS")]
    lookup_address: Option<String>,
    /// Denial events logged per pod per second (the rest are counted).
    #[arg(long, env = "VIGIE_EVENTS_PER_SECOND", default_value_t = 20)]
    events_per_second: u32,
    /// How often aggregated denials are sent to the control plane.
    #[arg(long, env = "VIGIE_REPORT_MS", default_value_t = 2000)]
    report_ms: u64,
    /// How often pods and cgroups are re-read.
    #[arg(long, env = "VIGIE_RESYNC_MS", default_value_t = 500)]
    resync_ms: u64,
    /// How long an empty pod list must hold, after a non-empty one, before the node's
    /// pods are unenrolled (a lister's bad read must not unenrol everyone at once).
    #[arg(long, env = "VIGIE_EMPTY_PODS_CONFIRM_MS", default_value_t = 10_000)]
    empty_pods_confirm_ms: u64,
    /// How often the processes of enrolled pods are checked for capabilities and
    /// packet sockets that go around the enforcement.
    #[arg(long, env = "VIGIE_SCAN_MS", default_value_t = 10_000)]
    scan_ms: u64,
    /// `json` or `text`.
    #[arg(long, env = "VIGIE_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

fn resolv_conf_nameservers() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse().ok())
        .collect()
}

async fn resolve(host: &str, port: u16) -> Vec<IpAddr> {
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => addrs.map(|a| a.ip()).collect(),
        Err(e) => {
            warn!(host, error = %e, "cannot resolve; its addresses are not allowed until it resolves");
            Vec::new()
        }
    }
}

/// `host` (an address, bracketed or not, or a name) with `port`.
async fn addresses(host: &str, port: u16) -> Vec<(IpAddr, u16)> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ips = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => resolve(host, port).await,
    };
    ips.into_iter().map(|ip| (ip, port)).collect()
}

/// Inputs of the last plan, to skip work when nothing moved.
#[derive(PartialEq)]
struct Fingerprint {
    bundle: String,
    /// Content of the pods document (the lister rewrites it every 2 s unchanged).
    pods: Vec<pods::PodInfo>,
    resolved_pods: usize,
    enrolled_pods: usize,
    hosts: Vec<(String, Vec<IpAddr>)>,
    /// Resolved addresses of the control plane and of this agent's lookup.
    control_plane: Vec<(IpAddr, u16)>,
    lookup: Vec<(IpAddr, u16)>,
}

struct Agent {
    args: Args,
    cgroup_root: PathBuf,
    enforcer: Enforcer,
    settings: Settings,
    metrics: metrics::Metrics,
    names: events::Names,
    bundle: Option<(String, EgressBundle)>,
    resolved_hosts: HashMap<String, Vec<IpAddr>>,
    hosts_at: Option<Instant>,
    last: Option<Fingerprint>,
    /// Pods already resolved, by UID: reused while their cgroup directory exists, so a
    /// pass that cannot read the tree does not unenrol anyone.
    resolved: HashMap<String, (PathBuf, ResolvedPod)>,
    empty_pods: pods::EmptyListGuard,
    /// Last errors of the tc backstop's pass (logged when they change).
    device_errors: Vec<String>,
    /// (pod uid, container, risk) already reported, and when the last scan ran.
    risks: std::collections::BTreeSet<(String, String, &'static str)>,
    scanned_at: Option<Instant>,
}

impl Agent {
    fn bundle_file(&self) -> PathBuf {
        self.args.state_dir.join("bundle.json")
    }

    fn load_saved_bundle(&mut self) {
        let path = self.bundle_file();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        match serde_json::from_str::<(String, EgressBundle)>(&text) {
            Ok(b) => {
                info!(version = %b.0, "last applied bundle loaded from disk");
                self.bundle = Some(b);
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "saved bundle unreadable; waiting for the control plane")
            }
        }
    }

    fn save_bundle(&self) {
        let Some(b) = &self.bundle else { return };
        let path = self.bundle_file();
        let tmp = path.with_extension("json.tmp");
        let write = std::fs::create_dir_all(&self.args.state_dir)
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(b).unwrap_or_default()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = write {
            warn!(path = %path.display(), error = %e, "cannot save the bundle");
        }
    }

    async fn refresh_hosts(&mut self, force: bool) {
        if !force
            && self
                .hosts_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(30))
        {
            return;
        }
        let Some((_, bundle)) = &self.bundle else {
            return;
        };
        let mut out = HashMap::new();
        for host in plan::endpoint_hosts(&bundle.policies) {
            let mut ips = resolve(&host, 443).await;
            if ips.is_empty() {
                // A resolver hiccup must not cut the sidecars off their pools.
                ips = self.resolved_hosts.get(&host).cloned().unwrap_or_default();
            }
            out.insert(host, ips);
        }
        // Kept as they were when a lookup fails.
        if let Ok(url) = url::Url::parse(&self.args.control_plane)
            && let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default())
        {
            let addrs = addresses(host, port).await;
            if !addrs.is_empty() {
                self.settings.control_plane = addrs;
            }
        }
        if let Some(addr) = &self.args.lookup_address
            && let Some((host, port)) = addr.rsplit_once(':')
            && let Ok(port) = port.parse::<u16>()
        {
            let addrs = addresses(host, port).await;
            if !addrs.is_empty() {
                self.settings.lookup = addrs;
            }
        }
        self.resolved_hosts = out;
        self.hosts_at = Some(Instant::now());
    }

    fn resolve_pods(&mut self, pods: &[pods::PodInfo]) -> Vec<ResolvedPod> {
        let mut out = Vec::with_capacity(pods.len());
        let mut seen = std::collections::HashSet::new();
        for p in pods {
            seen.insert(p.uid.clone());
            if let Some((dir, cached)) = self.resolved.get(&p.uid)
                && cached.info == *p
                && cached.containers.len() == p.containers.len()
                && dir.exists()
            {
                out.push(cached.clone());
                continue;
            }
            let Some(dir) = cgroups::find_pod_dir(&self.cgroup_root, &p.uid) else {
                // Not found this pass: keep what was known while its directory exists.
                if let Some((dir, cached)) = self.resolved.get(&p.uid)
                    && dir.exists()
                {
                    out.push(cached.clone());
                }
                continue;
            };
            let Ok(pod_cgroup) = cgroups::cgroup_id(&dir) else {
                continue;
            };
            let containers = p
                .containers
                .iter()
                .filter_map(|(name, id)| {
                    let c = cgroups::find_container_dir(&dir, id)?;
                    Some((name.clone(), cgroups::cgroup_id(&c).ok()?))
                })
                .collect();
            let r = ResolvedPod {
                info: p.clone(),
                pod_cgroup,
                containers,
            };
            self.resolved.insert(p.uid.clone(), (dir, r.clone()));
            out.push(r);
        }
        self.resolved.retain(|uid, _| seen.contains(uid));
        out
    }

    /// The tc backstop on the devices of every enrolled pod's network namespace (pods
    /// without a process yet are picked up on a later pass).
    fn guard_devices(&mut self) {
        let Ok(own) = vigie_egress::devices::own_netns() else {
            return;
        };
        let mut targets: Vec<_> = self
            .resolved
            .values()
            .flat_map(|(dir, _)| vigie_egress::devices::namespaces_of_pod(dir, own))
            .collect();
        targets.sort();
        targets.dedup_by_key(|t| t.inode);
        let (guarded, errors) = self.enforcer.guard_devices(&targets);
        self.metrics
            .guarded_devices
            .set(i64::try_from(guarded).unwrap_or(i64::MAX));
        if errors != self.device_errors {
            for e in &errors {
                warn!(error = %e, "tc backstop not attached; retrying");
            }
            self.device_errors = errors;
        }
    }

    /// Capabilities, packet sockets and webhook flags of the enrolled pods: metrics,
    /// and one security event per new (pod, container, risk).
    fn scan_pods(&mut self) {
        if self
            .scanned_at
            .is_some_and(|t| t.elapsed() < Duration::from_millis(self.args.scan_ms))
        {
            return;
        }
        self.scanned_at = Some(Instant::now());
        // (pod, container, risk, reason) found in this scan.
        let mut shown = Vec::new();
        let own = vigie_egress::devices::own_netns().ok();
        for (dir, pod) in self.resolved.values() {
            let info = &pod.info;
            if let Some(own) = own
                && vigie_egress::devices::namespaces_of_pod(dir, own).len() > 1
            {
                shown.push((
                    info,
                    String::new(),
                    vigie_egress::scan::SEVERAL_NAMESPACES,
                    String::new(),
                ));
            }
            if let Some(reason) = &info.not_enforceable {
                shown.push((
                    info,
                    String::new(),
                    vigie_egress::scan::NOT_ENFORCEABLE,
                    reason.clone(),
                ));
            }
            for (container, runtime_id) in &info.containers {
                let Some(cdir) = cgroups::find_container_dir(dir, runtime_id) else {
                    continue;
                };
                let pids = vigie_egress::scan::pids_under(&cdir);
                for risk in vigie_egress::scan::risks_of(&pids) {
                    shown.push((info, container.clone(), risk, String::new()));
                }
            }
        }
        let found: std::collections::BTreeSet<_> = shown
            .iter()
            .map(|(info, container, risk, _)| (info.uid.clone(), container.clone(), *risk))
            .collect();
        self.metrics.pod_risks.reset();
        for (info, container, risk, reason) in shown {
            self.metrics
                .pod_risks
                .with_label_values(&[&info.namespace, &info.name, &container, risk])
                .set(1);
            if self
                .risks
                .contains(&(info.uid.clone(), container.clone(), risk))
            {
                continue;
            }
            warn!(target: "vigie::security", event = "egress.pod.degraded", namespace = %info.namespace,
                  pod = %info.name, container = %container, risk, reason = %reason,
                  "an enrolled pod holds what goes around the egress enforcement");
            vigie_telemetry::SecurityEvent::new(
                vigie_telemetry::security::names::EGRESS_DEGRADED,
                "network",
                "unknown",
                "an enrolled pod holds what goes around the egress enforcement",
            )
            .warn()
            .attr("k8s.namespace.name", &info.namespace)
            .attr("k8s.pod.name", &info.name)
            .attr("k8s.container.name", &container)
            .attr("vigie.egress.risk", risk)
            .export();
        }
        self.risks = found;
    }

    /// Per-pod counts of denials the kernel dropped without an event, as metrics.
    fn export_event_drops(&self) {
        let drops = self.enforcer.event_drops();
        let Ok(names) = self.names.read() else {
            return;
        };
        self.metrics.pod_events_dropped.reset();
        for (cgroup, d) in drops {
            let Some(who) = names.get(&cgroup) else {
                continue;
            };
            for (reason, n) in [("rate_limit", d.rate_limited), ("ring_full", d.ring_full)] {
                if n > 0 {
                    self.metrics
                        .pod_events_dropped
                        .with_label_values(&[&who.namespace, &who.pod, who.role.as_str(), reason])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }
    }

    /// Plans and applies if an input moved. An unreadable pods document changes
    /// nothing (retried on the next tick); pods whose policy cannot be compiled are
    /// logged and fail closed; `Err` only when the maps could not be updated.
    fn reconcile(&mut self, force: bool) -> Result<(), control::ApplyError> {
        let Some((version, _)) = &self.bundle else {
            return Ok(());
        };
        let version = version.clone();
        let read = pods::load(&self.args.pods_file, &self.args.node)?;
        let (pods, held) = self.empty_pods.filter(read, Instant::now());
        if held && self.metrics.empty_pod_list_held.get() == 0 {
            warn!(target: "vigie::security", event = "egress.pods.empty_held",
                  "the pod list is empty after listing pods; keeping them enrolled until it is confirmed");
        }
        self.metrics.empty_pod_list_held.set(i64::from(held));
        let resolved = self.resolve_pods(&pods);
        let Some((_, bundle)) = &self.bundle else {
            return Ok(());
        };
        let full = resolved
            .iter()
            .filter(|p| p.containers.len() == p.info.containers.len())
            .count();
        let mut hosts: Vec<_> = self.resolved_hosts.clone().into_iter().collect();
        hosts.sort();
        let fp = Fingerprint {
            bundle: version.clone(),
            pods: pods.clone(),
            resolved_pods: resolved.len(),
            enrolled_pods: full,
            hosts,
            control_plane: self.settings.control_plane.clone(),
            lookup: self.settings.lookup.clone(),
        };
        if !force && self.last.as_ref() == Some(&fp) {
            return Ok(());
        }
        let (desired, errors) = plan::plan(
            &bundle.policies,
            &resolved,
            &self.settings,
            &self.resolved_hosts,
        );
        for e in &errors {
            error!(error = %e, "pod policy cannot be compiled; the pod reaches nothing");
        }
        self.metrics.pod_errors.set(errors.len() as i64);
        match self.enforcer.apply(&desired) {
            Ok(applied) => {
                self.metrics.applies.with_label_values(&["ok"]).inc();
                if applied != bpf::Applied::default() {
                    info!(
                        version = %version,
                        pods = resolved.len(),
                        waiting_for_cgroups = pods.len() - resolved.len(),
                        loaded = applied.loaded_policies,
                        removed = applied.removed_policies,
                        enrolled_changed = applied.enrolled_changed,
                        unenrolled = applied.unenrolled,
                        "egress maps updated"
                    );
                }
                self.metrics.enrolled_pods.set(resolved.len() as i64);
                self.metrics
                    .enrolled_cgroups
                    .set(desired.enrolled.len() as i64);
                self.metrics.policies.set(desired.policies.len() as i64);
                self.metrics.allow_entries.set(desired.entries() as i64);
                self.metrics.bundle.reset();
                self.metrics.bundle.with_label_values(&[&version]).set(1);
                let present: std::collections::HashSet<(String, String)> = pods
                    .iter()
                    .map(|p| (p.namespace.clone(), p.name.clone()))
                    .collect();
                self.metrics.forget_pods_except(&present);
                if let Ok(mut n) = self.names.write() {
                    *n = desired.names;
                }
                self.last = Some(fp);
                self.metrics.ready.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.metrics.applies.with_label_values(&["error"]).inc();
                Err(e.into())
            }
        }
    }
}

fn init_tracing(format: &str) {
    // aya warns at length when the kernel refuses the object's BTF (Rust type names
    // are not valid BTF names); the programs load without it.
    vigie_telemetry::logs::init("info", &["aya::bpf=error"], format == "json");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    init_tracing(&args.log_format);
    if args.dns.is_empty() {
        args.dns = resolv_conf_nameservers();
    }
    if let Some(a) = &args.lookup_address
        && a.rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
    {
        anyhow::bail!("--lookup-address {a:?}: expected host:port");
    }
    let cgroup_root = match &args.cgroup_root {
        Some(p) => p.clone(),
        None => cgroups::cgroup2_mount().context("finding the cgroup v2 mount")?,
    };
    let metrics = metrics::Metrics::new().context("metrics")?;
    // Egress denials as security events over OTLP.
    vigie_telemetry::Telemetry::init(
        "vigie-egress-agent",
        vec![vigie_telemetry::opentelemetry::KeyValue::new(
            "k8s.node.name",
            args.node.clone(),
        )],
        metrics.registry(),
    )
    .context("telemetry (OTEL_* environment)")?;
    let (enforcer, channels) =
        Enforcer::start(&args.pin_dir, &cgroup_root).context("loading the egress programs")?;
    report_socket_guard(enforcer.socket_guard(), &metrics);
    let names: events::Names = Arc::new(RwLock::new(HashMap::new()));
    let pending = events::Pending::new(&args.node);
    tokio::spawn(events::drain(
        channels.events,
        names.clone(),
        metrics.clone(),
        args.events_per_second,
        pending.clone(),
    ));
    let settings = Settings {
        sidecar_port: args.sidecar_port,
        sidecar_container: args.sidecar_container.clone(),
        dns: args.dns.clone(),
        control_plane: Vec::new(),
        lookup: Vec::new(),
    };
    let (updates_tx, mut updates) = mpsc::channel::<control::Update>(1);
    let control = control::Config {
        url: args.control_plane.clone(),
        token_file: args.token_file.clone(),
        ca: args.control_plane_ca.clone(),
        identity: Identity {
            node: args.node.clone(),
            kind: ClientKind::EgressAgent as i32,
            ..Identity::default()
        },
    };
    tokio::spawn(control::run(control.clone(), updates_tx, metrics.clone()));
    tokio::spawn(control::report(
        control,
        pending,
        Duration::from_millis(args.report_ms),
        metrics.clone(),
    ));
    let resync = Duration::from_millis(args.resync_ms.max(50));
    let args_empty_confirm = args.empty_pods_confirm_ms;
    let mut agent = Agent {
        args,
        cgroup_root,
        enforcer,
        settings,
        metrics: metrics.clone(),
        names,
        bundle: None,
        resolved_hosts: HashMap::new(),
        hosts_at: None,
        last: None,
        resolved: HashMap::new(),
        empty_pods: pods::EmptyListGuard::new(Duration::from_millis(args_empty_confirm)),
        device_errors: Vec::new(),
        risks: std::collections::BTreeSet::new(),
        scanned_at: None,
    };
    let enforcer_stats = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
    {
        let stats = enforcer_stats.clone();
        let m = metrics.clone();
        let served = metrics.clone();
        let peers = channels.orig_peers.clone();
        let listen = agent.args.metrics_listen;
        let refresh: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Ok(s) = stats.lock() {
                m.kernel_denials.set(s.0 as i64);
                m.events_lost.set(s.1 as i64);
                m.redirected.set(s.2 as i64);
            }
        });
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(served, listen, refresh, peers).await {
                error!(error = %e, "metrics server stopped");
            }
        });
    }
    agent.load_saved_bundle();
    agent.refresh_hosts(true).await;
    if let Err(e) = agent.reconcile(true) {
        warn!(error = %e, "initial plan incomplete");
    }
    let mut tick = tokio::time::interval(resync);
    let mut forced_at = Instant::now();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            Some((version, bundle, done)) = updates.recv() => {
                // The control plane validated the bundle: it is the one to enforce, even
                // if applying it fails now (retried every tick; the NACK says why).
                agent.bundle = Some((version.clone(), bundle));
                agent.save_bundle();
                agent.refresh_hosts(true).await;
                let result = agent.reconcile(true);
                if let Err(e) = &result {
                    error!(version = %version, error = %e, "bundle not fully applied; retrying");
                }
                let _ = done.send(result);
            }
            _ = tick.tick() => {
                agent.refresh_hosts(false).await;
                // Every 10 s the maps are checked against the plan even when no input
                // moved: an entry someone with access to the pins deleted comes back.
                let force = forced_at.elapsed() >= Duration::from_secs(10);
                if force {
                    forced_at = Instant::now();
                }
                if let Err(e) = agent.reconcile(force) {
                    warn!(error = %e, "resync failed; the maps keep their state");
                }
                if let Ok(mut s) = enforcer_stats.lock() {
                    *s = agent.enforcer.stats();
                }
                agent.export_event_drops();
                agent.guard_devices();
                agent.scan_pods();
            }
            _ = term.recv() => {
                // The links and maps stay pinned: enforcement goes on without us.
                info!("terminating; enforcement stays in the kernel");
                flush_telemetry();
                return Ok(());
            }
            _ = tokio::signal::ctrl_c() => {
                info!("interrupted; enforcement stays in the kernel");
                flush_telemetry();
                return Ok(());
            }
        }
    }
}

/// Whether packet and other non-IP sockets are refused to enrolled pods; the SOC
/// learns at start when this node cannot stop them.
fn report_socket_guard(guard: &bpf::SocketGuard, metrics: &metrics::Metrics) {
    match guard {
        bpf::SocketGuard::Enforced => {
            metrics.socket_guard.set(1);
            info!("packet, XDP and other non-IP sockets refused to enrolled pods (BPF LSM)");
        }
        bpf::SocketGuard::Unavailable(why) => {
            metrics.socket_guard.set(0);
            warn!(target: "vigie::security", event = "egress.degraded", reason = %why,
                  "enrolled pods holding CAP_NET_RAW can send raw frames past the egress rules on this node");
            vigie_telemetry::SecurityEvent::new(
                vigie_telemetry::security::names::EGRESS_DEGRADED,
                "network",
                "unknown",
                "socket family guard unavailable on this node",
            )
            .warn()
            .attr("vigie.egress.degraded", why.as_str())
            .export();
        }
    }
}

/// Security events still queued go out before exit (bounded wait).
fn flush_telemetry() {
    if let Some(t) = vigie_telemetry::global() {
        t.flush(std::time::Duration::from_secs(2));
    }
}
