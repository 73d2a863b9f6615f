//! The kernel side: loading the programs, attaching them for good, and keeping the
//! maps in step with the plan.
//!
//! Maps and links are pinned under the bpffs directory, so enforcement outlives the
//! agent: a restarted agent reuses the pinned maps as they are (every enrolled cgroup
//! stays enforced), attaches its programs next to the pinned ones, and only then
//! detaches the old links (for a moment both run; all must allow). A policy change
//! loads the new entries under a fresh policy id, switches each cgroup to it with one
//! map write, then deletes the old entries: a connect sees the old policy or the new,
//! never a mix, and a load that fails half-way is removed before anything points to it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsFd as _;
use std::path::Path;
use std::sync::Arc;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSkbAttachType};
use aya::{Ebpf, EbpfLoader};
use tracing::{info, warn};
use vigie_egress_common::compile::Entry;
use vigie_egress_common::{
    Allow, DENY_ALL_POLICY, DestKey, EventBudget, LSM_SOCKET_CREATE, MAP_ALLOW, MAP_ENROLLED,
    MAP_EVENT_BUDGET, MAP_EVENTS, MAP_ORIG_PEER, MAP_REDIRECT, MAP_REDIRECT_PORT, MAP_STATS,
    OrigDst, POLICY_PREFIX_BITS, PROGRAMS, PeerKey, STAT_DENIED, STAT_EVENTS_LOST, STAT_REDIRECTED,
    TC_EGRESS,
};

use crate::plan::{Compiled, Desired, PolicyKey, key_of};

/// Client end of a redirected connection → where it was going (read by the lookup
/// endpoint the sidecars call).
pub type OrigPeers = Arc<std::sync::Mutex<BpfHashMap<MapData, PeerKey, OrigDst>>>;

const SOCK_OPS: &str = "vigie_sock_ops";

/// Where the kernel lists its active security modules.
const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// Whether enrolled cgroups are kept from creating packet, XDP and other non-IP
/// sockets (the BPF LSM program), and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketGuard {
    Enforced,
    Unavailable(String),
}

/// Events an enrolled cgroup's denials did not produce, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventDrops {
    pub rate_limited: u64,
    pub ring_full: u64,
}

/// The programs, built for bpfel-unknown-none by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vigie-egress-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("{0} is not on a bpf file system (mount one: mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("pinning {path}: {detail}")]
    Pin { path: String, detail: String },
    #[error("map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BpfError {
    let what = what.into();
    move |source| BpfError::Io { what, source }
}

pub struct Enforcer {
    enrolled: BpfHashMap<MapData, u64, u32>,
    allow: LpmTrie<MapData, DestKey, Allow>,
    redirect: LpmTrie<MapData, DestKey, Allow>,
    redirect_port: BpfHashMap<MapData, u32, u32>,
    stats: PerCpuArray<MapData, u64>,
    budget: PerCpuHashMap<MapData, u64, EventBudget>,
    socket_guard: SocketGuard,
    /// (network namespace inode, device index) carrying the tc backstop.
    tc_links: HashSet<(u64, u32)>,
    /// tc pins a previous agent left: replaced as devices are guarded again, removed
    /// after the first pass for those that were not.
    stale_tc: Vec<std::path::PathBuf>,
    /// Policies in the maps: content key → (policy id, what was loaded).
    loaded: HashMap<PolicyKey, (u32, Arc<Compiled>)>,
    next_id: u32,
    cgroup: File,
    links_dir: std::path::PathBuf,
    /// Whether the sock_ops program (redirects only) is attached.
    sock_ops: bool,
    /// Kept alive: the links are pinned, the object holds the programs' fds.
    bpf: Ebpf,
}

/// What the agent drains besides applying plans.
pub struct Channels {
    pub events: RingBuf<MapData>,
    pub orig_peers: OrigPeers,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub loaded_policies: usize,
    pub removed_policies: usize,
    pub enrolled_changed: usize,
    pub unenrolled: usize,
}

impl Enforcer {
    /// Loads and attaches the programs to `cgroup` (adopting pinned maps and links
    /// found under `pin_dir`).
    pub fn start(pin_dir: &Path, cgroup: &Path) -> Result<(Enforcer, Channels), BpfError> {
        std::fs::create_dir_all(pin_dir).map_err(io(format!("creating {}", pin_dir.display())))?;
        let fstype = crate::cgroups::fs_type_of(pin_dir).map_err(io("reading the mount table"))?;
        if fstype.as_deref() != Some("bpf") {
            return Err(BpfError::NotBpffs(pin_dir.display().to_string()));
        }
        let links_dir = pin_dir.join("links");
        std::fs::create_dir_all(&links_dir)
            .map_err(io(format!("creating {}", links_dir.display())))?;
        let adopted = pin_dir.join(MAP_ENROLLED).exists();
        let mut bpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(OBJECT)?;
        let cg = File::open(cgroup).map_err(io(format!("opening cgroup {}", cgroup.display())))?;
        let take = |bpf: &mut Ebpf, name: &'static str| {
            bpf.take_map(name).ok_or(BpfError::MissingMap(name))
        };
        let map_err = |name: &'static str| move |source| BpfError::Map { name, source };
        let enrolled =
            BpfHashMap::try_from(take(&mut bpf, MAP_ENROLLED)?).map_err(map_err(MAP_ENROLLED))?;
        let allow = LpmTrie::try_from(take(&mut bpf, MAP_ALLOW)?).map_err(map_err(MAP_ALLOW))?;
        let stats =
            PerCpuArray::try_from(take(&mut bpf, MAP_STATS)?).map_err(map_err(MAP_STATS))?;
        let events = RingBuf::try_from(take(&mut bpf, MAP_EVENTS)?).map_err(map_err(MAP_EVENTS))?;
        let redirect =
            LpmTrie::try_from(take(&mut bpf, MAP_REDIRECT)?).map_err(map_err(MAP_REDIRECT))?;
        let redirect_port = BpfHashMap::try_from(take(&mut bpf, MAP_REDIRECT_PORT)?)
            .map_err(map_err(MAP_REDIRECT_PORT))?;
        let orig_peers =
            BpfHashMap::try_from(take(&mut bpf, MAP_ORIG_PEER)?).map_err(map_err(MAP_ORIG_PEER))?;
        let budget = PerCpuHashMap::try_from(take(&mut bpf, MAP_EVENT_BUDGET)?)
            .map_err(map_err(MAP_EVENT_BUDGET))?;
        let mut this = Enforcer {
            enrolled,
            allow,
            redirect,
            redirect_port,
            stats,
            budget,
            socket_guard: SocketGuard::Unavailable("not attached yet".into()),
            tc_links: HashSet::new(),
            stale_tc: Vec::new(),
            loaded: HashMap::new(),
            next_id: 1,
            bpf,
            cgroup: cg,
            links_dir,
            sock_ops: false,
        };
        for name in PROGRAMS {
            // sock_ops only serves redirects: attached when a plan has one (it runs
            // on every TCP event of every socket below the attach point).
            if name == SOCK_OPS && !this.links_dir.join(name).exists() {
                continue;
            }
            this.attach_pinned(name)?;
        }
        this.socket_guard = this.guard_socket_families();
        this.stale_tc = std::fs::read_dir(&this.links_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("tc_"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        this.adopt();
        info!(
            adopted,
            enrolled = this.enrolled.keys().count(),
            policies = this.loaded.len(),
            cgroup = %cgroup.display(),
            socket_guard = ?this.socket_guard,
            "egress programs attached"
        );
        Ok((
            this,
            Channels {
                events,
                orig_peers: Arc::new(std::sync::Mutex::new(orig_peers)),
            },
        ))
    }

    /// Rebuilds what a previous agent loaded from the pinned maps, so a restart with
    /// unchanged policies rewrites nothing, and new ids never collide with old ones.
    fn adopt(&mut self) {
        let mut by_id: HashMap<u32, Compiled> = HashMap::new();
        for (redirect, trie) in [(false, &self.allow), (true, &self.redirect)] {
            for (key, allow) in trie.iter().filter_map(Result::ok) {
                let id = u32::from_be_bytes(key.data().policy);
                let entry = Entry {
                    addr: key.data().addr,
                    prefix_len: u8::try_from(key.prefix_len().saturating_sub(POLICY_PREFIX_BITS))
                        .unwrap_or(u8::MAX),
                    allow,
                };
                let c = by_id.entry(id).or_default();
                if redirect {
                    c.redirect.push(entry);
                } else {
                    c.allow.push(entry);
                }
            }
        }
        for (id, port) in self.redirect_port.iter().filter_map(Result::ok) {
            by_id.entry(id).or_default().redirect_port = u16::try_from(port).unwrap_or(0);
        }
        let mut max_id = self
            .enrolled
            .iter()
            .filter_map(Result::ok)
            .map(|(_, id)| id)
            .filter(|id| *id != DENY_ALL_POLICY)
            .max()
            .unwrap_or(0);
        for (id, mut c) in by_id {
            max_id = max_id.max(id);
            // The compiler's order: by address, then prefix length.
            c.allow.sort_by_key(|e| (e.addr, e.prefix_len));
            c.redirect.sort_by_key(|e| (e.addr, e.prefix_len));
            self.loaded.entry(key_of(&c)).or_insert((id, Arc::new(c)));
        }
        self.next_id = max_id.saturating_add(1).max(1);
    }

    /// Attaches `name` (loading it first if needed) and pins the link, replacing a
    /// pinned one: the new link is pinned beside the old one and renamed over it, so
    /// the old link loses its last reference and detaches. A crash at any step leaves
    /// one pinned link or both, never none.
    fn attach_pinned(&mut self, name: &'static str) -> Result<(), BpfError> {
        let path = self.links_dir.join(name);
        // bpffs refuses names with a dot.
        let fresh = self.links_dir.join(format!("{name}_new"));
        let _ = std::fs::remove_file(&fresh);
        if let Some(aya::programs::Program::CgroupSockopt(p)) = self.bpf.program_mut(name) {
            // aya 0.14 cannot turn a sockopt link into a pinnable one: made by hand.
            let err = |source| BpfError::Program { name, source };
            if p.fd().is_err() {
                p.load().map_err(err)?;
            }
            let prog = p.fd().map_err(err)?;
            raw::link_and_pin(
                prog.as_fd(),
                self.cgroup.as_fd(),
                raw::BPF_CGROUP_SETSOCKOPT,
                &fresh,
            )
            .map_err(|e| BpfError::Pin {
                path: fresh.display().to_string(),
                detail: e.to_string(),
            })?;
        } else {
            let link = attach(&mut self.bpf, name, &self.cgroup)?;
            link.pin(&fresh).map_err(|e| BpfError::Pin {
                path: fresh.display().to_string(),
                detail: e.to_string(),
            })?;
        }
        std::fs::rename(&fresh, &path).map_err(io(format!("replacing {}", path.display())))?;
        if name == SOCK_OPS {
            self.sock_ops = true;
        }
        Ok(())
    }

    /// Attaches the LSM program that keeps enrolled cgroups from creating packet, XDP
    /// and other non-IP sockets, where the kernel has the BPF LSM active (it is listed
    /// in `/sys/kernel/security/lsm`; without it the program would load and never
    /// run). Without it, such sockets are only found by the agent's scan.
    fn guard_socket_families(&mut self) -> SocketGuard {
        match std::fs::read_to_string(LSM_LIST) {
            Ok(list) if list.trim().split(',').any(|m| m == "bpf") => {}
            Ok(list) => {
                return SocketGuard::Unavailable(format!(
                    "the BPF LSM is not active (active: {}; boot with lsm=...,bpf)",
                    list.trim()
                ));
            }
            Err(e) => {
                return SocketGuard::Unavailable(format!(
                    "cannot read {LSM_LIST} ({e}); mount securityfs in the agent's container"
                ));
            }
        }
        let loaded = (|| -> Result<(), String> {
            let prog: &mut aya::programs::LsmCgroup = self
                .bpf
                .program_mut(LSM_SOCKET_CREATE)
                .ok_or("program missing from the object")?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| e.to_string())?;
            if prog.fd().is_err() {
                let btf = aya::Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
                prog.load("socket_create", &btf)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })();
        if let Err(e) = loaded {
            return SocketGuard::Unavailable(format!("loading the LSM program: {e}"));
        }
        match self.attach_pinned(LSM_SOCKET_CREATE) {
            Ok(()) => SocketGuard::Enforced,
            Err(e) => SocketGuard::Unavailable(e.to_string()),
        }
    }

    /// Attaches the tc backstop (TCX egress) to every device of each namespace that
    /// does not have it yet, and detaches it from namespaces no longer listed. Links
    /// are pinned as `tc_<netns inode>_<device index>`. Returns the devices guarded
    /// and the namespaces that could not be entered or listed (retried next time).
    pub fn guard_devices(&mut self, targets: &[crate::devices::Netns]) -> (usize, Vec<String>) {
        let mut errors = Vec::new();
        if let Some(aya::programs::Program::SchedClassifier(p)) = self.bpf.program_mut(TC_EGRESS)
            && p.fd().is_err()
            && let Err(e) = p.load()
        {
            return (0, vec![format!("loading {TC_EGRESS}: {e}")]);
        }
        let wanted: HashSet<u64> = targets.iter().map(|t| t.inode).collect();
        for ns in targets {
            let known: HashSet<u32> = self
                .tc_links
                .iter()
                .filter(|(n, _)| *n == ns.inode)
                .map(|(_, i)| *i)
                .collect();
            let links_dir = self.links_dir.clone();
            let Some(aya::programs::Program::SchedClassifier(prog)) =
                self.bpf.program_mut(TC_EGRESS)
            else {
                return (0, vec![format!("{TC_EGRESS} missing from the object")]);
            };
            let inode = ns.inode;
            let done = crate::devices::within(*ns, move || {
                let mut attached = Vec::new();
                let mut failed = Vec::new();
                for (index, name) in crate::devices::devices()?
                    .into_iter()
                    .take(crate::devices::MAX_DEVICES_PER_NAMESPACE)
                {
                    if known.contains(&index) {
                        continue;
                    }
                    let pinned = prog
                        .attach(&name, aya::programs::TcAttachType::Egress)
                        .map_err(|e| e.to_string())
                        .and_then(|id| prog.take_link(id).map_err(|e| e.to_string()))
                        .and_then(|l| FdLink::try_from(l).map_err(|e| e.to_string()))
                        .and_then(|l| {
                            let path = links_dir.join(format!("tc_{inode}_{index}"));
                            let fresh = links_dir.join(format!("tc_{inode}_{index}_new"));
                            let _ = std::fs::remove_file(&fresh);
                            l.pin(&fresh).map_err(|e| e.to_string())?;
                            std::fs::rename(&fresh, &path).map_err(|e| e.to_string())
                        });
                    match pinned {
                        Ok(()) => attached.push(index),
                        Err(e) => failed.push(format!("device {name}: {e}")),
                    }
                }
                Ok::<_, std::io::Error>((attached, failed))
            });
            match done {
                Ok(Ok((attached, failed))) => {
                    self.tc_links
                        .extend(attached.into_iter().map(|i| (inode, i)));
                    errors.extend(failed);
                }
                Ok(Err(e)) | Err(e) => errors.push(format!("network namespace {inode}: {e}")),
            }
        }
        for path in std::mem::take(&mut self.stale_tc) {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let kept = self
                .tc_links
                .iter()
                .any(|(ns, i)| name == format!("tc_{ns}_{i}"));
            if !kept {
                let _ = std::fs::remove_file(&path);
            }
        }
        // Namespaces gone (pods left): their pins go, which detaches what is left.
        let gone: Vec<(u64, u32)> = self
            .tc_links
            .iter()
            .filter(|(ns, _)| !wanted.contains(ns))
            .copied()
            .collect();
        for (ns, index) in gone {
            let _ = std::fs::remove_file(self.links_dir.join(format!("tc_{ns}_{index}")));
            self.tc_links.remove(&(ns, index));
        }
        (self.tc_links.len(), errors)
    }

    pub fn socket_guard(&self) -> &SocketGuard {
        &self.socket_guard
    }

    /// Per enrolled cgroup id: denials whose event was dropped (rate limit, full ring).
    pub fn event_drops(&self) -> HashMap<u64, EventDrops> {
        self.budget
            .iter()
            .filter_map(Result::ok)
            .map(|(cgroup, per_cpu)| {
                let drops = per_cpu
                    .iter()
                    .fold(EventDrops::default(), |acc, b| EventDrops {
                        rate_limited: acc.rate_limited.saturating_add(b.rate_limited),
                        ring_full: acc.ring_full.saturating_add(b.ring_full),
                    });
                (cgroup, drops)
            })
            .collect()
    }

    /// Attaches or detaches the sock_ops program as redirects come and go.
    fn sock_ops_for(&mut self, needed: bool) -> Result<(), BpfError> {
        if needed && !self.sock_ops {
            self.attach_pinned(SOCK_OPS)?;
            info!("redirects in force: sock_ops attached");
        } else if !needed && self.sock_ops {
            // The pin is the link's last reference: removing it detaches the program.
            std::fs::remove_file(self.links_dir.join(SOCK_OPS))
                .map_err(io("detaching sock_ops"))?;
            self.sock_ops = false;
            info!("no redirects: sock_ops detached");
        }
        Ok(())
    }

    fn allocate_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if id != DENY_ALL_POLICY && !self.loaded.values().any(|(used, _)| *used == id) {
                return id;
            }
        }
    }

    /// Loads one policy under `id`; on error removes what it had written.
    fn load(&mut self, id: u32, c: &Compiled) -> Result<(), BpfError> {
        let mut written: Vec<(bool, Key<DestKey>)> = Vec::new();
        let mut result = Ok(());
        'load: for (redirect, entries) in [(false, &c.allow), (true, &c.redirect)] {
            for e in entries {
                let key = Self::trie_key(id, e);
                let trie = if redirect {
                    &mut self.redirect
                } else {
                    &mut self.allow
                };
                if let Err(source) = trie.insert(&key, e.allow, 0) {
                    let name = if redirect { MAP_REDIRECT } else { MAP_ALLOW };
                    result = Err(BpfError::Map { name, source });
                    break 'load;
                }
                written.push((redirect, key));
            }
        }
        if result.is_ok() && c.redirect_port != 0 {
            result = self
                .redirect_port
                .insert(id, u32::from(c.redirect_port), 0)
                .map_err(|source| BpfError::Map {
                    name: MAP_REDIRECT_PORT,
                    source,
                });
        }
        if result.is_err() {
            for (redirect, key) in written {
                let trie = if redirect {
                    &mut self.redirect
                } else {
                    &mut self.allow
                };
                let _ = trie.remove(&key);
            }
        }
        result
    }

    fn trie_key(id: u32, e: &Entry) -> Key<DestKey> {
        Key::new(
            POLICY_PREFIX_BITS + u32::from(e.prefix_len),
            DestKey::new(id, e.addr),
        )
    }

    /// Brings the maps to `desired`: cgroups of pods gone are released and their
    /// policies deleted first (room for the new ones), new policies are loaded, cgroups
    /// switched, then what nothing points to any more is deleted. A policy that cannot
    /// be loaded is removed before anything points to it, and its cgroups fail closed
    /// (they reach nothing); the error is returned once everything else is in place.
    pub fn apply(&mut self, desired: &Desired) -> Result<Applied, BpfError> {
        let mut out = Applied::default();
        let mut failure: Option<BpfError> = None;
        let gone: Vec<u64> = self
            .enrolled
            .keys()
            .filter_map(Result::ok)
            .filter(|c| !desired.enrolled.contains_key(c))
            .collect();
        for cgroup in gone {
            let _ = self.enrolled.remove(&cgroup);
            out.unenrolled += 1;
        }
        self.loaded.retain(|k, _| desired.policies.contains_key(k));
        out.removed_policies += self.purge();
        for (key, compiled) in &desired.policies {
            if self.loaded.contains_key(key) || compiled.is_empty() {
                continue;
            }
            let id = self.allocate_id();
            match self.load(id, compiled) {
                Ok(()) => {
                    self.loaded.insert(*key, (id, compiled.clone()));
                    out.loaded_policies += 1;
                }
                Err(e) => {
                    warn!(error = %e, "a policy could not be loaded; its pods reach nothing");
                    failure.get_or_insert(e);
                }
            }
        }
        // Redirects need sock_ops in place before any cgroup points at them.
        let redirects = desired.policies.values().any(|c| c.redirect_port != 0);
        if redirects && let Err(e) = self.sock_ops_for(true) {
            failure.get_or_insert(e);
        }
        for (cgroup, key) in &desired.enrolled {
            let id = self.loaded.get(key).map_or(DENY_ALL_POLICY, |(id, _)| *id);
            if self.enrolled.get(cgroup, 0).ok() != Some(id) {
                match self.enrolled.insert(cgroup, id, 0) {
                    Ok(()) => out.enrolled_changed += 1,
                    Err(source) => {
                        failure.get_or_insert(BpfError::Map {
                            name: MAP_ENROLLED,
                            source,
                        });
                    }
                }
            }
        }
        out.removed_policies += self.purge();
        if !redirects && let Err(e) = self.sock_ops_for(false) {
            failure.get_or_insert(e);
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Deletes the entries of every policy id that is neither loaded for the current
    /// plan nor pointed to by an enrolled cgroup; returns how many ids went.
    fn purge(&mut self) -> usize {
        let live: BTreeSet<u32> = self
            .enrolled
            .iter()
            .filter_map(Result::ok)
            .map(|(_, id)| id)
            .chain(self.loaded.values().map(|(id, _)| *id))
            .collect();
        let is_stale = |k: &Key<DestKey>| !live.contains(&u32::from_be_bytes(k.data().policy));
        let stale_allow: Vec<Key<DestKey>> = self
            .allow
            .keys()
            .filter_map(Result::ok)
            .filter(is_stale)
            .collect();
        let stale_redirect: Vec<Key<DestKey>> = self
            .redirect
            .keys()
            .filter_map(Result::ok)
            .filter(is_stale)
            .collect();
        let stale_ports: Vec<u32> = self
            .redirect_port
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !live.contains(id))
            .collect();
        let stale_ids: BTreeSet<u32> = stale_allow
            .iter()
            .chain(&stale_redirect)
            .map(|k| u32::from_be_bytes(k.data().policy))
            .chain(stale_ports.iter().copied())
            .collect();
        for k in stale_allow {
            let _ = self.allow.remove(&k);
        }
        for k in stale_redirect {
            let _ = self.redirect.remove(&k);
        }
        for id in stale_ports {
            let _ = self.redirect_port.remove(&id);
        }
        // A loaded policy whose entries went (not possible today) is loaded again.
        self.loaded.retain(|_, (id, _)| live.contains(id));
        stale_ids.len()
    }

    /// What the maps hold: allow entries per policy id, and the enrolled cgroups with
    /// their policy id (tests and diagnostics).
    pub fn dump(&self) -> (HashMap<u32, usize>, HashMap<u64, u32>) {
        let mut per_id: HashMap<u32, usize> = HashMap::new();
        for k in self.allow.keys().filter_map(Result::ok) {
            *per_id
                .entry(u32::from_be_bytes(k.data().policy))
                .or_default() += 1;
        }
        let enrolled = self.enrolled.iter().filter_map(Result::ok).collect();
        (per_id, enrolled)
    }

    /// Per program: (name, runs, time spent) as the kernel counts them (only while
    /// `kernel.bpf_stats_enabled` is on, e.g. during `cargo xtask bench egress`).
    pub fn program_stats(&self) -> Vec<(String, u64, std::time::Duration)> {
        self.bpf
            .programs()
            .filter_map(|(name, p)| {
                p.info()
                    .ok()
                    .map(|i| (name.to_string(), i.run_count(), i.run_time()))
            })
            .collect()
    }

    /// (denials, events lost, redirected) summed over CPUs, since the maps were created.
    pub fn stats(&self) -> (u64, u64, u64) {
        let sum = |i: u32| {
            self.stats
                .get(&i, 0)
                .map(|v| v.iter().copied().sum::<u64>())
                .unwrap_or(0)
        };
        (
            sum(STAT_DENIED),
            sum(STAT_EVENTS_LOST),
            sum(STAT_REDIRECTED),
        )
    }
}

/// The two bpf(2) commands aya 0.14 offers no way to use for a sockopt link.
mod raw {
    use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
    use std::path::Path;

    /// `enum bpf_attach_type` (uapi/linux/bpf.h).
    pub const BPF_CGROUP_SETSOCKOPT: u32 = 22;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_LINK_CREATE: libc::c_long = 28;

    /// The leading fields of `union bpf_attr` for each command; the kernel zeroes the rest.
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
    }

    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }

    fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<libc::c_long> {
        #[expect(unsafe_code, reason = "the bpf(2) system call")]
        // SAFETY: `attr` is a live, fully initialised #[repr(C)] prefix of bpf_attr, and
        // its size is passed with it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                std::ptr::from_ref(attr),
                std::mem::size_of::<T>(),
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    /// Attaches `prog` to `cgroup` with a bpf_link, pinned at `path` (the pin keeps it).
    pub fn link_and_pin(
        prog: BorrowedFd<'_>,
        cgroup: BorrowedFd<'_>,
        attach_type: u32,
        path: &Path,
    ) -> std::io::Result<()> {
        let fd = bpf(
            BPF_LINK_CREATE,
            &LinkCreate {
                prog_fd: u32::try_from(prog.as_raw_fd()).map_err(std::io::Error::other)?,
                target_fd: u32::try_from(cgroup.as_raw_fd()).map_err(std::io::Error::other)?,
                attach_type,
                flags: 0,
            },
        )?;
        let raw = i32::try_from(fd).map_err(std::io::Error::other)?;
        #[expect(unsafe_code, reason = "taking ownership of the fd bpf(2) returned")]
        // SAFETY: a fresh descriptor that nothing else owns.
        let link = unsafe { OwnedFd::from_raw_fd(raw) };
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
        bpf(
            BPF_OBJ_PIN,
            &ObjPin {
                pathname: c_path.as_ptr() as u64,
                bpf_fd: u32::try_from(link.as_raw_fd()).map_err(std::io::Error::other)?,
                file_flags: 0,
            },
        )?;
        Ok(())
    }
}

fn attach(bpf: &mut Ebpf, name: &'static str, cgroup: &File) -> Result<FdLink, BpfError> {
    let err = |source| BpfError::Program { name, source };
    let pin_err = |e: aya::programs::links::LinkError| BpfError::Pin {
        path: name.into(),
        detail: e.to_string(),
    };
    let prog = bpf.program_mut(name).ok_or(BpfError::Program {
        name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    // With bpf_link (kernel ≥ 5.7) links always stack; the kernel refuses any flag.
    let mode = CgroupAttachMode::Single;
    match prog {
        aya::programs::Program::SockOps(p) => {
            // Loaded once per agent; attaching again (sock_ops comes and goes with
            // redirects) reuses it.
            if p.fd().is_err() {
                p.load().map_err(err)?;
            }
            let id = p.attach(cgroup, mode).map_err(err)?;
            p.take_link(id).map_err(err)?.try_into().map_err(pin_err)
        }
        aya::programs::Program::CgroupSkb(p) => {
            // Loaded once per agent; attaching again (sock_ops comes and goes with
            // redirects) reuses it.
            if p.fd().is_err() {
                p.load().map_err(err)?;
            }
            let id = p
                .attach(cgroup, CgroupSkbAttachType::Egress, mode)
                .map_err(err)?;
            p.take_link(id).map_err(err)?.try_into().map_err(pin_err)
        }
        aya::programs::Program::LsmCgroup(p) => {
            // Loaded by guard_socket_families (it needs the kernel's BTF).
            let id = p.attach(cgroup).map_err(err)?;
            Ok(p.take_link(id).map_err(err)?.into())
        }
        aya::programs::Program::CgroupSockAddr(p) => {
            // Loaded once per agent; attaching again (sock_ops comes and goes with
            // redirects) reuses it.
            if p.fd().is_err() {
                p.load().map_err(err)?;
            }
            let id = p.attach(cgroup, mode).map_err(err)?;
            p.take_link(id).map_err(err)?.try_into().map_err(pin_err)
        }
        _ => Err(err(aya::programs::ProgramError::UnexpectedProgramType)),
    }
}
