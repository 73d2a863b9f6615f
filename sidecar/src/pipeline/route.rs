//! Route: the pools the request may go to, in order, among those cleared for its
//! sensitivity level (`policy::plan`); the pool the app originally called first when the
//! kernel redirected its connection here.

use pingora::protocols::http::ServerSession;

use super::{Refusal, RequestCtx, SidecarApp};
use crate::api::ApiError;
use crate::policy::{PlanError, RouteContext, Snapshot, Target};

pub async fn plan<'s>(
    app: &SidecarApp,
    session: &ServerSession,
    ctx: &mut RequestCtx,
    snapshot: &'s Snapshot,
) -> Result<Vec<&'s Target>, Refusal> {
    // Where the app's connection was going, if the kernel redirected it here: only
    // asked while the policy has redirect rules.
    let redirects = snapshot
        .policy
        .egress
        .as_ref()
        .is_some_and(|e| !e.redirect.is_empty());
    let original = match (
        &app.original,
        session.client_addr().and_then(|a| a.as_inet()),
    ) {
        (Some(o), Some(peer)) if redirects => o.lookup(*peer).await,
        _ => None,
    };
    let route = RouteContext {
        level: ctx.level,
        headers: &session.req_header().headers,
        namespace: &app.settings.namespace,
        labels: &app.settings.labels,
        original,
    };
    let model = ctx.model().to_string();
    let targets = snapshot.plan(&model, &route).map_err(|e| match e {
        PlanError::UnknownModel => ApiError::model_not_found(&model),
        PlanError::NotCleared(level) => {
            app.metrics
                .route_refusals
                .with_label_values(&[level.as_str()])
                .inc();
            let e = ApiError::no_cleared_pool(&model, level.as_str());
            ctx.blocked("sensitivity_not_cleared", e.status);
            e
        }
    })?;
    ctx.original = original;
    Ok(targets)
}
