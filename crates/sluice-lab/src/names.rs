//! Names of everything a lab creates: network namespaces, interfaces, cgroups, pin paths.
//!
//! Every network namespace of lab `L` starts with `sluice.L.`; lab names contain no dot, so
//! several labs coexist and one lab's objects can be found by prefix.

use std::path::{Path, PathBuf};

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// Lab names are DNS-1123 labels of at most this length.
pub const LAB_NAME_MAX: usize = 40;
/// Node names: DNS-1123 subdomains of at most this length (they end up in paths and netns names).
pub const NODE_NAME_MAX: usize = 63;
/// Pod names: DNS-1123 subdomains of at most this length.
pub const POD_NAME_MAX: usize = 100;

/// Where every lab keeps its state.
pub const STATE_ROOT: &str = "/run/sluice-lab";
/// Parent of every lab's bpffs pin directory.
pub const PIN_ROOT: &str = "/sys/fs/bpf/sluice";
/// The bridge inside the underlay namespace.
pub const BRIDGE: &str = "sluice-br0";
/// The node's underlay interface, inside the node namespace.
pub const NODE_IFNAME: &str = "eth0";
/// The pod's interface, inside the pod namespace.
pub const POD_IFNAME: &str = "eth0";

/// Checks a DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`) of at most `max` bytes.
pub fn check_label(value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > max {
        return Err(format!(
            "is {} characters long, at most {max} allowed",
            value.len()
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("must consist of lower-case letters, digits and '-'".into());
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain (dot-separated labels) of at most `max` bytes.
pub fn check_subdomain(value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > max {
        return Err(format!(
            "is {} characters long, at most {max} allowed",
            value.len()
        ));
    }
    for part in value.split('.') {
        check_label(part, 63).map_err(|_| {
            "must consist of lower-case letters, digits, '-' and '.', each dot-separated part \
             starting and ending with a letter or digit"
                .to_string()
        })?;
    }
    Ok(())
}

pub fn check_lab_name(value: &str) -> Result<(), String> {
    check_label(value, LAB_NAME_MAX)
}

/// Prefix of every network namespace of a lab.
pub fn netns_prefix(lab: &str) -> String {
    format!("sluice.{lab}.")
}

pub fn underlay_netns(lab: &str) -> String {
    format!("{}underlay", netns_prefix(lab))
}

pub fn node_netns(lab: &str, node: &str) -> String {
    format!("{}node.{node}", netns_prefix(lab))
}

pub fn pod_netns(lab: &str, namespace: &str, pod: &str) -> String {
    format!("{}pod.{namespace}.{pod}", netns_prefix(lab))
}

/// Bridge port of node `index` inside the underlay namespace.
pub fn underlay_port(index: usize, node: &str) -> String {
    truncate_ifname(&format!("u{index}-{node}"))
}

/// Temporary name of the node end of the veth, before it moves and becomes `eth0`.
pub fn underlay_peer(index: usize) -> String {
    truncate_ifname(&format!("t{index}"))
}

fn truncate_ifname(name: &str) -> String {
    name.chars().take(IFNAME_MAX).collect()
}

/// `<cgroup2>/sluice-lab-<lab>`.
pub fn lab_cgroup(cgroup_root: &Path, lab: &str) -> PathBuf {
    cgroup_root.join(format!("sluice-lab-{lab}"))
}

pub fn agent_cgroup(cgroup_root: &Path, lab: &str, node: &str) -> PathBuf {
    lab_cgroup(cgroup_root, lab).join(node).join("agent")
}

/// Parent of every pod cgroup of a node (the node agent's socket-LB attach point).
pub fn node_pods_cgroup(cgroup_root: &Path, lab: &str, node: &str) -> PathBuf {
    lab_cgroup(cgroup_root, lab).join(node).join("pods")
}

pub fn pod_cgroup(
    cgroup_root: &Path,
    lab: &str,
    node: &str,
    namespace: &str,
    pod: &str,
) -> PathBuf {
    lab_cgroup(cgroup_root, lab)
        .join(node)
        .join("pods")
        .join(format!("{namespace}.{pod}"))
}

/// `/sys/fs/bpf/sluice/lab-<lab>`: everything the lab's agents pin.
pub fn lab_pin_dir(lab: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(format!("lab-{lab}"))
}

pub fn node_pin_dir(lab: &str, node: &str) -> PathBuf {
    lab_pin_dir(lab).join(node)
}

pub fn state_dir(lab: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(lab)
}

/// `ns/name` as used on the command line and in the API.
pub fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(check_label("node-a", 63).is_ok());
        assert!(check_label("Node", 63).is_err());
        assert!(check_label("-a", 63).is_err());
        assert!(check_label("a-", 63).is_err());
        assert!(check_label("", 63).is_err());
        assert!(check_label(&"a".repeat(64), 63).is_err());
        assert!(check_subdomain("a.b-c.d", 253).is_ok());
        assert!(check_subdomain("a..b", 253).is_err());
        assert!(check_subdomain("a/b", 253).is_err());
    }

    #[test]
    fn interface_names_fit_and_are_unique_per_lab() {
        let long = "a-very-long-node-name-that-goes-on-and-on";
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            for name in [
                underlay_port(i, long),
                underlay_peer(i),
                underlay_port(i, "n"),
            ] {
                assert!(name.len() <= IFNAME_MAX, "{name}");
                assert!(seen.insert(name.clone()), "duplicate {name}");
            }
        }
        assert!(BRIDGE.len() <= IFNAME_MAX);
    }

    #[test]
    fn underlay_ports_stay_unique_when_truncated() {
        // Same long prefix, different indexes: the index comes first so truncation keeps it.
        let a = underlay_port(1, "node-with-long-name-1");
        let b = underlay_port(11, "node-with-long-name-1");
        assert_ne!(a, b);
    }

    #[test]
    fn netns_names_carry_the_lab_prefix_and_do_not_collide() {
        let lab = "e2e-1-2";
        let names = [
            underlay_netns(lab),
            node_netns(lab, "underlay"),
            node_netns(lab, "a"),
            pod_netns(lab, "a", "b"),
            pod_netns(lab, "node", "a"),
        ];
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        for n in &names {
            assert!(n.starts_with(&netns_prefix(lab)), "{n}");
            // Another lab whose name extends this one never shares the prefix.
            assert!(!n.starts_with(&netns_prefix("e2e-1")), "{n}");
        }
    }

    #[test]
    fn lab_names() {
        assert!(check_lab_name("demo").is_ok());
        assert!(check_lab_name("e2e-123-4").is_ok());
        assert!(check_lab_name("a.b").is_err());
        assert!(check_lab_name(&"x".repeat(41)).is_err());
    }
}
