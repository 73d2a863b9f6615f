//! Vigie egress programs, attached to the cgroup that holds the enrolled pods.
//!
//! Every hook finds the deepest enrolled ancestor of the caller's cgroup (a pod's
//! cgroup for its app containers, the sidecar container's own cgroup for the
//! sidecar), then looks the destination up in that policy's allow trie. Not enrolled:
//! allowed untouched. Enrolled and not allowed: refused (`EPERM` for sockets, dropped
//! for packets) and reported through the ring buffer.
#![no_std]
#![no_main]

use aya_ebpf::EbpfContext as _;
use aya_ebpf::bindings::{BPF_SOCK_OPS_TCP_CONNECT_CB, __sk_buff};
use aya_ebpf::helpers::generated::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie,
    bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_fullsock, bpf_skb_ancestor_cgroup_id,
    bpf_skb_cgroup_id,
};
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid};
use aya_ebpf::macros::{
    cgroup_skb, cgroup_sock_addr, cgroup_sockopt, classifier, lsm_cgroup, map, sock_ops,
};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf};
use aya_ebpf::programs::{
    LsmContext, SkBuffContext, SockAddrContext, SockOpsContext, SockoptContext, TcContext,
};
use vigie_egress_common::{
    AF_INET, AF_INET6, AF_NETLINK, AF_UNIX, Allow, DenyEvent, DestKey, EVENT_BURST,
    EVENT_RATE_PER_CPU, EventBudget, HOOK_CONNECT4, HOOK_CONNECT6, HOOK_SENDMSG4, HOOK_SENDMSG6,
    HOOK_SETSOCKOPT, HOOK_SKB_EGRESS, HOOK_SOCKET_CREATE, HOOK_TC_EGRESS, LOOPBACK_IFINDEX,
    PACKET_QDISC_BYPASS, REASON_SOCKET_OPTION, SOL_PACKET, SOL_XDP, MAX_CGROUP_LEVELS, OrigDst, PeerKey,
    POLICY_PREFIX_BITS, PROTO_TCP, PROTO_UDP, REASON_DESTINATION, REASON_FRAGMENT,
    REASON_IP_OPTIONS, REASON_LOOPBACK_OFF_DEVICE, REASON_ROUTING_HEADER, REASON_SOCKET_FAMILY, REASON_UNPARSABLE,
    STAT_COUNT, STAT_DENIED, STAT_EVENTS_LOST, STAT_REDIRECTED, v4_mapped,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// Enrolled cgroup id → policy id. Pinned: enforcement outlives the agent.
#[map(name = "VIGIE_ENROLLED")]
static VIGIE_ENROLLED: HashMap<u64, u32> = HashMap::pinned(65_536, 0);

/// (policy id, destination prefix) → allowed ports and protocols.
#[map(name = "VIGIE_ALLOW")]
static VIGIE_ALLOW: LpmTrie<DestKey, Allow> = LpmTrie::pinned(262_144, 0);

/// Denials for the agent (1 MiB ≈ 16k events).
#[map(name = "VIGIE_EVENTS")]
static VIGIE_EVENTS: RingBuf = RingBuf::pinned(1 << 20, 0);

#[map(name = "VIGIE_STATS")]
static VIGIE_STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_COUNT, 0);

/// (policy id, destination prefix) → ports redirected to the sidecar.
#[map(name = "VIGIE_REDIRECT")]
static VIGIE_REDIRECT: LpmTrie<DestKey, Allow> = LpmTrie::pinned(65_536, 0);

/// Policy id → sidecar port for redirected connections.
#[map(name = "VIGIE_REDIRECT_PORT")]
static VIGIE_REDIRECT_PORT: HashMap<u32, u32> = HashMap::pinned(65_536, 0);

/// Socket cookie → original destination (from connect to sock_ops).
#[map(name = "VIGIE_ORIG_COOKIE")]
static VIGIE_ORIG_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::pinned(65_536, 0);

/// Client end of a redirected connection → original destination.
#[map(name = "VIGIE_ORIG_PEER")]
static VIGIE_ORIG_PEER: LruHashMap<PeerKey, OrigDst> = LruHashMap::pinned(65_536, 0);

/// Enrolled cgroup id → its share of the ring buffer on this CPU.
#[map(name = "VIGIE_EVENT_BUDGET")]
static VIGIE_EVENT_BUDGET: LruPerCpuHashMap<u64, EventBudget> = LruPerCpuHashMap::pinned(65_536, 0);

#[derive(Clone, Copy)]
struct Enrolled {
    cgroup: u64,
    policy: u32,
}

/// Deepest enrolled ancestor (the cgroup itself included), given a level → id lookup.
#[inline(always)]
fn deepest_enrolled(ancestor: impl Fn(u32) -> u64) -> Option<Enrolled> {
    // Plain integers rather than an Option carried across iterations: LLVM may
    // otherwise fold the map's nullable pointer into arithmetic the verifier refuses.
    let mut cgroup = 0u64;
    let mut policy = 0u32;
    let mut level = 1;
    while level < MAX_CGROUP_LEVELS {
        let id = ancestor(level);
        if id == 0 {
            break;
        }
        if let Some(p) = VIGIE_ENROLLED.get_ptr(&id) {
            // SAFETY: non-null pointer to a live map value, read at once.
            policy = unsafe { core::ptr::read_volatile(p) };
            cgroup = id;
        }
        level += 1;
    }
    if cgroup == 0 {
        None
    } else {
        Some(Enrolled { cgroup, policy })
    }
}

#[inline(always)]
fn permitted(policy: u32, addr: [u8; 16], proto: u8, port: u16) -> bool {
    let key = Key::new(POLICY_PREFIX_BITS + 128, DestKey::new(policy, addr));
    VIGIE_ALLOW
        .get(&key)
        .is_some_and(|allow| allow.permits(proto, port))
}

#[inline(always)]
fn count(stat: u32) {
    if let Some(p) = VIGIE_STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

const EVENT_COST_NS: u64 = 1_000_000_000 / EVENT_RATE_PER_CPU;
const EVENT_BURST_NS: u64 = EVENT_BURST * EVENT_COST_NS;

/// Takes one event from the enrolled cgroup's budget on this CPU (a token bucket in
/// nanoseconds of credit); `false` when it is spent, counted against the cgroup.
#[inline(always)]
fn take_event_slot(cgroup: u64) -> bool {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match VIGIE_EVENT_BUDGET.get_ptr_mut(&cgroup) {
        Some(b) => {
            // SAFETY: per-CPU value of a live entry, no concurrent writer on this CPU.
            let b = unsafe { &mut *b };
            let credit = EVENT_BURST_NS.min(b.credit_ns.saturating_add(now.saturating_sub(b.last_ns)));
            b.last_ns = now;
            if credit >= EVENT_COST_NS {
                b.credit_ns = credit - EVENT_COST_NS;
                true
            } else {
                b.credit_ns = credit;
                b.rate_limited += 1;
                false
            }
        }
        None => {
            let fresh = EventBudget {
                credit_ns: EVENT_BURST_NS - EVENT_COST_NS,
                last_ns: now,
                rate_limited: 0,
                ring_full: 0,
            };
            // An LRU map: a full map evicts the least recently used cgroup's budget.
            let _ = VIGIE_EVENT_BUDGET.insert(&cgroup, &fresh, 0);
            true
        }
    }
}

#[inline(always)]
fn count_ring_full(cgroup: u64) {
    count(STAT_EVENTS_LOST);
    if let Some(b) = VIGIE_EVENT_BUDGET.get_ptr_mut(&cgroup) {
        // SAFETY: as in take_event_slot.
        unsafe { (*b).ring_full += 1 };
    }
}

/// What was refused, for the ring buffer.
#[derive(Clone, Copy)]
struct Refusal {
    hook: u8,
    reason: u8,
    addr: [u8; 16],
    port: u16,
    proto: u8,
}

#[inline(always)]
fn report(r: Refusal, leaf: u64, e: Enrolled, task: bool) {
    count(STAT_DENIED);
    if !take_event_slot(e.cgroup) {
        return;
    }
    let (pid, comm) = if task {
        (
            (bpf_get_current_pid_tgid() >> 32) as u32,
            bpf_get_current_comm().unwrap_or([0; 16]),
        )
    } else {
        (0, [0; 16])
    };
    match VIGIE_EVENTS.reserve::<DenyEvent>(0) {
        Some(mut slot) => {
            slot.write(DenyEvent {
                cgroup_id: leaf,
                enrolled_cgroup_id: e.cgroup,
                policy: e.policy,
                pid,
                addr: r.addr,
                port: r.port,
                proto: r.proto,
                hook: r.hook,
                comm,
                reason: r.reason,
                _pad: [0; 3],
            });
            slot.submit(0);
        }
        None => count_ring_full(e.cgroup),
    }
}

/// Refuses in a socket hook: the calling task is the one connecting or sending.
#[inline(always)]
fn sock_refuse(e: Enrolled, r: Refusal) -> i32 {
    // SAFETY: helper without arguments.
    let leaf = unsafe { bpf_get_current_cgroup_id() };
    report(r, leaf, e, true);
    DENY
}

/// The deepest enrolled ancestor of the calling task's cgroup.
#[inline(always)]
fn current_enrolled() -> Option<Enrolled> {
    // SAFETY: helpers without pointer arguments.
    deepest_enrolled(|l| unsafe { bpf_get_current_ancestor_cgroup_id(l as i32) })
}

/// Socket hooks: the calling task is the one connecting or sending.
#[inline(always)]
fn sock_judge(e: Enrolled, hook: u8, addr: [u8; 16], port: u16, proto: u8) -> i32 {
    if permitted(e.policy, addr, proto, port) {
        return ALLOW;
    }
    sock_refuse(
        e,
        Refusal {
            hook,
            reason: REASON_DESTINATION,
            addr,
            port,
            proto,
        },
    )
}

/// `127.0.0.0/8` (v4-mapped) or `::1`.
#[inline(always)]
fn is_loopback(a: [u8; 16]) -> bool {
    let zero_prefix = a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9] == 0;
    zero_prefix
        && ((a[10] == 0xff && a[11] == 0xff && a[12] == 127)
            || (a[10] | a[11] | a[12] | a[13] | a[14] == 0 && a[15] == 1))
}

/// Whether the socket is bound to a device other than loopback: a "loopback"
/// destination would then leave by that device (towards the gateway), past the rules
/// that let the app reach its sidecar on loopback.
#[inline(always)]
fn bound_off_loopback(ctx: &SockAddrContext) -> bool {
    // SAFETY: the kernel hands a valid bpf_sock_addr whose `sk` is a live socket.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    if sk.is_null() {
        return false;
    }
    // SAFETY: non-null socket pointer from the context; 4-byte field read.
    let dev = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*sk).bound_dev_if)) };
    dev != 0 && dev != LOOPBACK_IFINDEX
}

/// Socket hooks' common refusals before the destination is looked up.
#[inline(always)]
fn sock_precheck(ctx: &SockAddrContext, e: Enrolled, hook: u8, addr: [u8; 16], port: u16, proto: u8) -> Option<i32> {
    if is_loopback(addr) && bound_off_loopback(ctx) {
        return Some(sock_refuse(
            e,
            Refusal {
                hook,
                reason: REASON_LOOPBACK_OFF_DEVICE,
                addr,
                port,
                proto,
            },
        ));
    }
    None
}

#[inline(always)]
fn sock_verdict(ctx: &SockAddrContext, hook: u8, addr: [u8; 16], port: u16, proto: u8) -> i32 {
    let Some(e) = current_enrolled() else {
        return ALLOW;
    };
    if let Some(verdict) = sock_precheck(ctx, e, hook, addr, port, proto) {
        return verdict;
    }
    sock_judge(e, hook, addr, port, proto)
}

/// The sidecar port to send this TCP connection to, if the policy redirects it.
#[inline(always)]
fn redirect_to(e: Enrolled, addr: [u8; 16], port: u16, proto: u8) -> Option<u16> {
    if proto != PROTO_TCP {
        return None;
    }
    let key = Key::new(POLICY_PREFIX_BITS + 128, DestKey::new(e.policy, addr));
    if !VIGIE_REDIRECT
        .get(&key)
        .is_some_and(|r| r.permits(proto, port))
    {
        return None;
    }
    let p = VIGIE_REDIRECT_PORT.get_ptr(&e.policy)?;
    // SAFETY: non-null pointer to a live map value, read at once.
    let to = unsafe { core::ptr::read_volatile(p) };
    (to != 0).then_some(to as u16)
}

/// Keeps the original destination under the socket's cookie for `sock_ops`.
#[inline(always)]
fn remember(ctx: &SockAddrContext, addr: [u8; 16], port: u16) {
    // SAFETY: the program's own context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig = OrigDst {
        addr,
        port,
        _pad: [0; 6],
    };
    // An LRU map: a full map evicts the oldest, never fails the connect.
    let _ = VIGIE_ORIG_COOKIE.insert(&cookie, &orig, 0);
    count(STAT_REDIRECTED);
}

fn v6_bytes(words: [u32; 4]) -> [u8; 16] {
    // The words hold network-order bytes; reading them back as stored keeps that order.
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

/// (destination, port, protocol) of a `connect`/`sendmsg` on an IPv4 socket.
#[inline(always)]
fn sock_v4(ctx: &SockAddrContext) -> ([u8; 16], u16, u8) {
    // SAFETY: the kernel hands a valid bpf_sock_addr; 4-byte field reads are allowed.
    let sa = unsafe { &*ctx.sock_addr };
    (
        v4_mapped(sa.user_ip4.to_ne_bytes()),
        u16::from_be(sa.user_port as u16),
        sa.protocol as u8,
    )
}

#[inline(always)]
fn sock_v6(ctx: &SockAddrContext) -> ([u8; 16], u16, u8) {
    // SAFETY: as above.
    let sa = unsafe { &*ctx.sock_addr };
    let words = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    (
        v6_bytes(words),
        u16::from_be(sa.user_port as u16),
        sa.protocol as u8,
    )
}

/// Redirected connections go to the sidecar on 127.0.0.1 (v4-mapped for IPv6 sockets).
const LOOPBACK4: [u8; 4] = [127, 0, 0, 1];

#[cgroup_sock_addr(connect4)]
pub fn vigie_connect4(ctx: SockAddrContext) -> i32 {
    let (addr, port, proto) = sock_v4(&ctx);
    let Some(e) = current_enrolled() else {
        return ALLOW;
    };
    if let Some(verdict) = sock_precheck(&ctx, e, HOOK_CONNECT4, addr, port, proto) {
        return verdict;
    }
    if let Some(to) = redirect_to(e, addr, port, proto) {
        remember(&ctx, addr, port);
        // SAFETY: connect4 may rewrite user_ip4 and user_port (4-byte writes).
        unsafe {
            (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes(LOOPBACK4);
            (*ctx.sock_addr).user_port = u32::from(to.to_be());
        }
        return ALLOW;
    }
    sock_judge(e, HOOK_CONNECT4, addr, port, proto)
}

#[cgroup_sock_addr(connect6)]
pub fn vigie_connect6(ctx: SockAddrContext) -> i32 {
    let (addr, port, proto) = sock_v6(&ctx);
    let Some(e) = current_enrolled() else {
        return ALLOW;
    };
    if let Some(verdict) = sock_precheck(&ctx, e, HOOK_CONNECT6, addr, port, proto) {
        return verdict;
    }
    if let Some(to) = redirect_to(e, addr, port, proto) {
        remember(&ctx, addr, port);
        // SAFETY: connect6 may rewrite user_ip6 (4-byte writes) and user_port.
        unsafe {
            (*ctx.sock_addr).user_ip6[0] = 0;
            (*ctx.sock_addr).user_ip6[1] = 0;
            (*ctx.sock_addr).user_ip6[2] = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
            (*ctx.sock_addr).user_ip6[3] = u32::from_ne_bytes(LOOPBACK4);
            (*ctx.sock_addr).user_port = u32::from(to.to_be());
        }
        return ALLOW;
    }
    sock_judge(e, HOOK_CONNECT6, addr, port, proto)
}

/// Re-keys a redirected connection by its client end once the kernel has chosen the
/// local port: the sidecar knows the accepted connection only by its peer address.
#[sock_ops]
pub fn vigie_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 1;
    }
    // SAFETY: the program's own context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(p) = VIGIE_ORIG_COOKIE.get_ptr(&cookie) else {
        return 1;
    };
    // SAFETY: non-null pointer to a live map value, read at once.
    let orig = unsafe { core::ptr::read_volatile(p) };
    let ops = ctx.ops;
    // Every field read unconditionally, at a constant offset from the context pointer:
    // loads chosen by a branch get merged into one load through a computed pointer,
    // which the verifier refuses for context memory.
    // SAFETY: the kernel hands a valid bpf_sock_ops; 4-byte field reads are allowed.
    let (family, ip4, ip6) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).family)),
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip4)),
            [
                core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip6[0])),
                core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip6[1])),
                core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip6[2])),
                core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip6[3])),
            ],
        )
    };
    let addr = if family == 2 {
        v4_mapped(ip4.to_ne_bytes())
    } else {
        v6_bytes(ip6)
    };
    // SAFETY: as above.
    let local_port = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_port)) };
    let key = PeerKey {
        // SAFETY: the program's own context pointer.
        netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        addr,
        // local_port is in host byte order in bpf_sock_ops.
        port: local_port as u16,
        _pad: [0; 6],
    };
    let _ = VIGIE_ORIG_PEER.insert(&key, &orig, 0);
    let _ = VIGIE_ORIG_COOKIE.remove(&cookie);
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn vigie_sendmsg4(ctx: SockAddrContext) -> i32 {
    let (addr, port, _) = sock_v4(&ctx);
    sock_verdict(&ctx, HOOK_SENDMSG4, addr, port, PROTO_UDP)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn vigie_sendmsg6(ctx: SockAddrContext) -> i32 {
    let (addr, port, _) = sock_v6(&ctx);
    sock_verdict(&ctx, HOOK_SENDMSG6, addr, port, PROTO_UDP)
}

/// Socket families that cannot carry data past the IP stack's hooks.
#[inline(always)]
fn family_allowed(family: u32) -> bool {
    family == AF_UNIX || family == AF_INET || family == AF_INET6 || family == AF_NETLINK
}

/// Packet (`AF_PACKET`), XDP and other non-IP sockets write frames below every IP
/// hook: an enrolled cgroup may not create them. A BPF LSM program attached to the
/// enrolled pods' cgroup root (kernel ≥ 6.0 with the BPF LSM active); returns 0 to
/// refuse with `EPERM`, 1 to allow.
#[lsm_cgroup(hook = "socket_create")]
pub fn vigie_socket_create(ctx: LsmContext) -> i32 {
    let family: i32 = ctx.arg(0);
    let kern: i32 = ctx.arg(3);
    if kern != 0 || family_allowed(family as u32) {
        return 1;
    }
    let Some(e) = current_enrolled() else {
        return 1;
    };
    sock_refuse(
        e,
        Refusal {
            hook: HOOK_SOCKET_CREATE,
            reason: REASON_SOCKET_FAMILY,
            addr: [0; 16],
            port: 0,
            proto: family as u8,
        },
    );
    0
}

/// Options that would send a packet socket's frames past the qdisc layer, and so past
/// the tc backstop below (`PACKET_QDISC_BYPASS`), or set up an AF_XDP socket (which
/// transmits below it too): refused to enrolled cgroups. Returns 1 to let the option
/// through, 0 to refuse it with `EPERM`.
#[cgroup_sockopt(setsockopt)]
pub fn vigie_setsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: the kernel hands a valid bpf_sockopt; 4-byte field reads.
    let (level, name) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*so).level)),
            core::ptr::read_volatile(core::ptr::addr_of!((*so).optname)),
        )
    };
    if !((level == SOL_PACKET && name == PACKET_QDISC_BYPASS) || level == SOL_XDP) {
        return 1;
    }
    let Some(e) = current_enrolled() else {
        return 1;
    };
    sock_refuse(
        e,
        Refusal {
            hook: HOOK_SETSOCKOPT,
            reason: REASON_SOCKET_OPTION,
            addr: [0; 16],
            port: level as u16,
            proto: name as u8,
        },
    );
    0
}

/// TCX verdicts: go on with the next program (or the stack), or drop.
const TCX_NEXT: i32 = -1;
const TCX_DROP: i32 = 2;

/// The backstop for frames no cgroup hook sees: a packet (`AF_PACKET`) or other non-IP
/// socket writes whole frames to a device, below the IP stack. Attached (TCX, egress)
/// to the devices of the enrolled pods' network namespaces: a frame whose socket is
/// not an IP socket and belongs to an enrolled cgroup is dropped. Everything else —
/// IP sockets (judged by the cgroup programs), forwarded packets, other pods — goes on.
#[classifier]
pub fn vigie_tc_egress(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the kernel hands a valid __sk_buff; `sk` may be null, checked below.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return TCX_NEXT;
    }
    // SAFETY: non-null socket pointer from the context.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return TCX_NEXT;
    }
    // SAFETY: bpf_sk_fullsock returned a valid full socket; 4-byte field read.
    let family = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*full).family)) };
    if family == AF_INET || family == AF_INET6 {
        return TCX_NEXT;
    }
    // SAFETY: the kernel hands a valid __sk_buff.
    let Some(e) = deepest_enrolled(|l| unsafe { bpf_skb_ancestor_cgroup_id(skb, l as i32) })
    else {
        return TCX_NEXT;
    };
    // SAFETY: valid skb pointer from the kernel.
    let leaf = unsafe { bpf_skb_cgroup_id(skb) };
    report(
        Refusal {
            hook: HOOK_TC_EGRESS,
            reason: REASON_SOCKET_FAMILY,
            addr: [0; 16],
            port: 0,
            proto: family as u8,
        },
        leaf,
        e,
        false,
    );
    TCX_DROP
}

/// The backstop for what the socket hooks did not judge: ICMP (ping sockets), raw
/// sockets, packets whose header is not what the socket hook judged. Of those, only
/// packets that start something are judged: a TCP SYN without ACK, UDP, other
/// protocols; replies on accepted connections (SYN-ACK and later) pass. Whatever the
/// socket, a packet is refused if its header could take it elsewhere than its
/// destination says (IPv4 options, IPv6 routing headers), carries no transport header
/// to judge (a fragment after the first), or sends a loopback destination out of
/// another device.
#[cgroup_skb(egress)]
pub fn vigie_skb_egress(ctx: SkBuffContext) -> i32 {
    let Ok(h) = Header::read(&ctx) else {
        // Unparsable: judged below as "enrolled traffic we cannot read".
        return skb_judge(&ctx, None);
    };
    if let Some(reason) = h.anomaly(&ctx) {
        return skb_refuse(&ctx, &h, reason);
    }
    // Packets of connected TCP and UDP sockets to the destination the connect hook
    // judged (TCP Fast Open goes through it too) pass after one helper call.
    let view = socket_view(&ctx, &h);
    if view == SocketView::Judged {
        return ALLOW;
    }
    // Parse before walking the cgroup ancestry: replies on accepted connections go
    // through without it.
    match h.starts_something(&ctx, view == SocketView::TcpStream) {
        Err(()) => skb_judge(&ctx, None),
        Ok(None) => ALLOW,
        Ok(Some(port)) => skb_judge(&ctx, Some((h.dst, h.proto, port))),
    }
}

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;
/// Extension headers walked before the transport header (more are refused as
/// unparsable: the kernel never sends such chains itself).
const IPV6_MAX_EXT: u32 = 4;

/// The network header of an outgoing packet, read with one helper call (two when it
/// has IPv6 extension headers).
struct Header {
    /// IPv6 form, IPv4 v4-mapped.
    dst: [u8; 16],
    /// As the socket stores it (network-order bytes read as native words).
    d4: u32,
    d6: [u32; 4],
    v4: bool,
    /// Transport protocol.
    proto: u8,
    /// Offset of the transport header.
    l4: usize,
    /// `REASON_*` found while reading the header, 0 for none.
    anomaly: u8,
}

impl Header {
    #[inline(always)]
    fn read(ctx: &SkBuffContext) -> Result<Header, ()> {
        let b: [u8; 20] = ctx.load(0).map_err(|_| ())?;
        match b[0] >> 4 {
            4 => {
                let ihl = usize::from(b[0] & 0x0f) * 4;
                if ihl < 20 {
                    return Err(());
                }
                let frag = u16::from_be_bytes([b[6], b[7]]);
                let anomaly = if ihl > 20 {
                    REASON_IP_OPTIONS
                } else if frag & 0x1fff != 0 {
                    REASON_FRAGMENT
                } else {
                    0
                };
                let dst = [b[16], b[17], b[18], b[19]];
                Ok(Header {
                    dst: v4_mapped(dst),
                    d4: u32::from_ne_bytes(dst),
                    d6: [0; 4],
                    v4: true,
                    proto: b[9],
                    l4: ihl,
                    anomaly,
                })
            }
            6 => {
                let d: [u8; 16] = ctx.load(24).map_err(|_| ())?;
                let mut h = Header {
                    dst: d,
                    d4: 0,
                    d6: [
                        u32::from_ne_bytes([d[0], d[1], d[2], d[3]]),
                        u32::from_ne_bytes([d[4], d[5], d[6], d[7]]),
                        u32::from_ne_bytes([d[8], d[9], d[10], d[11]]),
                        u32::from_ne_bytes([d[12], d[13], d[14], d[15]]),
                    ],
                    v4: false,
                    proto: b[6],
                    l4: 40,
                    anomaly: 0,
                };
                h.walk_extensions(ctx)?;
                Ok(h)
            }
            _ => Err(()),
        }
    }

    /// Follows hop-by-hop and destination options to the transport header; a routing
    /// header or a fragment after the first is an anomaly.
    #[inline(always)]
    fn walk_extensions(&mut self, ctx: &SkBuffContext) -> Result<(), ()> {
        let mut i = 0;
        while i < IPV6_MAX_EXT {
            match self.proto {
                IPV6_ROUTING => {
                    self.anomaly = REASON_ROUTING_HEADER;
                    return Ok(());
                }
                IPV6_FRAGMENT => {
                    let f: [u8; 4] = ctx.load(self.l4).map_err(|_| ())?;
                    if u16::from_be_bytes([f[2], f[3]]) & 0xfff8 != 0 {
                        self.anomaly = REASON_FRAGMENT;
                        return Ok(());
                    }
                    self.proto = f[0];
                    self.l4 += 8;
                }
                IPV6_HOP_BY_HOP | IPV6_DEST_OPTS => {
                    let e: [u8; 2] = ctx.load(self.l4).map_err(|_| ())?;
                    self.proto = e[0];
                    self.l4 += (usize::from(e[1]) + 1) * 8;
                }
                _ => return Ok(()),
            }
            i += 1;
        }
        Err(())
    }

    /// A reason to refuse the packet whatever its destination.
    #[inline(always)]
    fn anomaly(&self, ctx: &SkBuffContext) -> Option<u8> {
        if self.anomaly != 0 {
            return Some(self.anomaly);
        }
        if is_loopback(self.dst) {
            // SAFETY: the kernel hands a valid __sk_buff; 4-byte field read.
            let ifindex = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ctx.skb.skb).ifindex)) };
            if ifindex != LOOPBACK_IFINDEX {
                return Some(REASON_LOOPBACK_OFF_DEVICE);
            }
        }
        None
    }

    /// The destination port of a packet that starts something (0 for protocols
    /// without ports); `None` for one that belongs to an established exchange — only a
    /// TCP stream socket's segments can (a raw socket's TCP segment, whatever its
    /// flags, is judged by its destination).
    #[inline(always)]
    fn starts_something(&self, ctx: &SkBuffContext, tcp_stream: bool) -> Result<Option<u16>, ()> {
        let l4 = self.l4;
        match self.proto {
            PROTO_TCP => {
                let flags: u8 = ctx.load(l4 + 13).map_err(|_| ())?;
                let syn_only = flags & 0x02 != 0 && flags & 0x10 == 0;
                if tcp_stream && !syn_only {
                    return Ok(None);
                }
                Ok(Some(u16::from_be(ctx.load::<u16>(l4 + 2).map_err(|_| ())?)))
            }
            PROTO_UDP => Ok(Some(u16::from_be(ctx.load::<u16>(l4 + 2).map_err(|_| ())?))),
            _ => Ok(Some(0)),
        }
    }
}

/// What the packet's socket says about it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SocketView {
    /// A TCP or UDP socket whose connected destination is the one in the header: the
    /// socket hooks judged it.
    Judged,
    /// A TCP stream socket sending elsewhere than its connected peer (a listener's
    /// SYN-ACK): only its bare SYNs start something.
    TcpStream,
    /// Raw and ICMP sockets, unconnected UDP: everything is judged here.
    Other,
}

#[inline(always)]
fn socket_view(ctx: &SkBuffContext, h: &Header) -> SocketView {
    let skb = ctx.skb.skb;
    // SAFETY: the kernel hands a valid __sk_buff; `sk` may be null, checked below.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return SocketView::Other;
    }
    // SAFETY: non-null socket pointer from the context.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return SocketView::Other;
    }
    // Every field read unconditionally at a constant offset (the verifier refuses
    // loads through a pointer the compiler derived from a branch).
    // SAFETY: bpf_sk_fullsock returned a valid full socket; 4-byte field reads.
    let (ty, proto, d4, d6) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*full).type_)),
            core::ptr::read_volatile(core::ptr::addr_of!((*full).protocol)),
            core::ptr::read_volatile(core::ptr::addr_of!((*full).dst_ip4)),
            [
                core::ptr::read_volatile(core::ptr::addr_of!((*full).dst_ip6[0])),
                core::ptr::read_volatile(core::ptr::addr_of!((*full).dst_ip6[1])),
                core::ptr::read_volatile(core::ptr::addr_of!((*full).dst_ip6[2])),
                core::ptr::read_volatile(core::ptr::addr_of!((*full).dst_ip6[3])),
            ],
        )
    };
    let stream = ty == SOCK_STREAM && proto == u32::from(PROTO_TCP);
    if !stream && !(ty == SOCK_DGRAM && proto == u32::from(PROTO_UDP)) {
        return SocketView::Other;
    }
    let same = if h.v4 {
        h.d4 != 0 && h.d4 == d4
    } else {
        h.d6[0] == d6[0] && h.d6[1] == d6[1] && h.d6[2] == d6[2] && h.d6[3] == d6[3]
    };
    if same {
        SocketView::Judged
    } else if stream {
        SocketView::TcpStream
    } else {
        SocketView::Other
    }
}

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

/// The enrolled cgroup the packet's socket belongs to, if any.
#[inline(always)]
fn skb_enrolled(ctx: &SkBuffContext) -> Option<Enrolled> {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: the kernel hands a valid __sk_buff.
    deepest_enrolled(|l| unsafe { bpf_skb_ancestor_cgroup_id(skb, l as i32) })
}

#[inline(always)]
fn skb_report(ctx: &SkBuffContext, e: Enrolled, r: Refusal) -> i32 {
    // SAFETY: valid skb pointer from the kernel.
    let leaf = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    report(r, leaf, e, false);
    DENY
}

/// Refuses an enrolled cgroup's packet for what its header is, not where it goes.
#[inline(always)]
fn skb_refuse(ctx: &SkBuffContext, h: &Header, reason: u8) -> i32 {
    let Some(e) = skb_enrolled(ctx) else {
        return ALLOW;
    };
    skb_report(
        ctx,
        e,
        Refusal {
            hook: HOOK_SKB_EGRESS,
            reason,
            addr: h.dst,
            port: 0,
            proto: h.proto,
        },
    )
}

#[inline(always)]
fn skb_judge(ctx: &SkBuffContext, packet: Option<([u8; 16], u8, u16)>) -> i32 {
    let Some(e) = skb_enrolled(ctx) else {
        return ALLOW;
    };
    let Some((addr, proto, port)) = packet else {
        // Enrolled traffic that cannot be parsed is not let through.
        return skb_report(
            ctx,
            e,
            Refusal {
                hook: HOOK_SKB_EGRESS,
                reason: REASON_UNPARSABLE,
                addr: [0; 16],
                port: 0,
                proto: 0,
            },
        );
    };
    if permitted(e.policy, addr, proto, port) {
        return ALLOW;
    }
    skb_report(
        ctx,
        e,
        Refusal {
            hook: HOOK_SKB_EGRESS,
            reason: REASON_DESTINATION,
            addr,
            port,
            proto,
        },
    )
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
