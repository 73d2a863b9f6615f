//! The last-known-good snapshot on disk, so a sidecar restarted while the control
//! plane is down starts with the policy it last accepted.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use vigie_proto::v1::EffectivePolicy;

#[derive(Debug, thiserror::Error)]
pub enum LkgError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a snapshot: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Clone)]
pub struct LastKnownGood {
    path: PathBuf,
}

impl LastKnownGood {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join("last-known-good.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Ok(None)` when there is no file yet.
    pub fn load(&self) -> Result<Option<EffectivePolicy>, LkgError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LkgError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LkgError::Parse {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Atomic: written to a temporary file, synced, then renamed over the old one, so
    /// a crash never leaves a half-written snapshot.
    pub fn save(&self, snapshot: &EffectivePolicy) -> Result<(), LkgError> {
        let err = |source| LkgError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(snapshot)
            .map_err(|e| err(std::io::Error::other(e.to_string())))?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&json).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigie_proto::v1::{Policy, PolicySource};

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let lkg = LastKnownGood::in_dir(&dir.path().join("state"));
        assert!(lkg.load().unwrap().is_none());
        let snap = EffectivePolicy {
            version: "v1".into(),
            policy: Some(Policy {
                name: "p".into(),
                ..Default::default()
            }),
            sources: vec![PolicySource {
                section: "routing".into(),
                policy: "p".into(),
                revision: 3,
            }],
        };
        lkg.save(&snap).unwrap();
        assert_eq!(lkg.load().unwrap(), Some(snap));
        std::fs::write(lkg.path(), b"{nope").unwrap();
        assert!(matches!(lkg.load(), Err(LkgError::Parse { .. })));
    }
}
