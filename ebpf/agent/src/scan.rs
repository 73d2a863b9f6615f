//! What the kernel programs cannot judge from packets: processes of enrolled pods that
//! hold a capability going around them (`CAP_NET_RAW` for packet sockets,
//! `CAP_NET_ADMIN`, `CAP_SYS_ADMIN`, `CAP_SYS_PTRACE` to take another process's
//! sockets), open packet sockets, and pods the injection webhook flagged as not
//! enforceable. Read from `/proc` every scan interval; each new finding is a security
//! event (`vigie.egress.degraded`), and all of them are metrics.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

/// Capability bits (linux/capability.h) and the names findings carry: those that go
/// around the egress enforcement directly (raw frames, device and routing changes,
/// another process's sockets) or through the kernel (modules, BPF, host files).
pub const RISKY_CAPABILITIES: [(u32, &str); 8] = [
    (13, "cap_net_raw"),
    (12, "cap_net_admin"),
    (21, "cap_sys_admin"),
    (19, "cap_sys_ptrace"),
    (16, "cap_sys_module"),
    (39, "cap_bpf"),
    (38, "cap_perfmon"),
    (2, "cap_dac_read_search"),
];
pub const PACKET_SOCKET: &str = "packet_socket";
pub const NOT_ENFORCEABLE: &str = "not_enforceable";
/// A pod whose processes are in more than one network namespace (one made its own).
pub const SEVERAL_NAMESPACES: &str = "several_network_namespaces";

/// Cgroup levels searched below a container's cgroup for processes.
const MAX_DEPTH: u8 = 3;
/// Processes examined per container and scan (a bound on the work a pod can cause).
const MAX_PIDS: usize = 4096;
/// Descriptors examined per container and scan when looking for packet sockets.
const MAX_FDS: usize = 65_536;

/// The effective capability set of a `/proc/<pid>/status`.
pub fn effective_capabilities(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Socket inodes of the packet sockets listed in a `/proc/<pid>/net/packet`.
pub fn packet_inodes(table: &str) -> HashSet<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect()
}

/// The inode of a `socket:[N]` fd link target.
pub fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Processes in `dir` and the cgroups below it (bounded).
pub fn pids_under(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0u8)];
    while let Some((d, depth)) = stack.pop() {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(
                procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        if out.len() >= MAX_PIDS {
            out.truncate(MAX_PIDS);
            break;
        }
        if depth < MAX_DEPTH
            && let Ok(entries) = std::fs::read_dir(&d)
        {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| (e.path(), depth + 1)),
            );
        }
    }
    out
}

/// What the processes of one container hold.
pub fn risks_of(pids: &[u32]) -> BTreeSet<&'static str> {
    let mut risks = BTreeSet::new();
    let mut fds_left = MAX_FDS;
    for pid in pids {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        if let Some(caps) = effective_capabilities(&status) {
            for (bit, name) in RISKY_CAPABILITIES {
                if caps & (1u64 << bit) != 0 {
                    risks.insert(name);
                }
            }
        }
        if risks.contains(PACKET_SOCKET) {
            continue;
        }
        let packets = std::fs::read_to_string(format!("/proc/{pid}/net/packet"))
            .map(|t| packet_inodes(&t))
            .unwrap_or_default();
        if packets.is_empty() {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds.flatten().take(fds_left).any(|fd| {
            fds_left = fds_left.saturating_sub(1);
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|t| socket_inode(&t.to_string_lossy()))
                .is_some_and(|i| packets.contains(&i))
        });
        if holds {
            risks.insert(PACKET_SOCKET);
        }
    }
    risks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read() {
        let status = "Name:\tpython3\nCapInh:\t0000000000000000\nCapEff:\t0000000000002000\n";
        assert_eq!(effective_capabilities(status), Some(1 << 13));
        assert_eq!(effective_capabilities("Name: x\n"), None);
        let table = "sk       RefCnt Type Proto  Iface R Rmem   User   Inode\n\
                     ffff8c0a 3      3    0003   2     1 0      0      418273\n";
        assert_eq!(packet_inodes(table), HashSet::from([418_273]));
        assert_eq!(socket_inode("socket:[418273]"), Some(418_273));
        assert_eq!(socket_inode("pipe:[5]"), None);
    }

    #[test]
    fn this_process_is_scanned() {
        // The test runs as whatever user CI uses: only check the scan reads itself.
        let me = std::process::id();
        let risks = risks_of(&[me]);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let caps = effective_capabilities(&status).unwrap();
        assert_eq!(risks.contains("cap_net_raw"), caps & (1 << 13) != 0);
        assert!(!risks.contains(PACKET_SOCKET));
    }
}
