//! Reading a policy directory: a ConfigMap volume (keys as files behind `..data`
//! links) generated from the policy repository, or a checkout of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vigie_proto::v1::Policy;
use vigie_proto::validate::{Violation, limits};

/// Most policy files read from one directory.
pub const MAX_FILES: usize = 512;

/// A file that holds the commit, written by the repository's pipeline (a ConfigMap
/// key); else the commit comes from the checkout's `.git`.
pub const COMMIT_FILE: &str = "git-commit";

/// One policy as declared in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyFile {
    /// File name within the directory.
    pub file: String,
    pub policy: Policy,
}

/// What the directory declares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Declared {
    pub files: Vec<PolicyFile>,
    pub commit: Option<String>,
}

/// A problem of one file: `path` is `<file>` or `<file>: <field path>`.
fn problem(file: &str, reason: impl Into<String>) -> Violation {
    Violation {
        path: file.to_string(),
        reason: reason.into(),
    }
}

/// Reads every `*.json`, `*.yaml` and `*.yml` file of `dir` (canonical protobuf JSON,
/// or YAML of the same schema; names starting with `.` are skipped, as ConfigMap
/// volumes keep their internals there). Everything parsed is returned with every
/// problem found, so a caller can refuse the whole set and still name the policies.
pub fn read(dir: &Path) -> (Declared, Vec<Violation>) {
    let mut declared = Declared::default();
    let mut problems = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(problem(
                &dir.display().to_string(),
                format!("cannot read the policy directory: {e}"),
            ));
            return (declared, problems);
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .filter(|n| {
            [".json", ".yaml", ".yml"]
                .iter()
                .any(|ext| n.ends_with(ext))
        })
        .collect();
    names.sort();
    if names.len() > MAX_FILES {
        problems.push(problem(
            &dir.display().to_string(),
            format!("{} policy files; at most {MAX_FILES} are read", names.len()),
        ));
        return (declared, problems);
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for name in names {
        match parse(&dir.join(&name), &name) {
            Ok(policy) => {
                if policy.name.is_empty() {
                    problems.push(problem(&name, "name: must not be empty"));
                    continue;
                }
                if let Some(first) = seen.insert(policy.name.clone(), name.clone()) {
                    problems.push(problem(
                        &name,
                        format!("name: policy {:?} is also declared in {first}", policy.name),
                    ));
                    continue;
                }
                declared.files.push(PolicyFile { file: name, policy });
            }
            Err(reason) => problems.push(problem(&name, reason)),
        }
    }
    declared.commit = commit(dir);
    (declared, problems)
}

fn parse(path: &Path, name: &str) -> Result<Policy, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    // Encoded policies are at most POLICY_BYTES; text forms take more room, not 4×.
    let most = 4 * limits::POLICY_BYTES as u64;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > most {
        return Err(format!("{} bytes; at most {most}", meta.len()));
    }
    let text = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if name.ends_with(".json") {
        serde_json::from_slice(&text).map_err(|e| format!("not a policy (JSON): {e}"))
    } else {
        let value: serde_json::Value =
            serde_yaml::from_slice(&text).map_err(|e| format!("not YAML: {e}"))?;
        serde_json::from_value(value).map_err(|e| format!("not a policy: {e}"))
    }
}

/// The commit the directory comes from: the [`COMMIT_FILE`], or the HEAD of the git
/// checkout that contains it (a worktree's `.git` file followed, loose or packed refs).
pub fn commit(dir: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(dir.join(COMMIT_FILE)) {
        return hex_id(text.trim());
    }
    let git = dir
        .ancestors()
        .map(|d| d.join(".git"))
        .find(|g| g.exists())?;
    let git_dir = if git.is_file() {
        let text = std::fs::read_to_string(&git).ok()?;
        let target = PathBuf::from(text.trim().strip_prefix("gitdir:")?.trim());
        git.parent()?.join(target)
    } else {
        git
    };
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let Some(reference) = head.trim().strip_prefix("ref:") else {
        return hex_id(head.trim());
    };
    let reference = reference.trim();
    // A worktree shares its refs with the main repository (`commondir`).
    let common = std::fs::read_to_string(git_dir.join("commondir"))
        .map(|c| git_dir.join(c.trim()))
        .unwrap_or_else(|_| git_dir.clone());
    for base in [&git_dir, &common] {
        if let Ok(id) = std::fs::read_to_string(base.join(reference)) {
            return hex_id(id.trim());
        }
    }
    std::fs::read_to_string(common.join("packed-refs"))
        .ok()?
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, r)| *r == reference)
        .and_then(|(id, _)| hex_id(id))
}

fn hex_id(s: &str) -> Option<String> {
    let ok = (7..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn json_and_yaml_files_are_read_and_configmap_internals_skipped() {
        let d = dir();
        std::fs::write(d.path().join("a.json"), r#"{"name":"a","pools":[]}"#).unwrap();
        std::fs::write(
            d.path().join("b.yaml"),
            "name: b\nscope:\n  namespace: team-a\n",
        )
        .unwrap();
        std::fs::write(d.path().join("README.md"), "not a policy").unwrap();
        std::fs::create_dir(d.path().join("..data")).unwrap();
        std::fs::write(d.path().join(".hidden.json"), "{").unwrap();
        let (declared, problems) = read(d.path());
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<_> = declared
            .files
            .iter()
            .map(|f| (f.file.as_str(), f.policy.name.as_str()))
            .collect();
        assert_eq!(names, [("a.json", "a"), ("b.yaml", "b")]);
        assert_eq!(
            declared.files[1].policy.scope.as_ref().unwrap().namespace,
            "team-a"
        );
    }

    #[test]
    fn every_problem_names_its_file() {
        let d = dir();
        std::fs::write(d.path().join("a.json"), r#"{"name":"a"}"#).unwrap();
        std::fs::write(d.path().join("b.json"), r#"{"name":"a"}"#).unwrap();
        std::fs::write(d.path().join("c.yaml"), "name: [").unwrap();
        std::fs::write(d.path().join("d.json"), r#"{"pools":[]}"#).unwrap();
        std::fs::write(d.path().join("e.json"), r#"{"name":"e","nope":1}"#).unwrap();
        let (declared, problems) = read(d.path());
        assert_eq!(declared.files.len(), 1);
        let files: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            files,
            ["b.json", "c.yaml", "d.json", "e.json"],
            "{problems:?}"
        );
        assert!(problems[0].reason.contains("also declared in a.json"));
    }

    #[test]
    fn the_commit_comes_from_the_commit_file_or_the_checkout() {
        let d = dir();
        let repo = d.path();
        let policies = repo.join("policies");
        std::fs::create_dir_all(repo.join(".git/refs/heads")).unwrap();
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(repo.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        let id = "0123456789abcdef0123456789abcdef01234567";
        std::fs::write(
            repo.join(".git/packed-refs"),
            format!("# pack-refs\n{id} refs/heads/main\n"),
        )
        .unwrap();
        assert_eq!(commit(&policies).as_deref(), Some(id));
        let loose = "89abcdef0123456789abcdef0123456789abcdef";
        std::fs::write(repo.join(".git/refs/heads/main"), format!("{loose}\n")).unwrap();
        assert_eq!(commit(&policies).as_deref(), Some(loose));
        std::fs::write(policies.join(COMMIT_FILE), "ABCDEF1\n").unwrap();
        assert_eq!(commit(&policies).as_deref(), Some("abcdef1"));
        std::fs::write(policies.join(COMMIT_FILE), "not a commit").unwrap();
        assert_eq!(commit(&policies), None);
    }
}
