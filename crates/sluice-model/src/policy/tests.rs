use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use proptest::prelude::*;

use super::truth::{fixture, identities};
use super::*;
use crate::identity::{
    policy_prefixes, CidrIdentities, IdentityLabels, IDENTITY_HOST, IDENTITY_REMOTE_NODE,
    IDENTITY_WORLD,
};
use crate::manifest::parse_manifests;
use crate::selector::{Operator, Requirement};
use crate::state::ContainerPort;

fn parse(spec: &str) -> Result<PolicyInfo, String> {
    let yaml = format!("metadata: {{name: p, namespace: x}}\nspec: {spec}");
    PolicyInfo::from_policy(&serde_saphyr::from_str::<NetworkPolicy>(&yaml).unwrap())
}

#[test]
fn parses_and_defaults() {
    let p = parse("{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{ipBlock: {cidr: 10.1.2.3/16, except: [10.1.2.0/24]}}, {namespaceSelector: {}}], ports: [{port: 80, endPort: 90}, {protocol: UDP}, {port: dns}, {port: \"53\"}]}]}").unwrap();
    assert_eq!(p.key(), "x/p");
    assert!(p.egress.is_none(), "no egress rules: ingress only");
    let rule = &p.ingress.as_ref().unwrap()[0];
    let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
    assert_eq!(
        rule.peers[0],
        Peer::IpBlock {
            cidr: net("10.1.0.0/16"),
            except: vec![net("10.1.2.0/24")]
        }
    );
    assert_eq!(
        rule.peers[1],
        Peer::Pods {
            namespaces: Some(Default::default()),
            pods: None
        }
    );
    let ports: Vec<&PortSpec> = rule.ports.iter().map(|p| &p.port).collect();
    assert_eq!(
        ports,
        [
            &PortSpec::Range {
                first: 80,
                last: 90
            },
            &PortSpec::Any,
            &PortSpec::Named("dns".into()),
            &PortSpec::Range {
                first: 53,
                last: 53
            }
        ]
    );
    assert_eq!(rule.ports[1].protocol, crate::service::Protocol::Udp);
    assert_eq!(rule.ports[0].protocol, crate::service::Protocol::Tcp);

    let both = parse("{podSelector: {}, egress: [{}]}").unwrap();
    assert!(both.ingress == Some(vec![]) && both.egress.is_some());
    let empty_egress = parse("{podSelector: {}, egress: []}").unwrap();
    assert!(empty_egress.egress.is_none());
    let egress_only = parse("{podSelector: {}, policyTypes: [Egress], ingress: [{}]}").unwrap();
    assert!(egress_only.ingress.is_none() && egress_only.egress == Some(vec![]));
    let v6 = parse("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: \"fd00::/8\", except: [\"fd00::/16\"]}}]}]}").unwrap();
    assert_eq!(v6.ingress.unwrap()[0].peers, vec![Peer::Ipv6Block]);
}

#[test]
fn errors_name_the_field_and_value() {
    let cases = [
        (
            "{policyTypes: [ingress]}",
            "NetworkPolicy x/p: spec.policyTypes[0]: \"ingress\" is not one of Ingress, Egress",
        ),
        (
            "{ingress: [{}, {from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/33}}]}]}",
            "NetworkPolicy x/p: spec.ingress[1].from[1].ipBlock.cidr: \"10.0.0.0/33\" is not an IPv4 CIDR",
        ),
        (
            "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]}]}",
            "NetworkPolicy x/p: spec.ingress[0].from[0].ipBlock.except[0]: \"10.0.0.0/16\" is not strictly inside cidr 10.0.0.0/16",
        ),
        (
            "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]: \"10.1.0.0/24\" is not strictly inside",
        ),
        (
            "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [banana]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]: \"banana\" is not an IPv4 CIDR",
        ),
        (
            "{ingress: [{from: [{ipBlock: {cidr: \"fd00::/200\"}}]}]}",
            "spec.ingress[0].from[0].ipBlock.cidr: \"fd00::/200\" is not an IPv6 CIDR",
        ),
        (
            "{egress: [{to: [{}]}]}",
            "NetworkPolicy x/p: spec.egress[0].to[0]: must set one of podSelector, namespaceSelector, ipBlock",
        ),
        (
            "{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
            "spec.egress[0].to[0]: ipBlock may not be combined",
        ),
        (
            "{egress: [{ports: [{protocol: ICMP}]}]}",
            "spec.egress[0].ports[0].protocol: \"ICMP\" is not one of TCP, UDP, SCTP",
        ),
        (
            "{ingress: [{ports: [{port: 0}]}]}",
            "spec.ingress[0].ports[0].port: 0 is outside 1..=65535",
        ),
        (
            "{ingress: [{ports: [{port: 80}, {port: 70000}]}]}",
            "spec.ingress[0].ports[1].port: 70000 is outside 1..=65535",
        ),
        (
            "{ingress: [{ports: [{port: Http}]}]}",
            "spec.ingress[0].ports[0].port: \"Http\" is neither a port number nor a port name",
        ),
        (
            "{ingress: [{ports: [{port: a--b}]}]}",
            "spec.ingress[0].ports[0].port: \"a--b\"",
        ),
        (
            "{ingress: [{ports: [{port: \"-ab\"}]}]}",
            "spec.ingress[0].ports[0].port: \"-ab\"",
        ),
        (
            "{ingress: [{ports: [{port: \"1234\"}, {port: abcdefghijklmnop}]}]}",
            "spec.ingress[0].ports[1].port: \"abcdefghijklmnop\"",
        ),
        (
            "{ingress: [{ports: [{port: \"123-\"}]}]}",
            "spec.ingress[0].ports[0].port: \"123-\"",
        ),
        (
            "{ingress: [{ports: [{port: http, endPort: 90}]}]}",
            "spec.ingress[0].ports[0].endPort: 90 needs a numeric port, not the name \"http\"",
        ),
        (
            "{ingress: [{ports: [{endPort: 90}]}]}",
            "spec.ingress[0].ports[0].endPort: 90 needs a numeric port",
        ),
        (
            "{ingress: [{ports: [{port: 90, endPort: 80}]}]}",
            "spec.ingress[0].ports[0].endPort: 80 is outside 90..=65535",
        ),
        (
            "{ingress: [{ports: [{port: 90, endPort: 65536}]}]}",
            "spec.ingress[0].ports[0].endPort: 65536 is outside 90..=65535",
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}}",
            "NetworkPolicy x/p: spec.podSelector.matchExpressions[0].operator: \"Equals\"",
        ),
        (
            "{egress: [{to: [{namespaceSelector: {matchLabels: {\"a b\": c}}}]}]}",
            "spec.egress[0].to[0].namespaceSelector.matchLabels: key \"a b\"",
        ),
        (
            "{ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: NotIn, values: []}]}}]}]}",
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].values: operator NotIn needs at least one value",
        ),
    ];
    for (spec, want) in cases {
        let e = parse(spec).unwrap_err();
        assert!(e.contains(want), "{spec}:\n got  {e}\n want {want}");
    }
    // The names and numbers that are fine.
    for port in ["http", "h2c", "a-b-1", "web-80", "abcdefghijklmno"] {
        assert!(
            parse(&format!("{{ingress: [{{ports: [{{port: {port}}}]}}]}}")).is_ok(),
            "{port}"
        );
    }
    // Rules of a direction not in policyTypes are ignored, not validated.
    assert!(parse("{policyTypes: [Egress], ingress: [{ports: [{port: 0}]}]}").is_ok());
    // Without a name there is no key to report.
    let e = PolicyInfo::from_policy(&NetworkPolicy::default()).unwrap_err();
    assert_eq!(e, "NetworkPolicy: metadata.name is missing");
}

const GOOD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}\n";
const BAD_P: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q, namespace: x}\nspec: {podSelector: {matchLabels: {a: b}}, policyTypes: [Egress]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: new}\nspec: {policyTypes: [Sideways]}\n";

#[test]
fn an_invalid_policy_keeps_its_previous_version() {
    let (first, problems) = DesiredState::build(&parse_manifests("t", GOOD).unwrap());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(first.policies.len(), 2);
    let objects = parse_manifests("t", BAD_P).unwrap();
    let (second, problems) = DesiredState::build_with_previous(&objects, &first);
    // Problems come in the order of the objects' keys.
    assert_eq!(
        problems,
        vec![
            "NetworkPolicy default/new: spec.policyTypes[0]: \"Sideways\" is not one of Ingress, Egress".to_string(),
            "NetworkPolicy x/p: spec.ingress[0].ports[0].port: 0 is outside 1..=65535; keeping the previous version".to_string(),
        ]
    );
    // p stays as it was; q (valid) is updated; the new invalid one is left out.
    assert_eq!(second.policies["x/p"], first.policies["x/p"]);
    assert_ne!(second.policies["x/q"], first.policies["x/q"]);
    assert_eq!(second.policies.len(), 2);
    // Without a previous version the invalid policy is simply absent.
    let (alone, problems) = DesiredState::build(&objects);
    assert_eq!(alone.policies.keys().collect::<Vec<_>>(), vec!["x/q"]);
    assert!(
        problems.iter().all(|p| !p.contains("keeping")),
        "{problems:?}"
    );
    // A policy deleted from the input is not resurrected by the previous state.
    let (gone, _) = DesiredState::build_with_previous::<crate::Object>(&[], &first);
    assert!(gone.policies.is_empty());
}

#[test]
fn queries_for_the_cli() {
    let state = fixture(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ab, namespace: x}\nspec: {podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: all, namespace: x}\nspec: {podSelector: {}}\n",
    );
    let ab = &state.policies["x/ab"];
    let names: Vec<String> = ab
        .selected_pods(&state)
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    assert_eq!(names, ["x/a", "x/b"]);
    let keys = |pod: &str| -> Vec<String> {
        state
            .policies_selecting(&state.pods[pod])
            .iter()
            .map(|p| p.key())
            .collect()
    };
    assert_eq!(keys("x/a"), ["x/ab", "x/all"]);
    assert_eq!(keys("x/c"), ["x/all"]);
    assert!(keys("y/a").is_empty());
}

#[test]
fn addresses_hosts_and_the_explanation() {
    let p = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: 'y'}\nspec: {podSelector: {}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: 'y'}\nspec: {podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}], ports: [{port: 80}]}, {from: [{ipBlock: {cidr: 192.0.2.0/24}}]}]}\n";
    let state = fixture(p);
    let pod = |k: &str| FlowPeer::Pod(&state.pods[k]);
    let t = trace(&state, pod("x/a"), pod("y/b"), 6, 80);
    assert!(t.allowed);
    assert_eq!(
        t.to_string(),
        "egress from x/a: not isolated\ningress to y/b: ALLOWED by NetworkPolicy y/web rule ingress[0]\nverdict: ALLOWED"
    );
    let t = trace(&state, pod("z/a"), pod("y/b"), 6, 81);
    assert!(!t.allowed);
    assert_eq!(
        t.to_string(),
        "egress from z/a: not isolated\n\
         ingress to y/b: DENIED: isolated by NetworkPolicy y/deny, NetworkPolicy y/web and none of their rules match\n\
         \x20 NetworkPolicy y/deny: has no ingress rules\n\
         \x20 NetworkPolicy y/web: ingress[0]: peer not selected; ingress[1]: peer not selected\n\
         verdict: DENIED"
    );
    let t = trace(&state, pod("x/a"), pod("y/b"), 6, 81);
    assert!(
        t.to_string().contains("ingress[0]: port not allowed"),
        "{t}"
    );

    let world = |ip: [u8; 4]| FlowPeer::Address {
        ip: Ipv4Addr::from(ip),
        kind: AddressKind::World,
    };
    let host = FlowPeer::Address {
        ip: Ipv4Addr::new(192, 168, 0, 1),
        kind: AddressKind::Host,
    };
    let remote = FlowPeer::Address {
        ip: Ipv4Addr::new(192, 168, 0, 2),
        kind: AddressKind::RemoteNode,
    };
    let t = trace(&state, world([192, 0, 2, 9]), pod("y/b"), 17, 53);
    assert_eq!(t.egress, DirectionVerdict::NotApplicable);
    assert!(t.allowed, "{t}");
    assert!(
        t.to_string()
            .starts_with("ingress to y/b: ALLOWED by NetworkPolicy y/web rule ingress[1]"),
        "{t}"
    );
    assert!(!trace(&state, world([198, 51, 100, 1]), pod("y/b"), 6, 80).allowed);
    // The pod's own node always gets in (kubelet probes); other nodes do not.
    let t = trace(&state, host, pod("y/a"), 6, 8080);
    assert_eq!(
        t.ingress,
        DirectionVerdict::Allowed(vec![RuleRef::Reserved("host")])
    );
    assert!(!trace(&state, remote, pod("y/a"), 6, 8080).allowed);
    // A pod may always talk to itself.
    assert!(trace(&state, pod("y/a"), pod("y/a"), 6, 1).allowed);

    // The entries say the same for the address peers.
    let ids = identities(&state);
    let mut cidrs = CidrIdentities::default();
    cidrs.update(&policy_prefixes(&state));
    let yb = endpoint_policy(&state, &ids, &cidrs, &state.pods["y/b"]);
    let ya = endpoint_policy(&state, &ids, &cidrs, &state.pods["y/a"]);
    let cidr = |ip: [u8; 4]| cidrs.lookup(Ipv4Addr::from(ip)).map(|(_, id)| id);
    assert!(simulate(
        &yb,
        Direction::Ingress,
        IDENTITY_WORLD,
        cidr([192, 0, 2, 9]),
        17,
        53
    )
    .is_some());
    assert!(simulate(
        &yb,
        Direction::Ingress,
        IDENTITY_WORLD,
        cidr([198, 51, 100, 1]),
        6,
        80
    )
    .is_none());
    assert_eq!(
        simulate(&ya, Direction::Ingress, IDENTITY_HOST, None, 6, 8080),
        Some(RuleRef::Reserved("host"))
    );
    assert!(simulate(&ya, Direction::Ingress, IDENTITY_REMOTE_NODE, None, 6, 8080).is_none());
    assert_eq!(
        simulate(&ya, Direction::Egress, IDENTITY_WORLD, None, 6, 8080),
        Some(RuleRef::Reserved("not-isolated"))
    );
}

#[test]
fn entries_are_minimal_and_deterministic() {
    let p = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80, endPort: 83}]}]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: serve-80-tcp}]}]}\n";
    let state = fixture(p);
    let ids = identities(&state);
    let e = endpoint_policy(&state, &ids, &CidrIdentities::default(), &state.pods["x/a"]);
    assert!(e.ingress_isolated && !e.egress_isolated);
    let got: Vec<(u32, u8, u16, u8, String)> = e
        .entries
        .iter()
        .map(|(k, r)| {
            (
                k.identity,
                k.protocol,
                k.port,
                k.port_prefix_len,
                r.to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 6, 80, 14, "NetworkPolicy x/b rule ingress[0]".into()),
            (0, 6, 80, 16, "NetworkPolicy x/a rule ingress[0]".into()),
            (1, 0, 0, 0, "reserved rule \"host\"".into()),
        ]
    );
    // The longest prefix decides which rule is reported.
    assert_eq!(
        simulate(&e, Direction::Ingress, 300, None, 6, 80)
            .unwrap()
            .to_string(),
        "NetworkPolicy x/a rule ingress[0]"
    );
    assert_eq!(
        simulate(&e, Direction::Ingress, 300, None, 6, 83)
            .unwrap()
            .to_string(),
        "NetworkPolicy x/b rule ingress[0]"
    );
    assert!(simulate(&e, Direction::Ingress, 300, None, 6, 84).is_none());
    assert!(simulate(&e, Direction::Ingress, 300, None, 17, 80).is_none());
}

// ---- The flattened entries agree with the reference evaluator on random states. ----

const KEYS: [&str; 2] = ["k1", "k2"];
const VALUES: [&str; 2] = ["v1", "v2"];
const NAMES: [&str; 3] = ["web", "dns", "nope"];

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        prop::sample::select(KEYS.to_vec()).prop_map(String::from),
        prop::sample::select(VALUES.to_vec()).prop_map(String::from),
        0..3,
    )
}

fn selector() -> impl Strategy<Value = crate::selector::LabelSelector> {
    let requirement = (
        prop::sample::select(KEYS.to_vec()),
        0..4usize,
        proptest::collection::btree_set(
            prop::sample::select(VALUES.to_vec()).prop_map(String::from),
            1..3,
        ),
    )
        .prop_map(|(key, op, values)| {
            let operator = [
                Operator::In,
                Operator::NotIn,
                Operator::Exists,
                Operator::DoesNotExist,
            ][op];
            let values = if op < 2 { values } else { BTreeSet::new() };
            Requirement {
                key: key.into(),
                operator,
                values,
            }
        });
    (labels(), proptest::collection::vec(requirement, 0..2)).prop_map(
        |(match_labels, match_expressions)| crate::selector::LabelSelector {
            match_labels,
            match_expressions,
        },
    )
}

/// Blocks inside 10.0.0.0/24 (where the pods live) and beyond it.
fn block() -> impl Strategy<Value = Peer> {
    (
        any::<u8>(),
        22u8..=32,
        proptest::collection::vec((any::<u8>(), 25u8..=32), 0..3),
    )
        .prop_map(|(base, len, excepts)| {
            let cidr = Ipv4Net::new(Ipv4Addr::new(10, 0, 0, base), len)
                .unwrap()
                .trunc();
            let except = excepts
                .into_iter()
                .map(|(b, l)| Ipv4Net::new(Ipv4Addr::new(10, 0, 0, b), l).unwrap().trunc())
                .filter(|e| cidr.contains(e) && e.prefix_len() > cidr.prefix_len())
                .collect();
            Peer::IpBlock { cidr, except }
        })
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        4 => (proptest::option::of(selector()), proptest::option::of(selector()))
            .prop_map(|(namespaces, pods)| Peer::Pods { namespaces, pods }),
        3 => block(),
        1 => Just(Peer::Ipv6Block),
    ]
}

fn port_rule() -> impl Strategy<Value = PortRule> {
    let spec = prop_oneof![
        1 => Just(PortSpec::Any),
        2 => (79u16..=83, 0u16..3).prop_map(|(first, extra)| PortSpec::Range {
            first,
            last: first + extra
        }),
        2 => prop::sample::select(NAMES.to_vec()).prop_map(|n| PortSpec::Named(n.into())),
    ];
    (any::<bool>(), spec).prop_map(|(udp, port)| PortRule {
        protocol: if udp {
            crate::service::Protocol::Udp
        } else {
            crate::service::Protocol::Tcp
        },
        port,
    })
}

fn rules() -> impl Strategy<Value = Option<Vec<PolicyRule>>> {
    let rule = (
        proptest::collection::vec(peer(), 0..3),
        proptest::collection::vec(port_rule(), 0..3),
    )
        .prop_map(|(peers, ports)| PolicyRule { peers, ports });
    proptest::option::of(proptest::collection::vec(rule, 0..3))
}

const NS: [&str; 3] = ["x", "y", "z"];

fn policy() -> impl Strategy<Value = PolicyInfo> {
    (0..3usize, selector(), rules(), rules()).prop_map(|(ns, pod_selector, ingress, egress)| {
        PolicyInfo {
            namespace: NS[ns].into(),
            name: String::new(),
            pod_selector,
            ingress,
            egress,
        }
    })
}

/// Container ports follow from the identity, so every pod of one identity declares the same.
fn ports_of(namespace: &str, labels: &BTreeMap<String, String>) -> Vec<ContainerPort> {
    let h = namespace.len()
        + labels
            .iter()
            .map(|(k, v)| k.len() * 3 + v.as_bytes()[1] as usize)
            .sum::<usize>();
    let mut ports = vec![ContainerPort {
        name: Some("web".into()),
        port: 80 + (h % 3) as u16,
        protocol: crate::service::Protocol::Tcp,
    }];
    if labels.contains_key("k1") {
        ports.push(ContainerPort {
            name: Some("dns".into()),
            port: 81,
            protocol: crate::service::Protocol::Udp,
        });
    }
    ports
}

fn random_state() -> impl Strategy<Value = DesiredState> {
    (
        proptest::collection::vec(labels(), 3),
        proptest::collection::vec((0..3usize, labels(), any::<bool>()), 1..7),
        proptest::collection::vec(policy(), 1..5),
    )
        .prop_map(|(ns_labels, pods, policies)| {
            let mut state = DesiredState::default();
            for (ns, l) in NS.iter().zip(ns_labels).take(2) {
                // z has no Namespace object: no labels.
                state.namespaces.insert(ns.to_string(), l);
            }
            for (i, (ns, labels, has_ip)) in pods.into_iter().enumerate() {
                let pod = PodInfo {
                    namespace: NS[ns].into(),
                    name: format!("p{i}"),
                    node_name: None,
                    ports: ports_of(NS[ns], &labels),
                    labels,
                    ip: (has_ip || i == 0).then(|| Ipv4Addr::new(10, 0, 0, 1 + i as u8)),
                    ready: true,
                    terminating: false,
                };
                state
                    .pods
                    .insert(format!("{}/{}", pod.namespace, pod.name), pod);
            }
            for (i, mut p) in policies.into_iter().enumerate() {
                p.name = format!("p{i}");
                state.policies.insert(p.key(), p);
            }
            state
        })
}

fn allowed(r: &Option<RuleRef>) -> bool {
    r.is_some()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn entries_agree_with_the_reference(state in random_state()) {
        let ids = identities(&state);
        let mut cidrs = CidrIdentities::default();
        cidrs.update(&policy_prefixes(&state));
        let pods: Vec<&PodInfo> = state.pods.values().collect();
        let flat: Vec<EndpointPolicy> = pods.iter().map(|p| endpoint_policy(&state, &ids, &cidrs, p)).collect();
        let id = |p: &PodInfo| ids[&IdentityLabels::of(p)];
        let cidr_of = |ip: Option<Ipv4Addr>| ip.and_then(|ip| cidrs.lookup(ip)).map(|(_, id)| id);
        let addresses = [
            (Ipv4Addr::new(10, 0, 0, 100), AddressKind::World, IDENTITY_WORLD),
            (Ipv4Addr::new(10, 0, 0, 3), AddressKind::World, IDENTITY_WORLD),
            (Ipv4Addr::new(10, 0, 1, 1), AddressKind::World, IDENTITY_WORLD),
            (Ipv4Addr::new(10, 0, 0, 200), AddressKind::RemoteNode, IDENTITY_REMOTE_NODE),
            (Ipv4Addr::new(10, 0, 0, 254), AddressKind::Host, IDENTITY_HOST),
        ];
        for protocol in [6u8, 17] {
            for port in 79u16..=84 {
                for (i, from) in pods.iter().enumerate() {
                    for (j, to) in pods.iter().enumerate() {
                        if i == j {
                            continue;
                        }
                        let t = trace(&state, FlowPeer::Pod(from), FlowPeer::Pod(to), protocol, port);
                        let egress = simulate(&flat[i], Direction::Egress, id(to), cidr_of(to.ip), protocol, port);
                        let ingress = simulate(&flat[j], Direction::Ingress, id(from), cidr_of(from.ip), protocol, port);
                        prop_assert_eq!(allowed(&egress), t.egress.allows(), "egress {}/{}: {:?}\n{}", protocol, port, egress, t);
                        prop_assert_eq!(allowed(&ingress), t.ingress.allows(), "ingress {}/{}: {:?}\n{}", protocol, port, ingress, t);
                    }
                    for (ip, kind, identity) in addresses {
                        let other = FlowPeer::Address { ip, kind };
                        let t = trace(&state, FlowPeer::Pod(from), other, protocol, port);
                        let egress = simulate(&flat[i], Direction::Egress, identity, cidr_of(Some(ip)), protocol, port);
                        prop_assert_eq!(allowed(&egress), t.egress.allows(), "egress to {}: {:?}\n{}", ip, egress, t);
                        let t = trace(&state, other, FlowPeer::Pod(from), protocol, port);
                        let ingress = simulate(&flat[i], Direction::Ingress, identity, cidr_of(Some(ip)), protocol, port);
                        prop_assert_eq!(allowed(&ingress), t.ingress.allows(), "ingress from {}: {:?}\n{}", ip, ingress, t);
                    }
                }
            }
        }
    }
}
