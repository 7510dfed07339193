//! Truth tables in the style of the upstream reachability tests: namespaces x, y, z with pods
//! a, b, c each; per scenario the full 9×9 matrix for TCP/UDP × ports 80/81, from the reference
//! evaluator and (for the same cells) from the flattened entries.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::*;
use crate::identity::{policy_prefixes, CidrIdentities, IdentityLabels};
use crate::manifest::parse_manifests;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const COMBOS: [(&str, u8, u16); 4] = [
    ("TCP/80", 6, 80),
    ("TCP/81", 6, 81),
    ("UDP/80", 17, 80),
    ("UDP/81", 17, 81),
];

pub(super) fn fixture(policies: &str) -> DesiredState {
    let mut text = String::new();
    for (n, ns) in NAMESPACES.iter().enumerate() {
        writeln!(text, "apiVersion: v1\nkind: Namespace\nmetadata: {{name: '{ns}', labels: {{ns: '{ns}'}}}}\n---").unwrap();
        for (p, pod) in PODS.iter().enumerate() {
            writeln!(
                text,
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: '{ns}', labels: {{pod: {pod}}}}}\n\
                 spec:\n  nodeName: n1\n  containers:\n  - name: c\n    ports:\n\
                 \x20   - {{name: serve-80-tcp, containerPort: 80}}\n\
                 \x20   - {{name: serve-81-tcp, containerPort: 81}}\n\
                 \x20   - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}\n\
                 \x20   - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}\n\
                 status: {{phase: Running, podIP: 10.0.{}.{}}}\n---",
                n + 1,
                p + 1
            )
            .unwrap();
        }
    }
    text.push_str(policies);
    let objects = parse_manifests("fixture", &text).unwrap();
    let (state, problems) = DesiredState::build(&objects);
    assert!(problems.is_empty(), "{problems:?}");
    state
}

/// Pod identities numbered in label order, as any allocator's result would do.
pub(super) fn identities(state: &DesiredState) -> BTreeMap<IdentityLabels, u32> {
    let mut labels: Vec<IdentityLabels> = state.pods.values().map(IdentityLabels::of).collect();
    labels.sort();
    labels.dedup();
    labels.into_iter().zip(256..).collect()
}

fn pod_order(state: &DesiredState) -> Vec<&PodInfo> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| &state.pods[&format!("{ns}/{p}")]))
        .collect()
}

/// A grid is 9 rows (from xa..zc) of 9 cells (to xa..zc); '1' allowed, '.' denied; spaces
/// are for reading only.
fn normalise(grid: &str) -> Vec<String> {
    grid.lines()
        .map(|l| l.chars().filter(|c| !c.is_whitespace()).collect::<String>())
        .filter(|l| !l.is_empty())
        .collect()
}

fn check(name: &str, policies: &str, expected: &[(&str, &str)]) {
    let state = fixture(policies);
    let ids = identities(&state);
    let mut cidrs = CidrIdentities::default();
    cidrs.update(&policy_prefixes(&state));
    let pods = pod_order(&state);
    let flat: Vec<EndpointPolicy> = pods
        .iter()
        .map(|p| endpoint_policy(&state, &ids, &cidrs, p))
        .collect();
    let mut report = String::new();
    for (combo, protocol, port) in COMBOS {
        let grid = expected
            .iter()
            .find(|(c, _)| *c == combo || *c == "*")
            .unwrap_or_else(|| panic!("{name}: no grid for {combo}"))
            .1;
        let want = normalise(grid);
        assert_eq!(want.len(), 9, "{name} {combo}: grid needs 9 rows");
        let mut got = Vec::new();
        let mut flat_disagrees = Vec::new();
        for (i, from) in pods.iter().enumerate() {
            let mut row = String::new();
            for (j, to) in pods.iter().enumerate() {
                let t = trace(
                    &state,
                    FlowPeer::Pod(from),
                    FlowPeer::Pod(to),
                    protocol,
                    port,
                );
                row.push(if t.allowed { '1' } else { '.' });
                if i == j {
                    continue;
                }
                let cidr = |p: &PodInfo| cidrs.lookup(p.ip.unwrap()).map(|(_, id)| id);
                let id = |p: &PodInfo| ids[&IdentityLabels::of(p)];
                let egress = simulate(
                    &flat[i],
                    Direction::Egress,
                    id(to),
                    cidr(to),
                    protocol,
                    port,
                );
                let ingress = simulate(
                    &flat[j],
                    Direction::Ingress,
                    id(from),
                    cidr(from),
                    protocol,
                    port,
                );
                if (egress.is_some() && ingress.is_some()) != t.allowed {
                    flat_disagrees.push(format!(
                        "{}/{} -> {}/{}: entries give egress {egress:?} ingress {ingress:?}; trace:\n{t}",
                        from.namespace, from.name, to.namespace, to.name
                    ));
                }
            }
            got.push(row);
        }
        if got != want || !flat_disagrees.is_empty() {
            writeln!(report, "{name} {combo}: expected | observed").unwrap();
            for (w, g) in want.iter().zip(&got) {
                let mark = if w == g { "" } else { "   <-" };
                writeln!(report, "  {w} | {g}{mark}").unwrap();
            }
            for d in flat_disagrees {
                writeln!(report, "  {d}").unwrap();
            }
        }
    }
    assert!(report.is_empty(), "\n{report}");
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: '{ns}'}}\nspec:\n{spec}\n---\n"
    )
}

const DENY_X_INGRESS: &str = "
1.. 111 111
.1. 111 111
..1 111 111
... 111 111
... 111 111
... 111 111
... 111 111
... 111 111
... 111 111";

const ALL: &str = "
111 111 111
111 111 111
111 111 111
111 111 111
111 111 111
111 111 111
111 111 111
111 111 111
111 111 111";

#[test]
fn no_policies_allow_everything() {
    check("none", "", &[("*", ALL)]);
}

#[test]
fn default_deny_ingress() {
    let p = policy("x", "deny", "  podSelector: {}\n  policyTypes: [Ingress]");
    check("default-deny-ingress", &p, &[("*", DENY_X_INGRESS)]);
}

#[test]
fn default_deny_egress() {
    let p = policy("x", "deny", "  podSelector: {}\n  policyTypes: [Egress]");
    let grid = "
1.. ... ...
.1. ... ...
..1 ... ...
111 111 111
111 111 111
111 111 111
111 111 111
111 111 111
111 111 111";
    check("default-deny-egress", &p, &[("*", grid)]);
}

#[test]
fn allow_same_namespace() {
    let p = policy("x", "deny", "  podSelector: {}\n  policyTypes: [Ingress]")
        + &policy(
            "x",
            "same",
            "  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]",
        );
    let grid = "
111 111 111
111 111 111
111 111 111
... 111 111
... 111 111
... 111 111
... 111 111
... 111 111
... 111 111";
    check("allow-same-namespace", &p, &[("*", grid)]);
}

#[test]
fn namespace_selector() {
    let p = policy(
        "x",
        "from-y",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]",
    );
    let grid = "
111 111 111
.11 111 111
.11 111 111
111 111 111
111 111 111
111 111 111
.11 111 111
.11 111 111
.11 111 111";
    check("namespace-selector", &p, &[("*", grid)]);
}

#[test]
fn pod_and_namespace_selector_in_one_peer() {
    let p = policy(
        "x",
        "and",
        "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}, podSelector: {matchLabels: {pod: b}}}]}]",
    );
    let grid = "
1.. 111 111
.1. 111 111
..1 111 111
... 111 111
111 111 111
... 111 111
... 111 111
... 111 111
... 111 111";
    check("and", &p, &[("*", grid)]);
}

#[test]
fn pod_and_namespace_selector_in_two_peers() {
    let p = policy(
        "x",
        "or",
        "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}, {podSelector: {matchLabels: {pod: b}}}]}]",
    );
    let grid = "
1.. 111 111
111 111 111
..1 111 111
111 111 111
111 111 111
111 111 111
... 111 111
... 111 111
... 111 111";
    check("or", &p, &[("*", grid)]);
}

#[test]
fn ip_block_with_except_ingress() {
    let p = policy(
        "x",
        "ipblock",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}]}]",
    );
    let grid = "
111 111 111
111 111 111
111 111 111
.11 111 111
.11 111 111
.11 111 111
111 111 111
111 111 111
111 111 111";
    check("ipblock-ingress", &p, &[("*", grid)]);
}

#[test]
fn ip_block_with_except_egress() {
    // A host-bits CIDR is normalised; the except of z/c's /32 leaves z/a and z/b.
    let p = policy(
        "y",
        "ipblock",
        "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 10.0.3.7/24, except: [10.0.3.3/32]}}]}]",
    );
    let grid = "
111 111 111
111 111 111
111 111 111
... 1.. 11.
... .1. 11.
... ..1 11.
111 111 111
111 111 111
111 111 111";
    check("ipblock-egress", &p, &[("*", grid)]);
}

#[test]
fn named_ports_ingress() {
    // serve-81-udp asked for as TCP names no port: protocols must agree.
    let p = policy(
        "x",
        "named",
        "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: serve-81-tcp}, {port: serve-80-udp, protocol: UDP}, {port: serve-81-udp, protocol: TCP}]}]",
    );
    check(
        "named-ingress",
        &p,
        &[
            ("TCP/81", ALL),
            ("UDP/80", ALL),
            ("TCP/80", DENY_X_INGRESS),
            ("UDP/81", DENY_X_INGRESS),
        ],
    );
}

#[test]
fn named_ports_egress() {
    let p = policy(
        "y",
        "named",
        "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: serve-80-tcp}]}, {to: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: serve-81-udp, protocol: UDP}]}]",
    );
    let only_self = "
111 111 111
111 111 111
111 111 111
... 1.. ...
... .1. ...
... ..1 ...
111 111 111
111 111 111
111 111 111";
    let to_z = "
111 111 111
111 111 111
111 111 111
... 1.. 111
... .1. 111
... ..1 111
111 111 111
111 111 111
111 111 111";
    check(
        "named-egress",
        &p,
        &[("TCP/80", ALL), ("UDP/81", to_z), ("*", only_self)],
    );
}

#[test]
fn end_port_ranges() {
    let p = policy(
        "x",
        "range",
        "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 81, endPort: 90}]}]",
    ) + &policy(
        "z",
        "range",
        "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{protocol: UDP, port: 1, endPort: 80}]}]",
    );
    let tcp80 = "
1.. 111 111
.1. 111 111
..1 111 111
... 111 111
... 111 111
... 111 111
... ... 1..
... ... .1.
... ... ..1";
    let tcp81 = "
111 111 111
111 111 111
111 111 111
111 111 111
111 111 111
111 111 111
... ... 1..
... ... .1.
... ... ..1";
    check(
        "end-port",
        &p,
        &[
            ("TCP/80", tcp80),
            ("TCP/81", tcp81),
            ("UDP/80", DENY_X_INGRESS),
            ("UDP/81", tcp80),
        ],
    );
}

#[test]
fn multiple_policies_are_unioned() {
    let p = policy(
        "x",
        "from-a",
        "  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}, namespaceSelector: {}}], ports: [{port: 80}]}]",
    ) + &policy(
        "x",
        "from-y",
        "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}], ports: [{port: 81, protocol: UDP}]}]",
    );
    let tcp80 = "
111 111 111
.1. 111 111
..1 111 111
111 111 111
... 111 111
... 111 111
111 111 111
... 111 111
... 111 111";
    let udp81 = "
1.. 111 111
.1. 111 111
..1 111 111
111 111 111
111 111 111
111 111 111
... 111 111
... 111 111
... 111 111";
    check(
        "union",
        &p,
        &[("TCP/80", tcp80), ("UDP/81", udp81), ("*", DENY_X_INGRESS)],
    );
}

#[test]
fn match_expressions() {
    let p = policy(
        "x",
        "expr",
        "  podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: ['y', z]}]}, podSelector: {matchExpressions: [{key: pod, operator: Exists}, {key: other, operator: DoesNotExist}]}}]}]",
    ) + &policy(
        "y",
        "expr",
        "  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}}]}]",
    ) + &policy(
        "z",
        "nothing",
        "  podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist}]}\n  policyTypes: [Ingress]",
    );
    let grid = "
1.1 ..1 111
.11 ..1 111
..1 ..1 111
111 1.1 111
111 111 111
111 111 111
111 ..1 111
111 ..1 111
111 ..1 111";
    check("match-expressions", &p, &[("*", grid)]);
}

#[test]
fn egress_only_policy_types_ignore_ingress_rules() {
    let p = policy(
        "x",
        "egress-only",
        "  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{from: [{podSelector: {}}]}]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]",
    );
    let grid = "
1.. 111 ...
.1. 111 ...
..1 111 ...
111 111 111
111 111 111
111 111 111
111 111 111
111 111 111
111 111 111";
    check("egress-only", &p, &[("*", grid)]);
}

#[test]
fn default_policy_types_cover_egress_when_it_has_rules() {
    let p = policy(
        "z",
        "defaults",
        "  podSelector: {matchLabels: {pod: a}}\n  egress: [{to: [{podSelector: {}}]}]",
    );
    let grid = "
111 111 .11
111 111 .11
111 111 .11
111 111 .11
111 111 .11
111 111 .11
... ... 111
111 111 .11
111 111 .11";
    check("default-types", &p, &[("*", grid)]);
}

#[test]
fn an_empty_rule_allows_everything() {
    let p = policy("x", "deny", "  podSelector: {}\n  policyTypes: [Ingress]")
        + &policy("x", "all", "  podSelector: {}\n  ingress: [{}]")
        + &policy(
            "y",
            "all",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{}]",
        );
    check("empty-rule", &p, &[("*", ALL)]);
}
