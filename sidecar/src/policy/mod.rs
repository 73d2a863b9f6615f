//! Policies as the sidecar uses them: a validated, compiled, immutable [`Snapshot`].
//!
//! A request takes the current snapshot once (an `Arc`) and keeps it to the end, so a
//! reload never changes the rules under an in-flight request.

pub mod file;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{HeaderName, HeaderValue};
use vigie_proto::v1::{Policy, PoolKind, credentials};

use crate::routing::{Endpoint, EndpointRegistry};
pub use vigie_proto::validate::{Violation, Violations, version_of};

/// A provider credential; never printed.
#[derive(Clone)]
pub struct Credential {
    pub header: HeaderName,
    pub value: HeaderValue,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}: <redacted>)", self.header)
    }
}

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
}

/// One way to serve a client-facing model: a pool and the name that pool knows it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub pool: usize,
    pub upstream_model: String,
}

#[derive(Debug)]
pub struct Snapshot {
    /// Content hash of the canonical policy document.
    pub version: String,
    pub policy: Policy,
    pub pools: Vec<PoolRuntime>,
    routes: HashMap<String, Vec<Target>>,
    /// Client-facing model names, sorted (for `GET /v1/models`).
    pub models: Vec<String>,
    /// Compiled DLP section (patterns compiled once per policy version).
    pub dlp: Option<Arc<vigie_dlp::policy::CompiledDlp>>,
}

impl Snapshot {
    /// Validates and compiles a policy. Endpoint state (in-flight counts) is shared with
    /// the previous snapshot through `registry`, so balancing is not reset by a reload.
    pub fn compile(policy: Policy, registry: &EndpointRegistry) -> Result<Snapshot, Violations> {
        vigie_proto::validate::validate(&policy)?;
        let mut problems = Vec::new();
        let mut pools = Vec::with_capacity(policy.pools.len());
        for (i, p) in policy.pools.iter().enumerate() {
            let credential = match load_credential(p.kind(), p.credentials.as_ref()) {
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
                            reason,
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
            pools.push(PoolRuntime {
                name: p.name.clone(),
                kind: p.kind(),
                endpoints,
                credential,
                timeouts,
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
        let mut routes: HashMap<String, Vec<Target>> = HashMap::new();
        for route in &policy.routes {
            let targets = route
                .pools
                .iter()
                .filter_map(|name| index.get(name.as_str()).copied())
                .filter_map(|pool| {
                    upstream_name(pool, &route.model).map(|upstream_model| Target {
                        pool,
                        upstream_model,
                    })
                })
                .collect();
            routes.insert(route.model.clone(), targets);
        }
        // Models without an explicit route go to every pool that lists them, in policy order.
        for (pool, p) in policy.pools.iter().enumerate() {
            for m in &p.models {
                for name in std::iter::once(&m.name).chain(&m.aliases) {
                    if policy.routes.iter().any(|r| &r.model == name) {
                        continue;
                    }
                    routes.entry(name.clone()).or_default().push(Target {
                        pool,
                        upstream_model: m.name.clone(),
                    });
                }
            }
        }
        let mut models: Vec<String> = routes.keys().cloned().collect();
        models.sort();
        Ok(Snapshot {
            version: version_of(&policy),
            policy,
            pools,
            routes,
            models,
            dlp,
        })
    }

    /// Where a client-facing model may go, most preferred first.
    pub fn targets(&self, model: &str) -> Option<&[Target]> {
        self.routes
            .get(model)
            .map(Vec::as_slice)
            .filter(|t| !t.is_empty())
    }
}

fn load_credential(
    kind: PoolKind,
    c: Option<&vigie_proto::v1::Credentials>,
) -> Result<Option<Credential>, (&'static str, String)> {
    let Some(source) = c.and_then(|c| c.source.as_ref()) else {
        return Ok(None);
    };
    let (field, secret) = match source {
        credentials::Source::Env(var) => (
            "env",
            std::env::var(var)
                .map_err(|_| ("env", format!("environment variable {var:?} is not set")))?,
        ),
        credentials::Source::File(path) => (
            "file",
            std::fs::read_to_string(path)
                .map_err(|e| ("file", format!("cannot read {path:?}: {}", e.kind())))?,
        ),
    };
    let secret = secret.trim();
    if secret.is_empty() {
        return Err((field, "the credential is empty".into()));
    }
    let (header, value) = if kind == PoolKind::Anthropic {
        (HeaderName::from_static("x-api-key"), secret.to_string())
    } else {
        (http::header::AUTHORIZATION, format!("Bearer {secret}"))
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| {
        (
            field,
            "the credential has characters not allowed in a header".to_string(),
        )
    })?;
    value.set_sensitive(true);
    Ok(Some(Credential { header, value }))
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
            s.targets("chat").unwrap(),
            &[
                Target {
                    pool: 1,
                    upstream_model: "chat-cloud".into()
                },
                Target {
                    pool: 0,
                    upstream_model: "mistral-7b".into()
                }
            ]
        );
        assert_eq!(
            s.targets("gpt-4o").unwrap(),
            &[Target {
                pool: 1,
                upstream_model: "gpt-4o".into()
            }]
        );
        assert!(s.targets("nope").is_none());
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
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-secret-123\n").unwrap();
        let json = TWO_POOLS.replace(
            r#""kind":"POOL_KIND_OPENAI","#,
            &format!(
                r#""kind":"POOL_KIND_ANTHROPIC","credentials":{{"file":{:?}}},"#,
                path.display().to_string()
            ),
        );
        let s = compile(&json).unwrap();
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
            r#""kind":"POOL_KIND_OPENAI","credentials":{"env":"VIGIE_TEST_UNSET_VAR"},"#,
        );
        let err = compile(&json).unwrap_err();
        assert_eq!(
            err.0[0].to_string(),
            "pools[1].credentials.env: environment variable \"VIGIE_TEST_UNSET_VAR\" is not set"
        );
    }
}
