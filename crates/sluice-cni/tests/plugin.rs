//! The real `sluice-cni` binary against a fake agent.

mod support;

use serde_json::{json, Value};
use sluice_api::{AttachmentKey, PodRef, Request};
use support::{run_plugin, FakeAgent, Run};

const NETNS: &str = "/run/netns/pod-1";

fn conf(agent: &FakeAgent, version: &str) -> Value {
    json!({"cniVersion": version, "name": "sluice", "type": "sluice-cni", "agentSocket": agent.socket})
}

fn env<'a>(command: &'a str, container: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container),
        ("CNI_NETNS", NETNS),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
    ]
}

fn run(command: &str, container: &str, conf: &Value) -> Run {
    run_plugin(&env(command, container), &conf.to_string())
}

fn with_prev(mut conf: Value, prev: &Value) -> Value {
    conf["prevResult"] = prev.clone();
    conf
}

fn assert_error(run: &Run, code: u64) {
    assert_eq!(run.code, 1, "exit status; stdout: {}", run.stdout);
    assert_eq!(run.json["code"], code, "{}", run.stdout);
    let keys: Vec<_> = run.json.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        ["cniVersion", "code", "details", "msg"],
        "{}",
        run.stdout
    );
}

fn key(container: &str) -> AttachmentKey {
    AttachmentKey {
        container_id: container.into(),
        ifname: "eth0".into(),
    }
}

#[test]
fn add_prints_an_exact_1_1_0_result() {
    let agent = FakeAgent::start();
    let mut c = conf(&agent, "1.1.0");
    c["dns"] = json!({"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]});
    let out = run("ADD", "c1", &c);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(
        out.json,
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "lxc0002", "mac": "ee:ee:ee:ee:ee:ee", "mtu": 1500},
                {"name": "eth0", "mac": "02:00:0a:09:00:02", "mtu": 1500, "sandbox": NETNS}
            ],
            "ips": [{"address": "10.9.0.2/32", "gateway": "169.254.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]}
        })
    );
    assert_eq!(
        agent.requests(),
        vec![Request::Add {
            key: key("c1"),
            netns: NETNS.into(),
            pod: Some(PodRef {
                namespace: "default".into(),
                name: "web-0".into()
            }),
        }]
    );
}

#[test]
fn add_converts_the_result_to_0_4_0() {
    let agent = FakeAgent::start();
    let out = run("ADD", "c1", &conf(&agent, "0.4.0"));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(
        out.json,
        json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "lxc0002", "mac": "ee:ee:ee:ee:ee:ee"},
                {"name": "eth0", "mac": "02:00:0a:09:00:02", "sandbox": NETNS}
            ],
            "ips": [{"version": "4", "address": "10.9.0.2/32", "gateway": "169.254.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
        })
    );
}

#[test]
fn add_appends_to_a_prev_result() {
    let agent = FakeAgent::start();
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "net0", "sandbox": "/other"}],
        "ips": [{"address": "192.168.0.5/24", "interface": 0}]
    });
    let out = run("ADD", "c1", &with_prev(conf(&agent, "1.0.0"), &prev));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(out.json["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(out.json["ips"][0]["interface"], 0);
    assert_eq!(
        out.json["ips"][1],
        json!({"address": "10.9.0.2/32", "gateway": "169.254.1.1", "interface": 2})
    );
    assert_eq!(out.json["interfaces"][2]["name"], "eth0");
}

#[test]
fn add_twice_is_already_exists() {
    let agent = FakeAgent::start();
    assert_eq!(run("ADD", "c1", &conf(&agent, "1.1.0")).code, 0);
    let out = run("ADD", "c1", &conf(&agent, "1.1.0"));
    assert_error(&out, 102);
    let msg = out.json["msg"].as_str().unwrap();
    assert!(
        msg.contains("c1") && msg.contains("eth0") && msg.contains("already"),
        "{msg}"
    );
}

#[test]
fn del_is_idempotent() {
    let agent = FakeAgent::start();
    let c = conf(&agent, "1.1.0");
    let added = run("ADD", "c1", &c);
    let c = with_prev(c, &added.json);
    for _ in 0..2 {
        let out = run("DEL", "c1", &c);
        assert_eq!((out.code, out.stdout.as_str()), (0, ""));
    }
    assert!(agent.keys().is_empty());
    // Unknown container, no netns, no CNI_PATH: still success.
    let out = run_plugin(
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "never-added"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ],
        &conf(&agent, "1.1.0").to_string(),
    );
    assert_eq!((out.code, out.stdout.as_str()), (0, ""));
    assert_eq!(
        agent.requests().last(),
        Some(&Request::Del {
            key: key("never-added"),
            netns: None
        })
    );
}

#[test]
fn check_passes_after_add_and_reports_drift() {
    let agent = FakeAgent::start();
    let c = conf(&agent, "1.1.0");
    let added = run("ADD", "c1", &c);
    let out = run("CHECK", "c1", &with_prev(c.clone(), &added.json));
    assert_eq!((out.code, out.stdout.as_str()), (0, ""));

    agent.set(|s| {
        s.drift = vec![
            "host veth lxc0002 is missing".into(),
            "tc program detached".into(),
        ]
    });
    let out = run("CHECK", "c1", &with_prev(c.clone(), &added.json));
    assert_error(&out, 101);
    assert_eq!(
        out.json["details"],
        "host veth lxc0002 is missing; tc program detached"
    );

    // A prevResult without our interface is drift too, found without the agent's help.
    agent.set(|s| s.drift.clear());
    let mut prev = added.json.clone();
    prev["interfaces"][1]["name"] = json!("eth9");
    let out = run("CHECK", "c1", &with_prev(c.clone(), &prev));
    assert_error(&out, 101);
    assert!(
        out.json["details"].as_str().unwrap().contains("eth0"),
        "{}",
        out.stdout
    );

    // CHECK needs a prevResult.
    assert_error(&run("CHECK", "c1", &c), 7);
    // CHECK for a container the agent never saw.
    assert_error(&run("CHECK", "c2", &with_prev(c, &added.json)), 3);
}

#[test]
fn version_answers_without_a_valid_config() {
    let expected = json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]});
    for stdin in [r#"{"cniVersion":"1.0.0"}"#, "", "not json"] {
        let out = run_plugin(&[("CNI_COMMAND", "VERSION")], stdin);
        assert_eq!((out.code, &out.json), (0, &expected), "{stdin:?}");
    }
}

#[test]
fn status_reports_availability() {
    let agent = FakeAgent::start();
    let status = |c: &Value| run_plugin(&[("CNI_COMMAND", "STATUS")], &c.to_string());
    let out = status(&conf(&agent, "1.1.0"));
    assert_eq!((out.code, out.stdout.as_str()), (0, ""));

    agent.set(|s| s.ips_free = 0);
    let out = status(&conf(&agent, "1.1.0"));
    assert_error(&out, 50);
    assert!(
        out.json["msg"].as_str().unwrap().contains("exhausted"),
        "{}",
        out.stdout
    );

    agent.set(|s| (s.ips_free, s.ready) = (10, false));
    let out = status(&conf(&agent, "1.1.0"));
    assert_error(&out, 50);
    assert!(
        out.json["details"]
            .as_str()
            .unwrap()
            .contains("datapath not loaded"),
        "{}",
        out.stdout
    );

    let down = json!({"cniVersion": "1.1.0", "name": "sluice", "type": "sluice-cni", "agentSocket": "/nonexistent/agent.sock"});
    assert_error(&status(&down), 50);
    // STATUS is a 1.1.0 command.
    assert_error(&status(&conf(&agent, "1.0.0")), 1);
}

#[test]
fn gc_removes_only_attachments_not_listed_as_valid() {
    let agent = FakeAgent::start();
    for c in ["keep", "drop1", "drop2"] {
        assert_eq!(run("ADD", c, &conf(&agent, "1.1.0")).code, 0);
    }
    let mut c = conf(&agent, "1.1.0");
    c["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let out = run_plugin(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &c.to_string(),
    );
    assert_eq!((out.code, out.stdout.as_str()), (0, ""));
    assert_eq!(agent.keys(), vec![key("keep")]);
    // Without the list GC refuses rather than removing everything.
    let before = agent.requests().len();
    let out = run_plugin(&[("CNI_COMMAND", "GC")], &conf(&agent, "1.1.0").to_string());
    assert_error(&out, 7);
    assert_eq!(agent.requests().len(), before);
}

#[test]
fn malformed_json_is_code_6_and_reaches_no_agent() {
    let agent = FakeAgent::start();
    for stdin in ["{\"cniVersion\": ", "", "[]", "\u{0}\u{1}garbage"] {
        let out = run_plugin(&env("ADD", "c1"), stdin);
        assert_error(&out, 6);
        assert_eq!(out.json["cniVersion"], "1.1.0");
    }
    assert!(agent.requests().is_empty());
}

#[test]
fn unknown_version_is_code_1() {
    let agent = FakeAgent::start();
    let out = run("ADD", "c1", &conf(&agent, "0.2.0"));
    assert_error(&out, 1);
    let msg = out.json["msg"].as_str().unwrap();
    assert!(
        msg.contains("0.2.0") && msg.contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"),
        "{msg}"
    );
    assert!(agent.requests().is_empty());
}

#[test]
fn invalid_config_is_code_7_naming_the_field() {
    let agent = FakeAgent::start();
    for field in ["name", "type", "cniVersion"] {
        let mut c = conf(&agent, "1.1.0");
        c.as_object_mut().unwrap().remove(field);
        let out = run("ADD", "c1", &c);
        assert_error(&out, 7);
        assert!(
            out.json["msg"].as_str().unwrap().contains(field),
            "{}",
            out.stdout
        );
    }
    let mut c = conf(&agent, "1.1.0");
    c["type"] = json!("bridge");
    assert_error(&run("ADD", "c1", &c), 7);
    assert!(agent.requests().is_empty());
}

#[test]
fn missing_or_invalid_env_is_code_4_naming_the_variable() {
    let agent = FakeAgent::start();
    let c = conf(&agent, "0.4.0");
    for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
        let vars: Vec<_> = env("ADD", "c1")
            .into_iter()
            .filter(|(k, _)| *k != var)
            .collect();
        let out = run_plugin(&vars, &c.to_string());
        assert_error(&out, 4);
        assert!(
            out.json["msg"].as_str().unwrap().contains(var),
            "{}",
            out.stdout
        );
        // The request's version is echoed in the error.
        assert_eq!(out.json["cniVersion"], "0.4.0");
    }
    for (var, bad) in [
        ("CNI_IFNAME", "this-is-too-long0"),
        ("CNI_IFNAME", "eth 0"),
        ("CNI_CONTAINERID", "_x"),
        ("CNI_ARGS", "A"),
    ] {
        let mut vars = env("ADD", "c1");
        vars.retain(|(k, _)| *k != var);
        vars.push((var, bad));
        let out = run_plugin(&vars, &c.to_string());
        assert_error(&out, 4);
        let msg = out.json["msg"].as_str().unwrap();
        assert!(msg.contains(var) && msg.contains(bad), "{msg}");
    }
    for command in [None, Some("FROB")] {
        let mut vars = env("ADD", "c1");
        vars.retain(|(k, _)| *k != "CNI_COMMAND");
        vars.extend(command.map(|c| ("CNI_COMMAND", c)));
        let out = run_plugin(&vars, &c.to_string());
        assert_error(&out, 4);
        assert!(
            out.json["msg"].as_str().unwrap().contains("CNI_COMMAND"),
            "{}",
            out.stdout
        );
    }
    assert!(agent.requests().is_empty());
}

#[test]
fn unreachable_agent_is_try_again_later() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let c = json!({"cniVersion": "1.1.0", "name": "sluice", "type": "sluice-cni", "agentSocket": socket});
    for command in ["ADD", "DEL"] {
        let out = run(command, "c1", &c);
        assert_error(&out, 11);
        assert!(
            out.json["details"]
                .as_str()
                .unwrap()
                .contains(socket.to_str().unwrap()),
            "{}",
            out.stdout
        );
    }
}

#[test]
fn odd_inputs_never_panic() {
    let agent = FakeAgent::start();
    let socket = agent.socket.to_str().unwrap().to_string();
    let inputs = [
        json!(null).to_string(),
        json!({"cniVersion": 1, "name": [], "type": {}}).to_string(),
        json!({"cniVersion": "1.1.0", "name": "n", "type": "sluice-cni", "agentSocket": socket, "prevResult": 5}).to_string(),
        json!({"cniVersion": "1.1.0", "name": "n", "type": "sluice-cni", "agentSocket": socket, "prevResult": {"ips": [{"address": "x"}]}}).to_string(),
        json!({"cniVersion": "1.1.0", "name": "n", "type": "sluice-cni", "agentSocket": socket, "dns": "x"}).to_string(),
        "\u{feff}{}".to_string(),
        "{\"a\":".repeat(1000),
    ];
    for command in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
        for input in &inputs {
            let out = run_plugin(&env(command, "c1"), input);
            // DEL and STATUS ignore prevResult; everything else must be a CNI error.
            match out.code {
                0 => assert!(
                    matches!(command, "DEL" | "STATUS") && out.stdout.is_empty(),
                    "{command} {input}: {}",
                    out.stdout
                ),
                1 => assert!(out.json["code"].as_u64().is_some(), "{}", out.stdout),
                other => panic!("{command} {input}: exit status {other}: {}", out.stdout),
            }
        }
    }
    // Undecodable prevResult on ADD never reached the agent.
    assert!(!agent
        .requests()
        .iter()
        .any(|r| matches!(r, Request::Add { .. })));
}
