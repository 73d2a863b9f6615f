//! `DiscoveryService.Watch`: the xDS-like stream to sidecars and node agents.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};
use vigie_proto::v1::discovery_service_server::DiscoveryService;
use vigie_proto::v1::{ClientKind, Identity, Snapshot, WatchRequest, watch_request};

use super::invalid;
use crate::auth::{Authenticator, Role};
use crate::hub::Hub;

/// Open watch streams per credential and replica (a namespace's replicas sharing one
/// Vigie token stay well under it; a pod-bound token needs one).
const MAX_WATCHES_PER_CREDENTIAL: usize = 4096;

/// Longest version string (and pod uid) a client may send: versions are short hashes.
const MAX_VERSION: usize = 128;

/// A client must say who it is this quickly after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an open stream's token is checked again: a revoked or expired token
/// loses its stream within this (plus the store's answer time).
const REAUTHENTICATE_EVERY: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct DiscoveryApi {
    pub auth: Authenticator,
    pub hub: Arc<Hub>,
}

/// Kubernetes' own bounds on the names an identity carries (a DNS label for a
/// namespace, a DNS subdomain for the others; label keys with their prefix).
fn check_identity(id: &Identity) -> Result<(), Status> {
    for (field, value, most) in [
        ("namespace", &id.namespace, 63),
        ("pod", &id.pod, 253),
        ("node", &id.node, 253),
        ("serviceAccount", &id.service_account, 253),
        ("workload", &id.workload, 253),
    ] {
        if value.len() > most {
            return Err(invalid(
                &format!("hello.identity.{field}"),
                &format!("at most {most} characters"),
            ));
        }
    }
    if id.labels.len() > 64 {
        return Err(invalid("hello.identity.labels", "at most 64 labels"));
    }
    if id.labels.iter().any(|(k, v)| k.len() > 317 || v.len() > 63) {
        return Err(invalid(
            "hello.identity.labels",
            "keys of at most 317 characters (prefix and name), values of at most 63",
        ));
    }
    Ok(())
}

/// The status key of a client: `namespace/pod` for sidecars, `node/<node>` for agents.
fn client_id(id: &Identity) -> Result<String, Status> {
    check_identity(id)?;
    match ClientKind::try_from(id.kind) {
        Ok(ClientKind::Sidecar) => {
            if id.namespace.is_empty() {
                return Err(invalid("hello.identity.namespace", "must not be empty"));
            }
            if id.pod.is_empty() {
                return Err(invalid(
                    "hello.identity.pod",
                    "must not be empty for a sidecar",
                ));
            }
            Ok(format!("{}/{}", id.namespace, id.pod))
        }
        Ok(ClientKind::EgressAgent) => {
            if id.node.is_empty() {
                return Err(invalid(
                    "hello.identity.node",
                    "must not be empty for an egress agent",
                ));
            }
            Ok(format!("node/{}", id.node))
        }
        _ => Err(invalid(
            "hello.identity.kind",
            "must be CLIENT_KIND_SIDECAR or CLIENT_KIND_EGRESS_AGENT",
        )),
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send>>;

#[tonic::async_trait]
impl DiscoveryService for DiscoveryApi {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = self
            .auth
            .check(&req, &[Role::Workload, Role::Agent, Role::Admin])
            .await?;
        let metadata = req.metadata().clone();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello received"))??;
        let Some(WatchRequest {
            message: Some(watch_request::Message::Hello(hello)),
        }) = first
        else {
            return Err(invalid("message", "the first message must be a hello"));
        };
        let identity = hello
            .identity
            .ok_or_else(|| invalid("hello.identity", "is required"))?;
        let client = client_id(&identity)?;
        for (field, value) in [
            ("hello.clientVersion", &hello.client_version),
            ("hello.currentVersion", &hello.current_version),
            ("hello.identity.podUid", &identity.pod_uid),
        ] {
            if value.len() > MAX_VERSION {
                return Err(invalid(field, &format!("at most {MAX_VERSION} characters")));
            }
        }
        if !who.may_act_as(&identity) {
            return Err(Status::permission_denied(format!(
                "token {:?} may not watch as namespace {:?} / service account {:?}",
                who.name, identity.namespace, identity.service_account
            )));
        }
        info!(client = %client, running = %hello.current_version, "watcher connected");
        let client_ref = crate::store::ClientRef {
            id: client.clone(),
            credential: who.credential(),
            bound: who.vouches_for(&identity),
        };
        // A namespace's pods may share a token; a token cannot hold the replica's
        // memory (or the status table) with endless streams.
        let open = self.hub.watches_by(&client_ref.credential);
        if open >= MAX_WATCHES_PER_CREDENTIAL {
            return Err(Status::resource_exhausted(format!(
                "this credential already holds {open} watch streams on this replica"
            )));
        }
        let registration = self
            .hub
            .register(client_ref, identity, hello.client_version);
        let id = registration.id;
        let snapshots = WatchStream::new(registration.snapshots.clone());
        let hub = self.hub.clone();
        // ACKs arrive on the request stream; when it ends, the client is gone and the
        // registration (moved here) unregisters it.
        tokio::spawn(async move {
            let _registration = registration;
            loop {
                match inbound.message().await {
                    Ok(Some(WatchRequest {
                        message: Some(watch_request::Message::Ack(ack)),
                    })) => hub.ack(id, ack),
                    Ok(Some(_)) => debug!(client = %client, "unexpected message ignored"),
                    Ok(None) | Err(_) => break,
                }
            }
            info!(client = %client, "watcher disconnected");
        });
        // The stream lives as long as the token: revoked or expired, it ends with
        // UNAUTHENTICATED (a store outage is not a revocation).
        let auth = self.auth.clone();
        let name = who.name.clone();
        let revoked = async move {
            loop {
                tokio::time::sleep(REAUTHENTICATE_EVERY).await;
                match auth.authenticate(&metadata).await {
                    Ok(p) if p == who => {}
                    Err(s) if s.code() == tonic::Code::Unavailable => {}
                    _ => break,
                }
            }
            info!(token = %name, "watch ended: its token is revoked or expired");
            Err(Status::unauthenticated(
                "the token of this stream was revoked or has expired",
            ))
        };
        let stream = snapshots
            .map(|s| Ok(Snapshot::clone(&s)))
            .map(Some)
            .chain(futures::stream::once(async { None }));
        // Snapshots until the hub closes (shutdown) or the token goes, whichever first.
        let stream = futures::stream::unfold(
            (Box::pin(stream), Box::pin(revoked), false),
            |(mut snaps, mut revoked, done)| async move {
                if done {
                    return None;
                }
                tokio::select! {
                    next = snaps.next() => next.flatten().map(|item| (item, (snaps, revoked, false))),
                    ended = &mut revoked => Some((ended, (snaps, revoked, true))),
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
