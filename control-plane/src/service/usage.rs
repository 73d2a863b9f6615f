//! `UsageService`: sidecars report their ledgers; admins and auditors query totals and
//! export raw records.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};
use vigie_proto::v1::usage_service_server::UsageService;
use vigie_proto::v1::{
    BudgetCounter, EraseUserRequest, EraseUserResponse, ExportUsageRequest, GetBudgetStatusRequest,
    GetBudgetStatusResponse, QueryUsageRequest, QueryUsageResponse, ReportUsageRequest,
    ReportUsageResponse, SensitivityLevel, TimeBucket, UsageDimension, UsageFilter, UsageOutcome,
    UsageRecord, UsageRow, UsageSource as RecordSource, UsageTotals,
};

use super::{invalid, store_error};
use crate::auth::{Authenticator, Role};
use crate::lanes::Admission;
use crate::store::AuditRecord;
use crate::store::usage::{AGGREGATED, TotalsRow, dimension_column};
use crate::store::{Store, now_ms};
use crate::users::LedgerUsers;
use vigie_proto::usage::{MAX_COST, MAX_FIELD_BYTES, MAX_GPU_SECONDS, MAX_TOKENS};

/// Longest comment of an erasure (a request reference, a ticket).
const MAX_ERASE_COMMENT: usize = 1024;
/// Largest batch a sidecar may report at once.
pub const MAX_REPORT: usize = 5000;
/// How long an export waits for its caller to read before it is ended.
const EXPORT_STALL: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest export: one caller reading slowly cannot hold a place for hours.
const EXPORT_LONGEST: std::time::Duration = std::time::Duration::from_secs(300);

fn too_long() -> Status {
    Status::deadline_exceeded(format!(
        "export ended after {EXPORT_LONGEST:?}; export the rest with a later filter.fromMs"
    ))
}
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone)]
pub struct UsageApi {
    pub store: Arc<dyn Store>,
    pub auth: Authenticator,
    pub metrics: crate::metrics::Metrics,
    pub reads: UsageReads,
    /// How end users are stored (pseudonymised by default).
    pub users: LedgerUsers,
    /// Records are kept for the current month and this many before it (0: forever);
    /// older ones are not stored.
    pub retention_months: u32,
}

impl UsageApi {
    /// The value a filter compares users with. A clear name is looked up through its
    /// pseudonym for admins only, and audited: for anyone else the lookup would be a
    /// way to test guessed addresses against the pseudonyms (an auditor copies a
    /// pseudonym from a query instead).
    async fn user_filter(
        &self,
        who: &crate::auth::Principal,
        call: &str,
        user: &str,
    ) -> Result<String, Status> {
        if user.is_empty() || self.users.is_clear() || crate::users::is_pseudonym(user) {
            return Ok(self.users.filter_value(user));
        }
        if who.role != Role::Admin {
            return Err(Status::permission_denied(
                "filter.user: only admins look a user up by name (audited); filter by the \
                 pseudonym (`hmac:…`) a query shows",
            ));
        }
        self.audit(
            who,
            "usage.lookup_user",
            format!("looked a user's usage up by name ({call})"),
            String::new(),
        )
        .await?;
        Ok(self.users.filter_value(user))
    }

    /// An audit event of this service (never naming an end user).
    async fn audit(
        &self,
        who: &crate::auth::Principal,
        action: &str,
        summary: String,
        comment: String,
    ) -> Result<(), Status> {
        self.store
            .append_audit(AuditRecord {
                id: 0,
                at_ms: crate::store::now_ms(),
                actor: who.name.clone(),
                role: who.role.to_string(),
                action: action.into(),
                policy: String::new(),
                revision: 0,
                summary,
                comment,
            })
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

/// Admission to the calls that scan the ledger: one caller's loop of heavy queries
/// waits on itself; reports, leases and watch streams never queue here.
#[derive(Debug, Clone)]
pub struct UsageReads {
    pub queries: Admission,
    pub exports: Admission,
}

impl Default for UsageReads {
    /// One query and one export per caller at once; two queries and two exports in
    /// all: the embedded store has four connections, and token lookups and reports
    /// need theirs (a query holds one while it runs; an export only while it reads a
    /// page). 10 s of waiting at most.
    fn default() -> Self {
        let wait = std::time::Duration::from_secs(10);
        Self {
            queries: Admission::new("QueryUsage", 1, 2, wait),
            exports: Admission::new("ExportUsage", 1, 2, wait),
        }
    }
}

fn check_record(i: usize, r: &UsageRecord) -> Result<(), Status> {
    let id_ok = !r.id.is_empty()
        && r.id.len() <= 128
        && r.id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !id_ok {
        return Err(invalid(
            &format!("records[{i}].id"),
            "1 to 128 characters among letters, digits, - _ . :",
        ));
    }
    if r.namespace.is_empty() {
        return Err(invalid(
            &format!("records[{i}].namespace"),
            "must not be empty",
        ));
    }
    if r.ended_at_ms < r.started_at_ms {
        return Err(invalid(
            &format!("records[{i}].endedAtMs"),
            "must not be before startedAtMs",
        ));
    }
    if !r.cost.is_finite() || r.cost < 0.0 || !r.gpu_seconds.is_finite() || r.gpu_seconds < 0.0 {
        return Err(invalid(
            &format!("records[{i}].cost"),
            "cost and gpuSeconds must be finite and not negative",
        ));
    }
    // vigie_proto::usage: bounds that keep the stores' sums out of overflow.
    for (field, n) in [
        ("promptTokens", r.prompt_tokens),
        ("completionTokens", r.completion_tokens),
        ("cachedPromptTokens", r.cached_prompt_tokens),
        ("reasoningTokens", r.reasoning_tokens),
    ] {
        if n > MAX_TOKENS {
            return Err(invalid(
                &format!("records[{i}].{field}"),
                &format!("at most {MAX_TOKENS} tokens per request"),
            ));
        }
    }
    if r.cost > MAX_COST || r.gpu_seconds > MAX_GPU_SECONDS {
        return Err(invalid(
            &format!("records[{i}].cost"),
            &format!("cost at most {MAX_COST}, gpuSeconds at most {MAX_GPU_SECONDS} per request"),
        ));
    }
    if r.started_at_ms < 0 || r.ended_at_ms > now_ms() + DAY_MS {
        return Err(invalid(
            &format!("records[{i}].endedAtMs"),
            "must be a time between 1970 and tomorrow",
        ));
    }
    for (field, v) in vigie_proto::usage::text_fields(r) {
        if v.len() > MAX_FIELD_BYTES {
            return Err(invalid(
                &format!("records[{i}].{field}"),
                &format!("at most {MAX_FIELD_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

fn check_filter(f: &UsageFilter) -> Result<(), Status> {
    if f.from_ms < 0 {
        return Err(invalid("filter.fromMs", "must not be negative"));
    }
    if f.to_ms != 0 && f.to_ms <= f.from_ms {
        return Err(invalid(
            "filter.toMs",
            "must be after fromMs (or 0 for now)",
        ));
    }
    Ok(())
}

fn enum_name(d: i32, stored: &str) -> String {
    let Ok(n) = stored.parse::<i32>() else {
        return stored.to_string();
    };
    let name = match UsageDimension::try_from(d) {
        Ok(UsageDimension::Outcome) => UsageOutcome::try_from(n).ok().map(|e| e.as_str_name()),
        Ok(UsageDimension::Source) => RecordSource::try_from(n).ok().map(|e| e.as_str_name()),
        Ok(UsageDimension::Sensitivity) => {
            SensitivityLevel::try_from(n).ok().map(|e| e.as_str_name())
        }
        _ => None,
    };
    name.map_or_else(|| stored.to_string(), String::from)
}

fn totals(r: &TotalsRow) -> UsageTotals {
    UsageTotals {
        requests: r.requests,
        prompt_tokens: r.prompt,
        completion_tokens: r.completion,
        cached_prompt_tokens: r.cached,
        reasoning_tokens: r.reasoning,
        estimated_requests: r.estimated,
        cost: r.cost,
        gpu_seconds: r.gpu_seconds,
    }
}

fn add(into: &mut UsageTotals, r: &TotalsRow) {
    into.requests += r.requests;
    into.prompt_tokens += r.prompt;
    into.completion_tokens += r.completion;
    into.cached_prompt_tokens += r.cached;
    into.reasoning_tokens += r.reasoning;
    into.estimated_requests += r.estimated;
    into.cost += r.cost;
    into.gpu_seconds += r.gpu_seconds;
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<UsageRecord, Status>> + Send>>;

#[tonic::async_trait]
impl UsageService for UsageApi {
    async fn report_usage(
        &self,
        req: Request<ReportUsageRequest>,
    ) -> Result<Response<ReportUsageResponse>, Status> {
        let who = self
            .auth
            .check(&req, &[Role::Admin, Role::Workload])
            .await?;
        let mut records = req.into_inner().records;
        if records.len() > MAX_REPORT {
            return Err(invalid(
                "records",
                &format!("at most {MAX_REPORT} per call"),
            ));
        }
        for (i, r) in records.iter().enumerate() {
            check_record(i, r)?;
            if who.role == Role::Workload && r.namespace != who.namespace {
                return Err(Status::permission_denied(format!(
                    "records[{i}].namespace: a workload of {} reports only its own usage",
                    who.namespace
                )));
            }
            // A token bound to a pod reports that pod's requests only.
            if who.role == Role::Workload && !who.pod.is_empty() && r.pod != who.pod {
                return Err(Status::permission_denied(format!(
                    "records[{i}].pod: this token reports only the usage of pod {}",
                    who.pod
                )));
            }
        }
        // Records older than the retention start are not stored: their month may be
        // folded already, and their id forgotten (a resend would count twice).
        let sent = records.len();
        if self.retention_months > 0 {
            let start = crate::retention::retention_start(now_ms(), self.retention_months);
            records.retain(|r| r.started_at_ms >= start);
        }
        let expired = u32::try_from(sent - records.len()).unwrap_or(u32::MAX);
        for r in &mut records {
            r.user = self.users.stored(&r.user);
        }
        let accepted = self
            .store
            .insert_usage(&records)
            .await
            .map_err(store_error)?;
        let accepted = u32::try_from(accepted).unwrap_or(u32::MAX);
        let total = u32::try_from(records.len()).unwrap_or(u32::MAX);
        self.metrics
            .usage_ingested(&records, accepted, total.saturating_sub(accepted));
        Ok(Response::new(ReportUsageResponse {
            accepted,
            duplicates: total.saturating_sub(accepted),
            expired,
        }))
    }

    async fn query_usage(
        &self,
        req: Request<QueryUsageRequest>,
    ) -> Result<Response<QueryUsageResponse>, Status> {
        let who = self.auth.check(&req, &[Role::Admin, Role::Auditor]).await?;
        let r = req.into_inner();
        let mut filter = r.filter.unwrap_or_default();
        check_filter(&filter)?;
        filter.user = self.user_filter(&who, "QueryUsage", &filter.user).await?;
        let _admitted = self.reads.queries.admit(&who.name).await?;
        let mut columns = Vec::new();
        for (i, d) in r.group_by.iter().enumerate() {
            let column = UsageDimension::try_from(*d)
                .ok()
                .and_then(dimension_column)
                .ok_or_else(|| invalid(&format!("groupBy[{i}]"), "not a usage dimension"))?;
            columns.push(column);
        }
        let bucket =
            TimeBucket::try_from(r.bucket).map_err(|_| invalid("bucket", "not a time bucket"))?;
        let width = match bucket {
            TimeBucket::Unspecified => 0,
            TimeBucket::Hour => HOUR_MS,
            TimeBucket::Day | TimeBucket::Month => DAY_MS,
        };
        // The monthly aggregates of purged records count too where they can: they
        // keep no user, pod, endpoint, status or stream flag.
        let with_months = filter.user.is_empty() && columns.iter().all(|c| AGGREGATED.contains(c));
        let mut rows = self
            .store
            .usage_totals(&filter, &columns, width, with_months)
            .await
            .map_err(store_error)?;
        // Enumerations by name, as grpcurl prints them elsewhere.
        for row in &mut rows {
            for (value, d) in row.key.iter_mut().zip(&r.group_by) {
                *value = enum_name(*d, value);
            }
        }
        let rows = if bucket == TimeBucket::Month {
            // Days merged into calendar months.
            let mut months: BTreeMap<(i64, String, Vec<String>), UsageTotals> = BTreeMap::new();
            for row in &rows {
                let key = (
                    vigie_quota::Window::Month.bounds(row.bucket_start_ms).0,
                    row.currency.clone(),
                    row.key.clone(),
                );
                add(months.entry(key).or_default(), row);
            }
            months
                .into_iter()
                .map(|((bucket_start_ms, currency, key), totals)| UsageRow {
                    bucket_start_ms,
                    key,
                    currency,
                    totals: Some(totals),
                })
                .collect()
        } else {
            rows.iter()
                .map(|row| UsageRow {
                    bucket_start_ms: row.bucket_start_ms,
                    key: row.key.clone(),
                    currency: row.currency.clone(),
                    totals: Some(totals(row)),
                })
                .collect()
        };
        Ok(Response::new(QueryUsageResponse { rows }))
    }

    async fn get_budget_status(
        &self,
        req: Request<GetBudgetStatusRequest>,
    ) -> Result<Response<GetBudgetStatusResponse>, Status> {
        self.auth.check(&req, &[Role::Admin, Role::Auditor]).await?;
        let budget = req.into_inner().budget;
        let counters = self
            .store
            .quota_status(&budget)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|c| BudgetCounter {
                budget: c.budget,
                key: serde_json::from_str(&c.key).unwrap_or_default(),
                window_start_ms: c.window_start_ms,
                window_end_ms: c.window_end_ms,
                limit: c.limit,
                charged: c.charged,
                remaining: (c.limit - c.charged).max(0.0),
            })
            .collect();
        Ok(Response::new(GetBudgetStatusResponse { counters }))
    }

    type ExportUsageStream = ExportStream;

    async fn erase_user(
        &self,
        req: Request<EraseUserRequest>,
    ) -> Result<Response<EraseUserResponse>, Status> {
        let who = self.auth.check(&req, &[Role::Admin]).await?;
        let r = req.into_inner();
        if r.user.is_empty() {
            return Err(invalid("user", "must not be empty"));
        }
        if r.user.len() > MAX_FIELD_BYTES {
            return Err(invalid("user", &format!("at most {MAX_FIELD_BYTES} bytes")));
        }
        if r.comment.len() > MAX_ERASE_COMMENT {
            return Err(invalid(
                "comment",
                &format!("at most {MAX_ERASE_COMMENT} bytes"),
            ));
        }
        // The audit trail keeps the comment: it must not bring the user back, in any
        // of its forms, nor name anyone (an address, a pseudonym).
        let forms = self.users.stored_forms(&r.user);
        let comment = r.comment.to_lowercase();
        let names = forms
            .iter()
            .any(|f| !f.is_empty() && comment.contains(&f.to_lowercase()));
        if names || comment.contains("hmac:") || comment.contains('@') {
            return Err(invalid(
                "comment",
                "must not contain the user, an address or a pseudonym (it is kept in the audit trail)",
            ));
        }
        let records = self
            .store
            .erase_usage_user(&forms)
            .await
            .map_err(store_error)?;
        let summary = format!("erased the user of {records} usage records");
        self.audit(&who, "usage.erase_user", summary, r.comment.clone())
            .await?;
        tracing::info!(
            target: "vigie::audit",
            actor = %who.name,
            role = %who.role,
            records,
            "usage user erased"
        );
        Ok(Response::new(EraseUserResponse { records }))
    }

    async fn export_usage(
        &self,
        req: Request<ExportUsageRequest>,
    ) -> Result<Response<Self::ExportUsageStream>, Status> {
        let who = self.auth.check(&req, &[Role::Admin, Role::Auditor]).await?;
        let mut filter = req.into_inner().filter.unwrap_or_default();
        check_filter(&filter)?;
        filter.user = self.user_filter(&who, "ExportUsage", &filter.user).await?;
        // Held until the stream ends: it ends when its caller has not read for
        // EXPORT_STALL, or after EXPORT_LONGEST in all (export a long period in
        // windows), with an error after the rows already sent.
        let admitted = self.reads.exports.admit(&who.name).await?;
        let store = self.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // The ending error goes outside the (full, when stalled) channel.
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<Status>();
        tokio::spawn(async move {
            let _admitted = admitted;
            let deadline = tokio::time::Instant::now() + EXPORT_LONGEST;
            let mut after = None;
            loop {
                if tokio::time::Instant::now() >= deadline {
                    let _ = end_tx.send(too_long());
                    return;
                }
                let page = match store.usage_page(&filter, after.clone(), 1000).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = end_tx.send(store_error(e));
                        return;
                    }
                };
                let Some(last) = page.last() else { return };
                after = Some((last.started_at_ms, last.id.clone()));
                let full = page.len() == 1000;
                for r in page {
                    let wait = EXPORT_STALL
                        .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                    match tokio::time::timeout(wait, tx.send(Ok(r))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return,
                        Err(_) => {
                            let _ = end_tx.send(if tokio::time::Instant::now() >= deadline {
                                too_long()
                            } else {
                                Status::deadline_exceeded(format!(
                                    "export not read for {EXPORT_STALL:?}; ended"
                                ))
                            });
                            return;
                        }
                    }
                }
                if !full {
                    return;
                }
            }
        });
        let rows = tokio_stream::wrappers::ReceiverStream::new(rx);
        let end = futures::stream::once(end_rx).filter_map(|r| async move { r.ok().map(Err) });
        Ok(Response::new(Box::pin(rows.chain(end))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_records_name_their_field() {
        let good = UsageRecord {
            id: "pod-1:42".into(),
            namespace: "team-a".into(),
            started_at_ms: 10,
            ended_at_ms: 20,
            ..Default::default()
        };
        assert!(check_record(0, &good).is_ok());
        for (bad, field) in [
            (
                UsageRecord {
                    id: "a b".into(),
                    ..good.clone()
                },
                "records[3].id",
            ),
            (
                UsageRecord {
                    namespace: String::new(),
                    ..good.clone()
                },
                "records[3].namespace",
            ),
            (
                UsageRecord {
                    ended_at_ms: 5,
                    ..good.clone()
                },
                "records[3].endedAtMs",
            ),
            (
                UsageRecord {
                    cost: f64::NAN,
                    ..good.clone()
                },
                "records[3].cost",
            ),
            // Sums that could overflow the stores' 64-bit integers.
            (
                UsageRecord {
                    prompt_tokens: u64::MAX,
                    ..good.clone()
                },
                "records[3].promptTokens",
            ),
            (
                UsageRecord {
                    reasoning_tokens: MAX_TOKENS + 1,
                    ..good.clone()
                },
                "records[3].reasoningTokens",
            ),
            (
                UsageRecord {
                    gpu_seconds: 1e300,
                    ..good.clone()
                },
                "records[3].cost",
            ),
            (
                UsageRecord {
                    ended_at_ms: i64::MAX,
                    ..good.clone()
                },
                "records[3].endedAtMs",
            ),
            (
                UsageRecord {
                    user: "u".repeat(MAX_FIELD_BYTES + 1),
                    ..good.clone()
                },
                "records[3].user",
            ),
        ] {
            let e = check_record(3, &bad).unwrap_err();
            assert!(e.message().starts_with(field), "{}", e.message());
        }
    }
}
