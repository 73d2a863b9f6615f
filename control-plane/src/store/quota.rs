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

impl SqlStore {
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
            "INSERT INTO vigie_quota (budget, key, window_start, granted, last_grant, updated_at)
             VALUES ($1, $2, $3,
                     CAST($4 AS {d}) + {min}(CAST($5 AS {d}), {max}(CAST($6 AS {d}) - CAST($4 AS {d}), 0.0)),
                     {min}(CAST($5 AS {d}), {max}(CAST($6 AS {d}) - CAST($4 AS {d}), 0.0)),
                     $7)
             ON CONFLICT (budget, key, window_start) DO UPDATE SET
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
        // Another window, another counter.
        let g = store.grant_quota(&ask(60_000, 400.0, 0.0)).await.unwrap();
        assert_eq!(g.granted, 400.0);
    }
}
