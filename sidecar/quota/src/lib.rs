//! Budgets and rate limits on the request path, without a remote call per request.
//!
//! Each budget counts matching requests per key (e.g. per user) and window. Before a
//! request is forwarded, [`Quota::admit`] reserves an estimate (prompt + max tokens,
//! their cost, or one request) from allowance held locally; when that runs short it
//! leases a chunk from the [`LeaseSource`] — the control plane, whose counters are the
//! authority shared by every replica of the workload — sized to about a fiftieth of the
//! limit (at least four requests' worth, at most a tenth). After the answer,
//! [`Quota::settle`] puts back what the reservation overestimated, or records the
//! excess as an overdraft charged with the next lease.
//!
//! Worst-case overshoot of a hard budget: the allowance is never granted twice, so the
//! admitted *reservations* never exceed the limit; what can exceed it is usage beyond
//! a reservation (a request without max_tokens that outruns the default, or a prompt
//! estimate below the real count), and, in fail-open mode, what is admitted while the
//! authority is unreachable. Both are charged to the counter when it is reachable.

pub mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
pub use window::Window;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Tokens,
    Cost,
    Requests,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyDim {
    Namespace,
    Workload,
    User,
    Model,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    pub namespace: String,
    pub workload: String,
    pub user: String,
    pub model: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub name: String,
    pub matcher: Match,
    pub per: Vec<KeyDim>,
    pub window: Window,
    pub unit: Unit,
    pub limit: f64,
    pub currency: String,
    pub soft: bool,
}

impl Budget {
    /// From the policy's (validated) `budgets` section.
    pub fn from_policy(b: &vigie_proto::v1::Budget) -> Self {
        use vigie_proto::v1::{BudgetKey, BudgetUnit, BudgetWindow};
        let m = b.r#match.clone().unwrap_or_default();
        let window = match (&b.window_duration, BudgetWindow::try_from(b.window)) {
            (Some(d), _) => Window::Fixed(d.seconds.saturating_mul(1000).max(1000)),
            (None, Ok(BudgetWindow::Minute)) => Window::Minute,
            (None, Ok(BudgetWindow::Hour)) => Window::Hour,
            (None, Ok(BudgetWindow::Day)) => Window::Day,
            (None, _) => Window::Month,
        };
        Budget {
            name: b.name.clone(),
            matcher: Match {
                namespace: m.namespace,
                workload: m.workload,
                user: m.user,
                model: m.model,
            },
            per: b
                .per
                .iter()
                .filter_map(|k| match BudgetKey::try_from(*k) {
                    Ok(BudgetKey::Namespace) => Some(KeyDim::Namespace),
                    Ok(BudgetKey::Workload) => Some(KeyDim::Workload),
                    Ok(BudgetKey::User) => Some(KeyDim::User),
                    Ok(BudgetKey::Model) => Some(KeyDim::Model),
                    _ => None,
                })
                .collect(),
            window,
            unit: match BudgetUnit::try_from(b.unit) {
                Ok(BudgetUnit::Cost) => Unit::Cost,
                Ok(BudgetUnit::Requests) => Unit::Requests,
                _ => Unit::Tokens,
            },
            limit: b.limit,
            currency: b.currency.clone(),
            soft: b.soft,
        }
    }
}

/// What [`Quota::admit`] needs to know about a request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub namespace: String,
    pub workload: String,
    pub user: String,
    pub model: String,
    /// Prompt estimate + max tokens (or the default).
    pub tokens: f64,
    /// Cost of `tokens` at the dearest price of the currency, per currency.
    pub cost: Vec<(String, f64)>,
}

/// A price per 1,000 tokens, in a currency.
#[derive(Debug, Clone, Copy)]
pub struct Price<'a> {
    pub currency: &'a str,
    pub input_per_1k: f64,
    pub output_per_1k: f64,
}

impl Request {
    /// What a request is reserved before it runs: the prompt at about 4 bytes per token,
    /// plus the output it may ask for (`max_tokens`, else the policy's default), and
    /// their cost at the dearest of the prices it may be served at, per currency.
    pub fn estimate<'a>(
        mut self,
        body_bytes: usize,
        max_output: u64,
        prices: impl IntoIterator<Item = Price<'a>>,
    ) -> Self {
        let prompt = body_bytes as f64 / 4.0;
        let completion = max_output as f64;
        self.tokens = prompt + completion;
        self.cost.clear();
        for p in prices {
            let v = (prompt * p.input_per_1k + completion * p.output_per_1k) / 1000.0;
            match self.cost.iter_mut().find(|(k, _)| k == p.currency) {
                Some(e) => e.1 = e.1.max(v),
                None => self.cost.push((p.currency.to_string(), v)),
            }
        }
        self
    }
}

impl Budget {
    fn matches(&self, r: &Request) -> bool {
        let m = &self.matcher;
        [
            (&m.namespace, &r.namespace),
            (&m.workload, &r.workload),
            (&m.user, &r.user),
            (&m.model, &r.model),
        ]
        .iter()
        .all(|(want, got)| want.is_empty() || want == got)
    }

    fn key(&self, r: &Request) -> Vec<String> {
        self.per
            .iter()
            .map(|d| match d {
                KeyDim::Namespace => r.namespace.clone(),
                KeyDim::Workload => r.workload.clone(),
                KeyDim::User => r.user.clone(),
                KeyDim::Model => r.model.clone(),
            })
            .collect()
    }

    fn amount(&self, r: &Request) -> f64 {
        match self.unit {
            Unit::Tokens => r.tokens,
            Unit::Requests => 1.0,
            Unit::Cost => r
                .cost
                .iter()
                .find(|(c, _)| *c == self.currency)
                .map_or(0.0, |(_, v)| *v),
        }
    }
}

/// A lease answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant {
    pub granted: f64,
    /// Left for the counter after this grant.
    pub remaining: f64,
    pub window_end_ms: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("allowance unavailable: {0}")]
pub struct LeaseError(pub String);

/// Where allowance comes from.
#[async_trait]
pub trait LeaseSource: Send + Sync + std::fmt::Debug {
    /// Up to `want` of `budget`'s allowance for the counter; `overdraft` (spent beyond
    /// earlier grants) is charged first, unconditionally.
    async fn acquire(
        &self,
        budget: &Budget,
        key: &[String],
        window_start_ms: i64,
        want: f64,
        overdraft: f64,
    ) -> Result<Grant, LeaseError>;
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CounterKey {
    budget: String,
    key: Vec<String>,
    window_start_ms: i64,
}

#[derive(Debug, Default)]
struct State {
    /// Granted and not yet reserved; negative: an overdraft to charge.
    available: f64,
    /// The authority has nothing left for this window.
    exhausted: bool,
}

#[derive(Debug)]
struct Counter {
    state: Mutex<State>,
    /// One lease request at a time per counter.
    refill: tokio::sync::Mutex<()>,
    window_end_ms: i64,
}

/// One budget's share of an admitted request, to settle afterwards.
#[derive(Debug, Clone)]
pub struct Part {
    counter: Arc<Counter>,
    unit: Unit,
    currency: String,
    reserved: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Reservation {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
pub enum Decision {
    /// Go; `warnings` name soft budgets that are over.
    Admit {
        reservation: Reservation,
        warnings: Vec<String>,
    },
    /// A hard budget is exhausted until the end of its window.
    Reject { budget: String, retry_after_s: u64 },
    /// Fail-closed and the authority is unreachable.
    Unavailable { budget: String },
}

/// Counts of what happened, for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub leases: std::sync::atomic::AtomicU64,
    pub lease_errors: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Counters {
    map: HashMap<CounterKey, Arc<Counter>>,
    /// Earliest end of a window held: nothing to forget before then.
    next_expiry_ms: i64,
}

#[derive(Debug)]
pub struct Quota {
    source: Arc<dyn LeaseSource>,
    counters: Mutex<Counters>,
    pub stats: Stats,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a counter leaves plain numbers behind: keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Quota {
    pub fn new(source: Arc<dyn LeaseSource>) -> Self {
        Self {
            source,
            counters: Mutex::new(Counters::default()),
            stats: Stats::default(),
        }
    }

    fn counter(&self, key: CounterKey, window_end_ms: i64, now_ms: i64) -> Arc<Counter> {
        let mut counters = lock(&self.counters);
        // Windows that ended are forgotten (their unspent allowance with them); the map
        // is only walked when one has.
        if !counters.map.is_empty() && now_ms >= counters.next_expiry_ms {
            counters.map.retain(|_, c| c.window_end_ms > now_ms);
            counters.next_expiry_ms = counters
                .map
                .values()
                .map(|c| c.window_end_ms)
                .min()
                .unwrap_or(i64::MAX);
        }
        counters.next_expiry_ms = if counters.map.is_empty() {
            window_end_ms
        } else {
            counters.next_expiry_ms.min(window_end_ms)
        };
        counters
            .map
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Counter {
                    state: Mutex::new(State::default()),
                    refill: tokio::sync::Mutex::new(()),
                    window_end_ms,
                })
            })
            .clone()
    }

    /// Reserves `req`'s estimate from every budget it matches, leasing allowance when
    /// the local share runs short. `fail_open`: admit when the authority is unreachable.
    pub async fn admit(
        &self,
        budgets: &[Budget],
        req: &Request,
        fail_open: bool,
        now_ms: i64,
    ) -> Decision {
        let mut reservation = Reservation::default();
        let mut warnings = Vec::new();
        for b in budgets.iter().filter(|b| b.matches(req)) {
            let amount = b.amount(req);
            if amount <= 0.0 {
                continue;
            }
            let key = b.key(req);
            let (start, end) = b.window.bounds(now_ms);
            let counter = self.counter(
                CounterKey {
                    budget: b.name.clone(),
                    key: key.clone(),
                    window_start_ms: start,
                },
                end,
                now_ms,
            );
            match self.reserve(b, &key, start, &counter, amount).await {
                Reserved::Yes => reservation.parts.push(Part {
                    counter,
                    unit: b.unit,
                    currency: b.currency.clone(),
                    reserved: amount,
                }),
                Reserved::Over if b.soft => warnings.push(b.name.clone()),
                Reserved::Over => {
                    self.release(&reservation);
                    let retry_after_s = u64::try_from((end - now_ms + 999) / 1000).unwrap_or(1);
                    return Decision::Reject {
                        budget: b.name.clone(),
                        retry_after_s: retry_after_s.max(1),
                    };
                }
                Reserved::Unreachable if fail_open => {
                    // Counted as an overdraft, charged when the authority is back.
                    lock(&counter.state).available -= amount;
                }
                Reserved::Unreachable => {
                    self.release(&reservation);
                    return Decision::Unavailable {
                        budget: b.name.clone(),
                    };
                }
            }
        }
        Decision::Admit {
            reservation,
            warnings,
        }
    }

    async fn reserve(
        &self,
        b: &Budget,
        key: &[String],
        window_start_ms: i64,
        counter: &Counter,
        amount: f64,
    ) -> Reserved {
        loop {
            {
                let mut s = lock(&counter.state);
                if s.available >= amount {
                    s.available -= amount;
                    return Reserved::Yes;
                }
                if s.exhausted {
                    return Reserved::Over;
                }
            }
            let _one_at_a_time = counter.refill.lock().await;
            let (want, overdraft) = {
                let s = lock(&counter.state);
                if s.available >= amount || s.exhausted {
                    continue; // another request refilled (or found it empty) meanwhile
                }
                // The authority grants at most a tenth of the limit per call: a larger
                // reservation takes several leases.
                let chunk = (b.limit / 50.0).max(4.0 * amount).min(b.limit / 10.0);
                (chunk, (-s.available).max(0.0))
            };
            self.stats
                .leases
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match self
                .source
                .acquire(b, key, window_start_ms, want, overdraft)
                .await
            {
                Ok(g) => {
                    let mut s = lock(&counter.state);
                    s.available += overdraft + g.granted;
                    // Nothing granted, or nothing left: the authority's counter is empty
                    // for this window. (A grant below `want` alone is not: the authority
                    // caps each call, and its limit may differ from this snapshot's.)
                    if (g.granted <= 0.0 || g.remaining <= 0.0) && s.available < amount {
                        s.exhausted = true;
                    }
                }
                Err(_) => {
                    self.stats
                        .lease_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Reserved::Unreachable;
                }
            }
        }
    }

    fn release(&self, r: &Reservation) {
        for p in &r.parts {
            lock(&p.counter.state).available += p.reserved;
        }
    }

    /// After the answer: what was really used (tokens, and cost in `currency`).
    pub fn settle(&self, r: &Reservation, tokens: f64, cost: f64, currency: &str) {
        for p in &r.parts {
            let used = match p.unit {
                Unit::Requests => p.reserved,
                Unit::Tokens => tokens,
                Unit::Cost if p.currency == currency => cost,
                Unit::Cost => 0.0,
            };
            lock(&p.counter.state).available += p.reserved - used;
        }
    }
}

enum Reserved {
    Yes,
    Over,
    Unreachable,
}

/// Allowance from the sidecar itself (no control plane): the same counters, held
/// locally, authoritative for this sidecar only.
#[derive(Debug, Default)]
pub struct LocalLeases {
    granted: Mutex<HashMap<CounterKey, f64>>,
}

#[async_trait]
impl LeaseSource for LocalLeases {
    async fn acquire(
        &self,
        budget: &Budget,
        key: &[String],
        window_start_ms: i64,
        want: f64,
        overdraft: f64,
    ) -> Result<Grant, LeaseError> {
        let mut granted = lock(&self.granted);
        let used = granted
            .entry(CounterKey {
                budget: budget.name.clone(),
                key: key.to_vec(),
                window_start_ms,
            })
            .or_insert(0.0);
        *used += overdraft;
        let grant = want.min((budget.limit - *used).max(0.0));
        *used += grant;
        Ok(Grant {
            granted: grant,
            remaining: budget.limit - *used,
            window_end_ms: budget.window.bounds(window_start_ms).1,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn estimate_takes_the_dearest_price_per_currency() {
        let r = Request::default().estimate(
            4000,
            500,
            [
                Price {
                    currency: "EUR",
                    input_per_1k: 1.0,
                    output_per_1k: 2.0,
                },
                Price {
                    currency: "EUR",
                    input_per_1k: 0.5,
                    output_per_1k: 4.0,
                },
                Price {
                    currency: "USD",
                    input_per_1k: 1.0,
                    output_per_1k: 0.0,
                },
            ],
        );
        assert_eq!(r.tokens, 1500.0);
        // EUR: max(1.0 + 1.0, 0.5 + 2.0); USD: 1.0.
        assert_eq!(
            r.cost,
            vec![("EUR".to_string(), 2.5), ("USD".to_string(), 1.0)]
        );
    }

    use super::*;

    fn budget(unit: Unit, limit: f64, soft: bool) -> Budget {
        Budget {
            name: "b".into(),
            matcher: Match {
                namespace: "team-a".into(),
                ..Default::default()
            },
            per: vec![KeyDim::User],
            window: Window::Fixed(60_000),
            unit,
            limit,
            currency: "EUR".into(),
            soft,
        }
    }

    fn req(user: &str, tokens: f64) -> Request {
        Request {
            namespace: "team-a".into(),
            user: user.into(),
            tokens,
            cost: vec![("EUR".into(), tokens / 1000.0)],
            ..Default::default()
        }
    }

    fn quota() -> (Quota, Arc<LocalLeases>) {
        let source = Arc::new(LocalLeases::default());
        (Quota::new(source.clone()), source)
    }

    async fn admitted(q: &Quota, b: &[Budget], r: &Request, now: i64) -> Option<Reservation> {
        match q.admit(b, r, true, now).await {
            Decision::Admit { reservation, .. } => Some(reservation),
            _ => None,
        }
    }

    #[tokio::test]
    async fn hard_budget_admits_up_to_the_limit_then_rejects_until_the_window_ends() {
        let (q, _) = quota();
        let b = [budget(Unit::Tokens, 1000.0, false)];
        let mut n = 0;
        while let Some(r) = admitted(&q, &b, &req("ana", 100.0), 1_000).await {
            q.settle(&r, 100.0, 0.1, "EUR");
            n += 1;
        }
        assert_eq!(n, 10);
        match q.admit(&b, &req("ana", 100.0), true, 1_000).await {
            Decision::Reject {
                budget,
                retry_after_s,
            } => {
                assert_eq!(budget, "b");
                assert_eq!(retry_after_s, 59);
            }
            other => panic!("{other:?}"),
        }
        // Another user has a counter of their own; the next window starts afresh.
        assert!(admitted(&q, &b, &req("bob", 100.0), 1_000).await.is_some());
        assert!(admitted(&q, &b, &req("ana", 100.0), 61_000).await.is_some());
    }

    #[tokio::test]
    async fn overestimates_are_given_back_and_excess_is_charged() {
        let (q, _) = quota();
        let b = [budget(Unit::Tokens, 1000.0, false)];
        // Reserve 300, use 100: the 200 come back.
        let mut n = 0;
        while let Some(r) = admitted(&q, &b, &req("ana", 300.0), 1_000).await {
            q.settle(&r, 100.0, 0.0, "EUR");
            n += 1;
            assert!(n < 50);
        }
        // 8 × 100 used; the ninth's 300 no longer fits in the 200 left.
        assert_eq!(n, 8);
    }

    #[tokio::test]
    async fn soft_budgets_warn_and_requests_budgets_count_requests() {
        let (q, _) = quota();
        let soft = [budget(Unit::Tokens, 100.0, true)];
        match q.admit(&soft, &req("ana", 150.0), true, 0).await {
            Decision::Admit { warnings, .. } => assert_eq!(warnings, ["b"]),
            other => panic!("{other:?}"),
        }
        let rpm = [Budget {
            name: "rpm".into(),
            ..budget(Unit::Requests, 3.0, false)
        }];
        for _ in 0..3 {
            assert!(admitted(&q, &rpm, &req("ana", 1e6), 0).await.is_some());
        }
        assert!(admitted(&q, &rpm, &req("ana", 1.0), 0).await.is_none());
    }

    #[derive(Debug)]
    struct Down;

    #[async_trait]
    impl LeaseSource for Down {
        async fn acquire(
            &self,
            _: &Budget,
            _: &[String],
            _: i64,
            _: f64,
            _: f64,
        ) -> Result<Grant, LeaseError> {
            Err(LeaseError("control plane unreachable".into()))
        }
    }

    #[tokio::test]
    async fn unreachable_authority_fails_open_or_closed() {
        let q = Quota::new(Arc::new(Down));
        let b = [budget(Unit::Tokens, 1000.0, false)];
        assert!(matches!(
            q.admit(&b, &req("ana", 10.0), true, 0).await,
            Decision::Admit { .. }
        ));
        assert!(matches!(
            q.admit(&b, &req("ana", 10.0), false, 0).await,
            Decision::Unavailable { .. }
        ));
    }

    #[tokio::test]
    async fn concurrent_admissions_never_exceed_the_limit() {
        let (q, source) = quota();
        let q = Arc::new(q);
        let b = Arc::new([budget(Unit::Tokens, 10_000.0, false)]);
        let mut tasks = Vec::new();
        for i in 0..64 {
            let (q, b) = (q.clone(), b.clone());
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0.0;
                for _ in 0..50 {
                    if let Decision::Admit { reservation, .. } =
                        q.admit(&*b, &req("ana", 37.0 + i as f64), true, 0).await
                    {
                        admitted += 37.0 + i as f64;
                        q.settle(&reservation, 37.0 + i as f64, 0.0, "EUR");
                    }
                }
                admitted
            }));
        }
        let mut total = 0.0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert!(total <= 10_000.0, "{total}");
        assert!(total > 9_000.0, "most of the budget is usable: {total}");
        let granted: f64 = lock(&source.granted).values().sum();
        assert!(granted <= 10_000.0);
    }
}
