//! `QuotaService`: sidecars lease budget allowance. The budget and its limit come from
//! the caller's effective policy, never from the request.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vigie_proto::v1::quota_service_server::QuotaService;
use vigie_proto::v1::{AcquireLeaseRequest, AcquireLeaseResponse};

use super::{invalid, store_error};
use crate::auth::{Authenticator, Role};
use crate::hub::Hub;
use crate::store::quota::QuotaAsk;
use crate::store::{Store, now_ms};

#[derive(Debug, Clone)]
pub struct QuotaApi {
    pub store: Arc<dyn Store>,
    pub auth: Authenticator,
    pub hub: Arc<Hub>,
    pub metrics: crate::metrics::Metrics,
}

#[tonic::async_trait]
impl QuotaService for QuotaApi {
    async fn acquire_lease(
        &self,
        req: Request<AcquireLeaseRequest>,
    ) -> Result<Response<AcquireLeaseResponse>, Status> {
        let who = self
            .auth
            .check(&req, &[Role::Admin, Role::Workload])
            .await?;
        let r = req.into_inner();
        let identity = r.identity.ok_or_else(|| invalid("identity", "required"))?;
        if identity.namespace.is_empty() {
            return Err(invalid("identity.namespace", "required"));
        }
        if !who.may_act_as(&identity) {
            return Err(Status::permission_denied(format!(
                "token {:?} may not lease for namespace {:?}",
                who.name, identity.namespace
            )));
        }
        for (field, v) in [("want", r.want), ("overdraft", r.overdraft)] {
            if !v.is_finite() || v < 0.0 {
                return Err(invalid(field, "must be a finite number, not negative"));
            }
        }
        let effective = self.hub.effective_for(&identity);
        let policy = effective
            .sources
            .iter()
            .find(|s| s.section == "budgets")
            .map(|s| s.policy.clone());
        let budget = effective
            .policy
            .as_ref()
            .and_then(|p| p.budgets.as_ref())
            .and_then(|b| b.budgets.iter().find(|x| x.name == r.budget));
        let (Some(policy), Some(budget)) = (policy, budget) else {
            return Err(Status::not_found(format!(
                "budget: {:?} is not in the effective policy of {}",
                r.budget, identity.namespace
            )));
        };
        let spec = vigie_quota::Budget::from_policy(budget);
        if r.key.len() != spec.per.len() {
            return Err(invalid(
                "key",
                &format!("{} values expected (the budget's `per`)", spec.per.len()),
            ));
        }
        let (start, end) = spec.window.bounds(r.window_start_ms);
        // Only the current window (or the one that just ended, for a late overdraft).
        let now = now_ms();
        if start != r.window_start_ms || end < now - (end - start) || start > now + 5_000 {
            return Err(invalid(
                "windowStartMs",
                "not the start of the budget's current window",
            ));
        }
        let key = serde_json::to_string(&r.key).unwrap_or_default();
        let id = format!("{policy}/{}", spec.name);
        let grant = self
            .store
            .grant_quota(&QuotaAsk {
                budget: id.clone(),
                key,
                window_start_ms: start,
                window_end_ms: end,
                want: r.want,
                overdraft: r.overdraft,
                limit: spec.limit,
            })
            .await
            .map_err(store_error)?;
        self.metrics.lease(&id, grant.granted, r.want);
        Ok(Response::new(AcquireLeaseResponse {
            granted: grant.granted,
            remaining: (spec.limit - grant.total).max(0.0),
            window_end_ms: end,
            limit: spec.limit,
        }))
    }
}
