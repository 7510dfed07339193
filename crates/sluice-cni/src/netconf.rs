//! The network configuration on stdin: the spec's fields plus sluice's own.
//!
//! Decoding is two steps so an error can be reported with the request's `cniVersion` as soon as
//! that is known: `RawConf::decode` (code 6 when not a JSON object), then `RawConf::validate`
//! (code 1 for the version, 7 for fields, 2 for fields sluice does not support).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_api::AttachmentKey;

use crate::env::validate_container_id;
use crate::error::{codes, CniError};
use crate::result::Dns;
use crate::version::{SpecVersion, CURRENT_VERSION};

/// The `type` this plugin answers to (its executable name).
pub const PLUGIN_TYPE: &str = "sluice-cni";

/// GC's list of attachments to keep.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";

/// A validated sluice-cni network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: SpecVersion,
    pub name: String,
    pub plugin_type: String,
    /// Opaque to sluice: runtime-supplied `args` and `runtimeConfig`.
    pub args: Option<Value>,
    pub runtime_config: Option<Value>,
    /// The previous plugin's (or cached ADD) result, decoded by the command that needs it.
    pub prev_result: Option<Value>,
    pub dns: Dns,
    /// `agentSocket`; default `sluice_api::DEFAULT_SOCKET`.
    pub agent_socket: PathBuf,
    /// `agentTimeoutSeconds`; the client's default when unset.
    pub agent_timeout: Option<Duration>,
    /// `cni.dev/valid-attachments` (GC only).
    pub valid_attachments: Option<Vec<AttachmentKey>>,
}

/// Decoded but unvalidated configuration.
#[derive(Debug, Clone)]
pub struct RawConf(Map<String, Value>);

#[derive(Deserialize)]
struct ValidAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

impl RawConf {
    pub fn decode(bytes: &[u8]) -> Result<Self, CniError> {
        let decode_err = |details: String| {
            CniError::new(
                codes::DECODE_FAILURE,
                "cannot decode the network configuration on stdin",
            )
            .with_details(details)
        };
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(other) => Err(decode_err(format!(
                "expected a JSON object, got {}",
                kind_of(&other)
            ))),
            Err(e) => Err(decode_err(e.to_string())),
        }
    }

    /// The version to put in an error: the request's, when it is one sluice speaks.
    pub fn version_for_errors(&self) -> &str {
        match self.0.get("cniVersion").and_then(Value::as_str) {
            Some(v) if SpecVersion::parse(v).is_some() => v,
            _ => CURRENT_VERSION,
        }
    }

    pub fn validate(self) -> Result<NetConf, CniError> {
        let map = self.0;
        let cni_version = SpecVersion::parse_supported(required_str(&map, "cniVersion")?)?;
        let name = required_str(&map, "name")?.to_string();
        validate_container_id(&name)
            .map_err(|why| CniError::invalid_config(format!("invalid \"name\" {name:?}: {why}")))?;
        let plugin_type = required_str(&map, "type")?.to_string();
        if plugin_type != PLUGIN_TYPE {
            return Err(CniError::invalid_config(format!(
                "field \"type\" is {plugin_type:?}, but this plugin is {PLUGIN_TYPE:?}"
            )));
        }
        reject_ipam(map.get("ipam"))?;
        let dns = match map.get("dns") {
            None | Some(Value::Null) => Dns::default(),
            Some(v) => Dns::deserialize(v)
                .map_err(|e| CniError::invalid_config(format!("invalid \"dns\": {e}")))?,
        };
        let agent_socket = match map.get("agentSocket") {
            None | Some(Value::Null) => PathBuf::from(sluice_api::DEFAULT_SOCKET),
            Some(Value::String(s)) if !s.is_empty() => PathBuf::from(s),
            Some(other) => {
                return Err(CniError::invalid_config(format!(
                    "\"agentSocket\" must be a non-empty path, got {other}"
                )))
            }
        };
        let agent_timeout = match map.get("agentTimeoutSeconds") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_f64()
                    .filter(|s| *s > 0.0)
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or_else(|| {
                        CniError::invalid_config(format!(
                            "\"agentTimeoutSeconds\" must be a positive number, got {v}"
                        ))
                    })?,
            ),
        };
        let valid_attachments = match map.get(VALID_ATTACHMENTS_KEY) {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_valid_attachments(v)?),
        };
        let optional = |key: &str| map.get(key).filter(|v| !v.is_null()).cloned();
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            args: optional("args"),
            runtime_config: optional("runtimeConfig"),
            prev_result: optional("prevResult"),
            dns,
            agent_socket,
            agent_timeout,
            valid_attachments,
        })
    }
}

fn required_str<'a>(map: &'a Map<String, Value>, key: &str) -> Result<&'a str, CniError> {
    match map.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        None | Some(Value::Null) => Err(CniError::invalid_config(format!(
            "network configuration is missing {key:?}"
        ))),
        Some(other) => Err(CniError::invalid_config(format!(
            "field {key:?} must be a non-empty string, got {other}"
        ))),
    }
}

/// The agent allocates addresses, so an IPAM plugin would silently be ignored: refuse it.
fn reject_ipam(ipam: Option<&Value>) -> Result<(), CniError> {
    match ipam {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(m)) if m.is_empty() => Ok(()),
        Some(v) => Err(CniError::new(
            codes::UNSUPPORTED_FIELD,
            format!("unsupported field \"ipam\": {v}"),
        )
        .with_details("sluice-agent allocates pod addresses; remove the ipam section")),
    }
}

fn parse_valid_attachments(v: &Value) -> Result<Vec<AttachmentKey>, CniError> {
    let list = Vec::<ValidAttachment>::deserialize(v)
        .map_err(|e| CniError::invalid_config(format!("invalid {VALID_ATTACHMENTS_KEY:?}: {e}")))?;
    Ok(list
        .into_iter()
        .map(|a| AttachmentKey {
            container_id: a.container_id,
            ifname: a.ifname,
        })
        .collect())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf, CniError> {
        RawConf::decode(v.to_string().as_bytes())?.validate()
    }

    fn base() -> Value {
        json!({"cniVersion": "1.1.0", "name": "sluice", "type": "sluice-cni"})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = base();
        v[key] = value;
        v
    }

    fn without(key: &str) -> Value {
        let mut v = base();
        v.as_object_mut().unwrap().remove(key);
        v
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(base()).unwrap();
        assert_eq!(c.cni_version, SpecVersion::V1_1_0);
        assert_eq!(c.agent_socket, PathBuf::from(sluice_api::DEFAULT_SOCKET));
        assert_eq!(c.agent_timeout, None);
        assert_eq!(c.prev_result, None);
        assert!(c.dns.is_empty());
        assert_eq!(c.valid_attachments, None);
    }

    #[test]
    fn sluice_and_spec_fields_parse() {
        let mut v = base();
        v["agentSocket"] = json!("/tmp/a.sock");
        v["agentTimeoutSeconds"] = json!(2.5);
        v["dns"] = json!({"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]});
        v["prevResult"] = json!({"cniVersion": "1.1.0"});
        v["runtimeConfig"] = json!({"portMappings": []});
        v["ipam"] = json!({});
        v[VALID_ATTACHMENTS_KEY] = json!([{"containerID": "c1", "ifname": "eth0"}]);
        let c = parse(v).unwrap();
        assert_eq!(c.agent_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.agent_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(
            c.dns.nameservers,
            vec!["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(c.prev_result.is_some() && c.runtime_config.is_some());
        assert_eq!(
            c.valid_attachments,
            Some(vec![AttachmentKey {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }])
        );
    }

    #[test]
    fn malformed_json_is_code_6() {
        for bad in [&b"{not json"[..], b"", b"[1,2]", b"\"x\""] {
            let err = RawConf::decode(bad).unwrap_err();
            assert_eq!(err.code, codes::DECODE_FAILURE, "{bad:?}");
        }
    }

    #[test]
    fn missing_required_fields_are_code_7_naming_the_field() {
        for field in ["name", "type"] {
            let err = parse(without(field)).unwrap_err();
            assert_eq!(err.code, codes::INVALID_NETWORK_CONFIG);
            assert!(err.msg.contains(&format!("{field:?}")), "{}", err.msg);
        }
        let err = parse(without("cniVersion")).unwrap_err();
        assert_eq!(err.code, codes::INVALID_NETWORK_CONFIG);
        assert!(err.msg.contains("cniVersion"));
        let err = parse(with("name", json!(5))).unwrap_err();
        assert_eq!(err.code, codes::INVALID_NETWORK_CONFIG);
        assert!(parse(with("name", json!("-bad"))).is_err());
    }

    #[test]
    fn foreign_type_is_code_7() {
        let err = parse(with("type", json!("bridge"))).unwrap_err();
        assert_eq!(err.code, codes::INVALID_NETWORK_CONFIG);
        assert!(
            err.msg.contains("bridge") && err.msg.contains("type"),
            "{}",
            err.msg
        );
    }

    #[test]
    fn unknown_version_is_code_1_and_errors_use_current_version() {
        let raw =
            RawConf::decode(with("cniVersion", json!("0.2.0")).to_string().as_bytes()).unwrap();
        assert_eq!(raw.version_for_errors(), "1.1.0");
        let err = raw.validate().unwrap_err();
        assert_eq!(err.code, codes::INCOMPATIBLE_VERSION);
        assert!(err.msg.contains("0.2.0"));
        let raw =
            RawConf::decode(with("cniVersion", json!("0.4.0")).to_string().as_bytes()).unwrap();
        assert_eq!(raw.version_for_errors(), "0.4.0");
    }

    #[test]
    fn bad_sluice_fields_are_code_7() {
        for (key, value) in [
            ("agentSocket", json!("")),
            ("agentSocket", json!(1)),
            ("agentTimeoutSeconds", json!(0)),
            ("agentTimeoutSeconds", json!(-1)),
            ("agentTimeoutSeconds", json!("5")),
            ("agentTimeoutSeconds", json!(1e300)),
            ("dns", json!({"nameservers": ["not-an-ip"]})),
            (VALID_ATTACHMENTS_KEY, json!([{"containerID": "c1"}])),
        ] {
            let err = parse(with(key, value.clone())).unwrap_err();
            assert_eq!(err.code, codes::INVALID_NETWORK_CONFIG, "{key}={value}");
        }
    }

    #[test]
    fn ipam_is_unsupported_code_2() {
        let err = parse(with("ipam", json!({"type": "host-local"}))).unwrap_err();
        assert_eq!(err.code, codes::UNSUPPORTED_FIELD);
        assert!(
            err.msg.contains("ipam") && err.msg.contains("host-local"),
            "{}",
            err.msg
        );
    }
}
