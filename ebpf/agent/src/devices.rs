//! Where the tc backstop goes: the network namespaces of the enrolled pods, and their
//! devices.
//!
//! A packet (`AF_PACKET`) socket writes whole frames to a device below every cgroup
//! hook; the tc program on the device's egress is the one place that sees them. The
//! agent finds each enrolled pod's namespace through a process of the pod (its
//! `/proc/<pid>/ns/net`), and lists the namespace's devices from inside it.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// A network namespace, by its nsfs inode, and a process in it (`None`: the agent's
/// own namespace, e.g. pods on the host network or the end-to-end tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Netns {
    pub inode: u64,
    pub pid: Option<u32>,
}

/// The agent's own network namespace inode.
pub fn own_netns() -> std::io::Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// Namespaces guarded per pod, and devices per namespace: a pod that makes thousands
/// of namespaces or devices cannot make the agent's pass unbounded. The pod's own
/// namespace is created before any of its processes can make one, so it has the
/// lowest inode of them and is kept; a pod with more than one is reported.
pub const MAX_NAMESPACES_PER_POD: usize = 8;
pub const MAX_DEVICES_PER_NAMESPACE: usize = 64;

/// Every network namespace the processes of a pod's cgroup tree are in (the sandbox's
/// in Kubernetes, and any other one a process entered or created: a process cannot move
/// the backstop away from its pod's devices by making a namespace of its own), at most
/// [`MAX_NAMESPACES_PER_POD`], lowest inodes first.
pub fn namespaces_of_pod(pod_dir: &Path, own: u64) -> Vec<Netns> {
    let mut found: std::collections::BTreeMap<u64, Netns> = std::collections::BTreeMap::new();
    for pid in crate::scan::pids_under(pod_dir) {
        if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
            let inode = m.ino();
            found.entry(inode).or_insert(Netns {
                inode,
                pid: (inode != own).then_some(pid),
            });
        }
    }
    found.into_values().take(MAX_NAMESPACES_PER_POD).collect()
}

/// (index, name) of the devices of the calling thread's network namespace, loopback
/// included: with forwarding on, a frame written to `lo` is routed out.
pub fn devices() -> std::io::Result<Vec<(u32, String)>> {
    #[expect(
        unsafe_code,
        reason = "if_nameindex is the libc interface to list devices"
    )]
    // SAFETY: if_nameindex returns a null-terminated array we free once, below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        #[expect(unsafe_code, reason = "reading the array if_nameindex returned")]
        // SAFETY: the array ends with an entry of index 0, which stops the loop.
        let entry = unsafe { &*list.add(i) };
        if entry.if_index == 0 || entry.if_name.is_null() {
            break;
        }
        #[expect(unsafe_code, reason = "the names are C strings owned by the array")]
        // SAFETY: a non-null, NUL-terminated name inside the live array.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.if_name) }
            .to_string_lossy()
            .into_owned();
        out.push((entry.if_index, name));
        i += 1;
    }
    #[expect(unsafe_code, reason = "freeing what if_nameindex allocated")]
    // SAFETY: the pointer if_nameindex returned, freed once.
    unsafe {
        libc::if_freenameindex(list);
    }
    Ok(out)
}

/// Runs `f` on a thread that has entered `ns` (the caller's namespace when `ns.pid`
/// is `None`). The thread ends with `f`: no other work ever runs in that namespace.
pub fn within<R: Send>(ns: Netns, f: impl FnOnce() -> R + Send) -> std::io::Result<R> {
    let Some(pid) = ns.pid else {
        return Ok(f());
    };
    let file = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            use std::os::fd::AsRawFd as _;
            #[expect(unsafe_code, reason = "setns has no safe wrapper in std")]
            // SAFETY: a valid namespace fd, owned by `file` for the whole call.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| std::io::Error::other("namespace thread panicked"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_namespace_lists_its_devices_with_loopback() {
        let own = own_netns().unwrap();
        let ns = Netns {
            inode: own,
            pid: None,
        };
        let devs = within(ns, devices).unwrap().unwrap();
        assert!(devs.iter().all(|(i, _)| *i > 0));
        assert!(devs.iter().any(|(_, n)| n == "lo"));
        // This process's cgroup has this process in it: its namespace is found.
        let cg = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let rel = cg
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap()
            .trim();
        if let Ok(root) = crate::cgroups::cgroup2_mount() {
            let dir = root.join(rel.trim_start_matches('/'));
            if dir.join("cgroup.procs").exists() {
                let found = namespaces_of_pod(&dir, own);
                assert!(
                    found.iter().any(|n| n.inode == own && n.pid.is_none()),
                    "same namespace: no thread needed"
                );
            }
        }
    }
}
