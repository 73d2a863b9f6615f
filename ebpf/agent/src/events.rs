//! Denials from the kernel: drained from the ring buffer, named (namespace, pod,
//! container), counted, rate-limited per enrolled cgroup, and logged as security
//! events (`vigie::security`, `event = "egress.denied"`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};
use vigie_telemetry::SecurityEvent;
use vigie_telemetry::security::names;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};
use vigie_egress_common::{
    DenyEvent, HOOK_CONNECT4, HOOK_CONNECT6, HOOK_SENDMSG4, HOOK_SENDMSG6, HOOK_SETSOCKOPT,
    HOOK_SKB_EGRESS, HOOK_SOCKET_CREATE, HOOK_TC_EGRESS, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP,
    PROTO_UDP, REASON_DESTINATION, REASON_FRAGMENT, REASON_IP_OPTIONS, REASON_LOOPBACK_OFF_DEVICE,
    REASON_ROUTING_HEADER, REASON_SOCKET_FAMILY, REASON_SOCKET_OPTION, REASON_UNPARSABLE,
};
use vigie_proto::v1::EgressDenial;

use crate::metrics::Metrics;
use crate::plan::CgroupName;

/// cgroup id → who, refreshed by every plan.
pub type Names = Arc<RwLock<HashMap<u64, CgroupName>>>;

/// A denial made readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub role: &'static str,
    pub destination: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
    pub hook: &'static str,
    /// Why: `destination` (not in the policy) or what the packet or socket was.
    pub reason: &'static str,
    pub pid: u32,
    pub command: String,
    pub policy: u32,
}

/// Reads a `DenyEvent` from ring-buffer bytes (field by field: the buffer gives no
/// alignment guarantee, and this needs no unsafe code). Layout per `#[repr(C)]`.
pub fn decode(b: &[u8]) -> Option<DenyEvent> {
    if b.len() < std::mem::size_of::<DenyEvent>() {
        return None;
    }
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_ne_bytes)
    };
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    Some(DenyEvent {
        cgroup_id: u64_at(0)?,
        enrolled_cgroup_id: u64_at(8)?,
        policy: u32_at(16)?,
        pid: u32_at(20)?,
        addr: b.get(24..40)?.try_into().ok()?,
        port: u16::from_ne_bytes(b.get(40..42)?.try_into().ok()?),
        proto: b[42],
        hook: b[43],
        comm: b.get(44..60)?.try_into().ok()?,
        reason: b[60],
        _pad: [0; 3],
    })
}

/// The socket family of a `socket_create` refusal (the event's `proto`).
fn family_name(f: u8) -> &'static str {
    match f {
        17 => "packet",
        44 => "xdp",
        30 => "tipc",
        21 => "rds",
        40 => "vsock",
        29 => "can",
        31 => "bluetooth",
        43 => "smc",
        _ => "other",
    }
}

/// The refused socket option of a `setsockopt` refusal (level in `port`).
fn option_name(level: u16, name: u8) -> &'static str {
    match (i32::from(level), i32::from(name)) {
        (vigie_egress_common::SOL_PACKET, vigie_egress_common::PACKET_QDISC_BYPASS) => {
            "packet_qdisc_bypass"
        }
        (vigie_egress_common::SOL_XDP, _) => "xdp",
        _ => "other",
    }
}

pub fn reason_name(r: u8) -> &'static str {
    match r {
        REASON_DESTINATION => "destination",
        REASON_IP_OPTIONS => "ip_options",
        REASON_ROUTING_HEADER => "routing_header",
        REASON_FRAGMENT => "fragment",
        REASON_LOOPBACK_OFF_DEVICE => "loopback_off_device",
        REASON_SOCKET_FAMILY => "socket_family",
        REASON_UNPARSABLE => "unparsable",
        REASON_SOCKET_OPTION => "socket_option",
        _ => "unknown",
    }
}

pub fn protocol_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        PROTO_ICMPV6 => "icmpv6",
        _ => "other",
    }
}

fn hook_name(h: u8) -> &'static str {
    match h {
        HOOK_CONNECT4 => "connect4",
        HOOK_CONNECT6 => "connect6",
        HOOK_SENDMSG4 => "sendmsg4",
        HOOK_SENDMSG6 => "sendmsg6",
        HOOK_SKB_EGRESS => "skb_egress",
        HOOK_SOCKET_CREATE => "socket_create",
        HOOK_TC_EGRESS => "tc_egress",
        HOOK_SETSOCKOPT => "setsockopt",
        _ => "unknown",
    }
}

fn address(a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None if a == [0; 16] => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        None => IpAddr::V6(v6),
    }
}

pub fn describe(ev: &DenyEvent, names: &HashMap<u64, CgroupName>) -> Denial {
    // The container's own cgroup names the container; else the enrolled (pod) cgroup.
    let who = names
        .get(&ev.cgroup_id)
        .or_else(|| names.get(&ev.enrolled_cgroup_id));
    let command = {
        let end = ev
            .comm
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(ev.comm.len());
        String::from_utf8_lossy(&ev.comm[..end]).into_owned()
    };
    Denial {
        namespace: who.map(|w| w.namespace.clone()).unwrap_or_default(),
        pod: who.map(|w| w.pod.clone()).unwrap_or_default(),
        container: who.map(|w| w.container.clone()).unwrap_or_default(),
        role: who.map_or("unknown", |w| w.role.as_str()),
        destination: address(ev.addr),
        // A setsockopt refusal carries the option's level there, not a port.
        port: if ev.hook == HOOK_SETSOCKOPT {
            0
        } else {
            ev.port
        },
        protocol: match ev.hook {
            HOOK_SOCKET_CREATE | HOOK_TC_EGRESS => family_name(ev.proto),
            HOOK_SETSOCKOPT => option_name(ev.port, ev.proto),
            _ => protocol_name(ev.proto),
        },
        hook: hook_name(ev.hook),
        reason: reason_name(ev.reason),
        pid: ev.pid,
        command,
        policy: ev.policy,
    }
}

/// At most `per_second` events logged per enrolled cgroup per second; the rest are
/// counted and summarised when the second ends. Metrics count every denial.
#[derive(Debug)]
pub struct Limiter {
    per_second: u32,
    windows: HashMap<u64, (Instant, u32, u64)>,
}

impl Limiter {
    pub fn new(per_second: u32) -> Self {
        Limiter {
            per_second,
            windows: HashMap::new(),
        }
    }

    /// (log this one?, events suppressed in the window that just ended).
    pub fn admit(&mut self, cgroup: u64, now: Instant) -> (bool, u64) {
        let w = self.windows.entry(cgroup).or_insert((now, 0, 0));
        let mut ended = 0;
        if now.duration_since(w.0) >= Duration::from_secs(1) {
            ended = w.2;
            *w = (now, 0, 0);
        }
        if w.1 < self.per_second {
            w.1 += 1;
            (true, ended)
        } else {
            w.2 += 1;
            (false, ended)
        }
    }

    /// Forgets idle cgroups (called now and then).
    pub fn prune(&mut self, now: Instant) {
        self.windows
            .retain(|_, w| now.duration_since(w.0) < Duration::from_secs(10));
    }
}

fn log_denial(d: &Denial) {
    warn!(
        target: "vigie::security",
        event = "egress.denied",
        namespace = %d.namespace,
        pod = %d.pod,
        container = %d.container,
        role = d.role,
        destination = %d.destination,
        port = d.port,
        protocol = d.protocol,
        hook = d.hook,
        reason = d.reason,
        pid = d.pid,
        command = %d.command,
        policy_id = d.policy,
        "egress denied"
    );
    // The same event over OTLP (docs/security-events.md), under the same rate limit.
    SecurityEvent::new(names::EGRESS_DENIED, "network", "failure", "egress denied")
        .warn()
        .attr("k8s.namespace.name", &d.namespace)
        .attr("k8s.pod.name", &d.pod)
        .attr("k8s.container.name", &d.container)
        .attr("vigie.egress.role", d.role)
        .attr("destination.address", d.destination.to_string())
        .attr("destination.port", d.port)
        .attr("network.transport", d.protocol)
        .attr("vigie.egress.hook", d.hook)
        .attr("vigie.egress.reason", d.reason)
        .attr("process.pid", d.pid)
        .attr("process.command", &d.command)
        .export();
}

/// Registers the event ring buffer with the reactor, for readability.
pub fn pollable<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: the ring buffers own their map fd for their whole life and always
    // return that same fd, which is what `register` requires.
    #[expect(unsafe_code, reason = "AsyncFd::register_with_interest is unsafe")]
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// Denials waiting to be reported to the control plane, aggregated per (pod,
/// container, destination, port, protocol, hook). Bounded: beyond `MAX_PENDING`
/// entries new ones are dropped (and counted), old ones keep counting.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    node: String,
    entries: Arc<std::sync::Mutex<HashMap<String, EgressDenial>>>,
}

const MAX_PENDING: usize = 10_000;

fn pending_key(d: &EgressDenial) -> String {
    format!(
        "{}/{}/{}/{}/{}/{}/{}/{}",
        d.namespace, d.pod, d.container, d.destination, d.port, d.protocol, d.hook, d.reason
    )
}

impl Pending {
    pub fn new(node: &str) -> Self {
        Pending {
            node: node.to_string(),
            entries: Arc::default(),
        }
    }

    pub fn add(&self, d: &Denial, now: SystemTime, metrics: &Metrics) {
        let at = timestamp(now);
        let entry = EgressDenial {
            node: self.node.clone(),
            namespace: d.namespace.clone(),
            pod: d.pod.clone(),
            container: d.container.clone(),
            role: d.role.to_string(),
            destination: d.destination.to_string(),
            port: u32::from(d.port),
            protocol: d.protocol.to_string(),
            hook: d.hook.to_string(),
            reason: d.reason.to_string(),
            command: d.command.clone(),
            count: 1,
            first_seen: Some(at),
            last_seen: Some(at),
        };
        let key = pending_key(&entry);
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if let Some(e) = entries.get_mut(&key) {
            e.count += 1;
            e.last_seen = Some(at);
            if !d.command.is_empty() {
                e.command.clone_from(&d.command);
            }
            return;
        }
        if entries.len() >= MAX_PENDING {
            metrics.reports_dropped.inc();
            return;
        }
        entries.insert(key, entry);
    }

    /// Up to `max` entries, removed from the pending set.
    pub fn take(&self, max: usize) -> Vec<EgressDenial> {
        let Ok(mut entries) = self.entries.lock() else {
            return Vec::new();
        };
        let keys: Vec<String> = entries.keys().take(max).cloned().collect();
        keys.iter().filter_map(|k| entries.remove(k)).collect()
    }

    /// A batch that could not be sent goes back (merged with what arrived since).
    pub fn put_back(&self, batch: Vec<EgressDenial>, metrics: &Metrics) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        for d in batch {
            let key = pending_key(&d);
            let room = entries.len() < MAX_PENDING;
            match entries.get_mut(&key) {
                Some(e) => {
                    e.count += d.count;
                    e.first_seen = d.first_seen;
                }
                None if room => {
                    entries.insert(key, d);
                }
                None => metrics.reports_dropped.inc(),
            }
        }
    }
}

fn timestamp(t: SystemTime) -> pbjson_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Runs until the ring buffer fails.
pub async fn drain(
    ring: RingBuf<MapData>,
    names: Names,
    metrics: Metrics,
    per_second: u32,
    pending: Pending,
) {
    let mut fd = match pollable(ring) {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot poll the event ring buffer; denials are counted but not reported");
            return;
        }
    };
    let mut limiter = Limiter::new(per_second);
    let mut last_prune = Instant::now();
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "event ring buffer failed");
                return;
            }
        };
        let now = Instant::now();
        let ring = guard.get_inner_mut();
        let names = names.read().map(|n| n.clone()).unwrap_or_default();
        while let Some(item) = ring.next() {
            let Some(ev) = decode(&item) else { continue };
            let d = describe(&ev, &names);
            pending.add(&d, SystemTime::now(), &metrics);
            metrics.denied(&d.namespace, &d.pod, &d.container, d.protocol);
            let (log, suppressed) = limiter.admit(ev.enrolled_cgroup_id, now);
            if suppressed > 0 {
                info!(target: "vigie::security", event = "egress.denied.suppressed", namespace = %d.namespace, pod = %d.pod, suppressed, "further egress denials not logged (rate limit)");
                SecurityEvent::new(
                    names::EGRESS_DENIED,
                    "network",
                    "failure",
                    "further egress denials not logged (rate limit)",
                )
                .attr("k8s.namespace.name", &d.namespace)
                .attr("k8s.pod.name", &d.pod)
                .attr("vigie.egress.suppressed", suppressed)
                .export();
            }
            if log {
                log_denial(&d);
            } else {
                metrics.events_suppressed.inc();
            }
        }
        guard.clear_ready();
        if now.duration_since(last_prune) > Duration::from_secs(10) {
            limiter.prune(now);
            last_prune = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Role;
    use vigie_egress_common::v4_mapped;

    #[test]
    fn events_are_decoded_and_named() {
        let ev = DenyEvent {
            cgroup_id: 7,
            enrolled_cgroup_id: 5,
            policy: 3,
            pid: 42,
            addr: v4_mapped([10, 1, 2, 3]),
            port: 443,
            proto: PROTO_TCP,
            hook: HOOK_CONNECT4,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            reason: REASON_LOOPBACK_OFF_DEVICE,
            _pad: [0; 3],
        };
        let mut raw = Vec::new();
        raw.extend(ev.cgroup_id.to_ne_bytes());
        raw.extend(ev.enrolled_cgroup_id.to_ne_bytes());
        raw.extend(ev.policy.to_ne_bytes());
        raw.extend(ev.pid.to_ne_bytes());
        raw.extend(ev.addr);
        raw.extend(ev.port.to_ne_bytes());
        raw.extend([ev.proto, ev.hook]);
        raw.extend(ev.comm);
        raw.extend([ev.reason, 0, 0, 0]);
        assert_eq!(raw.len(), std::mem::size_of::<DenyEvent>());
        let back = decode(&raw).unwrap();
        assert_eq!(back, ev);
        assert!(decode(&raw[..10]).is_none());
        let names = HashMap::from([(
            5,
            CgroupName {
                namespace: "shop".into(),
                pod: "chat-1".into(),
                container: String::new(),
                role: Role::App,
            },
        )]);
        let d = describe(&back, &names);
        assert_eq!(
            (d.namespace.as_str(), d.pod.as_str(), d.role),
            ("shop", "chat-1", "app")
        );
        assert_eq!(d.destination, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(
            (d.port, d.protocol, d.hook, d.pid),
            (443, "tcp", "connect4", 42)
        );
        assert_eq!(d.command, "curl");
        assert_eq!(d.reason, "loopback_off_device");
        let mut packet = back;
        (packet.hook, packet.proto, packet.reason) = (HOOK_SOCKET_CREATE, 17, REASON_SOCKET_FAMILY);
        let d = describe(&packet, &names);
        assert_eq!(
            (d.hook, d.protocol, d.reason),
            ("socket_create", "packet", "socket_family")
        );
        let mut v6 = back;
        v6.addr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(
            describe(&v6, &names).destination,
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn limiter_logs_a_few_per_second_and_reports_the_rest() {
        let mut l = Limiter::new(3);
        let t0 = Instant::now();
        let logged = (0..10).filter(|_| l.admit(1, t0).0).count();
        assert_eq!(logged, 3);
        assert_eq!(l.admit(2, t0), (true, 0), "per cgroup");
        assert_eq!(l.admit(1, t0 + Duration::from_millis(1100)), (true, 7));
    }
}
