//! Wire facts Hubble clients depend on: field numbers and enum values as Hubble's protos
//! define them (cilium/cilium api/v1/flow and api/v1/observer), checked on encoded bytes.

use prost::Message;
use sluice_hubble_api::flow::{self, Flow, FlowFilter};
use sluice_hubble_api::observer::{GetFlowsRequest, ServerStatusResponse};

/// The protobuf key of field `number` with wire type `wire` (0 varint, 2 length-delimited).
fn key(number: u32, wire: u32) -> Vec<u8> {
    let mut v = (number << 3) | wire;
    let mut out = Vec::new();
    loop {
        if v < 0x80 {
            out.push(v as u8);
            return out;
        }
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
}

fn starts_with_key(bytes: &[u8], number: u32, wire: u32) -> bool {
    bytes.starts_with(&key(number, wire))
}

#[test]
fn flow_fields_have_hubbles_numbers() {
    let one = |f: Flow| f.encode_to_vec();
    let verdict = one(Flow {
        verdict: flow::Verdict::Dropped as i32,
        ..Default::default()
    });
    assert_eq!(
        verdict,
        [key(2, 0), vec![2]].concat(),
        "verdict = 2, DROPPED = 2"
    );
    let reason = one(Flow {
        drop_reason_desc: flow::DropReason::PolicyDenied as i32,
        ..Default::default()
    });
    assert_eq!(
        reason,
        [key(25, 0), vec![133, 1]].concat(),
        "drop_reason_desc = 25, POLICY_DENIED = 133"
    );
    let point = one(Flow {
        trace_observation_point: flow::TraceObservationPoint::ToEndpoint as i32,
        ..Default::default()
    });
    assert_eq!(point, [key(24, 0), vec![101]].concat(), "TO_ENDPOINT = 101");
    assert!(starts_with_key(
        &one(Flow {
            uuid: "u".into(),
            ..Default::default()
        }),
        34,
        2
    ));
    assert!(starts_with_key(
        &one(Flow {
            is_reply: Some(true),
            ..Default::default()
        }),
        26,
        2
    ));
    assert!(starts_with_key(
        &one(Flow {
            ingress_allowed_by: vec![flow::Policy::default()],
            ..Default::default()
        }),
        21002,
        2
    ));
    assert_eq!(flow::Verdict::Translated as i32, 7);
    assert_eq!(flow::FlowType::Sock as i32, 3);
    assert_eq!(flow::TrafficDirection::Egress as i32, 2);
    assert_eq!(
        flow::SocketTranslationPoint::SockXlatePointPostDirectionFwd as i32,
        2
    );
}

#[test]
fn filters_and_requests_have_hubbles_numbers() {
    let filter = FlowFilter {
        source_pod: vec!["x/".into()],
        ..Default::default()
    };
    assert!(
        starts_with_key(&filter.encode_to_vec(), 2, 2),
        "source_pod = 2"
    );
    let filter = FlowFilter {
        drop_reason_desc: vec![133],
        ..Default::default()
    };
    assert!(
        starts_with_key(&filter.encode_to_vec(), 33, 2),
        "drop_reason_desc = 33"
    );
    let follow = GetFlowsRequest {
        follow: true,
        ..Default::default()
    };
    assert_eq!(
        follow.encode_to_vec(),
        [key(3, 0), vec![1]].concat(),
        "follow = 3"
    );
    let first = GetFlowsRequest {
        first: true,
        ..Default::default()
    };
    assert_eq!(
        first.encode_to_vec(),
        [key(9, 0), vec![1]].concat(),
        "first = 9"
    );
    let status = ServerStatusResponse {
        seen_flows: 5,
        ..Default::default()
    };
    assert_eq!(
        status.encode_to_vec(),
        [key(3, 0), vec![5]].concat(),
        "seen_flows = 3"
    );
}

#[test]
fn a_flow_survives_a_round_trip() {
    let f = Flow {
        node_name: "n1".into(),
        source: Some(flow::Endpoint {
            namespace: "x".into(),
            pod_name: "a".into(),
            identity: 300,
            ..Default::default()
        }),
        l4: Some(flow::Layer4 {
            protocol: Some(flow::layer4::Protocol::Udp(flow::Udp {
                source_port: 1,
                destination_port: 53,
            })),
        }),
        ..Default::default()
    };
    assert_eq!(Flow::decode(f.encode_to_vec().as_slice()).unwrap(), f);
}
