//! `deploy/`'s manifests agree with the agent: RBAC grants exactly what it watches, the
//! DaemonSet wires the node name, mounts and service account, and the ConfigMap's agent
//! configuration and CNI conflist load.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::Value;
use sluice_agent::source::kubernetes::WATCHED;
use sluice_api::config::SourceKind;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");

#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    config_maps: Vec<ConfigMap>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemon_sets: Vec<DaemonSet>,
}

fn typed<T: serde::de::DeserializeOwned>(origin: &str, doc: Value) -> T {
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{origin}: {e}"))
}

fn load() -> Objects {
    let mut files: Vec<PathBuf> = std::fs::read_dir(DEPLOY)
        .unwrap_or_else(|e| panic!("reading {DEPLOY}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.yaml in {DEPLOY}");
    let mut objects = Objects::default();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        let docs =
            serde_saphyr::from_multiple::<Value>(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (index, doc) in docs.into_iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let origin = format!("{name} document {index} ({kind})");
            match kind.as_str() {
                "Namespace" => objects.namespaces.push(typed(&origin, doc)),
                "ServiceAccount" => objects.service_accounts.push(typed(&origin, doc)),
                "ConfigMap" => objects.config_maps.push(typed(&origin, doc)),
                "ClusterRole" => objects.cluster_roles.push(typed(&origin, doc)),
                "ClusterRoleBinding" => objects.bindings.push(typed(&origin, doc)),
                "DaemonSet" => objects.daemon_sets.push(typed(&origin, doc)),
                other => panic!("{origin}: unexpected kind {other:?}"),
            }
        }
    }
    objects
}

fn only<'a, T>(what: &str, items: &'a [T]) -> &'a T {
    assert_eq!(items.len(), 1, "expected exactly one {what}");
    &items[0]
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().expect("objects are named")
}

#[test]
fn namespace_is_sluice_system() {
    let objects = load();
    let ns = only("Namespace", &objects.namespaces);
    assert_eq!(name_of(&ns.metadata), "sluice-system");
    let sa = only("ServiceAccount", &objects.service_accounts);
    assert_eq!(sa.metadata.namespace.as_deref(), Some("sluice-system"));
    let cm = only("ConfigMap", &objects.config_maps);
    assert_eq!(cm.metadata.namespace.as_deref(), Some("sluice-system"));
    let ds = only("DaemonSet", &objects.daemon_sets);
    assert_eq!(ds.metadata.namespace.as_deref(), Some("sluice-system"));
}

#[test]
fn cluster_role_grants_exactly_what_the_agent_watches() {
    let objects = load();
    let role = only("ClusterRole", &objects.cluster_roles);
    let rules = role.rules.as_deref().unwrap_or_default();
    assert!(!rules.is_empty(), "the ClusterRole has no rules");
    let mut granted = BTreeSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(
            verbs,
            BTreeSet::from(["list", "watch"]),
            "rule {i}: verbs must be exactly list and watch"
        );
        assert!(
            rule.resource_names
                .as_deref()
                .unwrap_or_default()
                .is_empty(),
            "rule {i}: resourceNames"
        );
        assert!(
            rule.non_resource_urls
                .as_deref()
                .unwrap_or_default()
                .is_empty(),
            "rule {i}: nonResourceURLs"
        );
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        assert!(
            !groups.is_empty() && !resources.is_empty(),
            "rule {i}: no groups or resources"
        );
        for group in groups {
            for resource in resources {
                assert!(
                    granted.insert((group.clone(), resource.clone())),
                    "rule {i}: ({group:?}, {resource:?}) is granted twice"
                );
            }
        }
    }
    let watched: BTreeSet<(String, String)> = WATCHED
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect();
    assert_eq!(granted, watched);
}

#[test]
fn binding_ties_the_role_to_the_service_account() {
    let objects = load();
    let role = only("ClusterRole", &objects.cluster_roles);
    let sa = only("ServiceAccount", &objects.service_accounts);
    let binding = only("ClusterRoleBinding", &objects.bindings);
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, name_of(&role.metadata));
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(
        subjects.len(),
        1,
        "one subject: the agent's service account"
    );
    let subject = &subjects[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(subject.name, name_of(&sa.metadata));
    assert_eq!(subject.namespace, sa.metadata.namespace);
}

#[test]
fn daemon_set_runs_the_agent_with_its_host_access() {
    let objects = load();
    let sa = only("ServiceAccount", &objects.service_accounts);
    let ds = only("DaemonSet", &objects.daemon_sets);
    assert_eq!(name_of(&ds.metadata), "sluice-agent");
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("the DaemonSet has a pod template spec");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(name_of(&sa.metadata))
    );
    assert_eq!(pod.host_network, Some(true));

    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let host_volume = |path: &str| {
        volumes
            .iter()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == path))
            .map(|v| v.name.clone())
            .unwrap_or_else(|| panic!("no hostPath volume for {path}"))
    };
    let agent = pod
        .containers
        .iter()
        .find(|c| {
            c.command
                .as_deref()
                .unwrap_or_default()
                .first()
                .is_some_and(|cmd| cmd == "sluice-agent")
        })
        .expect("a container runs sluice-agent");
    let mounts = agent.volume_mounts.as_deref().unwrap_or_default();
    for path in ["/sys/fs/bpf", "/run/sluice"] {
        let volume = host_volume(path);
        assert!(
            mounts.iter().any(|m| m.name == volume),
            "the agent does not mount {path}"
        );
    }
    let bpffs = host_volume("/sys/fs/bpf");
    let bpffs_mount = mounts.iter().find(|m| m.name == bpffs).unwrap();
    assert_eq!(
        bpffs_mount.mount_propagation.as_deref(),
        Some("Bidirectional")
    );

    let env = agent.env.as_deref().unwrap_or_default();
    let node_name = env
        .iter()
        .find(|e| e.name == "SLUICE_NODE_NAME")
        .expect("SLUICE_NODE_NAME is set");
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("SLUICE_NODE_NAME comes from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
}

#[test]
fn config_map_holds_a_loadable_config_and_a_matching_conflist() {
    let objects = load();
    let cm = only("ConfigMap", &objects.config_maps);
    assert_eq!(name_of(&cm.metadata), "sluice-config");
    let data = cm.data.as_ref().expect("the ConfigMap has data");

    let dir = tempfile::tempdir().unwrap();
    let path: &Path = &dir.path().join("agent.yaml");
    std::fs::write(path, data.get("agent.yaml").expect("key agent.yaml")).unwrap();
    let cfg = sluice_agent::load_config_for(path, Some("node-a"))
        .unwrap_or_else(|e| panic!("agent.yaml does not load: {e:#}"));
    assert_eq!(cfg.source, SourceKind::Kubernetes);
    assert_eq!(cfg.node_name, "node-a");

    let conflist: Value = serde_json::from_str(
        data.get("10-sluice.conflist")
            .expect("key 10-sluice.conflist"),
    )
    .expect("the conflist is JSON");
    assert_eq!(conflist["cniVersion"], "1.1.0");
    let first = &conflist["plugins"][0];
    assert_eq!(first["type"], "sluice-cni");
    assert_eq!(
        first["agentSocket"].as_str().map(Path::new),
        Some(cfg.socket.as_path()),
        "the CNI plugin's agentSocket must be the agent's socket"
    );

    // The runtime's view (the list) and the plugin's (its own network configuration) accept it.
    let text = data["10-sluice.conflist"].as_bytes();
    let list = sluice_cni::runtime::ConfList::parse(text)
        .unwrap_or_else(|e| panic!("the conflist does not parse: {e:?}"));
    let mut netconf = list.plugins[0].clone();
    netconf.insert("cniVersion".into(), conflist["cniVersion"].clone());
    netconf.insert("name".into(), list.name.clone().into());
    let netconf = sluice_cni::netconf::RawConf::decode(&serde_json::to_vec(&netconf).unwrap())
        .and_then(|raw| raw.validate())
        .unwrap_or_else(|e| panic!("sluice-cni rejects its configuration: {e:?}"));
    assert_eq!(netconf.agent_socket, cfg.socket);
}
