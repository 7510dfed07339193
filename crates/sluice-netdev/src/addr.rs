//! IPv4 address operations on [`NetHandle`].

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::AddressFamily;

use crate::error::{Error, Result};
use crate::handle::{check_ifname, nl_errno, NetHandle};
use crate::link::index_of;

impl NetHandle {
    /// `ip addr add ADDR dev NAME`; Ok if the address is already there.
    pub fn add_address(&self, name: &str, addr: Ipv4Net) -> Result<()> {
        check_ifname(name)?;
        let name = name.to_string();
        let ns = self.netns_label().to_string();
        let op = self.ctx(format!("add address {addr} to {name}"));
        self.call(move |h| async move {
            let idx = index_of(&h, &name, &ns).await?;
            match h
                .address()
                .add(idx, IpAddr::V4(addr.addr()), addr.prefix_len())
                .execute()
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if nl_errno(&e) == Some(libc::EEXIST) => Ok(()),
                Err(e) => Err(Error::netlink(op, e)),
            }
        })
    }

    /// IPv4 addresses on `name`, as address/prefix.
    pub fn addresses(&self, name: &str) -> Result<Vec<Ipv4Net>> {
        check_ifname(name)?;
        let name = name.to_string();
        let ns = self.netns_label().to_string();
        let op = self.ctx(format!("list addresses of {name}"));
        self.call(move |h| async move {
            let idx = index_of(&h, &name, &ns).await?;
            let msgs: Vec<AddressMessage> = h
                .address()
                .get()
                .set_link_index_filter(idx)
                .execute()
                .try_collect()
                .await
                .map_err(|e| Error::netlink(op, e))?;
            Ok(msgs.iter().filter_map(ipv4_of).collect())
        })
    }
}

fn ipv4_of(msg: &AddressMessage) -> Option<Ipv4Net> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
    // point-to-point links, so prefer LOCAL.
    let mut found = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(a)) => found = Some(*a),
            AddressAttribute::Address(IpAddr::V4(a)) if found.is_none() => found = Some(*a),
            _ => {}
        }
    }
    Ipv4Net::new(found?, msg.header.prefix_len).ok()
}
