//! The usage ledger table: idempotent batch inserts (the record id is the key),
//! totals grouped in SQL, pages of raw records for export. Same SQL on both backends.

use sqlx::Row as _;
use sqlx::any::AnyRow;
use vigie_proto::v1::{UsageDimension, UsageFilter, UsageRecord};

use super::StoreError;
use super::sql::{Dialect, SqlStore};

pub(super) fn migration() -> Vec<String> {
    vec![
        // `user` is reserved in PostgreSQL: `user_name`.
        "CREATE TABLE vigie_usage (
            id TEXT PRIMARY KEY,
            started_at BIGINT NOT NULL,
            ended_at BIGINT NOT NULL,
            namespace TEXT NOT NULL,
            workload TEXT NOT NULL,
            pod TEXT NOT NULL,
            user_name TEXT NOT NULL,
            user_verified BIGINT NOT NULL,
            model TEXT NOT NULL,
            served_model TEXT NOT NULL,
            pool TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            sensitivity BIGINT NOT NULL,
            operation TEXT NOT NULL,
            stream BIGINT NOT NULL,
            status BIGINT NOT NULL,
            outcome BIGINT NOT NULL,
            prompt BIGINT NOT NULL,
            completion BIGINT NOT NULL,
            cached BIGINT NOT NULL,
            reasoning BIGINT NOT NULL,
            source BIGINT NOT NULL,
            currency TEXT NOT NULL,
            cost DOUBLE PRECISION NOT NULL,
            gpu_seconds DOUBLE PRECISION NOT NULL,
            received_at BIGINT NOT NULL)"
            .into(),
        "CREATE INDEX vigie_usage_started ON vigie_usage (started_at, id)".into(),
    ]
}

/// Migration 8: what the retention purge keeps of the records it deletes (one row per
/// month and [`AGGREGATED`] values), and an index for user erasure and filters.
pub(super) fn retention_migration() -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE vigie_usage_monthly (
                month BIGINT NOT NULL,
                namespace TEXT NOT NULL,
                workload TEXT NOT NULL,
                model TEXT NOT NULL,
                served_model TEXT NOT NULL,
                pool TEXT NOT NULL,
                sensitivity BIGINT NOT NULL,
                operation TEXT NOT NULL,
                outcome BIGINT NOT NULL,
                source BIGINT NOT NULL,
                currency TEXT NOT NULL,
                requests BIGINT NOT NULL,
                prompt BIGINT NOT NULL,
                completion BIGINT NOT NULL,
                cached BIGINT NOT NULL,
                reasoning BIGINT NOT NULL,
                cost DOUBLE PRECISION NOT NULL,
                gpu_seconds DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (month, {}))",
            AGGREGATED.join(", ")
        ),
        "CREATE INDEX vigie_usage_user ON vigie_usage (user_name)".into(),
    ]
}

/// The columns a monthly aggregate keeps; user, pod, endpoint, status and stream go
/// with the purged records.
pub const AGGREGATED: &[&str] = &[
    "namespace",
    "workload",
    "model",
    "served_model",
    "pool",
    "sensitivity",
    "operation",
    "outcome",
    "source",
    "currency",
];

/// A statement with `$n` placeholders (what both backends accept through the Any
/// driver; sqlx's `QueryBuilder` writes `?`, which PostgreSQL refuses).
#[derive(Default)]
struct Sql {
    text: String,
    binds: Vec<Bind>,
}

enum Bind {
    I64(i64),
    F64(f64),
    Text(String),
}

impl Sql {
    fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            binds: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn bind(&mut self, b: Bind) -> &mut Self {
        self.binds.push(b);
        self.text.push_str(&format!("${}", self.binds.len()));
        self
    }

    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for b in &self.binds {
            q = match b {
                Bind::I64(v) => q.bind(*v),
                Bind::F64(v) => q.bind(*v),
                Bind::Text(v) => q.bind(v.as_str()),
            };
        }
        q
    }
}

/// Rows per INSERT (26 parameters each). PostgreSQL: large statements amortize the
/// round trips. SQLite: binding through sqlx costs more per parameter the more a
/// statement has (1,000 records: 378 ms in 500-row statements, 15–21 ms in 10–20-row
/// ones, measured), so small statements in one transaction.
fn insert_chunk(d: Dialect) -> usize {
    match d {
        Dialect::Sqlite => 16,
        Dialect::Postgres => 500,
    }
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn u64_of(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The column a dimension groups by (never user input in SQL text).
pub fn dimension_column(d: UsageDimension) -> Option<&'static str> {
    Some(match d {
        UsageDimension::Unspecified => return None,
        UsageDimension::Namespace => "namespace",
        UsageDimension::Workload => "workload",
        UsageDimension::User => "user_name",
        UsageDimension::Model => "model",
        UsageDimension::ServedModel => "served_model",
        UsageDimension::Pool => "pool",
        UsageDimension::Endpoint => "endpoint",
        UsageDimension::Sensitivity => "sensitivity",
        UsageDimension::Outcome => "outcome",
        UsageDimension::Source => "source",
    })
}

/// What a retention purge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub records: u64,
    pub months: u64,
}

/// One group of [`SqlStore::usage_totals`]: key values (as text), bucket, currency.
#[derive(Debug, Clone, PartialEq)]
pub struct TotalsRow {
    pub key: Vec<String>,
    pub bucket_start_ms: i64,
    pub currency: String,
    pub requests: u64,
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
    pub reasoning: u64,
    pub estimated: u64,
    pub cost: f64,
    pub gpu_seconds: f64,
}

fn push_filter(q: &mut Sql, f: &UsageFilter, now_ms: i64) {
    let to = if f.to_ms > 0 { f.to_ms } else { now_ms + 1 };
    q.push(" WHERE started_at >= ").bind(Bind::I64(f.from_ms));
    q.push(" AND started_at < ").bind(Bind::I64(to));
    for (column, value) in [
        ("namespace", &f.namespace),
        ("workload", &f.workload),
        ("user_name", &f.user),
        ("model", &f.model),
        ("pool", &f.pool),
    ] {
        if !value.is_empty() {
            q.push(&format!(" AND {column} = "))
                .bind(Bind::Text(value.clone()));
        }
    }
}

fn record_from_row(row: &AnyRow) -> Result<UsageRecord, StoreError> {
    Ok(UsageRecord {
        id: row.try_get("id")?,
        started_at_ms: row.try_get("started_at")?,
        ended_at_ms: row.try_get("ended_at")?,
        namespace: row.try_get("namespace")?,
        workload: row.try_get("workload")?,
        pod: row.try_get("pod")?,
        user: row.try_get("user_name")?,
        user_verified: row.try_get::<i64, _>("user_verified")? != 0,
        model: row.try_get("model")?,
        served_model: row.try_get("served_model")?,
        pool: row.try_get("pool")?,
        endpoint: row.try_get("endpoint")?,
        sensitivity: i32::try_from(row.try_get::<i64, _>("sensitivity")?).unwrap_or(0),
        operation: row.try_get("operation")?,
        stream: row.try_get::<i64, _>("stream")? != 0,
        status: u32::try_from(row.try_get::<i64, _>("status")?).unwrap_or(0),
        outcome: i32::try_from(row.try_get::<i64, _>("outcome")?).unwrap_or(0),
        prompt_tokens: u64_of(row.try_get("prompt")?),
        completion_tokens: u64_of(row.try_get("completion")?),
        cached_prompt_tokens: u64_of(row.try_get("cached")?),
        reasoning_tokens: u64_of(row.try_get("reasoning")?),
        source: i32::try_from(row.try_get::<i64, _>("source")?).unwrap_or(0),
        currency: row.try_get("currency")?,
        cost: row.try_get("cost")?,
        gpu_seconds: row.try_get("gpu_seconds")?,
    })
}

impl SqlStore {
    /// Stores the records not stored yet; returns how many were new.
    pub(super) async fn insert_usage_rows(
        &self,
        records: &[UsageRecord],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut inserted = 0;
        let mut tx = self.pool.begin().await?;
        for chunk in records.chunks(insert_chunk(self.dialect)) {
            let mut q = Sql::new(
                "INSERT INTO vigie_usage (id, started_at, ended_at, namespace, workload, pod, user_name,
                 user_verified, model, served_model, pool, endpoint, sensitivity, operation, stream,
                 status, outcome, prompt, completion, cached, reasoning, source, currency, cost,
                 gpu_seconds, received_at) VALUES ",
            );
            for (n, r) in chunk.iter().enumerate() {
                q.push(if n == 0 { "(" } else { ", (" });
                let values = [
                    Bind::Text(r.id.clone()),
                    Bind::I64(r.started_at_ms),
                    Bind::I64(r.ended_at_ms),
                    Bind::Text(r.namespace.clone()),
                    Bind::Text(r.workload.clone()),
                    Bind::Text(r.pod.clone()),
                    Bind::Text(r.user.clone()),
                    Bind::I64(i64::from(r.user_verified)),
                    Bind::Text(r.model.clone()),
                    Bind::Text(r.served_model.clone()),
                    Bind::Text(r.pool.clone()),
                    Bind::Text(r.endpoint.clone()),
                    Bind::I64(i64::from(r.sensitivity)),
                    Bind::Text(r.operation.clone()),
                    Bind::I64(i64::from(r.stream)),
                    Bind::I64(i64::from(r.status)),
                    Bind::I64(i64::from(r.outcome)),
                    Bind::I64(i64_of(r.prompt_tokens)),
                    Bind::I64(i64_of(r.completion_tokens)),
                    Bind::I64(i64_of(r.cached_prompt_tokens)),
                    Bind::I64(i64_of(r.reasoning_tokens)),
                    Bind::I64(i64::from(r.source)),
                    Bind::Text(r.currency.clone()),
                    Bind::F64(r.cost),
                    Bind::F64(r.gpu_seconds),
                    Bind::I64(now_ms),
                ];
                for (i, v) in values.into_iter().enumerate() {
                    if i > 0 {
                        q.push(", ");
                    }
                    q.bind(v);
                }
                q.push(")");
            }
            q.push(" ON CONFLICT (id) DO NOTHING");
            inserted += q.query().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// Records in `filter`, ordered by (start, id), after `after`, at most `limit`.
    pub(super) async fn usage_page_at(
        &self,
        filter: &UsageFilter,
        after: Option<(i64, String)>,
        limit: u32,
        now_ms: i64,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let mut q = Sql::new("SELECT * FROM vigie_usage");
        push_filter(&mut q, filter, now_ms);
        if let Some((at, id)) = after {
            q.push(" AND (started_at > ")
                .bind(Bind::I64(at))
                .push(" OR (started_at = ")
                .bind(Bind::I64(at))
                .push(" AND id > ")
                .bind(Bind::Text(id))
                .push("))");
        }
        q.push(" ORDER BY started_at, id LIMIT ")
            .bind(Bind::I64(i64::from(limit)));
        let rows = q.query().fetch_all(&self.pool).await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Start of the oldest record, if any.
    pub(super) async fn oldest_usage(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MIN(started_at) AS m FROM vigie_usage")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("m")?)
    }

    /// Folds the records that started in `[from, to)` (one calendar month) into their
    /// monthly aggregates and deletes them, in one transaction: a crash leaves the
    /// month either whole or folded. Records reported late for a folded month are
    /// added to its aggregates by the next purge. Returns how many were deleted.
    pub(super) async fn fold_usage_month(&self, from: i64, to: i64) -> Result<u64, StoreError> {
        let kept = AGGREGATED.join(", ");
        let sums = [
            "requests",
            "prompt",
            "completion",
            "cached",
            "reasoning",
            "cost",
            "gpu_seconds",
        ]
        .iter()
        .map(|c| format!("{c} = vigie_usage_monthly.{c} + excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
        let mut tx = self.pool.begin().await?;
        if self.dialect == Dialect::Postgres {
            // One snapshot for both statements: a record committed between them would
            // otherwise be deleted without being counted.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(&format!(
            "INSERT INTO vigie_usage_monthly (month, {kept}, requests, prompt, completion, cached,
                reasoning, cost, gpu_seconds)
             SELECT CAST($1 AS BIGINT), {kept}, COUNT(*), CAST(SUM(prompt) AS BIGINT),
                CAST(SUM(completion) AS BIGINT), CAST(SUM(cached) AS BIGINT),
                CAST(SUM(reasoning) AS BIGINT), SUM(cost), SUM(gpu_seconds)
             FROM vigie_usage WHERE started_at >= $1 AND started_at < $2 GROUP BY {kept}
             ON CONFLICT (month, {kept}) DO UPDATE SET {sums}"
        ))
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await?;
        let deleted =
            sqlx::query("DELETE FROM vigie_usage WHERE started_at >= $1 AND started_at < $2")
                .bind(from)
                .bind(to)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        Ok(deleted)
    }

    /// Blanks the user of every record whose user is one of `values` (its pseudonym,
    /// and its clear value for records stored in clear); returns how many.
    pub(super) async fn erase_usage_user_rows(&self, values: &[String]) -> Result<u64, StoreError> {
        if values.is_empty() {
            return Ok(0);
        }
        let mut q = Sql::new(
            "UPDATE vigie_usage SET user_name = '', user_verified = 0 WHERE user_name IN (",
        );
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.bind(Bind::Text(v.clone()));
        }
        q.push(")");
        let erased = q.query().execute(&self.pool).await?.rows_affected();
        self.checkpoint().await?;
        Ok(erased)
    }

    /// SQLite: copies the write-ahead log into the database file and empties it, so
    /// erased and purged values (overwritten there, `secure_delete`) are gone from both.
    /// A reader holding an old snapshot keeps the log busy: retried for ~5 s, then left
    /// to the next erasure or retention pass (logged).
    pub(super) async fn checkpoint(&self) -> Result<(), StoreError> {
        if self.dialect != Dialect::Sqlite {
            return Ok(());
        }
        for attempt in 0..20 {
            let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.pool)
                .await?;
            let busy: i64 = row.try_get(0)?;
            if busy == 0 {
                return Ok(());
            }
            if attempt < 19 {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
        tracing::warn!(
            "erased or purged usage values are not yet overwritten in the database file: \
             a reader holds the write-ahead log; the next erasure or retention pass retries"
        );
        Ok(())
    }

    /// Replaces every user stored in clear by its pseudonym (a database written before
    /// pseudonymisation, or in clear mode); returns how many records changed.
    pub(super) async fn pseudonymise_usage_user_rows(
        &self,
        key: &crate::users::UserKey,
    ) -> Result<u64, StoreError> {
        let mut changed = 0;
        loop {
            let rows = sqlx::query(
                "SELECT DISTINCT user_name FROM vigie_usage
                 WHERE user_name <> '' AND user_name NOT LIKE 'hmac:%' LIMIT 500",
            )
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            let mut tx = self.pool.begin().await?;
            for row in &rows {
                let clear: String = row.try_get("user_name")?;
                changed +=
                    sqlx::query("UPDATE vigie_usage SET user_name = $1 WHERE user_name = $2")
                        .bind(key.pseudonym(&clear))
                        .bind(clear)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
            }
            tx.commit().await?;
        }
        if changed > 0 {
            self.checkpoint().await?;
        }
        Ok(changed)
    }

    /// Totals grouped by `columns` (from [`dimension_column`]) and fixed-width buckets
    /// of `bucket_ms` (0: one bucket), and always by currency.
    ///
    /// `with_months`: the monthly aggregates of purged records are counted too, each at
    /// its month's start (the caller checks that the filter and `columns` use only
    /// [`AGGREGATED`] columns).
    pub(super) async fn usage_totals_rows(
        &self,
        filter: &UsageFilter,
        columns: &[&'static str],
        bucket_ms: i64,
        with_months: bool,
        now_ms: i64,
    ) -> Result<Vec<TotalsRow>, StoreError> {
        let bucket = if bucket_ms > 0 {
            format!("(started_at - (started_at % {bucket_ms}))")
        } else {
            "0".to_string()
        };
        let keys: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("CAST({c} AS TEXT) AS k{i}"))
            .collect();
        let mut select = format!("SELECT {bucket} AS b, currency");
        for k in &keys {
            select.push_str(", ");
            select.push_str(k);
        }
        // Requests: one per record, `requests` per monthly aggregate.
        let n = if with_months { "n" } else { "1" };
        // SUM of BIGINT is NUMERIC in PostgreSQL: cast back for the Any driver.
        select.push_str(&format!(
            ", CAST(SUM({n}) AS BIGINT) AS requests, CAST(SUM(prompt) AS BIGINT) AS prompt,
             CAST(SUM(completion) AS BIGINT) AS completion, CAST(SUM(cached) AS BIGINT) AS cached,
             CAST(SUM(reasoning) AS BIGINT) AS reasoning,
             CAST(SUM(CASE WHEN source = 2 THEN {n} ELSE 0 END) AS BIGINT) AS estimated,
             SUM(cost) AS cost, SUM(gpu_seconds) AS gpu FROM "
        ));
        if with_months {
            let kept = AGGREGATED.join(", ");
            select.push_str(&format!(
                "(SELECT started_at, {kept}, 1 AS n, prompt, completion, cached, reasoning, cost,
                   gpu_seconds FROM vigie_usage
                 UNION ALL SELECT month AS started_at, {kept}, requests AS n, prompt, completion,
                   cached, reasoning, cost, gpu_seconds FROM vigie_usage_monthly) AS u"
            ));
        } else {
            select.push_str("vigie_usage");
        }
        let mut q = Sql::new(select);
        push_filter(&mut q, filter, now_ms);
        let mut group = vec!["b".to_string(), "currency".to_string()];
        group.extend((0..columns.len()).map(|i| format!("k{i}")));
        q.push(&format!(" GROUP BY {0} ORDER BY {0}", group.join(", ")));
        let rows = q.query().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(TotalsRow {
                    key: (0..columns.len())
                        .map(|i| row.try_get::<String, _>(format!("k{i}").as_str()))
                        .collect::<Result<_, _>>()?,
                    bucket_start_ms: row.try_get("b")?,
                    currency: row.try_get("currency")?,
                    requests: u64_of(row.try_get("requests")?),
                    prompt: u64_of(row.try_get("prompt")?),
                    completion: u64_of(row.try_get("completion")?),
                    cached: u64_of(row.try_get("cached")?),
                    reasoning: u64_of(row.try_get("reasoning")?),
                    estimated: u64_of(row.try_get("estimated")?),
                    cost: row.try_get("cost")?,
                    gpu_seconds: row.try_get("gpu")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store as _;

    fn rec(id: &str, at: i64, ns: &str, model: &str, prompt: u64, currency: &str) -> UsageRecord {
        UsageRecord {
            id: id.into(),
            started_at_ms: at,
            ended_at_ms: at + 5,
            namespace: ns.into(),
            workload: "app".into(),
            model: model.into(),
            pool: "gpu".into(),
            prompt_tokens: prompt,
            completion_tokens: 2 * prompt,
            source: if prompt == 7 { 2 } else { 1 },
            currency: currency.into(),
            cost: prompt as f64 / 100.0,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn purged_months_keep_their_totals_and_lose_their_users() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("u.db").display());
        let store = SqlStore::open(&url).await.unwrap();
        let day = 86_400_000;
        // 2026-10-05, 2026-10-20, 2026-11-03 and 2026-12-02 (UTC).
        let (oct, oct2, nov, dec) = (
            1_791_158_400_000,
            1_792_454_400_000,
            1_793_491_200_000 + 2 * day,
            1_796_083_200_000 + day,
        );
        let mut batch = vec![
            rec("a", oct, "team-a", "gpt", 10, "EUR"),
            rec("b", oct2, "team-a", "gpt", 7, "EUR"),
            rec("c", nov, "team-a", "gpt", 1, "EUR"),
            rec("d", dec, "team-b", "llama", 100, ""),
        ];
        for r in &mut batch {
            r.user = "hmac:0123456789abcdef0123456789abcdef".into();
        }
        store.insert_usage(&batch).await.unwrap();
        let all = UsageFilter {
            to_ms: dec + day,
            ..Default::default()
        };
        let before = store
            .usage_totals(&all, &["namespace", "model"], day, true)
            .await
            .unwrap();
        // Everything before 2026-12-01 goes: October and November.
        let purged = store.purge_usage(1_796_083_200_000).await.unwrap();
        assert_eq!((purged.records, purged.months), (3, 2));
        let left = store.usage_page(&all, None, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, "d");
        // Monthly totals: the same; daily ones put a purged month on its first day.
        let monthly = |rows: &[TotalsRow]| {
            let mut m: Vec<(i64, String, u64, u64, u64)> = rows
                .iter()
                .map(|r| {
                    let month = vigie_quota::Window::Month.bounds(r.bucket_start_ms).0;
                    (month, r.key.join("/"), r.requests, r.prompt, r.estimated)
                })
                .collect();
            m.sort();
            let mut merged: Vec<(i64, String, u64, u64, u64)> = Vec::new();
            for row in m {
                match merged.last_mut() {
                    Some(last) if last.0 == row.0 && last.1 == row.1 => {
                        last.2 += row.2;
                        last.3 += row.3;
                        last.4 += row.4;
                    }
                    _ => merged.push(row),
                }
            }
            merged
        };
        let after = store
            .usage_totals(&all, &["namespace", "model"], day, true)
            .await
            .unwrap();
        assert_eq!(monthly(&before), monthly(&after));
        // Without the aggregates (a query by user): only what is left.
        let records_only = store
            .usage_totals(&all, &["namespace"], 0, false)
            .await
            .unwrap();
        assert_eq!(records_only.len(), 1);
        // Purging again changes nothing; a record reported late for October is added
        // to October's aggregate by the next purge.
        assert_eq!(
            store.purge_usage(1_796_083_200_000).await.unwrap(),
            Purged::default()
        );
        store
            .insert_usage(&[rec("e", oct + day, "team-a", "gpt", 5, "EUR")])
            .await
            .unwrap();
        store.purge_usage(1_796_083_200_000).await.unwrap();
        let late = store
            .usage_totals(&all, &["namespace"], 0, true)
            .await
            .unwrap();
        let team_a = late.iter().find(|r| r.key[0] == "team-a").unwrap();
        assert_eq!((team_a.requests, team_a.prompt), (4, 23));
        // No user is kept in the aggregates: the file holds the pseudonym no more.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&store.pool)
            .await
            .unwrap();
        let kept: i64 = sqlx::query("SELECT COUNT(*) AS n FROM vigie_usage WHERE user_name <> ''")
            .fetch_one(&store.pool)
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(kept, 1, "only December's record keeps its user");
    }

    #[tokio::test]
    async fn an_erased_user_is_gone_from_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let store = SqlStore::open(&url).await.unwrap();
        let mut batch: Vec<UsageRecord> = (0..50)
            .map(|i| rec(&format!("r{i}"), 10 + i, "team-a", "gpt", 10, "EUR"))
            .collect();
        for (i, r) in batch.iter_mut().enumerate() {
            r.user = if i % 2 == 0 {
                "ana.lefevre@interieur.gouv.fr".into()
            } else {
                "bob@interieur.gouv.fr".into()
            };
        }
        store.insert_usage(&batch).await.unwrap();
        let forms = vec!["ana.lefevre@interieur.gouv.fr".to_string()];
        assert_eq!(store.erase_usage_user(&forms).await.unwrap(), 25);
        assert_eq!(store.erase_usage_user(&forms).await.unwrap(), 0);
        let file = std::fs::read(&path).unwrap();
        let needle = b"ana.lefevre@interieur.gouv.fr";
        assert!(
            !file.windows(needle.len()).any(|w| w == needle),
            "the erased user is still in the database file"
        );
        assert!(
            file.windows(21).any(|w| w == b"bob@interieur.gouv.fr"),
            "the other user stays (the check can find a user)"
        );
        let all = UsageFilter {
            to_ms: 1000,
            ..Default::default()
        };
        let totals = store.usage_totals(&all, &[], 0, false).await.unwrap();
        assert_eq!((totals[0].requests, totals[0].prompt), (50, 500));
    }

    #[tokio::test]
    async fn inserts_are_idempotent_and_totals_group_by_dimension_bucket_and_currency() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("u.db").display());
        let store = SqlStore::open(&url).await.unwrap();
        let hour = 3_600_000;
        let batch = vec![
            rec("a", 10, "team-a", "gpt", 10, "EUR"),
            rec("b", 20, "team-a", "gpt", 7, "EUR"),
            rec("c", hour + 1, "team-a", "gpt", 1, "USD"),
            rec("d", hour + 2, "team-b", "llama", 100, ""),
        ];
        assert_eq!(store.insert_usage(&batch).await.unwrap(), 4);
        // Resent (a crash before the sidecar saw the ack): nothing new.
        assert_eq!(store.insert_usage(&batch[..2]).await.unwrap(), 0);

        let all = UsageFilter {
            to_ms: 10 * hour,
            ..Default::default()
        };
        let rows = store
            .usage_totals(&all, &["namespace"], hour, false)
            .await
            .unwrap();
        let summary: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.bucket_start_ms,
                    r.currency.as_str(),
                    r.key[0].as_str(),
                    r.requests,
                    r.prompt,
                    r.estimated,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (0, "EUR", "team-a", 2, 17, 1),
                (hour, "", "team-b", 1, 100, 0),
                (hour, "USD", "team-a", 1, 1, 0),
            ]
        );
        assert!((rows[0].cost - 0.17).abs() < 1e-9);

        let team_a = UsageFilter {
            namespace: "team-a".into(),
            ..all.clone()
        };
        let page = store.usage_page(&team_a, None, 2).await.unwrap();
        assert_eq!(
            page.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(page[0], batch[0]);
        let rest = store
            .usage_page(&team_a, Some((20, "b".into())), 2)
            .await
            .unwrap();
        assert_eq!(
            rest.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
    }
}
