//! Socket-LB with the real agent: a process in the node's cgroup connects to a ClusterIP and
//! is given a backend at connect() (no per-packet NAT), yet getpeername() and recvfrom() show
//! the frontend; a service without backends refuses the connection at once.
//!
//! cgroup membership is per process, so the client is this test binary re-executed (the
//! `socket_lb_client` test below does the work when SLUICE_SOCKLB_TARGET is set) inside the
//! pod's namespace and the socket-LB cgroup.

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::{pod_manifest, require_root, wait_for_backends, Node};
use sluice_api::{Client, Request, Response};
use sluice_netdev::Netns;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 101, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 101, 11);

/// The client half; a no-op unless re-executed by the test with a target.
#[test]
fn socket_lb_client() {
    let Ok(target) = std::env::var("SLUICE_SOCKLB_TARGET") else {
        return;
    };
    let tcp: SocketAddr = format!("{target}:80").parse().unwrap();
    match TcpStream::connect_timeout(&tcp, Duration::from_secs(2)) {
        Ok(mut s) => {
            let mut name = String::new();
            s.read_to_string(&mut name).unwrap();
            println!("RESULT tcp peer={} name={name}", s.peer_addr().unwrap());
        }
        Err(e) => println!("RESULT tcp error={:?}", e.kind()),
    }
    let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let to: SocketAddr = format!("{target}:53").parse().unwrap();
    match udp.send_to(b"who", to) {
        Ok(_) => {
            let mut buf = [0u8; 64];
            match udp.recv_from(&mut buf) {
                Ok((n, from)) => println!(
                    "RESULT udp from={from} name={}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(e) => println!("RESULT udp error={:?}", e.kind()),
            }
        }
        Err(e) => println!("RESULT udp error={:?}", e.kind()),
    }
    // Connected UDP: the frontend is the peer, and a datagram comes from it.
    let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    match udp.connect(to).and_then(|()| udp.send(b"who")) {
        Ok(_) => {
            let mut buf = [0u8; 64];
            match udp.recv_from(&mut buf) {
                Ok((n, from)) => println!(
                    "RESULT connected-udp peer={} from={from} name={}",
                    udp.peer_addr().unwrap(),
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(e) => println!("RESULT connected-udp error={:?}", e.kind()),
            }
        }
        Err(e) => println!("RESULT connected-udp error={:?}", e.kind()),
    }
    // Connected again, straight to a backend: no frontend stands for it any more.
    for backend in std::env::var("SLUICE_SOCKLB_BACKENDS")
        .unwrap_or_default()
        .split(',')
        .filter(|b| !b.is_empty())
    {
        let direct: SocketAddr = backend.parse().unwrap();
        match udp.connect(direct) {
            Ok(()) => println!("RESULT reconnected-udp peer={}", udp.peer_addr().unwrap()),
            Err(e) => println!("RESULT reconnected-udp error={:?}", e.kind()),
        }
    }
}

/// Runs the client in `pod` and `cgroup`; returns its RESULT lines.
fn run_client(
    pod: &std::path::Path,
    cgroup: &std::path::Path,
    target: Ipv4Addr,
    backends: &[SocketAddr],
) -> Vec<String> {
    let ns = Netns::from_path(pod).unwrap().open_fd().unwrap();
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .unwrap();
    let (ns_fd, procs_fd) = (ns.as_raw_fd(), procs.as_raw_fd());
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "socket_lb_client",
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd.env("SLUICE_SOCKLB_TARGET", target.to_string());
    let backends: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
    cmd.env("SLUICE_SOCKLB_BACKENDS", backends.join(","));
    // SAFETY: only async-signal-safe calls (write, setns) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // libtest may print "test socket_lb_client ... " on the same line first.
    text.lines()
        .filter_map(|l| l.split_once("RESULT ").map(|(_, r)| r.to_string()))
        .collect()
}

fn dnat_packets(node: &Node) -> u64 {
    let Response::Status(s) = Client::new(node.socket()).call(&Request::Status).unwrap() else {
        panic!()
    };
    s.counters
        .iter()
        .filter(|c| c.outcome == "service-dnat")
        .map(|c| c.packets)
        .sum()
}

#[test]
fn connect_time_translation_is_invisible_to_the_application() {
    if !require_root() {
        return;
    }
    let cgroup = sluice_datapath::features::cgroup2_root()
        .unwrap()
        .join(format!("sluice-test-socklb-{}", std::process::id()));
    let mut node = Node::start_with("10.211.0.0/24", Some(cgroup.clone()));
    let ips = node.client_and_two_backends();
    let manifests = node.dir.path().join("manifests");
    let pods = pod_manifest("b1", &ips[1].1, "web") + &pod_manifest("b2", &ips[2].1, "web");
    std::fs::write(manifests.join("pods.yaml"), pods).unwrap();
    let services = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: x}}\nspec:\n  clusterIP: {VIP}\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: empty, namespace: x}}\nspec:\n  clusterIP: {EMPTY_VIP}\n  selector: {{app: nothing}}\n  ports: [{{port: 80}}, {{port: 53, protocol: UDP}}]\n"
    );
    std::fs::write(manifests.join("services.yaml"), services).unwrap();
    wait_for_backends(&node, &format!("{VIP}:80/TCP"), 2);
    wait_for_backends(&node, &format!("{VIP}:53/UDP"), 2);
    let Response::Status(status) = Client::new(node.socket()).call(&Request::Status).unwrap()
    else {
        panic!()
    };
    assert!(status.socket_lb, "socket-LB reported attached");

    let before = dnat_packets(&node);
    let backends: Vec<SocketAddr> = ips[1..]
        .iter()
        .map(|(_, ip)| SocketAddr::new(ip.parse().unwrap(), 5353))
        .collect();
    let lines = run_client(&ips[0].0, &cgroup, VIP, &backends);
    assert_eq!(lines.len(), 5, "{lines:?}\n{}", node.log());
    assert!(
        lines[0].starts_with(&format!("tcp peer={VIP}:80 name=b")),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with(&format!("udp from={VIP}:53 name=b")),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with(&format!("connected-udp peer={VIP}:53 from={VIP}:53 name=b")),
        "{lines:?}"
    );
    for (line, backend) in lines[3..].iter().zip(&backends) {
        assert_eq!(
            line,
            &format!("reconnected-udp peer={backend}"),
            "{lines:?}"
        );
    }
    assert_eq!(
        dnat_packets(&node),
        before,
        "translated at the socket: no packet needed NAT"
    );

    let lines = run_client(&ips[0].0, &cgroup, EMPTY_VIP, &[]);
    assert_eq!(lines[0], "tcp error=ConnectionRefused", "{lines:?}");
    assert_eq!(lines[1], "udp error=ConnectionRefused", "{lines:?}");
    assert_eq!(
        lines[2], "connected-udp error=ConnectionRefused",
        "{lines:?}"
    );
}
