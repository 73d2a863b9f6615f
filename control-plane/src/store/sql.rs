//! [`Store`] on SQL through sqlx's `Any` driver: the same queries run on SQLite and
//! PostgreSQL (both accept `$n` placeholders, `RETURNING` and `ON CONFLICT`); only the
//! DDL and the change notification differ by dialect.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor as _, Row as _};
use tokio::sync::Notify;
use tracing::{info, warn};
use vigie_proto::v1::{EgressDenial, Identity, Policy, RevisionAction, UsageFilter, UsageRecord};

use super::{
    AuditFilter, AuditRecord, ClientRecord, NewRevision, Revision, StatusEvent, Store, StoreError,
    TokenRecord, now_ms,
};

const CHANNEL: &str = "vigie_changes";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Debug)]
pub struct SqlStore {
    pub(super) pool: AnyPool,
    pub(super) dialect: Dialect,
    url: String,
}

/// Schema versions, applied in order at start. Never edit a shipped step: add one.
fn migrations(d: Dialect) -> Vec<(i64, Vec<String>)> {
    let serial = match d {
        Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
    };
    vec![
        (
            1,
            vec![
                format!(
                    "CREATE TABLE vigie_revisions (
                    revision {serial},
                    name TEXT NOT NULL,
                    action BIGINT NOT NULL,
                    policy TEXT NOT NULL,
                    created_at BIGINT NOT NULL,
                    author TEXT NOT NULL,
                    summary TEXT NOT NULL,
                    comment TEXT NOT NULL,
                    restored_revision BIGINT NOT NULL)"
                ),
                "CREATE INDEX vigie_revisions_by_name ON vigie_revisions (name, revision)".into(),
                // One row per name: its latest revision; `live` = 0 once deleted.
                "CREATE TABLE vigie_heads (
                name TEXT PRIMARY KEY,
                revision BIGINT NOT NULL,
                live BIGINT NOT NULL)"
                    .into(),
                format!(
                    "CREATE TABLE vigie_audit (
                    id {serial},
                    at BIGINT NOT NULL,
                    actor TEXT NOT NULL,
                    role TEXT NOT NULL,
                    action TEXT NOT NULL,
                    policy TEXT NOT NULL,
                    revision BIGINT NOT NULL,
                    summary TEXT NOT NULL,
                    comment TEXT NOT NULL)"
                ),
                "CREATE TABLE vigie_tokens (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                role TEXT NOT NULL,
                namespace TEXT NOT NULL,
                service_account TEXT NOT NULL,
                secret_sha256 TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                revoked_at BIGINT NOT NULL)"
                    .into(),
                "CREATE TABLE vigie_clients (
                client_id TEXT PRIMARY KEY,
                identity TEXT NOT NULL,
                replica TEXT NOT NULL,
                connected BIGINT NOT NULL,
                connected_at BIGINT NOT NULL,
                last_seen BIGINT NOT NULL,
                sent_version TEXT NOT NULL,
                acked_version TEXT NOT NULL,
                nacked_version TEXT NOT NULL,
                nack_error TEXT NOT NULL,
                nacked_at BIGINT NOT NULL,
                client_version TEXT NOT NULL)"
                    .into(),
            ],
        ),
        (2, super::usage::migration()),
        (3, super::quota::migration()),
        (4, super::egress::migration()),
        (
            5,
            vec![
                "ALTER TABLE vigie_clients ADD COLUMN credential TEXT NOT NULL DEFAULT ''".into(),
                "ALTER TABLE vigie_clients ADD COLUMN bound BIGINT NOT NULL DEFAULT 0".into(),
            ],
        ),
        (
            6,
            vec![
                "CREATE TABLE vigie_leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL,
                    until_ms BIGINT NOT NULL)"
                    .into(),
            ],
        ),
        (
            7,
            vec![
                "ALTER TABLE vigie_egress_denials ADD COLUMN reason TEXT NOT NULL DEFAULT ''"
                    .into(),
            ],
        ),
        (8, super::usage::retention_migration()),
    ]
}

impl SqlStore {
    pub async fn open(url: &str) -> Result<SqlStore, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let mut options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        if dialect == Dialect::Sqlite {
            // WAL: readers never wait for the writer; NORMAL is durable across process
            // crashes, which is what a single-replica control plane needs.
            options = options.max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    // Erased and purged values are overwritten in the file, not only
                    // unlinked (docs/metering.md: what erasure leaves).
                    conn.execute("PRAGMA secure_delete = ON").await?;
                    Ok(())
                })
            });
        } else {
            options = options.max_connections(16);
        }
        let pool = options.connect(url).await?;
        let store = SqlStore {
            pool,
            dialect,
            url: url.to_string(),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.dialect == Dialect::Postgres {
            // Replicas starting together: one migrates, the others wait and then see it done.
            sqlx::query("SELECT pg_advisory_xact_lock(7317)")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("CREATE TABLE IF NOT EXISTS vigie_schema (version BIGINT PRIMARY KEY)")
            .execute(&mut *tx)
            .await?;
        let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM vigie_schema")
            .fetch_one(&mut *tx)
            .await?
            .try_get("v")?;
        for (version, steps) in migrations(self.dialect) {
            if version <= current {
                continue;
            }
            for step in steps {
                sqlx::query(&step).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO vigie_schema (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await?;
            info!(version, "database schema migrated");
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Database URLs may carry a password; never print it.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

fn action_code(a: RevisionAction) -> i64 {
    i64::from(a as i32)
}

fn revision_from_row(row: &AnyRow) -> Result<Revision, StoreError> {
    let policy_json: String = row.try_get("policy")?;
    let policy = if policy_json.is_empty() {
        None
    } else {
        Some(
            serde_json::from_str::<Policy>(&policy_json)
                .map_err(|e| StoreError::Corrupt(format!("stored policy: {e}")))?,
        )
    };
    let action: i64 = row.try_get("action")?;
    Ok(Revision {
        name: row.try_get("name")?,
        revision: row.try_get("revision")?,
        action: i32::try_from(action)
            .ok()
            .and_then(|a| RevisionAction::try_from(a).ok())
            .unwrap_or(RevisionAction::Unspecified),
        policy,
        created_at_ms: row.try_get("created_at")?,
        author: row.try_get("author")?,
        summary: row.try_get("summary")?,
        comment: row.try_get("comment")?,
        restored_revision: row.try_get("restored_revision")?,
    })
}

fn audit_from_row(row: &AnyRow) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        id: row.try_get("id")?,
        at_ms: row.try_get("at")?,
        actor: row.try_get("actor")?,
        role: row.try_get("role")?,
        action: row.try_get("action")?,
        policy: row.try_get("policy")?,
        revision: row.try_get("revision")?,
        summary: row.try_get("summary")?,
        comment: row.try_get("comment")?,
    })
}

fn token_from_row(row: &AnyRow) -> Result<TokenRecord, StoreError> {
    let role: String = row.try_get("role")?;
    let revoked_at: i64 = row.try_get("revoked_at")?;
    Ok(TokenRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: role
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("unknown role {role:?}")))?,
        namespace: row.try_get("namespace")?,
        service_account: row.try_get("service_account")?,
        secret_sha256: row.try_get("secret_sha256")?,
        created_at_ms: row.try_get("created_at")?,
        revoked: revoked_at != 0,
    })
}

fn client_from_row(row: &AnyRow) -> Result<ClientRecord, StoreError> {
    let identity: String = row.try_get("identity")?;
    let connected: i64 = row.try_get("connected")?;
    Ok(ClientRecord {
        client_id: row.try_get("client_id")?,
        identity: serde_json::from_str::<Identity>(&identity)
            .map_err(|e| StoreError::Corrupt(format!("stored identity: {e}")))?,
        replica: row.try_get("replica")?,
        connected: connected != 0,
        connected_at_ms: row.try_get("connected_at")?,
        last_seen_ms: row.try_get("last_seen")?,
        sent_version: row.try_get("sent_version")?,
        acked_version: row.try_get("acked_version")?,
        nacked_version: row.try_get("nacked_version")?,
        nack_error: row.try_get("nack_error")?,
        nacked_at_ms: row.try_get("nacked_at")?,
        client_version: row.try_get("client_version")?,
        credential: row.try_get("credential")?,
        bound: row.try_get::<i64, _>("bound")? != 0,
    })
}

/// How long a disconnected client stays in the status view.
const FORGET_CLIENTS_AFTER_MS: i64 = 24 * 3_600_000;

const REVISION_COLUMNS: &str =
    "revision, name, action, policy, created_at, author, summary, comment, restored_revision";

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[async_trait]
impl Store for SqlStore {
    async fn commit(&self, change: NewRevision) -> Result<Revision, StoreError> {
        let policy_json = match &change.policy {
            Some(p) => serde_json::to_string(p)
                .map_err(|e| StoreError::Corrupt(format!("encoding policy: {e}")))?,
            None => String::new(),
        };
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let revision: i64 = sqlx::query(
            "INSERT INTO vigie_revisions (name, action, policy, created_at, author, summary, comment, restored_revision)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING revision",
        )
        .bind(&change.name)
        .bind(action_code(change.action))
        .bind(&policy_json)
        .bind(now)
        .bind(&change.author)
        .bind(&change.summary)
        .bind(&change.comment)
        .bind(change.restored_revision)
        .fetch_one(&mut *tx)
        .await?
        .try_get("revision")?;
        let live = i64::from(change.policy.is_some());
        // Compare-and-set on the head: a concurrent writer (another request or another
        // replica) makes this fail instead of silently overwriting its change.
        match change.base {
            None => {
                let inserted = sqlx::query(
                    "INSERT INTO vigie_heads (name, revision, live) VALUES ($1, $2, $3)",
                )
                .bind(&change.name)
                .bind(revision)
                .bind(live)
                .execute(&mut *tx)
                .await;
                match inserted {
                    Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict),
                    other => {
                        other?;
                    }
                }
            }
            Some(base) => {
                let updated = sqlx::query(
                    "UPDATE vigie_heads SET revision = $1, live = $2 WHERE name = $3 AND revision = $4",
                )
                .bind(revision)
                .bind(live)
                .bind(&change.name)
                .bind(base)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() != 1 {
                    return Err(StoreError::Conflict);
                }
            }
        }
        let action = match change.action {
            RevisionAction::Delete => "policy.delete",
            RevisionAction::Rollback => "policy.rollback",
            _ => "policy.apply",
        };
        sqlx::query(
            "INSERT INTO vigie_audit (at, actor, role, action, policy, revision, summary, comment)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(now)
        .bind(&change.author)
        .bind(change.role.as_str())
        .bind(action)
        .bind(&change.name)
        .bind(revision)
        .bind(&change.summary)
        .bind(&change.comment)
        .execute(&mut *tx)
        .await?;
        if self.dialect == Dialect::Postgres {
            // Delivered to every listening replica when (and only if) the commit succeeds.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(revision.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Revision {
            name: change.name,
            revision,
            action: change.action,
            policy: change.policy,
            created_at_ms: now,
            author: change.author,
            summary: change.summary,
            comment: change.comment,
            restored_revision: change.restored_revision,
        })
    }

    async fn head(&self, name: &str) -> Result<Option<Revision>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {REVISION_COLUMNS} FROM vigie_revisions
             WHERE revision = (SELECT revision FROM vigie_heads WHERE name = $1)"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(revision_from_row).transpose()
    }

    async fn revision(&self, name: &str, revision: i64) -> Result<Option<Revision>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {REVISION_COLUMNS} FROM vigie_revisions WHERE name = $1 AND revision = $2"
        ))
        .bind(name)
        .bind(revision)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(revision_from_row).transpose()
    }

    async fn live_heads(&self) -> Result<Vec<Revision>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.revision, r.name, r.action, r.policy, r.created_at, r.author, r.summary, r.comment, r.restored_revision
             FROM vigie_heads h JOIN vigie_revisions r ON r.revision = h.revision
             WHERE h.live = 1 ORDER BY r.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(revision_from_row).collect()
    }

    async fn revisions(&self, name: &str, limit: u32) -> Result<Vec<Revision>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {REVISION_COLUMNS} FROM vigie_revisions WHERE name = $1
             ORDER BY revision DESC LIMIT $2"
        ))
        .bind(name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(revision_from_row).collect()
    }

    async fn fingerprint(&self) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(revision), 0) AS BIGINT) AS s FROM vigie_heads",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("n")?, row.try_get("s")?))
    }

    async fn append_audit(&self, e: AuditRecord) -> Result<i64, StoreError> {
        Ok(sqlx::query(
            "INSERT INTO vigie_audit (at, actor, role, action, policy, revision, summary, comment)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(e.at_ms)
        .bind(&e.actor)
        .bind(&e.role)
        .bind(&e.action)
        .bind(&e.policy)
        .bind(e.revision)
        .bind(&e.summary)
        .bind(&e.comment)
        .fetch_one(&self.pool)
        .await?
        .try_get("id")?)
    }

    async fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, role, action, policy, revision, summary, comment FROM vigie_audit
             WHERE ($1 = '' OR policy = $1) AND ($2 = '' OR actor = $2)
             ORDER BY id DESC LIMIT $3",
        )
        .bind(&f.policy)
        .bind(&f.actor)
        .bind(i64::from(f.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn insert_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO vigie_tokens (id, name, role, namespace, service_account, secret_sha256, created_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
        )
        .bind(&t.id)
        .bind(&t.name)
        .bind(t.role.as_str())
        .bind(&t.namespace)
        .bind(&t.service_account)
        .bind(&t.secret_sha256)
        .bind(t.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM vigie_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM vigie_tokens ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, name: &str, at_ms: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE vigie_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at = 0",
        )
        .bind(at_ms)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn write_status(&self, events: &[StatusEvent]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for e in events {
            let q = match e {
                // A row bound to its pod is only taken over by a bound credential
                // (ClientRef); every later write names the credential that connected.
                StatusEvent::Connected {
                    client,
                    identity,
                    replica,
                    client_version,
                    at_ms,
                } => sqlx::query(
                    "INSERT INTO vigie_clients (client_id, identity, replica, connected, connected_at, last_seen,
                        sent_version, acked_version, nacked_version, nack_error, nacked_at, client_version,
                        credential, bound)
                     VALUES ($1, $2, $3, 1, $4, $4, '', '', '', '', 0, $5, $6, $7)
                     ON CONFLICT (client_id) DO UPDATE SET identity = excluded.identity,
                        replica = excluded.replica, connected = 1, connected_at = excluded.connected_at,
                        last_seen = excluded.last_seen, client_version = excluded.client_version,
                        credential = excluded.credential, bound = excluded.bound
                     WHERE vigie_clients.bound = 0 OR excluded.bound = 1",
                )
                .bind(client.id.clone())
                .bind(serde_json::to_string(identity).unwrap_or_default())
                .bind(replica.clone())
                .bind(*at_ms)
                .bind(client_version.clone())
                .bind(client.credential.clone())
                .bind(i64::from(client.bound)),
                StatusEvent::Sent { client, version } => sqlx::query(
                    "UPDATE vigie_clients SET sent_version = $1
                     WHERE client_id = $2 AND credential = $3 AND bound = $4",
                )
                .bind(version.clone())
                .bind(client.id.clone())
                .bind(client.credential.clone())
                .bind(i64::from(client.bound)),
                StatusEvent::Acked {
                    client,
                    version,
                    at_ms,
                } => sqlx::query(
                    "UPDATE vigie_clients SET acked_version = $1, last_seen = $2
                     WHERE client_id = $3 AND credential = $4 AND bound = $5",
                )
                .bind(version.clone())
                .bind(*at_ms)
                .bind(client.id.clone())
                .bind(client.credential.clone())
                .bind(i64::from(client.bound)),
                StatusEvent::Nacked {
                    client,
                    version,
                    error,
                    at_ms,
                } => sqlx::query(
                    "UPDATE vigie_clients SET nacked_version = $1, nack_error = $2, nacked_at = $3, last_seen = $3
                     WHERE client_id = $4 AND credential = $5 AND bound = $6",
                )
                .bind(version.clone())
                .bind(error.clone())
                .bind(*at_ms)
                .bind(client.id.clone())
                .bind(client.credential.clone())
                .bind(i64::from(client.bound)),
                StatusEvent::Disconnected {
                    client,
                    replica,
                    at_ms,
                } => sqlx::query(
                    "UPDATE vigie_clients SET connected = 0, last_seen = $1
                     WHERE client_id = $2 AND replica = $3 AND credential = $4 AND bound = $5",
                )
                .bind(*at_ms)
                .bind(client.id.clone())
                .bind(replica.clone())
                .bind(client.credential.clone())
                .bind(i64::from(client.bound)),
                StatusEvent::Heartbeat { replica, at_ms } => sqlx::query(
                    "UPDATE vigie_clients SET last_seen = $1 WHERE replica = $2 AND connected = 1",
                )
                .bind(*at_ms)
                .bind(replica.clone()),
            };
            q.execute(&mut *tx).await?;
            if let StatusEvent::Heartbeat { at_ms, .. } = e {
                // Clients gone for a day are forgotten: the table stays bounded by
                // what connected recently, whatever names clients declared.
                sqlx::query("DELETE FROM vigie_clients WHERE connected = 0 AND last_seen < $1")
                    .bind(at_ms - FORGET_CLIENTS_AFTER_MS)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn lease(&self, name: &str, holder: &str, until_ms: i64) -> Result<bool, StoreError> {
        sqlx::query(
            "INSERT INTO vigie_leases (name, holder, until_ms) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
             WHERE vigie_leases.holder = excluded.holder OR vigie_leases.until_ms < $4",
        )
        .bind(name.to_string())
        .bind(holder.to_string())
        .bind(until_ms)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT holder FROM vigie_leases WHERE name = $1")
            .bind(name.to_string())
            .fetch_one(&self.pool)
            .await?;
        let current: String = row.try_get("holder")?;
        Ok(current == holder)
    }

    async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM vigie_clients ORDER BY client_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(client_from_row).collect()
    }

    async fn insert_usage(&self, records: &[UsageRecord]) -> Result<u64, StoreError> {
        self.insert_usage_rows(records, now_ms()).await
    }

    async fn usage_page(
        &self,
        filter: &UsageFilter,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        self.usage_page_at(filter, after, limit, now_ms()).await
    }

    async fn usage_totals(
        &self,
        filter: &UsageFilter,
        columns: &[&'static str],
        bucket_ms: i64,
        with_months: bool,
    ) -> Result<Vec<super::usage::TotalsRow>, StoreError> {
        self.usage_totals_rows(filter, columns, bucket_ms, with_months, now_ms())
            .await
    }

    async fn purge_usage(&self, before_ms: i64) -> Result<super::usage::Purged, StoreError> {
        let mut purged = super::usage::Purged::default();
        let Some(oldest) = self.oldest_usage().await? else {
            return Ok(purged);
        };
        let mut from = vigie_quota::Window::Month.bounds(oldest).0;
        while from < before_ms {
            let to = vigie_quota::Window::Month.bounds(from).1.min(before_ms);
            let deleted = self.fold_usage_month(from, to).await?;
            if deleted > 0 {
                purged.records += deleted;
                purged.months += 1;
            }
            from = to;
        }
        if purged.records > 0 {
            self.checkpoint().await?;
        }
        Ok(purged)
    }

    async fn erase_usage_user(&self, values: &[String]) -> Result<u64, StoreError> {
        self.erase_usage_user_rows(values).await
    }

    async fn pseudonymise_usage_users(
        &self,
        key: &crate::users::UserKey,
    ) -> Result<u64, StoreError> {
        self.pseudonymise_usage_user_rows(key).await
    }

    async fn forget_quota_windows(&self, before_ms: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM vigie_quota WHERE window_end < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn grant_quota(
        &self,
        ask: &super::quota::QuotaAsk,
    ) -> Result<super::quota::QuotaGrant, StoreError> {
        self.grant_quota_row(ask, now_ms()).await
    }

    async fn quota_status(&self, budget: &str) -> Result<Vec<super::quota::QuotaRow>, StoreError> {
        self.quota_rows(budget, now_ms()).await
    }

    async fn insert_denials(&self, denials: &[EgressDenial]) -> Result<(), StoreError> {
        self.insert_denial_rows(denials, now_ms()).await
    }

    async fn denials(
        &self,
        filter: &super::egress::DenialFilter,
    ) -> Result<Vec<EgressDenial>, StoreError> {
        self.denial_rows(filter).await
    }

    async fn listen_changes(&self, changed: Arc<Notify>) -> Result<(), StoreError> {
        if self.dialect != Dialect::Postgres {
            return Ok(());
        }
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen(CHANNEL).await?;
        info!("listening for changes from other replicas");
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => changed.notify_one(),
                // Connection lost and re-established: notifications may have been
                // missed, so resynchronise.
                Ok(None) => {
                    warn!("change listener reconnected; resynchronising");
                    changed.notify_one();
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::store::ClientRef;

    fn change(name: &str, base: Option<i64>, alias: Option<&str>) -> NewRevision {
        NewRevision {
            name: name.into(),
            base,
            action: if alias.is_some() {
                RevisionAction::Apply
            } else {
                RevisionAction::Delete
            },
            policy: alias.map(|a| Policy {
                name: name.into(),
                routes: vec![vigie_proto::v1::Route {
                    model: a.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            author: "t".into(),
            role: Role::Admin,
            summary: "s".into(),
            comment: String::new(),
            restored_revision: 0,
        }
    }

    #[tokio::test]
    async fn leases_have_one_holder_and_old_clients_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = SqlStore::open(&url).await.unwrap();
        let later = now_ms() + 60_000;
        assert!(store.lease("gitops", "cp-1", later).await.unwrap());
        assert!(!store.lease("gitops", "cp-2", later).await.unwrap());
        assert!(store.lease("gitops", "cp-1", later).await.unwrap());
        // Expired: the other replica takes it.
        assert!(store.lease("gitops", "cp-1", now_ms() - 1).await.unwrap());
        assert!(store.lease("gitops", "cp-2", later).await.unwrap());

        let client = |id: &str| ClientRef {
            id: id.into(),
            credential: "w".into(),
            bound: false,
        };
        let day = FORGET_CLIENTS_AFTER_MS;
        let now = now_ms();
        let connected = |id: &str, at_ms| StatusEvent::Connected {
            client: client(id),
            identity: Identity::default(),
            replica: "r".into(),
            client_version: String::new(),
            at_ms,
        };
        store
            .write_status(&[
                connected("ns/old", now - 2 * day),
                StatusEvent::Disconnected {
                    client: client("ns/old"),
                    replica: "r".into(),
                    at_ms: now - 2 * day,
                },
                connected("ns/live", now - 2 * day),
                connected("ns/recent", now),
                StatusEvent::Disconnected {
                    client: client("ns/recent"),
                    replica: "r".into(),
                    at_ms: now,
                },
                StatusEvent::Heartbeat {
                    replica: "r".into(),
                    at_ms: now,
                },
            ])
            .await
            .unwrap();
        let ids: Vec<String> = store
            .clients()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.client_id)
            .collect();
        assert_eq!(ids, ["ns/live", "ns/recent"]);
    }

    #[tokio::test]
    async fn heads_move_by_compare_and_set() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = SqlStore::open(&url).await.unwrap();
        let fp0 = store.fingerprint().await.unwrap();
        let r1 = store.commit(change("a", None, Some("x"))).await.unwrap();
        // A second creation of the same name loses, and leaves nothing behind.
        assert!(matches!(
            store.commit(change("a", None, Some("y"))).await,
            Err(StoreError::Conflict)
        ));
        let r2 = store
            .commit(change("a", Some(r1.revision), Some("z")))
            .await
            .unwrap();
        // A writer that read r1 before r2 landed loses too.
        assert!(matches!(
            store
                .commit(change("a", Some(r1.revision), Some("w")))
                .await,
            Err(StoreError::Conflict)
        ));
        let history: Vec<i64> = store
            .revisions("a", 10)
            .await
            .unwrap()
            .iter()
            .map(|r| r.revision)
            .collect();
        assert_eq!(history, vec![r2.revision, r1.revision]);
        assert_eq!(store.head("a").await.unwrap().unwrap(), r2);
        assert_eq!(
            store
                .audit(&AuditFilter {
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
                .len(),
            2
        );
        let fp1 = store.fingerprint().await.unwrap();
        assert_ne!(fp0, fp1);
        // Deletion: a revision without a policy; the name leaves the live set.
        let del = store
            .commit(change("a", Some(r2.revision), None))
            .await
            .unwrap();
        assert!(store.live_heads().await.unwrap().is_empty());
        assert_eq!(
            store.head("a").await.unwrap().unwrap().revision,
            del.revision
        );
        assert_ne!(store.fingerprint().await.unwrap(), fp1);
        // Reopening migrates nothing and keeps everything.
        drop(store);
        let again = SqlStore::open(&url).await.unwrap();
        assert_eq!(again.revisions("a", 10).await.unwrap().len(), 3);
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://vigie:s3cret@db:5432/vigie"),
            "postgres://***@db:5432/vigie"
        );
        assert_eq!(
            redact_url("sqlite:///data/v.db?mode=rwc"),
            "sqlite:///data/v.db?mode=rwc"
        );
    }
}
