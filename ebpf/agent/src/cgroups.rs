//! Where pods and containers live in the cgroup v2 tree.
//!
//! The kubelet names pod cgroups after the pod UID and the runtime names container
//! cgroups after the container ID; the layout differs by cgroup driver and runtime:
//!
//! | driver   | runtime    | pod directory                                        | container directory          |
//! |----------|------------|------------------------------------------------------|------------------------------|
//! | systemd  | containerd | `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice` | `cri-containerd-<id>.scope` |
//! | systemd  | CRI-O      | same                                                 | `crio-<id>.scope`            |
//! | cgroupfs | containerd | `kubepods/<qos>/pod<uid>`                            | `<id>`                       |
//! | cgroupfs | CRI-O      | same                                                 | `crio-<id>`                  |
//!
//! (Guaranteed pods have no `<qos>` level; `<uid_>` is the UID with `_` for `-`.)
//! Rather than guess the driver, the agent searches a few levels under the root for
//! a directory named after the UID in either form, then a child named after the ID.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The cgroup v2 mount point, from the mount table (hybrid hosts mount it at
/// `/sys/fs/cgroup/unified`, unified ones at `/sys/fs/cgroup`).
pub fn cgroup2_mount() -> std::io::Result<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    mount_from_mountinfo(&table).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no cgroup2 file system is mounted (the egress agent needs cgroup v2)",
        )
    })
}

fn mount_from_mountinfo(table: &str) -> Option<PathBuf> {
    mounts(table)
        .into_iter()
        .find_map(|(mount, fstype)| (fstype == "cgroup2").then_some(mount))
}

/// (mount point, file-system type) of every line of a `/proc/self/mountinfo` table.
pub fn mounts(table: &str) -> Vec<(PathBuf, String)> {
    table
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            Some((
                PathBuf::from(left.split_whitespace().nth(4)?),
                right.split_whitespace().next()?.to_string(),
            ))
        })
        .collect()
}

/// The file-system type `dir` is on (its longest mount point prefix).
pub fn fs_type_of(dir: &Path) -> std::io::Result<Option<String>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dir = dir.canonicalize()?;
    Ok(mounts(&table)
        .into_iter()
        .filter(|(mount, _)| dir.starts_with(mount))
        .max_by_key(|(mount, _)| mount.as_os_str().len())
        .map(|(_, fstype)| fstype))
}

/// The cgroup id the kernel reports (`bpf_get_current_cgroup_id`) is the cgroup
/// directory's inode number on cgroup v2.
pub fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// `containerd://abc…` → `abc…`.
pub fn bare_container_id(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

/// Deepest level searched for a pod directory under the root.
const MAX_POD_DEPTH: usize = 4;

pub fn find_pod_dir(root: &Path, uid: &str) -> Option<PathBuf> {
    if uid.is_empty() {
        return None;
    }
    let dashed = format!("pod{uid}");
    let underscored = format!("pod{}", uid.replace('-', "_"));
    let matches = |name: &str| {
        name == dashed || name.ends_with(&format!("-{underscored}.slice")) || name == underscored
    };
    let mut level = vec![root.to_path_buf()];
    for _ in 0..MAX_POD_DEPTH {
        let mut next = Vec::new();
        for dir in level {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = e.file_name();
                let name = name.to_string_lossy();
                if matches(&name) {
                    return Some(e.path());
                }
                next.push(e.path());
            }
        }
        level = next;
    }
    None
}

pub fn find_container_dir(pod_dir: &Path, container_id: &str) -> Option<PathBuf> {
    let id = bare_container_id(container_id);
    if id.len() < 12 {
        return None;
    }
    // Exactly the runtimes' forms: CRI-O also puts `crio-conmon-<id>.scope` (its
    // monitor) in the pod's cgroup, which must not be taken for the container.
    let forms = [
        id.to_string(),
        format!("cri-containerd-{id}.scope"),
        format!("crio-{id}.scope"),
        format!("crio-{id}"),
        format!("docker-{id}.scope"),
    ];
    std::fs::read_dir(pod_dir).ok()?.flatten().find_map(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        forms.iter().any(|f| *f == name).then(|| e.path())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b8e5c2a-5f0e-4c5e-9a55-0c1f6e2f9b11";
    const ID: &str = "4f2c0a9d8b7e6f5a4f2c0a9d8b7e6f5a4f2c0a9d8b7e6f5a4f2c0a9d8b7e6f5a";

    fn layout(dirs: &[String]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        root
    }

    #[test]
    fn systemd_and_cgroupfs_layouts_for_containerd_and_crio() {
        let u = UID.replace('-', "_");
        let cases = [
            (
                format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
                format!("cri-containerd-{ID}.scope"),
            ),
            (
                format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"
                ),
                format!("crio-{ID}.scope"),
            ),
            (
                format!("kubepods.slice/kubepods-pod{u}.slice"),
                format!("cri-containerd-{ID}.scope"),
            ),
            (format!("kubepods/burstable/pod{UID}"), ID.to_string()),
            (format!("kubepods/pod{UID}"), format!("crio-{ID}")),
        ];
        for (pod, container) in cases {
            let root = layout(&[
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podother.slice/x"
                    .into(),
                format!("{pod}/{container}"),
                format!("{pod}/crio-conmon-{ID}.scope"),
            ]);
            let found = find_pod_dir(root.path(), UID).unwrap();
            assert_eq!(found, root.path().join(&pod), "{pod}");
            let c = find_container_dir(&found, &format!("containerd://{ID}")).unwrap();
            assert_eq!(c, found.join(&container));
            assert!(find_container_dir(&found, "containerd://0123456789abcdef").is_none());
        }
        let root = layout(&["kubepods/besteffort/podsomeone-else".into()]);
        assert!(find_pod_dir(root.path(), UID).is_none());
        assert!(find_pod_dir(root.path(), "").is_none());
    }

    #[test]
    fn cgroup2_mount_point_from_the_mount_table() {
        let hybrid = "25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                      27 25 0:25 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(
            mount_from_mountinfo(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mount_from_mountinfo(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            mount_from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }
}
