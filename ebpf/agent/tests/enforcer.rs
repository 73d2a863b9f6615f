//! The enforcer against the real kernel (root only; CI runs as root): a policy that
//! does not fit in the maps is never loaded in part, and the pods that needed it fail
//! closed while the others keep their policy.
#![expect(clippy::unwrap_used, reason = "test code")]

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use vigie_egress::bpf::Enforcer;
use vigie_egress::plan::{Compiled, Desired, key_of};
use vigie_egress_common::PROTO_TCP;
use vigie_egress_common::compile::{MAX_ENTRIES_PER_POLICY, Rule, compile};

struct Scratch {
    cgroup: PathBuf,
    pins: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

fn scratch(tag: &str) -> Scratch {
    assert!(
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
        "this test loads eBPF programs: run it as root (CI does)"
    );
    let bpffs_mounted = vigie_egress::cgroups::fs_type_of(std::path::Path::new("/sys/fs/bpf"))
        .unwrap()
        .as_deref()
        == Some("bpf");
    if !bpffs_mounted {
        assert!(
            Command::new("mount")
                .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
                .status()
                .unwrap()
                .success()
        );
    }
    let id = format!("vigie-test-{tag}-{}", std::process::id());
    let cgroup = vigie_egress::cgroups::cgroup2_mount().unwrap().join(&id);
    std::fs::create_dir_all(&cgroup).unwrap();
    Scratch {
        cgroup,
        pins: PathBuf::from("/sys/fs/bpf").join(id),
    }
}

/// A full-size policy: `MAX_ENTRIES_PER_POLICY` /30 networks from `base`.
fn big(base: u32) -> Arc<Compiled> {
    let rules: Vec<Rule> = (0..MAX_ENTRIES_PER_POLICY as u32)
        .map(|i| {
            let a = Ipv4Addr::from(base + i * 4);
            Rule::new(IpNet::V4(Ipv4Net::new(a, 30).unwrap()), 443, 443, PROTO_TCP)
        })
        .collect();
    Arc::new(Compiled {
        allow: compile(&rules).unwrap(),
        ..Compiled::default()
    })
}

#[test]
fn a_policy_that_does_not_fit_is_never_loaded_in_part() {
    let s = scratch("fit");
    let (mut enforcer, _channels) = Enforcer::start(&s.pins, &s.cgroup).unwrap();
    // The trie holds 262,144 entries: 15 full policies fit, the 16th does not.
    let mut desired = Desired::default();
    for n in 0..16u32 {
        let c = big(0x0a00_0000 + n * 0x0001_0000 * 2);
        let key = key_of(&c);
        desired.policies.insert(key, c);
        desired.enrolled.insert(1_000 + u64::from(n), key);
    }
    let err = enforcer.apply(&desired).unwrap_err();
    assert!(err.to_string().contains("VIGIE_ALLOW"), "{err}");
    let (entries_by_policy, enrolled) = enforcer.dump();
    // Every loaded policy is complete; the one that failed left nothing behind.
    assert_eq!(
        entries_by_policy.len(),
        15,
        "{:?}",
        entries_by_policy.keys()
    );
    assert!(
        entries_by_policy
            .values()
            .all(|n| *n == MAX_ENTRIES_PER_POLICY),
        "{entries_by_policy:?}"
    );
    // Its cgroup fails closed (the reserved id with no entries); the others point
    // at complete policies.
    assert_eq!(enrolled.len(), 16);
    let closed: Vec<_> = enrolled
        .iter()
        .filter(|(_, id)| **id == vigie_egress_common::DENY_ALL_POLICY)
        .collect();
    assert_eq!(closed.len(), 1, "{enrolled:?}");
    assert!(
        enrolled
            .values()
            .filter(|id| **id != vigie_egress_common::DENY_ALL_POLICY)
            .all(|id| entries_by_policy.contains_key(id))
    );

    // With room made (a pod gone), the next apply loads it and nobody is closed.
    desired.enrolled.remove(&1_000);
    let first = desired
        .policies
        .keys()
        .copied()
        .find(|k| !desired.enrolled.values().any(|v| v == k));
    if let Some(k) = first {
        desired.policies.remove(&k);
    }
    enforcer.apply(&desired).unwrap();
    let (entries_by_policy, enrolled) = enforcer.dump();
    assert_eq!(entries_by_policy.len(), 15);
    assert!(
        !enrolled
            .values()
            .any(|id| *id == vigie_egress_common::DENY_ALL_POLICY)
    );
}

#[test]
fn a_restarted_enforcer_recognises_what_is_loaded() {
    let s = scratch("adopt");
    let rules = [
        Rule::host(IpAddr::V4(Ipv4Addr::LOCALHOST), 15080, PROTO_TCP),
        Rule::parse("10.20.0.0/16", "5432", PROTO_TCP).unwrap(),
    ];
    let c = Arc::new(Compiled {
        allow: compile(&rules).unwrap(),
        redirect: compile(&[Rule::parse("10.0.3.7", "8000", PROTO_TCP).unwrap()]).unwrap(),
        redirect_port: 15080,
    });
    let key = key_of(&c);
    let desired = Desired {
        enrolled: BTreeMap::from([(42, key)]),
        policies: HashMap::from([(key, c)]),
        names: HashMap::new(),
    };
    {
        let (mut e, _ch) = Enforcer::start(&s.pins, &s.cgroup).unwrap();
        let applied = e.apply(&desired).unwrap();
        assert_eq!(applied.loaded_policies, 1);
    }
    // A new agent on the pinned maps: nothing to load, nothing to switch.
    let (mut e, _ch) = Enforcer::start(&s.pins, &s.cgroup).unwrap();
    let applied = e.apply(&desired).unwrap();
    assert_eq!(applied.loaded_policies, 0, "{applied:?}");
    assert_eq!(applied.enrolled_changed, 0, "{applied:?}");
    assert_eq!(applied.removed_policies, 0, "{applied:?}");
}
