//! Services as the datapath needs them, and the endpoints the endpoint-slice controller would
//! compute for them from pod labels (the embedded mode has no controller to ask).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::state::PodInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Kubernetes spelling; absent means TCP.
    pub fn parse(text: Option<&str>) -> Result<Self, String> {
        match text.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!("{other:?} is not one of TCP, UDP, SCTP")),
        }
    }

    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved per pod.
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortInfo {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target: TargetPort,
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    pub type_: ServiceType,
    /// None for headless services (clusterIP: None) and ExternalName: nothing is programmed.
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePortInfo>,
    /// None: endpoints are managed by someone else (no selector).
    pub selector: Option<BTreeMap<String, String>>,
    pub external_ips: Vec<Ipv4Addr>,
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub internal_traffic_local: bool,
    pub external_traffic_local: bool,
    pub publish_not_ready: bool,
}

/// Kubernetes' default for `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

impl ServiceInfo {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn is_headless(&self) -> bool {
        self.cluster_ip.is_none()
    }

    /// From a Service object; errors name the field and value.
    pub fn from_service(svc: &Service) -> Result<Self, String> {
        let name = svc
            .metadata
            .name
            .clone()
            .ok_or("Service: metadata.name is missing")?;
        let namespace = svc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let at = |field: &str, msg: String| format!("Service {namespace}/{name}: {field}: {msg}");
        let spec = svc.spec.clone().unwrap_or_default();
        let type_ = match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "ClusterIP" => ServiceType::ClusterIp,
            "NodePort" => ServiceType::NodePort,
            "LoadBalancer" => ServiceType::LoadBalancer,
            "ExternalName" => ServiceType::ExternalName,
            other => {
                return Err(at(
                    "spec.type",
                    format!(
                        "{other:?} is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"
                    ),
                ))
            }
        };
        let cluster_ip = match spec.cluster_ip.as_deref() {
            None | Some("") | Some("None") => None,
            Some(text) => Some(parse_ip(text).map_err(|m| at("spec.clusterIP", m))?),
        };
        let cluster_ip = if type_ == ServiceType::ExternalName {
            None
        } else {
            cluster_ip
        };
        let mut ports = Vec::new();
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let field = |f: &str| format!("spec.ports[{i}].{f}");
            let port = port_number(p.port).map_err(|m| at(&field("port"), m))?;
            let protocol =
                Protocol::parse(p.protocol.as_deref()).map_err(|m| at(&field("protocol"), m))?;
            let target = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => {
                    TargetPort::Number(port_number(*n).map_err(|m| at(&field("targetPort"), m))?)
                }
                Some(IntOrString::String(s)) => match s.parse::<i32>() {
                    Ok(n) => {
                        TargetPort::Number(port_number(n).map_err(|m| at(&field("targetPort"), m))?)
                    }
                    Err(_) if s.is_empty() => {
                        return Err(at(&field("targetPort"), "empty port name".into()))
                    }
                    Err(_) => TargetPort::Name(s.clone()),
                },
            };
            let node_port = match p.node_port {
                None | Some(0) => None,
                Some(n) => Some(port_number(n).map_err(|m| at(&field("nodePort"), m))?),
            };
            let name = p.name.clone().unwrap_or_default();
            // Two ports with one (port, protocol) would fight over one frontend.
            if let Some(j) = ports
                .iter()
                .position(|q: &ServicePortInfo| q.port == port && q.protocol == protocol)
            {
                return Err(at(
                    &field("port"),
                    format!("{port}/{protocol} duplicates spec.ports[{j}]"),
                ));
            }
            if let Some(j) = ports
                .iter()
                .position(|q: &ServicePortInfo| !name.is_empty() && q.name == name)
            {
                return Err(at(
                    &field("name"),
                    format!("{name:?} duplicates spec.ports[{j}]"),
                ));
            }
            if let Some(np) = node_port {
                if let Some(j) = ports.iter().position(|q: &ServicePortInfo| {
                    q.node_port == Some(np) && q.protocol == protocol
                }) {
                    return Err(at(
                        &field("nodePort"),
                        format!("{np}/{protocol} duplicates spec.ports[{j}]"),
                    ));
                }
            }
            ports.push(ServicePortInfo {
                name,
                protocol,
                port,
                target,
                node_port,
            });
        }
        let external_ips = spec
            .external_ips
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, t)| parse_ip(t).map_err(|m| at(&format!("spec.externalIPs[{i}]"), m)))
            .collect::<Result<Vec<_>, _>>()?;
        let load_balancer_ips = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, ing)| ing.ip.as_ref().map(|ip| (i, ip)))
            .map(|(i, t)| {
                parse_ip(t).map_err(|m| at(&format!("status.loadBalancer.ingress[{i}].ip"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let affinity_timeout = match spec.session_affinity.as_deref() {
            None | Some("None") => None,
            Some("ClientIP") => Some(
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .map(|t| {
                        if (1..=86400).contains(&t) {
                            Ok(t as u32)
                        } else {
                            Err(at(
                                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                                format!("{t} is outside 1..=86400"),
                            ))
                        }
                    })
                    .transpose()?
                    .unwrap_or(DEFAULT_AFFINITY_TIMEOUT),
            ),
            Some(other) => {
                return Err(at(
                    "spec.sessionAffinity",
                    format!("{other:?} is not one of None, ClientIP"),
                ))
            }
        };
        let policy_local = |field: &str, v: Option<&str>| match v {
            None | Some("Cluster") => Ok(false),
            Some("Local") => Ok(true),
            Some(other) => Err(at(field, format!("{other:?} is not one of Cluster, Local"))),
        };
        Ok(ServiceInfo {
            internal_traffic_local: policy_local(
                "spec.internalTrafficPolicy",
                spec.internal_traffic_policy.as_deref(),
            )?,
            external_traffic_local: policy_local(
                "spec.externalTrafficPolicy",
                spec.external_traffic_policy.as_deref(),
            )?,
            publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
            selector: spec.selector.clone().filter(|s| !s.is_empty()),
            namespace,
            name,
            type_,
            cluster_ip,
            ports,
            external_ips,
            load_balancer_ips,
            affinity_timeout,
        })
    }
}

fn parse_ip(text: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an IPv4 address"))
}

fn port_number(n: i32) -> Result<u16, String> {
    if (1..=65535).contains(&n) {
        Ok(n as u16)
    } else {
        Err(format!("{n} is outside 1..=65535"))
    }
}

/// One backend of one service port, with the conditions EndpointSlices carry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub pod: String,
    pub node_name: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// What the endpoint-slice controller would publish for `port` of `svc`: pods in the service's
/// namespace whose labels match the selector, that have an IP, and (for a named target port)
/// declare that port with the same protocol. Sorted by IP.
pub fn backends_for<'a>(
    svc: &ServiceInfo,
    port: &ServicePortInfo,
    candidates: impl IntoIterator<Item = &'a PodInfo>,
) -> Vec<Backend> {
    let Some(selector) = &svc.selector else {
        return Vec::new();
    };
    let mut out: Vec<Backend> = candidates
        .into_iter()
        .filter(|p| p.namespace == svc.namespace)
        .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
        .filter_map(|p| {
            let ip = p.ip?;
            let target = match &port.target {
                TargetPort::Number(n) => *n,
                TargetPort::Name(name) => {
                    p.ports
                        .iter()
                        .find(|cp| {
                            cp.name.as_deref() == Some(name.as_str())
                                && cp.protocol == port.protocol
                        })?
                        .port
                }
            };
            let ready = (p.ready && !p.terminating) || svc.publish_not_ready;
            Some(Backend {
                ip,
                port: target,
                pod: format!("{}/{}", p.namespace, p.name),
                node_name: p.node_name.clone(),
                ready,
                serving: p.ready || svc.publish_not_ready,
                terminating: p.terminating,
            })
        })
        .collect();
    out.sort();
    out
}

/// Which backends may take a new connection: ready ones; only when none is ready, the serving
/// terminating ones (graceful termination, as kube-proxy does).
pub fn usable_backends(backends: &[Backend]) -> Vec<&Backend> {
    let ready: Vec<&Backend> = backends.iter().filter(|b| b.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    backends
        .iter()
        .filter(|b| b.serving && b.terminating)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ContainerPort;

    fn svc(yaml: &str) -> Result<ServiceInfo, String> {
        ServiceInfo::from_service(&serde_saphyr::from_str::<Service>(yaml).unwrap())
    }

    fn pod(
        ns: &str,
        name: &str,
        app: &str,
        ip: [u8; 4],
        ports: &[(&str, u16, Protocol)],
    ) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            node_name: Some("n1".into()),
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            ip: Some(Ipv4Addr::from(ip)),
            ports: ports
                .iter()
                .map(|(n, p, proto)| ContainerPort {
                    name: Some(n.to_string()),
                    port: *p,
                    protocol: *proto,
                })
                .collect(),
            ready: true,
            terminating: false,
        }
    }

    #[test]
    fn parses_every_service_shape() {
        let s = svc("metadata: {name: web, namespace: x}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  sessionAffinity: ClientIP\n  externalTrafficPolicy: Local\n  externalIPs: [203.0.113.5]\n  ports:\n  - {name: http, port: 80, targetPort: http, nodePort: 30080}\n  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}\n").unwrap();
        assert_eq!(s.type_, ServiceType::NodePort);
        assert_eq!(s.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(s.ports[0].target, TargetPort::Name("http".into()));
        assert_eq!(s.ports[0].node_port, Some(30080));
        assert_eq!(s.ports[1].protocol, Protocol::Udp);
        assert_eq!(s.ports[1].target, TargetPort::Number(5353));
        assert_eq!(s.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert!(s.external_traffic_local && !s.internal_traffic_local);
        assert_eq!(s.external_ips, vec![Ipv4Addr::new(203, 0, 113, 5)]);

        let headless = svc(
            "metadata: {name: h}\nspec: {clusterIP: None, selector: {app: h}, ports: [{port: 80}]}",
        )
        .unwrap();
        assert!(headless.is_headless());
        assert_eq!(headless.namespace, "default");
    }

    #[test]
    fn errors_name_field_and_value() {
        let e =
            svc("metadata: {name: s, namespace: x}\nspec: {ports: [{port: 70000}]}").unwrap_err();
        assert_eq!(
            e,
            "Service x/s: spec.ports[0].port: 70000 is outside 1..=65535"
        );
        let e =
            svc("metadata: {name: s}\nspec: {ports: [{port: 80, protocol: ICMP}]}").unwrap_err();
        assert!(
            e.contains("spec.ports[0].protocol") && e.contains("\"ICMP\""),
            "{e}"
        );
        let e = svc("metadata: {name: s}\nspec: {clusterIP: 10.0.0.300}").unwrap_err();
        assert!(
            e.contains("spec.clusterIP") && e.contains("10.0.0.300"),
            "{e}"
        );
        let e = svc("metadata: {name: s, namespace: x}\nspec: {ports: [{port: 80}, {port: 81}, {port: 80}]}").unwrap_err();
        assert_eq!(
            e,
            "Service x/s: spec.ports[2].port: 80/TCP duplicates spec.ports[0]"
        );
        let e =
            svc("metadata: {name: s}\nspec: {ports: [{name: a, port: 80}, {name: a, port: 81}]}")
                .unwrap_err();
        assert!(
            e.contains("spec.ports[1].name") && e.contains("\"a\""),
            "{e}"
        );
        let e = svc("metadata: {name: s}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 30001}, {port: 81, nodePort: 30001}]}").unwrap_err();
        assert!(
            e.contains("spec.ports[1].nodePort") && e.contains("30001"),
            "{e}"
        );
        // The same port number on two protocols is fine.
        assert!(
            svc("metadata: {name: s}\nspec: {ports: [{port: 53}, {port: 53, protocol: UDP}]}")
                .is_ok()
        );
        let e = svc("metadata: {name: s}\nspec: {type: Weird}").unwrap_err();
        assert!(e.contains("spec.type"), "{e}");
        let e = svc("metadata: {name: s}\nspec: {sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}}").unwrap_err();
        assert!(e.contains("timeoutSeconds") && e.contains('0'), "{e}");
    }

    #[test]
    fn endpoints_follow_selector_namespace_and_named_ports() {
        let s = svc("metadata: {name: web, namespace: x}\nspec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}").unwrap();
        let pods = BTreeMap::from([
            (
                "x/a".to_string(),
                pod(
                    "x",
                    "a",
                    "web",
                    [10, 0, 0, 2],
                    &[("http", 8080, Protocol::Tcp)],
                ),
            ),
            (
                "x/b".to_string(),
                pod(
                    "x",
                    "b",
                    "web",
                    [10, 0, 0, 3],
                    &[("http", 9090, Protocol::Tcp)],
                ),
            ),
            // Named port with the wrong protocol: not a backend for this port.
            (
                "x/c".to_string(),
                pod(
                    "x",
                    "c",
                    "web",
                    [10, 0, 0, 4],
                    &[("http", 8080, Protocol::Udp)],
                ),
            ),
            // Other namespace, other labels.
            (
                "y/d".to_string(),
                pod(
                    "y",
                    "d",
                    "web",
                    [10, 0, 0, 5],
                    &[("http", 8080, Protocol::Tcp)],
                ),
            ),
            (
                "x/e".to_string(),
                pod(
                    "x",
                    "e",
                    "db",
                    [10, 0, 0, 6],
                    &[("http", 8080, Protocol::Tcp)],
                ),
            ),
        ]);
        let b = backends_for(&s, &s.ports[0], pods.values());
        let got: Vec<(Ipv4Addr, u16)> = b.iter().map(|b| (b.ip, b.port)).collect();
        assert_eq!(
            got,
            vec![
                (Ipv4Addr::new(10, 0, 0, 2), 8080),
                (Ipv4Addr::new(10, 0, 0, 3), 9090)
            ]
        );
    }

    #[test]
    fn terminating_backends_serve_only_when_nothing_is_ready() {
        let mk = |ip: u8, ready: bool, terminating: bool| Backend {
            ip: Ipv4Addr::new(10, 0, 0, ip),
            port: 80,
            pod: format!("x/{ip}"),
            node_name: None,
            ready,
            serving: true,
            terminating,
        };
        let both = [mk(1, true, false), mk(2, false, true)];
        assert_eq!(
            usable_backends(&both)
                .iter()
                .map(|b| b.ip.octets()[3])
                .collect::<Vec<_>>(),
            vec![1]
        );
        let only_terminating = [mk(2, false, true)];
        assert_eq!(usable_backends(&only_terminating).len(), 1);
        let not_ready = [mk(3, false, false)];
        assert!(usable_backends(&not_ready).is_empty());
    }
}
