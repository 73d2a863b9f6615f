//! `EgressService`: denials reported by the node agents, listed for the SOC.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::warn;
use vigie_proto::v1::egress_service_server::EgressService;
use vigie_proto::v1::{
    ListDenialsRequest, ListDenialsResponse, ReportDenialsRequest, ReportDenialsResponse,
};

use super::{invalid, store_error};
use crate::auth::{Authenticator, Role};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::egress::DenialFilter;

/// Most entries per report (an agent aggregates; more means a flood).
pub const MAX_REPORT: usize = 1000;
/// Longest name accepted (a DNS subdomain, as Kubernetes names).
const MAX_NAME: usize = 253;

#[derive(Debug, Clone)]
pub struct EgressApi {
    pub store: Arc<dyn Store>,
    pub auth: Authenticator,
    pub metrics: Metrics,
}

#[tonic::async_trait]
impl EgressService for EgressApi {
    async fn report_denials(
        &self,
        req: Request<ReportDenialsRequest>,
    ) -> Result<Response<ReportDenialsResponse>, Status> {
        let who = self.auth.check(&req, &[Role::Agent, Role::Admin]).await?;
        let denials = req.into_inner().denials;
        if denials.len() > MAX_REPORT {
            return Err(invalid(
                "denials",
                &format!("at most {MAX_REPORT} entries per report"),
            ));
        }
        for (i, d) in denials.iter().enumerate() {
            let p = |f: &str| format!("denials[{i}].{f}");
            if d.node.is_empty() {
                return Err(invalid(&p("node"), "must not be empty"));
            }
            if d.destination.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(&p("destination"), "must be an IP address"));
            }
            if d.port > u32::from(u16::MAX) {
                return Err(invalid(&p("port"), "must be at most 65535"));
            }
            if d.count == 0 {
                return Err(invalid(&p("count"), "must be at least 1"));
            }
            for (field, value) in [
                ("node", &d.node),
                ("namespace", &d.namespace),
                ("pod", &d.pod),
                ("container", &d.container),
                ("role", &d.role),
                ("protocol", &d.protocol),
                ("hook", &d.hook),
                ("reason", &d.reason),
                ("command", &d.command),
            ] {
                if value.len() > MAX_NAME {
                    return Err(invalid(&p(field), &format!("at most {MAX_NAME} bytes")));
                }
            }
        }
        self.store
            .insert_denials(&denials)
            .await
            .map_err(store_error)?;
        for d in &denials {
            self.metrics.egress_denials(&d.namespace, d.count);
            // The SOC's trail on the control plane too (the agent logs each on its node).
            warn!(target: "vigie::security", event = "egress.denied", reporter = %who.name, node = %d.node,
                  namespace = %d.namespace, pod = %d.pod, container = %d.container, destination = %d.destination,
                  port = d.port, protocol = %d.protocol, reason = %d.reason, count = d.count, "egress denied (reported by node agent)");
        }
        Ok(Response::new(ReportDenialsResponse {
            accepted: u32::try_from(denials.len()).unwrap_or(u32::MAX),
        }))
    }

    async fn list_denials(
        &self,
        req: Request<ListDenialsRequest>,
    ) -> Result<Response<ListDenialsResponse>, Status> {
        self.auth.check(&req, &[Role::Admin, Role::Auditor]).await?;
        let r = req.into_inner();
        let filter = DenialFilter {
            namespace: r.namespace,
            pod: r.pod,
            limit: match r.limit {
                0 => 100,
                n => n.min(1000),
            },
        };
        let denials = self.store.denials(&filter).await.map_err(store_error)?;
        Ok(Response::new(ListDenialsResponse { denials }))
    }
}
