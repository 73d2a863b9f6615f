//! The policy compiler: rules (CIDR, ports, protocol) → allow-trie entries.
//!
//! An LPM trie answers with the *longest* matching prefix only, so an entry must
//! carry the port rules of every shorter prefix that contains it: with
//! `10.0.0.0/8 tcp/443` and `10.1.0.0/16 tcp/80`, `10.1.2.3:443` finds the /16
//! entry and must still be allowed. Entries are sorted so that a prefix follows the
//! prefixes containing it, and a stack of open ancestors gives the inheritance in
//! O(n log n).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::string::{String, ToString};
use std::vec::Vec;

use ipnet::IpNet;

use crate::{Allow, MAX_PORT_RULES, PROTO_ANY, PROTO_TCP, PROTO_UDP, PortRule, v4_mapped};

/// Largest number of trie entries one compiled policy may use in the maps.
pub const MAX_ENTRIES_PER_POLICY: usize = USER_MAX_ENTRIES + 1_024;
/// What a policy's own rule list may use (checked by the control plane at apply
/// time); the difference is headroom for the rules the agent adds.
pub const USER_MAX_ENTRIES: usize = 16_384;
pub const USER_MAX_PORT_RULES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{0:?} is not an IP address or CIDR (e.g. 10.0.0.0/8, 2001:db8::/32)")]
    Cidr(String),
    #[error("{0:?} has host bits set; write {1}")]
    HostBits(String, String),
    #[error("{0:?} is not a port or port range (e.g. 443, 8000-8100)")]
    Ports(String),
    #[error("port range {0}-{1} is reversed")]
    Reversed(u16, u16),
    #[error("port 0 is not a destination port")]
    PortZero,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error(
        "destination {prefix} needs {needed} port ranges (with those of the prefixes containing it); at most {max} fit"
    )]
    TooManyPortRanges {
        prefix: String,
        needed: usize,
        max: usize,
    },
    #[error("{entries} destination prefixes; at most {max} fit in the maps")]
    TooManyEntries { entries: usize, max: usize },
}

/// One allowed destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// IPv6 network; IPv4 rules are v4-mapped (/96 + length).
    pub addr: [u8; 16],
    pub prefix_len: u8,
    pub port: PortRule,
}

impl Rule {
    /// `cidr`: address or network; `ports`: "", "443" or "8000-8100"; `proto`:
    /// `PROTO_TCP`, `PROTO_UDP` or `PROTO_ANY`.
    pub fn parse(cidr: &str, ports: &str, proto: u8) -> Result<Rule, RuleError> {
        let net = parse_net(cidr)?;
        let (from, to) = parse_ports(ports)?;
        Ok(Rule::new(net, from, to, proto))
    }

    pub fn new(net: IpNet, from: u16, to: u16, proto: u8) -> Rule {
        let (addr, prefix_len) = match net {
            IpNet::V4(n) => (v4_mapped(n.network().octets()), 96 + n.prefix_len()),
            IpNet::V6(n) => (n.network().octets(), n.prefix_len()),
        };
        Rule {
            addr,
            prefix_len,
            port: PortRule {
                proto,
                _pad: 0,
                from,
                to,
            },
        }
    }

    /// A single address and port.
    pub fn host(ip: IpAddr, port: u16, proto: u8) -> Rule {
        let net = match ip {
            IpAddr::V4(a) => IpNet::V4(ipnet::Ipv4Net::from(a)),
            IpAddr::V6(a) => IpNet::V6(ipnet::Ipv6Net::from(a)),
        };
        Rule::new(net, port, port, proto)
    }
}

pub fn parse_net(cidr: &str) -> Result<IpNet, RuleError> {
    let s = cidr.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        if net.network() != net.addr() {
            return Err(RuleError::HostBits(s.to_string(), net.trunc().to_string()));
        }
        return Ok(net);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| RuleError::Cidr(s.to_string()))
}

/// "" → every port.
pub fn parse_ports(ports: &str) -> Result<(u16, u16), RuleError> {
    let s = ports.trim();
    if s.is_empty() {
        return Ok((1, u16::MAX));
    }
    let bad = || RuleError::Ports(s.to_string());
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (
            a.trim().parse::<u16>().map_err(|_| bad())?,
            b.trim().parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let p = s.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if a == 0 || b == 0 {
        return Err(RuleError::PortZero);
    }
    if a > b {
        return Err(RuleError::Reversed(a, b));
    }
    Ok((a, b))
}

/// A destination prefix in IPv6 form: (address, length).
pub type Prefix = ([u8; 16], u8);

/// A trie entry: prefix (IPv6 form) and what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub addr: [u8; 16],
    pub prefix_len: u8,
    pub allow: Allow,
}

/// Port 0 is what sock_addr hooks see for protocols without ports (ICMP from
/// `cgroup_skb`), so "every port" on `PROTO_ANY` must include it.
fn normalise(mut r: PortRule) -> PortRule {
    if r.proto == PROTO_ANY && r.from == 1 && r.to == u16::MAX {
        r.from = 0;
    }
    r
}

/// Overlapping or adjacent ranges of the same protocol merged; ranges inside a
/// `PROTO_ANY` range dropped.
fn merge(mut rules: Vec<PortRule>) -> Vec<PortRule> {
    rules.sort();
    let mut out: Vec<PortRule> = Vec::with_capacity(rules.len());
    for r in rules {
        if let Some(last) = out.last_mut()
            && last.proto == r.proto
            && u32::from(r.from) <= u32::from(last.to) + 1
        {
            last.to = last.to.max(r.to);
            continue;
        }
        out.push(r);
    }
    // A PROTO_ANY range makes TCP/UDP ranges inside it redundant.
    let any: Vec<PortRule> = out
        .iter()
        .filter(|r| r.proto == PROTO_ANY)
        .copied()
        .collect();
    out.retain(|r| r.proto == PROTO_ANY || !any.iter().any(|a| a.from <= r.from && r.to <= a.to));
    out
}

fn contains(parent: &Prefix, child: &Prefix) -> bool {
    parent.1 <= child.1 && prefix_eq(&parent.0, &child.0, parent.1)
}

fn prefix_eq(a: &[u8; 16], b: &[u8; 16], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    if a[..full] != b[..full] {
        return false;
    }
    let rem = bits % 8;
    if rem == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rem);
    (a[full] & mask) == (b[full] & mask)
}

/// Compiles rules into trie entries, each carrying its ancestors' port rules, within
/// what the maps hold (the agent, with its own rules added).
pub fn compile(rules: &[Rule]) -> Result<Vec<Entry>, CompileError> {
    compile_within(rules, MAX_ENTRIES_PER_POLICY, MAX_PORT_RULES)
}

/// The check the control plane applies to a policy's own rule lists: tighter than the
/// maps, so the rules an agent adds always fit.
pub fn check_user_rules(rules: &[Rule]) -> Result<Vec<Entry>, CompileError> {
    compile_within(rules, USER_MAX_ENTRIES, USER_MAX_PORT_RULES)
}

fn compile_within(
    rules: &[Rule],
    max_entries: usize,
    max_ranges: usize,
) -> Result<Vec<Entry>, CompileError> {
    // (addr, len) sorts ancestors before descendants: an ancestor's address is the
    // descendant's truncated, hence ≤, and on equal address the shorter comes first.
    let mut own: BTreeMap<Prefix, Vec<PortRule>> = BTreeMap::new();
    for r in rules {
        own.entry((r.addr, r.prefix_len))
            .or_default()
            .push(normalise(r.port));
    }
    if own.len() > max_entries {
        return Err(CompileError::TooManyEntries {
            entries: own.len(),
            max: max_entries,
        });
    }
    let mut out = Vec::with_capacity(own.len());
    // Open ancestors with their effective (inherited + own) rules.
    let mut stack: Vec<(Prefix, Vec<PortRule>)> = Vec::new();
    for (prefix, mut rules) in own {
        while let Some((top, _)) = stack.last() {
            if contains(top, &prefix) {
                break;
            }
            stack.pop();
        }
        if let Some((_, inherited)) = stack.last() {
            rules.extend_from_slice(inherited);
        }
        let rules = merge(rules);
        if rules.len() > max_ranges {
            return Err(CompileError::TooManyPortRanges {
                prefix: display_prefix(&prefix),
                needed: rules.len(),
                max: max_ranges,
            });
        }
        let mut allow = Allow {
            count: rules.len() as u32,
            ..Allow::default()
        };
        allow.rules[..rules.len()].copy_from_slice(&rules);
        out.push(Entry {
            addr: prefix.0,
            prefix_len: prefix.1,
            allow,
        });
        stack.push((prefix, rules));
    }
    Ok(out)
}

/// For messages: IPv4 prefixes shown as IPv4.
pub fn display_prefix(p: &Prefix) -> String {
    let (a, len) = *p;
    if a[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] && len >= 96 {
        let v4 = std::net::Ipv4Addr::new(a[12], a[13], a[14], a[15]);
        return std::format!("{v4}/{}", len - 96);
    }
    std::format!("{}/{len}", std::net::Ipv6Addr::from(a))
}

/// What a lookup in the compiled entries answers (the eBPF program's logic, for tests
/// and for `vigie-egress check`).
pub fn permits(entries: &[Entry], addr: [u8; 16], proto: u8, port: u16) -> bool {
    entries
        .iter()
        .filter(|e| prefix_eq(&e.addr, &addr, e.prefix_len))
        .max_by_key(|e| e.prefix_len)
        .is_some_and(|e| e.allow.permits(proto, port))
}

/// Loopback, DNS and common building blocks of the baseline policies.
pub fn dns_rules(resolvers: &[IpAddr]) -> Vec<Rule> {
    resolvers
        .iter()
        .flat_map(|r| [Rule::host(*r, 53, PROTO_UDP), Rule::host(*r, 53, PROTO_TCP)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn ip(s: &str) -> [u8; 16] {
        match s.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => v4_mapped(a.octets()),
            IpAddr::V6(a) => a.octets(),
        }
    }

    #[test]
    fn parses_cidrs_and_ports() {
        let r = Rule::parse("10.0.0.0/8", "443", PROTO_TCP).unwrap();
        assert_eq!(r.prefix_len, 104);
        assert_eq!((r.port.from, r.port.to), (443, 443));
        let r = Rule::parse("2001:db8::/32", "8000-8100", PROTO_UDP).unwrap();
        assert_eq!(r.prefix_len, 32);
        assert_eq!((r.port.from, r.port.to), (8000, 8100));
        let r = Rule::parse("192.0.2.7", "", PROTO_ANY).unwrap();
        assert_eq!(r.prefix_len, 128);
        assert_eq!((r.port.from, r.port.to), (1, 65535));
    }

    #[test]
    fn refuses_bad_input() {
        assert_eq!(
            Rule::parse("10.0.0.0/33", "", PROTO_TCP),
            Err(RuleError::Cidr("10.0.0.0/33".into()))
        );
        assert_eq!(
            Rule::parse("10.1.2.3/8", "", PROTO_TCP),
            Err(RuleError::HostBits(
                "10.1.2.3/8".into(),
                "10.0.0.0/8".into()
            ))
        );
        assert_eq!(
            Rule::parse("example.com", "", PROTO_TCP),
            Err(RuleError::Cidr("example.com".into()))
        );
        assert_eq!(
            Rule::parse("10.0.0.0/8", "9000-80", PROTO_TCP),
            Err(RuleError::Reversed(9000, 80))
        );
        assert_eq!(
            Rule::parse("10.0.0.0/8", "http", PROTO_TCP),
            Err(RuleError::Ports("http".into()))
        );
        assert_eq!(
            Rule::parse("10.0.0.0/8", "70000", PROTO_TCP),
            Err(RuleError::Ports("70000".into()))
        );
        assert_eq!(
            Rule::parse("10.0.0.0/8", "0", PROTO_TCP),
            Err(RuleError::PortZero)
        );
    }

    #[test]
    fn longer_prefix_inherits_the_ports_of_those_containing_it() {
        let rules = [
            Rule::parse("10.0.0.0/8", "443", PROTO_TCP).unwrap(),
            Rule::parse("10.1.0.0/16", "80", PROTO_TCP).unwrap(),
            Rule::parse("10.1.2.0/24", "53", PROTO_UDP).unwrap(),
        ];
        let e = compile(&rules).unwrap();
        assert_eq!(e.len(), 3);
        assert!(permits(&e, ip("10.1.2.3"), PROTO_TCP, 443));
        assert!(permits(&e, ip("10.1.2.3"), PROTO_TCP, 80));
        assert!(permits(&e, ip("10.1.2.3"), PROTO_UDP, 53));
        assert!(!permits(&e, ip("10.1.2.3"), PROTO_TCP, 53));
        assert!(permits(&e, ip("10.1.9.9"), PROTO_TCP, 80));
        assert!(!permits(&e, ip("10.1.9.9"), PROTO_UDP, 53));
        assert!(permits(&e, ip("10.200.0.1"), PROTO_TCP, 443));
        assert!(!permits(&e, ip("10.200.0.1"), PROTO_TCP, 80));
        assert!(!permits(&e, ip("11.0.0.1"), PROTO_TCP, 443));
        // Siblings do not inherit from each other.
        let e = compile(&[
            Rule::parse("10.1.0.0/16", "80", PROTO_TCP).unwrap(),
            Rule::parse("10.2.0.0/16", "81", PROTO_TCP).unwrap(),
            Rule::parse("10.2.3.0/24", "82", PROTO_TCP).unwrap(),
        ])
        .unwrap();
        assert!(!permits(&e, ip("10.2.3.4"), PROTO_TCP, 80));
        assert!(permits(&e, ip("10.2.3.4"), PROTO_TCP, 81));
    }

    #[test]
    fn ipv4_rules_match_v4_mapped_ipv6_and_not_plain_ipv6() {
        let e = compile(&[Rule::parse("127.0.0.1", "15001", PROTO_TCP).unwrap()]).unwrap();
        assert!(permits(&e, ip("::ffff:127.0.0.1"), PROTO_TCP, 15001));
        assert!(!permits(&e, ip("::1"), PROTO_TCP, 15001));
        assert!(!permits(&e, ip("127.0.0.2"), PROTO_TCP, 15001));
        assert!(!permits(&e, ip("127.0.0.1"), PROTO_TCP, 15002));
        assert!(!permits(&e, ip("127.0.0.1"), PROTO_UDP, 15001));
    }

    #[test]
    fn merges_ranges_and_counts_after_inheritance() {
        let e = compile(&[
            Rule::parse("10.0.0.0/8", "80-90", PROTO_TCP).unwrap(),
            Rule::parse("10.0.0.0/8", "91-100", PROTO_TCP).unwrap(),
            Rule::parse("10.0.0.0/8", "85", PROTO_TCP).unwrap(),
        ])
        .unwrap();
        assert_eq!(e[0].allow.count, 1);
        assert_eq!(
            (e[0].allow.rules[0].from, e[0].allow.rules[0].to),
            (80, 100)
        );

        let mut rules = vec![];
        for p in 0..5u16 {
            rules.push(Rule::parse("10.0.0.0/8", &(1000 + 10 * p).to_string(), PROTO_TCP).unwrap());
            rules
                .push(Rule::parse("10.1.0.0/16", &(2000 + 10 * p).to_string(), PROTO_TCP).unwrap());
        }
        assert_eq!(
            check_user_rules(&rules),
            Err(CompileError::TooManyPortRanges {
                prefix: "10.1.0.0/16".into(),
                needed: 10,
                max: USER_MAX_PORT_RULES,
            })
        );
        // The maps hold more: what the agent adds to a full user list still fits.
        assert!(compile(&rules).is_ok());
    }

    #[test]
    fn any_protocol_every_port_includes_portless_protocols() {
        let e = compile(&[Rule::parse("192.0.2.0/24", "", PROTO_ANY).unwrap()]).unwrap();
        assert!(permits(&e, ip("192.0.2.1"), crate::PROTO_ICMP, 0));
        let e = compile(&[Rule::parse("192.0.2.0/24", "", PROTO_TCP).unwrap()]).unwrap();
        assert!(!permits(&e, ip("192.0.2.1"), crate::PROTO_ICMP, 0));
    }

    #[test]
    fn ten_thousand_entries_compile_and_more_than_the_maps_hold_are_refused() {
        let rules: Vec<Rule> = (0..10_000u32)
            .map(|i| {
                let a = std::net::Ipv4Addr::from(0x0a00_0000 + i * 4);
                Rule::new(
                    IpNet::V4(ipnet::Ipv4Net::new(a, 30).unwrap()),
                    443,
                    443,
                    PROTO_TCP,
                )
            })
            .collect();
        let e = compile(&rules).unwrap();
        assert_eq!(e.len(), 10_000);
        assert!(permits(&e, ip("10.0.0.6"), PROTO_TCP, 443));
        let too_many: Vec<Rule> = (0..(USER_MAX_ENTRIES as u32 + 1))
            .map(|i| {
                Rule::host(
                    IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
                    443,
                    PROTO_TCP,
                )
            })
            .collect();
        assert!(matches!(
            check_user_rules(&too_many),
            Err(CompileError::TooManyEntries { .. })
        ));
        assert!(compile(&too_many).is_ok(), "headroom for the agent's rules");
    }
}
