//! `StatusService`: which clients run which version, which rejected what and why.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vigie_proto::v1::status_service_server::StatusService;
use vigie_proto::v1::{ClientStatus, ListClientsRequest, ListClientsResponse};

use super::{store_error, timestamp};
use crate::auth::{Authenticator, Role};
use crate::store::{Store, now_ms};

/// A client whose replica has not refreshed it for this long is reported as
/// disconnected (its replica died without saying so). Replicas heartbeat every 5 s.
const STALE_AFTER_MS: i64 = 20_000;

#[derive(Debug, Clone)]
pub struct StatusApi {
    pub store: Arc<dyn Store>,
    pub auth: Authenticator,
}

#[tonic::async_trait]
impl StatusService for StatusApi {
    async fn list_clients(
        &self,
        req: Request<ListClientsRequest>,
    ) -> Result<Response<ListClientsResponse>, Status> {
        self.auth.check(&req, &[Role::Admin, Role::Auditor]).await?;
        let r = req.into_inner();
        let now = now_ms();
        let clients = self
            .store
            .clients()
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|c| {
                let connected = c.connected && now - c.last_seen_ms < STALE_AFTER_MS;
                (c, connected)
            })
            .filter(|(c, connected)| {
                (r.namespace.is_empty() || c.identity.namespace == r.namespace)
                    && (!r.nacked_only
                        || (!c.nacked_version.is_empty() && c.nacked_version == c.sent_version))
                    && (r.include_disconnected || *connected)
            })
            .map(|(c, connected)| ClientStatus {
                client_id: c.client_id,
                identity: Some(c.identity),
                connected,
                replica: c.replica,
                connected_at: Some(timestamp(c.connected_at_ms)),
                last_seen: Some(timestamp(c.last_seen_ms)),
                sent_version: c.sent_version,
                acked_version: c.acked_version,
                nacked_version: c.nacked_version,
                nack_error: c.nack_error,
                nacked_at: (c.nacked_at_ms > 0).then(|| timestamp(c.nacked_at_ms)),
                client_version: c.client_version,
                credential: c.credential,
                pod_bound: c.bound,
            })
            .collect();
        Ok(Response::new(ListClientsResponse { clients }))
    }
}
