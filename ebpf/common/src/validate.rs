//! The egress section of a policy as the kernel maps will hold it: parsed, and checked to
//! fit (validation calls this through `vigie_proto::validate::EgressRules`, so the
//! contract crate does not depend on this one).

use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use vigie_proto::v1;
use vigie_proto::validate::EGRESS_CANARY;

use crate::compile::{Rule, RuleError, check_user_rules, parse_net, parse_ports, permits};
use crate::{PROTO_ANY, PROTO_TCP, PROTO_UDP, v4_mapped};

/// What control plane, sidecar and agent pass to `vigie_proto::validate::validate`.
pub static EGRESS_RULES: Checker = Checker;

/// Judges egress rules with the compiler the agent loads them with.
#[derive(Debug, Clone, Copy)]
pub struct Checker;

impl vigie_proto::validate::EgressRules for Checker {
    fn check(&self, e: &v1::Egress, report: &mut dyn FnMut(String, String)) {
        // The maps hold a bounded number of prefixes and port ranges per prefix: a policy
        // that does not fit is refused here, never loaded in part. The user's lists are
        // held to tighter limits than the maps, leaving room for the rules the agent adds
        // (loopback, DNS, control plane, pool endpoints).
        for (field, rules) in [
            ("egress.allow", &e.allow),
            ("egress.sidecarAllow", &e.sidecar_allow),
            ("egress.redirect", &e.redirect),
        ] {
            let Some(parsed) = egress_rules(rules, field, &mut *report) else {
                continue;
            };
            if field == "egress.redirect" {
                for (i, rule) in parsed.iter().enumerate() {
                    if rule.port.proto != PROTO_TCP {
                        report(
                            format!("{field}[{i}].protocol"),
                            "only TCP connections can be redirected to the sidecar".into(),
                        );
                    }
                }
            }
            match check_user_rules(&parsed) {
                Err(err) => report(field.into(), err.to_string()),
                // Sidecars prove their pod is enforced by seeing this refused.
                Ok(entries)
                    if field == "egress.sidecarAllow"
                        && permits(
                            &entries,
                            v4_mapped(EGRESS_CANARY.0),
                            PROTO_TCP,
                            EGRESS_CANARY.1,
                        ) =>
                {
                    report(
                        field.into(),
                        "must not allow 192.0.2.1:9 (TEST-NET-1): sidecars check that their pod is enforced by seeing it refused".into(),
                    );
                }
                Ok(_) => {}
            }
        }
    }
}

/// Protocol number of an egress rule (unspecified: TCP).
pub fn egress_protocol(p: i32) -> Option<u8> {
    use vigie_proto::v1::EgressProtocol;
    match EgressProtocol::try_from(p).ok()? {
        EgressProtocol::Unspecified | EgressProtocol::Tcp => Some(PROTO_TCP),
        EgressProtocol::Udp => Some(PROTO_UDP),
        EgressProtocol::Any => Some(PROTO_ANY),
    }
}

/// Parses egress rules, reporting each bad field; `None` if any was bad.
pub fn egress_rules(
    rules: &[v1::EgressRule],
    path: &str,
    mut bad: impl FnMut(String, String),
) -> Option<Vec<Rule>> {
    let mut out = Vec::with_capacity(rules.len());
    let mut ok = true;
    for (i, rule) in rules.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let net = parse_net(&rule.cidr).map_err(|e| bad(format!("{p}.cidr"), e.to_string()));
        let ports = parse_ports(&rule.ports).map_err(|e: RuleError| {
            bad(format!("{p}.ports"), e.to_string());
        });
        let proto = egress_protocol(rule.protocol);
        if proto.is_none() {
            bad(format!("{p}.protocol"), "unknown protocol".into());
        }
        match (net, ports, proto) {
            (Ok(net), Ok((from, to)), Some(proto)) => out.push(Rule::new(net, from, to, proto)),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}
