//! What the eBPF programs and the agent agree on: map names, key and value layouts,
//! the event record. `#![no_std]` so the programs can use it; the policy compiler
//! (feature `std`) turns rules into map entries and is unit-tested without root.
#![no_std]

#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "std")]
pub mod compile;
#[cfg(feature = "std")]
pub mod validate;

/// Port ranges kept per destination prefix in the maps (after inheriting those of the
/// prefixes that contain it). A policy's own rules may use
/// [`compile::USER_MAX_PORT_RULES`]; the rest is headroom for the rules the agent adds
/// (loopback, DNS, control plane, pool endpoints). Never truncated: refused.
pub const MAX_PORT_RULES: usize = 12;
/// Policy id that no trie entry carries: a cgroup enrolled with it reaches nothing
/// (fail closed). Never allocated to a compiled policy.
pub const DENY_ALL_POLICY: u32 = u32::MAX;
/// Cgroup ancestry levels examined for an enrolled cgroup (pod and container cgroups
/// sit at depth 3–5 under the kubelet's hierarchy).
pub const MAX_CGROUP_LEVELS: u32 = 12;

pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Which program saw (and refused) the traffic.
pub const HOOK_CONNECT4: u8 = 1;
pub const HOOK_CONNECT6: u8 = 2;
pub const HOOK_SENDMSG4: u8 = 3;
pub const HOOK_SENDMSG6: u8 = 4;
pub const HOOK_SKB_EGRESS: u8 = 5;
/// The BPF LSM `socket_create` hook (a socket family that no IP hook would see).
pub const HOOK_SOCKET_CREATE: u8 = 6;
/// The tc (TCX) egress program on the pods' network devices: frames from packet and
/// other non-IP sockets, which no cgroup hook sees.
pub const HOOK_TC_EGRESS: u8 = 7;
/// The cgroup `setsockopt` program.
pub const HOOK_SETSOCKOPT: u8 = 8;

/// Why the traffic was refused (`DenyEvent::reason`).
/// The destination is not in the policy.
pub const REASON_DESTINATION: u8 = 0;
/// An IPv4 header with options (source routes, timestamps…).
pub const REASON_IP_OPTIONS: u8 = 1;
/// An IPv6 routing header (type 0, 2, segment routing…).
pub const REASON_ROUTING_HEADER: u8 = 2;
/// A fragment after the first (no transport header to judge).
pub const REASON_FRAGMENT: u8 = 3;
/// A loopback destination on a packet leaving by another device
/// (`SO_BINDTODEVICE`, `IP_UNICAST_IF`).
pub const REASON_LOOPBACK_OFF_DEVICE: u8 = 4;
/// A socket family that bypasses the IP stack's hooks (`AF_PACKET`, `AF_XDP`…);
/// the event's `proto` holds the family.
pub const REASON_SOCKET_FAMILY: u8 = 5;
/// A packet whose headers could not be read.
pub const REASON_UNPARSABLE: u8 = 6;
/// A socket option that would send frames past the tc backstop
/// (`PACKET_QDISC_BYPASS`, any `SOL_XDP` option); the event's `port` holds the
/// option's level, `proto` its name (low byte).
pub const REASON_SOCKET_OPTION: u8 = 7;
/// Socket option levels and names refused to enrolled cgroups.
pub const SOL_PACKET: i32 = 263;
pub const PACKET_QDISC_BYPASS: i32 = 20;
pub const SOL_XDP: i32 = 283;
/// The loopback interface's index in every network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;
/// Socket families an enrolled cgroup may create: every other one reaches the wire
/// (or another host) without the IP stack's hooks.
pub const AF_UNIX: u32 = 1;
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const AF_NETLINK: u32 = 16;

/// Events per second each enrolled cgroup may put in the ring buffer, per CPU, and
/// the burst above it: one pod's flood cannot fill the buffer all pods share (the
/// buffer holds ~16k events: a pod with threads on 160 CPUs would need their whole
/// burst at once to fill it). The agent logs at most 20 per pod and second anyway.
pub const EVENT_RATE_PER_CPU: u64 = 50;
pub const EVENT_BURST: u64 = 100;

/// Map and program names (bpffs pin names too).
pub const MAP_ENROLLED: &str = "VIGIE_ENROLLED";
pub const MAP_ALLOW: &str = "VIGIE_ALLOW";
pub const MAP_EVENTS: &str = "VIGIE_EVENTS";
pub const MAP_STATS: &str = "VIGIE_STATS";
/// (policy id, destination prefix) → ports redirected to the sidecar (app policies).
pub const MAP_REDIRECT: &str = "VIGIE_REDIRECT";
/// Policy id → the sidecar's port that redirected connections go to.
pub const MAP_REDIRECT_PORT: &str = "VIGIE_REDIRECT_PORT";
/// Socket cookie → original destination, between `connect` and `sock_ops`.
pub const MAP_ORIG_COOKIE: &str = "VIGIE_ORIG_COOKIE";
/// (netns cookie, client address, client port) → original destination: what the
/// sidecar looks up (through the agent) for an accepted connection.
pub const MAP_ORIG_PEER: &str = "VIGIE_ORIG_PEER";
/// Enrolled cgroup id → its event budget and what it dropped (per CPU).
pub const MAP_EVENT_BUDGET: &str = "VIGIE_EVENT_BUDGET";
/// Program attached to the LSM's `socket_create` hook, per cgroup (kernel ≥ 6.0 with
/// the BPF LSM active); attached only where the kernel has it.
pub const LSM_SOCKET_CREATE: &str = "vigie_socket_create";
/// The tc program attached (TCX, egress) to every device of the enrolled pods'
/// network namespaces.
pub const TC_EGRESS: &str = "vigie_tc_egress";
pub const PROGRAMS: [&str; 7] = [
    "vigie_setsockopt",
    "vigie_connect4",
    "vigie_connect6",
    "vigie_sendmsg4",
    "vigie_sendmsg6",
    "vigie_skb_egress",
    "vigie_sock_ops",
];

/// Index in the per-CPU stats array.
pub const STAT_DENIED: u32 = 0;
/// Denials whose event did not fit in the ring buffer.
pub const STAT_EVENTS_LOST: u32 = 1;
/// Connections redirected to the sidecar.
pub const STAT_REDIRECTED: u32 = 2;
pub const STAT_COUNT: u32 = 3;

/// One allowed port range for one protocol (`PROTO_ANY` matches every protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRule {
    pub proto: u8,
    pub _pad: u8,
    pub from: u16,
    pub to: u16,
}

impl PortRule {
    #[inline(always)]
    pub fn matches(&self, proto: u8, port: u16) -> bool {
        (self.proto == PROTO_ANY || self.proto == proto) && port >= self.from && port <= self.to
    }
}

/// Value of the allow trie: what may be reached in a prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allow {
    pub count: u32,
    pub rules: [PortRule; MAX_PORT_RULES],
}

impl Allow {
    #[inline(always)]
    pub fn permits(&self, proto: u8, port: u16) -> bool {
        let mut i = 0;
        while i < MAX_PORT_RULES {
            if i as u32 >= self.count {
                return false;
            }
            if self.rules[i].matches(proto, port) {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Key data of the allow trie: the policy id first (so one trie holds every policy and
/// a lookup never crosses policies), then the IPv6 address; IPv4 is stored v4-mapped
/// (`::ffff:a.b.c.d`), so `connect6` to a mapped address meets the IPv4 rules.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestKey {
    pub policy: [u8; 4],
    pub addr: [u8; 16],
}

/// Trie prefix length covering the policy id.
pub const POLICY_PREFIX_BITS: u32 = 32;

impl DestKey {
    #[inline(always)]
    pub fn new(policy: u32, addr: [u8; 16]) -> Self {
        DestKey {
            policy: policy.to_be_bytes(),
            addr,
        }
    }
}

/// `::ffff:a.b.c.d` for an IPv4 address given in network byte order.
#[inline(always)]
pub fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// A refused connection or packet, sent to the agent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyEvent {
    pub cgroup_id: u64,
    /// The enrolled cgroup whose policy refused (the pod's or the container's).
    pub enrolled_cgroup_id: u64,
    pub policy: u32,
    pub pid: u32,
    /// Destination, IPv4 v4-mapped.
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub hook: u8,
    pub comm: [u8; 16],
    /// `REASON_*`.
    pub reason: u8,
    pub _pad: [u8; 3],
}

/// An enrolled cgroup's share of the event ring buffer on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    /// Credit in nanoseconds of event time (one event costs 1 s / rate).
    pub credit_ns: u64,
    pub last_ns: u64,
    /// Denials not reported because the cgroup was over its budget.
    pub rate_limited: u64,
    /// Denials not reported because the ring buffer was full.
    pub ring_full: u64,
}

/// Where a redirected connection was going.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// IPv6 form, IPv4 v4-mapped.
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}

/// The client end of a redirected connection, as the sidecar sees its peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub netns: u64,
    /// IPv6 form, IPv4 v4-mapped.
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}

#[cfg(feature = "user")]
mod pod {
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::OrigDst {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::PeerKey {}
    // SAFETY: plain `#[repr(C)]` integers and arrays, padding spelled out, no
    // pointers: any bit pattern is valid.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::Allow {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::DestKey {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::DenyEvent {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::EventBudget {}
}

// The agent decodes events field by field at these offsets (see its events.rs).
const _: () = assert!(core::mem::size_of::<DenyEvent>() == 64);
const _: () = assert!(core::mem::size_of::<DestKey>() == 20);
const _: () = assert!(core::mem::size_of::<OrigDst>() == 24);
const _: () = assert!(core::mem::size_of::<PeerKey>() == 32);
const _: () = assert!(core::mem::size_of::<EventBudget>() == 32);
