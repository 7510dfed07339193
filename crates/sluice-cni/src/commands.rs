//! One plugin invocation: validate everything, then (and only then) ask the agent.

use std::ffi::OsString;
use std::path::Path;

use serde_json::{json, Value};
use sluice_api::{AttachmentKey, Client, ClientError, ErrorKind, Request, Response};

use crate::env::{AttachmentEnv, CniEnv};
use crate::error::{codes, CniError};
use crate::netconf::{NetConf, RawConf, VALID_ATTACHMENTS_KEY};
use crate::result::CniResult;
use crate::version::{Command, CURRENT_VERSION, SUPPORTED_VERSIONS};

/// What to print on stdout and the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// Runs one invocation with the environment from `lookup` and the config from `stdin`.
pub fn run(lookup: impl Fn(&str) -> Option<OsString>, stdin: &[u8]) -> Outcome {
    let raw = RawConf::decode(stdin);
    let error_version = raw
        .as_ref()
        .map_or(CURRENT_VERSION, RawConf::version_for_errors)
        .to_string();
    match execute(lookup, raw) {
        Ok(None) => Outcome {
            stdout: String::new(),
            exit_code: 0,
        },
        Ok(Some(value)) => Outcome {
            stdout: pretty(&value),
            exit_code: 0,
        },
        Err(err) => Outcome {
            stdout: pretty(&err.to_json(&error_version)),
            exit_code: 1,
        },
    }
}

/// The VERSION answer.
pub fn version_info() -> Value {
    json!({"cniVersion": CURRENT_VERSION, "supportedVersions": SUPPORTED_VERSIONS})
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

fn execute(
    lookup: impl Fn(&str) -> Option<OsString>,
    raw: Result<RawConf, CniError>,
) -> Result<Option<Value>, CniError> {
    let env = CniEnv::from_lookup(lookup)?;
    if env.command == Command::Version {
        return Ok(Some(version_info()));
    }
    let conf = raw?.validate()?;
    conf.cni_version.require(env.command)?;
    match env.command {
        Command::Add => add(&conf, &env.attachment()?).map(Some),
        Command::Del => del(&conf, &env.attachment()?).map(|()| None),
        Command::Check => check(&conf, &env.attachment()?).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Gc => gc(&conf).map(|()| None),
        Command::Version => Ok(Some(version_info())),
    }
}

fn client(conf: &NetConf) -> Client {
    let client = Client::new(&conf.agent_socket);
    match conf.agent_timeout {
        Some(timeout) => client.with_timeout(timeout),
        None => client,
    }
}

fn add(conf: &NetConf, env: &AttachmentEnv) -> Result<Value, CniError> {
    // Decode prevResult before touching the agent so a bad request changes nothing.
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniResult::from_json)
        .transpose()?;
    let netns = env.netns.as_deref().unwrap_or(Path::new(""));
    let request = Request::Add {
        key: env.key.clone(),
        netns: netns.to_path_buf(),
        pod: env.pod.clone(),
    };
    let attachment = match call(conf, &request, Some(&env.key))? {
        Response::Added(attachment) => attachment,
        other => return Err(unexpected(&request, &other)),
    };
    let mut ours = CniResult::from_attachment(&attachment, &env.key.ifname, netns);
    ours.dns = conf.dns.clone();
    let result = match prev {
        Some(mut prev) => {
            prev.append(ours);
            prev
        }
        None => ours,
    };
    Ok(result.for_version(conf.cni_version).to_json())
}

/// Idempotent: the agent answers `existed: false` for attachments it does not know.
fn del(conf: &NetConf, env: &AttachmentEnv) -> Result<(), CniError> {
    let request = Request::Del {
        key: env.key.clone(),
        netns: env.netns.clone(),
    };
    match call(conf, &request, Some(&env.key))? {
        Response::Deleted { .. } => Ok(()),
        other => Err(unexpected(&request, &other)),
    }
}

fn check(conf: &NetConf, env: &AttachmentEnv) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::invalid_config("CHECK requires \"prevResult\" in the network configuration")
    })?;
    let prev = CniResult::from_json(prev)?;
    let netns = env.netns.as_deref().unwrap_or(Path::new(""));
    let mut problems = prev_result_problems(&prev, &env.key.ifname, netns);
    let request = Request::Check {
        key: env.key.clone(),
        netns: netns.to_path_buf(),
    };
    match call(conf, &request, Some(&env.key))? {
        Response::Checked { problems: agent } => problems.extend(agent),
        other => return Err(unexpected(&request, &other)),
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        codes::CHECK_DRIFT,
        format!(
            "CHECK found {} problem(s) with container {} interface {}",
            problems.len(),
            env.key.container_id,
            env.key.ifname
        ),
    )
    .with_details(problems.join("; ")))
}

/// What prevResult must say about our interface: it exists in the sandbox and has an address.
fn prev_result_problems(prev: &CniResult, ifname: &str, netns: &Path) -> Vec<String> {
    let Some(index) = prev.sandbox_interface(ifname) else {
        return vec![format!(
            "prevResult lists no container interface named {ifname:?}"
        )];
    };
    let mut problems = Vec::new();
    let sandbox = &prev.interfaces[index].sandbox;
    if !netns.as_os_str().is_empty() && Path::new(sandbox) != netns {
        problems.push(format!(
            "prevResult puts {ifname:?} in sandbox {sandbox:?}, not {:?}",
            netns.display()
        ));
    }
    if !prev.ips.iter().any(|ip| ip.interface == Some(index)) {
        problems.push(format!("prevResult lists no IP address on {ifname:?}"));
    }
    problems
}

/// Success means an ADD would work now; anything else is code 50.
fn status(conf: &NetConf) -> Result<(), CniError> {
    let not_available = |msg: String| CniError::new(codes::PLUGIN_NOT_AVAILABLE, msg);
    let status = match client(conf).call(&Request::Status) {
        Ok(Response::Status(status)) => status,
        Ok(other) => {
            return Err(not_available(format!(
                "sluice-agent answered STATUS with {}",
                response_name(&other)
            )))
        }
        Err(e) => {
            return Err(not_available("sluice-agent is not available".into())
                .with_details(format!("{} ({})", e, conf.agent_socket.display())))
        }
    };
    if !status.ready {
        return Err(not_available(format!(
            "sluice-agent on node {:?} is not ready",
            status.node
        ))
        .with_details(status.problems.join("; ")));
    }
    if status.ips_free == 0 {
        let cidr = status
            .pod_cidr
            .map_or_else(|| "unknown".to_string(), |c| c.to_string());
        return Err(not_available(format!(
            "pod address pool exhausted on node {:?}: no free address in {cidr}",
            status.node
        )));
    }
    Ok(())
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    // Without the list, "remove everything not valid" would remove everything: refuse instead.
    let valid = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::invalid_config(format!(
            "GC requires {VALID_ATTACHMENTS_KEY:?} in the network configuration"
        ))
    })?;
    let request = Request::Gc { valid };
    match call(conf, &request, None)? {
        Response::Collected { .. } => Ok(()),
        other => Err(unexpected(&request, &other)),
    }
}

fn call(
    conf: &NetConf,
    request: &Request,
    key: Option<&AttachmentKey>,
) -> Result<Response, CniError> {
    client(conf)
        .call(request)
        .map_err(|e| agent_error(e, key, &conf.agent_socket))
}

/// Maps the agent's answer (or its absence) onto CNI codes.
pub fn agent_error(err: ClientError, key: Option<&AttachmentKey>, socket: &Path) -> CniError {
    let api = match err {
        ClientError::Connect { .. } => {
            return CniError::new(
                codes::TRY_AGAIN_LATER,
                "try again later: sluice-agent is not reachable",
            )
            .with_details(format!("{err} (socket {})", socket.display()));
        }
        ClientError::Io { .. } | ClientError::Decode { .. } => {
            return CniError::new(codes::IO_FAILURE, "talking to sluice-agent failed")
                .with_details(err.to_string());
        }
        ClientError::Agent(api) => api,
    };
    let details = if api.details.is_empty() {
        api.msg.clone()
    } else {
        format!("{}: {}", api.msg, api.details)
    };
    let (code, msg) = match api.kind {
        ErrorKind::AlreadyExists => (
            codes::ALREADY_EXISTS,
            match key {
                Some(k) => format!(
                    "container {} interface {} already has a sluice attachment",
                    k.container_id, k.ifname
                ),
                None => "attachment already exists".to_string(),
            },
        ),
        ErrorKind::Exhausted => (
            codes::ADDRESS_POOL_EXHAUSTED,
            "pod address pool exhausted".to_string(),
        ),
        ErrorKind::InvalidArgument => (
            codes::INVALID_NETWORK_CONFIG,
            format!("sluice-agent rejected the request: {}", api.msg),
        ),
        ErrorKind::NotFound => (
            codes::UNKNOWN_CONTAINER,
            format!("container unknown or does not exist: {}", api.msg),
        ),
        ErrorKind::Unavailable => (
            codes::TRY_AGAIN_LATER,
            format!("try again later: sluice-agent is not ready: {}", api.msg),
        ),
        ErrorKind::Internal => (
            codes::IO_FAILURE,
            format!("sluice-agent failed: {}", api.msg),
        ),
    };
    CniError::new(code, msg).with_details(details)
}

fn unexpected(request: &Request, response: &Response) -> CniError {
    let op = serde_json::to_value(request)
        .ok()
        .and_then(|v| v["op"].as_str().map(str::to_string))
        .unwrap_or_default();
    CniError::new(
        codes::IO_FAILURE,
        format!(
            "sluice-agent answered {op:?} with {}",
            response_name(response)
        ),
    )
}

fn response_name(response: &Response) -> String {
    serde_json::to_value(response)
        .ok()
        .and_then(|v| v["result"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_api::ApiError;
    use std::collections::HashMap;

    fn run_with(vars: &[(&str, &str)], stdin: &str) -> (Value, i32) {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        let out = run(|n| map.get(n).cloned(), stdin.as_bytes());
        let value = if out.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&out.stdout).unwrap()
        };
        (value, out.exit_code)
    }

    #[test]
    fn version_needs_nothing_but_the_command() {
        let (v, code) = run_with(&[("CNI_COMMAND", "VERSION")], "garbage");
        assert_eq!(code, 0);
        assert_eq!(
            v,
            json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
    }

    #[test]
    fn errors_use_the_request_version_when_known() {
        let conf = r#"{"cniVersion":"0.4.0","name":"n","type":"sluice-cni"}"#;
        let (v, code) = run_with(&[("CNI_COMMAND", "ADD")], conf);
        assert_eq!(code, 1);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["code"], codes::INVALID_ENV);
        let (v, _) = run_with(&[("CNI_COMMAND", "ADD")], "{");
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["code"], codes::DECODE_FAILURE);
    }

    #[test]
    fn commands_newer_than_the_config_are_code_1() {
        let conf = r#"{"cniVersion":"0.3.1","name":"n","type":"sluice-cni"}"#;
        for cmd in ["CHECK", "STATUS", "GC"] {
            let (v, code) = run_with(&[("CNI_COMMAND", cmd)], conf);
            assert_eq!((v["code"].as_u64(), code), (Some(1), 1), "{cmd}: {v}");
        }
    }

    #[test]
    fn agent_errors_map_to_codes() {
        let key = AttachmentKey {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        let sock = Path::new("/x.sock");
        let cases = [
            (ErrorKind::AlreadyExists, codes::ALREADY_EXISTS),
            (ErrorKind::Exhausted, codes::ADDRESS_POOL_EXHAUSTED),
            (ErrorKind::InvalidArgument, codes::INVALID_NETWORK_CONFIG),
            (ErrorKind::NotFound, codes::UNKNOWN_CONTAINER),
            (ErrorKind::Unavailable, codes::TRY_AGAIN_LATER),
            (ErrorKind::Internal, codes::IO_FAILURE),
        ];
        for (kind, code) in cases {
            let err = agent_error(
                ClientError::Agent(ApiError::new(kind, "boom")),
                Some(&key),
                sock,
            );
            assert_eq!(err.code, code, "{kind:?}");
            assert!(err.details.contains("boom"));
        }
        let err = agent_error(
            ClientError::Agent(ApiError::new(ErrorKind::AlreadyExists, "x")),
            Some(&key),
            sock,
        );
        assert!(
            err.msg.contains("c1") && err.msg.contains("eth0") && err.msg.contains("already"),
            "{}",
            err.msg
        );
        let connect = ClientError::Connect {
            path: sock.into(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        let err = agent_error(connect, None, sock);
        assert_eq!(err.code, codes::TRY_AGAIN_LATER);
        assert!(err.details.contains("/x.sock"), "{}", err.details);
    }

    #[test]
    fn prev_result_checks() {
        let prev = CniResult::from_json(&json!({
            "interfaces": [{"name": "lxc1"}, {"name": "eth0", "sandbox": "/ns/a"}],
            "ips": [{"address": "10.0.0.2/32", "interface": 1}]
        }))
        .unwrap();
        assert!(prev_result_problems(&prev, "eth0", Path::new("/ns/a")).is_empty());
        assert_eq!(
            prev_result_problems(&prev, "eth0", Path::new("/ns/b")).len(),
            1
        );
        assert_eq!(
            prev_result_problems(&prev, "eth1", Path::new("/ns/a")).len(),
            1
        );
        let no_ip =
            CniResult::from_json(&json!({"interfaces": [{"name": "eth0", "sandbox": "/ns/a"}]}))
                .unwrap();
        assert!(prev_result_problems(&no_ip, "eth0", Path::new("/ns/a"))[0].contains("no IP"));
    }
}
