//! The runtime side of CNI (what libcni does for containerd/CRI-O): execute a network
//! configuration list (`.conflist`) plugin by plugin. The lab uses it to attach pods exactly as a
//! real runtime would.
//!
//! - `add` runs the plugins in order; each gets its plugin object with `cniVersion` and `name`
//!   injected, `runtimeConfig` filtered by its `capabilities`, and `prevResult` = the previous
//!   plugin's result. Returns the last result (the caller caches it for DEL/CHECK).
//! - `del` runs in reverse order, each with `prevResult` = the cached ADD result (if any).
//! - `check` runs in order with `prevResult`; skipped when the list sets `disableCheck`.
//! - `status` runs STATUS on each plugin; skipped for lists older than 1.1.0.
//! - `gc` runs GC on each plugin with `cni.dev/valid-attachments`; skipped for lists older than
//!   1.1.0 or with `disableGC`.
//!
//! Each of them stops at the first failing plugin (GC runs all and reports the first failure).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use sluice_api::AttachmentKey;

use crate::env::{self, validate_container_id, validate_ifname};
use crate::error::{codes, CniError};
use crate::netconf::VALID_ATTACHMENTS_KEY;
use crate::version::{Command, SpecVersion};

/// A parsed network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfList {
    /// `cniVersion`, or the highest supported entry of `cniVersions` (1.1.0).
    pub cni_version: SpecVersion,
    pub name: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    /// The plugin objects as written (each has a string `type`).
    pub plugins: Vec<Map<String, Value>>,
}

/// The network namespace to run plugin processes in (a runtime runs them in the host
/// namespace; in the lab the "host" is a node's namespace).
#[derive(Debug, Clone)]
pub enum ExecNetns {
    /// Opened for each plugin run, e.g. `/run/netns/node1`.
    Path(PathBuf),
    /// An already open namespace file.
    Fd(Arc<OwnedFd>),
}

/// One attachment's parameters (the CNI_* environment of ADD/DEL/CHECK).
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub container_id: String,
    /// CNI_NETNS; may be empty for DEL.
    pub netns: PathBuf,
    pub ifname: String,
    /// CNI_ARGS as pairs, e.g. `("K8S_POD_NAME", "web-0")`; see [`k8s_args`] for what a
    /// Kubernetes runtime passes.
    pub args: Vec<(String, String)>,
    pub cni_path: Vec<PathBuf>,
    pub exec_netns: Option<ExecNetns>,
    /// Capability arguments (e.g. `portMappings`); each plugin receives, as `runtimeConfig`, the
    /// ones it declares in `capabilities`.
    pub capability_args: Map<String, Value>,
}

/// The CNI_ARGS containerd/CRI-O pass for a pod. `IgnoreUnknown=1` matters: without it the
/// reference plugins (e.g. tuning) reject the K8S_* keys.
pub fn k8s_args(namespace: &str, pod: &str, infra_container_id: &str) -> Vec<(String, String)> {
    [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", namespace),
        ("K8S_POD_NAME", pod),
        ("K8S_POD_INFRA_CONTAINER_ID", infra_container_id),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The invocation or list cannot be run (bad container id, CHECK on a pre-0.4.0 list, ...).
    #[error("{0}")]
    Invalid(CniError),
    #[error("plugin {plugin:?} not found in CNI_PATH {}", join_paths(searched))]
    PluginNotFound {
        plugin: String,
        searched: Vec<PathBuf>,
    },
    #[error("cannot run plugin {plugin:?} ({}): {source}", path.display())]
    Spawn {
        plugin: String,
        path: PathBuf,
        source: io::Error,
    },
    /// The plugin exited non-zero; `error` is its error JSON (code 103 when it printed none).
    #[error("{command} failed in plugin {plugin:?} (#{index} of the list): {error} (code {})", error.code)]
    Plugin {
        plugin: String,
        index: usize,
        command: Command,
        error: CniError,
        stderr: String,
    },
    /// The plugin succeeded but its output is not a JSON object.
    #[error("plugin {plugin:?} printed an unreadable {command} result: {reason}")]
    BadResult {
        plugin: String,
        command: Command,
        reason: String,
        stdout: String,
    },
}

impl RuntimeError {
    /// The CNI error, when the failure has one.
    pub fn cni_error(&self) -> Option<&CniError> {
        match self {
            RuntimeError::Invalid(e) | RuntimeError::Plugin { error: e, .. } => Some(e),
            _ => None,
        }
    }

    /// The `type` of the plugin that failed, when a plugin did.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            RuntimeError::Invalid(_) => None,
            RuntimeError::PluginNotFound { plugin, .. }
            | RuntimeError::Spawn { plugin, .. }
            | RuntimeError::Plugin { plugin, .. }
            | RuntimeError::BadResult { plugin, .. } => Some(plugin),
        }
    }
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

impl ConfList {
    /// Parses a `.conflist`: code 6 when not a JSON object, 1 for no supported version, 7 for
    /// missing or invalid fields.
    pub fn parse(json: &[u8]) -> Result<Self, CniError> {
        let map = match serde_json::from_slice::<Value>(json) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(CniError::new(
                    codes::DECODE_FAILURE,
                    "network configuration list is not a JSON object",
                ))
            }
            Err(e) => {
                return Err(CniError::new(
                    codes::DECODE_FAILURE,
                    "cannot decode network configuration list",
                )
                .with_details(e.to_string()))
            }
        };
        let cni_version = list_version(&map)?;
        let name = match map.get("name") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(CniError::invalid_config(
                    "network configuration list is missing \"name\"",
                ))
            }
        };
        validate_container_id(&name).map_err(|why| {
            CniError::invalid_config(format!("invalid list \"name\" {name:?}: {why}"))
        })?;
        let plugins = match map.get("plugins") {
            Some(Value::Array(list)) if !list.is_empty() => list,
            _ => {
                return Err(CniError::invalid_config(
                    "\"plugins\" must be a non-empty array",
                ))
            }
        };
        let plugins = plugins
            .iter()
            .enumerate()
            .map(|(i, p)| match p {
                Value::Object(obj)
                    if obj
                        .get("type")
                        .and_then(Value::as_str)
                        .is_some_and(valid_plugin_type) =>
                {
                    Ok(obj.clone())
                }
                _ => Err(CniError::invalid_config(format!(
                    "plugins[{i}] must be an object with a \"type\" naming an executable"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            cni_version,
            name,
            disable_check: flag(&map, "disableCheck")?,
            disable_gc: flag(&map, "disableGC")?,
            plugins,
        })
    }

    pub fn plugin_types(&self) -> Vec<&str> {
        self.plugins.iter().map(plugin_type).collect()
    }

    /// The JSON a plugin receives on stdin: its object plus injected fields.
    pub fn plugin_config(
        &self,
        index: usize,
        prev_result: Option<&Value>,
        capability_args: &Map<String, Value>,
    ) -> Value {
        let mut conf = self.plugins.get(index).cloned().unwrap_or_default();
        conf.insert("cniVersion".into(), json!(self.cni_version.as_str()));
        conf.insert("name".into(), json!(self.name));
        let runtime_config: Map<String, Value> = match conf.get("capabilities") {
            Some(Value::Object(caps)) => capability_args
                .iter()
                .filter(|(k, _)| caps.get(*k) == Some(&Value::Bool(true)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            _ => Map::new(),
        };
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        Value::Object(conf)
    }
}

fn plugin_type(plugin: &Map<String, Value>) -> &str {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A plugin type is an executable's file name, never a path.
fn valid_plugin_type(t: &str) -> bool {
    !t.is_empty() && t != "." && t != ".." && !t.contains('/')
}

fn list_version(map: &Map<String, Value>) -> Result<SpecVersion, CniError> {
    if let Some(Value::Array(versions)) = map.get("cniVersions") {
        let best = versions
            .iter()
            .filter_map(Value::as_str)
            .filter_map(SpecVersion::parse)
            .max();
        if let Some(v) = best {
            return Ok(v);
        }
    }
    match map.get("cniVersion") {
        Some(Value::String(v)) => SpecVersion::parse_supported(v),
        _ => Err(CniError::invalid_config(
            "network configuration list is missing \"cniVersion\"",
        )),
    }
}

/// libcni accepts both `true` and `"true"` here.
fn flag(map: &Map<String, Value>, key: &str) -> Result<bool, CniError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(CniError::invalid_config(format!(
            "{key:?} must be a boolean, got {other}"
        ))),
    }
}

/// ADD through the whole list; returns the final result.
pub fn add(list: &ConfList, inv: &Invocation) -> Result<Value, RuntimeError> {
    validate_invocation(inv, true)?;
    let (runner, env) = (
        Runner::for_invocation(list, inv),
        attachment_env(Command::Add, inv),
    );
    let mut prev: Option<Value> = None;
    for index in 0..list.plugins.len() {
        let conf = list.plugin_config(index, prev.as_ref(), &inv.capability_args);
        let out = runner.run(index, Command::Add, &env, &conf)?;
        let mut result = parse_object(list, index, Command::Add, &out)?;
        // A result without a version is in the list's version (as libcni assumes).
        result
            .entry("cniVersion")
            .or_insert_with(|| json!(list.cni_version.as_str()));
        prev = Some(Value::Object(result));
    }
    Ok(prev.unwrap_or(Value::Null))
}

/// DEL in reverse order; `prev` is the cached ADD result, when there is one.
pub fn del(list: &ConfList, inv: &Invocation, prev: Option<&Value>) -> Result<(), RuntimeError> {
    validate_invocation(inv, false)?;
    let (runner, env) = (
        Runner::for_invocation(list, inv),
        attachment_env(Command::Del, inv),
    );
    for index in (0..list.plugins.len()).rev() {
        let conf = list.plugin_config(index, prev, &inv.capability_args);
        runner.run(index, Command::Del, &env, &conf)?;
    }
    Ok(())
}

/// CHECK in order with the cached ADD result; a no-op when the list sets `disableCheck`.
pub fn check(list: &ConfList, inv: &Invocation, prev: &Value) -> Result<(), RuntimeError> {
    if list.disable_check {
        return Ok(());
    }
    list.cni_version
        .require(Command::Check)
        .map_err(RuntimeError::Invalid)?;
    validate_invocation(inv, true)?;
    let (runner, env) = (
        Runner::for_invocation(list, inv),
        attachment_env(Command::Check, inv),
    );
    for index in 0..list.plugins.len() {
        let conf = list.plugin_config(index, Some(prev), &inv.capability_args);
        runner.run(index, Command::Check, &env, &conf)?;
    }
    Ok(())
}

/// STATUS on each plugin; a no-op for lists older than 1.1.0 (they have no STATUS).
pub fn status(
    list: &ConfList,
    cni_path: &[PathBuf],
    exec_netns: Option<&ExecNetns>,
) -> Result<(), RuntimeError> {
    if !list.cni_version.allows(Command::Status) {
        return Ok(());
    }
    let runner = Runner {
        list,
        cni_path,
        exec_netns,
    };
    let env = command_env(Command::Status, cni_path);
    for index in 0..list.plugins.len() {
        let conf = list.plugin_config(index, None, &Map::new());
        runner.run(index, Command::Status, &env, &conf)?;
    }
    Ok(())
}

/// GC on each plugin with the attachments to keep; a no-op for lists older than 1.1.0 or with
/// `disableGC`. Every plugin runs; the first failure is returned.
pub fn gc(
    list: &ConfList,
    cni_path: &[PathBuf],
    valid: &[AttachmentKey],
    exec_netns: Option<&ExecNetns>,
) -> Result<(), RuntimeError> {
    if list.disable_gc || !list.cni_version.allows(Command::Gc) {
        return Ok(());
    }
    let runner = Runner {
        list,
        cni_path,
        exec_netns,
    };
    let env = command_env(Command::Gc, cni_path);
    let valid: Vec<Value> = valid
        .iter()
        .map(|k| json!({"containerID": k.container_id, "ifname": k.ifname}))
        .collect();
    let mut first_error = None;
    for index in 0..list.plugins.len() {
        let mut conf = list.plugin_config(index, None, &Map::new());
        conf[VALID_ATTACHMENTS_KEY] = Value::Array(valid.clone());
        if let Err(e) = runner.run(index, Command::Gc, &env, &conf) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// VERSION on one plugin: its `{"cniVersion", "supportedVersions"}` answer.
pub fn version(
    plugin: &str,
    cni_path: &[PathBuf],
    exec_netns: Option<&ExecNetns>,
) -> Result<Value, RuntimeError> {
    let path = find_plugin(plugin, cni_path)?;
    let env = command_env(Command::Version, cni_path);
    let stdin = json!({"cniVersion": SpecVersion::CURRENT.as_str()});
    let out = exec(plugin, 0, &path, Command::Version, &env, &stdin, exec_netns)?;
    serde_json::from_slice::<Value>(&out).map_err(|e| RuntimeError::BadResult {
        plugin: plugin.to_string(),
        command: Command::Version,
        reason: e.to_string(),
        stdout: String::from_utf8_lossy(&out).into_owned(),
    })
}

/// Finds `plugin` in the CNI_PATH directories: the first executable regular file of that name.
pub fn find_plugin(plugin: &str, cni_path: &[PathBuf]) -> Result<PathBuf, RuntimeError> {
    let not_found = || RuntimeError::PluginNotFound {
        plugin: plugin.to_string(),
        searched: cni_path.to_vec(),
    };
    if !valid_plugin_type(plugin) {
        return Err(not_found());
    }
    cni_path
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(not_found)
}

fn validate_invocation(inv: &Invocation, needs_netns: bool) -> Result<(), RuntimeError> {
    let invalid = |var: &str, value: &str, why: String| {
        RuntimeError::Invalid(CniError::invalid_env(var, value, &why))
    };
    validate_container_id(&inv.container_id)
        .map_err(|why| invalid(env::CNI_CONTAINERID, &inv.container_id, why))?;
    validate_ifname(&inv.ifname).map_err(|why| invalid(env::CNI_IFNAME, &inv.ifname, why))?;
    if needs_netns && inv.netns.as_os_str().is_empty() {
        return Err(RuntimeError::Invalid(CniError::missing_env(env::CNI_NETNS)));
    }
    Ok(())
}

type EnvVars = Vec<(&'static str, String)>;

fn command_env(command: Command, cni_path: &[PathBuf]) -> EnvVars {
    vec![
        (env::CNI_COMMAND, command.as_str().to_string()),
        (env::CNI_PATH, join_paths(cni_path)),
    ]
}

fn attachment_env(command: Command, inv: &Invocation) -> EnvVars {
    let args = inv
        .args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";");
    let mut vars = command_env(command, &inv.cni_path);
    vars.extend([
        (env::CNI_CONTAINERID, inv.container_id.clone()),
        (env::CNI_NETNS, inv.netns.to_string_lossy().into_owned()),
        (env::CNI_IFNAME, inv.ifname.clone()),
        (env::CNI_ARGS, args),
    ]);
    vars
}

/// What every plugin run of one operation shares.
struct Runner<'a> {
    list: &'a ConfList,
    cni_path: &'a [PathBuf],
    exec_netns: Option<&'a ExecNetns>,
}

impl<'a> Runner<'a> {
    fn for_invocation(list: &'a ConfList, inv: &'a Invocation) -> Self {
        Self {
            list,
            cni_path: &inv.cni_path,
            exec_netns: inv.exec_netns.as_ref(),
        }
    }

    fn run(
        &self,
        index: usize,
        command: Command,
        env: &EnvVars,
        conf: &Value,
    ) -> Result<Vec<u8>, RuntimeError> {
        let plugin = plugin_type(&self.list.plugins[index]);
        let path = find_plugin(plugin, self.cni_path)?;
        exec(plugin, index, &path, command, env, conf, self.exec_netns)
    }
}

fn parse_object(
    list: &ConfList,
    index: usize,
    command: Command,
    out: &[u8],
) -> Result<Map<String, Value>, RuntimeError> {
    let bad = |reason: String| RuntimeError::BadResult {
        plugin: plugin_type(&list.plugins[index]).to_string(),
        command,
        reason,
        stdout: String::from_utf8_lossy(out).into_owned(),
    };
    match serde_json::from_slice::<Value>(out) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad("not a JSON object".into())),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Runs one plugin process: CNI_* from `env` (stale CNI_* of our own environment removed),
/// `stdin_json` on stdin, optionally inside `exec_netns`. Returns stdout on exit status 0.
fn exec(
    plugin: &str,
    index: usize,
    path: &Path,
    command: Command,
    env: &EnvVars,
    stdin_json: &Value,
    exec_netns: Option<&ExecNetns>,
) -> Result<Vec<u8>, RuntimeError> {
    let spawn_err = |source| RuntimeError::Spawn {
        plugin: plugin.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let mut process = Process::new(path);
    for var in env::ALL_VARS {
        process.env_remove(var);
    }
    process
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Keeps an opened namespace file alive until the child has been spawned.
    let _netns_file: Option<File>;
    if let Some(netns) = exec_netns {
        let fd: RawFd = match netns {
            ExecNetns::Fd(fd) => {
                _netns_file = None;
                fd.as_raw_fd()
            }
            ExecNetns::Path(p) => {
                let file = File::open(p).map_err(spawn_err)?;
                let fd = file.as_raw_fd();
                _netns_file = Some(file);
                fd
            }
        };
        // SAFETY: runs in the forked child before exec; setns is a single async-signal-safe
        // syscall and touches no memory of the parent. The fd stays open in the child until exec.
        unsafe {
            process.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = process.spawn().map_err(spawn_err)?;
    let input = serde_json::to_vec(stdin_json).unwrap_or_default();
    let stdin = child.stdin.take();
    // Feed stdin from another thread so a plugin that writes before reading cannot deadlock us.
    let output = std::thread::scope(|scope| {
        scope.spawn(move || {
            if let Some(mut stdin) = stdin {
                // A plugin may exit without reading stdin; that is its business, not an error.
                let _ = stdin.write_all(&input);
            }
        });
        child.wait_with_output()
    })
    .map_err(spawn_err)?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let error = serde_json::from_slice::<CniError>(&output.stdout).unwrap_or_else(|_| {
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
        CniError::new(
            codes::PLUGIN_FAILED,
            format!("plugin exited with {} without a CNI error", output.status),
        )
        .with_details(if stdout.is_empty() {
            stderr.clone()
        } else {
            stdout
        })
    });
    Err(RuntimeError::Plugin {
        plugin: plugin.to_string(),
        index,
        command,
        error,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: Value) -> Result<ConfList, CniError> {
        ConfList::parse(v.to_string().as_bytes())
    }

    #[test]
    fn parses_a_conflist() {
        let l = list(json!({
            "cniVersion": "1.0.0", "name": "k8s", "disableCheck": "true",
            "plugins": [{"type": "sluice-cni", "agentSocket": "/s"}, {"type": "tuning"}]
        }))
        .unwrap();
        assert_eq!(l.cni_version, SpecVersion::V1_0_0);
        assert!(l.disable_check && !l.disable_gc);
        assert_eq!(l.plugin_types(), vec!["sluice-cni", "tuning"]);
    }

    #[test]
    fn cni_versions_picks_the_highest_supported() {
        let l = list(json!({"cniVersions": ["0.4.0", "1.1.0", "9.0.0"], "cniVersion": "0.3.1", "name": "n", "plugins": [{"type": "a"}]}))
            .unwrap();
        assert_eq!(l.cni_version, SpecVersion::V1_1_0);
    }

    #[test]
    fn invalid_lists() {
        assert_eq!(
            ConfList::parse(b"{").unwrap_err().code,
            codes::DECODE_FAILURE
        );
        let bad = [
            (
                json!({"name": "n", "plugins": [{"type": "a"}]}),
                codes::INVALID_NETWORK_CONFIG,
            ),
            (
                json!({"cniVersion": "0.1.0", "name": "n", "plugins": [{"type": "a"}]}),
                codes::INCOMPATIBLE_VERSION,
            ),
            (
                json!({"cniVersion": "1.0.0", "plugins": [{"type": "a"}]}),
                codes::INVALID_NETWORK_CONFIG,
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": []}),
                codes::INVALID_NETWORK_CONFIG,
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../x"}]}),
                codes::INVALID_NETWORK_CONFIG,
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{}]}),
                codes::INVALID_NETWORK_CONFIG,
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "disableGC": 1, "plugins": [{"type": "a"}]}),
                codes::INVALID_NETWORK_CONFIG,
            ),
        ];
        for (v, code) in bad {
            assert_eq!(list(v.clone()).unwrap_err().code, code, "{v}");
        }
    }

    #[test]
    fn plugin_config_injection() {
        let l = list(json!({
            "cniVersion": "1.1.0", "name": "net",
            "plugins": [{"type": "a", "capabilities": {"portMappings": true, "bandwidth": false}}]
        }))
        .unwrap();
        let caps: Map<String, Value> =
            serde_json::from_value(json!({"portMappings": [1], "bandwidth": {}, "other": 1}))
                .unwrap();
        let prev = json!({"cniVersion": "1.1.0"});
        let conf = l.plugin_config(0, Some(&prev), &caps);
        assert_eq!(conf["cniVersion"], "1.1.0");
        assert_eq!(conf["name"], "net");
        assert_eq!(conf["prevResult"], prev);
        assert_eq!(conf["runtimeConfig"], json!({"portMappings": [1]}));
        assert_eq!(
            l.plugin_config(0, None, &Map::new()).get("runtimeConfig"),
            None
        );
    }

    #[test]
    fn find_plugin_needs_an_executable_file() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("good");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("noexec"), "").unwrap();
        let path = vec![PathBuf::from("/nonexistent"), dir.path().to_path_buf()];
        assert_eq!(find_plugin("good", &path).unwrap(), exe);
        assert!(matches!(
            find_plugin("noexec", &path),
            Err(RuntimeError::PluginNotFound { .. })
        ));
        assert!(matches!(
            find_plugin("../good", &path),
            Err(RuntimeError::PluginNotFound { .. })
        ));
    }

    #[test]
    fn invalid_invocations_are_rejected_before_running_anything() {
        let l =
            list(json!({"cniVersion": "1.1.0", "name": "n", "plugins": [{"type": "x"}]})).unwrap();
        let inv = Invocation {
            container_id: "-bad".into(),
            ifname: "eth0".into(),
            netns: "/ns".into(),
            ..Default::default()
        };
        let err = add(&l, &inv).unwrap_err();
        assert_eq!(err.cni_error().unwrap().code, codes::INVALID_ENV);
        let old =
            list(json!({"cniVersion": "0.3.1", "name": "n", "plugins": [{"type": "x"}]})).unwrap();
        let inv = Invocation {
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: "/ns".into(),
            ..Default::default()
        };
        let err = check(&old, &inv, &json!({})).unwrap_err();
        assert_eq!(err.cni_error().unwrap().code, codes::INCOMPATIBLE_VERSION);
        // STATUS and GC are skipped for old lists, as libcni does.
        assert!(status(&old, &[], None).is_ok());
        assert!(gc(&old, &[], &[], None).is_ok());
    }
}
