//! Guard: the request's sensitivity level (declared by the app, raised by what DLP
//! finds) and DLP on what the model will read, before anything leaves the pod.

use http::HeaderMap;

use super::{Refusal, RequestCtx, SidecarApp};
use crate::api::ApiError;
use crate::dlp::{self, Level};

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
            tokio::task::spawn_blocking(move || {
                let scan = dlp::scan_request(&policy, &mut request, declared);
                (request, scan)
            })
            .await
            .map_err(|_| ApiError::dlp_unavailable())?
        };
        ctx.request = Some(request);
        let scan = scan?;
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
