//! Shared fixture: a node namespace running the real agent, driven like a runtime drives it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_api::{Client, Request, Response};
use sluice_cni::runtime::{self, ConfList, ExecNetns, Invocation};
use sluice_netdev::{NetHandle, Netns};

pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test needs root (netns, BPF), and CI=true forbids skipping it");
    }
    eprintln!("SKIP: not root; this test needs network namespaces and BPF");
    false
}

pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice-agent"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn cni_path() -> Vec<PathBuf> {
    let plugin = bin_dir().join("sluice-cni");
    assert!(
        plugin.exists(),
        "{} is missing: run `make build` (cargo build --workspace --bins) first",
        plugin.display()
    );
    vec![bin_dir(), PathBuf::from("/usr/lib/cni")]
}

/// A node namespace running a real agent; everything it made is removed on drop.
pub struct Node {
    pub prefix: String,
    pub node: Netns,
    pub dir: tempfile::TempDir,
    pin: PathBuf,
    agent: Option<Child>,
    pods: Vec<String>,
    pub cgroup: Option<PathBuf>,
}

impl Node {
    /// A node with socket-LB off (it would otherwise attach to the root cgroup).
    pub fn start(pod_cidr: &str) -> Node {
        Self::start_with(pod_cidr, None)
    }

    /// With `cgroup`, socket-LB attaches there (the directory is created and removed).
    pub fn start_with(pod_cidr: &str, cgroup: Option<PathBuf>) -> Node {
        Self::start_with_config(pod_cidr, cgroup, "")
    }

    /// `extra` is appended to the agent's YAML configuration.
    pub fn start_with_config(pod_cidr: &str, cgroup: Option<PathBuf>, extra: &str) -> Node {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "sag{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let node = Netns::create(&format!("{prefix}-node")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
        std::fs::write(
            dir.path().join("manifests/node.yaml"),
            format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\nspec: {{podCIDR: {pod_cidr}}}\nstatus: {{addresses: [{{type: InternalIP, address: 192.168.99.2}}]}}\n"
            ),
        )
        .unwrap();
        let pin = PathBuf::from(format!("/sys/fs/bpf/sluice/test-{prefix}"));
        std::fs::write(
            dir.path().join("agent.yaml"),
            format!(
                "nodeName: n1\nmanifests: {m}\nsocket: {d}/agent.sock\nstateDir: {d}/state\nbpfPinPath: {pin}\n{socklb}{extra}",
                m = dir.path().join("manifests").display(),
                d = dir.path().display(),
                pin = pin.display(),
                socklb = match &cgroup {
                    Some(c) => format!("socketLb: true\ncgroupPath: {}\n", c.display()),
                    None => "socketLb: false\n".into(),
                }
            ),
        )
        .unwrap();
        if let Some(c) = &cgroup {
            std::fs::create_dir_all(c).unwrap();
        }
        let mut n = Node {
            prefix,
            node,
            dir,
            pin,
            agent: None,
            pods: Vec::new(),
            cgroup,
        };
        n.spawn_agent();
        n
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    pub fn spawn_agent(&mut self) {
        let fd = self.node.open_fd().unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice-agent"));
        cmd.arg("--config").arg(self.dir.path().join("agent.yaml"));
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        let raw = fd.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.agent = Some(cmd.spawn().unwrap());
        drop(fd);
        self.wait_ready();
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Response::Status(s)) = Client::new(self.socket()).call(&Request::Status) {
                if s.ready {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pod(&mut self, name: &str) -> PathBuf {
        let full = format!("{}-{name}", self.prefix);
        Netns::create(&full).unwrap();
        self.pods.push(full.clone());
        Path::new("/run/netns").join(full)
    }

    pub fn invocation(&self, container: &str, netns: &Path) -> Invocation {
        Invocation {
            container_id: container.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            args: runtime::k8s_args("default", container, container),
            cni_path: cni_path(),
            exec_netns: Some(ExecNetns::Path(self.node.path().to_path_buf())),
            ..Default::default()
        }
    }

    /// Debian's reference plugins speak up to CNI 1.0.0, so chains with them use that version.
    pub fn conflist(&self, version: &str, extra: Vec<Value>) -> ConfList {
        let mut plugins = vec![json!({"type": "sluice-cni", "agentSocket": self.socket()})];
        plugins.extend(extra);
        let list = json!({"cniVersion": version, "name": "sluice", "plugins": plugins});
        ConfList::parse(list.to_string().as_bytes()).unwrap()
    }

    /// Pods "client", "b1" and "b2" attached through the plugin; b1 and b2 run `serve`.
    /// Returns (netns path, address) of each, in that order.
    pub fn client_and_two_backends(&mut self) -> Vec<(PathBuf, String)> {
        let mut ips = Vec::new();
        for name in ["client", "b1", "b2"] {
            let pod = self.pod(name);
            let (ok, result) = self.cni("ADD", name, &pod);
            assert!(ok, "{result}");
            let address = result["ips"][0]["address"].as_str().unwrap();
            ips.push((pod, address.trim_end_matches("/32").to_string()));
        }
        serve(&ips[1].0, "b1");
        serve(&ips[2].0, "b2");
        ips
    }

    pub fn endpoints(&self) -> Vec<sluice_api::Endpoint> {
        match Client::new(self.socket())
            .call(&Request::ListEndpoints)
            .unwrap()
        {
            Response::Endpoints { endpoints } => endpoints,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn lxc_devices(&self) -> Vec<String> {
        NetHandle::new(&self.node)
            .unwrap()
            .list_links()
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n.starts_with("lxc"))
            .collect()
    }

    pub fn state_files(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.dir.path().join("state/endpoints"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Runs the plugin binary directly, as a runtime would, returning (exit ok, stdout JSON).
    pub fn cni(&self, command: &str, container: &str, netns: &Path) -> (bool, Value) {
        let child = self.cni_spawn(command, container, netns);
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.success(),
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    pub fn cni_spawn(&self, command: &str, container: &str, netns: &Path) -> Child {
        let mut child = Command::new(bin_dir().join("sluice-cni"))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", bin_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let conf = json!({"cniVersion": "1.1.0", "name": "sluice", "type": "sluice-cni", "agentSocket": self.socket()});
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        child
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_agent();
        for pod in &self.pods {
            let _ = Netns::delete(pod);
        }
        let _ = Netns::delete(&format!("{}-node", self.prefix));
        let _ = std::fs::remove_dir_all(&self.pin);
        if let Some(c) = &self.cgroup {
            let _ = std::fs::remove_dir(c);
        }
    }
}

/// Serves `name` on TCP 8080 (one line per connection) and UDP 5353, inside the pod.
pub fn serve(pod: &Path, name: &'static str) {
    let ns = Netns::from_path(pod).unwrap();
    let tcp = ns
        .run(|| TcpListener::bind("0.0.0.0:8080"))
        .unwrap()
        .unwrap();
    let udp = ns.run(|| UdpSocket::bind("0.0.0.0:5353")).unwrap().unwrap();
    std::thread::spawn(move || {
        for conn in tcp.incoming().flatten() {
            let mut conn = conn;
            let _ = conn.write_all(name.as_bytes());
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(name.as_bytes(), from);
        }
    });
}

pub fn pod_manifest(name: &str, ip: &str, app: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}}}\nspec: {{nodeName: n1}}\nstatus: {{phase: Running, podIP: {ip}}}\n---\n")
}

pub fn wait_for_backends(node: &Node, frontend: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Response::Services { services }) =
            Client::new(node.socket()).call(&Request::ListServices)
        {
            let n = services
                .iter()
                .find(|s| s.frontend == frontend)
                .map(|s| s.backends.len());
            if n == Some(count) || (count == 0 && n.is_none()) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{frontend} never had {count} backends; log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
