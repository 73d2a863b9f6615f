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

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};
use tracing::{info, warn};
use vigie_egress_common::compile::Entry;
use vigie_egress_common::{
    Allow, DestKey, MAP_ALLOW, MAP_ENROLLED, MAP_EVENTS, MAP_STATS, POLICY_PREFIX_BITS, PROGRAMS,
    STAT_DENIED, STAT_EVENTS_LOST,
};

use crate::plan::{Desired, PolicyKey};

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

/// Whether `dir` is on a bpffs, from the mount table (longest mount point prefix).
fn on_bpffs(dir: &Path) -> std::io::Result<bool> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dir = dir.canonicalize()?;
    let best = table
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount = PathBuf::from(left.split_whitespace().nth(4)?);
            let fstype = right.split_whitespace().next()?;
            dir.starts_with(&mount).then_some((mount, fstype == "bpf"))
        })
        .max_by_key(|(m, _)| m.as_os_str().len());
    Ok(best.is_some_and(|(_, bpf)| bpf))
}

pub struct Enforcer {
    enrolled: BpfHashMap<MapData, u64, u32>,
    allow: LpmTrie<MapData, DestKey, Allow>,
    stats: PerCpuArray<MapData, u64>,
    /// Policies in the trie: content key → (policy id, its trie keys).
    loaded: HashMap<PolicyKey, (u32, Arc<Vec<Entry>>)>,
    next_id: u32,
    /// Kept alive: the links are pinned, the object holds the programs' fds.
    bpf: Ebpf,
}

/// What the agent drains besides applying plans.
pub struct Channels {
    pub events: RingBuf<MapData>,
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
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
        if !on_bpffs(pin_dir).map_err(io("reading the mount table"))? {
            return Err(BpfError::NotBpffs(pin_dir.display().to_string()));
        }
        let links_dir = pin_dir.join("links");
        std::fs::create_dir_all(&links_dir)
            .map_err(io(format!("creating {}", links_dir.display())))?;
        let adopted = pin_dir.join(MAP_ENROLLED).exists();
        let mut bpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(OBJECT)?;
        let logger = match aya_log::EbpfLogger::init(&mut bpf) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(error = %e, "eBPF program logs unavailable");
                None
            }
        };
        let cg = File::open(cgroup).map_err(io(format!("opening cgroup {}", cgroup.display())))?;
        for name in PROGRAMS {
            let link = attach(&mut bpf, name, &cg)?;
            let path = links_dir.join(name);
            // New link first, then the old one goes: never a moment without one.
            if path.exists() {
                match PinnedLink::from_pin(&path) {
                    Ok(old) => match old.unpin() {
                        Ok(old) => drop(old),
                        Err(e) => {
                            warn!(link = %path.display(), error = %e, "could not unpin the previous link")
                        }
                    },
                    Err(e) => {
                        warn!(link = %path.display(), error = %e, "unreadable pinned link replaced")
                    }
                }
            }
            link.pin(&path).map_err(|e| BpfError::Pin {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
        }
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
        let mut this = Enforcer {
            enrolled,
            allow,
            stats,
            loaded: HashMap::new(),
            next_id: 1,
            bpf,
        };
        let in_use = this.policy_ids_in_trie();
        this.next_id = in_use.iter().max().map_or(1, |m| m.saturating_add(1));
        info!(
            adopted,
            enrolled = this.enrolled.keys().count(),
            policies = in_use.len(),
            cgroup = %cgroup.display(),
            "egress programs attached"
        );
        Ok((this, Channels { events, logger }))
    }

    fn policy_ids_in_trie(&self) -> BTreeSet<u32> {
        self.allow
            .keys()
            .filter_map(Result::ok)
            .map(|k| u32::from_be_bytes(k.data().policy))
            .collect()
    }

    fn trie_key(id: u32, e: &Entry) -> Key<DestKey> {
        Key::new(
            POLICY_PREFIX_BITS + u32::from(e.prefix_len),
            DestKey::new(id, e.addr),
        )
    }

    /// Brings the maps to `desired`. On error, nothing that was half-loaded stays and
    /// no cgroup points to it.
    pub fn apply(&mut self, desired: &Desired) -> Result<Applied, BpfError> {
        let mut out = Applied::default();
        for (key, entries) in &desired.policies {
            if self.loaded.contains_key(key) {
                continue;
            }
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            for (n, e) in entries.iter().enumerate() {
                if let Err(source) = self.allow.insert(&Self::trie_key(id, e), e.allow, 0) {
                    for done in &entries[..n] {
                        let _ = self.allow.remove(&Self::trie_key(id, done));
                    }
                    return Err(BpfError::Map {
                        name: MAP_ALLOW,
                        source,
                    });
                }
            }
            self.loaded.insert(*key, (id, entries.clone()));
            out.loaded_policies += 1;
        }
        for (cgroup, key) in &desired.enrolled {
            let Some((id, _)) = self.loaded.get(key) else {
                continue;
            };
            if self.enrolled.get(cgroup, 0).ok() != Some(*id) {
                self.enrolled
                    .insert(cgroup, id, 0)
                    .map_err(|source| BpfError::Map {
                        name: MAP_ENROLLED,
                        source,
                    })?;
                out.enrolled_changed += 1;
            }
        }
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
        // Entries no cgroup points to any more: ours, and those of a previous agent.
        let live: BTreeSet<u32> = desired
            .policies
            .keys()
            .filter_map(|k| self.loaded.get(k).map(|(id, _)| *id))
            .collect();
        self.loaded.retain(|k, _| desired.policies.contains_key(k));
        let stale: Vec<Key<DestKey>> = self
            .allow
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live.contains(&u32::from_be_bytes(k.data().policy)))
            .collect();
        let stale_ids: BTreeSet<u32> = stale
            .iter()
            .map(|k| u32::from_be_bytes(k.data().policy))
            .collect();
        for k in stale {
            let _ = self.allow.remove(&k);
        }
        out.removed_policies = stale_ids.len();
        Ok(out)
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

    /// (denials, events lost) summed over CPUs, since the maps were created.
    pub fn stats(&self) -> (u64, u64) {
        let sum = |i: u32| {
            self.stats
                .get(&i, 0)
                .map(|v| v.iter().copied().sum::<u64>())
                .unwrap_or(0)
        };
        (sum(STAT_DENIED), sum(STAT_EVENTS_LOST))
    }
}

fn attach(bpf: &mut Ebpf, name: &'static str, cgroup: &File) -> Result<FdLink, BpfError> {
    let err = |source| BpfError::Program { name, source };
    let prog = bpf.program_mut(name).ok_or(BpfError::Program {
        name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    // With bpf_link (kernel ≥ 5.7) links always stack; the kernel refuses any flag.
    let mode = CgroupAttachMode::Single;
    let link: FdLink =
        if name == "vigie_skb_egress" {
            let p: &mut CgroupSkb = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
            let id = p
                .attach(cgroup, CgroupSkbAttachType::Egress, mode)
                .map_err(err)?;
            p.take_link(id).map_err(err)?.try_into().map_err(
                |e: aya::programs::links::LinkError| BpfError::Pin {
                    path: name.into(),
                    detail: e.to_string(),
                },
            )?
        } else {
            let p: &mut CgroupSockAddr = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
            let id = p.attach(cgroup, mode).map_err(err)?;
            p.take_link(id).map_err(err)?.try_into().map_err(
                |e: aya::programs::links::LinkError| BpfError::Pin {
                    path: name.into(),
                    detail: e.to_string(),
                },
            )?
        };
    Ok(link)
}
