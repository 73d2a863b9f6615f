//! Policy validation: every problem, each with the field path of the canonical JSON
//! document and a reason a person understands.
//!
//! Shared by the control plane (at apply time) and the sidecar (at load time), so a
//! policy the control plane accepts is one a sidecar can load. Each section validates
//! itself (`scope`, `pools`, `routes`, …): later sections (DLP, budgets, egress) add a
//! function to [`validate`] without touching the others.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::v1::{
    Balancing, BudgetFailMode, Hosting, Policy, Pool, PoolKind, Route, Scope, SensitivityLevel,
    credentials,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// All violations of a policy, displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy:\n{}", .0.iter().map(|v| format!("  {v}")).collect::<Vec<_>>().join("\n"))]
pub struct Violations(pub Vec<Violation>);

#[derive(Default)]
struct Report(Vec<Violation>);

impl Report {
    fn add(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Violation {
            path: path.into(),
            reason: reason.into(),
        });
    }
}

/// Validates a policy; `Ok` means a sidecar can load it. `egress` judges the egress
/// section's rules (`vigie_egress_common::validate::EGRESS_RULES`).
pub fn validate(policy: &Policy, egress: &dyn EgressRules) -> Result<(), Violations> {
    // Sizes first: past a limit, nothing else is looked at (no cost proportional to
    // what an attacker sends, no error list as long as the request).
    validate_limits(policy)?;
    let mut r = Report::default();
    validate_name(&mut r, "name", &policy.name);
    if let Some(scope) = &policy.scope {
        validate_scope(&mut r, scope);
    }
    // A policy may carry only some sections (e.g. a cluster-wide DLP baseline).
    if policy.pools.is_empty()
        && policy.dlp.is_none()
        && policy.budgets.is_none()
        && policy.egress.is_none()
        && policy.telemetry.is_none()
    {
        r.add(
            "pools",
            "at least one pool is required (or another section, such as dlp)",
        );
    }
    validate_pools(&mut r, &policy.pools);
    validate_routes(&mut r, policy);
    if let Some(b) = &policy.budgets {
        validate_budgets(&mut r, b);
    }
    if let Some(e) = &policy.egress {
        validate_egress(&mut r, e, egress);
    }
    if let Some(t) = &policy.telemetry {
        validate_telemetry(&mut r, t);
    }
    if r.0.is_empty() {
        Ok(())
    } else {
        Err(Violations(r.0))
    }
}

/// The most of everything a policy may hold (docs/policy-guide.md, "Limits"). Each is
/// far above what a real policy needs and keeps validation, compilation and the
/// sidecars' memory bounded; a policy past one is refused, never truncated.
pub mod limits {
    /// Canonical protobuf size of one policy.
    pub const POLICY_BYTES: usize = 1024 * 1024;
    pub const POOLS: usize = 256;
    pub const ENDPOINTS_PER_POOL: usize = 64;
    pub const MODELS_PER_POOL: usize = 256;
    pub const ALIASES_PER_MODEL: usize = 64;
    pub const ROUTES: usize = 512;
    pub const POOLS_PER_ROUTE: usize = 64;
    pub const MATCH_ENTRIES: usize = 64;
    pub const SCOPE_LABELS: usize = 64;
    pub const BUDGETS: usize = 256;
    pub const DLP_RULES: usize = 256;
    pub const CUSTOM_DETECTORS: usize = 64;
    pub const KEYWORDS_PER_DETECTOR: usize = 1000;
    pub const KEYWORD_BYTES: usize = 200;
    pub const REGEX_BYTES: usize = 2048;
    pub const CONTEXT_WORDS: usize = 64;
    pub const DNS_RESOLVERS: usize = 16;
    /// Problems listed in one refusal; past it, the count of the others.
    pub const REPORTED_VIOLATIONS: usize = 100;
}

struct Limit<'a> {
    r: &'a mut Report,
}

impl Limit<'_> {
    fn count(&mut self, path: &str, n: usize, max: usize) {
        if n > max {
            self.r
                .add(path, format!("{n} entries; at most {max} allowed"));
        }
    }

    fn bytes(&mut self, path: impl FnOnce() -> String, s: &str, max: usize) {
        if s.len() > max {
            self.r
                .add(path(), format!("{} bytes; at most {max} allowed", s.len()));
        }
    }
}

/// Counts and sizes only, before any other check. Stops at the first few problems.
pub fn validate_limits(policy: &Policy) -> Result<(), Violations> {
    use limits as L;
    use prost::Message as _;
    let mut r = Report::default();
    let size = policy.encoded_len();
    if size > L::POLICY_BYTES {
        r.add(
            "",
            format!(
                "policy is {size} bytes; at most {} allowed",
                L::POLICY_BYTES
            ),
        );
        return Err(Violations(r.0));
    }
    let mut l = Limit { r: &mut r };
    if let Some(s) = &policy.scope {
        l.count(
            "scope.workloadLabels",
            s.workload_labels.len(),
            L::SCOPE_LABELS,
        );
    }
    l.count("pools", policy.pools.len(), L::POOLS);
    for (i, p) in policy.pools.iter().enumerate().take(L::POOLS) {
        l.count(
            &format!("pools[{i}].endpoints"),
            p.endpoints.len(),
            L::ENDPOINTS_PER_POOL,
        );
        l.count(
            &format!("pools[{i}].models"),
            p.models.len(),
            L::MODELS_PER_POOL,
        );
        for (j, m) in p.models.iter().enumerate().take(L::MODELS_PER_POOL) {
            l.count(
                &format!("pools[{i}].models[{j}].aliases"),
                m.aliases.len(),
                L::ALIASES_PER_MODEL,
            );
        }
    }
    l.count("routes", policy.routes.len(), L::ROUTES);
    for (i, rt) in policy.routes.iter().enumerate().take(L::ROUTES) {
        l.count(
            &format!("routes[{i}].pools"),
            rt.pools.len(),
            L::POOLS_PER_ROUTE,
        );
        l.count(
            &format!("routes[{i}].candidates"),
            rt.candidates.len(),
            L::POOLS_PER_ROUTE,
        );
        if let Some(m) = &rt.r#match {
            let n = m.namespaces.len() + m.workload_labels.len() + m.headers.len();
            l.count(&format!("routes[{i}].match"), n, L::MATCH_ENTRIES);
        }
    }
    if let Some(b) = &policy.budgets {
        l.count("budgets.budgets", b.budgets.len(), L::BUDGETS);
    }
    if let Some(d) = &policy.dlp {
        l.count("dlp.rules", d.rules.len(), L::DLP_RULES);
        l.count(
            "dlp.customDetectors",
            d.custom_detectors.len(),
            L::CUSTOM_DETECTORS,
        );
        for (i, c) in d
            .custom_detectors
            .iter()
            .enumerate()
            .take(L::CUSTOM_DETECTORS)
        {
            let path = format!("dlp.customDetectors[{i}]");
            l.count(
                &format!("{path}.context"),
                c.context.len(),
                L::CONTEXT_WORDS,
            );
            match &c.kind {
                Some(crate::v1::custom_detector::Kind::Regex(re)) => {
                    l.bytes(|| format!("{path}.regex"), re, L::REGEX_BYTES);
                }
                Some(crate::v1::custom_detector::Kind::Keywords(k)) => {
                    l.count(
                        &format!("{path}.keywords.words"),
                        k.words.len(),
                        L::KEYWORDS_PER_DETECTOR,
                    );
                    if let Some((j, w)) = k
                        .words
                        .iter()
                        .enumerate()
                        .find(|(_, w)| w.len() > L::KEYWORD_BYTES)
                    {
                        l.bytes(
                            || format!("{path}.keywords.words[{j}]"),
                            w,
                            L::KEYWORD_BYTES,
                        );
                    }
                }
                None => {}
            }
        }
    }
    if let Some(e) = &policy.egress {
        // Rule lists are bounded by the egress section's own check (what fits in the
        // kernel maps), within the policy's size.
        l.count(
            "egress.dnsResolvers",
            e.dns_resolvers.len(),
            L::DNS_RESOLVERS,
        );
    }
    if r.0.is_empty() {
        Ok(())
    } else {
        r.0.truncate(L::REPORTED_VIOLATIONS);
        Err(Violations(r.0))
    }
}

fn validate_cost(r: &mut Report, p: &str, c: &crate::v1::PoolCost) {
    if c.currency.len() != 3 || !c.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        r.add(
            format!("{p}.currency"),
            "must be an ISO 4217 code such as EUR",
        );
    }
    for (field, v) in [
        ("inputPer1k", c.input_per_1k),
        ("outputPer1k", c.output_per_1k),
        ("gpuSecondsPer1k", c.gpu_seconds_per_1k),
    ] {
        if !v.is_finite() || v < 0.0 {
            r.add(format!("{p}.{field}"), "must be a number ≥ 0");
        }
    }
}

/// Longest fixed budget window: a calendar month covers longer needs.
const MAX_BUDGET_WINDOW_S: i64 = 31 * 86_400;

/// The address sidecars connect to to check that their pod's egress is enforced
/// (refused with EPERM when it is); no policy may allow it to sidecars.
pub const EGRESS_CANARY: ([u8; 4], u16) = ([192, 0, 2, 1], 9);

/// The egress section's rules are compiled into kernel maps by `vigie-egress-common`,
/// which also judges them (syntax, whether they fit the maps, the canary): validation
/// asks it through this trait, so the contract crate depends on nothing of Vigie's.
pub trait EgressRules {
    /// Reports each problem of the section's rule lists as (field path, reason).
    fn check(&self, egress: &crate::v1::Egress, report: &mut dyn FnMut(String, String));
}

fn validate_egress(r: &mut Report, e: &crate::v1::Egress, rules: &dyn EgressRules) {
    rules.check(e, &mut |path, reason| r.add(path, reason));
    for (i, ip) in e.dns_resolvers.iter().enumerate() {
        if ip.trim().parse::<std::net::IpAddr>().is_err() {
            r.add(
                format!("egress.dnsResolvers[{i}]"),
                format!("{ip:?} is not an IP address"),
            );
        }
    }
}

/// User attribute modes of the telemetry section.
pub const USER_ATTRIBUTE_MODES: &[&str] = &["hashed", "plain", "omitted"];

fn validate_telemetry(r: &mut Report, t: &crate::v1::Telemetry) {
    if !t.otlp_endpoint.is_empty() {
        match url::Url::parse(&t.otlp_endpoint) {
            Err(_) => r.add("telemetry.otlpEndpoint", "not a URL"),
            Ok(u) => {
                if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                    r.add(
                        "telemetry.otlpEndpoint",
                        "must be an http:// or https:// URL with a host",
                    );
                } else if !u.username().is_empty() || u.password().is_some() {
                    // Collector credentials are secrets: OTEL_EXPORTER_OTLP_HEADERS, not policy.
                    r.add(
                        "telemetry.otlpEndpoint",
                        "must not carry credentials (use OTEL_EXPORTER_OTLP_HEADERS in the pod)",
                    );
                } else if u.scheme() == "https" && t.otlp_protocol == "http/protobuf" {
                    r.add(
                        "telemetry.otlpEndpoint",
                        "https is supported with otlpProtocol grpc only",
                    );
                }
            }
        }
    }
    if !matches!(t.otlp_protocol.as_str(), "" | "grpc" | "http/protobuf") {
        r.add("telemetry.otlpProtocol", "must be grpc or http/protobuf");
    } else if !t.otlp_protocol.is_empty() && t.otlp_endpoint.is_empty() {
        // The environment's endpoint is built for the environment's protocol.
        r.add("telemetry.otlpProtocol", "only with otlpEndpoint");
    }
    if let Some(ratio) = t.trace_sample_ratio
        && !(0.0..=1.0).contains(&ratio)
    {
        r.add("telemetry.traceSampleRatio", "must be between 0 and 1");
    }
    if !t.user_attribute.is_empty() && !USER_ATTRIBUTE_MODES.contains(&t.user_attribute.as_str()) {
        r.add(
            "telemetry.userAttribute",
            "must be hashed, plain or omitted",
        );
    }
}

fn validate_budgets(r: &mut Report, b: &crate::v1::Budgets) {
    use crate::v1::{BudgetKey, BudgetUnit, BudgetWindow};
    if BudgetFailMode::try_from(b.fail_mode).is_err() {
        r.add("budgets.failMode", "unknown fail mode");
    }
    if b.default_max_tokens > 10_000_000 {
        r.add("budgets.defaultMaxTokens", "must be at most 10000000");
    }
    let mut names = std::collections::HashSet::new();
    for (i, budget) in b.budgets.iter().enumerate() {
        let p = format!("budgets.budgets[{i}]");
        validate_name(r, &format!("{p}.name"), &budget.name);
        if !names.insert(budget.name.as_str()) {
            r.add(
                format!("{p}.name"),
                format!("{:?} is used twice", budget.name),
            );
        }
        let unit = BudgetUnit::try_from(budget.unit).unwrap_or(BudgetUnit::Unspecified);
        if unit == BudgetUnit::Unspecified {
            r.add(format!("{p}.unit"), "required: tokens, cost or requests");
        }
        if !budget.limit.is_finite() || budget.limit <= 0.0 {
            r.add(format!("{p}.limit"), "must be a positive number");
        }
        let iso_4217 =
            budget.currency.len() == 3 && budget.currency.bytes().all(|c| c.is_ascii_uppercase());
        match unit {
            BudgetUnit::Cost if !iso_4217 => {
                r.add(
                    format!("{p}.currency"),
                    "an ISO 4217 code (e.g. EUR) is required for a cost budget",
                );
            }
            BudgetUnit::Cost => {}
            _ if !budget.currency.is_empty() => {
                r.add(format!("{p}.currency"), "only for cost budgets");
            }
            _ => {}
        }
        let window = BudgetWindow::try_from(budget.window).unwrap_or(BudgetWindow::Unspecified);
        match (&budget.window_duration, window) {
            (None, BudgetWindow::Unspecified) => {
                r.add(
                    format!("{p}.window"),
                    "required: minute, hour, day, month, or windowDuration",
                );
            }
            (Some(_), w) if w != BudgetWindow::Unspecified => {
                r.add(
                    format!("{p}.windowDuration"),
                    "set window or windowDuration, not both",
                );
            }
            (Some(d), _) if d.seconds < 1 || d.nanos != 0 || d.seconds > MAX_BUDGET_WINDOW_S => {
                r.add(
                    format!("{p}.windowDuration"),
                    "whole seconds between 1s and 31 days",
                );
            }
            _ => {}
        }
        let mut seen = std::collections::HashSet::new();
        for (j, k) in budget.per.iter().enumerate() {
            if BudgetKey::try_from(*k).unwrap_or(BudgetKey::Unspecified) == BudgetKey::Unspecified {
                r.add(
                    format!("{p}.per[{j}]"),
                    "namespace, workload, user or model",
                );
            } else if !seen.insert(*k) {
                r.add(format!("{p}.per[{j}]"), "listed twice");
            }
        }
    }
}

fn validate_name(r: &mut Report, path: &str, name: &str) {
    if name.is_empty() {
        r.add(path, "must not be empty");
    } else if name.len() > 63 {
        r.add(path, "must be at most 63 characters");
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || name.starts_with('-')
        || name.ends_with('-')
    {
        r.add(
            path,
            format!("{name:?} must be lower-case letters, digits and '-' (DNS label)"),
        );
    }
}

/// Kubernetes rules, so a scope that can never match a real pod is caught at apply time.
fn validate_scope(r: &mut Report, scope: &Scope) {
    if !scope.namespace.is_empty() {
        validate_name(r, "scope.namespace", &scope.namespace);
    }
    if !scope.service_account.is_empty() && !is_dns_subdomain(&scope.service_account) {
        r.add(
            "scope.serviceAccount",
            format!(
                "{:?} is not a valid service account name (DNS subdomain)",
                scope.service_account
            ),
        );
    }
    let mut keys: Vec<_> = scope.workload_labels.iter().collect();
    keys.sort();
    for (k, v) in keys {
        let path = format!("scope.workloadLabels[{k:?}]");
        if !is_label_key(k) {
            r.add(
                &path,
                "label key must be [prefix/]name: name up to 63 alphanumerics, '-', '_', '.'",
            );
        }
        if !is_label_value(v) {
            r.add(
                path,
                "label value must be up to 63 alphanumerics, '-', '_', '.', starting and ending with an alphanumeric",
            );
        }
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

fn validate_pools(r: &mut Report, pools: &[Pool]) {
    let mut seen = HashSet::new();
    for (i, pool) in pools.iter().enumerate() {
        let p = format!("pools[{i}]");
        validate_name(r, &format!("{p}.name"), &pool.name);
        if !pool.name.is_empty() && !seen.insert(pool.name.as_str()) {
            r.add(
                format!("{p}.name"),
                format!("duplicate pool name {:?}", pool.name),
            );
        }
        match PoolKind::try_from(pool.kind) {
            Ok(PoolKind::Unspecified) => r.add(
                format!("{p}.kind"),
                "must be set (POOL_KIND_VLLM, POOL_KIND_OPENAI, …)",
            ),
            Err(_) => r.add(
                format!("{p}.kind"),
                format!("unknown pool kind {}", pool.kind),
            ),
            Ok(_) => {}
        }
        if pool.endpoints.is_empty() {
            r.add(
                format!("{p}.endpoints"),
                "at least one endpoint is required",
            );
        }
        // A pool outside the cluster gets the provider key: never in clear over the
        // network (loopback stays allowed: a local egress proxy, a test double).
        // A key goes in clear only to a host inside the cluster, whatever the hosting
        // says (an OpenAI-compatible provider declared on-prem is still the Internet).
        let outside = !matches!(hosting_of(pool), Hosting::OnPrem);
        let keyed = pool.credentials.is_some();
        for (j, ep) in pool.endpoints.iter().enumerate() {
            match check_endpoint_url(&ep.url) {
                Err(reason) => r.add(format!("{p}.endpoints[{j}].url"), reason.to_string()),
                Ok(u) if outside && u.scheme() == "http" && !is_loopback(&u) => r.add(
                    format!("{p}.endpoints[{j}].url"),
                    "must be https:// for a pool hosted outside the cluster",
                ),
                Ok(u) if keyed && u.scheme() == "http" && !is_in_cluster(&u) => r.add(
                    format!("{p}.endpoints[{j}].url"),
                    "must be https:// for a pool with credentials, unless its host is in the cluster (loopback, a private address, a .svc or .cluster.local name)",
                ),
                Ok(_) => {}
            }
        }
        if pool.models.is_empty() {
            r.add(format!("{p}.models"), "at least one model is required");
        }
        let mut names = HashSet::new();
        for (j, m) in pool.models.iter().enumerate() {
            if m.name.is_empty() {
                r.add(format!("{p}.models[{j}].name"), "must not be empty");
            }
            for (k, alias) in std::iter::once(&m.name).chain(&m.aliases).enumerate() {
                if alias.is_empty() {
                    continue;
                }
                if !names.insert(alias.as_str()) {
                    let path = if k == 0 {
                        format!("{p}.models[{j}].name")
                    } else {
                        format!("{p}.models[{j}].aliases[{}]", k - 1)
                    };
                    r.add(
                        path,
                        format!("model name {alias:?} is already used in this pool"),
                    );
                }
            }
        }
        if let Some(c) = &pool.credentials {
            match &c.source {
                None => r.add(format!("{p}.credentials"), "set either env or file"),
                // The sidecar reads VIGIE_CREDENTIAL_<env>, and files under its
                // credentials directory only (sidecar/src/policy/credentials.rs).
                Some(credentials::Source::Env(v)) => {
                    if v.is_empty()
                        || v.len() > 128
                        || !v
                            .bytes()
                            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                    {
                        r.add(
                            format!("{p}.credentials.env"),
                            "1 to 128 upper-case letters, digits or '_' (the sidecar reads VIGIE_CREDENTIAL_<env>)",
                        )
                    }
                }
                Some(credentials::Source::File(v)) => {
                    if v.is_empty()
                        || v.len() > 512
                        || v.contains('\0')
                        || v.split('/').any(|part| part == "..")
                    {
                        r.add(
                            format!("{p}.credentials.file"),
                            "a path of at most 512 bytes under the sidecar's credentials directory, without '..'",
                        )
                    }
                }
            }
        }
        if Hosting::try_from(pool.hosting).is_err() {
            r.add(
                format!("{p}.hosting"),
                format!("unknown hosting {}", pool.hosting),
            );
        }
        if SensitivityLevel::try_from(pool.clearance).is_err() {
            r.add(
                format!("{p}.clearance"),
                format!("unknown level {}", pool.clearance),
            );
        }
        if Balancing::try_from(pool.balancing).is_err() {
            r.add(
                format!("{p}.balancing"),
                format!("unknown balancing {}", pool.balancing),
            );
        }
        if let Some(c) = &pool.cost {
            validate_cost(r, &format!("{p}.cost"), c);
        }
        for (j, m) in pool.models.iter().enumerate() {
            if let Some(c) = &m.cost {
                validate_cost(r, &format!("{p}.models[{j}].cost"), c);
            }
        }
        if let Some(d) = &pool.probe_interval
            && (d.seconds < 0 || d.nanos < 0)
        {
            r.add(format!("{p}.probeInterval"), "must not be negative");
        }
        if let Some(t) = &pool.timeouts {
            for (field, d) in [
                ("connect", &t.connect),
                ("firstByte", &t.first_byte),
                ("idle", &t.idle),
            ] {
                if let Some(d) = d
                    && (d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0))
                {
                    r.add(format!("{p}.timeouts.{field}"), "must be positive");
                }
            }
        }
    }
}

/// Why an endpoint URL is refused, phrased for the policy author.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointUrlError {
    #[error("must not be empty")]
    Empty,
    #[error("not a valid URL ({0})")]
    Invalid(url::ParseError),
    #[error("scheme must be http or https")]
    Scheme,
    #[error("host is missing")]
    NoHost,
    #[error("must not carry credentials; use the pool's credentials")]
    Credentials,
    #[error("must not have a query or fragment")]
    QueryOrFragment,
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Loopback, a private address, a single-label, `.svc` or `.cluster.local` name.
pub fn is_in_cluster(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback() || a.is_private(),
        Some(url::Host::Ipv6(a)) => a.is_loopback() || a.is_unique_local(),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost"
                || !d.contains('.')
                || d.ends_with(".svc")
                || d.ends_with(".cluster.local")
        }
        None => false,
    }
}

/// Checks an endpoint URL.
pub fn check_endpoint_url(raw: &str) -> Result<url::Url, EndpointUrlError> {
    if raw.is_empty() {
        return Err(EndpointUrlError::Empty);
    }
    let u = url::Url::parse(raw).map_err(EndpointUrlError::Invalid)?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(EndpointUrlError::Scheme);
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(EndpointUrlError::NoHost);
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(EndpointUrlError::Credentials);
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(EndpointUrlError::QueryOrFragment);
    }
    Ok(u)
}

fn validate_routes(r: &mut Report, policy: &Policy) {
    let pools: HashMap<&str, &Pool> = policy.pools.iter().map(|p| (p.name.as_str(), p)).collect();
    // Models that already have a route without conditions: later routes never apply.
    let mut unconditional = HashSet::new();
    for (i, route) in policy.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if route.model.is_empty() {
            r.add(format!("{p}.model"), "must not be empty");
        } else if unconditional.contains(route.model.as_str()) {
            r.add(
                format!("{p}.model"),
                format!(
                    "an earlier route for model {:?} has no conditions: this one would never be used",
                    route.model
                ),
            );
        } else if route.r#match.as_ref().is_none_or(match_is_empty) {
            unconditional.insert(route.model.as_str());
        }
        let named: Vec<(String, &str)> = if !route.pools.is_empty() {
            if !route.candidates.is_empty() {
                r.add(
                    format!("{p}.candidates"),
                    "set pools or candidates, not both",
                );
            }
            route
                .pools
                .iter()
                .enumerate()
                .map(|(j, n)| (format!("{p}.pools[{j}]"), n.as_str()))
                .collect()
        } else {
            route
                .candidates
                .iter()
                .enumerate()
                .map(|(j, c)| (format!("{p}.candidates[{j}].pool"), c.pool.as_str()))
                .collect()
        };
        if named.is_empty() {
            r.add(
                format!("{p}.pools"),
                "at least one pool is required (pools or candidates)",
            );
        }
        let mut in_route = HashSet::new();
        for (path, name) in named {
            if !in_route.insert(name) {
                r.add(path, format!("pool {name:?} is listed twice"));
                continue;
            }
            match pools.get(name) {
                None => r.add(path, format!("unknown pool {name:?}")),
                Some(pool) if !route.model.is_empty() && !serves(pool, &route.model) => r.add(
                    path,
                    format!("pool {name:?} does not serve model {:?} (add it to the pool's models or aliases)", route.model),
                ),
                Some(_) => {}
            }
        }
        for (j, c) in route.candidates.iter().enumerate() {
            if c.weight == Some(0) {
                r.add(
                    format!("{p}.candidates[{j}].weight"),
                    "must not be 0 (leave it out for 1)",
                );
            }
        }
        if !route.fallback_model.is_empty() {
            let served = policy
                .routes
                .iter()
                .any(|x| x.model == route.fallback_model)
                || policy
                    .pools
                    .iter()
                    .any(|x| serves(x, &route.fallback_model));
            if route.fallback_model == route.model {
                r.add(
                    format!("{p}.fallbackModel"),
                    "a route cannot fall back to itself",
                );
            } else if !served {
                r.add(
                    format!("{p}.fallbackModel"),
                    format!("no pool or route serves model {:?}", route.fallback_model),
                );
            } else if let Some(cycle) = fallback_cycle(&policy.routes, route) {
                r.add(
                    format!("{p}.fallbackModel"),
                    format!("fallback chain loops: {}", cycle.join(" → ")),
                );
            }
        }
        if let Some(m) = &route.r#match {
            validate_match(r, &format!("{p}.match"), m);
        }
    }
}

fn match_is_empty(m: &crate::v1::RouteMatch) -> bool {
    m.min_sensitivity == 0
        && m.namespaces.is_empty()
        && m.workload_labels.is_empty()
        && m.headers.is_empty()
}

fn validate_match(r: &mut Report, p: &str, m: &crate::v1::RouteMatch) {
    if SensitivityLevel::try_from(m.min_sensitivity).is_err() {
        r.add(
            format!("{p}.minSensitivity"),
            format!("unknown level {}", m.min_sensitivity),
        );
    }
    for (i, ns) in m.namespaces.iter().enumerate() {
        validate_name(r, &format!("{p}.namespaces[{i}]"), ns);
    }
    let mut labels: Vec<_> = m.workload_labels.iter().collect();
    labels.sort();
    for (k, v) in labels {
        if !is_label_key(k) || !is_label_value(v) {
            r.add(
                format!("{p}.workloadLabels[{k:?}]"),
                "not a valid Kubernetes label",
            );
        }
    }
    let mut headers: Vec<_> = m.headers.keys().collect();
    headers.sort();
    for h in headers {
        let token = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !token {
            r.add(
                format!("{p}.headers[{h:?}]"),
                "header names are lower-case letters, digits and '-'",
            );
        }
    }
}

/// The loop a route's fallback chain runs into, if any (models in order). One
/// depth-first walk over the model → fallback models graph, each model explored once.
fn fallback_cycle(routes: &[Route], start: &Route) -> Option<Vec<String>> {
    let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in routes.iter().filter(|r| !r.fallback_model.is_empty()) {
        let next = edges.entry(r.model.as_str()).or_default();
        if !next.contains(&r.fallback_model.as_str()) {
            next.push(r.fallback_model.as_str());
        }
    }
    // Models fully explored without finding a loop.
    let mut done: HashSet<&str> = HashSet::new();
    fn walk<'a>(
        edges: &HashMap<&'a str, Vec<&'a str>>,
        model: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut HashSet<&'a str>,
    ) -> bool {
        if path.contains(&model) {
            path.push(model);
            return true;
        }
        if done.contains(model) {
            return false;
        }
        path.push(model);
        for next in edges.get(model).into_iter().flatten() {
            if walk(edges, next, path, done) {
                return true;
            }
        }
        path.pop();
        done.insert(model);
        false
    }
    let mut path = vec![start.model.as_str()];
    walk(&edges, &start.fallback_model, &mut path, &mut done).then(|| {
        let from = path
            .iter()
            .position(|m| Some(m) == path.last())
            .unwrap_or(0);
        path[from..].iter().map(|m| (*m).to_string()).collect()
    })
}

/// Where a pool runs: as set, else from its kind (self-hosted servers are on-prem,
/// public providers external).
pub fn hosting_of(pool: &Pool) -> Hosting {
    match Hosting::try_from(pool.hosting) {
        // Every kind named: a new public provider must not default to on-prem.
        Ok(Hosting::Unspecified) | Err(_) => match PoolKind::try_from(pool.kind) {
            Ok(PoolKind::Vllm | PoolKind::OpenaiCompatible) => Hosting::OnPrem,
            Ok(PoolKind::Openai | PoolKind::Mistral | PoolKind::Anthropic)
            | Ok(PoolKind::Unspecified)
            | Err(_) => Hosting::External,
        },
        Ok(h) => h,
    }
}

/// The highest level a pool may receive: as set, else from its hosting.
pub fn clearance_of(pool: &Pool) -> SensitivityLevel {
    match SensitivityLevel::try_from(pool.clearance) {
        Ok(SensitivityLevel::Unspecified) | Err(_) => match hosting_of(pool) {
            Hosting::OnPrem | Hosting::Unspecified => SensitivityLevel::Restricted,
            Hosting::Cloud => SensitivityLevel::Personal,
            Hosting::External => SensitivityLevel::Internal,
        },
        Ok(level) => level,
    }
}

/// Stable content hash of a policy (FNV-1a over its canonical JSON), as 16 hex digits.
/// The control plane and the sidecar compute it the same way, so the version a
/// sidecar reports is the one the control plane sent.
pub fn version_of(policy: &Policy) -> String {
    let json = serde_json::to_vec(policy).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Whether a pool serves a client-facing model name (as a name or an alias).
pub fn serves(pool: &Pool, model: &str) -> bool {
    pool.models
        .iter()
        .any(|m| m.name == model || m.aliases.iter().any(|a| a == model))
}

#[cfg(test)]
mod tests {
    /// Validation without the egress rule checks (they live with the egress compiler
    /// and are tested there and end to end).
    fn validate(p: &Policy) -> Result<(), Violations> {
        struct NoEgressRules;
        impl EgressRules for NoEgressRules {
            fn check(&self, _: &crate::v1::Egress, _: &mut dyn FnMut(String, String)) {}
        }
        super::validate(p, &NoEgressRules)
    }

    use super::*;

    fn policy(json: &str) -> Policy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn provider_keys_travel_in_clear_only_inside_the_cluster() {
        let with = |kind: &str, hosting: &str, url: &str, creds: bool| {
            policy(&format!(
                r#"{{"name":"p","pools":[{{"name":"a","kind":"{kind}",{hosting}"endpoints":[{{"url":"{url}"}}],
                    "models":[{{"name":"m"}}]{}}}]}}"#,
                if creds {
                    r#","credentials":{"env":"KEY"}"#
                } else {
                    ""
                }
            ))
        };
        let refused =
            |p: &Policy| validate(p).is_err_and(|v| v.0[0].path == "pools[0].endpoints[0].url");
        // A public provider: https, loopback excepted.
        assert!(refused(&with(
            "POOL_KIND_OPENAI",
            "",
            "http://api.example.com",
            false
        )));
        assert!(validate(&with("POOL_KIND_OPENAI", "", "http://127.0.0.1:9", true)).is_ok());
        // Declared on-prem, keyed, on the Internet: refused too.
        assert!(refused(&with(
            "POOL_KIND_OPENAI_COMPATIBLE",
            "",
            "http://api.together.xyz",
            true
        )));
        assert!(refused(&with(
            "POOL_KIND_OPENAI",
            r#""hosting":"HOSTING_ON_PREM","#,
            "http://api.example.com",
            true
        )));
        // Inside the cluster, a key may go over http; no key, any on-prem host.
        for url in [
            "http://vllm-0.inference.svc:8000",
            "http://vllm.inference.svc.cluster.local",
            "http://10.0.3.7:8000",
            "http://gpu-box",
            "http://[fd00::1]:8000",
        ] {
            assert!(
                validate(&with("POOL_KIND_VLLM", "", url, true)).is_ok(),
                "{url}"
            );
        }
        assert!(validate(&with("POOL_KIND_VLLM", "", "http://gpu.example.org", false)).is_ok());
    }

    #[test]
    fn telemetry_section() {
        let ok = policy(
            r#"{"name":"t","telemetry":{"otlpEndpoint":"https://otel.example:4317","otlpProtocol":"grpc",
            "traceSampleRatio":0.25,"userAttribute":"omitted"}}"#,
        );
        validate(&ok).unwrap();
        let bad = policy(
            r#"{"name":"t","telemetry":{"otlpEndpoint":"http://u:p@otel:4317","otlpProtocol":"http/json",
            "traceSampleRatio":-0.1,"userAttribute":"email"}}"#,
        );
        let v = validate(&bad).unwrap_err().to_string();
        for path in [
            "telemetry.otlpEndpoint",
            "telemetry.otlpProtocol",
            "telemetry.traceSampleRatio",
            "telemetry.userAttribute",
        ] {
            assert!(v.contains(path), "{path} missing: {v}");
        }
        assert!(!v.contains("u:p@"), "credentials echoed: {v}");
    }

    #[test]
    fn valid_policy_passes() {
        let p = policy(
            r#"{"name":"demo","pools":[{"name":"gpu-a","kind":"POOL_KIND_VLLM",
            "endpoints":[{"url":"http://127.0.0.1:9000"}],"models":[{"name":"m","aliases":["gpt-4o"]}]}],
            "routes":[{"model":"gpt-4o","pools":["gpu-a"]}]}"#,
        );
        assert_eq!(validate(&p), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let p = policy(
            r#"{"name":"Demo!","pools":[
              {"name":"gpu-a","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://127.0.0.1:9000"}],"models":[{"name":"m"}]},
              {"name":"gpu-a","endpoints":[{"url":"ftp://x"}],"models":[{"name":"m","aliases":["m"]}]}],
              "routes":[{"model":"m","pools":["gpu-b"]},{"model":"x","pools":["gpu-a"]}]}"#,
        );
        let v = validate(&p).unwrap_err();
        let text: Vec<String> = v.0.iter().map(ToString::to_string).collect();
        for expected in [
            "name: \"Demo!\" must be lower-case letters, digits and '-' (DNS label)",
            "pools[1].name: duplicate pool name \"gpu-a\"",
            "pools[1].kind: must be set (POOL_KIND_VLLM, POOL_KIND_OPENAI, …)",
            "pools[1].endpoints[0].url: scheme must be http or https",
            "pools[1].models[0].aliases[0]: model name \"m\" is already used in this pool",
            "routes[0].pools[0]: unknown pool \"gpu-b\"",
            "routes[1].pools[0]: pool \"gpu-a\" does not serve model \"x\" (add it to the pool's models or aliases)",
        ] {
            assert!(
                text.contains(&expected.to_string()),
                "missing {expected:?} in {text:#?}"
            );
        }
        assert_eq!(text.len(), 7, "{text:#?}");
    }

    #[test]
    fn endpoint_urls() {
        assert!(check_endpoint_url("https://api.mistral.ai").is_ok());
        assert_eq!(
            check_endpoint_url("http://u:p@h").unwrap_err().to_string(),
            "must not carry credentials; use the pool's credentials"
        );
        assert_eq!(check_endpoint_url("").unwrap_err(), EndpointUrlError::Empty);
        assert!(
            check_endpoint_url("nope")
                .unwrap_err()
                .to_string()
                .starts_with("not a valid URL")
        );
    }

    #[test]
    fn documented_example_policy_is_valid() {
        for doc in [
            include_str!("../../docs/examples/policy.json"),
            include_str!("../../docs/examples/policy-team-a.json"),
            include_str!("../../docs/examples/policy-routing.json"),
            include_str!("../../deploy/examples/shop/policy.json"),
        ] {
            assert_eq!(validate(&policy(doc)), Ok(()));
        }
        let broken = validate(&policy(include_str!(
            "../../docs/examples/policy-broken.json"
        )));
        assert_eq!(broken.unwrap_err().0.len(), 2);
    }

    #[test]
    fn scope_rules() {
        let p = policy(
            r#"{"name":"s","scope":{"namespace":"Team_A","serviceAccount":"-x","workloadLabels":{"app":"chat bot","ok/app":"v1","bad//k":"v"}},
            "pools":[{"name":"a","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://h"}],"models":[{"name":"m"}]}]}"#,
        );
        let text: Vec<String> = validate(&p)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            text,
            [
                "scope.namespace: \"Team_A\" must be lower-case letters, digits and '-' (DNS label)",
                "scope.serviceAccount: \"-x\" is not a valid service account name (DNS subdomain)",
                "scope.workloadLabels[\"app\"]: label value must be up to 63 alphanumerics, '-', '_', '.', starting and ending with an alphanumeric",
                "scope.workloadLabels[\"bad//k\"]: label key must be [prefix/]name: name up to 63 alphanumerics, '-', '_', '.'",
            ]
        );
    }

    #[test]
    fn empty_policy() {
        let v = validate(&Policy::default()).unwrap_err();
        assert_eq!(v.0[0].to_string(), "name: must not be empty");
        assert_eq!(
            v.0[1].to_string(),
            "pools: at least one pool is required (or another section, such as dlp)"
        );
    }

    #[test]
    fn route_problems_are_reported_with_their_paths() {
        let p = policy(
            r#"{"name":"r","pools":[
              {"name":"a","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://a:1"}],"models":[{"name":"m","aliases":["x","y"]}]},
              {"name":"b","kind":"POOL_KIND_OPENAI","endpoints":[{"url":"https://b"}],"models":[{"name":"m"}],"clearance":"SENSITIVITY_LEVEL_PERSONAL",
               "cost":{"currency":"eur","inputPer1k":-1}}],
             "routes":[
              {"model":"m","candidates":[{"pool":"a","weight":0},{"pool":"nope"}]},
              {"model":"m","pools":["a"]},
              {"model":"x","pools":["a"],"fallbackModel":"y"},
              {"model":"y","pools":["a"],"fallbackModel":"x"},
              {"model":"z","pools":[],"fallbackModel":"z","match":{"headers":{"X-Bad":"1"}}}]}"#,
        );
        let v = validate(&p).unwrap_err().0;
        let lines: Vec<String> = v.iter().map(ToString::to_string).collect();
        for want in [
            "routes[0].candidates[1].pool: unknown pool \"nope\"",
            "routes[0].candidates[0].weight: must not be 0 (leave it out for 1)",
            "routes[1].model: an earlier route for model \"m\" has no conditions: this one would never be used",
            "routes[2].fallbackModel: fallback chain loops: x → y → x",
            "routes[3].fallbackModel: fallback chain loops: y → x → y",
            "routes[4].pools: at least one pool is required (pools or candidates)",
            "routes[4].fallbackModel: a route cannot fall back to itself",
            "routes[4].match.headers[\"X-Bad\"]: header names are lower-case letters, digits and '-'",
            "pools[1].cost.currency: must be an ISO 4217 code such as EUR",
            "pools[1].cost.inputPer1k: must be a number ≥ 0",
        ] {
            assert!(
                lines.iter().any(|l| l == want),
                "missing {want:?} in {lines:#?}"
            );
        }
    }

    #[test]
    fn clearance_defaults_follow_hosting_and_kind() {
        let p = policy(
            r#"{"name":"r","pools":[
              {"name":"a","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://a:1"}],"models":[{"name":"m"}]},
              {"name":"b","kind":"POOL_KIND_OPENAI","endpoints":[{"url":"https://b"}],"models":[{"name":"m"}]},
              {"name":"c","kind":"POOL_KIND_OPENAI_COMPATIBLE","hosting":"HOSTING_CLOUD","endpoints":[{"url":"https://c"}],"models":[{"name":"m"}]},
              {"name":"d","kind":"POOL_KIND_MISTRAL","clearance":"SENSITIVITY_LEVEL_PERSONAL","endpoints":[{"url":"https://d"}],"models":[{"name":"m"}]}]}"#,
        );
        let got: Vec<SensitivityLevel> = p.pools.iter().map(clearance_of).collect();
        assert_eq!(
            got,
            [
                SensitivityLevel::Restricted,
                SensitivityLevel::Internal,
                SensitivityLevel::Personal,
                SensitivityLevel::Personal
            ]
        );
    }

    #[test]
    fn long_fallback_chains_validate_quickly() {
        // 40 models, two conditional routes each falling back to the next: 2^40 paths
        // for a naive walk.
        let mut routes = Vec::new();
        for i in 0..40 {
            for h in ["a", "b"] {
                routes.push(format!(
                    r#"{{"model":"m{i}","match":{{"headers":{{"x-{h}":"1"}}}},"pools":["p"],"fallbackModel":"m{}"}}"#,
                    i + 1
                ));
            }
        }
        let aliases: Vec<String> = (0..=40).map(|i| format!("\"m{i}\"")).collect();
        let p = policy(&format!(
            r#"{{"name":"c","pools":[{{"name":"p","kind":"POOL_KIND_VLLM","endpoints":[{{"url":"http://a:1"}}],"models":[{{"name":"x","aliases":[{}]}}]}}],"routes":[{}]}}"#,
            aliases.join(","),
            routes.join(",")
        ));
        let t = std::time::Instant::now();
        assert_eq!(validate(&p), Ok(()));
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }
}
