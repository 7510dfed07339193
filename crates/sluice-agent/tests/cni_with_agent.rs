//! The real agent in a node namespace, driven by the real `sluice-cni` binary exactly as a
//! container runtime drives it: chains with Debian's reference plugins, IPAM exhaustion, GC,
//! duplicate ADD, and crash safety (the agent killed in the middle of ADDs).

use std::collections::BTreeSet;
use std::io::Write;
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

fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test needs root (netns, BPF), and CI=true forbids skipping it");
    }
    eprintln!("SKIP: not root; this test needs network namespaces and BPF");
    false
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice-agent"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cni_path() -> Vec<PathBuf> {
    let plugin = bin_dir().join("sluice-cni");
    assert!(
        plugin.exists(),
        "{} is missing: run `make build` (cargo build --workspace --bins) first",
        plugin.display()
    );
    vec![bin_dir(), PathBuf::from("/usr/lib/cni")]
}

/// A node namespace running a real agent; everything it made is removed on drop.
struct Node {
    prefix: String,
    node: Netns,
    dir: tempfile::TempDir,
    pin: PathBuf,
    agent: Option<Child>,
    pods: Vec<String>,
}

impl Node {
    fn start(pod_cidr: &str) -> Node {
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
                "nodeName: n1\nmanifests: {m}\nsocket: {d}/agent.sock\nstateDir: {d}/state\nbpfPinPath: {pin}\n",
                m = dir.path().join("manifests").display(),
                d = dir.path().display(),
                pin = pin.display()
            ),
        )
        .unwrap();
        let mut n = Node {
            prefix,
            node,
            dir,
            pin,
            agent: None,
            pods: Vec::new(),
        };
        n.spawn_agent();
        n
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn spawn_agent(&mut self) {
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

    fn wait_ready(&self) {
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

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pod(&mut self, name: &str) -> PathBuf {
        let full = format!("{}-{name}", self.prefix);
        Netns::create(&full).unwrap();
        self.pods.push(full.clone());
        Path::new("/run/netns").join(full)
    }

    fn invocation(&self, container: &str, netns: &Path) -> Invocation {
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
    fn conflist(&self, version: &str, extra: Vec<Value>) -> ConfList {
        let mut plugins = vec![json!({"type": "sluice-cni", "agentSocket": self.socket()})];
        plugins.extend(extra);
        let list = json!({"cniVersion": version, "name": "sluice", "plugins": plugins});
        ConfList::parse(list.to_string().as_bytes()).unwrap()
    }

    fn endpoints(&self) -> Vec<sluice_api::Endpoint> {
        match Client::new(self.socket())
            .call(&Request::ListEndpoints)
            .unwrap()
        {
            Response::Endpoints { endpoints } => endpoints,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn lxc_devices(&self) -> Vec<String> {
        NetHandle::new(&self.node)
            .unwrap()
            .list_links()
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n.starts_with("lxc"))
            .collect()
    }

    fn state_files(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.dir.path().join("state/endpoints"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Runs the plugin binary directly, as a runtime would, returning (exit ok, stdout JSON).
    fn cni(&self, command: &str, container: &str, netns: &Path) -> (bool, Value) {
        let child = self.cni_spawn(command, container, netns);
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.success(),
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    fn cni_spawn(&self, command: &str, container: &str, netns: &Path) -> Child {
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
    }
}

#[test]
fn runs_first_in_a_chain_with_reference_plugins() {
    if !require_root() {
        return;
    }
    let mut node = Node::start("10.201.0.0/24");
    let pod = node.pod("p1");
    let list = node.conflist("1.0.0", vec![json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.rp_filter": "0", "net.ipv4.tcp_keepalive_time": "123"}})]);
    let inv = node.invocation("c1", &pod);
    let result = runtime::add(&list, &inv).unwrap_or_else(|e| panic!("ADD: {e}\n{}", node.log()));

    // The final result is sluice's, passed through tuning.
    let ips = result["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 1, "{result}");
    let address = ips[0]["address"].as_str().unwrap();
    assert!(
        address.starts_with("10.201.0.") && address.ends_with("/32"),
        "{address}"
    );
    let iface = &result["interfaces"][ips[0]["interface"].as_u64().unwrap() as usize];
    assert_eq!(iface["name"], "eth0");
    assert_eq!(iface["sandbox"], pod.to_str().unwrap());

    // tuning really ran inside the pod, after sluice made the interface.
    let keepalive = sluice_netdev::sysctl_get(
        &Netns::from_path(&pod).unwrap(),
        "net/ipv4/tcp_keepalive_time",
    )
    .unwrap();
    assert_eq!(keepalive.trim(), "123");
    let eps = node.endpoints();
    assert_eq!(eps.len(), 1);
    assert!(eps[0].datapath_attached);
    assert_eq!(eps[0].pod.as_ref().map(|p| p.name.as_str()), Some("c1"));

    runtime::check(&list, &inv, &result).unwrap_or_else(|e| panic!("CHECK: {e}"));
    runtime::del(&list, &inv, Some(&result)).unwrap();
    runtime::del(&list, &inv, Some(&result)).expect("DEL is idempotent");
    assert!(node.endpoints().is_empty());
    assert!(node.lxc_devices().is_empty());
    assert!(node.state_files().is_empty());
}

#[test]
fn check_reports_drift() {
    if !require_root() {
        return;
    }
    let mut node = Node::start("10.202.0.0/24");
    let pod = node.pod("p1");
    let list = node.conflist("1.1.0", vec![]);
    let inv = node.invocation("c1", &pod);
    let result = runtime::add(&list, &inv).unwrap();
    // Someone removes the pod's default route behind our back.
    let handle = NetHandle::new(&Netns::from_path(&pod).unwrap()).unwrap();
    let default = handle
        .routes(None)
        .unwrap()
        .into_iter()
        .find(|r| r.dst.prefix_len() == 0)
        .unwrap();
    assert!(handle.delete_route(&default).unwrap());
    let err = runtime::check(&list, &inv, &result).unwrap_err();
    let cni = err.cni_error().expect("a CNI error");
    assert_eq!(cni.code, 101, "{err}");
    assert!(cni.details.contains("default route"), "{}", cni.details);
}

#[test]
fn exhaustion_duplicates_and_gc() {
    if !require_root() {
        return;
    }
    let mut node = Node::start("10.203.0.0/30"); // two usable addresses
    let pods: Vec<PathBuf> = (0..3).map(|i| node.pod(&format!("p{i}"))).collect();
    let (ok0, r0) = node.cni("ADD", "c0", &pods[0]);
    let (ok1, _) = node.cni("ADD", "c1", &pods[1]);
    assert!(ok0 && ok1, "{r0}");

    let (ok, err) = node.cni("ADD", "c0", &pods[0]);
    assert!(!ok);
    assert_eq!(err["code"], 102, "ADD of an existing attachment: {err}");

    let (ok, err) = node.cni("ADD", "c2", &pods[2]);
    assert!(!ok);
    assert_eq!(err["code"], 100, "{err}");
    assert!(
        err["details"].as_str().unwrap().contains("10.203.0.0/30"),
        "{err}"
    );
    assert_eq!(
        node.lxc_devices().len(),
        2,
        "the failed ADD left nothing behind"
    );
    assert_eq!(node.state_files().len(), 2);

    // GC keeps only c0; c1's address becomes free and c2 gets it.
    let list = node.conflist("1.1.0", vec![]);
    let keep = [sluice_api::AttachmentKey {
        container_id: "c0".into(),
        ifname: "eth0".into(),
    }];
    runtime::gc(
        &list,
        &cni_path(),
        &keep,
        Some(&ExecNetns::Path(node.node.path().into())),
    )
    .unwrap();
    assert_eq!(node.endpoints().len(), 1);
    let (ok, r2) = node.cni("ADD", "c2", &pods[2]);
    assert!(ok, "{r2}");
    assert_ne!(r2["ips"][0]["address"], r0["ips"][0]["address"]);
}

/// Kill -9 the agent at arbitrary moments during ADDs; after the runtime's usual reaction (DEL
/// of a failed ADD) no address is leaked and none is held twice.
#[test]
fn killing_the_agent_mid_add_neither_leaks_nor_duplicates() {
    if !require_root() {
        return;
    }
    let mut node = Node::start("10.204.0.0/24");
    let mut succeeded = Vec::new();
    for i in 0..10 {
        let container = format!("k{i}");
        let pod = node.pod(&container);
        let plugin = node.cni_spawn("ADD", &container, &pod);
        // 0..=200 ms: before, during or after the ADD (which takes tens of ms).
        let delay = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            % 11)
            * 20;
        std::thread::sleep(Duration::from_millis(delay as u64));
        node.kill_agent();
        let out = plugin.wait_with_output().unwrap();
        node.spawn_agent();
        if out.status.success() {
            succeeded.push(container);
        } else {
            let (ok, err) = node.cni("DEL", &container, &pod);
            assert!(ok, "DEL after a failed ADD: {err}");
        }
    }
    eprintln!("{} of 10 ADDs survived the kill", succeeded.len());
    let eps = node.endpoints();
    let names: BTreeSet<String> = eps.iter().map(|e| e.key.container_id.clone()).collect();
    assert_eq!(
        names,
        succeeded.iter().cloned().collect(),
        "exactly the successful ADDs are attached"
    );
    let ips: BTreeSet<_> = eps.iter().map(|e| e.address).collect();
    assert_eq!(ips.len(), eps.len(), "no address is held twice");
    assert_eq!(
        node.state_files().len(),
        eps.len(),
        "no address leaked on disk"
    );
    assert_eq!(node.lxc_devices().len(), eps.len(), "no device leaked");
    assert!(eps.iter().all(|e| e.datapath_attached));
}
