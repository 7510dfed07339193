//! Test helpers: a fake `sluice-agent` on a temp unix socket, and a way to run the real
//! `sluice-cni` binary.

#![allow(dead_code)] // each test file uses a different subset

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::Value;
use sluice_api::{AgentStatus, ApiError, Attachment, AttachmentKey, ErrorKind, Request, Response};

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice-cni");

/// Runs on each successful `Add`, with the attachment and the pod's netns path.
pub type AddHook = Box<dyn Fn(&Attachment, &Path) + Send>;

/// The fake agent's memory: what it was asked, what it holds, and how to answer.
pub struct State {
    pub requests: Vec<Request>,
    pub attachments: BTreeMap<AttachmentKey, Attachment>,
    next_host: u8,
    pub ready: bool,
    pub ips_free: usize,
    /// Problems `Check` reports (drift).
    pub drift: Vec<String>,
    /// When set, `Add` also runs this hook (e.g. to create a real veth as root).
    pub on_add: Option<AddHook>,
}

/// Answers `sluice_api::Request`s from an in-memory table.
pub struct FakeAgent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAgent {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            attachments: BTreeMap::new(),
            next_host: 2,
            ready: true,
            ips_free: 250,
            drift: Vec::new(),
            on_add: None,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    let mut line = String::new();
                    if BufReader::new(&stream).read_line(&mut line).is_err() {
                        continue;
                    }
                    let response = match serde_json::from_str::<Request>(&line) {
                        Ok(req) => answer(&mut state.lock().unwrap(), req),
                        Err(e) => Response::Error(ApiError::new(
                            ErrorKind::InvalidArgument,
                            e.to_string(),
                        )),
                    };
                    let mut out = serde_json::to_vec(&response).unwrap();
                    out.push(b'\n');
                    let _ = stream.write_all(&out);
                }
            })
        };
        Self {
            dir,
            socket,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn keys(&self) -> Vec<AttachmentKey> {
        self.state
            .lock()
            .unwrap()
            .attachments
            .keys()
            .cloned()
            .collect()
    }

    pub fn set(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(state: &mut State, req: Request) -> Response {
    state.requests.push(req.clone());
    match req {
        Request::Add { key, netns, .. } => {
            if state.attachments.contains_key(&key) {
                return Response::Error(ApiError::new(
                    ErrorKind::AlreadyExists,
                    format!("{key:?} exists"),
                ));
            }
            let n = state.next_host;
            state.next_host += 1;
            let attachment = Attachment {
                key: key.clone(),
                address: format!("10.9.0.{n}/32").parse().unwrap(),
                gateway: "169.254.1.1".parse().unwrap(),
                mtu: 1500,
                host_ifname: format!("lxc{n:04x}"),
                host_mac: "ee:ee:ee:ee:ee:ee".into(),
                pod_mac: format!("02:00:0a:09:00:{n:02x}"),
                routes: vec![("0.0.0.0/0".parse().unwrap(), "169.254.1.1".parse().unwrap())],
            };
            if let Some(hook) = &state.on_add {
                hook(&attachment, &netns);
            }
            state.attachments.insert(key, attachment.clone());
            Response::Added(attachment)
        }
        Request::Del { key, .. } => Response::Deleted {
            existed: state.attachments.remove(&key).is_some(),
        },
        Request::Check { key, .. } => {
            if !state.attachments.contains_key(&key) {
                return Response::Error(ApiError::new(
                    ErrorKind::NotFound,
                    format!("no attachment {key:?}"),
                ));
            }
            Response::Checked {
                problems: state.drift.clone(),
            }
        }
        Request::Gc { valid } => {
            let removed: Vec<_> = state
                .attachments
                .keys()
                .filter(|k| !valid.contains(k))
                .cloned()
                .collect();
            for k in &removed {
                state.attachments.remove(k);
            }
            Response::Collected { removed }
        }
        // Built from JSON so fields the API adds later (with serde defaults) need no change here.
        Request::Status => Response::Status(
            serde_json::from_value::<AgentStatus>(serde_json::json!({
                "node": "node-a",
                "routing": "native",
                "pod_cidr": "10.9.0.0/24",
                "node_ip": null,
                "ready": state.ready,
                "endpoints": state.attachments.len(),
                "ips_allocated": state.attachments.len(),
                "ips_free": state.ips_free,
                "remote_nodes": [],
                "source": "test",
                "uptime_seconds": 1,
                "pin_path": "/sys/fs/bpf/sluice/node-a",
                "problems": if state.ready { vec![] } else { vec!["datapath not loaded"] },
            }))
            .expect("the fake agent's status matches sluice_api::AgentStatus"),
        ),
        Request::ListEndpoints => Response::Endpoints {
            endpoints: Vec::new(),
        },
        Request::ListServices => Response::Services {
            services: Vec::new(),
        },
        // The CNI plugin never asks these.
        Request::GetEndpoint { .. } | Request::ListPolicies | Request::PolicyTrace { .. } => {
            Response::Error(ApiError::new(
                ErrorKind::InvalidArgument,
                "the fake agent answers CNI requests only",
            ))
        }
    }
}

/// The exit status and stdout (parsed as JSON when not empty) of one `sluice-cni` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub json: Value,
}

/// Runs the real binary with exactly `env` (nothing inherited) and `stdin`.
pub fn run_plugin(env: &[(&str, &str)], stdin: &str) -> Run {
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"))
    };
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout,
        json,
    }
}
