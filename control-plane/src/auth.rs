//! Bearer tokens with roles.
//!
//! A token reads `vigie_<id>_<secret>`. Only the SHA-256 of the secret is stored: the
//! secret is 192 random bits, so a fast hash is enough (no password stretching is
//! needed for a value nobody chose), and a stolen database yields no usable token.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tonic::{Request, Status};
use vigie_proto::v1::{ClientKind, Identity};

use crate::k8s_tokens::K8sTokens;
use crate::store::{Store, TokenRecord, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Writes policies; reads everything.
    Admin,
    /// Reads policies, revisions, audit, status and usage.
    Auditor,
    /// Watches and reports for its own identity only.
    Workload,
    /// An egress agent: watches every live policy (for the pods of its node), nothing else.
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Workload => "workload",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "auditor" => Ok(Role::Auditor),
            "workload" => Ok(Role::Workload),
            "agent" => Ok(Role::Agent),
            other => Err(format!(
                "unknown role {other:?} (admin, auditor, workload or agent)"
            )),
        }
    }
}

/// Who is calling, once the token is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub namespace: String,
    pub service_account: String,
    /// The pod a projected service-account token is bound to (empty for Vigie tokens,
    /// which a namespace's replicas share).
    pub pod: String,
    /// The node of that pod, when the token says (Kubernetes 1.30+ puts it in
    /// pod-bound tokens): an egress agent's token then speaks for its node only.
    pub node: String,
}

impl Principal {
    /// The credential as the status view records it, with what binds it: two tokens of
    /// one service account, one bound to a pod (or node) and one not, are two
    /// credentials.
    pub fn credential(&self) -> String {
        match (self.pod.is_empty(), self.node.is_empty()) {
            (false, _) => format!("{}#pod={}", self.name, self.pod),
            (true, false) => format!("{}#node={}", self.name, self.node),
            (true, true) => self.name.clone(),
        }
    }

    /// Whether the token itself vouches for the status key of `identity` (its pod for a
    /// sidecar, its node for an egress agent), rather than the client declaring it.
    pub fn vouches_for(&self, identity: &Identity) -> bool {
        if identity.kind == ClientKind::EgressAgent as i32 {
            !self.node.is_empty() && identity.node == self.node
        } else {
            !self.pod.is_empty() && identity.pod == self.pod
        }
    }

    /// A workload token may only speak for the namespace (and service account, when
    /// the token names one, and pod, when it is bound to one) it was issued for.
    pub fn may_act_as(&self, identity: &Identity) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Auditor => false,
            // Agents see every policy; only they may ask for that view, and a token that
            // names its node only for that node.
            Role::Agent => {
                identity.kind == ClientKind::EgressAgent as i32
                    && (self.node.is_empty() || identity.node == self.node)
            }
            Role::Workload => {
                identity.kind != ClientKind::EgressAgent as i32
                    && identity.namespace == self.namespace
                    && (self.service_account.is_empty()
                        || identity.service_account == self.service_account)
                    && (self.pod.is_empty() || identity.pod == self.pod)
            }
        }
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(hex::encode(buf))
}

/// A new token: the record to store and the only copy of the token text.
pub fn new_token(
    name: &str,
    role: Role,
    namespace: &str,
    service_account: &str,
) -> Result<(TokenRecord, String), getrandom::Error> {
    let id = random_hex(8)?;
    let secret = random_hex(24)?;
    let record = TokenRecord {
        id: id.clone(),
        name: name.to_string(),
        role,
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        secret_sha256: sha256_hex(&secret),
        created_at_ms: now_ms(),
        revoked: false,
    };
    Ok((record, format!("vigie_{id}_{secret}")))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The refusal of a call the principal's role does not allow.
pub fn role_refused(principal: &Principal, allowed: &[Role]) -> Status {
    let names: Vec<_> = allowed.iter().map(|r| r.as_str()).collect();
    Status::permission_denied(format!(
        "token {:?} has role {}; this call needs {}",
        principal.name,
        principal.role,
        names.join(" or ")
    ))
}

/// Checks the `authorization` metadata of calls against the token table.
#[derive(Debug, Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    k8s: Option<Arc<K8sTokens>>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, k8s: None }
    }

    /// Also accept Kubernetes service-account tokens as workload credentials.
    pub fn with_k8s_tokens(mut self, k8s: Arc<K8sTokens>) -> Self {
        self.k8s = Some(k8s);
        self
    }

    /// The caller, if its token is valid and its role is one of `allowed`.
    pub async fn check<T>(&self, req: &Request<T>, allowed: &[Role]) -> Result<Principal, Status> {
        // Already verified by the gate before the message was decoded (crate::gate).
        let verified = req.extensions().get::<Principal>().cloned();
        let principal = match verified {
            Some(p) => p,
            None => match self.authenticate(req.metadata()).await {
                Ok(p) => p,
                Err(status) => {
                    crate::events::access_denied(req, None, "unauthenticated");
                    return Err(status);
                }
            },
        };
        if allowed.contains(&principal.role) {
            Ok(principal)
        } else {
            crate::events::access_denied(req, Some(&principal), "role");
            Err(role_refused(&principal, allowed))
        }
    }

    pub async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Principal, Status> {
        const HINT: &str = "send `authorization: Bearer <token>` (create one with `vigie-control-plane token create`)";
        let Some(value) = metadata.get("authorization") else {
            return Err(Status::unauthenticated(format!("missing token: {HINT}")));
        };
        let text = value
            .to_str()
            .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or_else(|| Status::unauthenticated(format!("not a bearer token: {HINT}")))?
            .trim();
        // Never echo the token back: errors only say what was wrong with it.
        let invalid = || Status::unauthenticated("invalid or revoked token");
        let Some(rest) = token.strip_prefix("vigie_") else {
            return match &self.k8s {
                Some(k8s) if token.split('.').count() == 3 => k8s
                    .verify(token)
                    .map_err(|e| Status::unauthenticated(format!("service-account token: {e}"))),
                _ => Err(invalid()),
            };
        };
        let (id, secret) = rest.split_once('_').ok_or_else(invalid)?;
        let record = self
            .store
            .token(id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "token lookup failed");
                Status::unavailable("token store unavailable")
            })?
            .ok_or_else(invalid)?;
        // Names a token may not carry (made before they were reserved): the
        // reconciler's, and service-account subjects.
        let reserved =
            record.name == crate::gitops::GITOPS_ACTOR || record.name.starts_with("system:");
        if record.revoked
            || reserved
            || !constant_time_eq(
                sha256_hex(secret).as_bytes(),
                record.secret_sha256.as_bytes(),
            )
        {
            return Err(invalid());
        }
        Ok(Principal {
            name: record.name,
            role: record.role,
            namespace: record.namespace,
            service_account: record.service_account,
            pod: String::new(),
            node: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_secret_is_only_stored_hashed() {
        let (rec, token) = new_token("ci", Role::Admin, "", "").unwrap();
        assert!(token.starts_with(&format!("vigie_{}_", rec.id)));
        let secret = token.rsplit('_').next().unwrap();
        assert_eq!(secret.len(), 48);
        assert_eq!(rec.secret_sha256, sha256_hex(secret));
        assert!(!format!("{rec:?}").contains(secret));
    }

    #[test]
    fn workload_may_only_act_as_itself() {
        let p = Principal {
            name: "w".into(),
            role: Role::Workload,
            namespace: "team-a".into(),
            service_account: "chat".into(),
            pod: String::new(),
            node: String::new(),
        };
        let mut id = Identity {
            namespace: "team-a".into(),
            service_account: "chat".into(),
            ..Default::default()
        };
        assert!(p.may_act_as(&id));
        id.service_account = "other".into();
        assert!(!p.may_act_as(&id));
        id.service_account = "chat".into();
        id.namespace = "team-b".into();
        assert!(!p.may_act_as(&id));
    }

    #[test]
    fn a_pod_bound_token_acts_for_its_pod_only() {
        let p = Principal {
            name: "system:serviceaccount:team-a:chat".into(),
            role: Role::Workload,
            namespace: "team-a".into(),
            service_account: "chat".into(),
            pod: "chat-1".into(),
            node: String::new(),
        };
        let mut id = Identity {
            namespace: "team-a".into(),
            service_account: "chat".into(),
            pod: "chat-1".into(),
            ..Default::default()
        };
        assert!(p.may_act_as(&id));
        id.pod = "chat-2".into();
        assert!(!p.may_act_as(&id));
    }

    #[test]
    fn a_node_bound_agent_token_speaks_for_its_node_only() {
        let agent = Principal {
            name: "system:serviceaccount:vigie-system:vigie-egress-agent".into(),
            role: Role::Agent,
            namespace: "vigie-system".into(),
            service_account: "vigie-egress-agent".into(),
            pod: "agent-x".into(),
            node: "n1".into(),
        };
        let mut id = Identity {
            kind: ClientKind::EgressAgent as i32,
            node: "n1".into(),
            ..Default::default()
        };
        assert!(agent.may_act_as(&id) && agent.vouches_for(&id));
        id.node = "n2".into();
        assert!(!agent.may_act_as(&id) && !agent.vouches_for(&id));
        // The same service account's unbound token is another credential.
        let unbound = Principal {
            pod: String::new(),
            node: String::new(),
            ..agent.clone()
        };
        assert_ne!(unbound.credential(), agent.credential());
    }
}
