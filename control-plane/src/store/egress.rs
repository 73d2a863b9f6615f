//! Egress denials reported by the node agents (`vigie_egress_denials`): one row per
//! aggregated report entry (source, destination, count, first and last seen).

use sqlx::Row as _;
use vigie_proto::v1::EgressDenial;

use super::StoreError;
use super::sql::SqlStore;

pub(super) fn migration() -> Vec<String> {
    vec![
        "CREATE TABLE vigie_egress_denials (
            id BIGINT NOT NULL,
            node TEXT NOT NULL,
            namespace TEXT NOT NULL,
            pod TEXT NOT NULL,
            container TEXT NOT NULL,
            role TEXT NOT NULL,
            destination TEXT NOT NULL,
            port BIGINT NOT NULL,
            protocol TEXT NOT NULL,
            hook TEXT NOT NULL,
            command TEXT NOT NULL,
            count BIGINT NOT NULL,
            first_seen BIGINT NOT NULL,
            last_seen BIGINT NOT NULL)"
            .into(),
        "CREATE INDEX vigie_egress_denials_recent ON vigie_egress_denials (last_seen)".into(),
        "CREATE INDEX vigie_egress_denials_pod ON vigie_egress_denials (namespace, pod, last_seen)"
            .into(),
    ]
}

/// What ListDenials asks for.
#[derive(Debug, Clone, Default)]
pub struct DenialFilter {
    pub namespace: String,
    pub pod: String,
    pub limit: u32,
}

fn ms(t: Option<&pbjson_types::Timestamp>) -> i64 {
    t.map_or(0, |t| {
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos) / 1_000_000)
    })
}

/// Denials older than this are deleted as new ones arrive (a scanning pod adds rows
/// every report interval).
pub const RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;

impl SqlStore {
    pub(super) async fn insert_denial_rows(
        &self,
        rows: &[EgressDenial],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        // The id only orders rows of equal last_seen (arrival order); not a key.
        let id_base = now_ms.saturating_mul(1000);
        let mut tx = self.pool.begin().await?;
        for (i, d) in rows.iter().enumerate() {
            sqlx::query(
                "INSERT INTO vigie_egress_denials (id, node, namespace, pod, container, role, destination, port,
                     protocol, hook, command, count, first_seen, last_seen, reason)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            )
            .bind(id_base + i as i64)
            .bind(&d.node)
            .bind(&d.namespace)
            .bind(&d.pod)
            .bind(&d.container)
            .bind(&d.role)
            .bind(&d.destination)
            .bind(i64::from(d.port))
            .bind(&d.protocol)
            .bind(&d.hook)
            .bind(&d.command)
            .bind(i64::try_from(d.count).unwrap_or(i64::MAX))
            .bind(ms(d.first_seen.as_ref()))
            .bind(ms(d.last_seen.as_ref()))
            .bind(&d.reason)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM vigie_egress_denials WHERE last_seen < $1")
            .bind(now_ms - RETENTION_MS)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn denial_rows(
        &self,
        f: &DenialFilter,
    ) -> Result<Vec<EgressDenial>, StoreError> {
        let rows = sqlx::query(
            "SELECT node, namespace, pod, container, role, destination, port, protocol, hook, command, count,
                    first_seen, last_seen, reason
             FROM vigie_egress_denials
             WHERE ($1 = '' OR namespace = $1) AND ($2 = '' OR pod = $2)
             ORDER BY last_seen DESC, id DESC LIMIT $3",
        )
        .bind(&f.namespace)
        .bind(&f.pod)
        .bind(i64::from(f.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let port: i64 = r.try_get("port")?;
                let count: i64 = r.try_get("count")?;
                Ok(EgressDenial {
                    node: r.try_get("node")?,
                    namespace: r.try_get("namespace")?,
                    pod: r.try_get("pod")?,
                    container: r.try_get("container")?,
                    role: r.try_get("role")?,
                    destination: r.try_get("destination")?,
                    port: u32::try_from(port).unwrap_or(0),
                    protocol: r.try_get("protocol")?,
                    hook: r.try_get("hook")?,
                    reason: r.try_get("reason")?,
                    command: r.try_get("command")?,
                    count: u64::try_from(count).unwrap_or(0),
                    first_seen: Some(crate::service::timestamp(r.try_get("first_seen")?)),
                    last_seen: Some(crate::service::timestamp(r.try_get("last_seen")?)),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::timestamp;

    fn denial(pod: &str, last_seen_ms: i64) -> EgressDenial {
        EgressDenial {
            node: "n1".into(),
            namespace: "shop".into(),
            pod: pod.into(),
            destination: "10.1.2.3".into(),
            port: 443,
            protocol: "tcp".into(),
            hook: "connect4".into(),
            count: 2,
            first_seen: Some(timestamp(last_seen_ms - 5)),
            last_seen: Some(timestamp(last_seen_ms)),
            ..EgressDenial::default()
        }
    }

    #[tokio::test]
    async fn denials_are_listed_newest_first_and_old_ones_expire() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/d.db?mode=rwc", dir.path().display());
        let store = SqlStore::open(&url).await.unwrap();
        let now = 1_800_000_000_000;
        store
            .insert_denial_rows(&[denial("old", now - RETENTION_MS + 1000)], now - 2000)
            .await
            .unwrap();
        store
            .insert_denial_rows(&[denial("a", now - 10), denial("b", now)], now)
            .await
            .unwrap();
        let all = store
            .denial_rows(&DenialFilter {
                limit: 10,
                ..DenialFilter::default()
            })
            .await
            .unwrap();
        let pods: Vec<&str> = all.iter().map(|d| d.pod.as_str()).collect();
        assert_eq!(pods, ["b", "a", "old"]);
        assert_eq!(all[0].count, 2);
        assert_eq!(all[0].last_seen, Some(timestamp(now)));
        // Past the retention, the next insert deletes it.
        store
            .insert_denial_rows(&[denial("c", now + 2000)], now + 2000)
            .await
            .unwrap();
        let f = DenialFilter {
            namespace: "shop".into(),
            pod: "old".into(),
            limit: 10,
        };
        assert!(store.denial_rows(&f).await.unwrap().is_empty());
    }
}
