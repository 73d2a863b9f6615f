//! Ledger housekeeping, at start and then hourly, on the replica that holds the
//! `usage-retention` lease: usage records older than the retention are folded into
//! monthly aggregates (`vigie_usage_monthly`) and deleted, and budget counters of
//! windows that ended over a week ago are deleted (docs/metering.md).

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use vigie_quota::Window;

use crate::store::usage::Purged;
use crate::store::{Store, now_ms};

const EVERY: Duration = Duration::from_secs(3600);
const WEEK_MS: i64 = 7 * 86_400_000;
const LEASE: &str = "usage-retention";

/// Runs until aborted.
pub async fn run(store: Arc<dyn Store>, replica: String, retention_months: u32) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        once(store.as_ref(), &replica, retention_months, now_ms()).await;
    }
}

/// One pass; what was purged when this replica did it.
pub async fn once(
    store: &dyn Store,
    replica: &str,
    retention_months: u32,
    now: i64,
) -> Option<Purged> {
    let every = i64::try_from(EVERY.as_millis()).unwrap_or(i64::MAX / 4);
    match store.lease(LEASE, replica, now + 2 * every).await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(e) => {
            warn!(error = %e, "usage retention: the store is unavailable; retrying later");
            return None;
        }
    }
    match store.forget_quota_windows(now - WEEK_MS).await {
        Ok(0) => {}
        Ok(n) => info!(counters = n, "budget counters of ended windows deleted"),
        Err(e) => warn!(error = %e, "budget counters of ended windows not deleted"),
    }
    if retention_months == 0 {
        return None;
    }
    let before = retention_start(now, retention_months);
    match store.purge_usage(before).await {
        Ok(purged) => {
            if purged.records > 0 {
                info!(
                    records = purged.records,
                    months = purged.months,
                    before_ms = before,
                    "usage records past the retention folded into monthly aggregates"
                );
            }
            Some(purged)
        }
        Err(e) => {
            warn!(error = %e, "usage retention: purge failed; retrying later");
            None
        }
    }
}

/// Start of the oldest month kept: the current month and `months` before it.
pub fn retention_start(now_ms: i64, months: u32) -> i64 {
    let mut start = Window::Month.bounds(now_ms).0;
    for _ in 0..months {
        start = Window::Month.bounds(start - 1).0;
    }
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_month_and_the_retention_before_it_are_kept() {
        // 2026-12-07T12:00:00Z.
        let now = 1_796_644_800_000;
        // 2026-12-01, 2026-11-01, 2026-01-01, 2025-12-01.
        assert_eq!(retention_start(now, 0), 1_796_083_200_000);
        assert_eq!(retention_start(now, 1), 1_793_491_200_000);
        assert_eq!(retention_start(now, 11), 1_767_225_600_000);
        assert_eq!(retention_start(now, 12), 1_764_547_200_000);
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;
    use crate::store::quota::QuotaAsk;
    use crate::store::sql::SqlStore;

    fn ask(key: &str, start: i64, end: i64) -> QuotaAsk {
        QuotaAsk {
            budget: "p/per-user".into(),
            key: format!("[\"{key}\"]"),
            window_start_ms: start,
            window_end_ms: end,
            want: 1.0,
            overdraft: 0.0,
            limit: 10.0,
        }
    }

    #[tokio::test]
    async fn one_replica_deletes_the_counters_of_windows_ended_a_week_ago() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
        let store = SqlStore::open(&url).await.unwrap();
        let now = now_ms();
        let day = 86_400_000;
        store
            .grant_quota(&ask("ana", now - 10 * day, now - 8 * day))
            .await
            .unwrap();
        store
            .grant_quota(&ask("bob", now - day, now + day))
            .await
            .unwrap();
        // Another replica holds the lease: nothing is done here (the ended window is
        // still there to delete).
        assert!(store.lease(LEASE, "cp-1", now + 60_000).await.unwrap());
        assert_eq!(once(&store, "cp-2", 0, now).await, None);
        assert_eq!(store.forget_quota_windows(now - WEEK_MS).await.unwrap(), 1);
        // The lease holder: the ended window goes, the current one stays.
        store
            .grant_quota(&ask("ana", now - 10 * day, now - 8 * day))
            .await
            .unwrap();
        assert_eq!(once(&store, "cp-1", 0, now).await, None);
        assert_eq!(store.forget_quota_windows(now - WEEK_MS).await.unwrap(), 0);
        let keys: Vec<String> = store
            .quota_status("")
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(keys, ["[\"bob\"]"]);
    }
}
