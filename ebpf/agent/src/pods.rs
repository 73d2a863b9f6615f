//! The pods of this node that are enrolled in egress enforcement.
//!
//! Read from a Kubernetes `PodList` document (`kubectl get pods -o json`, or what a
//! node-local informer writes), re-read when it changes. A pod is enrolled when it is
//! scheduled on this node and carries the label the webhook sets.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// Set by the injection webhook: "false" when the pod keeps what goes around the
/// enforcement, with the reason beside it.
pub const ENFORCEABLE_ANNOTATION: &str = "vigie.io/egress-enforceable";
pub const NOT_ENFORCEABLE_REASON_ANNOTATION: &str = "vigie.io/egress-not-enforceable-reason";

/// Set by the injection webhook on every pod it injects.
pub const ENROL_LABEL: &str = "vigie.io/egress";
pub const ENROL_VALUE: &str = "enforced";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// Why the injection webhook flagged the pod as not enforceable (it keeps a
    /// capability or shares its process namespace), if it did.
    pub not_enforceable: Option<String>,
    /// (container name, runtime container id) of started containers.
    pub containers: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a Kubernetes PodList: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct Pod {
    metadata: Meta,
    #[serde(default)]
    spec: Spec,
    #[serde(default)]
    status: Status,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    node_name: String,
    #[serde(default)]
    service_account_name: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    name: String,
    #[serde(default, rename = "containerID")]
    container_id: String,
}

/// Enrolled pods of `node` in a PodList document.
pub fn parse(text: &str, node: &str) -> Result<Vec<PodInfo>, serde_json::Error> {
    let list: PodList = serde_json::from_str(text)?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.spec.node_name == node)
        .filter(|p| p.metadata.labels.get(ENROL_LABEL).map(String::as_str) == Some(ENROL_VALUE))
        .map(|p| PodInfo {
            namespace: p.metadata.namespace,
            name: p.metadata.name,
            uid: p.metadata.uid,
            service_account: if p.spec.service_account_name.is_empty() {
                "default".into()
            } else {
                p.spec.service_account_name
            },
            not_enforceable: (p
                .metadata
                .annotations
                .get(ENFORCEABLE_ANNOTATION)
                .map(String::as_str)
                == Some("false"))
            .then(|| {
                p.metadata
                    .annotations
                    .get(NOT_ENFORCEABLE_REASON_ANNOTATION)
                    .cloned()
                    .unwrap_or_else(|| "flagged by the injection webhook".into())
            }),
            labels: p.metadata.labels,
            containers: p
                .status
                .init_container_statuses
                .into_iter()
                .chain(p.status.container_statuses)
                .filter(|c| !c.container_id.is_empty())
                .map(|c| (c.name, c.container_id))
                .collect(),
        })
        .collect())
}

pub fn load(path: &Path, node: &str) -> Result<Vec<PodInfo>, PodsError> {
    let text = std::fs::read_to_string(path).map_err(|source| PodsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, node).map_err(|source| PodsError::Parse {
        path: path.display().to_string(),
        source,
    })
}

/// An empty list of enrolled pods right after a non-empty one is not believed at once:
/// a lister that lost its API connection or wrote a truncated list would otherwise
/// unenrol every pod of the node in one pass. The last non-empty list stays in force
/// until the empty one has held for `confirm` (several reads of the file).
#[derive(Debug)]
pub struct EmptyListGuard {
    confirm: std::time::Duration,
    empty_since: Option<std::time::Instant>,
    last: Vec<PodInfo>,
}

impl EmptyListGuard {
    pub fn new(confirm: std::time::Duration) -> Self {
        EmptyListGuard {
            confirm,
            empty_since: None,
            last: Vec::new(),
        }
    }

    /// The list to enforce for this read, and whether an empty read is being held.
    pub fn filter(&mut self, pods: Vec<PodInfo>, now: std::time::Instant) -> (Vec<PodInfo>, bool) {
        if !pods.is_empty() || self.last.is_empty() {
            self.empty_since = None;
            self.last.clone_from(&pods);
            return (pods, false);
        }
        let since = *self.empty_since.get_or_insert(now);
        if now.duration_since(since) >= self.confirm {
            self.empty_since = None;
            self.last.clear();
            return (pods, false);
        }
        (self.last.clone(), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn pod(name: &str) -> PodInfo {
        PodInfo {
            namespace: "shop".into(),
            name: name.into(),
            uid: name.into(),
            service_account: "default".into(),
            labels: BTreeMap::new(),
            not_enforceable: None,
            containers: Vec::new(),
        }
    }

    #[test]
    fn an_empty_list_unenrols_only_once_it_has_held() {
        let mut g = EmptyListGuard::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(
            g.filter(vec![], t0),
            (vec![], false),
            "nothing enrolled yet: empty is fine"
        );
        let both = vec![pod("a"), pod("b")];
        assert_eq!(g.filter(both.clone(), t0), (both.clone(), false));
        // Empty reads within the window keep the last list in force.
        assert_eq!(
            g.filter(vec![], t0 + Duration::from_secs(1)),
            (both.clone(), true)
        );
        assert_eq!(
            g.filter(vec![], t0 + Duration::from_secs(9)),
            (both.clone(), true)
        );
        // A non-empty read in between restarts the window.
        assert_eq!(
            g.filter(vec![pod("a")], t0 + Duration::from_secs(10)),
            (vec![pod("a")], false)
        );
        assert_eq!(
            g.filter(vec![], t0 + Duration::from_secs(12)),
            (vec![pod("a")], true)
        );
        // Held long enough: believed.
        assert_eq!(
            g.filter(vec![], t0 + Duration::from_secs(22)),
            (vec![], false)
        );
        assert_eq!(
            g.filter(vec![], t0 + Duration::from_secs(23)),
            (vec![], false)
        );
    }

    #[test]
    fn enrolled_pods_of_this_node_with_started_containers() {
        let doc = r#"{"apiVersion":"v1","kind":"PodList","items":[
          {"metadata":{"name":"chat-1","namespace":"shop","uid":"u1",
             "labels":{"app":"chat","vigie.io/egress":"enforced"}},
           "spec":{"nodeName":"n1","serviceAccountName":"chat"},
           "status":{"qosClass":"Burstable",
             "initContainerStatuses":[{"name":"vigie-sidecar","containerID":"containerd://aaa"}],
             "containerStatuses":[{"name":"app","containerID":"containerd://bbb"},
                                  {"name":"waiting","ready":false}]}},
          {"metadata":{"name":"other-node","namespace":"shop","uid":"u2",
             "labels":{"vigie.io/egress":"enforced"}},"spec":{"nodeName":"n2"}},
          {"metadata":{"name":"not-enrolled","namespace":"shop","uid":"u3"},
           "spec":{"nodeName":"n1"}},
          {"metadata":{"name":"new","namespace":"shop","uid":"u4",
             "labels":{"vigie.io/egress":"enforced"},
             "annotations":{"vigie.io/egress-enforceable":"false",
                            "vigie.io/egress-not-enforceable-reason":"keeps NET_RAW"}},
           "spec":{"nodeName":"n1"}}
        ]}"#;
        let pods = parse(doc, "n1").unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[0].name, "chat-1");
        assert_eq!(pods[0].service_account, "chat");
        assert_eq!(
            pods[0].containers,
            vec![
                ("vigie-sidecar".to_string(), "containerd://aaa".to_string()),
                ("app".to_string(), "containerd://bbb".to_string())
            ]
        );
        assert_eq!(pods[1].name, "new");
        assert_eq!(pods[1].service_account, "default");
        assert!(pods[1].containers.is_empty());
        assert_eq!(pods[0].not_enforceable, None);
        assert_eq!(pods[1].not_enforceable.as_deref(), Some("keeps NET_RAW"));
        assert!(parse("{\"items\": 3}", "n1").is_err());
    }
}
