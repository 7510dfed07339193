//! What the datapath's load balancer should hold: one entry per service frontend
//! (address, port, protocol) with its usable backends. Derived from the desired state only.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::service::{backends_for, usable_backends, Protocol};
use crate::state::DesiredState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

/// Exactly the facts the datapath acts on; two equal entries program identical maps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LbEntry {
    /// Usable backends (address, port), sorted.
    pub backends: Vec<(Ipv4Addr, u16)>,
    pub affinity_timeout: Option<u32>,
}

/// Where a frontend comes from, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendOrigin {
    pub service: String,
    pub port_name: String,
    pub kind: &'static str,
}

/// Frontends of every non-headless service: its ClusterIP on each port. Services without a
/// selector get no computed backends (their endpoints come from elsewhere) and so reject.
pub fn lb_entries(state: &DesiredState) -> BTreeMap<Frontend, (LbEntry, FrontendOrigin)> {
    let mut out = BTreeMap::new();
    for svc in state.services.values() {
        let Some(cluster_ip) = svc.cluster_ip else {
            continue;
        };
        for port in &svc.ports {
            let all = backends_for(svc, port, &state.pods);
            let mut backends: Vec<(Ipv4Addr, u16)> = usable_backends(&all)
                .into_iter()
                .map(|b| (b.ip, b.port))
                .collect();
            backends.sort();
            backends.dedup();
            let entry = LbEntry {
                backends,
                affinity_timeout: svc.affinity_timeout,
            };
            let origin = FrontendOrigin {
                service: svc.key(),
                port_name: port.name.clone(),
                kind: "ClusterIP",
            };
            out.insert(
                Frontend {
                    address: cluster_ip,
                    port: port.port,
                    protocol: port.protocol,
                },
                (entry, origin),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse_manifests;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: x}
spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: web}}
status: {phase: Pending}
"#;

    #[test]
    fn cluster_ips_get_their_ready_backends_and_headless_services_nothing() {
        let objects = parse_manifests("t", MANIFESTS).unwrap();
        let (state, problems) = DesiredState::build(&objects);
        assert!(problems.is_empty(), "{problems:?}");
        let entries = lb_entries(&state);
        assert_eq!(entries.len(), 2);
        let http = &entries[&Frontend {
            address: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            protocol: Protocol::Tcp,
        }];
        assert_eq!(http.0.backends, vec![(Ipv4Addr::new(10, 0, 0, 2), 8080)]);
        assert_eq!(http.1.service, "x/web");
        let dns = &entries[&Frontend {
            address: Ipv4Addr::new(10, 96, 0, 10),
            port: 53,
            protocol: Protocol::Udp,
        }];
        assert_eq!(dns.0.backends, vec![(Ipv4Addr::new(10, 0, 0, 2), 53)]);
    }
}
