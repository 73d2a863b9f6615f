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
    bpf_get_socket_cookie, bpf_sk_fullsock, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
};
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid};
use aya_ebpf::macros::{cgroup_skb, cgroup_sock_addr, map, sock_ops};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf};
use aya_ebpf::programs::{SkBuffContext, SockAddrContext, SockOpsContext};
use aya_log_ebpf::warn;
use vigie_egress_common::{
    Allow, DenyEvent, DestKey, HOOK_CONNECT4, OrigDst, PeerKey, STAT_REDIRECTED, HOOK_CONNECT6, HOOK_SENDMSG4, HOOK_SENDMSG6,
    HOOK_SKB_EGRESS, MAX_CGROUP_LEVELS, POLICY_PREFIX_BITS, PROTO_TCP, PROTO_UDP, STAT_COUNT,
    STAT_DENIED, STAT_EVENTS_LOST, v4_mapped,
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

#[inline(always)]
fn report(ctx_hook: u8, leaf: u64, e: Enrolled, addr: [u8; 16], port: u16, proto: u8, task: bool) {
    count(STAT_DENIED);
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
                addr,
                port,
                proto,
                hook: ctx_hook,
                comm,
                _pad: [0; 4],
            });
            slot.submit(0);
        }
        None => count(STAT_EVENTS_LOST),
    }
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
    // SAFETY: helper without arguments.
    let leaf = unsafe { bpf_get_current_cgroup_id() };
    report(hook, leaf, e, addr, port, proto, true);
    DENY
}

#[inline(always)]
fn sock_verdict(hook: u8, addr: [u8; 16], port: u16, proto: u8) -> i32 {
    match current_enrolled() {
        Some(e) => sock_judge(e, hook, addr, port, proto),
        None => ALLOW,
    }
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
    sock_verdict(HOOK_SENDMSG4, addr, port, PROTO_UDP)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn vigie_sendmsg6(ctx: SockAddrContext) -> i32 {
    let (addr, port, _) = sock_v6(&ctx);
    sock_verdict(HOOK_SENDMSG6, addr, port, PROTO_UDP)
}

/// The backstop for what the socket hooks did not judge: ICMP (ping sockets), raw
/// sockets, source-routed packets. Of those, only packets that start something are
/// judged: a TCP SYN without ACK, UDP, other protocols; replies on accepted
/// connections (SYN-ACK and later) pass.
#[cgroup_skb(egress)]
pub fn vigie_skb_egress(ctx: SkBuffContext) -> i32 {
    // Packets of connected TCP and UDP sockets to the destination the connect hook
    // judged (TCP Fast Open goes through it too) pass after one helper call. What is
    // left is what no socket hook saw: raw sockets, ICMP, unconnected UDP, source-routed
    // packets, packets without a socket.
    if judged_by_socket_hooks(&ctx) {
        return ALLOW;
    }
    // Parse before walking the cgroup ancestry: replies on accepted connections go
    // through without it.
    let Ok(packet) = parse(&ctx) else {
        // Unparsable: judged below as "enrolled traffic we cannot read".
        return skb_judge(&ctx, None);
    };
    match packet {
        None => ALLOW,
        Some(p) => skb_judge(&ctx, Some(p)),
    }
}

/// Whether the socket hooks judged this packet's destination: a TCP or UDP socket
/// whose connected destination is the one in the header. Anything else — raw and
/// ICMP sockets, unconnected UDP, and packets whose header destination differs from
/// the socket's (IPv4 source-route options, IPv6 routing headers) — is judged here.
#[inline(always)]
fn judged_by_socket_hooks(ctx: &SkBuffContext) -> bool {
    let skb = ctx.skb.skb;
    // SAFETY: the kernel hands a valid __sk_buff; `sk` may be null, checked below.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return false;
    }
    // SAFETY: non-null socket pointer from the context.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return false;
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
    let socket_kind = (ty == SOCK_STREAM && proto == u32::from(PROTO_TCP))
        || (ty == SOCK_DGRAM && proto == u32::from(PROTO_UDP));
    if !socket_kind {
        return false;
    }
    let Ok(first) = ctx.load::<u8>(0) else {
        return false;
    };
    match first >> 4 {
        4 => ctx.load::<u32>(16).is_ok_and(|dst| dst != 0 && dst == d4),
        6 => ctx.load::<[u32; 4]>(24).is_ok_and(|dst| {
            dst[0] == d6[0] && dst[1] == d6[1] && dst[2] == d6[2] && dst[3] == d6[3]
        }),
        _ => false,
    }
}

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

/// (destination, protocol, port) of a packet that starts something; `None` for one
/// that belongs to an established exchange.
#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Result<Option<([u8; 16], u8, u16)>, ()> {
    let first: u8 = ctx.load(0).map_err(|_| ())?;
    let (addr, proto, l4) = match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            // A fragment after the first carries no transport header; its datagram
            // was judged by its first fragment.
            let frag: u16 = u16::from_be(ctx.load(6).map_err(|_| ())?);
            if frag & 0x1fff != 0 {
                return Ok(None);
            }
            let proto: u8 = ctx.load(9).map_err(|_| ())?;
            let dst: [u8; 4] = ctx.load(16).map_err(|_| ())?;
            (v4_mapped(dst), proto, ihl)
        }
        6 => {
            let proto: u8 = ctx.load(6).map_err(|_| ())?;
            let dst: [u8; 16] = ctx.load(24).map_err(|_| ())?;
            (dst, proto, 40)
        }
        _ => return Err(()),
    };
    let port = match proto {
        PROTO_TCP => {
            let flags: u8 = ctx.load(l4 + 13).map_err(|_| ())?;
            let syn_only = flags & 0x02 != 0 && flags & 0x10 == 0;
            if !syn_only {
                return Ok(None);
            }
            u16::from_be(ctx.load::<u16>(l4 + 2).map_err(|_| ())?)
        }
        PROTO_UDP => u16::from_be(ctx.load::<u16>(l4 + 2).map_err(|_| ())?),
        _ => 0,
    };
    Ok(Some((addr, proto, port)))
}

#[inline(always)]
fn skb_judge(ctx: &SkBuffContext, packet: Option<([u8; 16], u8, u16)>) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: the kernel hands a valid __sk_buff.
    let Some(e) = deepest_enrolled(|l| unsafe { bpf_skb_ancestor_cgroup_id(skb, l as i32) })
    else {
        return ALLOW;
    };
    let Some((addr, proto, port)) = packet else {
        // Enrolled traffic that cannot be parsed is not let through.
        warn!(ctx, "unparsable egress packet dropped");
        return DENY;
    };
    if permitted(e.policy, addr, proto, port) {
        return ALLOW;
    }
    // SAFETY: valid skb pointer from the kernel.
    let leaf = unsafe { bpf_skb_cgroup_id(skb) };
    report(HOOK_SKB_EGRESS, leaf, e, addr, port, proto, false);
    DENY
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
