//! The desired state assembled from objects, with the cross-object checks no single object can
//! make (overlapping pod CIDRs, duplicate names).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::manifest::{ChangedObjects, Object, ObjectKind};
use crate::node::NodeInfo;
use crate::policy::PolicyInfo;
use crate::service::{Protocol, ServiceInfo};
use crate::slices::EndpointSliceInfo;

/// The label the API server puts on every namespace, naming it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub ip: Option<Ipv4Addr>,
    /// Container ports of all containers (named ports resolve against these).
    pub ports: Vec<ContainerPort>,
    /// Running and not reported unready (a Ready=False condition).
    pub ready: bool,
    /// metadata.deletionTimestamp is set.
    pub terminating: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Namespace name -> labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// "namespace/name" -> pod.
    pub pods: BTreeMap<String, PodInfo>,
    /// "namespace/name" -> service.
    pub services: BTreeMap<String, ServiceInfo>,
    /// "namespace/name" of the slice -> slice (IPv4 slices only).
    pub endpoint_slices: BTreeMap<String, EndpointSliceInfo>,
    /// "namespace/name" -> network policy.
    pub policies: BTreeMap<String, PolicyInfo>,
    /// Every service's endpoints come from EndpointSlices (the Kubernetes source, where the
    /// endpoint-slice controller writes them); otherwise sluice computes them from selectors.
    pub endpoints_from_slices: bool,
    /// (namespace, label key, label value) -> pod keys: selectors look up instead of scanning.
    by_label: BTreeMap<(String, String, String), BTreeSet<String>>,
    /// The problems of the stored objects, by key (several objects may share one); nodes'
    /// and nameless objects' problems are recomputed on every pass instead.
    object_problems: BTreeMap<(ObjectKind, String), Vec<String>>,
}

impl DesiredState {
    /// Builds the state; objects that are invalid or conflict with an earlier one are left out
    /// and described in the returned problems, so one bad object never takes the rest down.
    pub fn build<'a, O: Borrow<Object> + 'a>(
        objects: impl IntoIterator<Item = &'a O>,
    ) -> (Self, Vec<String>) {
        Self::build_with_previous(objects, &DesiredState::default())
    }

    /// Like `build`, but an invalid NetworkPolicy keeps its valid version from `previous`:
    /// dropping it would open what it closed, and failing everything would cut off pods it
    /// protects.
    pub fn build_with_previous<'a, O: Borrow<Object> + 'a>(
        objects: impl IntoIterator<Item = &'a O>,
        previous: &DesiredState,
    ) -> (Self, Vec<String>) {
        let mut state = DesiredState::default();
        let problems = state.rebuild(objects, None, previous);
        (state, problems)
    }

    /// Brings the state to `objects` (a whole snapshot) when only the objects under
    /// `changed`'s keys may differ from the ones it was built from: those are rebuilt, the
    /// rest is kept, so one change costs a pass over the objects instead of a rebuild of
    /// every Service and Pod. Equal to `build_with_previous(objects, previous)`, problems
    /// included (a property test holds it to that). Returns the problems and the entries the
    /// changed keys had before, for consumers that only look at what changed.
    pub fn update<'a, O: Borrow<Object> + 'a>(
        &mut self,
        objects: impl IntoIterator<Item = &'a O>,
        changed: &ChangedObjects,
        previous: &DesiredState,
    ) -> (DesiredState, Vec<String>) {
        let mut replaced = DesiredState {
            endpoints_from_slices: self.endpoints_from_slices,
            ..Default::default()
        };
        for (kind, key) in &changed.0 {
            self.object_problems.remove(&(*kind, key.clone()));
            match kind {
                ObjectKind::Namespace => {
                    move_entry(&mut self.namespaces, &mut replaced.namespaces, key)
                }
                ObjectKind::Pod => {
                    if let Some(pod) = self.pods.remove(key) {
                        self.unindex_pod(key, &pod);
                        replaced.pods.insert(key.clone(), pod);
                    }
                }
                ObjectKind::Service => move_entry(&mut self.services, &mut replaced.services, key),
                ObjectKind::EndpointSlice => move_entry(
                    &mut self.endpoint_slices,
                    &mut replaced.endpoint_slices,
                    key,
                ),
                ObjectKind::NetworkPolicy => {
                    move_entry(&mut self.policies, &mut replaced.policies, key)
                }
                // Nodes are recomputed as a whole: which of two overlapping ones wins depends
                // on both.
                ObjectKind::Node => {}
            }
        }
        let problems = self.rebuild(objects, Some(changed), previous);
        (replaced, problems)
    }

    /// Adds the objects under `only`'s keys (all of them when None) to a state that holds
    /// none of them, recomputes the nodes, and returns every problem of the state.
    fn rebuild<'a, O: Borrow<Object> + 'a>(
        &mut self,
        objects: impl IntoIterator<Item = &'a O>,
        only: Option<&ChangedObjects>,
        previous: &DesiredState,
    ) -> Vec<String> {
        let kinds: BTreeSet<ObjectKind> = match only {
            Some(changed) => changed.0.iter().map(|(k, _)| *k).collect(),
            None => ObjectKind::ALL.into_iter().collect(),
        };
        let mut nameless = Vec::new();
        let mut nodes: Vec<&k8s_openapi::api::core::v1::Node> = Vec::new();
        let mut added_pods = Vec::new();
        for object in objects {
            let object: &Object = object.borrow();
            let Some((kind, meta)) = object.kind_and_meta() else {
                continue;
            };
            if let Object::Node(node) = object {
                nodes.push(node);
                continue;
            }
            if meta.name.is_none() {
                // Never stored (no key to store it under); reported on every pass.
                nameless.extend(self.add_object(object, previous));
                continue;
            }
            if !kinds.contains(&kind) {
                continue;
            }
            let Some(key) = object.key() else { continue };
            if only.is_some_and(|c| !c.0.contains(&key)) {
                continue;
            }
            let problem = self.add_object(object, previous);
            if kind == ObjectKind::Pod {
                added_pods.push(key.1.clone());
            }
            if let Some(p) = problem {
                self.object_problems.entry(key).or_default().push(p);
            }
        }
        for key in added_pods {
            if let Some(pod) = self.pods.get(&key).cloned() {
                // A key seen twice is indexed twice; the sets make that harmless.
                self.index_pod(&key, &pod);
            }
        }
        let mut problems: Vec<String> = self.object_problems.values().flatten().cloned().collect();
        problems.extend(nameless);
        problems.extend(self.set_nodes(nodes));
        problems
    }

    /// Stores one object's info (a later object under the same key replaces an earlier
    /// one); the problem when it is unusable.
    fn add_object(&mut self, object: &Object, previous: &DesiredState) -> Option<String> {
        match object {
            Object::Node(_) | Object::Other { .. } => None,
            Object::Namespace(ns) => {
                let Some(name) = ns.metadata.name.clone() else {
                    return Some("Namespace: metadata.name is missing".into());
                };
                let mut labels = ns.metadata.labels.clone().unwrap_or_default();
                // Set by the API server on every namespace; selectors rely on it.
                labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
                self.namespaces.insert(name, labels);
                None
            }
            Object::Pod(pod) => match pod_info(pod) {
                Ok(info) => {
                    let key = format!("{}/{}", info.namespace, info.name);
                    if let Some(old) = self.pods.insert(key.clone(), info) {
                        self.unindex_pod(&key, &old);
                    }
                    None
                }
                Err(e) => Some(e),
            },
            Object::Service(svc) => match ServiceInfo::from_service(svc) {
                Ok(info) => {
                    self.services.insert(info.key(), info);
                    None
                }
                Err(e) => Some(e),
            },
            Object::EndpointSlice(slice) => match EndpointSliceInfo::from_slice(slice) {
                Ok(Some(info)) => {
                    self.endpoint_slices
                        .insert(format!("{}/{}", info.namespace, info.name), info);
                    None
                }
                Ok(None) => None,
                Err(e) => Some(e),
            },
            Object::NetworkPolicy(np) => match PolicyInfo::from_policy(np) {
                Ok(info) => {
                    self.policies.insert(info.key(), info);
                    None
                }
                Err(e) => {
                    let namespace = np.metadata.namespace.as_deref().unwrap_or("default");
                    let key = np
                        .metadata
                        .name
                        .as_ref()
                        .map(|n| format!("{namespace}/{n}"));
                    let kept = key.and_then(|k| previous.policies.get(&k));
                    match kept {
                        Some(old) if !self.policies.contains_key(&old.key()) => {
                            self.policies.insert(old.key(), old.clone());
                            Some(format!("{e}; keeping the previous version"))
                        }
                        _ => Some(e),
                    }
                }
            },
        }
    }

    fn index_pod(&mut self, key: &str, pod: &PodInfo) {
        for (k, v) in &pod.labels {
            self.by_label
                .entry((pod.namespace.clone(), k.clone(), v.clone()))
                .or_default()
                .insert(key.to_string());
        }
    }

    fn unindex_pod(&mut self, key: &str, pod: &PodInfo) {
        for (k, v) in &pod.labels {
            let label = (pod.namespace.clone(), k.clone(), v.clone());
            if let Some(keys) = self.by_label.get_mut(&label) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_label.remove(&label);
                }
            }
        }
    }

    /// Replaces the nodes with those of `objects`; the problems of unusable and conflicting
    /// ones. Deterministic winner on conflicts: the node whose name sorts first.
    fn set_nodes(&mut self, objects: Vec<&k8s_openapi::api::core::v1::Node>) -> Vec<String> {
        let mut problems = Vec::new();
        let mut nodes: Vec<NodeInfo> = Vec::new();
        for node in objects {
            match NodeInfo::from_node(node) {
                Ok(info) => nodes.push(info),
                Err(e) => problems.push(e),
            }
        }
        self.nodes.clear();
        nodes.sort();
        for node in nodes {
            if self.nodes.contains_key(&node.name) {
                problems.push(format!(
                    "Node {}: defined more than once; keeping the first",
                    node.name
                ));
                continue;
            }
            if let Some(other) = self.nodes.values().find(|o| {
                o.pod_cidr.contains(&node.pod_cidr.network())
                    || node.pod_cidr.contains(&o.pod_cidr.network())
            }) {
                problems.push(format!(
                    "Node {}: spec.podCIDR {} overlaps Node {}'s {}; ignoring Node {}",
                    node.name, node.pod_cidr, other.name, other.pod_cidr, node.name
                ));
                continue;
            }
            self.nodes.insert(node.name.clone(), node);
        }
        problems
    }
}

fn move_entry<V>(from: &mut BTreeMap<String, V>, to: &mut BTreeMap<String, V>, key: &str) {
    if let Some(v) = from.remove(key) {
        to.insert(key.to_string(), v);
    }
}

impl DesiredState {
    /// Pods of `namespace` whose labels match every pair of `selector` (an empty selector
    /// matches nothing: a service without selector has its endpoints managed elsewhere).
    /// Cost follows the rarest label of the selector, not the number of pods.
    pub fn selected_pods(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Vec<&PodInfo> {
        let sets: Option<Vec<&BTreeSet<String>>> = selector
            .iter()
            .map(|(k, v)| {
                self.by_label
                    .get(&(namespace.to_string(), k.clone(), v.clone()))
            })
            .collect();
        let Some(sets) = sets else { return Vec::new() };
        let Some(smallest) = sets.iter().min_by_key(|s| s.len()) else {
            return Vec::new();
        };
        smallest
            .iter()
            .filter(|key| sets.iter().all(|s| s.contains(*key)))
            .filter_map(|key| self.pods.get(key))
            .collect()
    }
}

fn pod_info(pod: &k8s_openapi::api::core::v1::Pod) -> Result<PodInfo, String> {
    let name = pod
        .metadata
        .name
        .clone()
        .ok_or("Pod: metadata.name is missing")?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let ip = match pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
        None => None,
        Some(text) => Some(text.parse().map_err(|_| {
            format!("Pod {namespace}/{name}: status.podIP: {text:?} is not an IPv4 address")
        })?),
    };
    let mut ports = Vec::new();
    for (ci, c) in pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .enumerate()
    {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let field = format!("Pod {namespace}/{name}: spec.containers[{ci}].ports[{pi}]");
            if !(1..=65535).contains(&p.container_port) {
                return Err(format!(
                    "{field}.containerPort: {} is outside 1..=65535",
                    p.container_port
                ));
            }
            let protocol = Protocol::parse(p.protocol.as_deref())
                .map_err(|m| format!("{field}.protocol: {m}"))?;
            ports.push(ContainerPort {
                name: p.name.clone(),
                port: p.container_port as u16,
                protocol,
            });
        }
    }
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let reported_unready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status != "True"));
    Ok(PodInfo {
        ports,
        ready: running && !reported_unready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        namespace,
        name,
        ip,
    })
}

#[cfg(test)]
mod update_tests {
    use super::*;
    use crate::manifest::parse_manifests;
    use proptest::prelude::*;

    /// One object from a few choices: names repeat (duplicate keys), some are invalid, one
    /// kind has no name at all, nodes may overlap.
    fn object(choice: (u8, u8, u8, u8)) -> String {
        let (kind, name, a, b) = choice;
        let ns = format!("n{}", a % 2);
        match kind % 7 {
            0 => format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{team: t{b}}}}}\n"
            ),
            1 => format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: node{}}}\nspec: {{podCIDR: 10.{}.0.0/{}}}\n",
                name % 3,
                b % 2,
                if a % 3 == 0 { 16 } else { 24 }
            ),
            2 => format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{}, namespace: {ns}, labels: {{app: a{}}}}}\nspec: {{nodeName: node{}}}\nstatus: {{phase: Running, podIP: {}}}\n",
                name % 4,
                b % 3,
                a % 2,
                if b == 7 { "bad".to_string() } else { format!("10.0.0.{}", b + 1) }
            ),
            3 => format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{}, namespace: {ns}}}\nspec: {{clusterIP: {}, selector: {{app: a{}}}, ports: [{{port: 80}}]}}\n",
                name % 3,
                if b == 7 { "nope".to_string() } else { format!("10.96.0.{}", b + 1) },
                a % 3
            ),
            4 => format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: e{}, namespace: {ns}, labels: {{kubernetes.io/service-name: s{}}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{{addresses: [{}]}}]\n",
                name % 3,
                b % 3,
                if b == 7 { "x".to_string() } else { format!("10.0.0.{}", b + 1) }
            ),
            5 => format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{}, namespace: {ns}}}\nspec: {{podSelector: {{matchLabels: {{app: a{}}}}}, policyTypes: [{}]}}\n",
                name % 3,
                b % 3,
                if a == 7 { "Sideways" } else { "Ingress" }
            ),
            _ => "apiVersion: v1\nkind: Pod\nmetadata: {namespace: n0}\n".to_string(),
        }
    }

    fn objects(choices: &[(u8, u8, u8, u8)]) -> Vec<Object> {
        choices
            .iter()
            .map(|c| parse_manifests("t", &object(*c)).unwrap().remove(0))
            .collect()
    }

    /// What a source reports: every key under which any object differs, appeared or went.
    fn changed_between(old: &[Object], new: &[Object]) -> ChangedObjects {
        let group = |objects: &[Object]| {
            let mut by_key: BTreeMap<(ObjectKind, String), Vec<Object>> = BTreeMap::new();
            for o in objects {
                if let Some(k) = o.key() {
                    by_key.entry(k).or_default().push(o.clone());
                }
            }
            by_key
        };
        let (a, b) = (group(old), group(new));
        ChangedObjects(
            a.keys()
                .chain(b.keys())
                .filter(|k| a.get(*k) != b.get(*k))
                .cloned()
                .collect(),
        )
    }

    fn choices() -> impl Strategy<Value = Vec<(u8, u8, u8, u8)>> {
        proptest::collection::vec((0u8..7, 0u8..4, 0u8..8, 0u8..8), 0..14)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Updating with the change list gives exactly what a full build gives, problems too
        /// (a superset of the changed keys as well), and hands back what the changed keys had.
        #[test]
        fn an_update_equals_a_full_build(
            c1 in choices(), c2 in choices(), kept in choices(), extra in choices(),
        ) {
            let (o1, o2) = (objects(&c1), objects(&c2));
            let previous = DesiredState::build(&objects(&kept)).0;
            let (mut state, _) = DesiredState::build_with_previous(&o1, &previous);
            let before = state.clone();
            let mut changed = changed_between(&o1, &o2);
            changed.0.extend(objects(&extra).iter().filter_map(Object::key));
            let (replaced, mut problems) = state.update(&o2, &changed, &previous);
            let (full, mut full_problems) = DesiredState::build_with_previous(&o2, &previous);
            prop_assert_eq!(&state, &full);
            problems.sort();
            full_problems.sort();
            prop_assert_eq!(problems, full_problems);
            for (kind, key) in &changed.0 {
                if *kind == ObjectKind::Pod {
                    prop_assert_eq!(replaced.pods.get(key), before.pods.get(key));
                }
                if *kind == ObjectKind::Service {
                    prop_assert_eq!(replaced.services.get(key), before.services.get(key));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse_manifests;

    fn node(name: &str, cidr: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nspec: {{podCIDR: {cidr}}}\nstatus: {{addresses: [{{type: InternalIP, address: {ip}}}]}}\n---\n"
        )
    }

    #[test]
    fn overlapping_pod_cidrs_keep_the_first_node_and_name_both() {
        let text =
            node("b", "10.0.0.0/16", "192.168.0.3") + &node("a", "10.0.1.0/24", "192.168.0.2");
        let objects = parse_manifests("t", &text).unwrap();
        let (state, problems) = DesiredState::build(&objects);
        assert_eq!(state.nodes.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("Node b") && problems[0].contains("Node a's 10.0.1.0/24"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_bad_object_does_not_hide_the_good_ones() {
        let text = node("a", "10.0.0.0/24", "192.168.0.2")
            + "apiVersion: v1\nkind: Node\nmetadata: {name: broken}\nspec: {}\n---\n"
            + "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x, labels: {app: p}}\nstatus: {podIP: 10.0.0.7}\n";
        let objects = parse_manifests("t", &text).unwrap();
        let (state, problems) = DesiredState::build(&objects);
        assert_eq!(state.nodes.len(), 1);
        assert_eq!(state.pods["x/p"].ip, Some(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(
            problems,
            vec!["Node broken: spec.podCIDR is missing".to_string()]
        );
    }
}
