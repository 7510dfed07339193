//! The policy lab with `spec.kvstore: etcd`: the lab runs one etcd on the underlay, agents
//! claim identities there and learn the other node's pods from what it published (not from
//! the manifests). Pod-to-pod, a Service and policy scenarios pass as without etcd, and an
//! etcd outage disturbs neither traffic nor policy; once etcd is back, changes flow again.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_e2e::matrix::*;
use sluice_e2e::*;
use sluice_lab::{probe, Lab};

/// Waits until every agent's etcd session is up and knows the other node's pods.
fn wait_kvstore(lab: &Lab, pods_per_node: usize) {
    wait_for(
        "agents see each other through etcd",
        Duration::from_secs(30),
        || {
            let sessions: Vec<_> = lab
                .nodes()
                .iter()
                .map(|n| (n.name.clone(), lab.agent_status(&n.name).unwrap().kvstore))
                .collect();
            let seen = sessions.iter().all(|(_, k)| {
                k.as_ref().is_some_and(|k| {
                    k.connected && k.remote_nodes == 1 && k.remote_endpoints >= pods_per_node
                })
            });
            seen.then_some(()).ok_or_else(|| format!("{sessions:?}"))
        },
    );
}

#[test]
fn the_policy_lab_works_with_etcd_and_survives_an_etcd_restart() {
    if !require_root("kvstore etcd lab") {
        return;
    }
    let mut guard = up_example_with("policy-xyz.yaml", "  kvstore: etcd\n");
    let lab: &mut Lab = &mut guard;
    // 9 pods on 2 nodes: each node sees at least the 4 of the other.
    wait_kvstore(lab, 4);
    check(lab, "etcd: no policies", |_, _, _| true);

    // A ClusterIP from both nodes.
    for src in ["y/a", "z/b"] {
        let got = lab
            .run_in_pod(src, || {
                probe::http_get(SocketAddr::from(([10, 96, 30, 10], 8080)), TIMEOUT)
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("{src} -> web-a ClusterIP: {e}"));
        assert_eq!(got.trim(), "x/a", "{src}");
    }

    // Cross-node policy needs the remote pods' identities, which now come from etcd.
    admit_only_from(lab, "x", "y");
    let only_y_into_x = |s: &str, d: &str, _| ns(d) != "x" || ns(s) == "y";
    check(lab, "etcd: x admits only y", only_y_into_x);

    // etcd goes away: the datapath keeps what it had.
    lab.kill_etcd().unwrap();
    wait_for(
        "agents notice etcd is gone",
        Duration::from_secs(20),
        || {
            let connected = lab.nodes().iter().any(|n| {
                lab.agent_status(&n.name)
                    .unwrap()
                    .kvstore
                    .is_some_and(|k| k.connected)
            });
            (!connected)
                .then_some(())
                .ok_or_else(|| "still connected".to_string())
        },
    );
    let status = lab.agent_status("node-a").unwrap();
    assert!(
        status.problems.iter().any(|p| p.contains("kvstore")),
        "{:?}",
        status.problems
    );
    check(
        lab,
        "etcd down: policy and traffic unchanged",
        only_y_into_x,
    );

    // Back: sessions reconnect and publish again; a new policy still takes effect.
    lab.start_etcd().unwrap();
    wait_kvstore(lab, 4);
    admit_only_from(lab, "x", "z");
    check(lab, "etcd back: x admits only z", |s, d, _| {
        ns(d) != "x" || ns(s) == "z"
    });
    down_and_check(guard);
}
