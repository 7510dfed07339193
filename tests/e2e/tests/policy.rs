//! NetworkPolicy in the upstream reachability style: namespaces x, y, z with pods a, b, c
//! serving TCP and UDP on 80 and 81, spread over two nodes. Each scenario applies policies,
//! probes every pair on every port, and compares with the expected matrix (printed side by
//! side on failure). Policies take effect through the agents' file watchers, so a scenario
//! re-probes the cells that differ until they match or time runs out.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use sluice_api::{Client, Request, Response};
use sluice_e2e::matrix::*;
use sluice_e2e::*;
use sluice_lab::{probe, Lab};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 30, 10);

fn agent(lab: &Lab, node: &str) -> Client {
    Client::new(lab.agent_socket(node).unwrap())
}

#[test]
fn reachability_matrix_under_network_policies() {
    if !require_root("policy reachability matrix") {
        return;
    }
    scenarios(&up_example("policy-xyz.yaml"));
}

/// The same scenarios with identities and the other node's endpoints from etcd.
#[test]
fn reachability_matrix_under_network_policies_with_etcd() {
    if !require_root("policy reachability matrix (kvstore etcd)") {
        return;
    }
    scenarios(&up_example_with("policy-xyz.yaml", "  kvstore: etcd\n"));
}

/// The same scenarios with desired state from an API server (slices, watches) and etcd.
#[test]
fn reachability_matrix_under_network_policies_from_kubernetes() {
    if !require_root("policy reachability matrix (kubernetes source)") {
        return;
    }
    scenarios(&up_example_with(
        "policy-xyz.yaml",
        "  source: kubernetes\n  kvstore: etcd\n",
    ));
}

fn scenarios(lab: &Lab) {
    check(lab, "no policies", |_, _, _| true);

    apply(
        lab,
        &policy(
            "deny-ingress",
            "x",
            "  podSelector: {}\n  policyTypes: [Ingress]",
        ),
    );
    check(lab, "default-deny ingress in x", |_, d, _| ns(d) != "x");

    // The agents explain it.
    let node_of_xa = lab.pod("x/a").unwrap().node.clone();
    match agent(lab, &node_of_xa)
        .call(&Request::GetEndpoint { pod: "x/a".into() })
        .unwrap()
    {
        Response::EndpointDetail(d) => {
            assert!(d.ingress_isolated && !d.egress_isolated, "{d:?}");
            assert!(d.identity >= 256, "{d:?}");
            assert!(
                d.ingress.iter().all(|e| e.peer == "host"),
                "only the node itself may reach x/a: {d:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    match agent(lab, "node-b")
        .call(&Request::PolicyTrace {
            from: "y/b".into(),
            to: "x/a".into(),
            protocol: "tcp".into(),
            port: 80,
        })
        .unwrap()
    {
        Response::Trace(t) => {
            assert!(!t.allowed, "{}", t.explanation);
            assert!(
                t.explanation.contains("x/deny-ingress"),
                "{}",
                t.explanation
            );
        }
        other => panic!("{other:?}"),
    }

    // A broken update of that policy changes nothing, and says why.
    apply(
        lab,
        &policy(
            "deny-ingress",
            "x",
            "  podSelector: {}\n  policyTypes: [Ingress]\n  ingress: [{ from: [{ ipBlock: { cidr: 10.0.0.0/33 } }] }]",
        ),
    );
    let deadline = Instant::now() + SETTLE;
    loop {
        let problems = lab.agent_status("node-a").unwrap().problems;
        if problems.iter().any(|p| {
            p.contains("x/deny-ingress")
                && p.contains("ipBlock.cidr")
                && p.contains("keeping the previous version")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no problem reported: {problems:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    check(
        lab,
        "invalid update keeps the previous version",
        |_, d, _| ns(d) != "x",
    );

    // An agent killed and restarted re-reads what it programmed: isolation holds throughout.
    let mut lab_mut = Lab::open(Some(lab.name())).unwrap();
    lab_mut.restart_agent("node-a", true).unwrap();
    check(
        lab,
        "after kill -9 and restart of node-a's agent",
        |_, d, _| ns(d) != "x",
    );

    apply(
        lab,
        &policy(
            "deny-egress",
            "x",
            "  podSelector: {}\n  policyTypes: [Egress]",
        ),
    );
    check(lab, "default-deny egress in x", |s, _, _| ns(s) != "x");

    apply(
        lab,
        &policy(
            "same-ns",
            "x",
            "  podSelector: {}\n  ingress: [{ from: [{ podSelector: {} }] }]",
        ),
    );
    check(lab, "allow from the same namespace", |s, d, _| {
        ns(d) != "x" || ns(s) == "x"
    });

    apply(
        lab,
        &policy(
            "from-y",
            "x",
            "  podSelector: { matchLabels: { pod: a } }\n  ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: \"y\" } } }] }]",
        ),
    );
    check(lab, "namespaceSelector", |s, d, _| {
        d != "x/a" || ns(s) == "y"
    });

    apply(
        lab,
        &policy(
            "one-peer",
            "x",
            "  podSelector: { matchLabels: { pod: a } }\n  ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: \"y\" } }, podSelector: { matchLabels: { pod: b } } }] }]",
        ),
    );
    check(
        lab,
        "podSelector AND namespaceSelector in one peer",
        |s, d, _| d != "x/a" || s == "y/b",
    );

    apply(
        lab,
        &policy(
            "two-peers",
            "x",
            "  podSelector: { matchLabels: { pod: a } }\n  ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: \"y\" } } }, { podSelector: { matchLabels: { pod: b } } }] }]",
        ),
    );
    check(
        lab,
        "namespaceSelector OR podSelector as two peers",
        |s, d, _| d != "x/a" || ns(s) == "y" || s == "x/b",
    );

    let yb = lab.pod_ip("y/b").unwrap();
    apply(
        lab,
        &policy(
            "ipblock",
            "x",
            &format!("  podSelector: {{ matchLabels: {{ pod: a }} }}\n  ingress: [{{ from: [{{ ipBlock: {{ cidr: 10.30.0.0/16, except: [{yb}/32] }} }}] }}]"),
        ),
    );
    check(lab, "ipBlock with except", |s, d, _| {
        d != "x/a" || s != "y/b"
    });

    apply(
        lab,
        &policy(
            "named",
            "x",
            "  podSelector: { matchLabels: { pod: a } }\n  ingress: [{ ports: [{ port: serve-81-tcp }, { port: serve-80-udp, protocol: UDP }] }]",
        ),
    );
    check(lab, "named ports", |_, d, p| {
        d != "x/a" || p == Probe::Tcp(81) || p == Probe::Udp(80)
    });

    apply(
        lab,
        &policy(
            "range",
            "x",
            "  podSelector: { matchLabels: { pod: a } }\n  ingress: [{ ports: [{ port: 80, endPort: 81, protocol: UDP }] }]",
        ),
    );
    check(lab, "endPort range", |_, d, p| {
        d != "x/a" || matches!(p, Probe::Udp(_))
    });

    // Two policies select x/a: what either allows is allowed.
    apply(
        lab,
        &(policy(
            "allow-xb",
            "x",
            "  podSelector: { matchLabels: { pod: a } }\n  ingress: [{ from: [{ podSelector: { matchLabels: { pod: b } } }] }]",
        ) + &policy(
            "allow-z-udp",
            "x",
            "  podSelector: { matchLabels: { pod: a } }\n  ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: \"z\" } } }], ports: [{ protocol: UDP, port: 80 }, { protocol: UDP, port: 81 }] }]",
        )),
    );
    check(lab, "two policies unioned", |s, d, p| {
        d != "x/a" || s == "x/b" || (ns(s) == "z" && matches!(p, Probe::Udp(_)))
    });

    egress_to_a_service(lab);
    open_connections_follow_policy_changes(lab);
    label_changes_move_a_pod_between_identities(lab);

    lab.delete_manifest("policy").unwrap();
    check(lab, "all policies removed", |_, _, _| true);
}

/// x/b may only send to x/a:80; reaching x/a through its ClusterIP (port 8080) is judged
/// against the backend, so it works, while every other destination is denied.
fn egress_to_a_service(lab: &Lab) {
    apply(
        lab,
        &policy(
            "b-to-a",
            "x",
            "  podSelector: { matchLabels: { pod: b } }\n  policyTypes: [Egress]\n  egress: [{ to: [{ podSelector: { matchLabels: { pod: a } } }], ports: [{ port: 80 }] }]",
        ),
    );
    check(lab, "egress to x/a:80 only", |s, d, p| {
        s != "x/b" || (d == "x/a" && p == Probe::Tcp(80))
    });
    let through_vip = lab
        .run_in_pod("x/b", || {
            probe::http_get(SocketAddr::from((VIP, 8080)), TIMEOUT)
        })
        .unwrap();
    assert_eq!(
        through_vip.unwrap().trim(),
        "x/a",
        "the ClusterIP reaches the allowed backend"
    );
}

/// A connection admitted before a policy denies it stops with the change; it comes back
/// when the policy goes.
fn open_connections_follow_policy_changes(lab: &Lab) {
    lab.delete_manifest("policy").unwrap();
    check(lab, "no policies (again)", |_, _, _| true);
    let xa = SocketAddr::from((lab.pod_ip("x/a").unwrap(), 80));
    let mut stream = lab
        .run_in_pod("y/c", || probe::connect(xa, TIMEOUT))
        .unwrap()
        .expect("y/c connects to x/a");
    assert_eq!(probe::roundtrip(&mut stream, b"one\n").unwrap(), b"one\n");

    apply(
        lab,
        &policy(
            "deny-ingress",
            "x",
            "  podSelector: {}\n  policyTypes: [Ingress]",
        ),
    );
    check(
        lab,
        "deny ingress in x with a connection open",
        |_, d, _| ns(d) != "x",
    );
    assert!(
        probe::roundtrip(&mut stream, b"two\n").is_err(),
        "the open connection to x/a is cut by the new policy"
    );
    lab.delete_manifest("policy").unwrap();
    check(lab, "policy removed", |_, _, _| true);
}

/// x/a admits only pods labelled role=client; relabelling y/b moves it into and out of that
/// identity, and traffic follows.
fn label_changes_move_a_pod_between_identities(lab: &Lab) {
    apply(
        lab,
        &policy(
            "clients",
            "x",
            "  podSelector: { matchLabels: { pod: a } }\n  ingress: [{ from: [{ namespaceSelector: {}, podSelector: { matchLabels: { role: client } } }] }]",
        ),
    );
    check(lab, "no clients yet", |_, d, _| d != "x/a");
    // Labels are replaced wholesale, as the manifest is rewritten.
    let mut lab_mut = Lab::open(Some(lab.name())).unwrap();
    lab_mut
        .set_pod_labels("y/b", &[("pod", "b"), ("role", "client")])
        .unwrap();
    let started = Instant::now();
    check(lab, "y/b labelled role=client", |s, d, _| {
        d != "x/a" || s == "y/b"
    });
    eprintln!("label change took effect within {:?}", started.elapsed());
    lab_mut.set_pod_labels("y/b", &[("pod", "b")]).unwrap();
    check(lab, "y/b unlabelled", |_, d, _| d != "x/a");
}
