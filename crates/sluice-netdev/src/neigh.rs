//! IPv4 neighbour (ARP) entries on [`NetHandle`].

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;

use crate::error::{Error, Result};
use crate::handle::{check_ifname, NetHandle};
use crate::link::index_of;

impl NetHandle {
    /// `ip neigh replace IP lladdr MAC dev DEV nud permanent`.
    pub fn replace_neighbour(&self, dev: &str, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        check_ifname(dev)?;
        let dev = dev.to_string();
        let ns = self.netns_label().to_string();
        let op = self.ctx(format!(
            "replace neighbour {ip} lladdr {} dev {dev}",
            crate::format_mac(mac)
        ));
        self.call(move |h| async move {
            let idx = index_of(&h, &dev, &ns).await?;
            h.neighbours()
                .add(idx, IpAddr::V4(ip))
                .link_layer_address(&mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| Error::netlink(op, e))
        })
    }

    /// IPv4 neighbours on `dev` that have a link-layer address.
    pub fn neighbours(&self, dev: &str) -> Result<Vec<(Ipv4Addr, [u8; 6])>> {
        check_ifname(dev)?;
        let dev = dev.to_string();
        let ns = self.netns_label().to_string();
        let op = self.ctx(format!("list neighbours of {dev}"));
        self.call(move |h| async move {
            let idx = index_of(&h, &dev, &ns).await?;
            let msgs: Vec<NeighbourMessage> = h
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Inet)
                .execute()
                .try_collect()
                .await
                .map_err(|e| Error::netlink(op, e))?;
            Ok(msgs
                .iter()
                .filter(|m| m.header.ifindex == idx)
                .filter_map(entry_of)
                .collect())
        })
    }
}

fn entry_of(msg: &NeighbourMessage) -> Option<(Ipv4Addr, [u8; 6])> {
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(l);
                mac = Some(m);
            }
            _ => {}
        }
    }
    Some((ip?, mac?))
}
