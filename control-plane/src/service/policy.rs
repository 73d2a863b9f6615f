//! `PolicyService`: what a security team drives with grpcurl.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::info;
use vigie_proto::v1::policy_service_server::PolicyService;
use vigie_proto::v1::{
    ApplyPolicyRequest, ApplyPolicyResponse, DeletePolicyRequest, DeletePolicyResponse,
    EffectivePolicy, GetEffectivePolicyRequest, GetPolicyRequest, GetSyncStatusRequest,
    ListPoliciesRequest, ListPoliciesResponse, ListRevisionsRequest, ListRevisionsResponse,
    ManagedPolicy, Policy, PolicyRevision, PolicySummary, PolicySyncStatus, RevisionAction,
    RollbackRequest, SyncError, ValidatePolicyRequest, ValidatePolicyResponse,
};

use super::{invalid, store_error, timestamp, violations_status};
use crate::auth::{Authenticator, Principal, Role};
use crate::gitops::{Exclusive, SyncState};
use crate::hub::Hub;
use crate::policy::summary::summarize;
use crate::policy::{Refused, Validator};
use crate::store::{NewRevision, Revision, Store, StoreError};

/// Attempts when another writer races us without an explicit expected revision.
const MAX_CAS_ATTEMPTS: usize = 8;

#[derive(Debug, Clone)]
pub struct PolicyApi {
    pub store: Arc<dyn Store>,
    pub auth: Authenticator,
    pub hub: Arc<Hub>,
    pub validator: Validator,
    /// The policy directory's reconciler state, when policies come from Git.
    pub gitops: Option<Arc<SyncState>>,
}

pub fn revision_message(r: Revision) -> PolicyRevision {
    PolicyRevision {
        name: r.name,
        revision: r.revision,
        action: r.action as i32,
        policy: r.policy,
        created_at: Some(timestamp(r.created_at_ms)),
        author: r.author,
        summary: r.summary,
        comment: r.comment,
        restored_revision: r.restored_revision,
    }
}

fn require_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        Err(invalid("name", "must not be empty"))
    } else {
        Ok(())
    }
}

/// One write: an apply, a rollback or a deletion.
pub(crate) struct Change {
    pub name: String,
    pub policy: Option<Policy>,
    pub action: RevisionAction,
    pub expected_revision: i64,
    pub comment: String,
    pub restored_revision: i64,
}

impl PolicyApi {
    /// Validation on the bounded pool; a write refused is a security event (a dry run
    /// is not).
    async fn validate(&self, who: &Principal, policy: &Policy, write: bool) -> Result<(), Status> {
        match self.validator.validate(&who.name, policy, write).await {
            Ok(()) => Ok(()),
            Err(Refused::Invalid(v)) => {
                if write {
                    crate::events::policy_rejected(who, &policy.name, &v);
                }
                Err(violations_status(&v))
            }
            Err(e) => Err(Status::resource_exhausted(e.to_string())),
        }
    }

    /// A write by a person to a policy declared in Git: refused, unless it says
    /// `break_glass` with a comment. Returns whether it is a break-glass write.
    fn guard(&self, name: &str, break_glass: bool, comment: &str) -> Result<bool, Status> {
        let Some(g) = &self.gitops else {
            return Ok(false);
        };
        let file = g.managed_file(name);
        if file.is_none() && g.exclusive == Exclusive::Declared {
            return Ok(false);
        }
        if !break_glass {
            return Err(Status::failed_precondition(match file {
                Some(file) => format!(
                    "policy {name:?} is managed from Git (file {file}): change it in the policy \
                     repository; in an emergency, set breakGlass with a comment"
                ),
                None => format!(
                    "policies come from Git on this control plane: add {name:?} to the policy \
                     repository; in an emergency, set breakGlass with a comment"
                ),
            }));
        }
        if comment.trim().is_empty() {
            return Err(invalid(
                "comment",
                "required with breakGlass: why Git could not be used",
            ));
        }
        Ok(true)
    }

    /// [`Self::write`] for a person's call; `glass`: what [`Self::guard`] said. A
    /// break-glass write is marked in its comment, reported as an event and as drift.
    async fn write_by_hand(
        &self,
        who: &Principal,
        mut c: Change,
        glass: bool,
    ) -> Result<(Revision, bool), Status> {
        if !glass {
            return self.write(who, c).await;
        }
        c.comment = format!("break-glass: {}", c.comment);
        let (rev, written) = self.write(who, c).await?;
        if written {
            crate::events::policy_break_glass(who, &rev.name, rev.revision);
            if let Some(g) = &self.gitops {
                g.mark_drift(&rev.name, rev.revision);
            }
        }
        Ok((rev, written))
    }

    /// Compare-and-set loop around [`Store::commit`]. Returns the revision and whether
    /// anything was written.
    pub(crate) async fn write(
        &self,
        who: &Principal,
        c: Change,
    ) -> Result<(Revision, bool), Status> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let head = self.store.head(&c.name).await.map_err(store_error)?;
            let live = head.as_ref().filter(|h| h.policy.is_some());
            match c.expected_revision {
                0 => {}
                -1 => {
                    if let Some(h) = live {
                        return Err(Status::failed_precondition(format!(
                            "policy {:?} already exists (revision {})",
                            c.name, h.revision
                        )));
                    }
                }
                expected => {
                    let current = head.as_ref().map_or(0, |h| h.revision);
                    if current != expected {
                        return Err(Status::failed_precondition(format!(
                            "policy {:?} is at revision {current}, not {expected}",
                            c.name
                        )));
                    }
                }
            }
            let current = live.and_then(|h| h.policy.as_ref());
            if c.action == RevisionAction::Delete && current.is_none() {
                return Err(Status::not_found(format!("policy {:?} not found", c.name)));
            }
            if c.action != RevisionAction::Delete
                && let Some(h) = live
                && current == c.policy.as_ref()
            {
                return Ok((h.clone(), false));
            }
            let mut summary = summarize(current, c.policy.as_ref());
            if c.action == RevisionAction::Rollback {
                summary = format!("rollback to revision {}: {summary}", c.restored_revision);
            }
            let change = NewRevision {
                name: c.name.clone(),
                base: head.as_ref().map(|h| h.revision),
                action: c.action,
                policy: c.policy.clone(),
                author: who.name.clone(),
                role: who.role,
                summary,
                comment: c.comment.clone(),
                restored_revision: c.restored_revision,
            };
            match self.store.commit(change).await {
                Ok(rev) => {
                    info!(
                        target: "vigie::audit",
                        actor = %who.name,
                        role = %who.role,
                        action = ?rev.action,
                        policy = %rev.name,
                        revision = rev.revision,
                        summary = %rev.summary,
                        comment = %rev.comment,
                        "policy changed"
                    );
                    crate::events::policy_changed(
                        who,
                        rev.action.as_str_name(),
                        &rev.name,
                        rev.revision,
                    );
                    self.hub.notify_changed();
                    return Ok((rev, true));
                }
                Err(StoreError::Conflict) if c.expected_revision == 0 => continue,
                Err(StoreError::Conflict) => {
                    return Err(Status::failed_precondition(format!(
                        "policy {:?} changed concurrently; read it again",
                        c.name
                    )));
                }
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(Status::aborted(format!(
            "policy {:?} is being changed by others; retry",
            c.name
        )))
    }
}

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    async fn apply_policy(
        &self,
        req: Request<ApplyPolicyRequest>,
    ) -> Result<Response<ApplyPolicyResponse>, Status> {
        let who = self.auth.check(&req, &[Role::Admin]).await?;
        let r = req.into_inner();
        let policy = r.policy.ok_or_else(|| invalid("policy", "is required"))?;
        let glass = self.guard(&policy.name, r.break_glass, &r.comment)?;
        self.validate(&who, &policy, true).await?;
        let (rev, written) = self
            .write_by_hand(
                &who,
                Change {
                    name: policy.name.clone(),
                    policy: Some(policy),
                    action: RevisionAction::Apply,
                    expected_revision: r.expected_revision,
                    comment: r.comment,
                    restored_revision: 0,
                },
                glass,
            )
            .await?;
        Ok(Response::new(ApplyPolicyResponse {
            revision: Some(revision_message(rev)),
            unchanged: !written,
        }))
    }

    async fn validate_policy(
        &self,
        req: Request<ValidatePolicyRequest>,
    ) -> Result<Response<ValidatePolicyResponse>, Status> {
        let who = self.auth.check(&req, &[Role::Admin, Role::Auditor]).await?;
        let policy = req
            .into_inner()
            .policy
            .ok_or_else(|| invalid("policy", "is required"))?;
        self.validate(&who, &policy, false).await?;
        let head = self.store.head(&policy.name).await.map_err(store_error)?;
        let current = head.as_ref().and_then(|h| h.policy.as_ref());
        Ok(Response::new(ValidatePolicyResponse {
            valid: true,
            change_summary: summarize(current, Some(&policy)),
        }))
    }

    async fn get_policy(
        &self,
        req: Request<GetPolicyRequest>,
    ) -> Result<Response<PolicyRevision>, Status> {
        self.auth.check(&req, &[Role::Admin, Role::Auditor]).await?;
        let r = req.into_inner();
        require_name(&r.name)?;
        let found = if r.revision == 0 {
            match self.store.head(&r.name).await.map_err(store_error)? {
                Some(h) if h.policy.is_none() => {
                    return Err(Status::not_found(format!(
                        "policy {:?} was deleted at revision {}",
                        r.name, h.revision
                    )));
                }
                other => other,
            }
        } else {
            self.store
                .revision(&r.name, r.revision)
                .await
                .map_err(store_error)?
        };
        found
            .map(|r| Response::new(revision_message(r)))
            .ok_or_else(|| {
                Status::not_found(if r.revision == 0 {
                    format!("policy {:?} not found", r.name)
                } else {
                    format!("policy {:?} has no revision {}", r.name, r.revision)
                })
            })
    }

    async fn list_policies(
        &self,
        req: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        self.auth.check(&req, &[Role::Admin, Role::Auditor]).await?;
        let ns = req.into_inner().namespace;
        let heads = self.store.live_heads().await.map_err(store_error)?;
        let gitops = self.gitops.as_ref().map(|g| g.view());
        let policies = heads
            .into_iter()
            .filter_map(|h| {
                let p = h.policy?;
                if !ns.is_empty() && p.scope.as_ref().is_none_or(|s| s.namespace != ns) {
                    return None;
                }
                Some(PolicySummary {
                    revision: h.revision,
                    updated_at: Some(timestamp(h.created_at_ms)),
                    author: h.author,
                    pools: u32::try_from(p.pools.len()).unwrap_or(u32::MAX),
                    routes: u32::try_from(p.routes.len()).unwrap_or(u32::MAX),
                    scope: p.scope,
                    managed_file: gitops
                        .as_ref()
                        .and_then(|g| g.managed.get(&h.name))
                        .map(|m| m.file.clone())
                        .unwrap_or_default(),
                    drift: gitops
                        .as_ref()
                        .and_then(|g| g.managed.get(&h.name))
                        .is_some_and(|m| m.drift),
                    name: h.name,
                })
            })
            .collect();
        Ok(Response::new(ListPoliciesResponse { policies }))
    }

    async fn delete_policy(
        &self,
        req: Request<DeletePolicyRequest>,
    ) -> Result<Response<DeletePolicyResponse>, Status> {
        let who = self.auth.check(&req, &[Role::Admin]).await?;
        let r = req.into_inner();
        require_name(&r.name)?;
        let glass = self.guard(&r.name, r.break_glass, &r.comment)?;
        let (rev, _) = self
            .write_by_hand(
                &who,
                Change {
                    name: r.name,
                    policy: None,
                    action: RevisionAction::Delete,
                    expected_revision: r.expected_revision,
                    comment: r.comment,
                    restored_revision: 0,
                },
                glass,
            )
            .await?;
        Ok(Response::new(DeletePolicyResponse {
            revision: rev.revision,
        }))
    }

    async fn list_revisions(
        &self,
        req: Request<ListRevisionsRequest>,
    ) -> Result<Response<ListRevisionsResponse>, Status> {
        self.auth.check(&req, &[Role::Admin, Role::Auditor]).await?;
        let r = req.into_inner();
        require_name(&r.name)?;
        let limit = match r.limit {
            0 => 50,
            n => n.min(1000),
        };
        let revisions = self
            .store
            .revisions(&r.name, limit)
            .await
            .map_err(store_error)?;
        if revisions.is_empty() {
            return Err(Status::not_found(format!("policy {:?} not found", r.name)));
        }
        Ok(Response::new(ListRevisionsResponse {
            revisions: revisions.into_iter().map(revision_message).collect(),
        }))
    }

    async fn rollback(
        &self,
        req: Request<RollbackRequest>,
    ) -> Result<Response<ApplyPolicyResponse>, Status> {
        let who = self.auth.check(&req, &[Role::Admin]).await?;
        let r = req.into_inner();
        require_name(&r.name)?;
        if r.revision <= 0 {
            return Err(invalid(
                "revision",
                "must be a revision number of the policy",
            ));
        }
        let glass = self.guard(&r.name, r.break_glass, &r.comment)?;
        let target = self
            .store
            .revision(&r.name, r.revision)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "policy {:?} has no revision {}",
                    r.name, r.revision
                ))
            })?;
        let policy = target.policy.ok_or_else(|| {
            Status::failed_precondition(format!(
                "revision {} of {:?} is a deletion; roll back to a revision that has content",
                r.revision, r.name
            ))
        })?;
        // Rules may have tightened since: an old revision must still be valid.
        self.validate(&who, &policy, true).await?;
        let (rev, written) = self
            .write_by_hand(
                &who,
                Change {
                    name: r.name,
                    policy: Some(policy),
                    action: RevisionAction::Rollback,
                    expected_revision: 0,
                    comment: r.comment,
                    restored_revision: r.revision,
                },
                glass,
            )
            .await?;
        Ok(Response::new(ApplyPolicyResponse {
            revision: Some(revision_message(rev)),
            unchanged: !written,
        }))
    }

    async fn get_sync_status(
        &self,
        req: Request<GetSyncStatusRequest>,
    ) -> Result<Response<PolicySyncStatus>, Status> {
        self.auth.check(&req, &[Role::Admin, Role::Auditor]).await?;
        let Some(g) = &self.gitops else {
            return Ok(Response::new(PolicySyncStatus::default()));
        };
        let v = g.view();
        let at = |ms: i64| (ms > 0).then(|| timestamp(ms));
        Ok(Response::new(PolicySyncStatus {
            enabled: true,
            directory: v.directory,
            commit: v.commit.unwrap_or_default(),
            synced_commit: v.synced_commit.unwrap_or_default(),
            last_attempt: at(v.last_attempt_ms),
            last_success: at(v.last_success_ms),
            errors: v
                .errors
                .into_iter()
                .map(|e| {
                    let (file, field) = e.path.split_once(": ").unwrap_or((&e.path, ""));
                    SyncError {
                        file: file.to_string(),
                        field: field.to_string(),
                        reason: e.reason,
                    }
                })
                .collect(),
            policies: v
                .managed
                .into_iter()
                .map(|(name, m)| ManagedPolicy {
                    name,
                    file: m.file,
                    revision: m.revision,
                    drift: m.drift,
                })
                .collect(),
            orphans: v.orphans,
            outside_git: v.outside_git,
            exclusive: g.exclusive == Exclusive::All,
        }))
    }

    async fn get_effective_policy(
        &self,
        req: Request<GetEffectivePolicyRequest>,
    ) -> Result<Response<EffectivePolicy>, Status> {
        let who = self
            .auth
            .check(&req, &[Role::Admin, Role::Auditor, Role::Workload])
            .await?;
        let identity = req
            .into_inner()
            .identity
            .ok_or_else(|| invalid("identity", "is required"))?;
        if identity.namespace.is_empty() {
            return Err(invalid("identity.namespace", "must not be empty"));
        }
        if who.role == Role::Workload && !who.may_act_as(&identity) {
            return Err(Status::permission_denied(
                "a workload token may only query its own identity",
            ));
        }
        // Read through to the store so the answer reflects the latest commit, even one
        // made on another replica a moment ago.
        let heads = self.store.live_heads().await.map_err(store_error)?;
        Ok(Response::new(crate::policy::effective::effective(
            &heads, &identity,
        )))
    }
}
