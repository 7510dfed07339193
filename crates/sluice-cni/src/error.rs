//! The CNI error result: `{"cniVersion","code","msg","details"}` printed on stdout with a
//! non-zero exit status.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Error codes. 1–99 are reserved by the CNI spec and used only with their spec meaning;
/// sluice's own codes start at 100.
pub mod codes {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration (msg names the key and value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (CNI_*).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (e.g. stdin is not JSON).
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later (transient: the agent is unreachable or not ready).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin is not available (no ADD will succeed).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin is available but with limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;

    /// sluice: the node's pod address pool has no free address.
    pub const ADDRESS_POOL_EXHAUSTED: u32 = 100;
    /// sluice: CHECK found the attachment differs from what ADD made.
    pub const CHECK_DRIFT: u32 = 101;
    /// sluice: ADD for a (container, interface) that already has an attachment.
    pub const ALREADY_EXISTS: u32 = 102;
    /// sluice-cni's runtime: a plugin failed without printing a readable error.
    pub const PLUGIN_FAILED: u32 = 103;
}

/// A CNI error. The `cniVersion` is not part of the value: it is the version of the request,
/// added when the error is printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}{}", if .details.is_empty() { String::new() } else { format!(": {}", .details) })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The spec's error object for a request made with `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }

    pub fn invalid_env(var: &str, value: &str, why: &str) -> Self {
        Self::new(
            codes::INVALID_ENV,
            format!("invalid {var}={value:?}: {why}"),
        )
    }

    pub fn missing_env(var: &str) -> Self {
        Self::new(
            codes::INVALID_ENV,
            format!("required environment variable {var} is missing or empty"),
        )
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(codes::INVALID_NETWORK_CONFIG, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_shape() {
        let err = CniError::new(codes::INVALID_NETWORK_CONFIG, "bad").with_details("why");
        assert_eq!(
            err.to_json("1.1.0"),
            json!({"cniVersion": "1.1.0", "code": 7, "msg": "bad", "details": "why"})
        );
    }

    #[test]
    fn error_parses_from_other_plugins_without_details() {
        let err: CniError =
            serde_json::from_str(r#"{"cniVersion":"1.0.0","code":11,"msg":"later"}"#).unwrap();
        assert_eq!(err, CniError::new(11, "later"));
        assert_eq!(err.to_string(), "later");
        assert_eq!(err.with_details("x").to_string(), "later: x");
    }
}
