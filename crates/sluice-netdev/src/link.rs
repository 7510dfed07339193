//! Link (network device) operations on [`NetHandle`].

use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use netlink_packet_route::link::{self as nl, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, LinkVxlan};

use crate::error::{Error, Result};
use crate::handle::{check_ifname, nl_errno, NetHandle};
use crate::netns::Netns;

/// IFF_NOARP, for [`LinkInfo::flags`].
pub const IFF_NOARP: u32 = libc::IFF_NOARP as u32;

/// What a device looks like, as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// All zeros if the device has no 6-byte hardware address.
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// `"veth"`, `"vxlan"`, `"bridge"`...; `None` for devices without a kind (lo).
    pub kind: Option<String>,
    /// Raw IFF_* flags (e.g. test `flags & IFF_NOARP`).
    pub flags: u32,
    /// Index of the bridge this device is enslaved to, if any.
    pub master: Option<u32>,
}

impl LinkInfo {
    /// True if ARP is off (IFF_NOARP).
    pub fn noarp(&self) -> bool {
        self.flags & IFF_NOARP != 0
    }

    pub(crate) fn from_message(msg: &LinkMessage) -> LinkInfo {
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            mac: [0; 6],
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind: None,
            flags: msg.header.flags.bits(),
            master: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => info.mac.copy_from_slice(a),
                LinkAttribute::Mtu(m) => info.mtu = *m,
                LinkAttribute::Controller(c) if *c != 0 => info.master = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let nl::LinkInfo::Kind(k) = i {
                            info.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        info
    }
}

/// Look a link up by name; `Ok(None)` if it does not exist.
pub(crate) async fn find_link(
    h: &rtnetlink::Handle,
    name: &str,
) -> std::result::Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(m) => Ok(m),
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Index of link `name`, or `NotFound` naming it and the namespace.
pub(crate) async fn index_of(h: &rtnetlink::Handle, name: &str, ns: &str) -> Result<u32> {
    match find_link(h, name).await {
        Ok(Some(m)) => Ok(m.header.index),
        Ok(None) => Err(Error::NotFound(format!("link {name} in {ns}"))),
        Err(e) => Err(Error::netlink(format!("get link {name} in {ns}"), e)),
    }
}

impl NetHandle {
    /// Send a SETLINK for `name`, built by `build` from an index-only message.
    fn set_link(
        &self,
        name: &str,
        op: String,
        build: impl FnOnce(rtnetlink::LinkMessageBuilder<LinkUnspec>) -> LinkMessage + Send + 'static,
    ) -> Result<()> {
        check_ifname(name)?;
        let name = name.to_string();
        let ns = self.netns_label().to_string();
        let op = self.ctx(op);
        self.call(move |h| async move {
            let idx = index_of(&h, &name, &ns).await?;
            let msg = build(LinkUnspec::new_with_index(idx));
            h.link()
                .set(msg)
                .execute()
                .await
                .map_err(|e| Error::netlink(op, e))
        })
    }

    fn add_link(&self, op: String, msg: LinkMessage) -> Result<()> {
        let op = self.ctx(op);
        self.call(move |h| async move {
            h.link()
                .add(msg)
                .execute()
                .await
                .map_err(|e| Error::netlink(op, e))
        })
    }

    pub fn link_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.link_info(name)?.map(|l| l.index))
    }

    pub fn link_info(&self, name: &str) -> Result<Option<LinkInfo>> {
        check_ifname(name)?;
        let name = name.to_string();
        let op = self.ctx(format!("get link {name}"));
        self.call(move |h| async move {
            find_link(&h, &name)
                .await
                .map(|m| m.as_ref().map(LinkInfo::from_message))
                .map_err(|e| Error::netlink(op, e))
        })
    }

    pub fn list_links(&self) -> Result<Vec<LinkInfo>> {
        let op = self.ctx("list links");
        self.call(move |h| async move {
            let msgs: Vec<LinkMessage> = h
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(|e| Error::netlink(op, e))?;
            Ok(msgs.iter().map(LinkInfo::from_message).collect())
        })
    }

    /// `ip link add NAME type veth peer name PEER` (both ends down).
    pub fn create_veth(&self, name: &str, peer: &str) -> Result<()> {
        check_ifname(name)?;
        check_ifname(peer)?;
        self.add_link(
            format!("create veth {name} <-> {peer}"),
            LinkVeth::new(name, peer).build(),
        )
    }

    /// `ip link add NAME type bridge` and bring it up.
    pub fn create_bridge(&self, name: &str) -> Result<()> {
        check_ifname(name)?;
        // LinkBridge::new already sets IFF_UP.
        self.add_link(
            format!("create bridge {name}"),
            LinkBridge::new(name).build(),
        )
    }

    /// Enslave `name` to bridge `bridge` (`ip link set NAME master BRIDGE`).
    pub fn set_master(&self, name: &str, bridge: &str) -> Result<()> {
        check_ifname(name)?;
        check_ifname(bridge)?;
        let name = name.to_string();
        let bridge = bridge.to_string();
        let ns = self.netns_label().to_string();
        let op = self.ctx(format!("set {name} master {bridge}"));
        self.call(move |h| async move {
            let idx = index_of(&h, &name, &ns).await?;
            let br = index_of(&h, &bridge, &ns).await?;
            h.link()
                .set(LinkUnspec::new_with_index(idx).controller(br).build())
                .execute()
                .await
                .map_err(|e| Error::netlink(op, e))
        })
    }

    /// `ip link add NAME address MAC mtu MTU type vxlan external dstport PORT
    /// nolearning` plus `arp off`. Left down: call [`NetHandle::set_up`].
    pub fn create_vxlan_external(
        &self,
        name: &str,
        port: u16,
        mtu: u32,
        mac: [u8; 6],
    ) -> Result<()> {
        check_ifname(name)?;
        let msg = rtnetlink::LinkMessageBuilder::<LinkVxlan>::new(name)
            .collect_metadata(true)
            .learning(false)
            .port(port)
            .mtu(mtu)
            .address(mac.to_vec())
            .arp(false)
            .build();
        self.add_link(format!("create vxlan {name} external dstport {port}"), msg)
    }

    /// Move link `name` into `target` (it keeps its name there).
    pub fn move_to_netns(&self, name: &str, target: &Netns) -> Result<()> {
        check_ifname(name)?;
        // Opened here: fd numbers are process-wide, so the worker can pass
        // it; it must stay open until the kernel has answered.
        let fd = target.open_fd()?;
        let name = name.to_string();
        let ns = self.netns_label().to_string();
        let op = self.ctx(format!("move {name} to {target}"));
        self.call(move |h| async move {
            let idx = index_of(&h, &name, &ns).await?;
            let msg = LinkUnspec::new_with_index(idx)
                .setns_by_fd(fd.as_raw_fd())
                .build();
            let res = h.link().set(msg).execute().await;
            drop(fd);
            res.map_err(|e| Error::netlink(op, e))
        })
    }

    pub fn rename(&self, old: &str, new: &str) -> Result<()> {
        check_ifname(new)?;
        let new_name = new.to_string();
        self.set_link(old, format!("rename {old} to {new}"), move |b| {
            b.name(new_name).build()
        })
    }

    pub fn set_mtu(&self, name: &str, mtu: u32) -> Result<()> {
        self.set_link(name, format!("set {name} mtu {mtu}"), move |b| {
            b.mtu(mtu).build()
        })
    }

    pub fn set_mac(&self, name: &str, mac: [u8; 6]) -> Result<()> {
        self.set_link(
            name,
            format!("set {name} address {}", crate::format_mac(mac)),
            move |b| b.address(mac.to_vec()).build(),
        )
    }

    pub fn set_up(&self, name: &str) -> Result<()> {
        self.set_link(name, format!("set {name} up"), |b| b.up().build())
    }

    pub fn set_down(&self, name: &str) -> Result<()> {
        self.set_link(name, format!("set {name} down"), |b| b.down().build())
    }

    /// Delete link `name`; `Ok(false)` if it did not exist. Deleting one end
    /// of a veth deletes the other end too, wherever it is.
    pub fn delete_link(&self, name: &str) -> Result<bool> {
        check_ifname(name)?;
        let name = name.to_string();
        let op = self.ctx(format!("delete link {name}"));
        self.call(move |h| async move {
            let Some(msg) = find_link(&h, &name)
                .await
                .map_err(|e| Error::netlink(op.clone(), e))?
            else {
                return Ok(false);
            };
            match h.link().del(msg.header.index).execute().await {
                Ok(()) => Ok(true),
                // Raced with another deleter.
                Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(false),
                Err(e) => Err(Error::netlink(op, e)),
            }
        })
    }
}
