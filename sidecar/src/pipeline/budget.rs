//! Budget: the request's estimate reserved from every budget it matches, or a refusal
//! (429 with `Retry-After`, or 503 when allowance cannot be had and the policy fails
//! closed). The context settles the reservation with the real figures.

use opentelemetry::KeyValue;
use tracing::info;

use super::{Refusal, RequestCtx, SidecarApp};
use crate::api::ApiError;
use crate::policy::{Snapshot, Target};

pub async fn admit(
    app: &SidecarApp,
    ctx: &mut RequestCtx,
    snapshot: &Snapshot,
    targets: &[&Target],
) -> Result<(), Refusal> {
    if snapshot.budgets.is_empty() {
        return Ok(());
    }
    let Some(request) = ctx.request.as_ref() else {
        return Ok(());
    };
    // Cost at the dearest price, per currency, of the pools the request may reach.
    let prices = targets
        .iter()
        .filter_map(|t| snapshot.pools[t.pool].cost.as_ref())
        .map(|c| vigie_quota::Price {
            currency: &c.currency,
            input_per_1k: c.input_per_1k,
            output_per_1k: c.output_per_1k,
        });
    let estimate = vigie_quota::Request {
        namespace: app.settings.namespace.clone(),
        workload: app.settings.workload.clone(),
        user: ctx.user.name.clone(),
        model: request.model().to_string(),
        ..Default::default()
    }
    .estimate(
        request.len(),
        request
            .head()
            .max_tokens
            .unwrap_or(snapshot.default_max_tokens),
        prices,
    );
    let decision = app
        .quota
        .admit(
            &snapshot.budgets,
            &estimate,
            snapshot.budgets_fail_open,
            super::account::now_ms(),
        )
        .await;
    // A telemetry event per decision that is not a plain admission (never the user:
    // it may be personal data).
    let count = |budget: &str, what: &str| {
        app.metrics
            .budget_decisions
            .with_label_values(&[budget, what])
            .inc();
        info!(target: "vigie::budget", budget, decision = what, model = %estimate.model, "budget decision");
    };
    match decision {
        vigie_quota::Decision::Admit {
            reservation,
            warnings,
        } => {
            for w in &warnings {
                count(w, "warned");
            }
            ctx.span.set(KeyValue::new(
                "vigie.budget.decision",
                if warnings.is_empty() {
                    "admitted"
                } else {
                    "warned"
                },
            ));
            ctx.reserved(app.quota.clone(), reservation, warnings);
            Ok(())
        }
        vigie_quota::Decision::Reject {
            budget,
            retry_after_s,
        } => {
            count(&budget, "rejected");
            ctx.budget_refused(&budget, "rejected");
            Err(ApiError::budget_exceeded(&budget, retry_after_s).into())
        }
        vigie_quota::Decision::Unavailable { budget } => {
            count(&budget, "unavailable");
            ctx.budget_refused(&budget, "unavailable");
            Err(ApiError::quota_unavailable(&budget).into())
        }
    }
}
