//! The policy lab with `spec.source: kubernetes`: agents take their desired state from an API
//! server over HTTP (kube-rs watchers; the lab's stand-in serves its directory, with the
//! EndpointSlices the endpoint-slice controller would write) instead of reading files.
//! Pod-to-pod, Services (backends from slices) and policy work; an API server outage keeps
//! the last state programmed and is reported; after it returns, changes flow again.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_e2e::matrix::*;
use sluice_e2e::*;
use sluice_lab::{probe, Lab};

fn get_via(lab: &Lab, src: &str, vip: [u8; 4]) -> Result<String, String> {
    lab.run_in_pod(src, || {
        probe::http_get(SocketAddr::from((vip, 8080)), TIMEOUT)
    })
    .map_err(|e| e.to_string())?
    .map(|s| s.trim().to_string())
    .map_err(|e| e.to_string())
}

fn source_connected(lab: &Lab, node: &str) -> bool {
    lab.agent_status(node).unwrap().source_connected
}

#[test]
fn the_policy_lab_works_from_a_kubernetes_api_server() {
    if !require_root("kubernetes source lab") {
        return;
    }
    let mut guard = up_example_with("policy-xyz.yaml", "  source: kubernetes\n");
    let lab: &mut Lab = &mut guard;
    for node in ["node-a", "node-b"] {
        let s = lab.agent_status(node).unwrap();
        assert!(s.source.starts_with("kubernetes:http://"), "{}", s.source);
        assert!(s.source_connected && s.last_sync_unix.is_some(), "{s:?}");
        assert_eq!(s.pods, 9, "every pod of the cluster, from the API");
    }
    check(lab, "kubernetes: no policies", |_, _, _| true);

    // The ClusterIP's backends come from EndpointSlices now.
    for src in ["y/a", "z/b"] {
        assert_eq!(get_via(lab, src, [10, 96, 30, 10]).unwrap(), "x/a", "{src}");
    }
    apply(
        lab,
        "apiVersion: v1\nkind: Service\nmetadata: { name: web-b, namespace: \"x\" }\nspec:\n  clusterIP: 10.96.30.20\n  selector: { pod: b }\n  ports: [{ name: http, port: 8080, targetPort: 80, protocol: TCP }]\n",
    );
    wait_for(
        "a new Service through its slice",
        Duration::from_secs(20),
        || match get_via(lab, "y/a", [10, 96, 30, 20])? {
            b if b == "x/b" => Ok(()),
            other => Err(format!("answered {other:?}")),
        },
    );

    admit_only_from(lab, "x", "y");
    let only_y_into_x = |s: &str, d: &str, _| ns(d) != "x" || ns(s) == "y";
    check(lab, "kubernetes: x admits only y", only_y_into_x);

    // The API server goes away: the agents say so and keep what they programmed.
    lab.kill_apiserver().unwrap();
    wait_for("the outage reported", Duration::from_secs(20), || match lab
        .nodes()
        .iter()
        .any(|n| source_connected(lab, &n.name))
    {
        false => Ok(()),
        true => Err("still connected".into()),
    });
    let s = lab.agent_status("node-b").unwrap();
    assert!(
        s.problems
            .iter()
            .any(|p| p.contains("retrying with backoff")),
        "{:?}",
        s.problems
    );
    check(
        lab,
        "API server down: policy and traffic unchanged",
        only_y_into_x,
    );

    // Back: what changed meanwhile arrives.
    admit_only_from(lab, "x", "z");
    lab.start_apiserver().unwrap();
    check(lab, "API server back: x admits only z", |s, d, _| {
        ns(d) != "x" || ns(s) == "z"
    });
    wait_for("reconnected", Duration::from_secs(20), || {
        match lab.nodes().iter().all(|n| source_connected(lab, &n.name)) {
            true => Ok(()),
            false => Err("not yet".into()),
        }
    });
    down_and_check(guard);
}
