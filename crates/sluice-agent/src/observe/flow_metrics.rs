//! Hubble's flow metrics, counted straight from datapath events. Each family keeps the
//! counters it has handed out under a small key of the event's fields, so counting a flow
//! whose label combination was seen before builds no label strings and no flow.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sluice_datapath::abi::{self, FlowEvent};
use sluice_hubble_api::flow::{self, LostEventSource};

use super::enrich;

type Labels = Vec<(String, String)>;

/// One metric family plus its counters by key (the family's counters are shared handles).
#[derive(Clone)]
pub struct KeyedFamily<K> {
    pub family: Family<Labels, Counter>,
    handles: Arc<Mutex<HashMap<K, Counter>>>,
}

impl<K> Default for KeyedFamily<K> {
    fn default() -> Self {
        Self {
            family: Family::default(),
            handles: Arc::default(),
        }
    }
}

impl<K: Hash + Eq> KeyedFamily<K> {
    fn inc_by(
        &self,
        key: K,
        n: u64,
        labels: impl FnOnce() -> Vec<(&'static str, Cow<'static, str>)>,
    ) {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles
            .entry(key)
            .or_insert_with(|| {
                let labels: Labels = labels()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.into_owned()))
                    .collect();
                self.family.get_or_create(&labels).clone()
            })
            .inc_by(n);
    }
}

/// Hubble's flow metrics, fed by the event reader and exposed on `/metrics`.
#[derive(Default, Clone)]
pub struct FlowMetrics {
    /// By (event type, observation point, verdict).
    pub flows_processed: KeyedFamily<(u8, u8, &'static str)>,
    /// By (drop reason, IP protocol).
    pub drops: KeyedFamily<(u16, u8)>,
    /// By (direction, match type, action).
    pub policy_verdicts: KeyedFamily<(&'static str, &'static str, &'static str)>,
    pub lost_events: KeyedFamily<i32>,
}

impl FlowMetrics {
    /// Counts one event that became a flow.
    pub fn count(&self, ev: &FlowEvent) {
        let verdict = enrich::verdict(ev).as_str_name();
        self.flows_processed
            .inc_by((ev.r#type, ev.point, verdict), 1, || {
                let (kind, subtype) = match ev.r#type {
                    abi::EVENT_DROP => ("Drop", ""),
                    abi::EVENT_POLICY_VERDICT => ("PolicyVerdict", ""),
                    abi::EVENT_TRACE_SOCK => ("Sock", ""),
                    _ => ("Trace", trace_subtype(ev.point)),
                };
                vec![
                    ("type", kind.into()),
                    ("subtype", subtype.into()),
                    ("verdict", verdict.into()),
                ]
            });
        if ev.r#type == abi::EVENT_DROP {
            self.drops.inc_by((ev.reason, ev.proto), 1, || {
                let reason = flow::DropReason::try_from(ev.reason as i32)
                    .map(|r| Cow::Borrowed(r.as_str_name()))
                    .unwrap_or_else(|_| Cow::Owned(ev.reason.to_string()));
                vec![
                    ("reason", reason),
                    ("protocol", protocol_name(ev.proto).into()),
                ]
            });
        }
        if ev.r#type == abi::EVENT_POLICY_VERDICT {
            let allowed = ev.flags & abi::EVF_POLICY_ALLOWED != 0;
            let direction = if ev.policy_dir == abi::POLICY_INGRESS {
                "ingress"
            } else {
                "egress"
            };
            let matched = match enrich::match_type(ev, allowed) {
                enrich::MATCH_L3_ONLY => "l3-only",
                enrich::MATCH_L3_L4 => "l3-l4",
                enrich::MATCH_L4_ONLY => "l4-only",
                enrich::MATCH_ALL => "all",
                _ => "none",
            };
            let action = if allowed { "forwarded" } else { "dropped" };
            self.policy_verdicts
                .inc_by((direction, matched, action), 1, || {
                    vec![
                        ("direction", direction.into()),
                        ("match", matched.into()),
                        ("action", action.into()),
                    ]
                });
        }
    }

    pub fn lost(&self, source: LostEventSource, n: u64) {
        self.lost_events.inc_by(source as i32, n, || {
            vec![("source", source.as_str_name().to_ascii_lowercase().into())]
        });
    }
}

/// Hubble's subtype label of a trace: its observation point, e.g. "to-endpoint".
fn trace_subtype(point: u8) -> &'static str {
    use flow::TraceObservationPoint as P;
    match enrich::observation_point(point) {
        P::FromEndpoint => "from-endpoint",
        P::ToEndpoint => "to-endpoint",
        P::FromOverlay => "from-overlay",
        P::ToOverlay => "to-overlay",
        P::FromNetwork => "from-network",
        _ => "unknown-point",
    }
}

fn protocol_name(proto: u8) -> &'static str {
    match proto {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        1 => "ICMPv4",
        58 => "ICMPv6",
        _ => "Unknown",
    }
}

/// The families in the text format, under `hubble_` (for tests).
#[cfg(test)]
pub(crate) fn exposition(m: &FlowMetrics) -> String {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;
    let mut r = Registry::default();
    let h = r.sub_registry_with_prefix("hubble");
    h.register("flows_processed", "", m.flows_processed.family.clone());
    h.register("drop", "", m.drops.family.clone());
    h.register("policy_verdicts", "", m.policy_verdicts.family.clone());
    h.register("lost_events", "", m.lost_events.family.clone());
    let mut text = String::new();
    encode(&mut text, &r).unwrap();
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u8, point: u8) -> FlowEvent {
        FlowEvent {
            r#type: kind,
            point,
            proto: 6,
            saddr: 0x0100000a,
            daddr: 0x0200000a,
            ..Default::default()
        }
    }

    #[test]
    fn every_label_combination_counts_on_its_own_series() {
        let m = FlowMetrics::default();
        for _ in 0..3 {
            m.count(&event(abi::EVENT_TRACE, abi::POINT_TO_ENDPOINT));
        }
        m.count(&event(abi::EVENT_TRACE, abi::POINT_FROM_ENDPOINT));
        let mut denied = event(abi::EVENT_POLICY_VERDICT, abi::POINT_TO_ENDPOINT);
        denied.policy_dir = abi::POLICY_INGRESS;
        m.count(&denied);
        let mut allowed = denied;
        allowed.flags = abi::EVF_POLICY_ALLOWED | abi::EVF_POLICY_L4;
        allowed.policy_identity = abi::IDENTITY_ANY;
        m.count(&allowed);
        let mut dropped = event(abi::EVENT_DROP, abi::POINT_TO_ENDPOINT);
        dropped.reason = 250;
        m.count(&dropped);
        m.lost(LostEventSource::PerfEventRingBuffer, 5);
        m.lost(LostEventSource::PerfEventRingBuffer, 2);
        let text = exposition(&m);
        for line in [
            "hubble_flows_processed_total{type=\"Trace\",subtype=\"to-endpoint\",verdict=\"FORWARDED\"} 3",
            "hubble_flows_processed_total{type=\"Trace\",subtype=\"from-endpoint\",verdict=\"FORWARDED\"} 1",
            "hubble_flows_processed_total{type=\"PolicyVerdict\",subtype=\"\",verdict=\"DROPPED\"} 1",
            "hubble_flows_processed_total{type=\"PolicyVerdict\",subtype=\"\",verdict=\"FORWARDED\"} 1",
            "hubble_policy_verdicts_total{direction=\"ingress\",match=\"none\",action=\"dropped\"} 1",
            "hubble_policy_verdicts_total{direction=\"ingress\",match=\"l4-only\",action=\"forwarded\"} 1",
            "hubble_drop_total{reason=\"250\",protocol=\"TCP\"} 1",
            "hubble_lost_events_total{source=\"perf_event_ring_buffer\"} 7",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
