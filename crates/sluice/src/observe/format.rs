//! How `sluice observe` prints flows: one compact line each, JSON lines, or a table.

use std::io::Write;

use serde_json::{json, Value};
use sluice_hubble_api::flow::{self, Flow};
use sluice_hubble_api::observer::get_flows_response::ResponseTypes;
use sluice_hubble_api::observer::GetFlowsResponse;
use sluice_hubble_api::prost_types::Timestamp;

use super::Output;

pub struct Printer {
    output: Output,
    rows: Vec<[String; 6]>,
}

impl Printer {
    pub fn new(output: Output) -> Self {
        Self {
            output,
            rows: Vec::new(),
        }
    }

    pub fn print(&mut self, r: &GetFlowsResponse) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        match (&r.response_types, self.output) {
            (_, Output::Json) => writeln!(out, "{}", response_json(r))?,
            (Some(ResponseTypes::Flow(f)), Output::Compact) => writeln!(out, "{}", compact(f))?,
            (Some(ResponseTypes::Flow(f)), Output::Table) => self.rows.push(row(f)),
            (Some(ResponseTypes::LostEvents(l)), _) => writeln!(
                out,
                "EVENTS LOST: {} events lost at {} on node {}",
                l.num_events_lost,
                lost_source(l.source),
                r.node_name
            )?,
            (None, _) => {}
        }
        out.flush()?;
        Ok(())
    }

    pub fn finish(&mut self) -> anyhow::Result<()> {
        if self.output != Output::Table {
            return Ok(());
        }
        let header = [
            "TIMESTAMP",
            "SOURCE",
            "DESTINATION",
            "TYPE",
            "VERDICT",
            "SUMMARY",
        ]
        .map(String::from);
        let mut widths = header.clone().map(|h| h.len());
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let mut out = std::io::stdout().lock();
        for r in std::iter::once(&header).chain(&self.rows) {
            let line: Vec<String> = r
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            writeln!(out, "{}", line.join("  ").trim_end())?;
        }
        Ok(())
    }
}

fn lost_source(source: i32) -> &'static str {
    flow::LostEventSource::try_from(source)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN_LOST_EVENT_SOURCE")
}

fn time(t: Option<&Timestamp>) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    k8s_openapi::jiff::Timestamp::new(t.seconds, t.nanos)
        .map(|ts| ts.strftime("%b %d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|_| "-".into())
}

fn ports(f: &Flow) -> (Option<u32>, Option<u32>) {
    use flow::layer4::Protocol;
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => (Some(t.source_port), Some(t.destination_port)),
        Some(Protocol::Udp(u)) => (Some(u.source_port), Some(u.destination_port)),
        Some(Protocol::Sctp(s)) => (Some(s.source_port), Some(s.destination_port)),
        _ => (None, None),
    }
}

/// "ns/pod:port" for pods, else the address (or "reserved:host"-style label), with the port.
fn endpoint(ep: Option<&flow::Endpoint>, ip: &str, port: Option<u32>) -> String {
    let name = match ep {
        Some(e) if !e.pod_name.is_empty() => format!("{}/{}", e.namespace, e.pod_name),
        Some(e) if e.labels.iter().any(|l| l == "reserved:host") && ip.is_empty() => {
            "host".to_string()
        }
        _ if !ip.is_empty() => ip.to_string(),
        _ => "?".into(),
    };
    match port {
        // Socket events come before the source port is chosen.
        Some(p) if p != 0 => format!("{name}:{p}"),
        _ => name,
    }
}

fn identity(ep: Option<&flow::Endpoint>) -> String {
    ep.map(|e| format!("(ID:{})", e.identity))
        .unwrap_or_default()
}

pub fn kind(f: &Flow) -> String {
    match f.event_type.as_ref().map(|e| e.r#type) {
        Some(1) => "drop".into(),
        Some(5) => {
            let dir = if f.traffic_direction == flow::TrafficDirection::Ingress as i32 {
                "INGRESS"
            } else {
                "EGRESS"
            };
            format!("policy-verdict {dir}")
        }
        Some(7) => "sock-lb".into(),
        _ => flow::TraceObservationPoint::try_from(f.trace_observation_point)
            .map(|p| p.as_str_name().to_ascii_lowercase().replace('_', "-"))
            .unwrap_or_else(|_| "trace".into()),
    }
}

fn verdict(f: &Flow) -> String {
    let v = flow::Verdict::try_from(f.verdict)
        .map(|v| v.as_str_name())
        .unwrap_or("UNKNOWN");
    if f.verdict == flow::Verdict::Dropped as i32 {
        let reason = flow::DropReason::try_from(f.drop_reason_desc)
            .map(|r| r.as_str_name().to_string())
            .unwrap_or_else(|_| format!("reason {}", f.drop_reason_desc));
        return format!("{v} ({reason})");
    }
    v.to_string()
}

fn summary(f: &Flow) -> String {
    use flow::layer4::Protocol;
    let mut parts = Vec::new();
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => {
            let fl = t.flags.unwrap_or_default();
            let names: Vec<&str> = [
                (fl.syn, "SYN"),
                (fl.ack, "ACK"),
                (fl.fin, "FIN"),
                (fl.rst, "RST"),
                (fl.psh, "PSH"),
            ]
            .into_iter()
            .filter_map(|(on, n)| on.then_some(n))
            .collect();
            if !names.is_empty() {
                parts.push(format!("TCP Flags: {}", names.join(", ")));
            }
        }
        Some(Protocol::Udp(_)) => parts.push("UDP".into()),
        Some(Protocol::Sctp(_)) => parts.push("SCTP".into()),
        Some(Protocol::IcmPv4(i)) => {
            parts.push(format!("ICMPv4 type {} code {}", i.r#type, i.code))
        }
        _ => {}
    }
    if let Some(s) = &f.destination_service {
        parts.push(format!("service {}/{}", s.namespace, s.name));
    }
    if let Some(s) = &f.source_service {
        parts.push(format!("reply of service {}/{}", s.namespace, s.name));
    }
    for p in f.ingress_allowed_by.iter().chain(&f.egress_allowed_by) {
        parts.push(format!("allowed by {}/{}", p.namespace, p.name));
    }
    parts.join("; ")
}

fn sides(f: &Flow) -> (String, String) {
    let ip = f.ip.clone().unwrap_or_default();
    let (sport, dport) = ports(f);
    (
        format!(
            "{} {}",
            endpoint(f.source.as_ref(), &ip.source, sport),
            identity(f.source.as_ref())
        ),
        format!(
            "{} {}",
            endpoint(f.destination.as_ref(), &ip.destination, dport),
            identity(f.destination.as_ref())
        ),
    )
}

/// `Nov 22 11:45:01.123 [node]: x/a:40000 (ID:300) -> y/b:80 (ID:301) to-endpoint FORWARDED (TCP Flags: SYN)`
pub fn compact(f: &Flow) -> String {
    let (src, dst) = sides(f);
    let arrow = if f.is_reply == Some(true) { "<-" } else { "->" };
    let (left, right) = if f.is_reply == Some(true) {
        (dst, src)
    } else {
        (src, dst)
    };
    format!(
        "{} [{}]: {left} {arrow} {right} {} {} ({})",
        time(f.time.as_ref()),
        f.node_name,
        kind(f),
        verdict(f),
        summary(f)
    )
}

fn row(f: &Flow) -> [String; 6] {
    let (src, dst) = sides(f);
    [
        time(f.time.as_ref()),
        src,
        dst,
        kind(f),
        verdict(f),
        summary(f),
    ]
}

fn endpoint_json(e: &flow::Endpoint) -> Value {
    json!({
        "ID": e.id, "identity": e.identity, "cluster_name": e.cluster_name,
        "namespace": e.namespace, "labels": e.labels, "pod_name": e.pod_name,
    })
}

fn time_json(t: Option<&Timestamp>) -> Value {
    t.and_then(|t| k8s_openapi::jiff::Timestamp::new(t.seconds, t.nanos).ok())
        .map(|ts| Value::String(ts.to_string()))
        .unwrap_or(Value::Null)
}

/// Hubble's JSON shape (protojson with proto field names) for the fields sluice fills.
pub fn flow_json(f: &Flow) -> Value {
    use flow::layer4::Protocol;
    let ip = f.ip.clone().unwrap_or_default();
    let l4 = match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => {
            let fl = t.flags.unwrap_or_default();
            let mut flags = serde_json::Map::new();
            for (on, n) in [
                (fl.syn, "SYN"),
                (fl.ack, "ACK"),
                (fl.fin, "FIN"),
                (fl.rst, "RST"),
                (fl.psh, "PSH"),
            ] {
                if on {
                    flags.insert(n.into(), Value::Bool(true));
                }
            }
            json!({"TCP": {"source_port": t.source_port, "destination_port": t.destination_port, "flags": flags}})
        }
        Some(Protocol::Udp(u)) => {
            json!({"UDP": {"source_port": u.source_port, "destination_port": u.destination_port}})
        }
        Some(Protocol::IcmPv4(i)) => json!({"ICMPv4": {"type": i.r#type, "code": i.code}}),
        _ => Value::Null,
    };
    let mut v = json!({
        "time": time_json(f.time.as_ref()),
        "uuid": f.uuid,
        "verdict": flow::Verdict::try_from(f.verdict).map(|v| v.as_str_name()).unwrap_or("VERDICT_UNKNOWN"),
        "IP": {"source": ip.source, "destination": ip.destination, "ipVersion": "IPv4"},
        "l4": l4,
        "source": f.source.as_ref().map(endpoint_json),
        "destination": f.destination.as_ref().map(endpoint_json),
        "Type": flow::FlowType::try_from(f.r#type).map(|t| t.as_str_name()).unwrap_or("UNKNOWN_TYPE"),
        "node_name": f.node_name,
        "event_type": f.event_type.as_ref().map(|e| json!({"type": e.r#type, "sub_type": e.sub_type})),
        "traffic_direction": flow::TrafficDirection::try_from(f.traffic_direction).map(|d| d.as_str_name()).unwrap_or("TRAFFIC_DIRECTION_UNKNOWN"),
        "is_reply": f.is_reply,
        "Summary": summary(f),
    });
    let obj = v.as_object_mut().expect("an object");
    if f.verdict == flow::Verdict::Dropped as i32 {
        obj.insert("drop_reason".into(), json!(f.drop_reason));
        obj.insert(
            "drop_reason_desc".into(),
            json!(flow::DropReason::try_from(f.drop_reason_desc)
                .map(|r| r.as_str_name())
                .unwrap_or("DROP_REASON_UNKNOWN")),
        );
    }
    if f.trace_observation_point != 0 {
        obj.insert(
            "trace_observation_point".into(),
            json!(
                flow::TraceObservationPoint::try_from(f.trace_observation_point)
                    .map(|p| p.as_str_name())
                    .unwrap_or("UNKNOWN_POINT")
            ),
        );
    }
    for (key, svc) in [
        ("source_service", &f.source_service),
        ("destination_service", &f.destination_service),
    ] {
        if let Some(s) = svc {
            obj.insert(
                key.into(),
                json!({"name": s.name, "namespace": s.namespace}),
            );
        }
    }
    for (key, list) in [
        ("ingress_allowed_by", &f.ingress_allowed_by),
        ("egress_allowed_by", &f.egress_allowed_by),
    ] {
        if !list.is_empty() {
            let ps: Vec<Value> = list
                .iter()
                .map(|p| json!({"name": p.name, "namespace": p.namespace, "labels": p.labels}))
                .collect();
            obj.insert(key.into(), Value::Array(ps));
        }
    }
    if f.policy_match_type != 0 {
        obj.insert("policy_match_type".into(), json!(f.policy_match_type));
    }
    v
}

fn response_json(r: &GetFlowsResponse) -> Value {
    let mut v = json!({"node_name": r.node_name, "time": time_json(r.time.as_ref())});
    let obj = v.as_object_mut().expect("an object");
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => {
            obj.insert("flow".into(), flow_json(f));
        }
        Some(ResponseTypes::LostEvents(l)) => {
            obj.insert(
                "lost_events".into(),
                json!({"source": lost_source(l.source), "num_events_lost": l.num_events_lost}),
            );
        }
        None => {}
    }
    v
}
