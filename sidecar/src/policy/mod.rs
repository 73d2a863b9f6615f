//! Policies as the sidecar uses them: a validated, compiled, immutable [`Snapshot`].
//!
//! A request takes the current snapshot once (an `Arc`) and keeps it to the end, so a
//! reload never changes the rules under an in-flight request.

mod credentials;
pub mod file;
mod plan;

pub use credentials::{CREDENTIAL_ENV_PREFIX, Credential, CredentialSources};

pub use plan::{Attempt, Attempts, PlanError, RouteContext};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderName;
use vigie_dlp::Level;
use vigie_proto::v1::{Balancing, Hosting, Policy, PoolKind, SensitivityLevel};

use crate::endpoint::{Endpoint, EndpointRegistry};
pub use vigie_proto::validate::{Violation, Violations, version_of};

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

#[derive(Debug)]
pub struct PoolRuntime {
    pub name: String,
    pub kind: PoolKind,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub credential: Option<Credential>,
    pub timeouts: Timeouts,
    pub hosting: Hosting,
    /// Highest sensitivity level the pool may receive.
    pub clearance: Level,
    pub balancing: Balancing,
    /// Active health checks and load scraping; `None` when turned off.
    pub probe_interval: Option<Duration>,
    /// Next endpoint for round robin.
    pub round_robin: std::sync::atomic::AtomicUsize,
    /// Prices (per 1,000 tokens) and GPU-seconds estimate, when the policy sets them.
    pub cost: Option<vigie_proto::v1::PoolCost>,
    /// Per upstream model name, prices that override `cost`.
    pub model_costs: HashMap<String, vigie_proto::v1::PoolCost>,
}

impl PoolRuntime {
    /// The prices of an upstream model here: its own, else the pool's.
    pub fn cost_of(&self, upstream_model: &str) -> Option<&vigie_proto::v1::PoolCost> {
        self.model_costs.get(upstream_model).or(self.cost.as_ref())
    }
}

/// The sensitivity levels of the policy format, as the DLP engine orders them.
pub fn level_of(l: SensitivityLevel) -> Level {
    match l {
        SensitivityLevel::Public => Level::Public,
        SensitivityLevel::Internal => Level::Internal,
        SensitivityLevel::Personal => Level::Personal,
        SensitivityLevel::Restricted | SensitivityLevel::Unspecified => Level::Restricted,
    }
}

/// One way to serve a client-facing model: a pool and the name that pool knows it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub pool: usize,
    pub upstream_model: String,
    /// Lower is tried first.
    pub priority: u32,
    /// Share among targets of the same priority.
    pub weight: u32,
}

/// A route with its conditions, compiled.
#[derive(Debug, Clone, Default)]
pub struct CompiledRoute {
    pub min_level: Option<Level>,
    pub namespaces: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub headers: Vec<(HeaderName, String)>,
    pub targets: Vec<Target>,
    pub fallback: Option<String>,
}

#[derive(Debug)]
pub struct Snapshot {
    /// Content hash of the canonical policy document.
    pub version: String,
    pub policy: Policy,
    pub pools: Vec<PoolRuntime>,
    /// Per client-facing model: its routes in policy order (conditional first as
    /// written), then the implicit one (every pool that lists the model).
    pub(crate) routes: HashMap<String, Vec<CompiledRoute>>,
    /// Client-facing model names, sorted (for `GET /v1/models`).
    pub models: Vec<String>,
    /// Compiled DLP section (patterns compiled once per policy version).
    pub dlp: Option<Arc<vigie_dlp::policy::CompiledDlp>>,
    /// Budgets and rate limits (empty: none).
    pub budgets: Vec<vigie_quota::Budget>,
    /// Admit when the control plane cannot be reached for allowance.
    pub budgets_fail_open: bool,
    /// Completion tokens reserved for a request without max_tokens.
    pub default_max_tokens: u64,
}

impl Snapshot {
    /// Validates and compiles a policy. Endpoint state (in-flight counts) is shared with
    /// the previous snapshot through `registry`, so balancing is not reset by a reload.
    pub fn compile(policy: Policy, registry: &EndpointRegistry) -> Result<Snapshot, Violations> {
        Self::compile_with(policy, registry, &CredentialSources::from_env())
    }

    /// [`Snapshot::compile`], with credentials read from `sources`.
    pub fn compile_with(
        policy: Policy,
        registry: &EndpointRegistry,
        sources: &CredentialSources,
    ) -> Result<Snapshot, Violations> {
        vigie_proto::validate::validate(&policy, &vigie_egress_common::validate::EGRESS_RULES)?;
        let mut problems = Vec::new();
        let mut pools = Vec::with_capacity(policy.pools.len());
        for (i, p) in policy.pools.iter().enumerate() {
            let credential = match sources.load(p.kind(), p.credentials.as_ref()) {
                Ok(c) => c,
                Err((field, reason)) => {
                    problems.push(Violation {
                        path: format!("pools[{i}].credentials.{field}"),
                        reason,
                    });
                    None
                }
            };
            let endpoints = p
                .endpoints
                .iter()
                .enumerate()
                .filter_map(|(j, ep)| match registry.get_or_create(&p.name, ep) {
                    Ok(e) => Some(e),
                    Err(reason) => {
                        problems.push(Violation {
                            path: format!("pools[{i}].endpoints[{j}].url"),
                            reason: reason.to_string(),
                        });
                        None
                    }
                })
                .collect();
            let mut timeouts = Timeouts::default();
            if let Some(t) = &p.timeouts {
                let conv = |d: &Option<vigie_proto::pbjson_types::Duration>, default: Duration| {
                    d.as_ref().map_or(default, |d| {
                        Duration::new(
                            u64::try_from(d.seconds).unwrap_or(0),
                            u32::try_from(d.nanos).unwrap_or(0),
                        )
                    })
                };
                timeouts = Timeouts {
                    connect: conv(&t.connect, timeouts.connect),
                    first_byte: conv(&t.first_byte, timeouts.first_byte),
                    idle: conv(&t.idle, timeouts.idle),
                };
            }
            let probe_interval = match &p.probe_interval {
                None => Some(Duration::from_secs(2)),
                Some(d) => {
                    let d = Duration::new(
                        u64::try_from(d.seconds).unwrap_or(0),
                        u32::try_from(d.nanos).unwrap_or(0),
                    );
                    (!d.is_zero()).then_some(d)
                }
            };
            pools.push(PoolRuntime {
                name: p.name.clone(),
                kind: p.kind(),
                endpoints,
                credential,
                timeouts,
                hosting: vigie_proto::validate::hosting_of(p),
                clearance: level_of(vigie_proto::validate::clearance_of(p)),
                balancing: match p.balancing() {
                    Balancing::Unspecified => Balancing::QueueAware,
                    b => b,
                },
                probe_interval,
                round_robin: std::sync::atomic::AtomicUsize::new(0),
                cost: p.cost.clone(),
                model_costs: p
                    .models
                    .iter()
                    .filter_map(|m| m.cost.clone().map(|c| (m.name.clone(), c)))
                    .collect(),
            });
        }
        let dlp = match &policy.dlp {
            None => None,
            Some(d) => match vigie_dlp::policy::compile(d) {
                Ok(c) => Some(Arc::new(c)),
                Err(v) => {
                    problems.extend(v);
                    None
                }
            },
        };
        if !problems.is_empty() {
            return Err(Violations(problems));
        }

        let index: HashMap<&str, usize> = policy
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let upstream_name = |pool: usize, model: &str| -> Option<String> {
            policy.pools[pool]
                .models
                .iter()
                .find(|m| m.name == model || m.aliases.iter().any(|a| a == model))
                .map(|m| m.name.clone())
        };
        let mut routes: HashMap<String, Vec<CompiledRoute>> = HashMap::new();
        for route in &policy.routes {
            let named: Vec<(&str, u32, u32)> = if route.pools.is_empty() {
                route
                    .candidates
                    .iter()
                    .map(|c| (c.pool.as_str(), c.priority, c.weight.unwrap_or(1)))
                    .collect()
            } else {
                (0u32..)
                    .zip(&route.pools)
                    .map(|(i, name)| (name.as_str(), i, 1))
                    .collect()
            };
            let targets = named
                .into_iter()
                .filter_map(|(name, priority, weight)| {
                    let pool = index.get(name).copied()?;
                    upstream_name(pool, &route.model).map(|upstream_model| Target {
                        pool,
                        upstream_model,
                        priority,
                        weight: weight.max(1),
                    })
                })
                .collect();
            let m = route.r#match.clone().unwrap_or_default();
            routes
                .entry(route.model.clone())
                .or_default()
                .push(CompiledRoute {
                    min_level: (m.min_sensitivity != 0).then(|| level_of(m.min_sensitivity())),
                    namespaces: m.namespaces,
                    labels: m.workload_labels.into_iter().collect(),
                    headers: m
                        .headers
                        .into_iter()
                        .filter_map(|(k, v)| Some((HeaderName::try_from(k).ok()?, v)))
                        .collect(),
                    targets,
                    fallback: (!route.fallback_model.is_empty())
                        .then(|| route.fallback_model.clone()),
                });
        }
        // Every model also goes to the pools that list it, in policy order, when no
        // explicit route applies (or it has none).
        let mut implicit: HashMap<String, Vec<Target>> = HashMap::new();
        for (pool, p) in policy.pools.iter().enumerate() {
            for m in &p.models {
                for name in std::iter::once(&m.name).chain(&m.aliases) {
                    let targets = implicit.entry(name.clone()).or_default();
                    let priority = u32::try_from(targets.len()).unwrap_or(u32::MAX);
                    targets.push(Target {
                        pool,
                        upstream_model: m.name.clone(),
                        priority,
                        weight: 1,
                    });
                }
            }
        }
        for (model, targets) in implicit {
            let list = routes.entry(model).or_default();
            // An unconditional explicit route already covers every request.
            if !list.iter().any(CompiledRoute::unconditional) {
                list.push(CompiledRoute {
                    targets,
                    ..CompiledRoute::default()
                });
            }
        }
        let mut models: Vec<String> = routes.keys().cloned().collect();
        models.sort();
        let budgets_section = policy.budgets.clone().unwrap_or_default();
        Ok(Snapshot {
            version: version_of(&policy),
            budgets: budgets_section
                .budgets
                .iter()
                .map(vigie_quota::Budget::from_policy)
                .collect(),
            budgets_fail_open: budgets_section.fail_mode()
                != vigie_proto::v1::BudgetFailMode::Closed,
            default_max_tokens: match budgets_section.default_max_tokens {
                0 => 1024,
                n => u64::from(n),
            },
            policy,
            pools,
            routes,
            models,
            dlp,
        })
    }

    /// What decides requests while no policy applies: no model, no pool (version empty).
    pub fn none() -> Snapshot {
        Snapshot {
            version: String::new(),
            policy: Policy::default(),
            pools: Vec::new(),
            routes: HashMap::new(),
            models: Vec::new(),
            dlp: None,
            budgets: Vec::new(),
            budgets_fail_open: false,
            default_max_tokens: 0,
        }
    }

    /// The routes of a client-facing model, in the order they are tried.
    pub fn routes_for(&self, model: &str) -> Option<&[CompiledRoute]> {
        self.routes.get(model).map(Vec::as_slice)
    }
}

impl CompiledRoute {
    fn unconditional(&self) -> bool {
        self.min_level.is_none()
            && self.namespaces.is_empty()
            && self.labels.is_empty()
            && self.headers.is_empty()
    }
}

/// The snapshot in force; swapped atomically.
#[derive(Debug, Default)]
pub struct PolicyStore {
    current: ArcSwapOption<Snapshot>,
}

impl PolicyStore {
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    pub fn install(&self, snapshot: Arc<Snapshot>) {
        self.current.store(Some(snapshot));
        // What compiling it allocated and freed goes back to the kernel.
        crate::memory::give_back();
    }

    /// No policy applies any more: every request gets a 503 until one does.
    pub fn clear(&self) {
        self.current.store(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(json: &str) -> Result<Snapshot, Violations> {
        Snapshot::compile(
            serde_json::from_str(json).unwrap(),
            &EndpointRegistry::default(),
        )
    }

    const TWO_POOLS: &str = r#"{"name":"p","pools":[
        {"name":"gpu-a","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://127.0.0.1:1"}],
         "models":[{"name":"mistral-7b","aliases":["chat"]}]},
        {"name":"cloud","kind":"POOL_KIND_OPENAI","endpoints":[{"url":"https://api.openai.com"}],
         "models":[{"name":"gpt-4o"},{"name":"chat-cloud","aliases":["chat"]}]}],
        "routes":[{"model":"chat","pools":["cloud","gpu-a"]}]}"#;

    #[test]
    fn routes_and_aliases_resolve_in_order() {
        let s = compile(TWO_POOLS).unwrap();
        assert_eq!(
            s.plan_plain("chat").unwrap(),
            [(1, "chat-cloud".to_string()), (0, "mistral-7b".to_string())]
        );
        assert_eq!(s.plan_plain("gpt-4o").unwrap(), [(1, "gpt-4o".to_string())]);
        assert!(s.plan_plain("nope").is_none());
        assert_eq!(s.models, vec!["chat", "chat-cloud", "gpt-4o", "mistral-7b"]);
    }

    #[test]
    fn version_is_a_content_hash() {
        let a = compile(TWO_POOLS).unwrap();
        let b = compile(TWO_POOLS).unwrap();
        assert_eq!(a.version, b.version);
        let c = compile(&TWO_POOLS.replace("gpt-4o", "gpt-4.1")).unwrap();
        assert_ne!(a.version, c.version);
    }

    #[test]
    fn credentials_by_kind_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "sk-secret-123\n").unwrap();
        let json = TWO_POOLS.replace(
            r#""kind":"POOL_KIND_OPENAI","#,
            r#""kind":"POOL_KIND_ANTHROPIC","credentials":{"file":"key"},"#,
        );
        let sources = CredentialSources {
            dir: dir.path().to_path_buf(),
        };
        let s = Snapshot::compile_with(
            serde_json::from_str(&json).unwrap(),
            &EndpointRegistry::default(),
            &sources,
        )
        .unwrap();
        let c = s.pools[1].credential.clone().unwrap();
        assert_eq!(c.header.as_str(), "x-api-key");
        assert_eq!(c.value.to_str().unwrap(), "sk-secret-123");
        assert!(!format!("{c:?}").contains("sk-secret"));
        assert!(!format!("{s:?}").contains("sk-secret"));
    }

    #[test]
    fn missing_credential_is_a_violation_naming_the_variable_only() {
        let json = TWO_POOLS.replace(
            r#""kind":"POOL_KIND_OPENAI","#,
            r#""kind":"POOL_KIND_OPENAI","credentials":{"env":"TEST_UNSET_VAR"},"#,
        );
        let err = compile(&json).unwrap_err();
        assert_eq!(
            err.0[0].to_string(),
            "pools[1].credentials.env: credential \"TEST_UNSET_VAR\" is not set (environment variable VIGIE_CREDENTIAL_TEST_UNSET_VAR)"
        );
    }
}
