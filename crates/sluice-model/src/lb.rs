//! What the datapath's load balancer should hold: one entry per service frontend
//! (address, port, protocol) with its usable backends. Derived from the desired state only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::manifest::{ChangedObjects, ObjectKind};
use crate::service::{
    backends_for, usable_backends, Backend, Protocol, ServiceInfo, ServicePortInfo, ServiceType,
};
use crate::state::{DesiredState, PodInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

/// Exactly the facts the datapath acts on; two equal entries program identical maps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LbEntry {
    /// Usable backends (address, port), sorted.
    pub backends: Vec<(Ipv4Addr, u16)>,
    pub affinity_timeout: Option<u32>,
    /// Reachable from outside the cluster: also translated at the node's uplink.
    pub external: bool,
}

/// Where a frontend comes from, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendOrigin {
    pub service: String,
    pub port_name: String,
    pub kind: &'static str,
}

/// The node an agent programs for: NodePorts live on its address, and Local traffic
/// policies keep only its own backends.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    pub name: &'a str,
    pub address: Ipv4Addr,
}

/// Frontends of every non-headless service as one node programs them: the ClusterIP on each
/// port; for NodePort and LoadBalancer services this node's address on each node port;
/// external IPs and load-balancer ingress IPs. Services without a selector get no computed
/// backends (their endpoints come from elsewhere) and so reject.
pub fn lb_entries(
    state: &DesiredState,
    node: Option<NodeView>,
) -> BTreeMap<Frontend, (LbEntry, FrontendOrigin)> {
    lb_entries_for(state, node, state.services.values())
}

/// The frontends of just `services` (an incremental reconcile recomputes only those).
pub fn lb_entries_for<'a>(
    state: &DesiredState,
    node: Option<NodeView>,
    services: impl IntoIterator<Item = &'a ServiceInfo>,
) -> BTreeMap<Frontend, (LbEntry, FrontendOrigin)> {
    let mut out = BTreeMap::new();
    for svc in services {
        let Some(cluster_ip) = svc.cluster_ip else {
            continue;
        };
        // In the manifest source a selector means sluice computes the endpoints; without
        // one, or from the Kubernetes source, EndpointSlices (written by someone else) do.
        let computed = svc.selector.is_some() && !state.endpoints_from_slices;
        let candidates = match &svc.selector {
            Some(selector) if computed => state.selected_pods(&svc.namespace, selector),
            _ => Vec::new(),
        };
        for port in &svc.ports {
            let all = if computed {
                backends_for(svc, port, candidates.iter().copied())
            } else {
                slice_backends(state, svc, port)
            };
            let mut add =
                |address: Ipv4Addr, port_number: u16, kind: &'static str, external: bool| {
                    let local_only = if external {
                        svc.external_traffic_local
                    } else {
                        svc.internal_traffic_local
                    };
                    let entry = LbEntry {
                        backends: pick(&all, local_only.then_some(node).flatten()),
                        affinity_timeout: svc.affinity_timeout,
                        external,
                    };
                    let origin = FrontendOrigin {
                        service: svc.key(),
                        port_name: port.name.clone(),
                        kind,
                    };
                    out.insert(
                        Frontend {
                            address,
                            port: port_number,
                            protocol: port.protocol,
                        },
                        (entry, origin),
                    );
                };
            add(cluster_ip, port.port, "ClusterIP", false);
            if let (Some(node_port), Some(node)) = (node_port(svc, port), node) {
                add(node.address, node_port, "NodePort", true);
            }
            for ip in &svc.external_ips {
                add(*ip, port.port, "ExternalIP", true);
            }
            if svc.type_ == ServiceType::LoadBalancer {
                for ip in &svc.load_balancer_ips {
                    add(*ip, port.port, "LoadBalancer", true);
                }
            }
        }
    }
    out
}

/// Services whose frontends may differ between `old` and `new`: services that changed, and
/// the services in a changed pod's namespace whose selector matched it before or matches it
/// now. Recomputing only these gives the same frontends as recomputing everything.
pub fn affected_services(old: &DesiredState, new: &DesiredState) -> BTreeSet<String> {
    if old.endpoints_from_slices != new.endpoints_from_slices {
        return old
            .services
            .keys()
            .chain(new.services.keys())
            .cloned()
            .collect();
    }
    let services = crate::diff_maps(&old.services, &new.services);
    let mut out: BTreeSet<String> = services
        .added
        .iter()
        .map(|(k, _)| (*k).clone())
        .chain(services.removed.iter().map(|(k, _)| (*k).clone()))
        .chain(services.changed.iter().map(|(k, _, _)| (*k).clone()))
        .collect();
    let slices = crate::diff_maps(&old.endpoint_slices, &new.endpoint_slices);
    for slice in slices
        .added
        .iter()
        .map(|(_, s)| *s)
        .chain(slices.removed.iter().map(|(_, s)| *s))
        .chain(slices.changed.iter().flat_map(|(_, a, b)| [*a, *b]))
    {
        out.insert(slice.service.clone());
    }
    if new.endpoints_from_slices {
        return out; // pods reach services only through slices
    }
    let pods = crate::diff_maps(&old.pods, &new.pods);
    let touched = pods
        .added
        .iter()
        .map(|(_, p)| *p)
        .chain(pods.removed.iter().map(|(_, p)| *p))
        .chain(pods.changed.iter().flat_map(|(_, a, b)| [*a, *b]));
    for pod in touched {
        add_selecting(new, pod, &mut out);
    }
    out
}

/// Services of `pod`'s namespace whose selector matches it (keys are "namespace/name", so a
/// namespace's services are one range).
fn add_selecting(state: &DesiredState, pod: &PodInfo, out: &mut BTreeSet<String>) {
    let from = format!("{}/", pod.namespace);
    let to = format!("{}0", pod.namespace);
    for (key, svc) in state.services.range(from..to) {
        let matches = svc.selector.as_ref().is_some_and(|sel| {
            !sel.is_empty() && sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
        });
        if matches {
            out.insert(key.clone());
        }
    }
}

/// Like `affected_services`, but from the source's list of changed objects instead of
/// comparing every object: O(changes). Returns a superset of what `affected_services` finds
/// when `changed` lists every object that differs.
pub fn affected_services_by(
    changed: &ChangedObjects,
    old: &DesiredState,
    new: &DesiredState,
) -> BTreeSet<String> {
    if old.endpoints_from_slices != new.endpoints_from_slices {
        return affected_services(old, new);
    }
    let mut out: BTreeSet<String> = changed
        .keys(ObjectKind::Service)
        .map(str::to_string)
        .collect();
    for key in changed.keys(ObjectKind::EndpointSlice) {
        for slice in [old.endpoint_slices.get(key), new.endpoint_slices.get(key)]
            .into_iter()
            .flatten()
        {
            out.insert(slice.service.clone());
        }
    }
    if !new.endpoints_from_slices {
        for key in changed.keys(ObjectKind::Pod) {
            for pod in [old.pods.get(key), new.pods.get(key)].into_iter().flatten() {
                add_selecting(new, pod, &mut out);
            }
        }
    }
    out
}

/// The backends EndpointSlices list for `port` of `svc`: slice ports match service ports by
/// name and protocol.
fn slice_backends(state: &DesiredState, svc: &ServiceInfo, port: &ServicePortInfo) -> Vec<Backend> {
    let key = svc.key();
    let from = format!("{}/", svc.namespace);
    let to = format!("{}0", svc.namespace);
    let mut out = Vec::new();
    for slice in state
        .endpoint_slices
        .range(from..to)
        .map(|(_, s)| s)
        .filter(|s| s.service == key)
    {
        let Some(sp) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for e in &slice.endpoints {
            for ip in &e.addresses {
                out.push(Backend {
                    ip: *ip,
                    port: sp.port,
                    pod: format!("{}/{}", slice.namespace, slice.name),
                    node_name: e.node_name.clone(),
                    ready: e.ready && !e.terminating,
                    serving: e.serving,
                    terminating: e.terminating,
                });
            }
        }
    }
    out.sort();
    out
}

fn node_port(svc: &ServiceInfo, port: &ServicePortInfo) -> Option<u16> {
    match svc.type_ {
        ServiceType::NodePort | ServiceType::LoadBalancer => port.node_port,
        _ => None,
    }
}

/// Usable backends, only this node's when a Local traffic policy applies (with the
/// terminating fallback judged among those).
fn pick(all: &[Backend], local_to: Option<NodeView>) -> Vec<(Ipv4Addr, u16)> {
    let candidates: Vec<Backend> = match local_to {
        Some(node) => all
            .iter()
            .filter(|b| b.node_name.as_deref() == Some(node.name))
            .cloned()
            .collect(),
        None => all.to_vec(),
    };
    let mut backends: Vec<(Ipv4Addr, u16)> = usable_backends(&candidates)
        .into_iter()
        .map(|b| (b.ip, b.port))
        .collect();
    backends.sort();
    backends.dedup();
    backends
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse_manifests;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: x}
spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: web}}
status: {phase: Pending}
"#;

    #[test]
    fn cluster_ips_get_their_ready_backends_and_headless_services_nothing() {
        let objects = parse_manifests("t", MANIFESTS).unwrap();
        let (state, problems) = DesiredState::build(&objects);
        assert!(problems.is_empty(), "{problems:?}");
        let entries = lb_entries(&state, None);
        assert_eq!(entries.len(), 2);
        let http = &entries[&Frontend {
            address: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            protocol: Protocol::Tcp,
        }];
        assert_eq!(http.0.backends, vec![(Ipv4Addr::new(10, 0, 0, 2), 8080)]);
        assert_eq!(http.1.service, "x/web");
        let dns = &entries[&Frontend {
            address: Ipv4Addr::new(10, 96, 0, 10),
            port: 53,
            protocol: Protocol::Udp,
        }];
        assert_eq!(dns.0.backends, vec![(Ipv4Addr::new(10, 0, 0, 2), 53)]);
    }

    /// From the Kubernetes source the endpoint-slice controller's slices are the truth, for
    /// services with a selector too; pods alone change nothing.
    #[test]
    fn in_slices_mode_selector_services_use_their_slices() {
        let slice = r#"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x1, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.0.0.7], conditions: {ready: true}}
- {addresses: [10.0.0.8], conditions: {ready: false, serving: true, terminating: true}}
"#;
        let objects = parse_manifests("t", &format!("{MANIFESTS}{slice}")).unwrap();
        let (mut state, problems) = DesiredState::build(&objects);
        assert!(problems.is_empty(), "{problems:?}");
        let http = Frontend {
            address: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let computed = lb_entries(&state, None);
        assert_eq!(
            computed[&http].0.backends,
            vec![(Ipv4Addr::new(10, 0, 0, 2), 8080)]
        );

        let before = state.clone();
        state.endpoints_from_slices = true;
        let sliced = lb_entries(&state, None);
        assert_eq!(
            sliced[&http].0.backends,
            vec![(Ipv4Addr::new(10, 0, 0, 7), 8080)]
        );
        assert!(
            affected_services(&before, &state).contains("x/web"),
            "switching modes reconsiders every service"
        );

        let mut pod_gone = state.clone();
        pod_gone.pods.remove("x/a");
        assert!(
            affected_services(&state, &pod_gone).is_empty(),
            "a pod change without a slice change touches no service"
        );
    }
}

#[cfg(test)]
mod node_tests {
    use super::*;
    use crate::manifest::parse_manifests;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: np, namespace: x}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  selector: {app: web}
  externalIPs: [203.0.113.7]
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.9}]}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec: {nodeName: n1}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: web}}
spec: {nodeName: n2}
status: {phase: Running, podIP: 10.0.1.2}
"#;

    #[test]
    fn every_frontend_kind_with_local_policies_per_node() {
        let objects = parse_manifests("t", MANIFESTS).unwrap();
        let (state, problems) = DesiredState::build(&objects);
        assert!(problems.is_empty(), "{problems:?}");
        let n1 = NodeView {
            name: "n1",
            address: Ipv4Addr::new(192, 168, 0, 1),
        };
        let entries = lb_entries(&state, Some(n1));
        let kinds: Vec<(&str, Ipv4Addr, u16)> = entries
            .iter()
            .map(|(f, (_, o))| (o.kind, f.address, f.port))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("ClusterIP", Ipv4Addr::new(10, 96, 0, 20), 80),
                ("NodePort", Ipv4Addr::new(192, 168, 0, 1), 30080),
                ("LoadBalancer", Ipv4Addr::new(198, 51, 100, 9), 80),
                ("ExternalIP", Ipv4Addr::new(203, 0, 113, 7), 80),
            ]
        );
        // Local policies: node n1 only ever uses its own pod.
        for (entry, origin) in entries.values() {
            assert_eq!(
                entry.backends,
                vec![(Ipv4Addr::new(10, 0, 0, 2), 8080)],
                "{}",
                origin.kind
            );
            assert_eq!(entry.external, origin.kind != "ClusterIP");
        }
        // Without a node (not known yet) there are no NodePorts.
        assert_eq!(lb_entries(&state, None).len(), 3);
    }
}

#[cfg(test)]
mod incremental_tests {
    use super::*;
    use crate::manifest::{parse_manifests, Object};
    use proptest::prelude::*;

    /// A small cluster from choices: services select on `app`, pods carry an `app` label,
    /// everything in two namespaces.
    fn state(services: &[(u8, u8, bool)], pods: &[(u8, u8, u8, bool)]) -> DesiredState {
        DesiredState::build(&objects(services, pods)).0
    }

    fn objects(services: &[(u8, u8, bool)], pods: &[(u8, u8, u8, bool)]) -> Vec<Object> {
        let mut text = String::new();
        for (i, (ns, app, local)) in services.iter().enumerate() {
            text += &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: n{ns}}}\nspec: {{clusterIP: 10.96.0.{}, internalTrafficPolicy: {}, selector: {{app: a{app}}}, ports: [{{port: 80}}]}}\n---\n",
                i + 1,
                if *local { "Local" } else { "Cluster" }
            );
        }
        for (i, (ns, app, node, ready)) in pods.iter().enumerate() {
            text += &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: n{ns}, labels: {{app: a{app}}}}}\nspec: {{nodeName: node{node}}}\nstatus: {{phase: {}, podIP: 10.0.0.{}}}\n---\n",
                if *ready { "Running" } else { "Pending" },
                i + 1
            );
        }
        parse_manifests("t", &text).unwrap()
    }

    /// What a source would report: every key whose object differs, appeared or went away.
    fn changed_between(old: &[Object], new: &[Object]) -> ChangedObjects {
        let index = |objects: &[Object]| -> BTreeMap<(ObjectKind, String), Object> {
            objects
                .iter()
                .filter_map(|o| Some((o.key()?, o.clone())))
                .collect()
        };
        let (a, b) = (index(old), index(new));
        let diff = crate::diff_maps(&a, &b);
        ChangedObjects(
            diff.added
                .iter()
                .map(|(k, _)| (*k).clone())
                .chain(diff.removed.iter().map(|(k, _)| (*k).clone()))
                .chain(diff.changed.iter().map(|(k, _, _)| (*k).clone()))
                .collect(),
        )
    }

    fn services() -> impl Strategy<Value = Vec<(u8, u8, bool)>> {
        proptest::collection::vec((0u8..2, 0u8..3, any::<bool>()), 0..5)
    }
    fn pods() -> impl Strategy<Value = Vec<(u8, u8, u8, bool)>> {
        proptest::collection::vec((0u8..2, 0u8..3, 0u8..2, any::<bool>()), 0..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Old frontends with the affected services' frontends swapped for their new ones
        /// equal a full recomputation of the new state.
        #[test]
        fn recomputing_only_affected_services_equals_a_full_rebuild(
            s1 in services(), p1 in pods(), s2 in services(), p2 in pods(),
        ) {
            let node = Some(NodeView { name: "node0", address: Ipv4Addr::new(192, 168, 0, 1) });
            let (old, new) = (state(&s1, &p1), state(&s2, &p2));
            let affected = affected_services(&old, &new);
            let mut patched = lb_entries(&old, node);
            patched.retain(|_, (_, origin)| !affected.contains(&origin.service));
            let changed = affected.iter().filter_map(|k| new.services.get(k));
            patched.extend(lb_entries_for(&new, node, changed));
            prop_assert_eq!(patched, lb_entries(&new, node));
        }

        /// The source's change list finds every service the full comparison finds, and
        /// recomputing just those gives the full rebuild's frontends.
        #[test]
        fn the_change_list_finds_every_affected_service(
            s1 in services(), p1 in pods(), s2 in services(), p2 in pods(),
        ) {
            let node = Some(NodeView { name: "node0", address: Ipv4Addr::new(192, 168, 0, 1) });
            let (o1, o2) = (objects(&s1, &p1), objects(&s2, &p2));
            let (old, new) = (DesiredState::build(&o1).0, DesiredState::build(&o2).0);
            let hinted = affected_services_by(&changed_between(&o1, &o2), &old, &new);
            prop_assert!(hinted.is_superset(&affected_services(&old, &new)));
            let mut patched = lb_entries(&old, node);
            patched.retain(|_, (_, origin)| !hinted.contains(&origin.service));
            patched.extend(lb_entries_for(&new, node, hinted.iter().filter_map(|k| new.services.get(k))));
            prop_assert_eq!(patched, lb_entries(&new, node));
        }
    }

    #[test]
    fn an_unrelated_pod_change_affects_nothing() {
        let old = state(
            &[(0, 0, false), (0, 1, false)],
            &[(0, 0, 0, true), (0, 2, 0, true)],
        );
        let new = state(
            &[(0, 0, false), (0, 1, false)],
            &[(0, 0, 0, true), (0, 2, 1, false)],
        );
        assert!(affected_services(&old, &new).is_empty());
        let relabeled = state(
            &[(0, 0, false), (0, 1, false)],
            &[(0, 1, 0, true), (0, 2, 0, true)],
        );
        let affected = affected_services(&old, &relabeled);
        assert_eq!(
            affected.into_iter().collect::<Vec<_>>(),
            vec!["n0/s0".to_string(), "n0/s1".to_string()]
        );
    }
}

#[cfg(test)]
mod slice_tests {
    use super::*;
    use crate::manifest::parse_manifests;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: ext-db, namespace: x}
spec: {clusterIP: 10.96.0.30, ports: [{name: sql, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-db-1, namespace: x, labels: {kubernetes.io/service-name: ext-db}}
addressType: IPv4
ports: [{name: sql, port: 15432, protocol: TCP}]
endpoints:
- {addresses: [192.0.2.10], nodeName: n1}
- {addresses: [192.0.2.11], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [192.0.2.12], conditions: {ready: false}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: v6, namespace: x, labels: {kubernetes.io/service-name: ext-db}}
addressType: IPv6
endpoints: [{addresses: ["2001:db8::1"]}]
"#;

    #[test]
    fn selectorless_services_take_their_endpoints_from_slices() {
        let objects = parse_manifests("t", MANIFESTS).unwrap();
        let (state, problems) = DesiredState::build(&objects);
        assert!(problems.is_empty(), "{problems:?}");
        let entries = lb_entries(&state, None);
        let sql = &entries[&Frontend {
            address: Ipv4Addr::new(10, 96, 0, 30),
            port: 5432,
            protocol: Protocol::Tcp,
        }];
        // Ready endpoints only; the terminating one would serve only if nothing were ready.
        assert_eq!(sql.0.backends, vec![(Ipv4Addr::new(192, 0, 2, 10), 15432)]);

        let only_terminating = MANIFESTS.replace("- {addresses: [192.0.2.10], nodeName: n1}\n", "");
        let (state2, _) = DesiredState::build(&parse_manifests("t", &only_terminating).unwrap());
        let entries = lb_entries(&state2, None);
        let sql = &entries[&Frontend {
            address: Ipv4Addr::new(10, 96, 0, 30),
            port: 5432,
            protocol: Protocol::Tcp,
        }];
        assert_eq!(sql.0.backends, vec![(Ipv4Addr::new(192, 0, 2, 11), 15432)]);
        assert_eq!(
            affected_services(&state, &state2)
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["x/ext-db".to_string()]
        );
    }

    #[test]
    fn bad_slices_name_the_field() {
        let bad = MANIFESTS.replace("192.0.2.12", "not-an-ip");
        let (_, problems) = DesiredState::build(&parse_manifests("t", &bad).unwrap());
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("EndpointSlice x/ext-db-1: endpoints[2].addresses[0]")
                && problems[0].contains("not-an-ip"),
            "{problems:?}"
        );
    }
}
