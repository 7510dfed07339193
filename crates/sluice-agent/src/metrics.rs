//! Prometheus `/metrics`, rendered on each scrape from one Status snapshot of the agent, so
//! every value on a page belongs to the same moment.

use std::sync::atomic::AtomicU64;
use std::sync::mpsc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sluice_api::{AgentStatus, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::core::Command;
use crate::observe::FlowMetrics;

type Labels = Vec<(String, String)>;

fn gauge(r: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    r.register(name, help, g);
}

/// The exposition text for `s`.
/// Histograms the core thread fills as it works (the rest is read from a Status snapshot).
#[derive(Clone)]
pub struct AgentMetrics {
    /// Seconds per reconcile pass, by what was reconciled (services, policy).
    pub reconcile: Family<Labels, Histogram, fn() -> Histogram>,
}

fn reconcile_histogram() -> Histogram {
    // 50 µs .. ~13 s
    Histogram::new(exponential_buckets(0.00005, 4.0, 10))
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            reconcile: Family::new_with_constructor(reconcile_histogram),
        }
    }
}

impl AgentMetrics {
    pub fn observe_reconcile(&self, kind: &str, took: std::time::Duration) {
        self.reconcile
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .observe(took.as_secs_f64());
    }
}

pub fn render(s: &AgentStatus, agent: &AgentMetrics, flows: Option<&FlowMetrics>) -> String {
    let mut root = Registry::default();
    if let Some(flows) = flows {
        let hubble = root.sub_registry_with_prefix("hubble");
        hubble.register(
            "flows_processed",
            "Flows processed, by event type, subtype and verdict",
            flows.flows_processed.family.clone(),
        );
        hubble.register(
            "drop",
            "Packets dropped, by reason and protocol",
            flows.drops.family.clone(),
        );
        hubble.register(
            "policy_verdicts",
            "Policy verdicts on new connections, by direction, match type and action",
            flows.policy_verdicts.family.clone(),
        );
        hubble.register(
            "lost_events",
            "Flow events lost, by where they were lost",
            flows.lost_events.family.clone(),
        );
    }
    let r = root.sub_registry_with_prefix("sluice");
    r.register(
        "reconcile_duration_seconds",
        "Time a reconcile pass took, by what it reconciled",
        agent.reconcile.clone(),
    );
    gauge(
        r,
        "agent_ready",
        "1 once the datapath is loaded and the node is known",
        s.ready as i64,
    );
    gauge(
        r,
        "agent_problems",
        "Problems the agent currently reports",
        s.problems.len() as i64,
    );
    gauge(
        r,
        "endpoints",
        "Local endpoints (pods) attached to the datapath",
        s.endpoints as i64,
    );
    gauge(
        r,
        "ipam_allocated",
        "Pod addresses in use on this node",
        s.ips_allocated as i64,
    );
    gauge(
        r,
        "ipam_free",
        "Pod addresses left in this node's pod CIDR",
        s.ips_free as i64,
    );
    gauge(
        r,
        "remote_nodes",
        "Other nodes this node routes to",
        s.remote_nodes.len() as i64,
    );
    gauge(
        r,
        "services",
        "Service frontends programmed in the datapath",
        s.services as i64,
    );
    gauge(
        r,
        "service_backends",
        "Distinct service backends programmed",
        s.backends as i64,
    );
    gauge(
        r,
        "conntrack_entries",
        "Entries in the connection-tracking map",
        s.conntrack_entries as i64,
    );
    let pressure = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let fill = if s.conntrack_max > 0 {
        s.conntrack_entries as f64 / s.conntrack_max as f64
    } else {
        0.0
    };
    pressure
        .get_or_create(&vec![("map_name".into(), "conntrack".into())])
        .set(fill);
    for (map, entries, max) in &s.map_pressure {
        if *max > 0 {
            pressure
                .get_or_create(&vec![("map_name".into(), map.clone())])
                .set(*entries as f64 / *max as f64);
        }
    }
    r.register(
        "bpf_map_pressure",
        "Fill ratio of a BPF map (entries / capacity)",
        pressure,
    );
    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    for c in &s.counters {
        let labels = vec![
            ("point".to_string(), c.point.clone()),
            ("outcome".to_string(), c.outcome.clone()),
            ("reason".to_string(), c.reason.clone()),
        ];
        packets.get_or_create(&labels).inc_by(c.packets);
        bytes.get_or_create(&labels).inc_by(c.bytes);
    }
    r.register(
        "datapath_packets",
        "Packets seen by the datapath, by observation point and outcome",
        packets,
    );
    r.register(
        "datapath_bytes",
        "Bytes seen by the datapath, by observation point and outcome",
        bytes,
    );
    gauge(
        r,
        "policy_entries",
        "Policy entries programmed for local endpoints",
        s.policy_entries as i64,
    );
    gauge(
        r,
        "ipcache_entries",
        "Addresses with a known identity in the ipcache",
        s.ipcache_entries as i64,
    );
    gauge(
        r,
        "source_connected",
        "1 when the desired-state source (API server or manifest directory) was reachable on its latest read",
        i64::from(s.source_connected),
    );
    gauge(
        r,
        "identities",
        "Security identities this agent has resolved",
        s.identities as i64,
    );
    if let Some(kv) = &s.kvstore {
        gauge(
            r,
            "kvstore_connected",
            "1 while the etcd session is up",
            i64::from(kv.connected),
        );
        gauge(
            r,
            "kvstore_remote_endpoints",
            "Other nodes' endpoints known from etcd",
            kv.remote_endpoints as i64,
        );
        gauge(
            r,
            "kvstore_ignored_keys",
            "Keys under the kvstore prefix ignored as corrupt or foreign",
            kv.ignored as i64,
        );
    }
    let lost = Gauge::<i64>::default();
    lost.set(s.flow_events_lost as i64);
    r.register(
        "flow_events_lost",
        "Flow events the datapath ring buffer had no room for (kernel counter)",
        lost,
    );
    let mut text = String::new();
    encode(&mut text, &root).expect("writing to a String cannot fail");
    text
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    core: mpsc::Sender<Command>,
    agent: AgentMetrics,
    flows: Option<FlowMetrics>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let core = core.clone();
        let flows = flows.clone();
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let (status, body) = if head.starts_with(b"GET /metrics ")
                || head.starts_with(b"GET /metrics?")
            {
                let (tx, rx) = oneshot::channel();
                match core.send(Command::Api(Request::Status, tx)) {
                    Ok(()) => match rx.await {
                        Ok(Response::Status(s)) => ("200 OK", render(&s, &agent, flows.as_ref())),
                        _ => ("503 Service Unavailable", "agent unavailable\n".to_string()),
                    },
                    Err(_) => (
                        "503 Service Unavailable",
                        "agent shutting down\n".to_string(),
                    ),
                }
            } else {
                ("404 Not Found", "only /metrics lives here\n".to_string())
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_pressure_and_counters() {
        let status = AgentStatus {
            node: "n1".into(),
            routing: "native".into(),
            pod_cidr: None,
            node_ip: None,
            ready: true,
            endpoints: 3,
            ips_allocated: 3,
            ips_free: 251,
            remote_nodes: vec![],
            source: "files:/x".into(),
            uptime_seconds: 1,
            pin_path: "/sys/fs/bpf/x".into(),
            problems: vec![],
            socket_lb: true,
            conntrack_entries: 16384,
            conntrack_max: 65536,
            services: 7,
            backends: 5,
            counters: vec![sluice_api::Counter {
                point: "from-endpoint".into(),
                outcome: "drop".into(),
                reason: "invalid-source-ip".into(),
                packets: 42,
                bytes: 4200,
            }],
            policies: 0,
            policy_entries: 0,
            ipcache_entries: 0,
            flow_events_lost: 9,
            map_pressure: vec![("policy".into(), 16, 64)],
            hubble_socket: None,
            source_connected: true,
            kvstore: Some(sluice_api::KvstoreStatus {
                connected: true,
                remote_endpoints: 4,
                ..Default::default()
            }),
            ..Default::default()
        };
        let agent = AgentMetrics::default();
        agent.observe_reconcile("policy", std::time::Duration::from_micros(300));
        let text = render(&status, &agent, None);
        for line in [
            "sluice_flow_events_lost 9",
            "sluice_reconcile_duration_seconds_count{kind=\"policy\"} 1",
            "sluice_services 7",
            "sluice_endpoints 3",
            "sluice_bpf_map_pressure{map_name=\"conntrack\"} 0.25",
            "sluice_bpf_map_pressure{map_name=\"policy\"} 0.25",
            "sluice_datapath_packets_total{point=\"from-endpoint\",outcome=\"drop\",reason=\"invalid-source-ip\"} 42",
            "sluice_source_connected 1",
            "sluice_kvstore_connected 1",
            "sluice_kvstore_remote_endpoints 4",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }
}
