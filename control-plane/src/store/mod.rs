//! Persistent state behind one trait: policy revisions and heads, audit events,
//! API tokens (hashed) and client status.
//!
//! [`sql::SqlStore`] implements it for the embedded SQLite file (default, one replica)
//! and for PostgreSQL (several replicas share the state; changes are announced with
//! `NOTIFY` so every replica pushes them to its own watchers).

pub mod egress;
pub mod quota;
pub mod sql;
pub mod usage;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;
use vigie_proto::v1::{Identity, Policy, RevisionAction, UsageFilter, UsageRecord};

use crate::auth::Role;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer changed the policy since it was read; the caller retries or
    /// reports a precondition failure.
    #[error("the policy changed concurrently")]
    Conflict,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database URL {0:?} (expected sqlite:… or postgres://…)")]
    UnsupportedUrl(String),
}

/// One revision of one policy. A deletion is a revision without a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub name: String,
    pub revision: i64,
    pub action: RevisionAction,
    pub policy: Option<Policy>,
    pub created_at_ms: i64,
    pub author: String,
    pub summary: String,
    pub comment: String,
    pub restored_revision: i64,
}

/// A revision to record, with the audit event that goes with it.
#[derive(Debug, Clone)]
pub struct NewRevision {
    pub name: String,
    /// The head revision the change was computed from (`None`: the name was never
    /// used). If the head moved meanwhile, the commit fails with [`StoreError::Conflict`].
    pub base: Option<i64>,
    pub action: RevisionAction,
    pub policy: Option<Policy>,
    pub author: String,
    pub role: Role,
    pub summary: String,
    pub comment: String,
    pub restored_revision: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub policy: String,
    pub revision: i64,
    pub summary: String,
    pub comment: String,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub policy: String,
    pub actor: String,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// For workload tokens: the identity they may watch as.
    pub namespace: String,
    pub service_account: String,
    pub secret_sha256: String,
    pub created_at_ms: i64,
    pub revoked: bool,
}

/// A watching client's status row and the credential that speaks for it: a row is
/// only written by the credential that connected it, and a row written by a credential
/// bound to its pod is never taken over by one that merely declares the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRef {
    pub id: String,
    /// The principal's name (a token's name, a service account's subject).
    pub credential: String,
    /// The credential is bound to this pod (a projected service-account token).
    pub bound: bool,
}

/// What happened to a watching client; written in batches.
#[derive(Debug, Clone)]
pub enum StatusEvent {
    Connected {
        client: ClientRef,
        identity: Identity,
        replica: String,
        client_version: String,
        at_ms: i64,
    },
    Sent {
        client: ClientRef,
        version: String,
    },
    Acked {
        client: ClientRef,
        version: String,
        at_ms: i64,
    },
    Nacked {
        client: ClientRef,
        version: String,
        error: String,
        at_ms: i64,
    },
    Disconnected {
        client: ClientRef,
        replica: String,
        at_ms: i64,
    },
    /// The replica is alive: refresh `last_seen` of its connected clients.
    Heartbeat {
        replica: String,
        at_ms: i64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientRecord {
    pub client_id: String,
    pub identity: Identity,
    pub replica: String,
    pub connected: bool,
    pub connected_at_ms: i64,
    pub last_seen_ms: i64,
    pub sent_version: String,
    pub acked_version: String,
    pub nacked_version: String,
    pub nack_error: String,
    pub nacked_at_ms: i64,
    pub client_version: String,
    pub credential: String,
    pub bound: bool,
}

#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Records a revision, moves the head and appends the audit event, atomically;
    /// then tells every replica that state changed.
    async fn commit(&self, change: NewRevision) -> Result<Revision, StoreError>;
    /// The latest revision of a name, deletion included; `None` if never used.
    async fn head(&self, name: &str) -> Result<Option<Revision>, StoreError>;
    async fn revision(&self, name: &str, revision: i64) -> Result<Option<Revision>, StoreError>;
    /// Current revision of every policy that exists (deleted ones left out), by name.
    async fn live_heads(&self) -> Result<Vec<Revision>, StoreError>;
    /// Newest first.
    async fn revisions(&self, name: &str, limit: u32) -> Result<Vec<Revision>, StoreError>;
    /// Changes whenever any head moves: cheap change detection for periodic resyncs.
    /// (Not just the highest revision: with PostgreSQL, revisions can commit out of
    /// order, so a lower number may land after a higher one.)
    async fn fingerprint(&self) -> Result<(i64, i64), StoreError>;

    async fn append_audit(&self, event: AuditRecord) -> Result<i64, StoreError>;
    /// Takes or renews the lease `name` for `holder` until `until_ms`; true when
    /// `holder` has it (the previous holder's lease expired, or it was its own).
    async fn lease(&self, name: &str, holder: &str, until_ms: i64) -> Result<bool, StoreError>;
    /// Newest first.
    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError>;

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Whether a token of that name existed and was not yet revoked.
    async fn revoke_token(&self, name: &str, at_ms: i64) -> Result<bool, StoreError>;

    async fn write_status(&self, events: &[StatusEvent]) -> Result<(), StoreError>;
    async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError>;

    /// Stores usage records not stored yet (by id); returns how many were new.
    async fn insert_usage(&self, records: &[UsageRecord]) -> Result<u64, StoreError>;
    /// Records of `filter` ordered by (start, id), after the given one.
    async fn usage_page(
        &self,
        filter: &UsageFilter,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<UsageRecord>, StoreError>;
    /// Totals by the given columns and fixed-width buckets (0: none), by currency;
    /// `with_months`: the monthly aggregates of purged records counted too.
    async fn usage_totals(
        &self,
        filter: &UsageFilter,
        columns: &[&'static str],
        bucket_ms: i64,
        with_months: bool,
    ) -> Result<Vec<usage::TotalsRow>, StoreError>;
    /// Folds every record that started before `before_ms` (a month start) into monthly
    /// aggregates and deletes it, a month at a time.
    async fn purge_usage(&self, before_ms: i64) -> Result<usage::Purged, StoreError>;
    /// Blanks the user of the records whose user is one of `values`; how many.
    async fn erase_usage_user(&self, values: &[String]) -> Result<u64, StoreError>;
    /// Replaces the users stored in clear by their pseudonyms; how many records.
    async fn pseudonymise_usage_users(
        &self,
        key: &crate::users::UserKey,
    ) -> Result<u64, StoreError>;
    /// Deletes the budget counters of windows that ended before `before_ms`.
    async fn forget_quota_windows(&self, before_ms: i64) -> Result<u64, StoreError>;

    /// Grants up to `want` of a budget counter's allowance (after charging `overdraft`),
    /// never beyond `limit`, atomically.
    async fn grant_quota(&self, ask: &quota::QuotaAsk) -> Result<quota::QuotaGrant, StoreError>;
    /// Counters of current windows (`budget`: `policy/name`, `name`, or empty for all).
    async fn quota_status(&self, budget: &str) -> Result<Vec<quota::QuotaRow>, StoreError>;
    /// Egress denials reported by node agents.
    async fn insert_denials(
        &self,
        denials: &[vigie_proto::v1::EgressDenial],
    ) -> Result<(), StoreError>;
    async fn denials(
        &self,
        filter: &egress::DenialFilter,
    ) -> Result<Vec<vigie_proto::v1::EgressDenial>, StoreError>;

    /// Runs until the store fails: wakes `changed` whenever another replica commits.
    /// Returns at once for a store that has no other replicas.
    async fn listen_changes(&self, changed: Arc<Notify>) -> Result<(), StoreError>;
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Opens the store named by a URL (`sqlite://…` or `postgres://…`) and migrates it.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(sql::SqlStore::open(url).await?))
}
