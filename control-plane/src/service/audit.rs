//! `AuditService`: who changed what, when.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vigie_proto::v1::audit_service_server::AuditService;
use vigie_proto::v1::{AuditEvent, ListAuditEventsRequest, ListAuditEventsResponse};

use super::{store_error, timestamp};
use crate::auth::{Authenticator, Role};
use crate::store::{AuditFilter, Store};

#[derive(Debug, Clone)]
pub struct AuditApi {
    pub store: Arc<dyn Store>,
    pub auth: Authenticator,
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        req: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        self.auth.check(&req, &[Role::Admin, Role::Auditor]).await?;
        let r = req.into_inner();
        let filter = AuditFilter {
            policy: r.policy,
            actor: r.actor,
            limit: match r.limit {
                0 => 100,
                n => n.min(1000),
            },
        };
        let events = self
            .store
            .audit(&filter)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|e| AuditEvent {
                id: e.id,
                at: Some(timestamp(e.at_ms)),
                actor: e.actor,
                role: e.role,
                action: e.action,
                policy: e.policy,
                revision: e.revision,
                summary: e.summary,
                comment: e.comment,
            })
            .collect();
        Ok(Response::new(ListAuditEventsResponse { events }))
    }
}
