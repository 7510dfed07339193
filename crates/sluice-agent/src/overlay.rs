//! The VXLAN device for `routing: vxlan`: one external (collect_md) device per node; the
//! datapath supplies each packet's remote node as tunnel metadata.

use sluice_netdev::{sysctl_set, NetHandle, Netns};

use crate::core::SelfNode;

pub const VXLAN_DEVICE: &str = "sluice_vxlan";
/// One VNI for the whole cluster; identities will ride in it later.
pub const VNI: u32 = 2;

/// Creates (or adopts) the device and returns its ifindex.
pub fn ensure_device(net: &NetHandle, node: &SelfNode, port: u16, mtu: u32) -> Result<u32, String> {
    let mac = node.info.vxlan_mac();
    match net.link_info(VXLAN_DEVICE).map_err(|e| e.to_string())? {
        Some(link) if link.kind.as_deref() != Some("vxlan") => {
            return Err(format!(
                "device {VXLAN_DEVICE} exists but is a {:?} device, not vxlan",
                link.kind.unwrap_or_default()
            ))
        }
        Some(link) => {
            // Adopt it from a previous run; the MAC follows the node address.
            if link.mac != mac {
                net.set_mac(VXLAN_DEVICE, mac).map_err(|e| e.to_string())?;
            }
            if link.mtu != mtu {
                net.set_mtu(VXLAN_DEVICE, mtu).map_err(|e| e.to_string())?;
            }
        }
        None => net
            .create_vxlan_external(VXLAN_DEVICE, port, mtu, mac)
            .map_err(|e| e.to_string())?,
    }
    // Router solicitations and the like cannot be tunnelled (no IPv4 destination node).
    if let Ok(ns) = Netns::current() {
        let _ = sysctl_set(
            &ns,
            &format!("net/ipv6/conf/{VXLAN_DEVICE}/disable_ipv6"),
            "1",
        );
        let _ = sysctl_set(&ns, &format!("net/ipv4/conf/{VXLAN_DEVICE}/rp_filter"), "0");
    }
    net.set_up(VXLAN_DEVICE).map_err(|e| e.to_string())?;
    net.link_index(VXLAN_DEVICE)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{VXLAN_DEVICE} vanished right after creation"))
}
