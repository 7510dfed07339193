//! The lab's L2 underlay and the node namespaces plugged into it.

use ipnet::Ipv4Net;
use sluice_netdev::{sysctl_set, NetHandle, Netns};

use crate::cluster::NodeDef;
use crate::error::{net, Result};
use crate::names;

/// Sysctls every node namespace gets: it routes for its pods and accepts asymmetric paths.
pub const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv4/conf/all/rp_filter", "0"),
    ("net/ipv4/conf/default/rp_filter", "0"),
];

/// The "outside" host: the underlay namespace itself, holding the last usable underlay
/// address on its bridge. It stands for a machine on the node network that is not part of
/// the cluster (a NodePort/ExternalIP client).
pub fn outside_ip(underlay: Ipv4Net) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(underlay.broadcast()).saturating_sub(1))
}

/// Creates the underlay namespace with its bridge (up), addressed as the outside host.
pub fn create_underlay(netns_name: &str, underlay_net: Ipv4Net) -> Result<Netns> {
    let ns =
        Netns::create(netns_name).map_err(net(format!("create network namespace {netns_name}")))?;
    let h = NetHandle::new(&ns).map_err(net(format!("open netlink in {netns_name}")))?;
    h.create_bridge(names::BRIDGE).map_err(net(format!(
        "create bridge {} in {netns_name}",
        names::BRIDGE
    )))?;
    h.set_up(names::BRIDGE)
        .map_err(net(format!("set {} up in {netns_name}", names::BRIDGE)))?;
    let outside =
        Ipv4Net::new(outside_ip(underlay_net), underlay_net.prefix_len()).unwrap_or(underlay_net);
    h.add_address(names::BRIDGE, outside).map_err(net(format!(
        "add {outside} to {} in {netns_name}",
        names::BRIDGE
    )))?;
    Ok(ns)
}

/// Creates node `index`'s namespace: a veth from the underlay bridge becomes its `eth0` with the
/// node's underlay address; forwarding on, rp_filter off.
pub fn create_node(
    underlay: &Netns,
    underlay_net: Ipv4Net,
    index: usize,
    node: &NodeDef,
    netns_name: &str,
) -> Result<Netns> {
    let ns =
        Netns::create(netns_name).map_err(net(format!("create network namespace {netns_name}")))?;
    for (key, value) in NODE_SYSCTLS {
        sysctl_set(&ns, key, value)
            .map_err(net(format!("node {}: sysctl {key}={value}", node.name)))?;
    }
    let port = names::underlay_port(index, &node.name);
    let peer = names::underlay_peer(index);
    let ctx = |what: &str| format!("node {}: {what}", node.name);
    let u = NetHandle::new(underlay).map_err(net(ctx("open netlink in the underlay")))?;
    u.create_veth(&port, &peer)
        .map_err(net(ctx(&format!("create veth {port} <-> {peer}"))))?;
    u.set_master(&port, names::BRIDGE)
        .map_err(net(ctx(&format!("attach {port} to {}", names::BRIDGE))))?;
    u.set_up(&port)
        .map_err(net(ctx(&format!("set {port} up"))))?;
    u.move_to_netns(&peer, &ns)
        .map_err(net(ctx(&format!("move {peer} into {netns_name}"))))?;
    let h = NetHandle::new(&ns).map_err(net(ctx("open netlink in the node namespace")))?;
    h.rename(&peer, names::NODE_IFNAME)
        .map_err(net(ctx(&format!(
            "rename {peer} to {}",
            names::NODE_IFNAME
        ))))?;
    let addr = Ipv4Net::new(node.ip, underlay_net.prefix_len()).unwrap_or(underlay_net);
    h.add_address(names::NODE_IFNAME, addr)
        .map_err(net(ctx(&format!("add {addr} to {}", names::NODE_IFNAME))))?;
    h.set_up(names::NODE_IFNAME)
        .map_err(net(ctx(&format!("set {} up", names::NODE_IFNAME))))?;
    let key = format!("net/ipv4/conf/{}/rp_filter", names::NODE_IFNAME);
    sysctl_set(&ns, &key, "0").map_err(net(ctx(&format!("sysctl {key}=0"))))?;
    Ok(ns)
}
