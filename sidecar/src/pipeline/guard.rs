//! Guard: the request's sensitivity level (declared by the app, raised by what DLP
//! finds) and DLP on what the model will read, before anything leaves the pod.

use http::HeaderMap;

use super::{Refusal, RequestCtx, SidecarApp};
use crate::api::ApiError;
use crate::api::request::LlmRequest;
use crate::dlp::{self, Level, RequestScan};
use crate::upstream::detector;
use vigie_dlp::policy::CompiledDlp;

/// Sensitivity header when the policy has no DLP section to name one.
const DEFAULT_SENSITIVITY_HEADER: &str = "x-vigie-sensitivity";

/// Bodies larger than this are scanned on the blocking pool: a megabyte-sized scan
/// (tens of milliseconds, a second for a crafted digit run) must not hold up the worker
/// thread that serves the other requests.
pub(super) const OFF_WORKER_BYTES: usize = 64 * 1024;

pub async fn check(
    app: &SidecarApp,
    headers: &HeaderMap,
    ctx: &mut RequestCtx,
) -> Result<(), Refusal> {
    let declared = declared_level(ctx, headers)?;
    let mut level = declared;
    if let Some(policy) = ctx.snapshot.dlp.clone()
        && let Some(mut request) = ctx.request.take()
    {
        let (request, scan) = if request.len() <= OFF_WORKER_BYTES {
            let scan = dlp::scan_request(&policy, &mut request, declared);
            (request, scan)
        } else {
            let policy = policy.clone();
            tokio::task::spawn_blocking(move || {
                let scan = dlp::scan_request(&policy, &mut request, declared);
                (request, scan)
            })
            .await
            .map_err(|_| ApiError::dlp_unavailable())?
        };
        ctx.request = Some(request);
        let mut scan = scan?;
        // A stream would carry the answer past a detector that reads answers.
        if let Some(x) = policy.external.iter().find(|x| x.answers)
            && ctx.request.as_ref().is_some_and(|r| r.head().stream)
        {
            let e = ApiError::dlp_stream_not_allowed(&x.name);
            ctx.blocked("dlp_stream_not_allowed", e.status);
            return Err(e.into());
        }
        if scan.blocked.is_empty()
            && !policy.external.is_empty()
            && let Some(request) = ctx.request.as_mut()
        {
            external(app, &policy, request, &mut scan).await?;
        }
        ctx.findings(&scan.counts, "request");
        level = scan.level;
        if !scan.blocked.is_empty() {
            app.metrics
                .dlp_blocked
                .with_label_values(&["request"])
                .inc();
            let e = ApiError::dlp_blocked_request(&scan.blocked);
            ctx.blocked("dlp_request", e.status);
            return Err(e.into());
        }
        ctx.pseudonyms = scan.pseudonyms;
    }
    app.metrics
        .sensitivity
        .with_label_values(&[level.map_or("unspecified", Level::as_str)])
        .inc();
    ctx.set_level(level);
    Ok(())
}

/// The policy's external detectors, one after the other, on what the built-in ones
/// (and the detectors before) left in clear. A detector that cannot answer refuses
/// the request, unless its policy says it fails open.
async fn external(
    app: &SidecarApp,
    policy: &CompiledDlp,
    request: &mut LlmRequest,
    scan: &mut RequestScan,
) -> Result<(), ApiError> {
    let mut batch = dlp::external::request_batch(request)?;
    let replacements = policy.replacements();
    for d in &policy.external {
        if batch.is_empty() {
            return Ok(());
        }
        let metric = |outcome: &str, effect: &str| {
            app.metrics
                .dlp_external
                .with_label_values(&[d.name.as_str(), outcome, effect])
                .inc();
        };
        match detector::analyze(d, &batch.text).await {
            Ok(found) => {
                metric("ok", "used");
                let located = batch.locate(&found, &d.entities);
                if dlp::external::apply_to_request(request, d, located, scan, &replacements)? {
                    batch = dlp::external::request_batch(request)?;
                }
            }
            Err(e) if d.fail_open => {
                metric(e.outcome(), "failed_open");
                tracing::warn!(detector = %d.name, error = %e, "external detector failed; the request goes on with the built-in findings (fail open)");
            }
            Err(e) => {
                metric(e.outcome(), "failed_closed");
                tracing::warn!(detector = %d.name, error = %e, "external detector failed; the request is refused (fail closed)");
                return Err(ApiError::dlp_detector_unavailable(&d.name));
            }
        }
    }
    Ok(())
}

/// The level the app declares. An unreadable declaration is refused, never taken as
/// public (fail closed).
fn declared_level(ctx: &RequestCtx, headers: &HeaderMap) -> Result<Option<Level>, ApiError> {
    let header = ctx
        .snapshot
        .dlp
        .as_ref()
        .map_or(DEFAULT_SENSITIVITY_HEADER, |d| {
            d.sensitivity_header.as_str()
        });
    match headers.get(header) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(dlp::parse_level)
            .map(Some)
            .ok_or_else(|| ApiError::bad_sensitivity(header)),
    }
}
