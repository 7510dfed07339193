//! The EndpointSlices Kubernetes' endpoint-slice controller would write for the services with
//! a selector: the pods the selector matches, with an address and the target ports resolved
//! per pod. Endpoints whose ports resolve alike share a slice (a named target port may
//! resolve differently per pod). The lab's stand-in API server serves these to agents that
//! run with the Kubernetes source.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::service::{backends_for, Protocol};
use crate::slices::SERVICE_NAME_LABEL;
use crate::DesiredState;

pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

/// One slice per (service, resolved port set), named `<service>-<n>`; a service selecting
/// no pod gets one empty slice, as the controller writes.
pub fn controller_slices(state: &DesiredState) -> Vec<EndpointSlice> {
    let mut out = Vec::new();
    for svc in state.services.values() {
        let Some(selector) = &svc.selector else {
            continue;
        };
        // Resolved ports -> endpoints using them.
        let mut groups: BTreeMap<Vec<(String, u16, Protocol)>, Vec<Endpoint>> = BTreeMap::new();
        for pod in state.selected_pods(&svc.namespace, selector) {
            let mut ports = Vec::new();
            let mut conditions = None;
            for port in &svc.ports {
                if let Some(b) = backends_for(svc, port, [pod]).into_iter().next() {
                    ports.push((port.name.clone(), b.port, port.protocol));
                    conditions = Some((b.ip, b.ready, b.serving, b.terminating));
                }
            }
            let Some((ip, ready, serving, terminating)) = conditions else {
                continue;
            };
            groups.entry(ports).or_default().push(Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(serving),
                    terminating: Some(terminating),
                }),
                node_name: pod.node_name.clone(),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(pod.namespace.clone()),
                    name: Some(pod.name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        if groups.is_empty() {
            groups.insert(Vec::new(), Vec::new());
        }
        for (n, (ports, endpoints)) in groups.into_iter().enumerate() {
            out.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{}-{n}", svc.name)),
                    namespace: Some(svc.namespace.clone()),
                    labels: Some(
                        [
                            (SERVICE_NAME_LABEL.to_string(), svc.name.clone()),
                            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: Some(name),
                            port: Some(port.into()),
                            protocol: Some(protocol_name(protocol).into()),
                            ..Default::default()
                        })
                        .collect()
                }),
                endpoints,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::lb_entries;
    use crate::manifest::{parse_manifests, Object};

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: web}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: x}
spec: {clusterIP: 10.96.0.11, selector: {app: none}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: web, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: web}}
spec: {nodeName: n2, containers: [{name: c, ports: [{name: web, containerPort: 9090}]}]}
status: {phase: Running, podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {app: web}, deletionTimestamp: "2026-01-01T00:00:00Z"}
spec: {nodeName: n2, containers: [{name: c, ports: [{name: web, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.0.0.4}
"#;

    #[test]
    fn slices_group_endpoints_by_resolved_ports_and_carry_conditions() {
        let (state, problems) = DesiredState::build(&parse_manifests("t", MANIFESTS).unwrap());
        assert!(problems.is_empty(), "{problems:?}");
        let slices = controller_slices(&state);
        let of = |service: &str| -> Vec<&EndpointSlice> {
            slices
                .iter()
                .filter(|s| s.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL] == service)
                .collect()
        };
        let web = of("web");
        assert_eq!(web.len(), 2, "8080 and 9090 resolve differently");
        let on_8080 = web
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == Some(8080))
            .unwrap();
        let addresses: Vec<(&str, Option<bool>)> = on_8080
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses[0].as_str(),
                    e.conditions.as_ref().unwrap().terminating,
                )
            })
            .collect();
        assert_eq!(
            addresses,
            vec![("10.0.0.2", Some(false)), ("10.0.0.4", Some(true))]
        );
        let nobody = of("nobody");
        assert_eq!(nobody.len(), 1);
        assert!(nobody[0].endpoints.is_empty());
    }

    /// Reading the controller's slices back (the Kubernetes source's view) programs the same
    /// backends as computing endpoints from selectors (the manifest source's view).
    #[test]
    fn slices_mode_and_computed_mode_agree() {
        let objects = parse_manifests("t", MANIFESTS).unwrap();
        let (computed, _) = DesiredState::build(&objects);
        let mut with_slices: Vec<Object> = objects.clone();
        with_slices.extend(
            controller_slices(&computed)
                .into_iter()
                .map(|s| Object::EndpointSlice(Box::new(s))),
        );
        let (mut sliced, problems) = DesiredState::build(&with_slices);
        assert!(problems.is_empty(), "{problems:?}");
        sliced.endpoints_from_slices = true;
        assert_eq!(lb_entries(&computed, None), lb_entries(&sliced, None));
    }
}
