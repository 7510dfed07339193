//! Services reached from outside the cluster and the rest of their semantics, on two nodes in
//! both routing modes: NodePort (cluster and Local policy), ExternalIP, LoadBalancer IPs,
//! ClientIP affinity, backend removal under a live connection, fast refusal without
//! endpoints, and no iptables/nftables rules anywhere; once more with the Kubernetes source
//! (backends from EndpointSlices served by the lab's stand-in API server).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use sluice_api::{Client, Request, Response};
use sluice_e2e::*;
use sluice_lab::{probe, Lab, LabGuard, LabOptions};
use sluice_netdev::{NetHandle, Route};

const CLUSTER: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Cluster
metadata: {name: external}
spec:
  routing: ROUTING
  nodes:
    - {name: node-a, podCIDR: 10.20.0.0/24}
    - {name: node-b, podCIDR: 10.20.1.0/24}
---
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: s, ports: [{name: http, containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {app: web}}
spec: {nodeName: node-b, containers: [{name: s, ports: [{name: http, containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: z, namespace: x, labels: {app: client}}
spec: {nodeName: node-b, containers: [{name: s, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: np, namespace: x}
spec: {type: NodePort, clusterIP: 10.96.1.10, selector: {app: web}, ports: [{port: 80, targetPort: http, nodePort: 30080}]}
---
apiVersion: v1
kind: Service
metadata: {name: np-local, namespace: x}
spec: {type: NodePort, clusterIP: 10.96.1.11, externalTrafficPolicy: Local, selector: {app: web}, ports: [{port: 80, nodePort: 30081}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: x}
spec: {clusterIP: 10.96.1.12, externalIPs: [203.0.113.10], selector: {app: web}, ports: [{port: 8080, targetPort: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: x}
spec: {type: LoadBalancer, clusterIP: 10.96.1.13, selector: {app: web}, ports: [{port: 80, nodePort: 30082}]}
status: {loadBalancer: {ingress: [{ip: 198.51.100.10}]}}
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: x}
spec: {clusterIP: 10.96.1.14, sessionAffinity: ClientIP, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: x}
spec: {type: NodePort, clusterIP: 10.96.1.15, selector: {app: nobody}, ports: [{name: http, port: 80, nodePort: 30083}, {name: dns, port: 53, protocol: UDP, nodePort: 30084}]}
"#;

const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const TRIES: usize = 30;

fn up(routing: &str, source: &str) -> LabGuard {
    let opts = LabOptions {
        name: Some(unique_name()),
        bin_dir: Some(bin_dir()),
        quiet: true,
        ..Default::default()
    };
    let spec = format!("  routing: {routing}\n  source: {source}\n");
    Lab::up(CLUSTER.replace("  routing: ROUTING\n", &spec), opts)
        .unwrap_or_else(|e| panic!("lab up: {e}"))
        .into_guard()
}

fn frontend_backends(lab: &Lab, node: &str, frontend: &str) -> Option<usize> {
    let socket = lab.agent_socket(node).unwrap();
    match Client::new(&socket).call(&Request::ListServices) {
        Ok(Response::Services { services }) => services
            .iter()
            .find(|s| s.frontend == frontend)
            .map(|s| s.backends.len()),
        _ => None,
    }
}

fn wait_for(lab: &Lab, node: &str, frontend: &str, backends: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while frontend_backends(lab, node, frontend) != Some(backends) {
        assert!(
            Instant::now() < deadline,
            "{node}: {frontend} never had {backends} backends"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `tries` HTTP GETs of `path` at `addr` from the outside host; the set of answers.
fn outside_gets(lab: &Lab, addr: SocketAddr, path: &'static str, tries: usize) -> BTreeSet<String> {
    lab.run_outside(move || {
        (0..tries)
            .map(|_| match probe::http_get_path(addr, path, PROBE_TIMEOUT) {
                Ok(body) => body.trim().to_string(),
                Err(e) => format!("error: {e}"),
            })
            .collect()
    })
    .unwrap()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn external(routing: &str, source: &str) {
    let mut lab = up(routing, source);
    let described = lab.agent_status("node-a").unwrap().source;
    assert!(
        described.starts_with(source),
        "{source}: agent reads {described}"
    );
    for node in ["node-a", "node-b"] {
        let ip = lab.node_ip(node).unwrap();
        wait_for(&lab, node, &format!("{ip}:30080/TCP"), 2);
        wait_for(&lab, node, &format!("{EXTERNAL_IP}:8080/TCP"), 2);
    }
    let (a_ip, b_ip) = (
        lab.node_ip("node-a").unwrap(),
        lab.node_ip("node-b").unwrap(),
    );
    let outside = lab.outside_ip();

    // NodePort on every node reaches backends on both nodes.
    for node_ip in [a_ip, b_ip] {
        let seen = outside_gets(&lab, SocketAddr::from((node_ip, 30080)), "/", TRIES);
        assert_eq!(
            seen,
            set(&["x/a", "x/c"]),
            "{routing}: NodePort {node_ip}:30080 from outside"
        );
    }

    // externalTrafficPolicy: Local: only the node's own backend, and it sees the real client.
    for (node_ip, pod) in [(a_ip, "x/a"), (b_ip, "x/c")] {
        let addr = SocketAddr::from((node_ip, 30081));
        assert_eq!(
            outside_gets(&lab, addr, "/", 10),
            set(&[pod]),
            "{routing}: Local NodePort {addr}"
        );
        assert_eq!(
            outside_gets(&lab, addr, "/client", 3),
            set(&[&outside.to_string()]),
            "{routing}: Local NodePort {addr} preserves the client address"
        );
    }

    // ExternalIP and LoadBalancer IPs: the outside routes them to a node, which translates.
    let outside_net = NetHandle::new(&lab.outside_netns().unwrap()).unwrap();
    for (ip, via) in [(EXTERNAL_IP, a_ip), (LB_IP, b_ip)] {
        outside_net
            .replace_route(&Route {
                dst: ipnet::Ipv4Net::new(ip, 32).unwrap(),
                gateway: Some(via),
                ..Default::default()
            })
            .unwrap();
    }
    let seen = outside_gets(&lab, SocketAddr::from((EXTERNAL_IP, 8080)), "/", TRIES);
    assert_eq!(
        seen,
        set(&["x/a", "x/c"]),
        "{routing}: ExternalIP via node-a"
    );
    let seen = outside_gets(&lab, SocketAddr::from((LB_IP, 80)), "/", TRIES);
    assert_eq!(
        seen,
        set(&["x/a", "x/c"]),
        "{routing}: LoadBalancer IP via node-b"
    );

    // sessionAffinity: ClientIP: every connection of one client lands on one backend.
    let sticky = SocketAddr::from((Ipv4Addr::new(10, 96, 1, 14), 80));
    let seen: BTreeSet<String> = lab
        .run_in_pod("x/z", move || {
            (0..20)
                .map(|_| {
                    probe::http_get(sticky, PROBE_TIMEOUT)
                        .map(|b| b.trim().to_string())
                        .unwrap_or_else(|e| format!("error: {e}"))
                })
                .collect()
        })
        .unwrap();
    assert_eq!(seen.len(), 1, "{routing}: affinity: {seen:?}");
    assert!(
        seen.is_subset(&set(&["x/a", "x/c"])),
        "{routing}: affinity: {seen:?}"
    );

    // A service without endpoints refuses at once (socket-LB in the pod's cgroup).
    let started = Instant::now();
    let out = lab
        .exec_in_pod("x/z", &["bash", "-c", "exec 3<>/dev/tcp/10.96.1.15/80"])
        .unwrap();
    assert!(
        !out.status.success(),
        "{routing}: connecting to a service without endpoints succeeded"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{routing}: refusal took {:?}",
        started.elapsed()
    );

    // Per packet (from outside through a NodePort, or from a thread outside the pod's cgroup)
    // the datapath answers the SYN with a RST: refused just as fast.
    let empty_np = SocketAddr::from((a_ip, 30083));
    let empty_vip = SocketAddr::from((Ipv4Addr::new(10, 96, 1, 15), 80));
    let started = Instant::now();
    let from_outside = lab
        .run_outside(move || probe::connect(empty_np, PROBE_TIMEOUT))
        .unwrap();
    let from_pod = lab
        .run_in_pod("x/z", move || probe::connect(empty_vip, PROBE_TIMEOUT))
        .unwrap();
    for (what, r) in [
        ("outside -> NodePort", from_outside),
        ("pod -> ClusterIP", from_pod),
    ] {
        let kind = r.map(|_| ()).map_err(|e| e.kind());
        assert_eq!(
            kind,
            Err(std::io::ErrorKind::ConnectionRefused),
            "{routing}: {what} without endpoints"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{routing}: refusals took {:?}",
        started.elapsed()
    );
    // UDP: ICMP port unreachable from the frontend, so a connected socket is refused too.
    let started = Instant::now();
    let empty_np_udp = SocketAddr::from((a_ip, 30084));
    let empty_vip_udp = SocketAddr::from((Ipv4Addr::new(10, 96, 1, 15), 53));
    let from_outside = lab
        .run_outside(move || probe::udp_echo(empty_np_udp, b"hello", PROBE_TIMEOUT))
        .unwrap();
    let from_pod = lab
        .run_in_pod("x/z", move || {
            probe::udp_echo(empty_vip_udp, b"hello", PROBE_TIMEOUT)
        })
        .unwrap();
    for (what, r) in [
        ("outside -> NodePort/UDP", from_outside),
        ("pod -> ClusterIP/UDP", from_pod),
    ] {
        let kind = r.map(|_| ()).map_err(|e| e.kind());
        assert_eq!(
            kind,
            Err(std::io::ErrorKind::ConnectionRefused),
            "{routing}: {what} without endpoints"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{routing}: UDP refusals took {:?}",
        started.elapsed()
    );

    // Backends leave the service: new connections stop, an established one keeps flowing.
    let np = SocketAddr::from((a_ip, 30080));
    let mut live = lab
        .run_outside(move || probe::connect(np, PROBE_TIMEOUT))
        .unwrap()
        .unwrap();
    assert_eq!(probe::roundtrip(&mut live, b"before").unwrap(), b"before");
    lab.set_pod_labels("x/a", &[("app", "gone")]).unwrap();
    lab.set_pod_labels("x/c", &[("app", "gone")]).unwrap();
    for node in ["node-a", "node-b"] {
        let ip = lab.node_ip(node).unwrap();
        wait_for(&lab, node, &format!("{ip}:30080/TCP"), 0);
    }
    assert_eq!(
        probe::roundtrip(&mut live, b"after").unwrap(),
        b"after",
        "{routing}: established connection survives"
    );
    let fresh = lab
        .run_outside(move || probe::http_get(np, Duration::from_secs(1)))
        .unwrap();
    assert!(
        fresh.is_err(),
        "{routing}: a new connection reached a removed backend: {fresh:?}"
    );
    lab.set_pod_labels("x/a", &[("app", "web")]).unwrap();
    wait_for(&lab, "node-a", &format!("{a_ip}:30080/TCP"), 1);
    assert_eq!(
        outside_gets(&lab, np, "/", 5),
        set(&["x/a"]),
        "{routing}: a returning backend serves again"
    );

    // sluice never wrote a firewall rule.
    for node in ["node-a", "node-b"] {
        let nft = lab.exec_in_node(node, &["nft", "list", "ruleset"]).unwrap();
        assert!(
            nft.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&nft.stderr)
        );
        assert!(
            String::from_utf8_lossy(&nft.stdout).trim().is_empty(),
            "{node}: nft rules: {}",
            String::from_utf8_lossy(&nft.stdout)
        );
        for tool in ["iptables-legacy-save", "iptables-nft-save"] {
            let out = lab.exec_in_node(node, &[tool]).unwrap();
            let rules: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("-A"))
                .map(str::to_string)
                .collect();
            assert!(rules.is_empty(), "{node}: {tool}: {rules:?}");
        }
    }
    down_and_check(lab);
}

#[test]
fn native_external_traffic() {
    if require_root("native_external_traffic") {
        external("native", "files");
    }
}

#[test]
fn vxlan_external_traffic() {
    if require_root("vxlan_external_traffic") {
        external("vxlan", "files");
    }
}

/// The same with desired state from an API server: backends from EndpointSlices.
#[test]
fn vxlan_external_traffic_from_kubernetes() {
    if require_root("vxlan_external_traffic_from_kubernetes") {
        external("vxlan", "kubernetes");
    }
}
