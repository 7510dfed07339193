//! The real agent in a node namespace, driven by the real `sluice-cni` binary exactly as a
//! container runtime drives it: chains with Debian's reference plugins, IPAM exhaustion, GC,
//! duplicate ADD, and crash safety (the agent killed in the middle of ADDs).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::{cni_path, require_root, Node};
use serde_json::json;
use sluice_cni::runtime::{self, ExecNetns};
use sluice_netdev::{NetHandle, Netns};

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
