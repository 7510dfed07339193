//! Turns parsed YAML documents into a validated [`Cluster`], collecting every problem.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_api::config::{KvstoreKind, MonitorAggregation, RoutingMode, SourceKind};

use super::file::{ClusterDoc, API_VERSION, KIND};
use super::{Cluster, ClusterError, NodeDef, PodDef, DEFAULT_UNDERLAY};
use crate::names;

const DEFAULT_NAMESPACE: &str = "default";

pub fn cluster(docs: Vec<Value>) -> Result<Cluster, ClusterError> {
    let mut p = Problems::default();
    let Some(first) = docs.first() else {
        return Err(ClusterError::Invalid(vec![format!(
            "the cluster file has no documents; the first must be `apiVersion: {API_VERSION}`, \
             `kind: {KIND}`"
        )]));
    };
    if first.get("kind").and_then(Value::as_str) != Some(KIND) {
        return Err(ClusterError::Invalid(vec![format!(
            "documents[0].kind: {} is not {KIND:?}; the first document must be the Cluster",
            show(first.get("kind"))
        )]));
    }
    let doc: ClusterDoc = match typed(first) {
        Ok(d) => d,
        Err(e) => return Err(ClusterError::Invalid(vec![e])),
    };
    if doc.api_version != API_VERSION {
        p.push(format!(
            "apiVersion: {:?} is not {API_VERSION:?}",
            doc.api_version
        ));
    }
    if let Err(e) = names::check_lab_name(&doc.metadata.name) {
        p.push(format!("metadata.name: {:?} {e}", doc.metadata.name));
    }
    let routing = match doc.spec.routing.as_deref().unwrap_or("native") {
        "native" => RoutingMode::Native,
        "vxlan" => RoutingMode::Vxlan,
        other => {
            p.push(format!(
                "spec.routing: {other:?} is not one of: native, vxlan"
            ));
            RoutingMode::Native
        }
    };
    let underlay_text = doc.spec.underlay.as_deref().unwrap_or(DEFAULT_UNDERLAY);
    let underlay = parse_cidr(&mut p, "spec.underlay", underlay_text);
    let nodes = nodes(&mut p, &doc, underlay, underlay_text);
    let cni_plugins = cni_plugins(&mut p, &doc);
    let events_buffer_bytes = doc.spec.events_buffer_bytes.unwrap_or(4 << 20);
    if !events_buffer_bytes.is_power_of_two() || events_buffer_bytes < 4096 {
        p.push(format!(
            "spec.eventsBufferBytes: {events_buffer_bytes} is not a power of two of at least 4096"
        ));
    }
    let kvstore = match doc.spec.kvstore.as_deref().unwrap_or("none") {
        "none" => KvstoreKind::None,
        "etcd" => KvstoreKind::Etcd,
        other => {
            p.push(format!("spec.kvstore: {other:?} is not one of: none, etcd"));
            KvstoreKind::None
        }
    };
    if let Some(m) = &doc.spec.maps {
        for (field, value) in [
            ("lbSlots", m.lb_slots),
            ("backends", m.backends),
            ("conntrack", m.conntrack),
            ("policy", m.policy),
        ] {
            if !(16..=1 << 24).contains(&value) {
                p.push(format!(
                    "spec.maps.{field}: {value} is outside 16..=16777216"
                ));
            }
        }
    }
    let source = match doc.spec.source.as_deref().unwrap_or("files") {
        "files" => SourceKind::Files,
        "kubernetes" => SourceKind::Kubernetes,
        other => {
            p.push(format!(
                "spec.source: {other:?} is not one of: files, kubernetes"
            ));
            SourceKind::Files
        }
    };
    let monitor_aggregation = match doc.spec.monitor_aggregation.as_deref().unwrap_or("medium") {
        "medium" => MonitorAggregation::Medium,
        "none" => MonitorAggregation::None,
        other => {
            p.push(format!(
                "spec.monitorAggregation: {other:?} is not one of: none, medium"
            ));
            MonitorAggregation::Medium
        }
    };

    let mut namespaces: Vec<Namespace> = Vec::new();
    let mut pods: Vec<(usize, Pod)> = Vec::new();
    let mut extra: Vec<(usize, String, Option<String>, Value)> = Vec::new();
    for (i, d) in docs.iter().enumerate().skip(1) {
        let kind = d.get("kind").and_then(Value::as_str).unwrap_or_default();
        let at = format!("documents[{i}]");
        match kind {
            "Namespace" => match typed::<Namespace>(d) {
                Ok(ns) => namespaces.push(ns),
                Err(e) => p.push(format!("{at} (Namespace): {e}")),
            },
            "Pod" => match typed::<Pod>(d) {
                Ok(pod) => pods.push((i, pod)),
                Err(e) => p.push(format!("{at} (Pod): {e}")),
            },
            "Service" | "NetworkPolicy" | "EndpointSlice" => {
                let parsed = match kind {
                    "Service" => typed::<Service>(d).map(|s| s.metadata),
                    "EndpointSlice" => typed::<k8s_openapi::api::discovery::v1::EndpointSlice>(d).map(|s| s.metadata),
                    _ => typed::<NetworkPolicy>(d).map(|s| s.metadata),
                };
                match parsed {
                    Ok(meta) if meta.name.is_some() => {
                        extra.push((i, kind.to_string(), meta.namespace, d.clone()))
                    }
                    Ok(_) => p.push(format!("{at} ({kind}): metadata.name: missing")),
                    Err(e) => p.push(format!("{at} ({kind}): {e}")),
                }
            }
            KIND => p.push(format!("{at}.kind: \"Cluster\": only the first document may be a Cluster")),
            _ => p.push(format!(
                "{at}.kind: {} is not supported (expected Namespace, Pod, Service, EndpointSlice or NetworkPolicy)",
                show(d.get("kind"))
            )),
        }
    }

    let namespaces = check_namespaces(&mut p, namespaces);
    let known_ns: BTreeSet<String> = namespaces
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    for (i, kind, ns, v) in &extra {
        let ns = ns.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        if !known_ns.contains(ns) {
            p.push(format!(
                "documents[{i}] ({kind} {}): metadata.namespace: {ns:?} is not declared by any Namespace document",
                show(v.pointer("/metadata/name"))
            ));
        }
    }
    let pods = check_pods(&mut p, pods, &nodes, &known_ns);
    p.finish()?;
    Ok(Cluster {
        name: doc.metadata.name,
        routing,
        underlay: underlay.unwrap_or_default(),
        nodes,
        namespaces,
        pods,
        extra_manifests: extra.into_iter().map(|(_, _, _, v)| v).collect(),
        cni_plugins,
        monitor_aggregation,
        socket_lb: doc.spec.socket_lb.unwrap_or(true),
        events_buffer_bytes,
        kvstore,
        source,
        maps: doc.spec.maps,
    })
}

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, p: String) {
        self.0.push(p);
    }
    fn finish(self) -> Result<(), ClusterError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ClusterError::Invalid(self.0))
        }
    }
}

/// Deserializes with the failing field's path in the message.
fn typed<T: DeserializeOwned>(v: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "(missing)".into(),
        Some(v) => v.to_string(),
    }
}

fn parse_cidr(p: &mut Problems, path: &str, text: &str) -> Option<Ipv4Net> {
    let net: Ipv4Net = match text.parse() {
        Ok(n) => n,
        Err(_) => {
            p.push(format!("{path}: {text:?} is not a valid IPv4 CIDR"));
            return None;
        }
    };
    if net.trunc() != net {
        p.push(format!(
            "{path}: {text:?} has host bits set; did you mean \"{}\"?",
            net.trunc()
        ));
        return None;
    }
    if net.prefix_len() > 30 {
        p.push(format!(
            "{path}: {text:?} is too small (a /30 or larger is needed)"
        ));
        return None;
    }
    Some(net)
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn nodes(
    p: &mut Problems,
    doc: &ClusterDoc,
    underlay: Option<Ipv4Net>,
    underlay_text: &str,
) -> Vec<NodeDef> {
    let specs = &doc.spec.nodes;
    if specs.is_empty() {
        p.push("spec.nodes: the cluster needs at least one node".into());
    }
    if let Some(u) = underlay {
        // The last host address belongs to the outside host (see network::outside_ip).
        let room = u.hosts().count().saturating_sub(1);
        if specs.len() > room {
            p.push(format!(
                "spec.underlay: {underlay_text:?} has room for {room} nodes, spec.nodes has {}",
                specs.len()
            ));
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut cidrs: Vec<(usize, Ipv4Net)> = Vec::new();
    let mut out = Vec::new();
    for (i, n) in specs.iter().enumerate() {
        if let Err(e) = names::check_subdomain(&n.name, names::NODE_NAME_MAX) {
            p.push(format!("spec.nodes[{i}].name: {:?} {e}", n.name));
        }
        if let Some(j) = seen.insert(&n.name, i) {
            p.push(format!(
                "spec.nodes[{i}].name: {:?} is already the name of spec.nodes[{j}]",
                n.name
            ));
        }
        let path = format!("spec.nodes[{i}].podCIDR");
        let Some(cidr) = parse_cidr(p, &path, &n.pod_cidr) else {
            continue;
        };
        for (j, other) in &cidrs {
            if overlaps(&cidr, other) {
                p.push(format!(
                    "{path}: {:?} of node {:?} overlaps spec.nodes[{j}].podCIDR {:?} of node {:?}",
                    n.pod_cidr, n.name, specs[*j].pod_cidr, specs[*j].name
                ));
            }
        }
        if let Some(u) = underlay.filter(|u| overlaps(&cidr, u)) {
            p.push(format!(
                "{path}: {:?} of node {:?} overlaps spec.underlay {:?}",
                n.pod_cidr,
                n.name,
                u.to_string()
            ));
        }
        cidrs.push((i, cidr));
        if let Some(ip) = underlay.and_then(|u| node_ip(u, i)) {
            out.push(NodeDef {
                name: n.name.clone(),
                pod_cidr: cidr,
                ip,
            });
        }
    }
    out
}

/// Node `i` gets the underlay's `(i+1)`-th address (network address + i + 1).
pub fn node_ip(underlay: Ipv4Net, index: usize) -> Option<Ipv4Addr> {
    underlay.hosts().nth(index)
}

fn cni_plugins(p: &mut Problems, doc: &ClusterDoc) -> Vec<Value> {
    let Some(cni) = &doc.spec.cni else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, plugin) in cni.plugins.iter().enumerate() {
        match plugin.get("type") {
            Some(Value::String(t)) if !t.is_empty() && !t.contains('/') => {
                out.push(Value::Object(plugin.clone()))
            }
            other => p.push(format!(
                "spec.cni.plugins[{i}].type: {} is not a plugin name (a non-empty string without '/')",
                show(other)
            )),
        }
    }
    out
}

fn check_namespaces(p: &mut Problems, declared: Vec<Namespace>) -> Vec<Namespace> {
    let mut out: Vec<Namespace> = Vec::new();
    for ns in declared {
        let name = ns.metadata.name.clone().unwrap_or_default();
        if let Err(e) = names::check_label(&name, 63) {
            p.push(format!("Namespace {name:?}: metadata.name: {name:?} {e}"));
            continue;
        }
        if out
            .iter()
            .any(|o| o.metadata.name.as_deref() == Some(&name))
        {
            p.push(format!(
                "Namespace {name:?}: metadata.name: {name:?} is declared twice"
            ));
            continue;
        }
        out.push(ns);
    }
    if !out
        .iter()
        .any(|o| o.metadata.name.as_deref() == Some(DEFAULT_NAMESPACE))
    {
        out.insert(
            0,
            Namespace {
                metadata: ObjectMeta {
                    name: Some(DEFAULT_NAMESPACE.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
    }
    out
}

fn check_pods(
    p: &mut Problems,
    pods: Vec<(usize, Pod)>,
    nodes: &[NodeDef],
    known_ns: &BTreeSet<String>,
) -> Vec<PodDef> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut unscheduled = 0usize;
    for (doc, mut pod) in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        let at = format!("Pod {namespace}/{name} (documents[{doc}])");
        let before = p.0.len();
        if let Err(e) = names::check_subdomain(&name, names::POD_NAME_MAX) {
            p.push(format!("{at}: metadata.name: {name:?} {e}"));
        }
        if !known_ns.contains(&namespace) {
            p.push(format!(
                "{at}: metadata.namespace: {namespace:?} is not declared by any Namespace document"
            ));
        }
        let key = names::pod_key(&namespace, &name);
        if let Some(first) = seen.insert(key.clone(), doc) {
            p.push(format!(
                "{at}: metadata.name: {key:?} is already declared by documents[{first}]"
            ));
        }
        let spec = pod.spec.get_or_insert_with(Default::default);
        let node = match &spec.node_name {
            Some(n) if nodes.iter().any(|x| &x.name == n) => n.clone(),
            Some(n) => {
                p.push(format!(
                    "{at}: spec.nodeName: {n:?} is not a node of this cluster"
                ));
                String::new()
            }
            None if nodes.is_empty() => String::new(),
            None => {
                let n = round_robin(unscheduled, nodes).to_string();
                unscheduled += 1;
                spec.node_name = Some(n.clone());
                n
            }
        };
        let mut tcp = BTreeSet::new();
        let mut udp = BTreeSet::new();
        let mut port_names = BTreeMap::new();
        for (c, container) in spec.containers.iter().enumerate() {
            for (j, port) in container.ports.iter().flatten().enumerate() {
                let path = format!("{at}: spec.containers[{c}].ports[{j}]");
                let num = port.container_port;
                if !(1..=65535).contains(&num) {
                    p.push(format!(
                        "{path}.containerPort: {num} is out of range 1-65535"
                    ));
                    continue;
                }
                let set = match port.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" => &mut tcp,
                    "UDP" => &mut udp,
                    "SCTP" => {
                        p.push(format!(
                            "{path}.protocol: \"SCTP\" is not supported by the lab (TCP or UDP)"
                        ));
                        continue;
                    }
                    other => {
                        p.push(format!(
                            "{path}.protocol: {other:?} is not one of: TCP, UDP, SCTP"
                        ));
                        continue;
                    }
                };
                if !set.insert(num as u16) {
                    p.push(format!(
                        "{path}.containerPort: {num}/{} is declared twice in this pod",
                        port.protocol.as_deref().unwrap_or("TCP")
                    ));
                }
                if let Some(pn) = &port.name {
                    if let Some(prev) = port_names.insert(pn.clone(), num) {
                        p.push(format!(
                            "{path}.name: {pn:?} is already the name of port {prev}"
                        ));
                    }
                }
            }
        }
        if p.0.len() != before {
            continue;
        }
        pod.metadata.namespace = Some(namespace.clone());
        pod.status = None;
        out.push(PodDef {
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            namespace,
            name,
            node,
            tcp_ports: tcp.into_iter().collect(),
            udp_ports: udp.into_iter().collect(),
            manifest: pod,
        });
    }
    out
}

/// The node of the `i`-th pod (in file order) that names no node.
pub fn round_robin(i: usize, nodes: &[NodeDef]) -> &str {
    &nodes[i % nodes.len()].name
}
