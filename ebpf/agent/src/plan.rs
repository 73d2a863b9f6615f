//! What the maps should hold: for each enrolled cgroup, the compiled policy of its
//! role (app containers or sidecar). Pure: no kernel, no file system.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash as _, Hasher as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use vigie_egress_common::PROTO_TCP;
use vigie_egress_common::compile::{CompileError, Entry, Rule, compile, dns_rules};
use vigie_egress_common::validate::egress_rules;
use vigie_proto::effective::effective;
use vigie_proto::v1::{ClientKind, Egress, Identity, PolicyHead};

use crate::pods::PodInfo;

#[derive(Debug, Clone)]
pub struct Settings {
    /// The sidecar's proxy port on loopback.
    pub sidecar_port: u16,
    /// Name of the sidecar container in injected pods.
    pub sidecar_container: String,
    /// Resolvers when the policy names none.
    pub dns: Vec<IpAddr>,
    /// Control-plane addresses the sidecars may reach.
    pub control_plane: Vec<(IpAddr, u16)>,
    /// Where sidecars ask this agent for the original destination of redirected
    /// connections (their rules allow it).
    pub lookup: Vec<(IpAddr, u16)>,
}

/// One policy as the maps hold it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub allow: Vec<Entry>,
    /// Destinations whose TCP connections go to the sidecar instead (app policies).
    pub redirect: Vec<Entry>,
    /// The sidecar port they go to (0: no redirect).
    pub redirect_port: u16,
}

impl Compiled {
    pub fn entries(&self) -> usize {
        self.allow.len() + self.redirect.len()
    }

    /// Allows nothing, redirects nothing: enrolled cgroups reach nothing.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.redirect.is_empty()
    }
}

/// A pod whose cgroups were found.
#[derive(Debug, Clone)]
pub struct ResolvedPod {
    pub info: PodInfo,
    pub pod_cgroup: u64,
    /// (container name, cgroup id).
    pub containers: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    App,
    Sidecar,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Sidecar => "sidecar",
        }
    }
}

/// Who a cgroup is, for events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupName {
    pub namespace: String,
    pub pod: String,
    /// Empty for the pod's own cgroup.
    pub container: String,
    pub role: Role,
}

/// Content hash of a compiled policy: equal policies share trie entries (and a
/// restarted agent recognises what a previous one loaded).
pub type PolicyKey = u64;

#[derive(Debug, Default, Clone)]
pub struct Desired {
    pub enrolled: BTreeMap<u64, PolicyKey>,
    pub policies: HashMap<PolicyKey, Arc<Compiled>>,
    /// Every known cgroup of an enrolled pod (containers included), for events.
    pub names: HashMap<u64, CgroupName>,
}

impl Desired {
    pub fn entries(&self) -> usize {
        self.policies.values().map(|p| p.entries()).sum()
    }
}

/// Host names of pool endpoints, to be resolved before planning.
pub fn endpoint_hosts(heads: &[PolicyHead]) -> Vec<String> {
    let mut hosts: Vec<String> = heads
        .iter()
        .filter_map(|h| h.policy.as_ref())
        .flat_map(|p| &p.pools)
        .flat_map(|pool| &pool.endpoints)
        .filter_map(|e| url::Url::parse(&e.url).ok())
        .filter_map(|u| match u.host()? {
            url::Host::Domain(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

fn loopback(port: u16) -> [Rule; 2] {
    [
        Rule::host(IpAddr::V4(Ipv4Addr::LOCALHOST), port, PROTO_TCP),
        Rule::host(IpAddr::V6(Ipv6Addr::LOCALHOST), port, PROTO_TCP),
    ]
}

fn resolvers(egress: Option<&Egress>, settings: &Settings) -> Vec<IpAddr> {
    let named: Vec<IpAddr> = egress
        .map(|e| {
            e.dns_resolvers
                .iter()
                .filter_map(|r| r.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if named.is_empty() {
        settings.dns.clone()
    } else {
        named
    }
}

/// The rules of a pod.
#[derive(Debug, Default)]
pub struct PodRules {
    pub app: Vec<Rule>,
    pub sidecar: Vec<Rule>,
    /// Redirected to the sidecar (app containers only).
    pub redirect: Vec<Rule>,
}

/// Why a pod's policy cannot be enforced (the pod then fails closed).
#[derive(Debug, thiserror::Error)]
pub enum PodPolicyError {
    #[error("policy {policy:?}: {}", problems.join("; "))]
    Rules {
        policy: String,
        problems: Vec<String>,
    },
    #[error(transparent)]
    Compile(#[from] CompileError),
}

/// The rules of a pod, from its effective policy.
pub fn pod_rules(
    heads: &[PolicyHead],
    pod: &PodInfo,
    settings: &Settings,
    resolved: &HashMap<String, Vec<IpAddr>>,
) -> Result<PodRules, PodPolicyError> {
    let identity = Identity {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        service_account: pod.service_account.clone(),
        labels: pod.labels.clone().into_iter().collect(),
        kind: ClientKind::Sidecar as i32,
        pod_uid: pod.uid.clone(),
        ..Identity::default()
    };
    let policy = effective(heads, &identity).policy.unwrap_or_default();
    let egress = policy.egress.as_ref();
    let dns = dns_rules(&resolvers(egress, settings));
    let mut bad = Vec::new();
    let mut parse = |rules: &[vigie_proto::v1::EgressRule], path: &str| {
        egress_rules(rules, path, |p, reason| bad.push(format!("{p}: {reason}")))
            .unwrap_or_default()
    };
    let (extra_app, extra_sidecar, redirect) = match egress {
        Some(e) => (
            parse(&e.allow, "egress.allow"),
            parse(&e.sidecar_allow, "egress.sidecarAllow"),
            parse(&e.redirect, "egress.redirect"),
        ),
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    if !bad.is_empty() {
        return Err(PodPolicyError::Rules {
            policy: policy.name.clone(),
            problems: bad,
        });
    }

    let mut app: Vec<Rule> = loopback(settings.sidecar_port).into();
    app.extend(dns.iter().copied());
    app.extend(extra_app);

    let mut sidecar = dns;
    for (ip, port) in settings.control_plane.iter().chain(&settings.lookup) {
        sidecar.push(Rule::host(*ip, *port, PROTO_TCP));
    }
    for endpoint in policy.pools.iter().flat_map(|p| &p.endpoints) {
        let Ok(url) = url::Url::parse(&endpoint.url) else {
            continue;
        };
        let Some(port) = url.port_or_known_default() else {
            continue;
        };
        let ips: Vec<IpAddr> = match url.host() {
            Some(url::Host::Ipv4(a)) => vec![IpAddr::V4(a)],
            Some(url::Host::Ipv6(a)) => vec![IpAddr::V6(a)],
            Some(url::Host::Domain(d)) => resolved.get(d).cloned().unwrap_or_default(),
            None => Vec::new(),
        };
        sidecar.extend(ips.into_iter().map(|ip| Rule::host(ip, port, PROTO_TCP)));
    }
    sidecar.extend(extra_sidecar);
    Ok(PodRules {
        app,
        sidecar,
        redirect,
    })
}

pub fn key_of(c: &Compiled) -> PolicyKey {
    let mut h = DefaultHasher::new();
    for (tag, entries) in [(0u8, &c.allow), (1, &c.redirect)] {
        tag.hash(&mut h);
        entries.len().hash(&mut h);
        for e in entries {
            e.addr.hash(&mut h);
            e.prefix_len.hash(&mut h);
            e.allow.count.hash(&mut h);
            for r in e.allow.rules.iter().take(e.allow.count as usize) {
                r.hash(&mut h);
            }
        }
    }
    c.redirect_port.hash(&mut h);
    h.finish()
}

/// The desired map content. A pod whose policy cannot be compiled is reported in
/// the errors and enrolled with the empty policy: it may reach nothing (fail closed).
pub fn plan(
    heads: &[PolicyHead],
    pods: &[ResolvedPod],
    settings: &Settings,
    resolved: &HashMap<String, Vec<IpAddr>>,
) -> (Desired, Vec<String>) {
    let mut d = Desired::default();
    let mut errors = Vec::new();
    let add =
        |d: &mut Desired, rules: &[Rule], redirect: &[Rule]| -> Result<PolicyKey, CompileError> {
            let c = Compiled {
                allow: compile(rules)?,
                redirect: compile(redirect)?,
                redirect_port: if redirect.is_empty() {
                    0
                } else {
                    settings.sidecar_port
                },
            };
            let key = key_of(&c);
            d.policies.entry(key).or_insert_with(|| Arc::new(c));
            Ok(key)
        };
    for pod in pods {
        let name = |container: &str, role| CgroupName {
            namespace: pod.info.namespace.clone(),
            pod: pod.info.name.clone(),
            container: container.to_string(),
            role,
        };
        let compiled = pod_rules(heads, &pod.info, settings, resolved).and_then(|r| {
            Ok((
                add(&mut d, &r.app, &r.redirect)?,
                add(&mut d, &r.sidecar, &[])?,
            ))
        });
        let (app_key, sidecar_key) = match compiled {
            Ok(keys) => keys,
            Err(e) => {
                errors.push(format!("{}/{}: {e}", pod.info.namespace, pod.info.name));
                let nothing = add(&mut d, &[], &[]).unwrap_or_default();
                (nothing, nothing)
            }
        };
        d.enrolled.insert(pod.pod_cgroup, app_key);
        d.names.insert(pod.pod_cgroup, name("", Role::App));
        for (container, cgroup) in &pod.containers {
            if *container == settings.sidecar_container {
                d.enrolled.insert(*cgroup, sidecar_key);
                d.names.insert(*cgroup, name(container, Role::Sidecar));
            } else {
                d.names.insert(*cgroup, name(container, Role::App));
            }
        }
    }
    (d, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigie_egress_common::compile::permits;
    use vigie_egress_common::{PROTO_UDP, v4_mapped};

    fn heads(json: &[&str]) -> Vec<PolicyHead> {
        json.iter()
            .enumerate()
            .map(|(i, j)| {
                let policy: vigie_proto::v1::Policy = serde_json::from_str(j).unwrap();
                PolicyHead {
                    name: policy.name.clone(),
                    revision: i as i64 + 1,
                    policy: Some(policy),
                }
            })
            .collect()
    }

    fn pod(ns: &str, labels: &[(&str, &str)]) -> ResolvedPod {
        ResolvedPod {
            info: PodInfo {
                namespace: ns.into(),
                name: "p1".into(),
                uid: "u1".into(),
                service_account: "default".into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                not_enforceable: None,
                containers: vec![],
            },
            pod_cgroup: 100,
            containers: vec![("vigie-sidecar".into(), 101), ("app".into(), 102)],
        }
    }

    fn settings() -> Settings {
        Settings {
            sidecar_port: 15080,
            sidecar_container: "vigie-sidecar".into(),
            dns: vec!["10.96.0.10".parse().unwrap()],
            control_plane: vec![("10.96.0.20".parse().unwrap(), 50051)],
            lookup: vec![("10.96.0.30".parse().unwrap(), 15095)],
        }
    }

    fn v4(s: &str) -> [u8; 16] {
        v4_mapped(s.parse::<Ipv4Addr>().unwrap().octets())
    }

    const ROUTING: &str = r#"{"name":"routing","pools":[{"name":"gpu","kind":"POOL_KIND_VLLM",
        "endpoints":[{"url":"http://10.0.3.7:8000"},{"url":"https://api.example.test"}],
        "models":[{"name":"m"}]}]}"#;

    #[test]
    fn app_reaches_its_sidecar_and_dns_the_sidecar_its_pools() {
        let h = heads(&[ROUTING]);
        let resolved = HashMap::from([(
            "api.example.test".to_string(),
            vec!["192.0.2.44".parse().unwrap()],
        )]);
        let (d, errors) = plan(&h, &[pod("shop", &[])], &settings(), &resolved);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(d.enrolled.len(), 2);
        let app = &d.policies[&d.enrolled[&100]].allow;
        let sidecar = &d.policies[&d.enrolled[&101]].allow;
        assert!(
            !d.enrolled.contains_key(&102),
            "app containers inherit the pod's policy"
        );
        assert!(permits(app, v4("127.0.0.1"), PROTO_TCP, 15080));
        assert!(permits(
            app,
            std::net::Ipv6Addr::LOCALHOST.octets(),
            PROTO_TCP,
            15080
        ));
        assert!(!permits(app, v4("127.0.0.1"), PROTO_TCP, 15081));
        assert!(!permits(app, v4("127.0.0.2"), PROTO_TCP, 15080));
        assert!(permits(app, v4("10.96.0.10"), PROTO_UDP, 53));
        assert!(!permits(app, v4("10.0.3.7"), PROTO_TCP, 8000));
        assert!(permits(sidecar, v4("10.0.3.7"), PROTO_TCP, 8000));
        assert!(permits(sidecar, v4("192.0.2.44"), PROTO_TCP, 443));
        assert!(permits(sidecar, v4("10.96.0.20"), PROTO_TCP, 50051));
        assert!(
            permits(sidecar, v4("10.96.0.30"), PROTO_TCP, 15095),
            "the agent's lookup"
        );
        assert!(!permits(app, v4("10.96.0.30"), PROTO_TCP, 15095));
        assert_eq!(
            d.policies[&d.enrolled[&100]].redirect_port, 0,
            "nothing to redirect"
        );
        assert!(!permits(sidecar, v4("10.0.3.8"), PROTO_TCP, 8000));
        assert_eq!(d.names[&102].container, "app");
        assert_eq!(d.names[&101].role, Role::Sidecar);
        assert_eq!(endpoint_hosts(&h), vec!["api.example.test".to_string()]);
    }

    #[test]
    fn egress_section_of_the_most_specific_policy_applies() {
        let h = heads(&[
            ROUTING,
            r#"{"name":"db","scope":{"namespace":"shop"},"egress":{
                "allow":[{"cidr":"10.20.0.0/16","ports":"5432"}],
                "dnsResolvers":["10.96.0.53"]}}"#,
            r#"{"name":"chat","scope":{"namespace":"shop","workloadLabels":{"app":"chat"}},
                "egress":{"allow":[{"cidr":"10.30.0.1","protocol":"EGRESS_PROTOCOL_UDP","ports":"9000"}]}}"#,
        ]);
        let (d, _) = plan(&h, &[pod("shop", &[])], &settings(), &HashMap::new());
        let app = &d.policies[&d.enrolled[&100]].allow;
        assert!(permits(app, v4("10.20.5.5"), PROTO_TCP, 5432));
        assert!(permits(app, v4("10.96.0.53"), PROTO_UDP, 53));
        assert!(!permits(app, v4("10.96.0.10"), PROTO_UDP, 53));
        let (d, _) = plan(
            &h,
            &[pod("shop", &[("app", "chat")])],
            &settings(),
            &HashMap::new(),
        );
        let app = &d.policies[&d.enrolled[&100]].allow;
        assert!(!permits(app, v4("10.20.5.5"), PROTO_TCP, 5432));
        assert!(permits(app, v4("10.30.0.1"), PROTO_UDP, 9000));
        let (d, _) = plan(&h, &[pod("other", &[])], &settings(), &HashMap::new());
        let app = &d.policies[&d.enrolled[&100]].allow;
        assert!(!permits(app, v4("10.20.5.5"), PROTO_TCP, 5432));
    }

    #[test]
    fn redirect_rules_go_to_the_app_policy_with_the_sidecar_port() {
        let h = heads(&[
            ROUTING,
            r#"{"name":"r","egress":{"redirect":[{"cidr":"10.0.3.7","ports":"8000"}]}}"#,
        ]);
        let (d, _) = plan(&h, &[pod("shop", &[])], &settings(), &HashMap::new());
        let app = &d.policies[&d.enrolled[&100]];
        assert_eq!(app.redirect_port, 15080);
        assert!(permits(&app.redirect, v4("10.0.3.7"), PROTO_TCP, 8000));
        assert!(
            !permits(&app.allow, v4("10.0.3.7"), PROTO_TCP, 8000),
            "redirected, not allowed"
        );
        let sidecar = &d.policies[&d.enrolled[&101]];
        assert!(sidecar.redirect.is_empty() && sidecar.redirect_port == 0);
        assert!(
            permits(&sidecar.allow, v4("10.0.3.7"), PROTO_TCP, 8000),
            "its pool"
        );
    }

    #[test]
    fn equal_policies_share_entries_and_bad_rules_are_reported() {
        let h = heads(&[ROUTING]);
        let mut second = pod("shop", &[]);
        second.pod_cgroup = 200;
        second.containers = vec![("vigie-sidecar".into(), 201)];
        let (d, _) = plan(
            &h,
            &[pod("shop", &[]), second],
            &settings(),
            &HashMap::new(),
        );
        assert_eq!(d.enrolled.len(), 4);
        assert_eq!(d.policies.len(), 2);
        // A policy the control plane would refuse (it validates) is never loaded.
        let mut bad = heads(&[r#"{"name":"x","egress":{"allow":[{"cidr":"10.0.0.0/8"}]}}"#]);
        if let Some(p) = bad[0].policy.as_mut() {
            p.egress.as_mut().unwrap().allow[0].cidr = "10.0.0.1/8".into();
        }
        let (d, errors) = plan(&bad, &[pod("shop", &[])], &settings(), &HashMap::new());
        assert_eq!(d.enrolled.len(), 2);
        assert_eq!(
            *d.policies[&d.enrolled[&100]],
            Compiled::default(),
            "fails closed"
        );
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("egress.allow[0].cidr"), "{errors:?}");
    }
}
