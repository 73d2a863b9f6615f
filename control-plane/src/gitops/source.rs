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
    /// Git blob id of the file's content.
    pub blob: String,
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
    // Files may be links (a ConfigMap's keys point into `..data/`), never out of it.
    let root = match dir.canonicalize() {
        Ok(r) => r,
        Err(e) => {
            problems.push(problem(
                &dir.display().to_string(),
                format!("cannot read the policy directory: {}", e.kind()),
            ));
            return (declared, problems);
        }
    };
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) => {
            problems.push(problem(
                &dir.display().to_string(),
                format!("cannot read the policy directory: {}", e.kind()),
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
    let mut budget = MAX_TOTAL_BYTES;
    for name in names {
        match read_capped(&root, &name, FILE_BYTES, &mut budget)
            .and_then(|text| parse(&text, &name))
        {
            Ok((policy, blob)) => {
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
                declared.files.push(PolicyFile {
                    file: name,
                    policy,
                    blob,
                });
            }
            Err(reason) => problems.push(problem(&name, reason)),
        }
    }
    declared.commit = commit(&root);
    (declared, problems)
}

/// Largest policy file: encoded policies are at most POLICY_BYTES; text forms take
/// more room, not 4×.
const FILE_BYTES: u64 = 4 * limits::POLICY_BYTES as u64;

/// Largest read of the whole directory.
const MAX_TOTAL_BYTES: u64 = 32 * 1024 * 1024;

/// Most YAML nodes one file may produce, aliases expanded (a valid policy is bounded
/// by the gate's 150,000 fields): an alias bomb of 100 KB stops here, not in memory.
const MAX_YAML_NODES: usize = 300_000;

/// The file `name` of `root`, if it is (or links to) a regular file inside `root`, read
/// up to `most` bytes and within what is left of `budget`.
fn read_capped(root: &Path, name: &str, most: u64, budget: &mut u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let path = root
        .join(name)
        .canonicalize()
        .map_err(|e| format!("cannot read: {}", e.kind()))?;
    if !path.starts_with(root) {
        return Err("links out of the policy directory; refused".into());
    }
    let file = std::fs::File::open(&path).map_err(|e| format!("cannot read: {}", e.kind()))?;
    // Checked on what was opened (procfs files say they are empty, devices are endless).
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read: {}", e.kind()))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let most = most.min(*budget);
    let mut text = Vec::new();
    file.take(most + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read: {}", e.kind()))?;
    if text.len() as u64 > most {
        return Err(format!(
            "larger than {most} bytes (files up to {FILE_BYTES}, {MAX_TOTAL_BYTES} for the directory)"
        ));
    }
    *budget -= text.len() as u64;
    Ok(text)
}

/// A policy and its Git blob id (what `git hash-object` prints: an auditor finds the
/// commit that introduced this exact content with `git log --find-object=<id>`).
fn parse(text: &[u8], name: &str) -> Result<(Policy, String), String> {
    use sha1::Digest as _;
    let mut blob = sha1::Sha1::new();
    blob.update(format!("blob {}\0", text.len()).as_bytes());
    blob.update(text);
    let blob = hex::encode(blob.finalize());
    let policy = if name.ends_with(".json") {
        serde_json::from_slice(text)
            .map_err(|e| format!("not a policy (JSON): {}", quiet(&e.to_string())))?
    } else {
        let counter = std::cell::Cell::new(0);
        let value =
            CountedValue::deserialize_counted(serde_yaml::Deserializer::from_slice(text), &counter)
                .map_err(|e| format!("not a policy (YAML): {}", quiet(&e.to_string())))?;
        serde_json::from_value(value)
            .map_err(|e| format!("not a policy: {}", quiet(&e.to_string())))?
    };
    Ok((policy, blob))
}

/// A parser's message without the values it quotes (`"…"`), at most 300 characters:
/// what a file says stays in the file (field names, in backquotes, stay).
fn quiet(message: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in message.chars() {
        match (c, quoted) {
            ('"', false) => {
                quoted = true;
                out.push_str("\"…\"");
            }
            ('"', true) => quoted = false,
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    if out.len() > 300 {
        out.truncate(out.floor_char_boundary(300));
        out.push('…');
    }
    out
}

/// YAML into a JSON value, counting nodes as they come (aliases are replayed by the
/// parser, so they count each time).
struct CountedValue<'c>(&'c std::cell::Cell<usize>);

impl<'c> CountedValue<'c> {
    fn deserialize_counted<'de, D: serde::Deserializer<'de>>(
        d: D,
        counter: &'c std::cell::Cell<usize>,
    ) -> Result<serde_json::Value, D::Error> {
        serde::de::DeserializeSeed::deserialize(CountedValue(counter), d)
    }

    fn count<E: serde::de::Error>(&self) -> Result<(), E> {
        let n = self.0.get() + 1;
        self.0.set(n);
        if n > MAX_YAML_NODES {
            return Err(E::custom(format!(
                "more than {MAX_YAML_NODES} values (anchors and aliases expanded)"
            )));
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for CountedValue<'_> {
    type Value = serde_json::Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for CountedValue<'_> {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.count()?;
        Ok(v.into())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.count()?;
        Ok(v.into())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.count()?;
        Ok(v.into())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.count()?;
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.count()?;
        Ok(v.into())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.count()?;
        Ok(serde_json::Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        serde::de::DeserializeSeed::deserialize(self, d)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        self.count()?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(CountedValue(self.0))? {
            items.push(v);
        }
        Ok(items.into())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        self.count()?;
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(CountedValue(self.0))?;
            object.insert(key, value);
        }
        Ok(object.into())
    }
}

/// The commit the directory comes from: the [`COMMIT_FILE`], or the HEAD of the git
/// checkout that contains it (a worktree's `.git` file followed, loose or packed refs).
pub fn commit(dir: &Path) -> Option<String> {
    if dir.join(COMMIT_FILE).exists() {
        let mut budget = 128;
        let text = read_capped(dir, COMMIT_FILE, 128, &mut budget).ok()?;
        return hex_id(String::from_utf8_lossy(&text).trim());
    }
    let git = dir
        .ancestors()
        .map(|d| d.join(".git"))
        .find(|g| g.exists())?;
    let small = |p: &Path| small_file(p, 4096);
    let git_dir = if git.is_file() {
        let text = small(&git)?;
        let target = PathBuf::from(text.trim().strip_prefix("gitdir:")?.trim());
        git.parent()?.join(target)
    } else {
        git
    };
    let head = small(&git_dir.join("HEAD"))?;
    let Some(reference) = head.trim().strip_prefix("ref:") else {
        return hex_id(head.trim());
    };
    let reference = reference.trim();
    // A worktree shares its refs with the main repository (`commondir`).
    if reference.split('/').any(|part| part == "..") {
        return None;
    }
    let common = small(&git_dir.join("commondir"))
        .map(|c| git_dir.join(c.trim()))
        .unwrap_or_else(|| git_dir.clone());
    for base in [&git_dir, &common] {
        if let Some(id) = small(&base.join(reference)) {
            return hex_id(id.trim());
        }
    }
    small_file(&common.join("packed-refs"), 8 * 1024 * 1024)?
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, r)| *r == reference)
        .and_then(|(id, _)| hex_id(id))
}

/// A regular file's text, if it holds at most `most` bytes.
fn small_file(path: &Path, most: u64) -> Option<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(most + 1).read_to_string(&mut text).ok()?;
    (text.len() as u64 <= most).then_some(text)
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
    fn links_out_of_the_directory_endless_files_and_alias_bombs_are_refused_unread() {
        let d = dir();
        let outside = d.path().join("secret");
        std::fs::write(&outside, "-----BEGIN PRIVATE KEY-----\nMIIEsecret\n").unwrap();
        let policies = d.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::os::unix::fs::symlink(&outside, policies.join("a-key.yaml")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", policies.join("b-zero.yaml")).unwrap();
        std::os::unix::fs::symlink("/proc/self/pagemap", policies.join("c-proc.yaml")).unwrap();
        // A secret *inside* the directory, as a YAML string: its value is not echoed.
        std::fs::write(
            policies.join("d-inside.yaml"),
            "\"eyJhbGciOi.secret-token\"\n",
        )
        .unwrap();
        let row = format!("[{}]", vec!["0"; 2000].join(","));
        let aliases = format!("[{}]", vec!["*a"; 2000].join(","));
        std::fs::write(
            policies.join("e-bomb.yaml"),
            format!("name: x\nx: &a {row}\ny: {aliases}\n"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/dev/zero", policies.join(COMMIT_FILE)).unwrap();
        let (declared, problems) = read(&policies);
        assert!(declared.files.is_empty() && declared.commit.is_none());
        let text = format!("{problems:?}");
        assert!(!text.contains("MIIE") && !text.contains("eyJ"), "{text}");
        let reasons: Vec<_> = problems
            .iter()
            .map(|p| (p.path.as_str(), p.reason.as_str()))
            .collect();
        assert!(
            reasons[0].1.contains("links out of the policy directory"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].1.contains("links out of the policy directory")
                || reasons[1].1.contains("not a regular file"),
            "{reasons:?}"
        );
        assert!(reasons[3].1.contains("not a policy"), "{reasons:?}");
        assert!(
            reasons[4].1.contains("more than 300000 values"),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_configmap_volume_links_into_its_own_data() {
        let d = dir();
        let version = d.path().join("..2026_12_07_0001");
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("a.yaml"), "name: a\n").unwrap();
        std::os::unix::fs::symlink("..2026_12_07_0001", d.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/a.yaml", d.path().join("a.yaml")).unwrap();
        let (declared, problems) = read(d.path());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(declared.files[0].policy.name, "a");
        // `git hash-object` of "name: a\n".
        assert_eq!(declared.files[0].blob.len(), 40);
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
