//! The agent's policy work on the core thread: reconciling after every change, and answering
//! `sluice endpoint get`, `sluice policy get` and `sluice policy trace`.

use std::net::Ipv4Addr;
use std::time::Instant;

use sluice_api::{ApiError, EndpointDetail, ErrorKind, PolicySummary, PolicyTrace};
use sluice_model::policy::{trace, AddressKind, FlowPeer};
use sluice_model::{PodInfo, Protocol};

use crate::core::Core;
use crate::policy::LocalEndpoint;
use crate::store::Phase;

impl Core {
    /// Brings identities, ipcache and policy entries in line with `desired` and the local
    /// endpoints. Runs after every snapshot and every endpoint added or deleted.
    pub(crate) fn reconcile_policy(&mut self) {
        let Some(node) = &self.node else { return };
        let local: Vec<LocalEndpoint> = self
            .records
            .values()
            .filter(|r| matches!(r.phase, Phase::Ready(_)))
            .map(|r| LocalEndpoint {
                address: r.address,
                pod: r.pod.clone(),
            })
            .collect();
        let started = Instant::now();
        // Until etcd has answered once, other nodes' pods come from the desired state, so a
        // restart while etcd is away leaves the ipcache as it was.
        let remote = self
            .cluster
            .as_ref()
            .map(|view| view.remote_endpoints(&node.info.name));
        let changes = self.policy.reconcile(
            &mut self.dp,
            &self.desired,
            &node.info,
            &local,
            remote.as_ref(),
        );
        self.metrics.observe_reconcile("policy", started.elapsed());
        if changes.written + changes.removed > 0 {
            tracing::info!(
                written = changes.written,
                removed = changes.removed,
                micros = started.elapsed().as_micros() as u64,
                "policy reconciled"
            );
        }
        for p in &changes.problems {
            tracing::error!("{p}");
        }
        self.policy_problems = changes.problems;
        self.publish_to_kvstore();
    }

    /// Tells the kvstore session what this node has: its node record and every ready local
    /// endpoint with the identity programmed for it.
    fn publish_to_kvstore(&self) {
        let (Some(kv), Some(node)) = (&self.kvstore, &self.node) else {
            return;
        };
        let endpoints = self
            .records
            .values()
            .filter(|r| matches!(r.phase, Phase::Ready(_)))
            .filter_map(|r| {
                let pod = r.pod.as_ref()?;
                let identity = self.policy.endpoint_bits(r.address).0;
                (identity != 0).then(|| crate::kvstore::EndpointRecord {
                    ip: r.address,
                    identity,
                    node: node.info.name.clone(),
                    node_ip: node.info.address,
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                })
            })
            .collect();
        kv.publish(crate::kvstore::Publication {
            node: Some(crate::kvstore::NodeRecord {
                name: node.info.name.clone(),
                address: node.info.address,
                pod_cidr: node.info.pod_cidr,
            }),
            endpoints,
        });
    }

    pub(crate) fn endpoint_detail(&self, pod: &str) -> Result<EndpointDetail, ApiError> {
        let address = match pod.parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                let (ns, name) = split_pod(pod)?;
                self.policy.address_of(ns, name)
            }
        };
        address.and_then(|a| self.policy.detail(a)).ok_or_else(|| {
            let elsewhere = self
                .desired
                .pods
                .get(pod)
                .and_then(|p| p.node_name.clone())
                .map(|n| format!(" (it runs on node {n})"))
                .unwrap_or_default();
            ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "{pod:?} is not an endpoint of node {}{elsewhere}",
                    self.cfg.node_name
                ),
            )
        })
    }

    pub(crate) fn policy_list(&self) -> Vec<PolicySummary> {
        self.desired
            .policies
            .values()
            .map(|p| PolicySummary {
                name: p.key(),
                types: [
                    ("Ingress", p.ingress.is_some()),
                    ("Egress", p.egress.is_some()),
                ]
                .into_iter()
                .filter(|(_, on)| *on)
                .map(|(t, _)| t.to_string())
                .collect(),
                selects: p
                    .selected_pods(&self.desired)
                    .iter()
                    .map(|pod| format!("{}/{}", pod.namespace, pod.name))
                    .collect(),
            })
            .collect()
    }

    pub(crate) fn policy_trace(
        &self,
        from: &str,
        to: &str,
        protocol: &str,
        port: u16,
    ) -> Result<PolicyTrace, ApiError> {
        let protocol = Protocol::parse(Some(&protocol.to_ascii_uppercase()))
            .map_err(|e| ApiError::new(ErrorKind::InvalidArgument, format!("protocol: {e}")))?;
        if port == 0 {
            return Err(ApiError::new(
                ErrorKind::InvalidArgument,
                "port: 0 is outside 1..=65535",
            ));
        }
        let from_pod = self.traced_pod("from", from)?;
        let to_pod = self.traced_pod("to", to)?;
        // An address is the host when it is the node of the pod on the other side.
        let other_node = |pod: &Option<PodInfo>| pod.as_ref().and_then(|p| p.node_name.clone());
        let from_peer = self.peer("from", from, &from_pod, other_node(&to_pod))?;
        let to_peer = self.peer("to", to, &to_pod, other_node(&from_pod))?;
        let result = trace(&self.desired, from_peer, to_peer, protocol.number(), port);
        Ok(PolicyTrace {
            allowed: result.allowed,
            explanation: result.to_string(),
        })
    }

    /// The pod `what` names ("namespace/name"), with its address filled in from this node's
    /// endpoints when the desired state does not have it yet. None for an address.
    fn traced_pod(&self, field: &str, what: &str) -> Result<Option<PodInfo>, ApiError> {
        if what.parse::<Ipv4Addr>().is_ok() {
            return Ok(None);
        }
        split_pod(what).map_err(|e| ApiError::new(e.kind, format!("{field}: {}", e.msg)))?;
        let mut pod = self.desired.pods.get(what).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                format!("{field}: no pod {what:?} in the desired state"),
            )
        })?;
        if pod.ip.is_none() {
            let (ns, name) = (pod.namespace.clone(), pod.name.clone());
            pod.ip = self.policy.address_of(&ns, &name);
        }
        Ok(Some(pod))
    }

    fn peer<'a>(
        &'a self,
        field: &str,
        what: &str,
        pod: &'a Option<PodInfo>,
        other_node: Option<String>,
    ) -> Result<FlowPeer<'a>, ApiError> {
        if let Some(p) = pod {
            return Ok(FlowPeer::Pod(p));
        }
        let ip: Ipv4Addr = what.parse().map_err(|_| {
            ApiError::new(
                ErrorKind::InvalidArgument,
                format!("{field}: {what:?} is neither namespace/name nor an IPv4 address"),
            )
        })?;
        if let Some(p) = self.desired.pods.values().find(|p| p.ip == Some(ip)) {
            return Ok(FlowPeer::Pod(p));
        }
        let kind = match self.desired.nodes.values().find(|n| n.address == ip) {
            Some(n) if Some(&n.name) == other_node.as_ref() => AddressKind::Host,
            Some(_) => AddressKind::RemoteNode,
            None => AddressKind::World,
        };
        Ok(FlowPeer::Address { ip, kind })
    }
}

fn split_pod(pod: &str) -> Result<(&str, &str), ApiError> {
    match pod.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns, name))
        }
        _ => Err(ApiError::new(
            ErrorKind::InvalidArgument,
            format!("{pod:?} is not namespace/name (or an IPv4 address)"),
        )),
    }
}
