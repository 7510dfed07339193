//! Flow observability: datapath events become Hubble flows with Kubernetes names, kept in a
//! bounded ring, counted in Hubble's metrics, and served over Hubble's Observer gRPC API.

pub mod directory;
pub mod enrich;
pub mod filter;
pub mod flow_metrics;
mod refresh;
pub mod ring;
pub mod server;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use aya::maps::{MapData, RingBuf};
use sluice_datapath::abi::FlowEvent;
use sluice_datapath::EventsLostCounter;
use sluice_hubble_api::flow::LostEventSource;
use sluice_hubble_api::observer::observer_server::ObserverServer;

pub use directory::FlowDirectory;
pub use flow_metrics::FlowMetrics;
use ring::FlowRing;
use server::Record;

pub type SharedDirectory = Arc<RwLock<Arc<FlowDirectory>>>;

/// The cluster name flows carry (sluice runs one cluster).
pub const CLUSTER_NAME: &str = "default";

/// The datapath's setting for a configured aggregation level.
pub fn datapath_aggregation(level: sluice_api::config::MonitorAggregation) -> u8 {
    match level {
        sluice_api::config::MonitorAggregation::None => sluice_datapath::abi::AGGREGATION_NONE,
        sluice_api::config::MonitorAggregation::Medium => sluice_datapath::abi::AGGREGATION_MEDIUM,
    }
}

/// What the event reader, the gRPC service and `/metrics` share.
pub struct Observer {
    pub ring: FlowRing<Record>,
    pub directory: SharedDirectory,
    pub metrics: FlowMetrics,
    pub node_name: String,
    pub started: Instant,
    /// Turns the datapath's monotonic event times into wall time.
    pub clock: enrich::BootClock,
}

impl Observer {
    pub fn new(node_name: &str, capacity: usize) -> Self {
        Self {
            ring: FlowRing::new(capacity),
            directory: Arc::new(RwLock::new(Arc::new(FlowDirectory::default()))),
            metrics: FlowMetrics::default(),
            node_name: node_name.to_string(),
            started: Instant::now(),
            clock: enrich::BootClock::now(),
        }
    }

    fn directory(&self) -> Arc<FlowDirectory> {
        self.directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Resolves one ring-buffer record's names in `dir`, counts it and keeps it.
    pub fn ingest(&self, bytes: &[u8], dir: &FlowDirectory) {
        let Some(ev) = FlowEvent::from_bytes(bytes) else {
            tracing::warn!(len = bytes.len(), "short flow event");
            return;
        };
        if let Some(observed) = enrich::resolve(&ev, dir) {
            self.metrics.count(&observed.ev);
            self.ring.push(Record::Flow(observed));
        }
    }

    fn report_lost(&self, n: u64) {
        tracing::warn!(lost = n, "the datapath's event ring buffer overflowed");
        self.metrics.lost(LostEventSource::PerfEventRingBuffer, n);
        self.ring.push(Record::Lost(Box::new(server::lost_response(
            &self.node_name,
            LostEventSource::PerfEventRingBuffer,
            n,
        ))));
    }
}

/// How often the reader drains the ring buffer while events flow. The datapath does not wake
/// it per event (a busy node would switch to the agent for every connection), only when
/// unread events fill an eighth of the ring, which takes far longer than this at any rate
/// seen here.
const EVENT_READ_INTERVAL: Duration = Duration::from_millis(10);

/// The longest wait between reads of a quiet ring: each read that finds nothing doubles
/// the wait up to this, so an idle agent wakes ten times a second instead of a hundred,
/// and a flow after a quiet spell is seen within this long.
const EVENT_READ_IDLE_INTERVAL: Duration = Duration::from_millis(100);

/// The wait before the next read, after a read that found `read` events.
fn next_read_interval(current: Duration, read: usize) -> Duration {
    if read > 0 {
        EVENT_READ_INTERVAL
    } else {
        (current * 2).min(EVENT_READ_IDLE_INTERVAL)
    }
}

/// How often the kernel's count of events the ring had no room for is checked.
const LOST_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Reads the datapath's ring buffer until the process ends, on its own thread: it blocks in
/// poll(2) on the ring until the datapath wakes it or the read interval passes, so reading
/// costs one wakeup per batch and no async runtime's timers or cross-thread wakeups. Checks
/// the loss counter every second.
pub fn read_events(
    observer: Arc<Observer>,
    mut events: RingBuf<MapData>,
    lost: EventsLostCounter,
) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = events.as_raw_fd();
    let mut lost_seen = lost.total().unwrap_or(0);
    let mut lost_checked = Instant::now();
    let mut interval = EVENT_READ_INTERVAL;
    loop {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, owned by this frame, for the duration of the call.
        let rc = unsafe { libc::poll(&mut poll, 1, interval.as_millis() as libc::c_int) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("waiting for flow events");
            }
        }
        let read = drain(&observer, &mut events);
        interval = next_read_interval(interval, read);
        if lost_checked.elapsed() >= LOST_CHECK_INTERVAL {
            lost_checked = Instant::now();
            if let Ok(now) = lost.total() {
                if now > lost_seen {
                    observer.report_lost(now - lost_seen);
                    lost_seen = now;
                }
            }
        }
    }
}

/// Ingests what the ring holds, all against the directory as it is now (one read per
/// batch); returns how many records it read.
fn drain(observer: &Observer, ring: &mut RingBuf<MapData>) -> usize {
    let dir = observer.directory();
    let mut read = 0;
    while let Some(item) = ring.next() {
        observer.ingest(&item, &dir);
        read += 1;
    }
    read
}

/// A flow event as the ring buffer carries it (for tests).
#[cfg(test)]
pub(crate) fn record_bytes(ev: &FlowEvent) -> Vec<u8> {
    // SAFETY: FlowEvent is plain repr(C) data; viewing it as bytes reads no padding the
    // kernel would not also send.
    unsafe {
        std::slice::from_raw_parts(
            ev as *const FlowEvent as *const u8,
            std::mem::size_of::<FlowEvent>(),
        )
    }
    .to_vec()
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
    use super::flow_metrics::exposition;
    use super::*;

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
        let bytes = record_bytes(&ev);
        let dir = obs.directory();
        obs.ingest(&bytes, &dir);
        obs.ingest(&bytes[..10], &dir);
        assert_eq!(obs.ring.stats(), (1, 8, 1), "a short record is not a flow");
        let text = exposition(&obs.metrics);
        assert!(text.contains(
            "hubble_flows_processed_total{type=\"Drop\",subtype=\"\",verdict=\"DROPPED\"} 1"
        ));
        assert!(text.contains("hubble_drop_total{reason=\"POLICY_DENIED\",protocol=\"UDP\"} 1"));
    }

    #[test]
    fn a_quiet_ring_is_read_less_often_and_a_busy_one_at_once_again() {
        let mut interval = EVENT_READ_INTERVAL;
        let mut waits = Vec::new();
        for _ in 0..6 {
            interval = next_read_interval(interval, 0);
            waits.push(interval.as_millis());
        }
        assert_eq!(waits, [20, 40, 80, 100, 100, 100]);
        assert_eq!(next_read_interval(interval, 3), EVENT_READ_INTERVAL);
    }

    #[test]
    fn lost_events_reach_readers_and_metrics() {
        let obs = Observer::new("n1", 8);
        obs.report_lost(42);
        let kept = obs.ring.snapshot();
        let Record::Lost(lost) = &*kept[0] else {
            panic!("a lost-events record");
        };
        let Some(sluice_hubble_api::observer::get_flows_response::ResponseTypes::LostEvents(l)) =
            &lost.response_types
        else {
            panic!("a lost-events record");
        };
        assert_eq!(l.num_events_lost, 42);
        assert_eq!(l.source, LostEventSource::PerfEventRingBuffer as i32);
        assert!(exposition(&obs.metrics)
            .contains("hubble_lost_events_total{source=\"perf_event_ring_buffer\"} 42"));
    }
}
