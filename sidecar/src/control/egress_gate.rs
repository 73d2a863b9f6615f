//! Readiness gated on egress enforcement (`--egress-required`).
//!
//! The egress agent enrols a pod a moment after it appears; a native sidecar's startup
//! probe holds back the app containers until the sidecar is ready. So the sidecar is
//! not ready until the kernel refuses a connection no policy allows it: proof that
//! this pod is enforced, and the app never starts unenforced.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{info, warn};

/// TEST-NET-1 (RFC 5737), the discard port: never a pool, never the control plane; the
/// control plane refuses policies that allow it to sidecars.
pub const CANARY: SocketAddr = SocketAddr::V4(SocketAddrV4::new(
    Ipv4Addr::new(
        vigie_proto::validate::EGRESS_CANARY.0[0],
        vigie_proto::validate::EGRESS_CANARY.0[1],
        vigie_proto::validate::EGRESS_CANARY.0[2],
        vigie_proto::validate::EGRESS_CANARY.0[3],
    ),
    vigie_proto::validate::EGRESS_CANARY.1,
));

/// Whether the kernel refuses the canary at once (EPERM from the egress programs).
/// Unenforced, the connect times out or is unreachable: never a refusal.
pub fn enforced_now() -> bool {
    match TcpStream::connect_timeout(&CANARY, Duration::from_millis(100)) {
        Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
        Ok(_) => false,
    }
}

/// Keeps `enforced` current: every second until enforcement shows, then every 10 s.
pub async fn watch(enforced: Arc<AtomicBool>) {
    loop {
        let now = tokio::task::spawn_blocking(enforced_now)
            .await
            .unwrap_or(false);
        let was = enforced.swap(now, Ordering::Relaxed);
        if now && !was {
            info!("egress enforcement in place for this pod");
        } else if was && !now {
            warn!("egress enforcement no longer observed: not ready");
        }
        tokio::time::sleep(Duration::from_secs(if now { 10 } else { 1 })).await;
    }
}
