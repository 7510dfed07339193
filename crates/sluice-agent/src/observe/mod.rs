//! Flow observability: datapath events become Hubble flows with Kubernetes names, kept in a
//! bounded ring, counted in Hubble's metrics, and served over Hubble's Observer gRPC API.

pub mod directory;
pub mod enrich;
pub mod filter;
mod refresh;
pub mod ring;
pub mod server;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use aya::maps::{MapData, RingBuf};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sluice_datapath::abi::FlowEvent;
use sluice_datapath::EventsLostCounter;
use sluice_hubble_api::flow::{self, LostEventSource};
use sluice_hubble_api::observer::observer_server::ObserverServer;
use sluice_hubble_api::observer::GetFlowsResponse;
use tokio::io::unix::AsyncFd;

pub use directory::FlowDirectory;
use ring::FlowRing;

pub type SharedDirectory = Arc<RwLock<Arc<FlowDirectory>>>;

/// The cluster name flows carry (sluice runs one cluster).
pub const CLUSTER_NAME: &str = "default";

type Labels = Vec<(String, String)>;

/// Hubble's flow metrics, fed by the event reader and exposed on `/metrics`.
#[derive(Default, Clone)]
pub struct FlowMetrics {
    pub flows_processed: Family<Labels, Counter>,
    pub drops: Family<Labels, Counter>,
    pub policy_verdicts: Family<Labels, Counter>,
    pub lost_events: Family<Labels, Counter>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl FlowMetrics {
    fn count(&self, f: &flow::Flow) {
        let verdict = flow::Verdict::try_from(f.verdict)
            .map(|v| v.as_str_name())
            .unwrap_or("VERDICT_UNKNOWN");
        let event = f.event_type.as_ref().map(|e| e.r#type).unwrap_or(0);
        let (kind, subtype) = match event {
            enrich::MONITOR_DROP => ("Drop", String::new()),
            enrich::MONITOR_POLICY_VERDICT => ("PolicyVerdict", String::new()),
            enrich::MONITOR_TRACE_SOCK => ("Sock", String::new()),
            _ => (
                "Trace",
                flow::TraceObservationPoint::try_from(f.trace_observation_point)
                    .map(|p| p.as_str_name().to_ascii_lowercase().replace('_', "-"))
                    .unwrap_or_default(),
            ),
        };
        self.flows_processed
            .get_or_create(&labels(&[
                ("type", kind),
                ("subtype", &subtype),
                ("verdict", verdict),
            ]))
            .inc();
        let protocol = protocol_name(f);
        if event == enrich::MONITOR_DROP {
            let reason = flow::DropReason::try_from(f.drop_reason_desc)
                .map(|r| r.as_str_name().to_string())
                .unwrap_or_else(|_| f.drop_reason_desc.to_string());
            self.drops
                .get_or_create(&labels(&[("reason", &reason), ("protocol", protocol)]))
                .inc();
        }
        if event == enrich::MONITOR_POLICY_VERDICT {
            let direction = if f.traffic_direction == flow::TrafficDirection::Ingress as i32 {
                "ingress"
            } else {
                "egress"
            };
            let matched = match f.policy_match_type {
                enrich::MATCH_L3_ONLY => "l3-only",
                enrich::MATCH_L3_L4 => "l3-l4",
                enrich::MATCH_L4_ONLY => "l4-only",
                enrich::MATCH_ALL => "all",
                _ => "none",
            };
            let action = if f.verdict == flow::Verdict::Forwarded as i32 {
                "forwarded"
            } else {
                "dropped"
            };
            self.policy_verdicts
                .get_or_create(&labels(&[
                    ("direction", direction),
                    ("match", matched),
                    ("action", action),
                ]))
                .inc();
        }
    }

    fn lost(&self, source: LostEventSource, n: u64) {
        let source = source.as_str_name().to_ascii_lowercase();
        self.lost_events
            .get_or_create(&labels(&[("source", &source)]))
            .inc_by(n);
    }
}

fn protocol_name(f: &flow::Flow) -> &'static str {
    use flow::layer4::Protocol;
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(_)) => "TCP",
        Some(Protocol::Udp(_)) => "UDP",
        Some(Protocol::Sctp(_)) => "SCTP",
        Some(Protocol::IcmPv4(_)) => "ICMPv4",
        Some(Protocol::IcmPv6(_)) => "ICMPv6",
        None => "Unknown",
    }
}

/// The datapath's setting for a configured aggregation level.
pub fn datapath_aggregation(level: sluice_api::config::MonitorAggregation) -> u8 {
    match level {
        sluice_api::config::MonitorAggregation::None => sluice_datapath::abi::AGGREGATION_NONE,
        sluice_api::config::MonitorAggregation::Medium => sluice_datapath::abi::AGGREGATION_MEDIUM,
    }
}

/// What the event reader, the gRPC service and `/metrics` share.
pub struct Observer {
    pub ring: FlowRing<GetFlowsResponse>,
    pub directory: SharedDirectory,
    pub metrics: FlowMetrics,
    pub node_name: String,
    pub started: Instant,
}

impl Observer {
    pub fn new(node_name: &str, capacity: usize) -> Self {
        Self {
            ring: FlowRing::new(capacity),
            directory: Arc::new(RwLock::new(Arc::new(FlowDirectory::default()))),
            metrics: FlowMetrics::default(),
            node_name: node_name.to_string(),
            started: Instant::now(),
        }
    }

    fn directory(&self) -> Arc<FlowDirectory> {
        self.directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Turns one ring-buffer record into a flow and keeps it.
    pub fn ingest(&self, bytes: &[u8], clock: &enrich::BootClock) {
        let Some(ev) = FlowEvent::from_bytes(bytes) else {
            tracing::warn!(len = bytes.len(), "short flow event");
            return;
        };
        let dir = self.directory();
        if let Some(f) = enrich::to_flow(&ev, &dir, clock, CLUSTER_NAME) {
            self.metrics.count(&f);
            self.ring.push(server::flow_response(f));
        }
    }

    fn report_lost(&self, n: u64) {
        tracing::warn!(lost = n, "the datapath's event ring buffer overflowed");
        self.metrics.lost(LostEventSource::PerfEventRingBuffer, n);
        self.ring.push(server::lost_response(
            &self.node_name,
            LostEventSource::PerfEventRingBuffer,
            n,
        ));
    }
}

/// How long the reader waits after draining the ring buffer before it reads again. The
/// kernel wakes a reader that has caught up on every event, so without a pause a busy node
/// (thousands of new connections per second) would switch to the agent for each of them; the
/// ring holds far more than this many milliseconds of events.
const EVENT_BATCH_WAIT: Duration = Duration::from_millis(2);

/// Reads the datapath's ring buffer until the process ends; checks the loss counter after
/// every batch and every second.
pub async fn read_events(
    observer: Arc<Observer>,
    events: RingBuf<MapData>,
    lost: EventsLostCounter,
) -> anyhow::Result<()> {
    // The ring buffer owns its descriptor for as long as the AsyncFd lives.
    #[allow(deprecated)]
    let mut fd = AsyncFd::new(events).context("polling the flow event ring buffer")?;
    let clock = enrich::BootClock::now();
    let mut lost_seen = lost.total().unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard.context("waiting for flow events")?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    observer.ingest(&item, &clock);
                }
                guard.clear_ready();
                drop(guard);
                // Let events gather: one wakeup per batch instead of one per connection.
                tokio::time::sleep(EVENT_BATCH_WAIT).await;
            }
            _ = tick.tick() => {}
        }
        if let Ok(now) = lost.total() {
            if now > lost_seen {
                observer.report_lost(now - lost_seen);
                lost_seen = now;
            }
        }
    }
}

/// Serves the Observer API (and gRPC health) on a unix socket, and on TCP when configured.
pub async fn serve(
    observer: Arc<Observer>,
    socket: &Path,
    tcp: Option<std::net::SocketAddr>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    use sluice_hubble_api::tonic::transport::Server;
    let (reporter, health) = sluice_hubble_api::tonic_health::server::health_reporter();
    reporter
        .set_service_status(
            sluice_hubble_api::HEALTH_SERVICE,
            sluice_hubble_api::tonic_health::ServingStatus::Serving,
        )
        .await;
    let _ = std::fs::remove_file(socket);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let uds = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("hubble.socket: binding {}", socket.display()))?;
    let mut tasks = Vec::new();
    let router = || {
        Server::builder()
            .add_service(health.clone())
            .add_service(ObserverServer::new(server::ObserverService(
                observer.clone(),
            )))
    };
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(uds);
    let unix = router();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = unix.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "hubble unix socket server stopped");
        }
    }));
    if let Some(addr) = tcp {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("hubble.listenAddress: binding {addr}"))?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let tcp = router();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = tcp.serve_with_incoming(incoming).await {
                tracing::error!(error = %e, "hubble TCP server stopped");
            }
        }));
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    fn exposition(m: &FlowMetrics) -> String {
        let mut r = Registry::default();
        let h = r.sub_registry_with_prefix("hubble");
        h.register("flows_processed", "", m.flows_processed.clone());
        h.register("drop", "", m.drops.clone());
        h.register("lost_events", "", m.lost_events.clone());
        let mut text = String::new();
        encode(&mut text, &r).unwrap();
        text
    }

    #[test]
    fn ingested_events_are_kept_and_counted() {
        let obs = Observer::new("n1", 8);
        let ev = FlowEvent {
            r#type: sluice_datapath::abi::EVENT_DROP,
            point: sluice_datapath::abi::POINT_TO_ENDPOINT,
            reason: sluice_datapath::abi::DROP_POLICY_DENIED,
            proto: 17,
            saddr: 0x0100000a,
            daddr: 0x0200000a,
            ..Default::default()
        };
        // SAFETY: FlowEvent is plain repr(C) data; viewing it as bytes reads no padding
        // the kernel would not also send.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                &ev as *const FlowEvent as *const u8,
                std::mem::size_of::<FlowEvent>(),
            )
        };
        obs.ingest(bytes, &enrich::BootClock::now());
        obs.ingest(&bytes[..10], &enrich::BootClock::now());
        assert_eq!(obs.ring.stats(), (1, 8, 1), "a short record is not a flow");
        let text = exposition(&obs.metrics);
        assert!(text.contains(
            "hubble_flows_processed_total{type=\"Drop\",subtype=\"\",verdict=\"DROPPED\"} 1"
        ));
        assert!(text.contains("hubble_drop_total{reason=\"POLICY_DENIED\",protocol=\"UDP\"} 1"));
    }

    #[test]
    fn lost_events_reach_readers_and_metrics() {
        let obs = Observer::new("n1", 8);
        obs.report_lost(42);
        let kept = obs.ring.snapshot();
        let Some(sluice_hubble_api::observer::get_flows_response::ResponseTypes::LostEvents(l)) =
            &kept[0].response_types
        else {
            panic!("a lost-events record");
        };
        assert_eq!(l.num_events_lost, 42);
        assert_eq!(l.source, LostEventSource::PerfEventRingBuffer as i32);
        assert!(exposition(&obs.metrics)
            .contains("hubble_lost_events_total{source=\"perf_event_ring_buffer\"} 42"));
    }
}
