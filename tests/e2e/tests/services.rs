//! Services across a two-node lab: a ClusterIP whose backends live on both nodes, reached
//! per packet (clients outside the pods' cgroups) and through socket-LB (processes inside).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use sluice_api::{Client, Request, Response};
use sluice_e2e::*;
use sluice_lab::{probe, Lab};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn wait_for_backends(lab: &Lab) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for node in lab.nodes() {
        loop {
            let socket = lab.agent_socket(&node.name).unwrap();
            if let Ok(Response::Services { services }) =
                Client::new(&socket).call(&Request::ListServices)
            {
                let ready = ["TCP", "UDP"].iter().all(|p| {
                    services
                        .iter()
                        .any(|s| s.frontend == format!("{VIP}:80/{p}") && s.backends.len() == 2)
                });
                if ready {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {}: service x/web never got 2 backends",
                node.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn dnat_packets(lab: &Lab, node: &str) -> u64 {
    lab.agent_status(node)
        .unwrap()
        .counters
        .iter()
        .filter(|c| c.outcome == "service-dnat")
        .map(|c| c.packets)
        .sum()
}

fn cluster_ip(file: &str) {
    let lab = up_example(file);
    wait_for_backends(&lab);
    let backends = BTreeSet::from(["x/a".to_string(), "x/c".to_string()]);
    let tcp = SocketAddr::from((VIP, 80));

    // Per-packet translation: every pod, both protocols, answers only from the backends,
    // and over enough tries from both of them.
    for pod in lab.pods() {
        let (http, udp) = lab
            .run_in_pod(&pod.key(), move || {
                let mut http = BTreeSet::new();
                let mut udp = BTreeSet::new();
                for _ in 0..40 {
                    match probe::http_get(tcp, PROBE_TIMEOUT) {
                        Ok(body) => http.insert(body.trim().to_string()),
                        Err(e) => http.insert(format!("error: {e}")),
                    };
                    match probe::udp_echo(tcp, b"whoami", PROBE_TIMEOUT) {
                        Ok(body) => udp.insert(String::from_utf8_lossy(&body).trim().to_string()),
                        Err(e) => udp.insert(format!("error: {e}")),
                    };
                }
                (http, udp)
            })
            .unwrap();
        assert_eq!(http, backends, "{file}: HTTP to {tcp} from {}", pod.key());
        assert_eq!(
            udp,
            backends,
            "{file}: UDP whoami to {tcp} from {}",
            pod.key()
        );
    }

    // A service without selector takes its endpoints from an EndpointSlice written by someone
    // else (here: us, as a controller would).
    let c_ip = lab.pod_ip("x/c").unwrap();
    let manual = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: manual, namespace: x}}\nspec: {{clusterIP: 10.96.0.40, ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: manual-1, namespace: x, labels: {{kubernetes.io/service-name: manual}}}}\naddressType: IPv4\nports: [{{name: http, port: 80, protocol: TCP}}]\nendpoints: [{{addresses: [\"{c_ip}\"]}}]\n"
    );
    std::fs::write(lab.paths().manifests().join("manual.yaml"), manual).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let socket = lab.agent_socket("node-a").unwrap();
        if let Ok(Response::Services { services }) =
            Client::new(&socket).call(&Request::ListServices)
        {
            if services
                .iter()
                .any(|s| s.frontend == "10.96.0.40:80/TCP" && s.backends.len() == 1)
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{file}: x/manual never got its slice's backend"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let manual_vip = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 40), 80));
    let body = lab
        .run_in_pod("y/b", move || probe::http_get(manual_vip, PROBE_TIMEOUT))
        .unwrap()
        .unwrap();
    assert_eq!(
        body.trim(),
        "x/c",
        "{file}: selector-less service via its EndpointSlice"
    );

    // Prometheus metrics agree with the agent's status and count the translations.
    for node in lab.nodes() {
        let status = lab.agent_status(&node.name).unwrap();
        let page = lab
            .run_in_node(&node.name, || {
                probe::http_get_path(
                    SocketAddr::from(([127, 0, 0, 1], 9962)),
                    "/metrics",
                    PROBE_TIMEOUT,
                )
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("{file}: /metrics on {}: {e}", node.name));
        let line = format!("sluice_services {}", status.services);
        assert!(
            page.lines().any(|l| l == line),
            "{file}: {} /metrics lacks {line:?}:\n{page}",
            node.name
        );
        let dnat = page
            .lines()
            .find(|l| l.starts_with("sluice_datapath_packets_total{point=\"from-endpoint\",outcome=\"service-dnat\""))
            .unwrap_or_else(|| panic!("{file}: no DNAT counter on {}:\n{page}", node.name));
        let n: u64 = dnat.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n > 0, "{file}: {dnat}");
    }

    // Socket-LB: a process in the pod's cgroup is translated at connect(), so the node's
    // per-packet DNAT counter stays put.
    for pod in ["y/b", "y/d"] {
        let node = lab.pod(pod).unwrap().node.clone();
        let before = dnat_packets(&lab, &node);
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            let out = lab
                .exec_in_pod(
                    pod,
                    &[
                        "bash",
                        "-c",
                        "exec 3<>/dev/tcp/10.96.0.10/80 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && tail -n 1 <&3",
                    ],
                )
                .unwrap();
            assert!(
                out.status.success(),
                "{pod}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            seen.insert(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        assert!(
            seen.is_subset(&backends) && !seen.is_empty(),
            "{file}: socket-LB from {pod}: {seen:?}"
        );
        assert_eq!(
            dnat_packets(&lab, &node),
            before,
            "{file}: {pod}'s connections needed no packet NAT"
        );
    }
    down_and_check(lab);
}

#[test]
fn native_cluster_ip() {
    if require_root("native_cluster_ip") {
        cluster_ip("two-node-native.yaml");
    }
}

#[test]
fn vxlan_cluster_ip() {
    if require_root("vxlan_cluster_ip") {
        cluster_ip("two-node-vxlan.yaml");
    }
}
