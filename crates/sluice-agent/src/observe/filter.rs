//! Hubble's FlowFilter semantics: inside one filter every field that is set must match (and
//! inside a field, any of its values); a flow passes a request when it matches any
//! whitelist filter (or there are none) and no blacklist filter. Fields sluice cannot
//! evaluate (L7, FQDN, ...) are refused, never silently ignored.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use sluice_hubble_api::flow::{self, Flow, FlowFilter};

/// A request's filters, checked once so matching cannot fail.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    whitelist: Vec<FlowFilter>,
    blacklist: Vec<FlowFilter>,
}

impl Filters {
    pub fn new(whitelist: Vec<FlowFilter>, blacklist: Vec<FlowFilter>) -> Result<Self, String> {
        for (list, name) in [(&whitelist, "whitelist"), (&blacklist, "blacklist")] {
            for (i, f) in list.iter().enumerate() {
                check(f).map_err(|e| format!("{name}[{i}]: {e}"))?;
            }
        }
        Ok(Self {
            whitelist,
            blacklist,
        })
    }

    pub fn matches(&self, f: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|w| matches(w, f)))
            && !self.blacklist.iter().any(|b| matches(b, f))
    }
}

fn check(f: &FlowFilter) -> Result<(), String> {
    let unsupported: [(&str, bool); 12] = [
        ("source_fqdn", !f.source_fqdn.is_empty()),
        ("destination_fqdn", !f.destination_fqdn.is_empty()),
        ("http_status_code", !f.http_status_code.is_empty()),
        ("http_method", !f.http_method.is_empty()),
        ("http_path", !f.http_path.is_empty()),
        ("http_url", !f.http_url.is_empty()),
        ("http_header", !f.http_header.is_empty()),
        ("dns_query", !f.dns_query.is_empty()),
        ("source_workload", !f.source_workload.is_empty()),
        ("destination_workload", !f.destination_workload.is_empty()),
        ("trace_id", !f.trace_id.is_empty()),
        ("node_labels", !f.node_labels.is_empty()),
    ];
    if let Some((name, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(format!(
            "{name}: sluice has no L7/DNS/workload data to filter on"
        ));
    }
    for ip in f.source_ip.iter().chain(&f.destination_ip) {
        parse_ip_filter(ip).ok_or_else(|| format!("ip {ip:?} is not an IPv4 address or CIDR"))?;
    }
    for port in f.source_port.iter().chain(&f.destination_port) {
        port.parse::<u16>()
            .map_err(|_| format!("port {port:?} is not a number in 0..=65535"))?;
    }
    for p in &f.protocol {
        if protocol_number(p).is_none() {
            return Err(format!(
                "protocol {p:?} is not one of: tcp, udp, sctp, icmp, icmpv4"
            ));
        }
    }
    for l in f.source_label.iter().chain(&f.destination_label) {
        LabelSelector::parse(l)?;
    }
    Ok(())
}

fn parse_ip_filter(s: &str) -> Option<Ipv4Net> {
    if let Ok(net) = s.parse::<Ipv4Net>() {
        return Some(net);
    }
    s.parse::<Ipv4Addr>().ok().map(Ipv4Net::from)
}

fn protocol_number(p: &str) -> Option<u8> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        "icmp" | "icmpv4" => Some(1),
        _ => None,
    }
}

fn any<T>(values: &[T], test: impl Fn(&T) -> bool) -> bool {
    values.is_empty() || values.iter().any(test)
}

fn matches(filter: &FlowFilter, f: &Flow) -> bool {
    let ip = f.ip.clone().unwrap_or_default();
    let src = f.source.clone().unwrap_or_default();
    let dst = f.destination.clone().unwrap_or_default();
    let (sport, dport, proto, tcp_flags) = l4_of(f);
    let ip_in = |filters: &[String], addr: &str| {
        any(filters, |s| {
            let (Some(net), Ok(a)) = (parse_ip_filter(s), addr.parse::<Ipv4Addr>()) else {
                return false;
            };
            net.contains(&a)
        })
    };
    ip_in(&filter.source_ip, &ip.source)
        && ip_in(&filter.destination_ip, &ip.destination)
        && any(&filter.source_pod, |p| pod_matches(p, &src))
        && any(&filter.destination_pod, |p| pod_matches(p, &dst))
        && any(&filter.source_label, |l| label_matches(l, &src.labels))
        && any(&filter.destination_label, |l| label_matches(l, &dst.labels))
        && any(&filter.source_service, |s| {
            service_matches(s, f.source_service.as_ref())
        })
        && any(&filter.destination_service, |s| {
            service_matches(s, f.destination_service.as_ref())
        })
        && any(&filter.source_identity, |i| *i == src.identity)
        && any(&filter.destination_identity, |i| *i == dst.identity)
        && any(&filter.verdict, |v| *v == f.verdict)
        && any(&filter.drop_reason_desc, |d| *d == f.drop_reason_desc)
        && any(&filter.traffic_direction, |d| *d == f.traffic_direction)
        && any(&filter.event_type, |e| event_type_matches(e, f))
        && any(&filter.protocol, |p| protocol_number(p) == proto)
        && any(&filter.source_port, |p| p.parse::<u32>().ok() == sport)
        && any(&filter.destination_port, |p| p.parse::<u32>().ok() == dport)
        && any(&filter.reply, |r| f.is_reply == Some(*r))
        && any(&filter.node_name, |n| glob(n, &f.node_name))
        && any(&filter.tcp_flags, |want| {
            tcp_flags
                .as_ref()
                .is_some_and(|have| flags_contain(have, want))
        })
        && any(&filter.ip_version, |v| *v == ip.ip_version)
        && any(&filter.uuid, |u| *u == f.uuid)
}

fn l4_of(f: &Flow) -> (Option<u32>, Option<u32>, Option<u8>, Option<flow::TcpFlags>) {
    use flow::layer4::Protocol;
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => (
            Some(t.source_port),
            Some(t.destination_port),
            Some(6),
            t.flags,
        ),
        Some(Protocol::Udp(u)) => (
            Some(u.source_port),
            Some(u.destination_port),
            Some(17),
            None,
        ),
        Some(Protocol::Sctp(s)) => (
            Some(s.source_port),
            Some(s.destination_port),
            Some(132),
            None,
        ),
        Some(Protocol::IcmPv4(_)) => (None, None, Some(1), None),
        _ => (None, None, None, None),
    }
}

/// "namespace/name-prefix", or "name-prefix" in the default namespace (as Hubble reads it).
fn pod_matches(filter: &str, ep: &flow::Endpoint) -> bool {
    let (ns, prefix) = filter.split_once('/').unwrap_or(("default", filter));
    ep.namespace == ns && !ep.pod_name.is_empty() && ep.pod_name.starts_with(prefix)
        || (prefix.is_empty() && ep.namespace == ns)
}

fn service_matches(filter: &str, svc: Option<&flow::Service>) -> bool {
    let Some(svc) = svc else { return false };
    let (ns, prefix) = filter.split_once('/').unwrap_or(("default", filter));
    svc.namespace == ns && svc.name.starts_with(prefix)
}

fn event_type_matches(e: &flow::EventTypeFilter, f: &Flow) -> bool {
    let Some(t) = &f.event_type else { return false };
    t.r#type == e.r#type && (!e.match_sub_type || t.sub_type == e.sub_type)
}

fn flags_contain(have: &flow::TcpFlags, want: &flow::TcpFlags) -> bool {
    (!want.syn || have.syn)
        && (!want.ack || have.ack)
        && (!want.fin || have.fin)
        && (!want.rst || have.rst)
        && (!want.psh || have.psh)
        && (!want.urg || have.urg)
        && (!want.ece || have.ece)
        && (!want.cwr || have.cwr)
}

/// `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))
        }
    }
}

/// A Hubble label filter: comma-separated `key=value`, `key!=value`, `key` and `!key`; keys
/// match with or without their source prefix (`k8s:`).
struct LabelSelector(Vec<Requirement>);

enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl LabelSelector {
    fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!("label selector {s:?} has an empty requirement"));
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::Absent(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            out.push(req);
        }
        Ok(Self(out))
    }

    fn matches(&self, labels: &[String]) -> bool {
        let value_of = |key: &str| {
            labels.iter().find_map(|l| {
                let (k, v) = l.split_once('=').unwrap_or((l, ""));
                let bare = k.split_once(':').map(|(_, b)| b).unwrap_or(k);
                (k == key || bare == key).then_some(v)
            })
        };
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => value_of(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => value_of(k) != Some(v.as_str()),
            Requirement::Exists(k) => value_of(k).is_some(),
            Requirement::Absent(k) => value_of(k).is_none(),
        })
    }
}

fn label_matches(selector: &str, labels: &[String]) -> bool {
    LabelSelector::parse(selector).is_ok_and(|s| s.matches(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow_between(src: (&str, &str, &str), dst: (&str, &str, &str), dport: u32) -> Flow {
        let ep = |(ns, pod, app): (&str, &str, &str)| flow::Endpoint {
            namespace: ns.into(),
            pod_name: pod.into(),
            labels: vec![format!("k8s:app={app}")],
            identity: 300,
            ..Default::default()
        };
        Flow {
            ip: Some(flow::Ip {
                source: "10.0.0.5".into(),
                destination: "10.0.1.7".into(),
                ..Default::default()
            }),
            l4: Some(flow::Layer4 {
                protocol: Some(flow::layer4::Protocol::Tcp(flow::Tcp {
                    source_port: 40000,
                    destination_port: dport,
                    flags: Some(flow::TcpFlags {
                        syn: true,
                        ..Default::default()
                    }),
                })),
            }),
            source: Some(ep(src)),
            destination: Some(ep(dst)),
            verdict: flow::Verdict::Forwarded as i32,
            node_name: "lab-n1".into(),
            ..Default::default()
        }
    }

    fn f() -> Flow {
        flow_between(("x", "a", "a"), ("y", "b", "b"), 80)
    }

    fn only(filter: FlowFilter) -> Filters {
        Filters::new(vec![filter], vec![]).unwrap()
    }

    #[test]
    fn every_set_field_must_match_and_any_value_of_a_field_may() {
        let pass = only(FlowFilter {
            source_pod: vec!["x/a".into()],
            destination_port: vec!["81".into(), "80".into()],
            protocol: vec!["TCP".into()],
            ..Default::default()
        });
        assert!(pass.matches(&f()));
        let fail = only(FlowFilter {
            source_pod: vec!["x/a".into()],
            destination_port: vec!["81".into()],
            ..Default::default()
        });
        assert!(!fail.matches(&f()));
    }

    #[test]
    fn whitelist_filters_are_alternatives_and_the_blacklist_subtracts() {
        let either = Filters::new(
            vec![
                FlowFilter {
                    source_pod: vec!["z/".into()],
                    ..Default::default()
                },
                FlowFilter {
                    destination_pod: vec!["y/".into()],
                    ..Default::default()
                },
            ],
            vec![],
        )
        .unwrap();
        assert!(either.matches(&f()));
        let minus = Filters::new(
            vec![],
            vec![FlowFilter {
                destination_ip: vec!["10.0.1.0/24".into()],
                ..Default::default()
            }],
        )
        .unwrap();
        assert!(!minus.matches(&f()));
    }

    #[test]
    fn labels_ips_nodes_and_flags() {
        assert!(only(FlowFilter {
            source_label: vec!["app=a".into()],
            destination_label: vec!["k8s:app=b,!tier".into()],
            ..Default::default()
        })
        .matches(&f()));
        assert!(!only(FlowFilter {
            source_label: vec!["app!=a".into()],
            ..Default::default()
        })
        .matches(&f()));
        assert!(only(FlowFilter {
            source_ip: vec!["10.0.0.5".into()],
            node_name: vec!["lab-*".into()],
            tcp_flags: vec![flow::TcpFlags {
                syn: true,
                ..Default::default()
            }],
            ..Default::default()
        })
        .matches(&f()));
        assert!(!only(FlowFilter {
            tcp_flags: vec![flow::TcpFlags {
                fin: true,
                ..Default::default()
            }],
            ..Default::default()
        })
        .matches(&f()));
    }

    #[test]
    fn malformed_or_unsupported_filters_are_refused_with_the_field() {
        let bad_ip = Filters::new(
            vec![FlowFilter {
                source_ip: vec!["10.0.0.300".into()],
                ..Default::default()
            }],
            vec![],
        );
        assert!(bad_ip
            .unwrap_err()
            .contains("whitelist[0]: ip \"10.0.0.300\""));
        let l7 = Filters::new(
            vec![],
            vec![FlowFilter {
                http_method: vec!["GET".into()],
                ..Default::default()
            }],
        );
        assert!(l7.unwrap_err().starts_with("blacklist[0]: http_method"));
        let port = Filters::new(
            vec![FlowFilter {
                destination_port: vec!["http".into()],
                ..Default::default()
            }],
            vec![],
        );
        assert!(port.is_err());
    }
}
