//! The watch hub of one replica: the current policies in memory, the connected
//! watchers, and the push of effective snapshots when something changes.
//!
//! Every replica keeps its own copy of the live policies and reloads it when the store
//! says state changed (its own commits, `NOTIFY` from other replicas, or a periodic
//! fingerprint check as a safety net). A watcher gets a new snapshot only when *its*
//! effective policy's version changed, so a change scoped to one namespace is not
//! pushed to the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, error, info, warn};
use vigie_proto::v1::{
    Ack, ClientKind, EffectivePolicy, EgressBundle, Identity, PolicyHead, Snapshot,
};

use crate::policy::effective::effective;
use crate::store::{ClientRef, Revision, StatusEvent, Store, StoreError, now_ms};

/// Longest NACK error detail kept.
const MAX_ERROR_DETAIL: usize = 2048;

struct Watcher {
    client: ClientRef,
    identity: Identity,
    tx: watch::Sender<Arc<Snapshot>>,
    version: String,
    nonce: String,
}

pub struct Hub {
    store: Arc<dyn Store>,
    replica: String,
    heads: RwLock<Arc<Vec<Revision>>>,
    fingerprint: Mutex<Option<(i64, i64)>>,
    watchers: Mutex<HashMap<u64, Watcher>>,
    next_id: AtomicU64,
    next_nonce: AtomicU64,
    changed: Arc<Notify>,
    status: mpsc::UnboundedSender<StatusEvent>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// A registered watcher; unregisters itself when dropped.
pub struct Registration {
    hub: Arc<Hub>,
    pub id: u64,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(self.id);
    }
}

impl Hub {
    /// Creates the hub and starts its status writer.
    pub fn new(store: Arc<dyn Store>, replica: String) -> Arc<Hub> {
        let (status, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_status(store.clone(), rx));
        Arc::new(Hub {
            store,
            replica,
            heads: RwLock::new(Arc::new(Vec::new())),
            fingerprint: Mutex::new(None),
            watchers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            next_nonce: AtomicU64::new(1),
            changed: Arc::new(Notify::new()),
            status,
        })
    }

    /// Wakes the refresh loop: state changed in the store.
    pub fn notify_changed(&self) {
        self.changed.notify_one();
    }

    pub fn heads(&self) -> Arc<Vec<Revision>> {
        self.heads.read().map(|h| h.clone()).unwrap_or_default()
    }

    pub fn effective_for(&self, identity: &Identity) -> EffectivePolicy {
        effective(&self.heads(), identity)
    }

    /// Reloads the live policies (always, or only if the fingerprint moved) and pushes
    /// what changed.
    pub async fn refresh(&self, only_if_moved: bool) -> Result<(), StoreError> {
        let fp = self.store.fingerprint().await?;
        if only_if_moved && self.fingerprint.lock().is_ok_and(|f| *f == Some(fp)) {
            return Ok(());
        }
        let heads = self.store.live_heads().await?;
        if let Ok(mut h) = self.heads.write() {
            *h = Arc::new(heads);
        }
        if let Ok(mut f) = self.fingerprint.lock() {
            *f = Some(fp);
        }
        self.push_changed();
        Ok(())
    }

    /// Runs until shutdown: refreshes on every change notification, and checks the
    /// store's fingerprint every `resync` in case a notification was lost.
    pub async fn run(self: Arc<Self>, resync: Duration) {
        {
            let store = self.store.clone();
            let changed = self.changed.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = store.listen_changes(changed.clone()).await {
                        warn!(error = %e, "change listener failed; retrying in 1s");
                        changed.notify_one();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    } else {
                        return;
                    }
                }
            });
        }
        let mut tick = tokio::time::interval(resync);
        let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
        loop {
            let result = tokio::select! {
                _ = self.changed.notified() => self.refresh(false).await,
                _ = tick.tick() => self.refresh(true).await,
                _ = heartbeat.tick() => {
                    self.send_status(StatusEvent::Heartbeat { replica: self.replica.clone(), at_ms: now_ms() });
                    Ok(())
                }
            };
            if let Err(e) = result {
                error!(error = %e, "reloading policies failed; watchers keep their snapshot");
            }
        }
    }

    fn send_status(&self, e: StatusEvent) {
        // The writer only stops at shutdown; losing status then is harmless.
        let _ = self.status.send(e);
    }

    fn snapshot(&self, content: Content) -> Arc<Snapshot> {
        let n = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        Arc::new(Snapshot {
            version: content.version,
            nonce: format!("{}-{n}", self.replica),
            effective: content.effective,
            egress: content.egress,
        })
    }

    /// Open watch streams of one credential on this replica.
    pub fn watches_by(&self, credential: &str) -> usize {
        self.watchers
            .lock()
            .map(|w| {
                w.values()
                    .filter(|o| o.client.credential == credential)
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn register(
        self: &Arc<Self>,
        client: ClientRef,
        identity: Identity,
        client_version: String,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let snapshot = self.snapshot(content_for(&self.heads(), &identity));
        let (tx, rx) = watch::channel(snapshot.clone());
        self.send_status(StatusEvent::Connected {
            client: client.clone(),
            identity: identity.clone(),
            replica: self.replica.clone(),
            client_version,
            at_ms: now_ms(),
        });
        self.send_status(StatusEvent::Sent {
            client: client.clone(),
            version: snapshot.version.clone(),
        });
        if let Ok(mut w) = self.watchers.lock() {
            w.insert(
                id,
                Watcher {
                    client,
                    identity,
                    tx,
                    version: snapshot.version.clone(),
                    nonce: snapshot.nonce.clone(),
                },
            );
        }
        Registration {
            hub: self.clone(),
            id,
            snapshots: rx,
        }
    }

    fn unregister(&self, id: u64) {
        let Ok(mut w) = self.watchers.lock() else {
            return;
        };
        if let Some(gone) = w.remove(&id) {
            // The same pod may have reconnected already: only the last connection
            // marks it disconnected.
            if !w.values().any(|o| o.client == gone.client) {
                self.send_status(StatusEvent::Disconnected {
                    client: gone.client,
                    replica: self.replica.clone(),
                    at_ms: now_ms(),
                });
            }
        }
    }

    pub fn ack(&self, id: u64, mut ack: Ack) {
        // Versions are short hashes; a longer one is cut, not stored whole.
        if ack.version.len() > 128 {
            ack.version.truncate(ack.version.floor_char_boundary(128));
        }
        let client = {
            let Ok(w) = self.watchers.lock() else { return };
            let Some(watcher) = w.get(&id) else { return };
            if watcher.nonce != ack.nonce {
                debug!(client = %watcher.client.id, nonce = %ack.nonce, "stale ack ignored");
                return;
            }
            watcher.client.clone()
        };
        if ack.accepted {
            self.send_status(StatusEvent::Acked {
                client,
                version: ack.version,
                at_ms: now_ms(),
            });
        } else {
            let mut error = ack.error_detail;
            if error.len() > MAX_ERROR_DETAIL {
                let mut cut = MAX_ERROR_DETAIL;
                while !error.is_char_boundary(cut) {
                    cut -= 1;
                }
                error.truncate(cut);
            }
            warn!(client = %client.id, version = %ack.version, error = %error, "snapshot rejected by client");
            self.send_status(StatusEvent::Nacked {
                client,
                version: ack.version,
                error,
                at_ms: now_ms(),
            });
        }
    }

    /// Sends a new snapshot to every watcher whose effective version changed.
    fn push_changed(&self) {
        let heads = self.heads();
        let Ok(mut watchers) = self.watchers.lock() else {
            return;
        };
        // Many pods share an identity shape; compute each effective policy once.
        let mut cache: HashMap<String, Content> = HashMap::new();
        let mut pushed = 0usize;
        for w in watchers.values_mut() {
            let key = identity_key(&w.identity);
            let eff = cache
                .entry(key)
                .or_insert_with(|| content_for(&heads, &w.identity));
            if eff.version == w.version {
                continue;
            }
            let snapshot = self.snapshot(eff.clone());
            w.version = snapshot.version.clone();
            w.nonce = snapshot.nonce.clone();
            self.send_status(StatusEvent::Sent {
                client: w.client.clone(),
                version: snapshot.version.clone(),
            });
            // A receiver that is gone unregisters itself; nothing to do here.
            let _ = w.tx.send(snapshot);
            pushed += 1;
        }
        if pushed > 0 {
            info!(
                pushed,
                watchers = watchers.len(),
                "pushed new snapshots to affected watchers"
            );
        }
    }

    /// Ends every watch stream (shutdown): clients reconnect to another replica.
    pub fn close(&self) {
        let Ok(mut w) = self.watchers.lock() else {
            return;
        };
        let at_ms = now_ms();
        for gone in w.drain().map(|(_, g)| g) {
            self.send_status(StatusEvent::Disconnected {
                client: gone.client,
                replica: self.replica.clone(),
                at_ms,
            });
        }
    }
}

/// What a watcher is sent: its effective policy (sidecars), or every live policy
/// (egress agents, which compute the effective policy of each pod on their node).
#[derive(Clone)]
struct Content {
    version: String,
    effective: Option<EffectivePolicy>,
    egress: Option<EgressBundle>,
}

fn content_for(heads: &[Revision], id: &Identity) -> Content {
    if id.kind == ClientKind::EgressAgent as i32 {
        let policies: Vec<PolicyHead> = heads
            .iter()
            .filter_map(|r| {
                r.policy.as_ref().map(|p| PolicyHead {
                    name: r.name.clone(),
                    revision: r.revision,
                    policy: Some(p.clone()),
                })
            })
            .collect();
        let mut h = Sha256::new();
        for p in &policies {
            h.update(p.name.as_bytes());
            h.update(b"@");
            h.update(p.revision.to_be_bytes());
        }
        return Content {
            version: format!("bundle-{}", &hex::encode(h.finalize())[..16]),
            effective: None,
            egress: Some(EgressBundle { policies }),
        };
    }
    let effective = effective(heads, id);
    Content {
        version: effective.version.clone(),
        effective: Some(effective),
        egress: None,
    }
}

/// What the snapshot depends on.
fn identity_key(id: &Identity) -> String {
    if id.kind == ClientKind::EgressAgent as i32 {
        return "\u{0}egress-agent".to_string();
    }
    let mut labels: Vec<_> = id.labels.iter().collect();
    labels.sort();
    format!("{}\u{0}{}\u{0}{labels:?}", id.namespace, id.service_account)
}

/// Writes status events in batches, so a push to a thousand watchers and their
/// thousand ACKs cost a few transactions, not two thousand.
async fn write_status(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<StatusEvent>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        // Let a burst accumulate a little.
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(e) = rx.try_recv() {
            batch.push(e);
            if batch.len() >= 8192 {
                break;
            }
        }
        let mut attempt = 0;
        loop {
            match store.write_status(&batch).await {
                Ok(()) => break,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    warn!(error = %e, attempt, "writing client status failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => {
                    error!(error = %e, events = batch.len(), "client status lost");
                    break;
                }
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_are_counted_per_credential_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sql::SqlStore::open(&url).await.unwrap());
        let hub = Hub::new(store, "r".into());
        let client = |pod: &str, credential: &str| ClientRef {
            id: format!("ns/{pod}"),
            credential: credential.into(),
            bound: false,
        };
        let a1 = hub.register(client("a1", "w"), Identity::default(), String::new());
        let a2 = hub.register(client("a2", "w"), Identity::default(), String::new());
        let _b = hub.register(client("b", "other"), Identity::default(), String::new());
        assert_eq!((hub.watches_by("w"), hub.watches_by("other")), (2, 1));
        drop((a1, a2));
        assert_eq!(hub.watches_by("w"), 0);
    }
}
