//! Budget counters (`vigie_quota`): one row per budget, key and window, holding the
//! allowance granted so far. A grant is one atomic upsert, so concurrent sidecars and
//! replicas never hand out the same allowance twice.

use sqlx::Row as _;

use super::StoreError;
use super::sql::{Dialect, SqlStore};

pub(super) fn migration() -> Vec<String> {
    vec![
        "CREATE TABLE vigie_quota (
            budget TEXT NOT NULL,
            key TEXT NOT NULL,
            window_start BIGINT NOT NULL,
            granted DOUBLE PRECISION NOT NULL,
            last_grant DOUBLE PRECISION NOT NULL,
            limit_value DOUBLE PRECISION NOT NULL,
            window_end BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (budget, key, window_start))"
            .into(),
    ]
}

/// A lease request against one counter.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaAsk {
    /// `<policy>/<budget>`.
    pub budget: String,
    /// The `per` values, as a JSON array.
    pub key: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub want: f64,
    /// Charged first, unconditionally.
    pub overdraft: f64,
    pub limit: f64,
}

/// The counter after a grant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaGrant {
    /// Granted by this call (after the overdraft was charged).
    pub granted: f64,
    /// Charged so far in the window, overdrafts included.
    pub total: f64,
}

/// One counter of a current window.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaRow {
    pub budget: String,
    pub key: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub limit: f64,
    pub charged: f64,
}

impl SqlStore {
    /// Counters whose window has not ended, of budgets named `budget` (`policy/name`
    /// or `name`), or all.
    pub(super) async fn quota_rows(
        &self,
        budget: &str,
        now_ms: i64,
    ) -> Result<Vec<QuotaRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT budget, key, window_start, window_end, limit_value, granted FROM vigie_quota
             WHERE window_end > $1 AND ($2 = '' OR budget = $2 OR budget LIKE $3)
             ORDER BY budget, key",
        )
        .bind(now_ms)
        .bind(budget)
        .bind(format!("%/{}", budget.replace(['%', '_'], "")))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QuotaRow {
                    budget: r.try_get("budget")?,
                    key: r.try_get("key")?,
                    window_start_ms: r.try_get("window_start")?,
                    window_end_ms: r.try_get("window_end")?,
                    limit: r.try_get("limit_value")?,
                    charged: r.try_get("granted")?,
                })
            })
            .collect()
    }

    pub(super) async fn grant_quota_row(
        &self,
        ask: &QuotaAsk,
        now_ms: i64,
    ) -> Result<QuotaGrant, StoreError> {
        let (min, max) = match self.dialect {
            Dialect::Sqlite => ("MIN", "MAX"),
            Dialect::Postgres => ("LEAST", "GREATEST"),
        };
        let d = "DOUBLE PRECISION";
        // Both SET expressions read the row as it was: the overdraft is charged first,
        // then what is left up to the limit, at most `want`.
        let sql = format!(
            "INSERT INTO vigie_quota (budget, key, window_start, granted, last_grant, limit_value, window_end, updated_at)
             VALUES ($1, $2, $3,
                     CAST($4 AS {d}) + {min}(CAST($5 AS {d}), {max}(CAST($6 AS {d}) - CAST($4 AS {d}), 0.0)),
                     {min}(CAST($5 AS {d}), {max}(CAST($6 AS {d}) - CAST($4 AS {d}), 0.0)),
                     CAST($6 AS {d}), $8, $7)
             ON CONFLICT (budget, key, window_start) DO UPDATE SET
                 limit_value = CAST($6 AS {d}),
                 last_grant = {min}(CAST($5 AS {d}), {max}(CAST($6 AS {d}) - (vigie_quota.granted + CAST($4 AS {d})), 0.0)),
                 granted = vigie_quota.granted + CAST($4 AS {d})
                     + {min}(CAST($5 AS {d}), {max}(CAST($6 AS {d}) - (vigie_quota.granted + CAST($4 AS {d})), 0.0)),
                 updated_at = $7
             RETURNING granted, last_grant"
        );
        let row = sqlx::query(&sql)
            .bind(ask.budget.as_str())
            .bind(ask.key.as_str())
            .bind(ask.window_start_ms)
            .bind(ask.overdraft)
            .bind(ask.want)
            .bind(ask.limit)
            .bind(now_ms)
            .bind(ask.window_end_ms)
            .fetch_one(&self.pool)
            .await?;
        Ok(QuotaGrant {
            granted: row.try_get("last_grant")?,
            total: row.try_get("granted")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::QuotaAsk;
    use crate::store::Store as _;
    use crate::store::sql::SqlStore;

    fn ask(window_start_ms: i64, want: f64, overdraft: f64) -> QuotaAsk {
        QuotaAsk {
            budget: "p/b".into(),
            key: "[]".into(),
            window_start_ms,
            window_end_ms: window_start_ms + 60_000,
            want,
            overdraft,
            limit: 1000.0,
        }
    }

    #[tokio::test]
    async fn grants_stop_at_the_limit_and_overdrafts_are_charged_first() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("q.db").display());
        let store = SqlStore::open(&url).await.unwrap();
        let g = store.grant_quota(&ask(0, 400.0, 0.0)).await.unwrap();
        assert_eq!((g.granted, g.total), (400.0, 400.0));
        let g = store.grant_quota(&ask(0, 400.0, 100.0)).await.unwrap();
        assert_eq!((g.granted, g.total), (400.0, 900.0));
        let g = store.grant_quota(&ask(0, 400.0, 0.0)).await.unwrap();
        assert_eq!((g.granted, g.total), (100.0, 1000.0));
        let g = store.grant_quota(&ask(0, 400.0, 50.0)).await.unwrap();
        assert_eq!((g.granted, g.total), (0.0, 1050.0));
        let status = store.quota_rows("b", 30_000).await.unwrap();
        assert_eq!(status.len(), 1);
        assert_eq!((status[0].charged, status[0].limit), (1050.0, 1000.0));
        assert!(store.quota_rows("other", 30_000).await.unwrap().is_empty());
        // Another window, another counter.
        let g = store.grant_quota(&ask(60_000, 400.0, 0.0)).await.unwrap();
        assert_eq!(g.granted, 400.0);
    }
}
