//! A readable one-line summary of what a change does, for revisions, audit events
//! and `ValidatePolicy`'s dry run. Names only: never endpoint URLs or credentials'
//! locations, so the summary is safe in logs.

use std::collections::BTreeMap;

use vigie_proto::v1::{Budget, Policy, Pool, Route, Scope};

fn describe_scope(s: Option<&Scope>) -> String {
    let Some(s) = s else {
        return "cluster-wide".into();
    };
    let mut parts = Vec::new();
    if !s.namespace.is_empty() {
        parts.push(format!("namespace={}", s.namespace));
    }
    if !s.service_account.is_empty() {
        parts.push(format!("serviceAccount={}", s.service_account));
    }
    let mut labels: Vec<_> = s.workload_labels.iter().collect();
    labels.sort();
    for (k, v) in labels {
        parts.push(format!("{k}={v}"));
    }
    if parts.is_empty() {
        "cluster-wide".into()
    } else {
        parts.join(",")
    }
}

fn budgets(p: &Policy) -> BTreeMap<&str, &Budget> {
    p.budgets
        .iter()
        .flat_map(|b| b.budgets.iter())
        .map(|b| (b.name.as_str(), b))
        .collect()
}

/// Added, removed and changed entries of two named collections.
fn diff<T: PartialEq>(
    what: &str,
    old: &BTreeMap<&str, &T>,
    new: &BTreeMap<&str, &T>,
    out: &mut Vec<String>,
) {
    let join = |v: Vec<&str>| v.join(", ");
    let added: Vec<&str> = new
        .keys()
        .filter(|k| !old.contains_key(*k))
        .copied()
        .collect();
    let removed: Vec<&str> = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .copied()
        .collect();
    let changed: Vec<&str> = new
        .iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| *k)
        .collect();
    if !added.is_empty() {
        out.push(format!("{what} added: {}", join(added)));
    }
    if !removed.is_empty() {
        out.push(format!("{what} removed: {}", join(removed)));
    }
    if !changed.is_empty() {
        out.push(format!("{what} changed: {}", join(changed)));
    }
}

fn pools(p: &Policy) -> BTreeMap<&str, &Pool> {
    p.pools.iter().map(|x| (x.name.as_str(), x)).collect()
}

fn routes(p: &Policy) -> BTreeMap<&str, &Route> {
    p.routes.iter().map(|x| (x.model.as_str(), x)).collect()
}

pub fn summarize(old: Option<&Policy>, new: Option<&Policy>) -> String {
    match (old, new) {
        (None, None) => "no change".into(),
        (Some(_), None) => "deleted".into(),
        (None, Some(p)) => {
            let names = |v: Vec<&str>| {
                if v.is_empty() {
                    "none".into()
                } else {
                    v.join(", ")
                }
            };
            let mut s = format!(
                "created ({}): pools {}; routes {}",
                describe_scope(p.scope.as_ref()),
                names(p.pools.iter().map(|x| x.name.as_str()).collect()),
                names(p.routes.iter().map(|x| x.model.as_str()).collect()),
            );
            if let Some(d) = &p.dlp {
                s.push_str(&format!("; dlp {} rules", d.rules.len()));
            }
            let b: Vec<&str> = budgets(p).keys().copied().collect();
            if !b.is_empty() {
                s.push_str(&format!("; budgets {}", b.join(", ")));
            }
            s
        }
        (Some(o), Some(n)) => {
            let mut out = Vec::new();
            if o.scope != n.scope {
                out.push(format!(
                    "scope {} -> {}",
                    describe_scope(o.scope.as_ref()),
                    describe_scope(n.scope.as_ref())
                ));
            }
            diff("pools", &pools(o), &pools(n), &mut out);
            diff("routes", &routes(o), &routes(n), &mut out);
            match (&o.dlp, &n.dlp) {
                (None, Some(d)) => out.push(format!("dlp added ({} rules)", d.rules.len())),
                (Some(_), None) => out.push("dlp removed".into()),
                (Some(a), Some(b)) if a != b => out.push(format!(
                    "dlp changed ({} -> {} rules, {} -> {} custom detectors)",
                    a.rules.len(),
                    b.rules.len(),
                    a.custom_detectors.len(),
                    b.custom_detectors.len()
                )),
                _ => {}
            }
            diff("budgets", &budgets(o), &budgets(n), &mut out);
            let settings = |p: &Policy| {
                p.budgets
                    .as_ref()
                    .map(|b| (b.fail_mode, b.default_max_tokens))
            };
            if settings(o) != settings(n) {
                out.push("budget settings changed".into());
            }
            for (section, before, after, same) in [
                (
                    "egress",
                    o.egress.is_some(),
                    n.egress.is_some(),
                    o.egress == n.egress,
                ),
                (
                    "telemetry",
                    o.telemetry.is_some(),
                    n.telemetry.is_some(),
                    o.telemetry == n.telemetry,
                ),
            ] {
                match (before, after, same) {
                    (_, _, true) => {}
                    (false, true, _) => out.push(format!("{section} added")),
                    (true, false, _) => out.push(format!("{section} removed")),
                    _ => out.push(format!("{section} changed")),
                }
            }
            if out.is_empty() {
                // Same sets, same contents: only the order of entries differs.
                out.push(
                    if o == n {
                        "no change"
                    } else {
                        "order of entries changed"
                    }
                    .into(),
                );
            }
            out.join("; ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(json: &str) -> Policy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn summaries_name_what_changed() {
        let a = p(
            r#"{"name":"x","pools":[{"name":"gpu-a","endpoints":[{"url":"http://a"}]},{"name":"old"}],
            "routes":[{"model":"m","pools":["gpu-a"]}]}"#,
        );
        let b = p(
            r#"{"name":"x","scope":{"namespace":"team-a"},"pools":[{"name":"gpu-a","endpoints":[{"url":"http://b"}]},{"name":"gpu-b"}],
            "routes":[{"model":"m","pools":["gpu-a"]}]}"#,
        );
        assert_eq!(
            summarize(Some(&a), Some(&b)),
            "scope cluster-wide -> namespace=team-a; pools added: gpu-b; pools removed: old; pools changed: gpu-a"
        );
        assert_eq!(
            summarize(None, Some(&a)),
            "created (cluster-wide): pools gpu-a, old; routes m"
        );
        assert_eq!(summarize(Some(&a), None), "deleted");
        assert_eq!(summarize(Some(&a), Some(&a)), "no change");
        // URLs are not in summaries.
        assert!(!summarize(Some(&a), Some(&b)).contains("http"));
        let t = p(
            r#"{"name":"x","pools":[{"name":"gpu-a","endpoints":[{"url":"http://a"}]},{"name":"old"}],
            "routes":[{"model":"m","pools":["gpu-a"]}],"telemetry":{"traceSampleRatio":0.5},
            "egress":{"dnsResolvers":["10.0.0.10"]}}"#,
        );
        assert_eq!(
            summarize(Some(&a), Some(&t)),
            "egress added; telemetry added"
        );
        let mut u = t.clone();
        u.telemetry = Some(vigie_proto::v1::Telemetry {
            trace_sample_ratio: Some(0.1),
            ..Default::default()
        });
        assert_eq!(summarize(Some(&t), Some(&u)), "telemetry changed");
        assert_eq!(
            summarize(Some(&t), Some(&a)),
            "egress removed; telemetry removed"
        );
    }
}
