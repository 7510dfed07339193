//! The core thread's side of flow enrichment: rebuilding the directory after every change.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use sluice_model::policy::RuleRef;

use super::directory::{pod_labels, EndpointMeta, FlowDirectory, RuleMeta};
use crate::core::Core;
use crate::store::Phase;

impl Core {
    /// Publishes who is who as of now to the event reader. Runs after every snapshot and
    /// every endpoint added or deleted (after policy, which assigns identities).
    pub(crate) fn refresh_flow_directory(&mut self) {
        let Some(shared) = self.flow_directory.clone() else {
            return;
        };
        let identities: HashMap<Ipv4Addr, u32> = self.policy.address_identities().collect();
        let local_ids: HashMap<Ipv4Addr, u32> = self
            .records
            .values()
            .filter_map(|r| match &r.phase {
                Phase::Ready(i) => Some((r.address, i.host_ifindex)),
                Phase::Allocated => None,
            })
            .collect();
        let mut dir = FlowDirectory {
            node_name: self.cfg.node_name.as_str().into(),
            node_ip: self.node.as_ref().map(|n| n.info.address),
            host_netns: self.host_netns_cookie,
            ..Default::default()
        };
        for pod in self.desired.pods.values() {
            let Some(ip) = pod.ip else { continue };
            dir.endpoints.insert(
                ip,
                Arc::new(EndpointMeta {
                    id: local_ids.get(&ip).copied().unwrap_or(0),
                    identity: identities.get(&ip).copied().unwrap_or(0),
                    namespace: pod.namespace.clone(),
                    pod_name: pod.name.clone(),
                    labels: pod_labels(&pod.namespace, &pod.labels),
                    node_name: pod.node_name.clone().unwrap_or_default(),
                }),
            );
        }
        // Local pods the desired state has no address for yet are still ours to name.
        for r in self.records.values() {
            let (Some(pod), Some(id)) = (&r.pod, local_ids.get(&r.address)) else {
                continue;
            };
            dir.endpoints.entry(r.address).or_insert_with(|| {
                let labels = self
                    .desired
                    .pods
                    .get(&format!("{}/{}", pod.namespace, pod.name))
                    .map(|p| pod_labels(&p.namespace, &p.labels))
                    .unwrap_or_default();
                Arc::new(EndpointMeta {
                    id: *id,
                    identity: identities.get(&r.address).copied().unwrap_or(0),
                    namespace: pod.namespace.clone(),
                    pod_name: pod.name.clone(),
                    labels,
                    node_name: self.cfg.node_name.clone(),
                })
            });
            if let Some(cookie) = netns_cookie(&mut self.netns_cookies, &r.netns) {
                dir.netns.insert(cookie, r.address);
            }
        }
        for node in self.desired.nodes.values() {
            dir.add_node(node.address, &node.name);
        }
        for (f, origin) in self.lb.origins() {
            dir.frontends.insert(
                (f.address, f.port, f.protocol.number()),
                origin.service.as_str().into(),
            );
        }
        for (cookie, rule) in self.policy.rule_cookies() {
            if let RuleRef::Rule { policy, .. } = rule {
                let (namespace, name) = policy.split_once('/').unwrap_or(("", policy));
                dir.rules.insert(
                    cookie,
                    Arc::new(RuleMeta {
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                        description: rule.to_string(),
                    }),
                );
            }
        }
        // Deleted pods' namespaces are gone; so are their cookies.
        let live: std::collections::HashSet<&std::path::Path> =
            self.records.values().map(|r| r.netns.as_path()).collect();
        self.netns_cookies.retain(|p, _| live.contains(p.as_path()));
        let dir = Arc::new(dir);
        *shared.write().unwrap_or_else(|p| p.into_inner()) = dir;
    }
}

/// The namespace cookie of a pod's netns path, remembered (a namespace keeps its cookie).
fn netns_cookie(
    known: &mut HashMap<std::path::PathBuf, u64>,
    path: &std::path::Path,
) -> Option<u64> {
    if let Some(c) = known.get(path) {
        return Some(*c);
    }
    match sluice_netdev::Netns::from_path(path).and_then(|ns| ns.cookie()) {
        Ok(c) => {
            known.insert(path.to_path_buf(), c);
            Some(c)
        }
        Err(e) => {
            tracing::debug!(netns = %path.display(), error = %e, "no namespace cookie");
            None
        }
    }
}
