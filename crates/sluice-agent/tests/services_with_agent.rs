//! Services end to end on one node: the real agent reads Service and Pod manifests, programs
//! the load balancer, and real TCP/UDP clients in a pod reach backends through the ClusterIP.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{pod_manifest, require_root, wait_for_backends, Node};
use sluice_api::{Client, Request, Response};
use sluice_netdev::Netns;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 100, 10);

fn tcp_name(client: &Netns, to: SocketAddr) -> Result<(String, SocketAddr), String> {
    let mut stream = client
        .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)))
        .unwrap()
        .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let peer = stream.peer_addr().unwrap();
    let mut name = String::new();
    stream
        .read_to_string(&mut name)
        .map_err(|e| e.to_string())?;
    Ok((name, peer))
}

fn udp_name(client: &Netns, to: SocketAddr) -> Result<(String, SocketAddr), String> {
    let sock = client
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send_to(b"who", to).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let (n, from) = sock.recv_from(&mut buf).map_err(|e| e.to_string())?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

#[test]
fn cluster_ip_balances_tcp_and_udp_and_follows_label_changes() {
    if !require_root() {
        return;
    }
    let mut node = Node::start("10.210.0.0/24");
    let ips = node.client_and_two_backends();
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: x}}\nspec:\n  clusterIP: {VIP}\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}]\n"
    );
    let manifests = node.dir.path().join("manifests");
    let write_pods = |b2_app: &str| {
        let text = pod_manifest("b1", &ips[1].1, "web") + &pod_manifest("b2", &ips[2].1, b2_app);
        std::fs::write(manifests.join("pods.yaml"), text).unwrap();
    };
    write_pods("web");
    std::fs::write(manifests.join("service.yaml"), &service).unwrap();
    wait_for_backends(&node, &format!("{VIP}:80/TCP"), 2);
    wait_for_backends(&node, &format!("{VIP}:53/UDP"), 2);

    let client = Netns::from_path(&ips[0].0).unwrap();
    let vip80 = SocketAddr::from((VIP, 80));
    let vip53 = SocketAddr::from((VIP, 53));
    let mut tcp_seen = BTreeSet::new();
    for _ in 0..30 {
        let (name, peer) = tcp_name(&client, vip80)
            .unwrap_or_else(|e| panic!("TCP to {vip80}: {e}\n{}", node.log()));
        assert_eq!(peer, vip80, "the client sees the frontend, not the backend");
        tcp_seen.insert(name);
    }
    assert_eq!(
        tcp_seen,
        BTreeSet::from(["b1".to_string(), "b2".to_string()])
    );
    let mut udp_seen = BTreeSet::new();
    for _ in 0..30 {
        let (name, from) =
            udp_name(&client, vip53).unwrap_or_else(|e| panic!("UDP to {vip53}: {e}"));
        assert_eq!(from, vip53, "replies come from the frontend");
        udp_seen.insert(name);
    }
    assert_eq!(udp_seen.len(), 2, "{udp_seen:?}");

    // b2 stops matching the selector: only b1 is left.
    write_pods("other");
    wait_for_backends(&node, &format!("{VIP}:80/TCP"), 1);
    for _ in 0..10 {
        assert_eq!(tcp_name(&client, vip80).unwrap().0, "b1");
    }

    // No backend at all: the connection is dropped and counted with its reason.
    std::fs::write(
        manifests.join("pods.yaml"),
        pod_manifest("b1", &ips[1].1, "none"),
    )
    .unwrap();
    wait_for_backends(&node, &format!("{VIP}:80/TCP"), 0);
    assert!(tcp_name(&client, vip80).is_err());
    let Response::Status(status) = Client::new(node.socket()).call(&Request::Status).unwrap()
    else {
        panic!()
    };
    assert!(
        status
            .counters
            .iter()
            .any(|c| c.reason == "service-backend-not-found" && c.packets > 0),
        "{:?}",
        status.counters
    );

    // The service goes away: nothing is left in the maps.
    std::fs::remove_file(manifests.join("service.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let Response::Status(s) = Client::new(node.socket()).call(&Request::Status).unwrap() else {
            panic!()
        };
        if s.services == 0 && s.backends == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "service maps not emptied: {} frontends, {} backends",
            s.services,
            s.backends
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A map that cannot take another service is reported, and nothing already programmed is
/// disturbed; once room is made the service is programmed after all.
#[test]
fn a_full_service_map_is_reported_and_corrupts_nothing() {
    if !require_root() {
        return;
    }
    // 16 slots: five services of (1 frontend + 2 backends) fit, the sixth does not.
    let mut node = Node::start_with_config(
        "10.212.0.0/24",
        None,
        "maps: {lbSlots: 16, backends: 64, conntrack: 64}\n",
    );
    let ips = node.client_and_two_backends();
    let manifests = node.dir.path().join("manifests");
    let pods = pod_manifest("b1", &ips[1].1, "web") + &pod_manifest("b2", &ips[2].1, "web");
    std::fs::write(manifests.join("pods.yaml"), pods).unwrap();
    let service = |i: u8| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: x}}\nspec: {{clusterIP: 10.96.102.{i}, selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}\n---\n")
    };
    let all: String = (1..=6).map(service).collect();
    std::fs::write(manifests.join("services.yaml"), all).unwrap();
    let status = |node: &Node| match Client::new(node.socket()).call(&Request::Status).unwrap() {
        Response::Status(s) => s,
        other => panic!("{other:?}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !status(&node)
        .problems
        .iter()
        .any(|p| p.contains("sluice_lb4_svc is full"))
    {
        assert!(
            Instant::now() < deadline,
            "no full-map problem reported: {:?}",
            status(&node).problems
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status(&node).services, 5, "five services fit");
    // What is programmed still works.
    let client = Netns::from_path(&ips[0].0).unwrap();
    let (name, _) = tcp_name(
        &client,
        SocketAddr::from((Ipv4Addr::new(10, 96, 102, 1), 80)),
    )
    .unwrap();
    assert!(name == "b1" || name == "b2", "{name}");

    // Room is made: the sixth gets programmed and the problem clears.
    let fewer: String = (2..=6).map(service).collect();
    std::fs::write(manifests.join("services.yaml"), fewer).unwrap();
    wait_for_backends(&node, "10.96.102.6:80/TCP", 2);
    assert!(status(&node)
        .problems
        .iter()
        .all(|p| !p.contains("is full")));
}
