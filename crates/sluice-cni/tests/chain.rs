//! `sluice_cni::runtime` running conflists: sluice-cni (against a fake agent) chained with test
//! plugins that record what they were given, and — as root — with Debian's real `tuning`.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use sluice_api::{AttachmentKey, Request};
use sluice_cni::runtime::{self, ConfList, ExecNetns, Invocation, RuntimeError};
use support::FakeAgent;

/// A test plugin: records stdin to `calls/NN-COMMAND-TYPE.json` and its CNI_* environment next
/// to it; on ADD prints its prevResult back (or an empty result when it has none).
///
/// prevResult is cut out with sed, which works because the runtime writes compact JSON in which
/// prevResult is the last key before "type" (sorted keys) or the last key (insertion order).
const RECORDER: &str = r#"#!/bin/sh
calls=__CALLS__
n=$(ls "$calls" | grep -c '\.json$')
f="$calls/$(printf %02d "$n")-$CNI_COMMAND-$(basename "$0").json"
cat > "$f"
env | grep '^CNI_' | sort > "$f.env"
[ "$CNI_COMMAND" = ADD ] || exit 0
if grep -q '"prevResult":' "$f"; then
  sed -e 's/^.*"prevResult"://' -e 's/,"type":"[^"]*"}$//;t' -e 's/}$//' "$f"
else
  echo '{"cniVersion":"1.1.0"}'
fi
"#;

const FAILER: &str = r#"#!/bin/sh
cat > /dev/null
echo '{"cniVersion":"1.1.0","code":42,"msg":"nope","details":"failer always fails"}'
exit 1
"#;

const CRASHER: &str = "#!/bin/sh\necho 'not json'\necho 'segfault or so' >&2\nexit 2\n";

struct Lab {
    agent: FakeAgent,
    _dir: tempfile::TempDir,
    bin: PathBuf,
    calls: PathBuf,
}

impl Lab {
    fn new() -> Self {
        let agent = FakeAgent::start();
        let dir = tempfile::tempdir().unwrap();
        let (bin, calls) = (dir.path().join("bin"), dir.path().join("calls"));
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&calls).unwrap();
        std::os::unix::fs::symlink(support::BIN, bin.join("sluice-cni")).unwrap();
        let recorder = RECORDER.replace("__CALLS__", calls.to_str().unwrap());
        for (name, text) in [
            ("rec-a", recorder.as_str()),
            ("rec-b", &recorder),
            ("failer", FAILER),
            ("crasher", CRASHER),
        ] {
            let path = bin.join(name);
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self {
            agent,
            _dir: dir,
            bin,
            calls,
        }
    }

    fn list(&self, version: &str, others: &[Value]) -> ConfList {
        let mut plugins = vec![json!({"type": "sluice-cni", "agentSocket": self.agent.socket})];
        plugins.extend(others.iter().cloned());
        let text = json!({"cniVersion": version, "name": "podnet", "plugins": plugins}).to_string();
        ConfList::parse(text.as_bytes()).unwrap()
    }

    fn invocation(&self, container: &str) -> Invocation {
        Invocation {
            container_id: container.into(),
            netns: "/run/netns/pod-1".into(),
            ifname: "eth0".into(),
            args: runtime::k8s_args("default", "web", container),
            cni_path: vec![PathBuf::from("/nonexistent"), self.bin.clone()],
            ..Default::default()
        }
    }

    /// Recorded calls in order: (file stem like "00-ADD-rec-a", stdin JSON, CNI_* env).
    fn calls(&self) -> Vec<(String, Value, String)> {
        let mut names: Vec<_> = fs::read_dir(&self.calls)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let stdin = fs::read_to_string(self.calls.join(&n)).unwrap();
                let env = fs::read_to_string(self.calls.join(format!("{n}.env"))).unwrap();
                (
                    n.trim_end_matches(".json").to_string(),
                    serde_json::from_str(&stdin).unwrap(),
                    env,
                )
            })
            .collect()
    }

    fn clear_calls(&self) {
        fs::remove_dir_all(&self.calls).unwrap();
        fs::create_dir_all(&self.calls).unwrap();
    }
}

fn key(container: &str) -> AttachmentKey {
    AttachmentKey {
        container_id: container.into(),
        ifname: "eth0".into(),
    }
}

#[test]
fn add_check_del_through_a_chain() {
    let lab = Lab::new();
    let list = lab.list(
        "1.1.0",
        &[json!({"type": "rec-a"}), json!({"type": "rec-b"})],
    );
    let inv = lab.invocation("c1");

    let result = runtime::add(&list, &inv).unwrap();
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["ips"][0]["address"], "10.9.0.2/32");
    assert_eq!(result["interfaces"][1]["sandbox"], "/run/netns/pod-1");
    let calls = lab.calls();
    let names: Vec<_> = calls.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(names, ["00-ADD-rec-a", "01-ADD-rec-b"]);
    for (_, stdin, env) in &calls {
        // Injected: the list's name and version, and the previous plugin's result.
        assert_eq!(stdin["cniVersion"], "1.1.0");
        assert_eq!(stdin["name"], "podnet");
        assert_eq!(stdin["prevResult"], result);
        assert!(
            env.contains("CNI_COMMAND=ADD\n") && env.contains("CNI_CONTAINERID=c1\n"),
            "{env}"
        );
        assert!(
            env.contains("CNI_IFNAME=eth0\n") && env.contains("CNI_NETNS=/run/netns/pod-1\n"),
            "{env}"
        );
        assert!(
            env.contains("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1\n"),
            "{env}"
        );
        assert!(
            env.contains(&format!("CNI_PATH=/nonexistent:{}\n", lab.bin.display())),
            "{env}"
        );
    }

    lab.clear_calls();
    runtime::check(&list, &inv, &result).unwrap();
    let calls = lab.calls();
    assert_eq!(
        calls.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["00-CHECK-rec-a", "01-CHECK-rec-b"]
    );
    assert!(calls.iter().all(|c| c.1["prevResult"] == result));
    assert!(matches!(
        lab.agent.requests().last(),
        Some(Request::Check { .. })
    ));

    lab.clear_calls();
    runtime::del(&list, &inv, Some(&result)).unwrap();
    let calls = lab.calls();
    // Reverse order; sluice-cni (first in the list) runs last.
    assert_eq!(
        calls.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["00-DEL-rec-b", "01-DEL-rec-a"]
    );
    assert!(calls.iter().all(|c| c.1["prevResult"] == result));
    assert_eq!(
        lab.agent.requests().last(),
        Some(&Request::Del {
            key: key("c1"),
            netns: Some("/run/netns/pod-1".into())
        })
    );
    assert!(lab.agent.keys().is_empty());

    // DEL without a cached result (e.g. after a runtime restart) passes no prevResult; it stays
    // idempotent.
    lab.clear_calls();
    runtime::del(&list, &inv, None).unwrap();
    assert!(lab.calls().iter().all(|c| c.1.get("prevResult").is_none()));
}

#[test]
fn check_is_skipped_when_disabled_and_reports_drift_otherwise() {
    let lab = Lab::new();
    let list = lab.list("1.1.0", &[json!({"type": "rec-a"})]);
    let inv = lab.invocation("c1");
    let result = runtime::add(&list, &inv).unwrap();
    lab.agent.set(|s| s.drift = vec!["veth gone".into()]);
    let err = runtime::check(&list, &inv, &result).unwrap_err();
    assert_eq!(err.plugin(), Some("sluice-cni"));
    assert_eq!(err.cni_error().unwrap().code, 101);
    assert_eq!(err.cni_error().unwrap().details, "veth gone");

    let disabled = ConfList {
        disable_check: true,
        ..list
    };
    let before = lab.agent.requests().len();
    runtime::check(&disabled, &inv, &result).unwrap();
    assert_eq!(lab.agent.requests().len(), before);
}

#[test]
fn a_failing_plugin_is_named_with_its_cni_error() {
    let lab = Lab::new();
    let list = lab.list("1.1.0", &[json!({"type": "failer"})]);
    let err = runtime::add(&list, &lab.invocation("c1")).unwrap_err();
    match &err {
        RuntimeError::Plugin {
            plugin,
            index,
            error,
            ..
        } => {
            assert_eq!((plugin.as_str(), *index), ("failer", 1));
            assert_eq!(
                (error.code, error.msg.as_str(), error.details.as_str()),
                (42, "nope", "failer always fails")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("failer"), "{err}");

    // sluice-cni's own errors come back the same way.
    let err = runtime::add(&list, &lab.invocation("c1")).unwrap_err();
    assert_eq!(
        (err.plugin(), err.cni_error().map(|e| e.code)),
        (Some("sluice-cni"), Some(102))
    );

    // A plugin that prints no CNI error still gets a CniError (code 103) with its output.
    let list = lab.list("1.1.0", &[json!({"type": "crasher"})]);
    let err = runtime::add(&list, &lab.invocation("c2")).unwrap_err();
    match err {
        RuntimeError::Plugin {
            plugin,
            error,
            stderr,
            ..
        } => {
            assert_eq!(plugin, "crasher");
            assert_eq!(error.code, 103);
            assert_eq!(error.details, "not json");
            assert_eq!(stderr, "segfault or so");
        }
        other => panic!("unexpected {other:?}"),
    }

    let list = lab.list("1.1.0", &[json!({"type": "missing"})]);
    let err = runtime::add(&list, &lab.invocation("c3")).unwrap_err();
    assert!(
        matches!(err, RuntimeError::PluginNotFound { ref plugin, .. } if plugin == "missing"),
        "{err:?}"
    );
}

#[test]
fn status_gc_and_version_through_the_runtime() {
    let lab = Lab::new();
    let list = lab.list("1.1.0", &[json!({"type": "rec-a"})]);
    let path = vec![lab.bin.clone()];
    runtime::status(&list, &path, None).unwrap();
    lab.agent.set(|s| s.ips_free = 0);
    let err = runtime::status(&list, &path, None).unwrap_err();
    assert_eq!(
        (err.plugin(), err.cni_error().map(|e| e.code)),
        (Some("sluice-cni"), Some(50))
    );

    for c in ["keep", "stale"] {
        runtime::add(&list, &lab.invocation(c)).unwrap();
    }
    lab.clear_calls();
    runtime::gc(&list, &path, &[key("keep")], None).unwrap();
    assert_eq!(lab.agent.keys(), vec![key("keep")]);
    let calls = lab.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "00-GC-rec-a");
    assert_eq!(
        calls[0].1["cni.dev/valid-attachments"],
        json!([{"containerID": "keep", "ifname": "eth0"}])
    );
    // GC and STATUS get only CNI_COMMAND and CNI_PATH.
    assert_eq!(
        calls[0].2,
        format!("CNI_COMMAND=GC\nCNI_PATH={}\n", lab.bin.display())
    );

    let v = runtime::version("sluice-cni", &path, None).unwrap();
    assert_eq!(v["supportedVersions"][4], "1.1.0");
}

#[test]
fn exec_netns_is_entered_before_the_plugin_runs() {
    let lab = Lab::new();
    let path = vec![lab.bin.clone()];
    // Not a namespace file: setns fails in the child, so the spawn fails.
    let err = runtime::version(
        "sluice-cni",
        &path,
        Some(&ExecNetns::Path("/dev/null".into())),
    )
    .unwrap_err();
    assert!(matches!(err, RuntimeError::Spawn { .. }), "{err:?}");
    if is_root() {
        let own = ExecNetns::Path("/proc/self/ns/net".into());
        runtime::version("sluice-cni", &path, Some(&own)).unwrap();
        let fd = std::sync::Arc::new(std::os::fd::OwnedFd::from(
            fs::File::open("/proc/self/ns/net").unwrap(),
        ));
        runtime::version("sluice-cni", &path, Some(&ExecNetns::Fd(fd))).unwrap();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A named network namespace, deleted on drop.
struct NamedNetns(String);

impl NamedNetns {
    fn new(prefix: &str) -> Self {
        let name = format!("{prefix}{}", std::process::id());
        ip(&["netns", "add", &name]);
        Self(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Root only: `[sluice-cni, tuning]` with Debian's real tuning plugin (spec 1.0.0) changing the
/// MTU of the pod interface. Plugins run inside a "node" namespace (`exec_netns`), as in the lab;
/// the fake agent stands in for the real one by creating the veth pair between node and pod.
#[test]
fn real_chain_with_debian_tuning() {
    let tuning = Path::new("/usr/lib/cni/tuning");
    if !is_root() || !tuning.exists() || Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipping: needs root, ip and /usr/lib/cni/tuning");
        return;
    }
    let (node, pod) = (
        NamedNetns::new("sluicecni-node"),
        NamedNetns::new("sluicecni-pod"),
    );
    let lab = Lab::new();
    let node_name = node.0.clone();
    lab.agent.set(|s| {
        s.on_add = Some(Box::new(move |attachment, netns| {
            let (host, ifname) = (&attachment.host_ifname, &attachment.key.ifname);
            let netns = netns.to_str().unwrap();
            ip(&[
                "-n", &node_name, "link", "add", host, "type", "veth", "peer", "name", ifname,
                "netns", netns,
            ]);
        }))
    });

    let list = lab.list("1.0.0", &[json!({"type": "tuning", "mtu": 1280})]);
    let mut inv = lab.invocation("realchain");
    inv.netns = pod.path();
    inv.cni_path = vec![lab.bin.clone(), PathBuf::from("/usr/lib/cni")];
    inv.exec_netns = Some(ExecNetns::Path(node.path()));

    let result = runtime::add(&list, &inv).unwrap();
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(
        result["interfaces"][1],
        json!({"name": "eth0", "mac": "02:00:0a:09:00:02", "sandbox": pod.path()})
    );
    assert_eq!(
        result["ips"][0],
        json!({"address": "10.9.0.2/32", "gateway": "169.254.1.1", "interface": 1})
    );
    assert!(ip(&["-n", &pod.0, "link", "show", "eth0"]).contains("mtu 1280"));
    assert!(ip(&["-n", &node.0, "link", "show", "lxc0002"]).contains("lxc0002"));

    runtime::check(&list, &inv, &result).unwrap();
    runtime::del(&list, &inv, Some(&result)).unwrap();
    assert!(lab.agent.keys().is_empty());
    // tuning restored the MTU it changed.
    assert!(ip(&["-n", &pod.0, "link", "show", "eth0"]).contains("mtu 1500"));
}
