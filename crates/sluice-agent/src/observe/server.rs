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

use super::filter::Filters;
use super::Observer;

pub struct ObserverService(pub Arc<Observer>);

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

fn before(a: &Timestamp, b: &Timestamp) -> bool {
    (a.seconds, a.nanos) < (b.seconds, b.nanos)
}

/// Whether a buffered response passes the request's filters and time window.
fn selected(
    r: &GetFlowsResponse,
    filters: &Filters,
    since: Option<&Timestamp>,
    until: Option<&Timestamp>,
) -> bool {
    if let (Some(t), Some(s)) = (&r.time, since) {
        if before(t, s) {
            return false;
        }
    }
    if let (Some(t), Some(u)) = (&r.time, until) {
        if before(u, t) {
            return false;
        }
    }
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => filters.matches(f),
        // Losses are news to every reader, whatever it filters on.
        _ => true,
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
        let mut chosen: Vec<_> = past
            .into_iter()
            .filter(|r| selected(r, &filters, req.since.as_ref(), req.until.as_ref()))
            .collect();
        if req.number > 0 {
            let n = (req.number as usize).min(chosen.len());
            if req.first {
                chosen.truncate(n);
            } else {
                chosen.drain(..chosen.len() - n);
            }
        }
        let (tx, rx) = mpsc::channel(256);
        let node_name = self.0.node_name.clone();
        let follow = req.follow;
        let until = req.until;
        tokio::spawn(async move {
            for r in chosen {
                if tx.send(Ok((*r).clone())).await.is_err() {
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
                    Ok(r) if selected(&r, &filters, None, until.as_ref()) => (*r).clone(),
                    Ok(_) => continue,
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
            if let Some(ResponseTypes::Flow(f)) = &r.response_types {
                for ep in [&f.source, &f.destination].into_iter().flatten() {
                    if !ep.namespace.is_empty() {
                        seen.insert((ep.cluster_name.clone(), ep.namespace.clone()));
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
