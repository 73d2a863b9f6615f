//! End users in the usage ledger. By default the ledger stores a keyed pseudonym of
//! each user (GDPR art. 4(5) and 25: finance needs to tell users apart and count per
//! user, not to read their e-mail addresses); the operator may keep them in clear.
//! The key (HMAC-SHA-256) lives outside the database: a Secret shared by the replicas,
//! or a file generated in the data directory of the embedded store (docs/metering.md).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What a pseudonym starts with; then 32 hex digits (128 bits of the HMAC).
pub const PSEUDONYM_PREFIX: &str = "hmac:";
const PSEUDONYM_HEX: usize = 32;
/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum UserKeyError {
    #[error("reading the usage user key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the usage user key {path} holds {len} bytes; at least {MIN_KEY_BYTES} are needed")]
    Short { path: PathBuf, len: usize },
    #[error(
        "the usage user key {path} may be written by others (mode {mode:o}): it would let them choose every pseudonym"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("creating the usage user key {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The HMAC key; never printed.
#[derive(Clone)]
pub struct UserKey(Vec<u8>);

impl std::fmt::Debug for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserKey(..)")
    }
}

impl UserKey {
    /// The key in `path`: its bytes as they are (a Secret made from random bytes, or
    /// text), a final line break left out.
    pub fn read(path: &Path) -> Result<Self, UserKeyError> {
        use std::os::unix::fs::PermissionsExt as _;
        let read = |source| UserKeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(UserKeyError::Writable {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        let mut bytes = std::fs::read(path).map_err(read)?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        if bytes.len() < MIN_KEY_BYTES {
            return Err(UserKeyError::Short {
                path: path.to_path_buf(),
                len: bytes.len(),
            });
        }
        Ok(Self(bytes))
    }

    /// The key in `path`, created (32 random bytes, hex, owner-only) when there is none.
    pub fn read_or_create(path: &Path) -> Result<Self, UserKeyError> {
        if !path.exists() {
            let mut random = [0u8; 32];
            getrandom::fill(&mut random).map_err(|e| UserKeyError::Create {
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
            // Written aside, then renamed: a crash never leaves an empty key behind.
            let aside = path.with_extension(format!("tmp{}", std::process::id()));
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&aside)
                .and_then(|mut f| {
                    f.write_all(hex::encode(random).as_bytes())?;
                    f.sync_all()
                })
                .and_then(|()| std::fs::hard_link(&aside, path));
            let _ = std::fs::remove_file(&aside);
            match created {
                Ok(()) => {}
                // Another process created it meanwhile: read theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(UserKeyError::Create {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        }
        Self::read(path)
    }

    /// `hmac:` and 128 bits of HMAC-SHA-256(key, user), in hex.
    pub fn pseudonym(&self, user: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            // Unreachable: HMAC takes keys of any length.
            return String::new();
        };
        mac.update(user.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!(
            "{PSEUDONYM_PREFIX}{}",
            &hex::encode(digest)[..PSEUDONYM_HEX]
        )
    }
}

/// Whether `value` is a pseudonym as [`UserKey::pseudonym`] writes them.
pub fn is_pseudonym(value: &str) -> bool {
    value.strip_prefix(PSEUDONYM_PREFIX).is_some_and(|hex| {
        hex.len() == PSEUDONYM_HEX
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// How the ledger stores end users.
#[derive(Debug, Clone)]
pub struct LedgerUsers {
    /// The pseudonymisation key (also kept in clear mode when given: records stored
    /// pseudonymised before can still be erased).
    key: Option<UserKey>,
    clear: bool,
}

impl LedgerUsers {
    /// Pseudonyms with `key` (the default).
    pub fn pseudonymised(key: UserKey) -> Self {
        Self {
            key: Some(key),
            clear: false,
        }
    }

    /// Users stored as the sidecars report them.
    pub fn in_clear(key: Option<UserKey>) -> Self {
        Self { key, clear: true }
    }

    pub fn is_clear(&self) -> bool {
        self.clear
    }

    /// The value stored for a reported user (no user stays empty).
    pub fn stored(&self, user: &str) -> String {
        match (&self.key, self.clear) {
            _ if user.is_empty() => String::new(),
            (Some(key), false) => key.pseudonym(user),
            _ => user.to_string(),
        }
    }

    /// The value a filter on `user` compares with: its pseudonym, unless it is one
    /// already (a caller copying a value from a query) or users are kept in clear.
    pub fn filter_value(&self, user: &str) -> String {
        if user.is_empty() || is_pseudonym(user) {
            user.to_string()
        } else {
            self.stored(user)
        }
    }

    /// Every stored value that may stand for `user`: its pseudonym (when there is a
    /// key) and its clear value (records stored in clear), or the pseudonym given.
    ///
    /// A value shaped like a pseudonym is also hashed: an end user may be named so.
    pub fn stored_forms(&self, user: &str) -> Vec<String> {
        let mut forms = vec![user.to_string()];
        if let Some(key) = &self.key {
            forms.push(key.pseudonym(user));
        }
        forms
    }

    /// Whether this mode pseudonymises (a key and not in clear).
    pub fn pseudonymises(&self) -> Option<&UserKey> {
        self.key.as_ref().filter(|_| !self.clear)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_keyed_stable_and_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = UserKey::read_or_create(&path).unwrap();
        let again = UserKey::read_or_create(&path).unwrap();
        let p = key.pseudonym("ana@interieur.gouv.fr");
        assert_eq!(p, again.pseudonym("ana@interieur.gouv.fr"));
        assert!(is_pseudonym(&p), "{p}");
        assert_ne!(p, key.pseudonym("bob@interieur.gouv.fr"));
        std::fs::write(dir.path().join("other"), [7u8; 40]).unwrap();
        let other = UserKey::read(&dir.path().join("other")).unwrap();
        assert_ne!(p, other.pseudonym("ana@interieur.gouv.fr"), "another key");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "owner-only key file: {mode:o}");
        assert!(!format!("{key:?}").contains(&std::fs::read_to_string(&path).unwrap()));
    }

    #[test]
    fn short_keys_are_refused_and_the_modes_store_what_they_say() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "0123456789\n").unwrap();
        assert!(matches!(
            UserKey::read(&short),
            Err(UserKeyError::Short { len: 10, .. })
        ));
        let key = UserKey::read_or_create(&dir.path().join("k")).unwrap();
        let p = key.pseudonym("ana");
        let hidden = LedgerUsers::pseudonymised(key.clone());
        assert_eq!(hidden.stored("ana"), p);
        assert_eq!(hidden.stored(""), "");
        assert_eq!(hidden.filter_value("ana"), p);
        assert_eq!(hidden.filter_value(&p), p);
        assert_eq!(
            hidden.stored_forms("ana"),
            vec!["ana".to_string(), p.clone()]
        );
        assert_eq!(
            hidden.stored_forms(&p),
            vec![p.clone(), key.pseudonym(&p)],
            "a user named like a pseudonym can be erased too"
        );
        let clear = LedgerUsers::in_clear(Some(key));
        assert_eq!(clear.stored("ana"), "ana");
        assert_eq!(clear.filter_value("ana"), "ana");
        assert_eq!(clear.stored_forms("ana"), vec!["ana".to_string(), p]);
        assert!(!is_pseudonym("hmac:XYZ") && !is_pseudonym("ana"));
    }
}
