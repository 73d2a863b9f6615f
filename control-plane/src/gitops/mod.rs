//! Policies from Git: the control plane reconciles a directory of policy files (a
//! ConfigMap that Kustomize generates from the repository ArgoCD syncs, or a checkout)
//! into the store, as revisions by [`GITOPS_ACTOR`]. A read is applied whole or not at
//! all: one invalid file keeps every policy at its last good revision, and the errors
//! are reported ([`SyncState`], `PolicyService.GetSyncStatus`, a security event).
//! Policies declared there are *managed*: the API refuses to change them unless the
//! call says `break_glass` (audited; reported as drift until Git changes the file).

pub mod plan;
pub mod source;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tracing::warn;
use vigie_proto::v1::{Policy, RevisionAction};
use vigie_proto::validate::{Violation, Violations};

use crate::auth::{Principal, Role};
use crate::policy::Refused;
use crate::service::policy::{Change, PolicyApi};
use crate::store::{Store, StoreError, now_ms};
use plan::{Current, Step, plan};
use source::PolicyFile;

/// Author of the revisions the reconciler writes (a token cannot take this name).
pub const GITOPS_ACTOR: &str = "gitops";

/// How many revisions back the reconciler looks for Git's last version of a policy.
const HISTORY: u32 = 200;

/// The reconciler's identity: an admin that only writes what the directory says.
pub fn principal() -> Principal {
    Principal {
        name: GITOPS_ACTOR.into(),
        role: Role::Admin,
        namespace: String::new(),
        service_account: String::new(),
        pod: String::new(),
        node: String::new(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    pub file: String,
    pub revision: i64,
    pub drift: bool,
}

/// Where the sync stands, as `GetSyncStatus` reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncView {
    pub directory: String,
    pub commit: Option<String>,
    pub synced_commit: Option<String>,
    pub last_attempt_ms: i64,
    pub last_success_ms: i64,
    /// Paths are `<file>` or `<file>: <field path>`.
    pub errors: Vec<Violation>,
    pub managed: BTreeMap<String, Managed>,
    pub orphans: Vec<String>,
    /// Live policies Git neither declares nor made (API writes before GitOps, or
    /// break-glass).
    pub outside_git: Vec<String>,
}

/// Shared between the reconciler and the policy API.
#[derive(Debug)]
pub struct SyncState {
    view: RwLock<SyncView>,
    pub exclusive: Exclusive,
}

impl SyncState {
    pub fn new(exclusive: Exclusive) -> Self {
        Self {
            view: RwLock::default(),
            exclusive,
        }
    }

    pub fn view(&self) -> SyncView {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The file that declares `name`, when it is managed.
    pub fn managed_file(&self, name: &str) -> Option<String> {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        view.managed.get(name).map(|m| m.file.clone())
    }

    pub fn is_drifted(&self, name: &str) -> bool {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        view.managed.get(name).is_some_and(|m| m.drift)
    }

    /// A break-glass write landed: reported until Git changes the file.
    pub fn mark_drift(&self, name: &str, revision: i64) {
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = view.managed.get_mut(name) {
            m.drift = true;
            m.revision = revision;
        }
    }

    fn update(&self, f: impl FnOnce(&mut SyncView)) {
        f(&mut self.view.write().unwrap_or_else(|e| e.into_inner()));
    }
}

/// The store's side of a plan: every live head, and the heads (deletions included) and
/// Git's last version of each declared policy whose head is not Git's.
pub async fn current(
    store: &dyn Store,
    files: &[PolicyFile],
) -> Result<BTreeMap<String, Current>, StoreError> {
    let of = |h: crate::store::Revision| {
        let c = Current {
            live: h.policy,
            revision: h.revision,
            author: h.author,
            last_from_git: None,
        };
        (h.name, c)
    };
    let mut map: BTreeMap<String, Current> =
        store.live_heads().await?.into_iter().map(of).collect();
    for f in files {
        let name = &f.policy.name;
        if !map.contains_key(name)
            && let Some(h) = store.head(name).await?
        {
            let (name, c) = of(h);
            map.insert(name, c);
        }
        if let Some(c) = map.get_mut(name)
            && c.author != GITOPS_ACTOR
            && c.live.as_ref() != Some(&f.policy)
        {
            c.last_from_git = store
                .revisions(name, HISTORY)
                .await?
                .into_iter()
                .find(|r| r.author == GITOPS_ACTOR)
                .map(|r| r.policy);
        }
    }
    Ok(map)
}

/// Every declared policy through the same validation as an `ApplyPolicy`; problems
/// carry their file.
async fn validate(api: &PolicyApi, files: &[PolicyFile]) -> Vec<Violation> {
    let mut problems = Vec::new();
    for f in files {
        match api.validator.validate(GITOPS_ACTOR, &f.policy, true).await {
            Ok(()) => {}
            Err(Refused::Invalid(v)) => problems.extend(v.0.into_iter().map(|x| Violation {
                path: format!("{}: {}", f.file, x.path),
                reason: x.reason,
            })),
            Err(other) => problems.push(Violation {
                path: f.file.clone(),
                reason: other.to_string(),
            }),
        }
    }
    problems
}

/// The reconciler of one directory.
#[derive(Debug, Clone)]
pub struct Reconciler {
    pub dir: PathBuf,
    /// Delete the policies Git created whose file is gone.
    pub prune: bool,
    pub state: Arc<SyncState>,
    /// This replica's name: one replica at a time writes (a lease in the store), so
    /// replicas whose mounts refresh at different moments do not undo each other.
    pub replica: String,
    pub interval: Duration,
}

/// Which writes the API refuses without breakGlass while policies come from Git.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusive {
    /// Every policy write: Git is the only way in (the default).
    All,
    /// Only the policies the directory declares; others stay the API's.
    Declared,
}

impl Reconciler {
    pub fn new(
        dir: PathBuf,
        prune: bool,
        exclusive: Exclusive,
        replica: String,
        interval: Duration,
    ) -> Self {
        let state = SyncState::new(exclusive);
        state.update(|v| v.directory = dir.display().to_string());
        Self {
            dir,
            prune,
            state: Arc::new(state),
            replica,
            interval,
        }
    }

    /// Syncs every `interval`, forever (the caller aborts the task at shutdown).
    pub async fn run(self, api: PolicyApi) {
        loop {
            tokio::time::sleep(self.interval).await;
            self.sync(&api).await;
        }
    }

    /// One read of the directory, applied whole or not at all.
    pub async fn sync(&self, api: &PolicyApi) {
        let dir = self.dir.clone();
        let read = tokio::task::spawn_blocking(move || source::read(&dir)).await;
        let Ok((declared, mut problems)) = read else {
            return;
        };
        problems.extend(validate(api, &declared.files).await);
        let commit = declared.commit.clone();
        let attempt = now_ms();
        if !problems.is_empty() {
            self.refuse(&declared.files, problems, commit, attempt);
            return;
        }
        let current = match current(api.store.as_ref(), &declared.files).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "policy sync: the store is unavailable; retrying");
                self.state.update(|v| v.last_attempt_ms = attempt);
                return;
            }
        };
        let who = principal();
        let mut managed = BTreeMap::new();
        let mut orphans = Vec::new();
        let mut outside = Vec::new();
        let mut failures = Vec::new();
        let by_name: BTreeMap<&str, &Policy> = declared
            .files
            .iter()
            .map(|f| (f.policy.name.as_str(), &f.policy))
            .collect();
        let steps = plan(&declared.files, &current, self.prune);
        let pruning = steps.iter().filter(|s| s.step == Step::Prune).count();
        let from_git = current
            .values()
            .filter(|c| c.live.is_some() && c.author == GITOPS_ACTOR)
            .count();
        if pruning > 0 && (declared.files.is_empty() || pruning * 2 > from_git) {
            // A missing ConfigMap (or one half written) looks like files removed: never
            // a mass deletion.
            let reason = format!(
                "would delete {pruning} of the {from_git} policies Git made at once: nothing \
                 is pruned; remove fewer files per change, or delete them with breakGlass"
            );
            let path = self.dir.display().to_string();
            self.refuse(&[], vec![Violation { path, reason }], commit, attempt);
            return;
        }
        // Only the lease holder writes; the others report what they see.
        let until = now_ms() + 3 * i64::try_from(self.interval.as_millis()).unwrap_or(i64::MAX / 4);
        let leader = match api.store.lease("gitops", &self.replica, until).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "policy sync: the store is unavailable; retrying");
                false
            }
        };
        let needs_writes = steps
            .iter()
            .any(|s| matches!(s.step, Step::Create | Step::Update(_) | Step::Prune));
        for step in steps {
            let file = step.file.clone().unwrap_or_default();
            let revision = current.get(&step.name).map_or(0, |c| c.revision);
            let blob = step
                .file
                .as_ref()
                .and_then(|f| declared.files.iter().find(|d| &d.file == f))
                .map(|d| format!(" (blob {})", &d.blob[..12.min(d.blob.len())]))
                .unwrap_or_default();
            let comment = format!(
                "from Git{}{}",
                commit
                    .as_ref()
                    .map(|c| format!(" commit {c}"))
                    .unwrap_or_default(),
                if file.is_empty() {
                    String::new()
                } else {
                    format!(", file {file}{blob}")
                }
            );
            let change = |policy: Option<Policy>, action| Change {
                name: step.name.clone(),
                policy,
                action,
                expected_revision: 0,
                comment: comment.clone(),
                restored_revision: 0,
            };
            let written = match &step.step {
                _ if !leader => None,
                Step::Create | Step::Update(_) => {
                    let policy = by_name.get(step.name.as_str()).map(|p| (*p).clone());
                    Some(api.write(&who, change(policy, RevisionAction::Apply)).await)
                }
                Step::Prune => Some(api.write(&who, change(None, RevisionAction::Delete)).await),
                Step::InSync | Step::Drift | Step::Orphan | Step::OutsideGit => None,
            };
            let revision = match written {
                None => revision,
                Some(Ok((rev, _))) => rev.revision,
                Some(Err(status)) => {
                    failures.push(Violation {
                        path: if file.is_empty() {
                            step.name.clone()
                        } else {
                            file.clone()
                        },
                        reason: status.message().to_string(),
                    });
                    revision
                }
            };
            match step.step {
                Step::Orphan => orphans.push(step.name),
                Step::OutsideGit => outside.push(step.name),
                Step::Prune => {}
                ref s => {
                    managed.insert(
                        step.name,
                        Managed {
                            file,
                            revision,
                            drift: *s == Step::Drift,
                        },
                    );
                }
            }
        }
        let newly_drifted: Vec<&String> = managed
            .iter()
            .filter(|(n, m)| m.drift && !self.state.is_drifted(n))
            .map(|(n, _)| n)
            .collect();
        for name in newly_drifted {
            warn!(policy = %name, "policy changed by break-glass differs from Git; kept until its file changes");
        }
        // A replica that does not hold the lease is in sync when nothing needed writing.
        let ok = failures.is_empty() && (leader || !needs_writes);
        self.state.update(|v| {
            v.commit = commit.clone();
            v.last_attempt_ms = attempt;
            if ok {
                v.synced_commit = commit;
                v.last_success_ms = attempt;
            }
            v.errors = failures;
            v.managed = managed;
            v.orphans = orphans;
            v.outside_git = outside;
        });
    }

    /// A read with problems changes nothing; the policies it names become managed
    /// (a file being fixed in Git is not a reason to allow hand edits meanwhile).
    fn refuse(
        &self,
        files: &[PolicyFile],
        problems: Vec<Violation>,
        commit: Option<String>,
        attempt: i64,
    ) {
        let changed = self.state.view().errors != problems;
        if changed {
            let files: Vec<&str> = problems
                .iter()
                .map(|p| p.path.split(':').next().unwrap_or_default())
                .collect();
            warn!(
                problems = problems.len(),
                files = %files.join(", "),
                "policy directory refused; every policy keeps its last good revision"
            );
            crate::events::policy_rejected(
                &principal(),
                &format!("{} (policy directory)", self.dir.display()),
                &Violations(problems.clone()),
            );
        }
        self.state.update(|v| {
            for f in files {
                v.managed.entry(f.policy.name.clone()).or_insert(Managed {
                    file: f.file.clone(),
                    revision: 0,
                    drift: false,
                });
            }
            v.commit = commit;
            v.last_attempt_ms = attempt;
            v.errors = problems;
        });
    }
}
