//! End-to-end: two-node labs from `examples/` with real agents, CNI and TCP/UDP traffic.
//! Root only (see `require_root`). Each test uses its own lab, torn down even on panic.

use std::net::SocketAddr;

use sluice_e2e::*;
use sluice_lab::{probe, Lab, LabError, LabOptions};

const NODE_PORT: u16 = 9000;

/// Every pod's interface has the routing mode's MTU (the underlay's 1500, less the 50 bytes of
/// VXLAN headers in vxlan mode), and a 256 KiB TCP echo between nodes comes back intact.
fn mtu_and_bulk_transfer(lab: &Lab, file: &str) {
    let want = if lab.state().routing == sluice_api::config::RoutingMode::Vxlan {
        1450
    } else {
        1500
    };
    for pod in lab.pods() {
        let link = sluice_netdev::NetHandle::new(&lab.pod_netns(&pod.key()).unwrap())
            .unwrap()
            .link_info("eth0")
            .unwrap()
            .expect("pod has eth0");
        assert_eq!(link.mtu, want, "{file}: MTU of {}", pod.key());
    }
    let remote = lab
        .pods()
        .iter()
        .find(|p| p.node != lab.pods()[0].node)
        .expect("pods on two nodes");
    let addr = SocketAddr::from((remote.ip.expect("pod has an IP"), 81));
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let expected = payload.clone();
    let echoed = lab
        .run_in_pod(&lab.pods()[0].key(), move || {
            probe::tcp_echo(addr, &payload, std::time::Duration::from_secs(10))
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("{file}: bulk echo to {addr}: {e}"));
    assert!(
        echoed == expected,
        "{file}: bulk echo came back altered ({} bytes)",
        echoed.len()
    );
}

fn reachability(file: &str) {
    let lab = up_example(file);
    mtu_and_bulk_transfer(&lab, file);
    let m = pod_matrix(&lab);
    let failures = m.failures();
    assert!(
        failures.is_empty(),
        "{file}: pod-to-pod reachability:\n{}\n{}",
        failures.join("\n"),
        m.render()
    );

    // Pods reach their own node's address and the other node's.
    let servers: Vec<NodeServer> = lab
        .nodes()
        .iter()
        .map(|n| NodeServer::start(&lab, &n.name, NODE_PORT))
        .collect();
    let mut failures = Vec::new();
    for pod in lab.pods() {
        for node in lab.nodes() {
            let addr = SocketAddr::from((node.ip, NODE_PORT));
            let (tcp, udp) = lab
                .run_in_pod(&pod.key(), || {
                    (
                        probe::tcp_echo(addr, b"to the node", PROBE_TIMEOUT),
                        probe::udp_echo(addr, b"udp to the node", PROBE_TIMEOUT),
                    )
                })
                .unwrap();
            match tcp {
                Ok(b) if b == b"to the node" => {}
                other => failures.push(format!(
                    "{} -> node {} {addr} tcp: {other:?}",
                    pod.key(),
                    node.name
                )),
            }
            match udp {
                Ok(b) if b == b"udp to the node" => {}
                other => failures.push(format!(
                    "{} -> node {} {addr} udp: {other:?}",
                    pod.key(),
                    node.name
                )),
            }
        }
    }
    drop(servers);
    assert!(
        failures.is_empty(),
        "{file}: pod-to-node reachability:\n{}",
        failures.join("\n")
    );
    down_and_check(lab);
}

fn agent_restart(file: &str) {
    let mut lab = up_example(file);
    let open = |lab: &Lab, src: &str, dst: &str, port: u16| {
        let addr = SocketAddr::from((lab.pod_ip(dst).unwrap(), port));
        let mut s = lab
            .run_in_pod(src, || probe::connect(addr, PROBE_TIMEOUT))
            .unwrap()
            .unwrap_or_else(|e| panic!("{src} -> {dst} {addr}: {e}"));
        assert_eq!(probe::roundtrip(&mut s, b"hello").unwrap(), b"hello");
        (format!("{src} -> {dst}:{port}"), s)
    };
    // A cross-node and a same-node connection, both from node-a.
    let mut conns = vec![open(&lab, "x/a", "x/c", 80), open(&lab, "x/a", "y/b", 81)];
    for (node, kill9) in [
        ("node-a", false),
        ("node-a", true),
        ("node-b", false),
        ("node-b", true),
    ] {
        let how = if kill9 { "SIGKILL" } else { "SIGTERM" };
        let status = lab
            .restart_agent(node, kill9)
            .unwrap_or_else(|e| panic!("{file}: restart {node} ({how}): {e}"));
        assert!(status.ready);
        let local = lab.pods().iter().filter(|p| p.node == node).count();
        assert_eq!(
            status.endpoints, local,
            "{file}: after {how} restart, {node} lost endpoints"
        );
        for (i, (what, s)) in conns.iter_mut().enumerate() {
            let msg = format!("after-{how}-{node}-{i}");
            let got = probe::roundtrip(s, msg.as_bytes()).unwrap_or_else(|e| {
                panic!("{file}: long-lived {what} broke after {how} restart of {node}: {e}")
            });
            assert_eq!(got, msg.as_bytes(), "{file}: {what}");
        }
        // New connections work too.
        for (src, dst) in [("x/a", "y/d"), ("x/c", "y/b"), ("y/d", "x/c")] {
            let ip = lab.pod_ip(dst).unwrap();
            let r = lab
                .run_in_pod(src, || {
                    probe_pod(ip, dst, Probe::Tcp(80)).and(probe_pod(ip, dst, Probe::Udp(81)))
                })
                .unwrap();
            assert!(
                r.is_ok(),
                "{file}: after {how} restart of {node}: new {src} -> {dst}: {r:?}"
            );
        }
    }
    drop(conns);
    down_and_check(lab);
}

#[test]
fn native_pods_reach_pods_and_nodes() {
    if require_root("native_pods_reach_pods_and_nodes") {
        reachability("two-node-native.yaml");
    }
}

#[test]
fn vxlan_pods_reach_pods_and_nodes() {
    if require_root("vxlan_pods_reach_pods_and_nodes") {
        reachability("two-node-vxlan.yaml");
    }
}

#[test]
fn native_agent_restart_keeps_connections() {
    if require_root("native_agent_restart_keeps_connections") {
        agent_restart("two-node-native.yaml");
    }
}

#[test]
fn vxlan_agent_restart_keeps_connections() {
    if require_root("vxlan_agent_restart_keeps_connections") {
        agent_restart("two-node-vxlan.yaml");
    }
}

#[test]
fn failed_up_leaves_nothing() {
    if !require_root("failed_up_leaves_nothing") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let real = bin_dir();
    let dir = std::env::temp_dir().join(format!("sluice-e2e-fake-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for b in ["sluice", "sluice-cni"] {
        std::os::unix::fs::symlink(real.join(b).canonicalize().unwrap(), dir.join(b)).unwrap();
    }
    let agent = dir.join("sluice-agent");
    std::fs::write(
        &agent,
        "#!/bin/sh\necho 'fake agent: refusing to start' >&2\nexit 7\n",
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();

    let name = unique_name();
    let opts = LabOptions {
        name: Some(name.clone()),
        bin_dir: Some(dir.clone()),
        quiet: true,
        ..Default::default()
    };
    let err = Lab::up(example("two-node-native.yaml").as_path(), opts)
        .expect_err("up with a failing agent");
    let _ = std::fs::remove_dir_all(&dir);
    let text = err.to_string();
    assert!(matches!(err, LabError::Agent { .. }), "{text}");
    assert!(
        text.contains("fake agent: refusing to start"),
        "the error shows the agent log: {text}"
    );
    let left = sluice_lab::leftovers(&name);
    assert!(left.is_empty(), "failed up left {left:?}");
}

#[test]
fn invalid_cluster_creates_nothing() {
    if !require_root("invalid_cluster_creates_nothing") {
        return;
    }
    let name = unique_name();
    let text = std::fs::read_to_string(example("two-node-native.yaml"))
        .unwrap()
        .replace("10.10.1.0/24", "10.10.0.0/16");
    let opts = LabOptions {
        name: Some(name.clone()),
        bin_dir: Some(bin_dir()),
        quiet: true,
        ..Default::default()
    };
    let err = Lab::up(text, opts).expect_err("overlapping pod CIDRs");
    assert!(err.to_string().contains("spec.nodes[1].podCIDR"), "{err}");
    assert!(sluice_lab::leftovers(&name).is_empty());
}

#[test]
fn second_up_with_the_same_name_is_refused() {
    if !require_root("second_up_with_the_same_name_is_refused") {
        return;
    }
    let lab = up_example("two-node-native.yaml");
    let opts = LabOptions {
        name: Some(lab.name().to_string()),
        bin_dir: Some(bin_dir()),
        quiet: true,
        ..Default::default()
    };
    let err =
        Lab::up(example("two-node-native.yaml").as_path(), opts).expect_err("same name twice");
    assert!(matches!(err, LabError::Exists { .. }), "{err}");
    // The refused attempt did not harm the running lab.
    let ip = lab.pod_ip("y/d").unwrap();
    let r = lab
        .run_in_pod("x/a", || probe_pod(ip, "y/d", Probe::Tcp(80)))
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    down_and_check(lab);
}
