//! Provider credentials, read from where the operator put them for the sidecar — and
//! nowhere else. A policy names a credential; it cannot name an arbitrary variable
//! (`HOME`) or file (a service-account token) whose content would then be sent as a
//! Bearer token to an endpoint of the policy's choosing.
//!
//! - `credentials.env: "MISTRAL_API_KEY"` reads `VIGIE_CREDENTIAL_MISTRAL_API_KEY` (the
//!   webhook injects the credentials Secret's keys with that prefix);
//! - `credentials.file: "mistral/key"` reads that file under the credentials directory
//!   (`VIGIE_CREDENTIALS_DIR`, where the webhook mounts the same Secret); an absolute
//!   path is accepted only if it lies there too. Errors do not say whether a path exists.

use std::path::{Component, Path, PathBuf};

use http::{HeaderName, HeaderValue};
use vigie_proto::v1::{PoolKind, credentials};

/// Prefix of the environment variables a policy's `credentials.env` may name.
pub const CREDENTIAL_ENV_PREFIX: &str = "VIGIE_CREDENTIAL_";

/// Where the webhook mounts the credentials Secret.
const DEFAULT_DIR: &str = "/etc/vigie/credentials";

/// A provider credential; never printed.
#[derive(Clone)]
pub struct Credential {
    pub header: HeaderName,
    pub value: HeaderValue,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}: <redacted>)", self.header)
    }
}

/// Where credentials may be read from.
#[derive(Debug, Clone)]
pub struct CredentialSources {
    pub dir: PathBuf,
}

impl CredentialSources {
    /// `VIGIE_CREDENTIALS_DIR`, or the webhook's mount path.
    pub fn from_env() -> Self {
        Self {
            dir: std::env::var_os("VIGIE_CREDENTIALS_DIR")
                .map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from),
        }
    }

    /// The pool's credential as the header to send, or the field and reason it cannot
    /// be loaded.
    pub fn load(
        &self,
        kind: PoolKind,
        c: Option<&vigie_proto::v1::Credentials>,
    ) -> Result<Option<Credential>, (&'static str, String)> {
        let Some(source) = c.and_then(|c| c.source.as_ref()) else {
            return Ok(None);
        };
        let (field, secret) = match source {
            credentials::Source::Env(name) => ("env", self.env(name)?),
            credentials::Source::File(path) => ("file", self.file(path)?),
        };
        let secret = secret.trim();
        if secret.is_empty() {
            return Err((field, "the credential is empty".into()));
        }
        let (header, value) = if kind == PoolKind::Anthropic {
            (HeaderName::from_static("x-api-key"), secret.to_string())
        } else {
            (http::header::AUTHORIZATION, format!("Bearer {secret}"))
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            (
                field,
                "the credential has characters not allowed in a header".to_string(),
            )
        })?;
        value.set_sensitive(true);
        Ok(Some(Credential { header, value }))
    }

    fn env(&self, name: &str) -> Result<String, (&'static str, String)> {
        let var = format!("{CREDENTIAL_ENV_PREFIX}{name}");
        std::env::var(&var).map_err(|_| {
            (
                "env",
                format!("credential {name:?} is not set (environment variable {var})"),
            )
        })
    }

    fn file(&self, path: &str) -> Result<String, (&'static str, String)> {
        // One answer for a path outside the directory, missing or unreadable: nothing
        // tells a policy author what exists on the sidecar's file system.
        let refused = || {
            (
                "file",
                format!(
                    "no readable credential at {path:?} under the credentials directory {}",
                    self.dir.display()
                ),
            )
        };
        let p = Path::new(path);
        // Judged on the text first: a path that leaves the directory is never opened.
        if p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(refused());
        }
        let joined = if p.is_absolute() {
            if !p.starts_with(&self.dir) {
                return Err(refused());
            }
            p.to_path_buf()
        } else {
            self.dir.join(p)
        };
        // Then on the file system: a symbolic link inside may not lead outside.
        let dir = self.dir.canonicalize().map_err(|_| refused())?;
        let real = joined.canonicalize().map_err(|_| refused())?;
        if !real.starts_with(&dir) || !real.is_file() {
            return Err(refused());
        }
        std::fs::read_to_string(&real).map_err(|_| refused())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigie_proto::v1::Credentials;

    fn file(path: &str) -> Credentials {
        Credentials {
            source: Some(credentials::Source::File(path.into())),
        }
    }

    fn env(name: &str) -> Credentials {
        Credentials {
            source: Some(credentials::Source::Env(name.into())),
        }
    }

    #[test]
    fn files_are_read_under_the_directory_only_with_one_answer_for_every_refusal() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("creds");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("mistral"), "sk-inside\n").unwrap();
        std::fs::write(root.path().join("outside"), "sk-outside").unwrap();
        std::os::unix::fs::symlink(root.path().join("outside"), dir.join("link")).unwrap();
        let sources = CredentialSources { dir: dir.clone() };
        let load = |c: &Credentials| sources.load(PoolKind::Openai, Some(c));

        let ok = load(&file("mistral")).unwrap().unwrap();
        assert_eq!(ok.value.to_str().unwrap(), "Bearer sk-inside");
        let absolute = dir.join("mistral").display().to_string();
        assert!(load(&file(&absolute)).unwrap().is_some());

        let outside = root.path().join("outside").display().to_string();
        let refusals: Vec<String> = [
            "../outside",
            outside.as_str(),
            "link",
            "missing",
            "/etc/hostname",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        ]
        .iter()
        .map(|p| load(&file(p)).unwrap_err())
        .map(|(field, reason)| {
            assert_eq!(field, "file");
            // The same sentence whatever the cause, once the path is taken out.
            reason.replacen(&format!("{:?}", p_of(&reason)), "", 1)
        })
        .collect();
        assert!(refusals.windows(2).all(|w| w[0] == w[1]), "{refusals:#?}");
        assert!(!refusals[0].contains("sk-"));
    }

    /// The quoted path at the start of a refusal.
    fn p_of(reason: &str) -> String {
        let start = reason.find('"').unwrap();
        let end = start + 1 + reason[start + 1..].find('"').unwrap();
        reason[start + 1..end].to_string()
    }

    #[test]
    fn env_names_only_reach_prefixed_variables() {
        let sources = CredentialSources {
            dir: PathBuf::from("/nonexistent"),
        };
        // HOME and PATH are set in every test process: neither is reachable.
        for name in ["HOME", "PATH"] {
            let (field, reason) = sources
                .load(PoolKind::Openai, Some(&env(name)))
                .unwrap_err();
            assert_eq!(field, "env");
            assert!(
                reason.contains(&format!("{CREDENTIAL_ENV_PREFIX}{name}")),
                "{reason}"
            );
        }
    }
}
