//! Standalone mode: the policy comes from a JSON file (canonical protobuf JSON mapping),
//! reloaded when it changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use vigie_proto::v1::Policy;

use super::{PolicyStore, Snapshot, Violations};
use crate::endpoint::EndpointRegistry;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// serde_json's message names the line and column, and the field; never values.
    #[error("policy file {path} is not a valid policy document: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Invalid(#[from] Violations),
}

pub fn parse(path: &Path, bytes: &[u8]) -> Result<Policy, LoadError> {
    serde_json::from_slice(bytes).map_err(|e| LoadError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Watches one file; [`FileWatcher::poll`] reloads it when its content changed.
#[derive(Debug)]
pub struct FileWatcher {
    path: PathBuf,
    store: Arc<PolicyStore>,
    registry: Arc<EndpointRegistry>,
    last_seen: Option<(SystemTime, u64)>,
    last_content: Option<Vec<u8>>,
}

/// What a poll did.
#[derive(Debug)]
pub enum Reload {
    Unchanged,
    Installed(Arc<Snapshot>),
    /// The new content was rejected; the previous snapshot stays in force.
    Rejected(LoadError),
}

impl FileWatcher {
    pub fn new(path: PathBuf, store: Arc<PolicyStore>, registry: Arc<EndpointRegistry>) -> Self {
        Self {
            path,
            store,
            registry,
            last_seen: None,
            last_content: None,
        }
    }

    pub fn poll(&mut self) -> Reload {
        // Metadata first: cheap, and catches editors that replace the file by rename.
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(source) => {
                if self.last_seen.is_none() {
                    self.last_seen = Some((SystemTime::UNIX_EPOCH, 0));
                    return Reload::Rejected(LoadError::Read {
                        path: self.path.clone(),
                        source,
                    });
                }
                return Reload::Unchanged;
            }
        };
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        if self.last_seen == Some(stamp) {
            return Reload::Unchanged;
        }
        self.last_seen = Some(stamp);
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(source) => {
                return Reload::Rejected(LoadError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        if self.last_content.as_deref() == Some(bytes.as_slice()) {
            return Reload::Unchanged;
        }
        self.last_content = Some(bytes.clone());
        let result = parse(&self.path, &bytes)
            .and_then(|p| Snapshot::compile(p, &self.registry).map_err(LoadError::from));
        match result {
            Ok(snapshot) => {
                let snapshot = Arc::new(snapshot);
                self.store.install(snapshot.clone());
                self.registry.retain_used();
                Reload::Installed(snapshot)
            }
            Err(e) => Reload::Rejected(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{"name":"p","pools":[{"name":"a","kind":"POOL_KIND_VLLM",
        "endpoints":[{"url":"http://127.0.0.1:1"}],"models":[{"name":"m"}]}]}"#;

    #[test]
    fn reloads_on_change_and_keeps_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        std::fs::write(&path, POLICY).unwrap();
        let store = Arc::new(PolicyStore::default());
        let mut w = FileWatcher::new(path.clone(), store.clone(), Arc::default());
        assert!(matches!(w.poll(), Reload::Installed(_)));
        assert!(matches!(w.poll(), Reload::Unchanged));
        let v1 = store.current().unwrap().version.clone();

        // Broken JSON: rejected with line/column, previous snapshot kept.
        std::fs::write(&path, "{\"name\": \"p\", \"pools\": [").unwrap();
        match w.poll() {
            Reload::Rejected(e @ LoadError::Parse { .. }) => {
                assert!(e.to_string().contains("line 1"), "{e}")
            }
            other => panic!("expected parse error, got {other:?}"),
        }
        assert_eq!(store.current().unwrap().version, v1);

        // Invalid policy: rejected with field paths.
        std::fs::write(&path, POLICY.replace("http://127.0.0.1:1", "ftp://x")).unwrap();
        match w.poll() {
            Reload::Rejected(e) => assert!(
                e.to_string()
                    .contains("pools[0].endpoints[0].url: scheme must be http or https"),
                "{e}"
            ),
            other => panic!("expected violations, got {other:?}"),
        }

        std::fs::write(&path, POLICY.replace("\"m\"", "\"m2\"")).unwrap();
        assert!(matches!(w.poll(), Reload::Installed(_)));
        assert_ne!(store.current().unwrap().version, v1);
        assert!(store.current().unwrap().routes_for("m2").is_some());
    }

    #[test]
    fn missing_file_is_reported_once() {
        let store = Arc::new(PolicyStore::default());
        let mut w = FileWatcher::new(
            "/nonexistent/vigie.json".into(),
            store.clone(),
            Arc::default(),
        );
        assert!(matches!(w.poll(), Reload::Rejected(LoadError::Read { .. })));
        assert!(matches!(w.poll(), Reload::Unchanged));
        assert!(store.current().is_none());
    }
}
