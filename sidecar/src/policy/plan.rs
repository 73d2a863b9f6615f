//! Which pools a request may go to, in order: the first route of its model whose
//! conditions hold (sensitivity level, calling workload, request headers), its
//! candidates by priority (weighted order within a priority), then its fallback chain —
//! keeping only pools cleared for the request's sensitivity level. Never a silent
//! downgrade: a request with no cleared pool is refused. Then [`Attempts`] walks the
//! plan's endpoints, each picked by `vigie_balance` (queue-aware power of two choices,
//! prefix affinity with bounded load, passive health).

use std::collections::BTreeMap;
use std::time::Instant;

use http::HeaderMap;
use vigie_balance::{Pick, Request};
use vigie_dlp::Level;
use vigie_proto::v1::Balancing;

use super::{CompiledRoute, Snapshot, Target};

/// What routing conditions look at.
#[derive(Debug, Clone, Copy)]
pub struct RouteContext<'a> {
    /// Declared or found by DLP; `None` counts as public.
    pub level: Option<Level>,
    pub headers: &'a HeaderMap,
    /// The calling workload (the sidecar's own pod).
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// Where the app's connection was going before the kernel redirected it to the
    /// sidecar (`egress.redirect`); the pool with that endpoint is preferred.
    pub original: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    UnknownModel,
    /// Pools serve the model, but none is cleared for this level.
    NotCleared(Level),
}

/// Longest fallback chain followed (validation rejects cycles; this bounds the rest).
const MAX_CHAIN: usize = 8;

impl CompiledRoute {
    fn applies(&self, ctx: &RouteContext<'_>) -> bool {
        self.min_level
            .is_none_or(|min| ctx.level.unwrap_or(Level::Public) >= min)
            && (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == ctx.namespace))
            && self
                .labels
                .iter()
                .all(|(k, v)| ctx.labels.get(k) == Some(v))
            && self.headers.iter().all(|(name, value)| {
                ctx.headers
                    .get(name)
                    .and_then(|h| h.to_str().ok())
                    .is_some_and(|h| h == value)
            })
    }
}

/// Orders targets of equal priority by weighted random sampling without replacement
/// (Efraimidis–Spirakis: key = u^(1/w), larger first).
fn order(targets: &[Target]) -> Vec<&Target> {
    let mut keyed: Vec<(u32, f64, &Target)> = targets
        .iter()
        .map(|t| {
            let u = fastrand::f64().max(f64::MIN_POSITIVE);
            (t.priority, u.powf(1.0 / f64::from(t.weight.max(1))), t)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
    keyed.into_iter().map(|(_, _, t)| t).collect()
}

impl Snapshot {
    /// The targets to try for `model`, most preferred first.
    pub fn plan(&self, model: &str, ctx: &RouteContext<'_>) -> Result<Vec<&Target>, PlanError> {
        let level = ctx.level.unwrap_or(Level::Public);
        let mut out: Vec<&Target> = Vec::new();
        let mut uncleared = false;
        let mut chain: Vec<&str> = Vec::new();
        let mut current = Some(model);
        while let Some(m) = current.take() {
            if chain.contains(&m) || chain.len() >= MAX_CHAIN {
                break;
            }
            chain.push(m);
            let Some(route) = self
                .routes_for(m)
                .and_then(|routes| routes.iter().find(|r| r.applies(ctx)))
            else {
                continue;
            };
            for t in order(&route.targets) {
                let cleared = self.pools.get(t.pool).is_some_and(|p| p.clearance >= level);
                if !cleared {
                    uncleared = true;
                } else if !out.iter().any(|o| o.pool == t.pool) {
                    out.push(t);
                }
            }
            current = route.fallback.as_deref();
        }
        if let Some(dst) = ctx.original {
            // Stable: the route's order stays among the pools that have it and the rest.
            out.sort_by_key(|t| {
                !self
                    .pools
                    .get(t.pool)
                    .is_some_and(|p| p.endpoints.iter().any(|e| e.is_address(dst)))
            });
        }
        match (out.is_empty(), uncleared) {
            (false, _) => Ok(out),
            (true, true) => Err(PlanError::NotCleared(level)),
            (true, false) => Err(PlanError::UnknownModel),
        }
    }
}

/// One try: a route target and an endpoint index within its pool.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub target: &'a Target,
    pub endpoint: usize,
    /// Why this endpoint (for telemetry).
    pub pick: Pick,
    /// Chosen in panic mode (health ignored: nothing else was eligible).
    pub panic: bool,
}

/// The endpoints to try for a request, in order: endpoints of the first target's pool
/// (balanced), then those of the next target, up to a maximum number of attempts.
#[derive(Debug)]
pub struct Attempts<'a> {
    snapshot: &'a Snapshot,
    targets: &'a [&'a Target],
    target: usize,
    tried: Vec<usize>,
    remaining: usize,
    request: Request,
    /// At least one attempt was made (panic mode only when none could be).
    yielded: bool,
}

impl<'a> Attempts<'a> {
    pub fn new(
        snapshot: &'a Snapshot,
        targets: &'a [&'a Target],
        max_attempts: usize,
        request: Request,
    ) -> Self {
        Self {
            snapshot,
            targets,
            target: 0,
            tried: Vec::new(),
            remaining: max_attempts.max(1),
            request,
            yielded: false,
        }
    }

    /// Attempts still allowed after the current one.
    pub fn remaining(&self) -> usize {
        self.remaining
    }
}

impl<'a> Iterator for Attempts<'a> {
    type Item = Attempt<'a>;

    fn next(&mut self) -> Option<Attempt<'a>> {
        loop {
            if let Some(a) = self.next_in_order() {
                self.yielded = true;
                return Some(a);
            }
            // Nothing on the whole route is eligible (all ejected, throttled or
            // failing checks): one pass that ignores health, rather than refusing.
            if self.yielded || self.request.ignore_health || self.remaining == 0 {
                return None;
            }
            self.request.ignore_health = true;
            self.target = 0;
            self.tried.clear();
        }
    }
}

impl<'a> Attempts<'a> {
    fn next_in_order(&mut self) -> Option<Attempt<'a>> {
        while self.remaining > 0 && self.target < self.targets.len() {
            let target = &self.targets[self.target];
            let now = Instant::now();
            let pick = self
                .snapshot
                .pools
                .get(target.pool)
                .and_then(|p| match p.balancing {
                    Balancing::RoundRobin if !self.request.ignore_health => {
                        vigie_balance::round_robin(&p.endpoints, &self.tried, &p.round_robin, now)
                    }
                    Balancing::QueueAware | Balancing::Unspecified => {
                        vigie_balance::pick(&p.endpoints, &self.tried, &self.request, now)
                    }
                    // Least request (and round robin in panic mode): no prefix affinity.
                    _ => vigie_balance::pick(
                        &p.endpoints,
                        &self.tried,
                        &Request {
                            prefix: None,
                            ..self.request
                        },
                        now,
                    ),
                });
            if let Some(pick) = pick {
                self.tried.push(pick.index);
                self.remaining -= 1;
                return Some(Attempt {
                    target,
                    endpoint: pick.index,
                    pick,
                    panic: self.request.ignore_health,
                });
            }
            self.target += 1;
            self.tried.clear();
        }
        None
    }
}

impl Snapshot {
    /// The plan for a public request with no headers, from a workload with no labels.
    #[cfg(test)]
    pub fn plan_plain(&self, model: &str) -> Option<Vec<(usize, String)>> {
        let headers = HeaderMap::new();
        let labels = BTreeMap::new();
        let ctx = RouteContext {
            level: None,
            headers: &headers,
            namespace: "",
            labels: &labels,
            original: None,
        };
        self.plan(model, &ctx).ok().map(|p| {
            p.into_iter()
                .map(|t| (t.pool, t.upstream_model.clone()))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointRegistry;

    fn snapshot(json: &str) -> Snapshot {
        Snapshot::compile(
            serde_json::from_str(json).unwrap(),
            &EndpointRegistry::default(),
        )
        .unwrap()
    }

    fn names(s: &Snapshot, plan: &[&Target]) -> Vec<String> {
        plan.iter().map(|t| s.pools[t.pool].name.clone()).collect()
    }

    const POLICY: &str = r#"{"name":"p","pools":[
      {"name":"onprem","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://a:1"}],"models":[{"name":"llama","aliases":["chat"]}]},
      {"name":"cloud","kind":"POOL_KIND_OPENAI_COMPATIBLE","hosting":"HOSTING_CLOUD","endpoints":[{"url":"https://c"}],"models":[{"name":"llama-c","aliases":["chat"]}]},
      {"name":"openai","kind":"POOL_KIND_OPENAI","endpoints":[{"url":"https://o"}],"models":[{"name":"gpt-4o","aliases":["chat","big"]}]}],
     "routes":[
      {"model":"chat","match":{"headers":{"x-tier":"gold"}},"candidates":[{"pool":"openai","priority":0},{"pool":"onprem","priority":1}]},
      {"model":"chat","pools":["cloud","openai"],"fallbackModel":"llama"}]}"#;

    fn ctx<'a>(
        level: Option<Level>,
        headers: &'a HeaderMap,
        labels: &'a BTreeMap<String, String>,
    ) -> RouteContext<'a> {
        RouteContext {
            level,
            headers,
            namespace: "team-a",
            labels,
            original: None,
        }
    }

    #[test]
    fn the_pool_the_app_was_calling_comes_first() {
        let s = snapshot(
            r#"{"name":"p","pools":[
              {"name":"a","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://10.0.0.1:8000"}],"models":[{"name":"m"}]},
              {"name":"b","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://10.0.0.2:8000"}],"models":[{"name":"m"}]}]}"#,
        );
        let headers = HeaderMap::new();
        let labels = BTreeMap::new();
        let mut c = ctx(None, &headers, &labels);
        assert_eq!(names(&s, &s.plan("m", &c).unwrap()), ["a", "b"]);
        c.original = Some("10.0.0.2:8000".parse().unwrap());
        assert_eq!(names(&s, &s.plan("m", &c).unwrap()), ["b", "a"]);
        c.original = Some("10.0.0.2:9000".parse().unwrap());
        assert_eq!(
            names(&s, &s.plan("m", &c).unwrap()),
            ["a", "b"],
            "port differs"
        );
    }

    #[test]
    fn conditions_priorities_fallback_and_clearance() {
        let s = snapshot(POLICY);
        let h = HeaderMap::new();
        let labels = BTreeMap::new();
        // Unconditional route, then its fallback model's pools.
        let plan = s.plan("chat", &ctx(None, &h, &labels)).unwrap();
        assert_eq!(names(&s, &plan), ["cloud", "openai", "onprem"]);
        assert_eq!(plan[2].upstream_model, "llama");
        // Header condition.
        let mut gold = HeaderMap::new();
        gold.insert("x-tier", "gold".parse().unwrap());
        assert_eq!(
            names(&s, &s.plan("chat", &ctx(None, &gold, &labels)).unwrap()),
            ["openai", "onprem"]
        );
        // Personal data: the external pool (clearance internal) is dropped, never used.
        let plan = s
            .plan("chat", &ctx(Some(Level::Personal), &h, &labels))
            .unwrap();
        assert_eq!(names(&s, &plan), ["cloud", "onprem"]);
        let plan = s
            .plan("chat", &ctx(Some(Level::Restricted), &h, &labels))
            .unwrap();
        assert_eq!(names(&s, &plan), ["onprem"]);
        // Only the external pool serves "big": refused, not downgraded.
        assert_eq!(
            s.plan("big", &ctx(Some(Level::Personal), &h, &labels)),
            Err(PlanError::NotCleared(Level::Personal))
        );
        assert_eq!(
            s.plan("nope", &ctx(None, &h, &labels)),
            Err(PlanError::UnknownModel)
        );
    }

    #[test]
    fn weights_spread_equal_priorities() {
        let s = snapshot(
            r#"{"name":"p","pools":[
              {"name":"a","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://a:1"}],"models":[{"name":"m"}]},
              {"name":"b","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://b:1"}],"models":[{"name":"m"}]}],
             "routes":[{"model":"m","candidates":[{"pool":"a","weight":3},{"pool":"b","weight":1}]}]}"#,
        );
        let h = HeaderMap::new();
        let labels = BTreeMap::new();
        let first_a = (0..4000)
            .filter(|_| names(&s, &s.plan("m", &ctx(None, &h, &labels)).unwrap())[0] == "a")
            .count();
        // Expected share 3/4.
        assert!((2800..3200).contains(&first_a), "{first_a}");
    }

    #[test]
    fn workload_conditions() {
        let s = snapshot(
            r#"{"name":"p","pools":[
              {"name":"a","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://a:1"}],"models":[{"name":"m"}]},
              {"name":"b","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://b:1"}],"models":[{"name":"m"}]}],
             "routes":[{"model":"m","match":{"namespaces":["team-b"]},"pools":["b"]},
                       {"model":"m","match":{"workloadLabels":{"app":"batch"}},"pools":["b"]}]}"#,
        );
        let h = HeaderMap::new();
        let mut labels = BTreeMap::new();
        // team-a without the label: no explicit route applies, the implicit one does.
        assert_eq!(
            names(&s, &s.plan("m", &ctx(None, &h, &labels)).unwrap()),
            ["a", "b"]
        );
        labels.insert("app".to_string(), "batch".to_string());
        assert_eq!(
            names(&s, &s.plan("m", &ctx(None, &h, &labels)).unwrap()),
            ["b"]
        );
    }

    #[test]
    fn attempts_walk_endpoints_then_pools() {
        let policy = serde_json::from_str(
            r#"{"name":"p","pools":[
              {"name":"a","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://a1:1"},{"url":"http://a2:1"}],"models":[{"name":"m"}]},
              {"name":"b","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://b1:1"}],"models":[{"name":"m"}]}]}"#,
        )
        .unwrap();
        let s = Snapshot::compile(policy, &EndpointRegistry::default()).unwrap();
        let targets: Vec<&Target> = s.routes_for("m").unwrap()[0].targets.iter().collect();
        let targets = targets.as_slice();
        let seen: Vec<(usize, usize)> = Attempts::new(&s, targets, 10, Request::default())
            .map(|a| (a.target.pool, a.endpoint))
            .collect();
        assert_eq!(seen.len(), 3);
        assert_eq!(&seen[2], &(1, 0));
        let mut first_pool: Vec<usize> = seen[..2].iter().map(|x| x.1).collect();
        first_pool.sort();
        assert_eq!(first_pool, vec![0, 1]);
        assert_eq!(Attempts::new(&s, targets, 2, Request::default()).count(), 2);
    }
}
