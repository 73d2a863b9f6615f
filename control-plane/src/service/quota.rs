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

/// Longest value of a budget key (a user name, a model name…).
const MAX_KEY_BYTES: usize = 512;

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
        // The key's namespace and workload values are the caller's own: a token leases
        // for its own counters, never another team's.
        for (i, (dim, value)) in spec.per.iter().zip(&r.key).enumerate() {
            let own = match dim {
                vigie_quota::KeyDim::Namespace => &identity.namespace,
                vigie_quota::KeyDim::Workload => &identity.workload,
                // The end user and the model are the request's (docs/budgets.md).
                vigie_quota::KeyDim::User | vigie_quota::KeyDim::Model => value,
            };
            if value != own {
                return Err(Status::permission_denied(format!(
                    "key[{i}]: a caller leases only for its own {}",
                    match dim {
                        vigie_quota::KeyDim::Namespace => "namespace",
                        _ => "workload",
                    }
                )));
            }
            if value.len() > MAX_KEY_BYTES {
                return Err(invalid(
                    &format!("key[{i}]"),
                    &format!("at most {MAX_KEY_BYTES} bytes"),
                ));
            }
        }
        // One call moves the counter by at most a tenth of the limit granted plus a
        // tenth charged as overdraft: no caller takes a whole budget in one call, and a
        // forged overdraft cannot push the counter to infinity.
        let per_call = spec.limit / 10.0;
        let key = serde_json::to_string(&r.key).unwrap_or_default();
        let id = format!("{policy}/{}", spec.name);
        let grant = self
            .store
            .grant_quota(&QuotaAsk {
                budget: id.clone(),
                key,
                window_start_ms: start,
                window_end_ms: end,
                want: r.want.min(per_call),
                overdraft: r.overdraft.min(per_call),
                limit: spec.limit,
            })
            .await
            .map_err(store_error)?;
        self.metrics.lease(&id, grant.granted, r.want.min(per_call));
        Ok(Response::new(AcquireLeaseResponse {
            granted: grant.granted,
            remaining: (spec.limit - grant.total).max(0.0),
            window_end_ms: end,
            limit: spec.limit,
        }))
    }
}
