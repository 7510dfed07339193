//! Flow observability end to end, on the x/y/z lab: flows carry both pods' names, a denied
//! connection is a DROPPED flow with reason and direction, a ClusterIP connection names its
//! Service, `sluice observe` filters and follows across nodes and survives a dead node, a
//! gRPC client built from the Hubble protos reads flows, status, namespaces and health, and
//! the metrics count exactly what the observer saw.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_e2e::*;
use sluice_hubble_api::flow::{self, FlowFilter};
use sluice_hubble_api::observer::get_flows_response::ResponseTypes;
use sluice_hubble_api::observer::observer_client::ObserverClient;
use sluice_hubble_api::observer::{GetFlowsRequest, GetNamespacesRequest, ServerStatusRequest};
use sluice_hubble_api::tonic::transport::Channel;
use sluice_lab::{probe, Lab};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 30, 10);
const TIMEOUT: Duration = Duration::from_millis(1500);

fn sluice(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin_dir().join("sluice"))
        .args(args)
        .output()
        .expect("sluice runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sluice observe --lab L -o json ARGS` as flows (lost-event lines dropped).
fn observe(lab: &Lab, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["observe", "--lab", lab.name(), "-o", "json"];
    full.extend_from_slice(args);
    let (code, out, err) = sluice(&full);
    assert_eq!(code, 0, "sluice {full:?} failed: {err}");
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter_map(|v| v.get("flow").cloned())
        .collect()
}

/// Retries `observe` until `want` holds for some flow (flows reach the agents' rings
/// asynchronously); returns that flow.
fn expect_flow(lab: &Lab, args: &[&str], what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let flows = observe(lab, args);
        if let Some(f) = flows.iter().find(|f| want(f)) {
            return f.clone();
        }
        if Instant::now() > deadline {
            panic!(
                "no flow {what} from `sluice observe {args:?}`; got:\n{}",
                flows
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn pod(f: &Value, side: &str) -> String {
    format!(
        "{}/{}",
        f[side]["namespace"].as_str().unwrap_or(""),
        f[side]["pod_name"].as_str().unwrap_or("")
    )
}

fn http(lab: &Lab, from: &str, to: SocketAddr) -> Result<String, String> {
    lab.run_in_pod(from, || {
        probe::http_get(to, TIMEOUT)
            .map(|body| body.trim().to_string())
            .map_err(|e| e.to_string())
    })
    .unwrap()
}

fn hubble_socket(lab: &Lab, node: &str) -> PathBuf {
    lab.paths().agent_state(node).join("hubble.sock")
}

async fn channel(socket: &Path) -> Channel {
    sluice_hubble_api::connect_unix(socket, Duration::from_secs(2))
        .await
        .expect("the observer socket accepts gRPC")
}

async fn client(socket: &Path) -> ObserverClient<Channel> {
    ObserverClient::new(channel(socket).await)
}

/// `GET /metrics` of a node's agent, from inside the node.
fn metrics(lab: &Lab, node: &str) -> String {
    lab.run_in_node(node, || {
        let mut s = TcpStream::connect(("127.0.0.1", 9962)).expect("metrics port");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    })
    .unwrap()
}

/// The sum of a counter over all its label sets whose labels contain every `with`.
fn counter(text: &str, name: &str, with: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn flows_with_kubernetes_context_over_hubbles_api() {
    if !require_root("flow observability") {
        return;
    }
    let guard = up_example("policy-xyz.yaml");
    let lab: &Lab = &guard;
    let ip = |p: &str| lab.pod_ip(p).unwrap();

    // Pod to pod: FORWARDED flows naming both pods, at the destination's to-endpoint point.
    assert_eq!(
        http(lab, "y/b", SocketAddr::from((ip("x/a"), 80))),
        Ok("x/a".into())
    );
    let f = expect_flow(
        lab,
        &["--from-pod", "y/b", "--to-pod", "x/a", "--last", "50"],
        "y/b -> x/a at to-endpoint",
        |f| f["trace_observation_point"] == "TO_ENDPOINT",
    );
    assert_eq!(f["verdict"], "FORWARDED");
    assert_eq!(pod(&f, "source"), "y/b");
    assert_eq!(pod(&f, "destination"), "x/a");
    assert_eq!(f["traffic_direction"], "INGRESS");
    assert_eq!(f["l4"]["TCP"]["destination_port"], 80);
    assert!(f["source"]["identity"].as_u64().unwrap() >= 256);
    assert!(f["destination"]["labels"]
        .as_array()
        .unwrap()
        .contains(&Value::from("k8s:io.kubernetes.pod.namespace=x")));

    // Through the ClusterIP: the Service is named (socket-LB translates at connect()).
    assert_eq!(
        http(lab, "z/c", SocketAddr::from((VIP, 8080))),
        Ok("x/a".into())
    );
    let f = expect_flow(
        lab,
        &["--service", "x/web-a", "--from-pod", "z/c", "--last", "50"],
        "z/c -> service x/web-a",
        |f| f["destination_service"]["name"] == "web-a",
    );
    assert_eq!(pod(&f, "source"), "z/c");
    assert_eq!(pod(&f, "destination"), "x/a");

    // A denied connection: a DROPPED flow, reason policy denied, at ingress of y/b, and the
    // policy verdict that decided it.
    lab.apply_manifest(
        "observe-policy",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: { name: from-x, namespace: \"y\" }\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: { matchLabels: { kubernetes.io/metadata.name: x } }\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http(lab, "z/a", SocketAddr::from((ip("y/b"), 81))).is_ok() {
        assert!(Instant::now() < deadline, "the policy never took effect");
        std::thread::sleep(Duration::from_millis(200));
    }
    let f = expect_flow(
        lab,
        &[
            "--verdict",
            "DROPPED",
            "--to-pod",
            "y/b",
            "-t",
            "drop",
            "--last",
            "20",
        ],
        "dropped z/a -> y/b",
        |f| pod(f, "source") == "z/a",
    );
    assert_eq!(f["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(f["drop_reason"], 133);
    assert_eq!(f["traffic_direction"], "INGRESS");
    assert_eq!(f["l4"]["TCP"]["destination_port"], 81);
    assert_eq!(
        http(lab, "x/a", SocketAddr::from((ip("y/b"), 80))),
        Ok("y/b".into())
    );
    let v = expect_flow(
        lab,
        &["-t", "policy-verdict", "--to-pod", "y/b", "--last", "50"],
        "policy verdict for x/a -> y/b",
        |f| pod(f, "source") == "x/a" && f["verdict"] == "FORWARDED",
    );
    assert_eq!(v["ingress_allowed_by"][0]["name"], "from-x");

    // Filters exclude: nothing from z/a was forwarded to y/b since the policy.
    let forwarded: Vec<Value> = observe(
        lab,
        &[
            "--from-pod",
            "z/a",
            "--to-pod",
            "y/b",
            "--verdict",
            "FORWARDED",
            "-t",
            "policy-verdict",
        ],
    );
    assert!(forwarded.is_empty(), "{forwarded:?}");

    // --follow streams what happens next, merged across nodes.
    let mut follower = Command::new(bin_dir().join("sluice"))
        .args([
            "observe",
            "--lab",
            lab.name(),
            "-f",
            "-o",
            "json",
            "--from-pod",
            "z/b",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        http(lab, "z/b", SocketAddr::from((ip("x/c"), 81))),
        Ok("x/c".into())
    );
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("--follow printed the new flow");
    let _ = follower.kill();
    let _ = follower.wait();
    let followed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(pod(&followed["flow"], "source"), "z/b");

    // A node that does not answer is named; the others still serve.
    let dead = "/nonexistent/hubble.sock";
    let live = hubble_socket(lab, "node-a");
    let (code, out, err) = sluice(&[
        "observe",
        "--server",
        dead,
        "--server",
        live.to_str().unwrap(),
        "--last",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(dead), "the dead node is named: {err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    // Hubble's TCP port, from inside the node. Node-b's only flows are the few just made by
    // z/b, and an agent whose ring was quiet reads it up to 100 ms later (the reader's
    // idle back-off), so they may take that long to be served.
    let deadline = Instant::now() + Duration::from_secs(5);
    let out = loop {
        let (code, out, err) = sluice(&[
            "lab",
            "exec",
            "--lab",
            lab.name(),
            "--node",
            "node-b",
            "--",
            bin_dir().join("sluice").to_str().unwrap(),
            "observe",
            "--server",
            "127.0.0.1:4244",
            "--last",
            "2",
        ]);
        assert_eq!(code, 0, "{err}");
        if out.lines().count() == 2 || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("[node-b]"), "{out}");
    let (code, _, err) = sluice(&["observe", "--server", dead]);
    assert_ne!(code, 0);
    assert!(err.contains("no node answered"), "{err}");
    let (code, _, err) = sluice(&["observe", "--lab", lab.name(), "--protocol", "http"]);
    assert_ne!(code, 0);
    assert!(err.contains("--protocol"), "{err}");

    // A gRPC client generated from the protos: flows, status, namespaces, health, and a
    // malformed filter refused.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = client(&hubble_socket(lab, "node-a")).await;
        let mut stream = c
            .get_flows(GetFlowsRequest {
                number: 5,
                whitelist: vec![FlowFilter {
                    verdict: vec![flow::Verdict::Dropped as i32],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while let Some(r) = stream.message().await.unwrap() {
            match r.response_types {
                Some(ResponseTypes::Flow(f)) => {
                    assert_eq!(f.verdict, flow::Verdict::Dropped as i32);
                    assert_eq!(f.node_name, "node-a");
                    n += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!((1..=5).contains(&n), "{n} dropped flows");
        let status = c
            .server_status(ServerStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.max_flows, 4095);
        assert!(status.num_flows > 0 && status.seen_flows >= status.num_flows);
        assert!(status.uptime_ns > 0);
        let ns = c
            .get_namespaces(GetNamespacesRequest {})
            .await
            .unwrap()
            .into_inner();
        let names: Vec<&str> = ns.namespaces.iter().map(|n| n.namespace.as_str()).collect();
        for want in ["x", "y", "z"] {
            assert!(names.contains(&want), "{names:?}");
        }
        let bad = c
            .get_flows(GetFlowsRequest {
                whitelist: vec![FlowFilter {
                    source_ip: vec!["10.0.0.999".into()],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await;
        let status = bad.expect_err("a malformed filter is refused");
        assert_eq!(
            status.code(),
            sluice_hubble_api::tonic::Code::InvalidArgument
        );
        assert!(
            status.message().contains("10.0.0.999"),
            "{}",
            status.message()
        );

        let channel = channel(&hubble_socket(lab, "node-a")).await;
        let mut health =
            sluice_hubble_api::tonic_health::pb::health_client::HealthClient::new(channel);
        let answer = health
            .check(sluice_hubble_api::tonic_health::pb::HealthCheckRequest {
                service: sluice_hubble_api::HEALTH_SERVICE.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status, 1, "SERVING");
    });

    // Metrics count what the observer saw: every flow of node-a is in flows_processed, and
    // the drops are there by reason.
    rt.block_on(async {
        let mut c = client(&hubble_socket(lab, "node-a")).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let before = metrics(lab, "node-a");
            let seen = c
                .server_status(ServerStatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .seen_flows;
            let after = metrics(lab, "node-a");
            let processed = counter(&after, "hubble_flows_processed_total", &[]);
            if processed == counter(&before, "hubble_flows_processed_total", &[]) {
                assert_eq!(processed, seen, "flows processed vs seen by the observer");
                assert!(
                    counter(
                        &after,
                        "hubble_drop_total",
                        &["reason=\"POLICY_DENIED\"", "protocol=\"TCP\""]
                    ) >= 1
                );
                assert!(
                    counter(
                        &after,
                        "hubble_policy_verdicts_total",
                        &["direction=\"ingress\"", "action=\"dropped\""]
                    ) >= 1
                );
                assert!(
                    after.contains("sluice_endpoints "),
                    "agent health metrics too"
                );
                break;
            }
            assert!(Instant::now() < deadline, "flows kept arriving for 10 s");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });

    down_and_check(guard);
}

const BURST_CLUSTER: &str = "apiVersion: sluice.dev/v1alpha1
kind: Cluster
metadata: {name: burst}
spec:
  routing: native
  underlay: 192.168.61.0/24
  monitorAggregation: none
  eventsBufferBytes: 4096
  nodes: [{name: node-a, podCIDR: 10.31.0.0/24}]
---
apiVersion: v1
kind: Pod
metadata: {name: a}
spec: {containers: [{name: s, image: none, ports: [{containerPort: 9000, protocol: UDP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec: {containers: [{name: s, image: none, ports: [{containerPort: 9000, protocol: UDP}]}]}
";

#[test]
fn events_lost_in_a_burst_are_counted_and_reported() {
    if !require_root("flow event loss") {
        return;
    }
    let opts = sluice_lab::LabOptions {
        name: Some(unique_name()),
        bin_dir: Some(bin_dir()),
        quiet: true,
        ..Default::default()
    };
    let guard = Lab::up(BURST_CLUSTER, opts)
        .unwrap_or_else(|e| panic!("lab up: {e}"))
        .into_guard();
    let lab: &Lab = &guard;
    let b = SocketAddr::from((lab.pod_ip("default/b").unwrap(), 9000));
    // Every datagram is an event at both ends (no aggregation) in a buffer of ~40 events.
    lab.run_in_pod("default/a", move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..20_000 {
            let _ = s.send_to(b"x", b);
        }
    })
    .unwrap();

    let agent = sluice_api::Client::new(lab.agent_socket("node-a").unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let (kernel, reported) = loop {
        let kernel = match agent.call(&sluice_api::Request::Status).unwrap() {
            sluice_api::Response::Status(s) => s.flow_events_lost,
            other => panic!("{other:?}"),
        };
        let reported = counter(
            &metrics(lab, "node-a"),
            "hubble_lost_events_total",
            &["source=\"perf_event_ring_buffer\""],
        );
        if kernel > 0 && reported == kernel {
            break (kernel, reported);
        }
        assert!(
            Instant::now() < deadline,
            "lost events: kernel {kernel}, reported {reported}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(kernel > 0 && reported == kernel);

    // Readers are told, whatever they filter on.
    let (code, out, err) = sluice(&[
        "observe",
        "--lab",
        lab.name(),
        "--last",
        "100000",
        "-o",
        "json",
        "--pod",
        "default/nobody",
    ]);
    assert_eq!(code, 0, "{err}");
    let lost: u64 = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["lost_events"]["num_events_lost"].as_u64())
        .sum();
    // (The ring keeps the newest 4095 records, so early reports may have been evicted.)
    assert!(lost > 0 && lost <= kernel, "lost {lost} of {kernel}: {out}");
    down_and_check(guard);
}
