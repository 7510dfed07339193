//! EndpointSlices (discovery.k8s.io/v1): the endpoints of services sluice does not compute
//! itself — those without a selector in the manifest source, and every service once the
//! Kubernetes source feeds the slices the endpoint-slice controller writes.

use std::net::Ipv4Addr;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::service::Protocol;

/// The label that ties a slice to its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    /// Matches the service port of the same name ("" for an unnamed single port).
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<Ipv4Addr>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSliceInfo {
    pub namespace: String,
    pub name: String,
    /// "namespace/name" of the service the slice belongs to.
    pub service: String,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

impl EndpointSliceInfo {
    /// `Ok(None)` for slices sluice does not use (IPv6/FQDN address types); errors name the
    /// slice, field and value.
    pub fn from_slice(slice: &EndpointSlice) -> Result<Option<Self>, String> {
        let name = slice
            .metadata
            .name
            .clone()
            .ok_or("EndpointSlice: metadata.name is missing")?;
        let namespace = slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let at =
            |field: &str, msg: String| format!("EndpointSlice {namespace}/{name}: {field}: {msg}");
        if slice.address_type != "IPv4" {
            return Ok(None);
        }
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .ok_or_else(|| {
                at(
                    "metadata.labels",
                    format!("the {SERVICE_NAME_LABEL} label is missing"),
                )
            })?;
        let mut ports = Vec::new();
        for (i, p) in slice.ports.iter().flatten().enumerate() {
            let field = |f: &str| format!("ports[{i}].{f}");
            let number = p
                .port
                .ok_or_else(|| at(&field("port"), "is missing".into()))?;
            let port = u16::try_from(number)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| at(&field("port"), format!("{number} is outside 1..=65535")))?;
            let protocol =
                Protocol::parse(p.protocol.as_deref()).map_err(|m| at(&field("protocol"), m))?;
            ports.push(SlicePort {
                name: p.name.clone().unwrap_or_default(),
                port,
                protocol,
            });
        }
        let mut endpoints = Vec::new();
        for (i, e) in slice.endpoints.iter().enumerate() {
            let addresses = e
                .addresses
                .iter()
                .enumerate()
                .map(|(j, a)| {
                    a.parse().map_err(|_| {
                        at(
                            &format!("endpoints[{i}].addresses[{j}]"),
                            format!("{a:?} is not an IPv4 address"),
                        )
                    })
                })
                .collect::<Result<Vec<Ipv4Addr>, String>>()?;
            // Unknown readiness counts as ready, unknown serving follows ready (API semantics).
            let c = e.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            endpoints.push(SliceEndpoint {
                addresses,
                ready,
                serving: c.serving.unwrap_or(ready),
                terminating: c.terminating.unwrap_or(false),
                node_name: e.node_name.clone(),
            });
        }
        Ok(Some(EndpointSliceInfo {
            service: format!("{namespace}/{service}"),
            namespace,
            name,
            ports,
            endpoints,
        }))
    }
}
