//! Pod interface setup for CNI ADD/DEL/CHECK.
//!
//! Layout (routed, no bridge, no pod-side ARP): the pod gets `ADDRESS/32` on
//! its interface and routes everything via the link-local [`GATEWAY`], whose
//! MAC is pinned to the host veth by a permanent neighbour entry. The node
//! routes `ADDRESS/32` to the host veth (protocol [`RTPROT_SLUICE`]) and pins
//! the pod's MAC the same way. All functions act in the *caller's* namespace
//! for the host side.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::handle::{check_ifname, NetHandle};
use crate::netns::Netns;
use crate::route::{Route, RTPROT_SLUICE};
use crate::{format_mac, sysctl_set};

/// Link-local next hop every pod routes through.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterfaceSpec {
    /// CNI_NETNS.
    pub netns: PathBuf,
    /// CNI_IFNAME, the name inside the pod (e.g. eth0).
    pub ifname: String,
    /// Host-side veth name (see [`host_ifname`]).
    pub host_ifname: String,
    pub address: Ipv4Addr,
    pub mtu: u32,
}

/// What was built (also the input of [`check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub pod_ifname: String,
    pub pod_mac: [u8; 6],
    pub address: Ipv4Addr,
    pub mtu: u32,
}

/// `"lxc"` + first 12 hex chars of sha256(container_id + "/" + ifname):
/// 15 chars (the kernel limit), stable across retries of the same attachment.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    format!("lxc{}", &hex12(&format!("{container_id}/{ifname}")))
}

fn hex12(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

fn host32(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("32 is a valid IPv4 prefix length")
}

fn host_route(host_ifname: &str, address: Ipv4Addr) -> Route {
    Route {
        dst: host32(address),
        dev: Some(host_ifname.to_string()),
        scope_link: true,
        protocol: RTPROT_SLUICE,
        ..Route::default()
    }
}

fn gateway_route(ifname: &str) -> Route {
    Route {
        dst: host32(GATEWAY),
        dev: Some(ifname.to_string()),
        scope_link: true,
        protocol: RTPROT_SLUICE,
        ..Route::default()
    }
}

fn default_route(ifname: &str) -> Route {
    Route {
        gateway: Some(GATEWAY),
        dev: Some(ifname.to_string()),
        onlink: true,
        protocol: RTPROT_SLUICE,
        ..Route::default()
    }
}

/// Create the pod's interface (see module docs). On any failure after the
/// veth exists, the host end is deleted (which removes the peer too), so
/// nothing half-made remains.
pub fn setup(spec: &PodInterfaceSpec) -> Result<PodInterface> {
    check_ifname(&spec.ifname)?;
    check_ifname(&spec.host_ifname)?;
    if spec.mtu < 68 {
        return Err(Error::InvalidArgument(format!(
            "MTU {} for {} is below the IPv4 minimum 68",
            spec.mtu, spec.host_ifname
        )));
    }
    // Fails with NotFound before anything is created.
    let pod_ns = Netns::from_path(&spec.netns)?;
    let pod = NetHandle::new(&pod_ns)?;
    if pod.link_index(&spec.ifname)?.is_some() {
        return Err(Error::AlreadyExists(format!(
            "interface {} in pod {pod_ns}",
            spec.ifname
        )));
    }
    let node_ns = Netns::current()?;
    let host = NetHandle::new(&node_ns)?;

    // Temporary peer name, unique per host_ifname in the node namespace.
    let tmp = format!("tmp{}", hex12(&format!("peer/{}", spec.host_ifname)));
    // If host_ifname already exists this fails with AlreadyExists and we
    // must not delete what we did not make.
    host.create_veth(&spec.host_ifname, &tmp)?;

    match configure(spec, &tmp, &pod_ns, &pod, &node_ns, &host) {
        Ok(iface) => Ok(iface),
        Err(e) => {
            if let Err(undo) = host.delete_link(&spec.host_ifname) {
                tracing::warn!(host_ifname = %spec.host_ifname, error = %undo, "undo of failed pod setup failed");
            }
            Err(e)
        }
    }
}

fn configure(
    spec: &PodInterfaceSpec,
    tmp: &str,
    pod_ns: &Netns,
    pod: &NetHandle,
    node_ns: &Netns,
    host: &NetHandle,
) -> Result<PodInterface> {
    let ifname = spec.ifname.as_str();
    let hostif = spec.host_ifname.as_str();

    host.set_mtu(hostif, spec.mtu)?;
    host.set_mtu(tmp, spec.mtu)?;
    let host_link = host.link_info(hostif)?.ok_or_else(|| {
        Error::NotFound(format!(
            "link {hostif} in {node_ns} right after creating it"
        ))
    })?;

    // Pod side.
    host.move_to_netns(tmp, pod_ns)?;
    pod.rename(tmp, ifname).map_err(|e| match e {
        // Someone made IFNAME in the pod since we looked.
        Error::AlreadyExists(_) => {
            Error::AlreadyExists(format!("interface {ifname} in pod {pod_ns}"))
        }
        other => other,
    })?;
    pod.set_up("lo")?;
    pod.set_up(ifname)?;
    pod.add_address(ifname, host32(spec.address))?;
    pod.replace_route(&gateway_route(ifname))?;
    pod.replace_route(&default_route(ifname))?;
    // The pod never ARPs for its gateway: pin it to the host veth's MAC.
    pod.replace_neighbour(ifname, GATEWAY, host_link.mac)?;
    let pod_link = pod.link_info(ifname)?.ok_or_else(|| {
        Error::NotFound(format!("interface {ifname} in pod {pod_ns} after rename"))
    })?;

    // Host side. The device must be up before a route can use it.
    host.set_up(hostif)?;
    host.replace_route(&host_route(hostif, spec.address))?;
    host.replace_neighbour(hostif, spec.address, pod_link.mac)?;
    // Slash form: interface names may contain dots.
    sysctl_set(node_ns, &format!("net/ipv4/conf/{hostif}/rp_filter"), "0")?;
    sysctl_set(node_ns, &format!("net/ipv4/conf/{hostif}/forwarding"), "1")?;

    Ok(PodInterface {
        host_ifname: hostif.to_string(),
        host_ifindex: host_link.index,
        host_mac: host_link.mac,
        pod_ifname: ifname.to_string(),
        pod_mac: pod_link.mac,
        address: spec.address,
        mtu: spec.mtu,
    })
}

/// Delete the host veth (and the pod's end with it) and its route, in the
/// caller's namespace. `Ok(false)` if neither existed. Does not need the pod
/// namespace, so it works after the runtime has removed it.
pub fn teardown(host_ifname: &str, address: Option<Ipv4Addr>) -> Result<bool> {
    check_ifname(host_ifname)?;
    let host = NetHandle::current()?;
    let mut existed = false;
    if let Some(addr) = address {
        // Only the route through *this* device: the address may already
        // belong to a newer pod elsewhere.
        existed |= host.delete_route(&Route {
            protocol: 0,
            ..host_route(host_ifname, addr)
        })?;
    }
    existed |= host.delete_link(host_ifname)?;
    Ok(existed)
}

/// Compare reality with `expected`. Returns human-readable drift problems;
/// empty means all is as built. Errors only when it cannot look at all.
pub fn check(expected: &PodInterface, netns: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    match Netns::from_path(netns) {
        Ok(ns) => check_pod_side(expected, &ns, &mut problems)?,
        Err(Error::NotFound(_)) => problems.push(format!(
            "pod network namespace {} does not exist",
            netns.display()
        )),
        Err(e) => return Err(e),
    }
    check_host_side(expected, &mut problems)?;
    Ok(problems)
}

fn check_pod_side(exp: &PodInterface, ns: &Netns, problems: &mut Vec<String>) -> Result<()> {
    let pod = NetHandle::new(ns)?;
    let ifname = exp.pod_ifname.as_str();
    let Some(link) = pod.link_info(ifname)? else {
        problems.push(format!("interface {ifname} missing in pod {ns}"));
        return Ok(());
    };
    if !link.up {
        problems.push(format!("interface {ifname} in pod {ns} is down"));
    }
    if link.mtu != exp.mtu {
        problems.push(format!(
            "interface {ifname} in pod {ns} has MTU {} (expected {})",
            link.mtu, exp.mtu
        ));
    }
    if link.mac != exp.pod_mac {
        problems.push(format!(
            "interface {ifname} in pod {ns} has MAC {} (expected {})",
            format_mac(link.mac),
            format_mac(exp.pod_mac)
        ));
    }
    let addrs = pod.addresses(ifname)?;
    if !addrs.contains(&host32(exp.address)) {
        let have: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        problems.push(format!(
            "interface {ifname} in pod {ns} lacks address {}/32 (has [{}])",
            exp.address,
            have.join(", ")
        ));
    }
    let routes = pod.routes(None)?;
    let has = |want: &Route| {
        routes
            .iter()
            .any(|r| r.dst == want.dst && r.gateway == want.gateway && r.dev == want.dev)
    };
    if !has(&default_route(ifname)) {
        problems.push(format!(
            "pod {ns} has no default route via {GATEWAY} dev {ifname}"
        ));
    }
    if !has(&gateway_route(ifname)) {
        problems.push(format!("pod {ns} has no route {GATEWAY}/32 dev {ifname}"));
    }
    let neigh = pod.neighbours(ifname)?;
    if !neigh.contains(&(GATEWAY, exp.host_mac)) {
        problems.push(format!(
            "pod {ns} has no neighbour {GATEWAY} -> {} on {ifname}",
            format_mac(exp.host_mac)
        ));
    }
    Ok(())
}

fn check_host_side(exp: &PodInterface, problems: &mut Vec<String>) -> Result<()> {
    let host = NetHandle::current()?;
    let hostif = exp.host_ifname.as_str();
    let Some(link) = host.link_info(hostif)? else {
        problems.push(format!("host veth {hostif} missing"));
        return Ok(());
    };
    if link.index != exp.host_ifindex {
        problems.push(format!(
            "host veth {hostif} has ifindex {} (expected {}; recreated?)",
            link.index, exp.host_ifindex
        ));
    }
    if !link.up {
        problems.push(format!("host veth {hostif} is down"));
    }
    if link.mtu != exp.mtu {
        problems.push(format!(
            "host veth {hostif} has MTU {} (expected {})",
            link.mtu, exp.mtu
        ));
    }
    if link.mac != exp.host_mac {
        problems.push(format!(
            "host veth {hostif} has MAC {} (expected {})",
            format_mac(link.mac),
            format_mac(exp.host_mac)
        ));
    }
    let want = host_route(hostif, exp.address);
    let routes = host.routes(None)?;
    if !routes
        .iter()
        .any(|r| r.dst == want.dst && r.dev == want.dev && r.gateway.is_none())
    {
        problems.push(format!("host has no route {}/32 dev {hostif}", exp.address));
    }
    if !host
        .neighbours(hostif)?
        .contains(&(exp.address, exp.pod_mac))
    {
        problems.push(format!(
            "host has no neighbour {} -> {} on {hostif}",
            exp.address,
            format_mac(exp.pod_mac)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_shape() {
        let a = host_ifname("abc123", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("lxc"));
        assert_eq!(a, host_ifname("abc123", "eth0"));
        assert_ne!(a, host_ifname("abc123", "eth1"));
        // sha256("abc123/eth0") starts with these 12 hex chars.
        let full = format!("{:x}", Sha256::digest(b"abc123/eth0"));
        assert_eq!(&a[3..], &full[..12]);
    }
}
