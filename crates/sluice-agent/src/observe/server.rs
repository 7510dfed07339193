//! The `observer.Observer` gRPC service over the flow ring, as Hubble serves it.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sluice_hubble_api::flow::{self, LostEvent, LostEventSource};
use sluice_hubble_api::observer::get_flows_response::ResponseTypes;
use sluice_hubble_api::observer::observer_server::Observer as ObserverApi;
use sluice_hubble_api::observer::*;
use sluice_hubble_api::prost_types::Timestamp;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

use super::enrich::{self, BootClock, Observed};
use super::filter::Filters;
use super::{Observer, CLUSTER_NAME};

/// What the ring keeps: a resolved event (a flow once read) or a loss report.
#[derive(Debug, Clone)]
pub enum Record {
    Flow(Observed),
    /// Boxed: a response with room for a whole flow, and rare.
    Lost(Box<GetFlowsResponse>),
}

impl Record {
    fn time(&self, clock: &BootClock) -> Option<Timestamp> {
        match self {
            Record::Flow(o) => Some(enrich::flow_time(o, clock)),
            Record::Lost(r) => r.time,
        }
    }

    fn response(&self, clock: &BootClock) -> GetFlowsResponse {
        match self {
            Record::Flow(o) => flow_response(enrich::to_flow(o, clock, CLUSTER_NAME)),
            Record::Lost(r) => (**r).clone(),
        }
    }
}

pub struct ObserverService(pub Arc<Observer>);

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

fn before(a: &Timestamp, b: &Timestamp) -> bool {
    (a.seconds, a.nanos) < (b.seconds, b.nanos)
}

/// The response for a buffered record if it passes the request's time window and filters.
fn selected(
    r: &Record,
    clock: &BootClock,
    filters: &Filters,
    since: Option<&Timestamp>,
    until: Option<&Timestamp>,
) -> Option<GetFlowsResponse> {
    let time = r.time(clock);
    if let (Some(t), Some(s)) = (&time, since) {
        if before(t, s) {
            return None;
        }
    }
    if let (Some(t), Some(u)) = (&time, until) {
        if before(u, t) {
            return None;
        }
    }
    let response = r.response(clock);
    match &response.response_types {
        Some(ResponseTypes::Flow(f)) if !filters.matches(f) => None,
        // Losses are news to every reader, whatever it filters on.
        _ => Some(response),
    }
}

#[tonic::async_trait]
impl ObserverApi for ObserverService {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<FlowStream>, Status> {
        let req = request.into_inner();
        if req.first && req.follow {
            return Err(Status::invalid_argument(
                "first and follow cannot be combined",
            ));
        }
        let filters =
            Filters::new(req.whitelist, req.blacklist).map_err(Status::invalid_argument)?;
        let (past, mut live) = self.0.ring.snapshot_and_follow();
        let clock = self.0.clock;
        let pick =
            |r: &Arc<Record>| selected(r, &clock, &filters, req.since.as_ref(), req.until.as_ref());
        // Flows are built as they are picked: for the last N, walk from the newest.
        let limit = if req.number > 0 {
            req.number as usize
        } else {
            usize::MAX
        };
        let chosen: Vec<GetFlowsResponse> = if req.first || req.number == 0 {
            past.iter().filter_map(pick).take(limit).collect()
        } else {
            let mut newest: Vec<_> = past.iter().rev().filter_map(pick).take(limit).collect();
            newest.reverse();
            newest
        };
        let (tx, rx) = mpsc::channel(256);
        let node_name = self.0.node_name.clone();
        let follow = req.follow;
        let until = req.until;
        tokio::spawn(async move {
            for r in chosen {
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            loop {
                let next = tokio::select! {
                    next = live.recv() => next,
                    _ = tx.closed() => return,
                };
                let r = match next {
                    Ok(r) => match selected(&r, &clock, &filters, None, until.as_ref()) {
                        Some(r) => r,
                        None => continue,
                    },
                    Err(broadcast::error::RecvError::Lagged(n)) => GetFlowsResponse {
                        response_types: Some(ResponseTypes::LostEvents(LostEvent {
                            source: LostEventSource::HubbleRingBuffer as i32,
                            num_events_lost: n,
                            cpu: None,
                        })),
                        node_name: node_name.clone(),
                        time: Some(super::enrich::timestamp(std::time::SystemTime::now())),
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_nodes(
        &self,
        _: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let (num, max, seen) = self.0.ring.stats();
        Ok(Response::new(GetNodesResponse {
            nodes: vec![Node {
                name: self.0.node_name.clone(),
                version: version(),
                address: String::new(),
                state: NodeState::NodeConnected as i32,
                uptime_ns: self.0.started.elapsed().as_nanos() as u64,
                num_flows: num,
                max_flows: max,
                seen_flows: seen,
            }],
        }))
    }

    async fn get_namespaces(
        &self,
        _: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let mut seen = BTreeSet::new();
        for r in self.0.ring.snapshot() {
            if let Record::Flow(o) = &*r {
                for ep in [&o.src, &o.dst] {
                    // Pods have a namespace; the host, nodes and the world do not.
                    if !ep.namespace.is_empty() {
                        seen.insert((CLUSTER_NAME.to_string(), ep.namespace.clone()));
                    }
                }
            }
        }
        Ok(Response::new(GetNamespacesResponse {
            namespaces: seen
                .into_iter()
                .map(|(cluster, namespace)| Namespace { cluster, namespace })
                .collect(),
        }))
    }

    async fn server_status(
        &self,
        _: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let (num, max, seen) = self.0.ring.stats();
        let uptime = self.0.started.elapsed();
        Ok(Response::new(ServerStatusResponse {
            num_flows: num,
            max_flows: max,
            seen_flows: seen,
            uptime_ns: uptime.as_nanos() as u64,
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            unavailable_nodes: Vec::new(),
            version: version(),
            flows_rate: seen as f64 / uptime.as_secs_f64().max(1.0),
        }))
    }
}

fn version() -> String {
    format!("sluice {}", env!("CARGO_PKG_VERSION"))
}

/// A flow response as the ring stores it.
pub fn flow_response(f: flow::Flow) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: f.node_name.clone(),
        time: f.time,
        response_types: Some(ResponseTypes::Flow(f)),
    }
}

/// A loss report as the ring stores it.
pub fn lost_response(node: &str, source: LostEventSource, n: u64) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: node.to_string(),
        time: Some(super::enrich::timestamp(std::time::SystemTime::now())),
        response_types: Some(ResponseTypes::LostEvents(LostEvent {
            source: source as i32,
            num_events_lost: n,
            cpu: None,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use sluice_datapath::abi::{self, FlowEvent};

    fn observer_with(n: u16) -> Arc<Observer> {
        let obs = Observer::new("n1", 8);
        for port in 1..=n {
            let ev = FlowEvent {
                ktime_ns: port as u64 * 1000,
                r#type: abi::EVENT_TRACE,
                point: abi::POINT_FROM_ENDPOINT,
                proto: 6,
                saddr: 0x0100000a,
                daddr: 0x0200000a,
                dport: port.to_be(),
                ..Default::default()
            };
            obs.ingest(&super::super::record_bytes(&ev), &obs.directory());
        }
        Arc::new(obs)
    }

    async fn ports(obs: &Arc<Observer>, req: GetFlowsRequest) -> Vec<u32> {
        let service = ObserverService(obs.clone());
        let stream = service.get_flows(Request::new(req)).await.unwrap();
        stream
            .into_inner()
            .map(|r| match r.unwrap().response_types {
                Some(ResponseTypes::Flow(f)) => match f.l4.unwrap().protocol.unwrap() {
                    flow::layer4::Protocol::Tcp(t) => t.destination_port,
                    _ => panic!("TCP"),
                },
                _ => panic!("a flow"),
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn the_last_or_first_n_matching_flows_come_oldest_first() {
        let obs = observer_with(5);
        let last = GetFlowsRequest {
            number: 2,
            ..Default::default()
        };
        assert_eq!(ports(&obs, last).await, vec![4, 5]);
        let first = GetFlowsRequest {
            number: 2,
            first: true,
            ..Default::default()
        };
        assert_eq!(ports(&obs, first).await, vec![1, 2]);
        let only_port_3 = GetFlowsRequest {
            number: 2,
            whitelist: vec![flow::FlowFilter {
                destination_port: vec!["3".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(ports(&obs, only_port_3).await, vec![3]);
        assert_eq!(
            ports(&obs, GetFlowsRequest::default()).await,
            vec![1, 2, 3, 4, 5]
        );
    }
}
