use super::*;

const NATIVE: &str = include_str!("../../../../examples/two-node-native.yaml");
const VXLAN: &str = include_str!("../../../../examples/two-node-vxlan.yaml");

const HEAD: &str = "apiVersion: sluice.dev/v1alpha1
kind: Cluster
metadata: { name: demo }
spec:
  routing: native
  nodes:
    - { name: node-a, podCIDR: 10.10.0.0/24 }
    - { name: node-b, podCIDR: 10.10.1.0/24 }
";

fn problems(text: &str) -> Vec<String> {
    match Cluster::parse(text) {
        Ok(c) => panic!("expected an error, parsed {c:?}"),
        Err(e) => e.problems(),
    }
}

/// Asserts that exactly one problem was found and that it contains every `needle`.
fn assert_problem(text: &str, needles: &[&str]) {
    let p = problems(text);
    assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
    for n in needles {
        assert!(
            p[0].contains(n),
            "problem {:?} does not mention {n:?}",
            p[0]
        );
    }
}

fn pod(ns: &str, name: &str, extra_spec: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: {ns} }}\nspec:\n  containers:\n    - name: c\n{extra_spec}"
    )
}

#[test]
fn examples_parse() {
    for (text, routing) in [(NATIVE, RoutingMode::Native), (VXLAN, RoutingMode::Vxlan)] {
        let c = Cluster::parse(text).unwrap();
        assert_eq!(c.routing, routing);
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.pods.len(), 4);
        for p in &c.pods {
            assert_eq!(p.tcp_ports, vec![80, 81]);
            assert_eq!(p.udp_ports, vec![80, 81]);
            assert!(!p.labels.is_empty());
        }
        let per_node = |n: &str| c.pods.iter().filter(|p| p.node == n).count();
        assert_eq!((per_node("node-a"), per_node("node-b")), (2, 2));
        let names: Vec<_> = c
            .namespaces
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        assert_eq!(names, ["default", "x", "y"]);
    }
}

#[test]
fn defaults_and_node_addresses() {
    let c = Cluster::parse(HEAD).unwrap();
    assert_eq!(c.name, "demo");
    assert_eq!(c.underlay.to_string(), DEFAULT_UNDERLAY);
    assert_eq!(c.nodes[0].ip.to_string(), "192.168.50.1");
    assert_eq!(c.nodes[1].ip.to_string(), "192.168.50.2");
    let c =
        Cluster::parse(&HEAD.replace("routing: native\n", "underlay: 172.31.7.0/29\n")).unwrap();
    assert_eq!(c.routing, RoutingMode::Native);
    assert_eq!(c.nodes[1].ip.to_string(), "172.31.7.2");
}

#[test]
fn round_robin_scheduling_is_deterministic() {
    let mut text = HEAD.to_string();
    for name in ["p0", "p1", "p2"] {
        text += &pod("default", name, "");
    }
    text += &pod("default", "pinned", "  nodeName: node-b\n");
    text += &pod("default", "p3", "");
    for _ in 0..3 {
        let c = Cluster::parse(&text).unwrap();
        let got: Vec<_> = c
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p.node.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("p0", "node-a"),
                ("p1", "node-b"),
                ("p2", "node-a"),
                ("pinned", "node-b"),
                ("p3", "node-b")
            ]
        );
        let m = &c.pod("default/p1").unwrap().manifest;
        assert_eq!(
            m.spec.as_ref().unwrap().node_name.as_deref(),
            Some("node-b")
        );
    }
}

#[test]
fn invalid_cidrs_name_field_and_value() {
    assert_problem(
        &HEAD.replace("10.10.1.0/24", "10.0.0.0/33"),
        &[r#"spec.nodes[1].podCIDR: "10.0.0.0/33" is not a valid IPv4 CIDR"#],
    );
    assert_problem(
        &HEAD.replace("10.10.1.0/24", "banana"),
        &["spec.nodes[1].podCIDR", "\"banana\""],
    );
    assert_problem(
        &HEAD.replace("10.10.1.0/24", "10.10.1.7/24"),
        &["spec.nodes[1].podCIDR", "host bits", "10.10.1.0/24"],
    );
    assert_problem(
        &HEAD.replace("routing: native", "underlay: 300.1.0.0/24"),
        &["spec.underlay", "\"300.1.0.0/24\"", "not a valid IPv4 CIDR"],
    );
}

#[test]
fn overlapping_pod_cidrs_name_both_nodes() {
    assert_problem(
        &HEAD.replace("10.10.1.0/24", "10.10.0.0/16"),
        &[
            "spec.nodes[1].podCIDR",
            "10.10.0.0/16",
            "node-b",
            "spec.nodes[0].podCIDR",
            "10.10.0.0/24",
            "node-a",
        ],
    );
}

#[test]
fn pod_cidr_overlapping_the_underlay() {
    assert_problem(
        &HEAD.replace("routing: native", "underlay: 10.10.1.0/25"),
        &[
            "spec.nodes[1].podCIDR",
            "10.10.1.0/24",
            "node-b",
            "spec.underlay",
            "10.10.1.0/25",
        ],
    );
}

#[test]
fn underlay_too_small() {
    assert_problem(
        &HEAD.replace("routing: native", "underlay: 172.16.0.0/31"),
        &["spec.underlay", "172.16.0.0/31"],
    );
    let three = HEAD.to_string() + "    - { name: node-c, podCIDR: 10.10.2.0/24 }\n";
    assert_problem(
        &three.replace("routing: native", "underlay: 172.16.0.0/30"),
        &["spec.underlay", "room for 1", "3"],
    );
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    assert_problem(
        &HEAD.replace("podCIDR: 10.10.1.0/24", "podCIDR: 10.10.1.0/24, color: red"),
        &["spec.nodes[1]", "color"],
    );
    assert_problem(
        &HEAD.replace("routing: native", "routin: native"),
        &["spec", "routin"],
    );
    assert_problem(&format!("{HEAD}  extra: 1\n"), &["spec", "extra"]);
}

#[test]
fn routing_must_be_native_or_vxlan() {
    assert_problem(
        &HEAD.replace("routing: native", "routing: geneve"),
        &[r#"spec.routing: "geneve""#, "native, vxlan"],
    );
}

#[test]
fn duplicate_names() {
    assert_problem(
        &HEAD.replace("name: node-b", "name: node-a"),
        &["spec.nodes[1].name", "\"node-a\"", "spec.nodes[0]"],
    );
    let text = HEAD.to_string() + &pod("default", "a", "") + &pod("default", "a", "");
    assert_problem(&text, &["default/a", "metadata.name", "already declared"]);
    let ns = "---\napiVersion: v1\nkind: Namespace\nmetadata: { name: x }\n";
    assert_problem(
        &format!("{HEAD}{ns}{ns}"),
        &["Namespace \"x\"", "declared twice"],
    );
}

#[test]
fn pod_on_unknown_node() {
    let text = HEAD.to_string() + &pod("default", "a", "  nodeName: node-z\n");
    assert_problem(
        &text,
        &["Pod default/a", r#"spec.nodeName: "node-z" is not a node"#],
    );
}

#[test]
fn pod_in_undeclared_namespace() {
    let text = HEAD.to_string() + &pod("nope", "a", "");
    assert_problem(&text, &["Pod nope/a", r#"metadata.namespace: "nope""#]);
}

#[test]
fn bad_ports_and_protocols() {
    let ports = |p: &str| {
        HEAD.to_string() + &pod("default", "a", &format!("      ports:\n        - {p}\n"))
    };
    assert_problem(
        &ports("{ containerPort: 70000 }"),
        &[
            "Pod default/a",
            "spec.containers[0].ports[0].containerPort: 70000 is out of range 1-65535",
        ],
    );
    assert_problem(&ports("{ containerPort: 0 }"), &["containerPort: 0"]);
    assert_problem(
        &ports("{ containerPort: 80, protocol: ICMP }"),
        &[r#"spec.containers[0].ports[0].protocol: "ICMP""#],
    );
    assert_problem(
        &ports("{ containerPort: 80, protocol: SCTP }"),
        &["protocol: \"SCTP\"", "not supported"],
    );
    assert_problem(
        &ports("{ containerPort: \"eighty\" }"),
        &["spec.containers[0].ports[0].containerPort", "eighty"],
    );
    let twice = HEAD.to_string()
        + &pod("default", "a", "      ports:\n        - { containerPort: 80 }\n        - { containerPort: 80, protocol: TCP }\n");
    assert_problem(
        &twice,
        &["ports[1].containerPort: 80/TCP is declared twice"],
    );
}

#[test]
fn udp_and_default_protocol() {
    let text = HEAD.to_string()
        + &pod("default", "a", "      ports:\n        - { containerPort: 53, protocol: UDP }\n        - { containerPort: 8080 }\n");
    let c = Cluster::parse(&text).unwrap();
    assert_eq!(c.pods[0].udp_ports, [53]);
    assert_eq!(c.pods[0].tcp_ports, [8080]);
}

#[test]
fn first_document_must_be_the_cluster() {
    assert_problem(
        &pod("default", "a", "").replacen("---\n", "", 1),
        &["documents[0].kind", "\"Pod\""],
    );
    assert!(matches!(Cluster::parse(""), Err(ClusterError::Invalid(_))));
    assert_problem(
        &HEAD.replace("sluice.dev/v1alpha1", "sluice.dev/v9"),
        &["apiVersion", "sluice.dev/v9"],
    );
    assert_problem(
        &format!("{HEAD}---\n{HEAD}"),
        &["documents[1].kind", "only the first"],
    );
}

#[test]
fn unsupported_kinds_and_bad_names() {
    let deploy = "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: { name: d }\n";
    assert_problem(
        &format!("{HEAD}{deploy}"),
        &["documents[1].kind", "\"Deployment\""],
    );
    assert_problem(
        &HEAD.replace("name: demo", "name: Demo_1"),
        &["metadata.name", "\"Demo_1\""],
    );
    assert_problem(
        &HEAD.replace("name: node-b", "name: Node/B"),
        &["spec.nodes[1].name", "\"Node/B\""],
    );
    let text = HEAD.to_string() + &pod("default", "Bad_Name", "");
    assert_problem(&text, &["metadata.name", "\"Bad_Name\""]);
}

#[test]
fn cni_plugins_need_a_type() {
    let ok = format!("{HEAD}  cni:\n    plugins:\n      - {{ type: tuning, sysctl: {{ net.core.somaxconn: \"512\" }} }}\n");
    let c = Cluster::parse(&ok).unwrap();
    assert_eq!(c.cni_plugins[0]["type"], "tuning");
    let bad = format!("{HEAD}  cni:\n    plugins:\n      - {{ sysctl: {{}} }}\n");
    assert_problem(&bad, &["spec.cni.plugins[0].type", "missing"]);
}

#[test]
fn monitor_aggregation_is_medium_unless_set_to_none() {
    use sluice_api::config::MonitorAggregation;
    assert_eq!(
        Cluster::parse(HEAD).unwrap().monitor_aggregation,
        MonitorAggregation::Medium
    );
    let none = format!("{HEAD}  monitorAggregation: none\n");
    assert_eq!(
        Cluster::parse(&none).unwrap().monitor_aggregation,
        MonitorAggregation::None
    );
    let bad = format!("{HEAD}  monitorAggregation: maximum\n");
    assert_problem(&bad, &["spec.monitorAggregation", "\"maximum\""]);
}

#[test]
fn control_plane_and_map_switches_are_checked() {
    use sluice_api::config::{KvstoreKind, SourceKind};
    let c = Cluster::parse(HEAD).unwrap();
    assert_eq!(
        (c.kvstore, c.source, c.maps),
        (KvstoreKind::None, SourceKind::Files, None)
    );
    let on =
        format!("{HEAD}  kvstore: etcd\n  source: kubernetes\n  maps: {{ lbSlots: 262144 }}\n");
    let c = Cluster::parse(&on).unwrap();
    assert_eq!(
        (c.kvstore, c.source),
        (KvstoreKind::Etcd, SourceKind::Kubernetes)
    );
    let maps = c.maps.unwrap();
    assert_eq!(maps.lb_slots, 262_144);
    assert_eq!(
        maps.backends,
        sluice_api::config::MapSizes::default().backends
    );
    assert_problem(
        &format!("{HEAD}  kvstore: consul\n"),
        &["spec.kvstore", "\"consul\""],
    );
    assert_problem(
        &format!("{HEAD}  source: api\n"),
        &["spec.source", "\"api\""],
    );
    assert_problem(
        &format!("{HEAD}  maps: {{ lbSlots: 8 }}\n"),
        &["spec.maps.lbSlots", "8"],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = HEAD
        .replace("10.10.1.0/24", "10.0.0.0/33")
        .replace("routing: native", "routing: bgp")
        + &pod("default", "a", "  nodeName: node-z\n");
    assert_eq!(problems(&text).len(), 3, "{:#?}", problems(&text));
}

#[test]
fn yaml_syntax_errors() {
    assert!(matches!(
        Cluster::parse("a: [b\n"),
        Err(ClusterError::Yaml(_))
    ));
}
