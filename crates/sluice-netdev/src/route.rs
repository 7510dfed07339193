//! IPv4 routes in the main table on [`NetHandle`].

use std::collections::HashMap;
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use crate::error::{Error, Result};
use crate::handle::{check_ifname, nl_errno, NetHandle};
use crate::link::{find_link, LinkInfo};

/// Protocol number on routes sluice owns (`ip route ... proto 0x9e`), so the
/// agent can list and diff exactly its own routes.
pub const RTPROT_SLUICE: u8 = 0x9e;
/// Routes the kernel made itself (connected subnets).
pub const RTPROT_KERNEL: u8 = 2;
/// iproute2's default for `ip route add`.
pub const RTPROT_BOOT: u8 = 3;
/// `proto static`.
pub const RTPROT_STATIC: u8 = 4;

/// An IPv4 unicast route in the main table.
///
/// `dst via gateway` and/or `dst dev dev`. `onlink` lets a gateway that is not
/// in any connected subnet be used (needs `dev`). `scope_link` is what
/// `ip route add X dev Y` picks for device routes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub dev: Option<String>,
    pub onlink: bool,
    pub scope_link: bool,
    pub mtu: Option<u32>,
    /// RTPROT_*; in [`NetHandle::delete_route`], 0 matches any protocol.
    pub protocol: u8,
}

impl Default for Route {
    /// `0.0.0.0/0`, nothing else, protocol [`RTPROT_SLUICE`] (the routes
    /// sluice makes are its own).
    fn default() -> Self {
        Route {
            dst: Ipv4Net::default(),
            gateway: None,
            dev: None,
            onlink: false,
            scope_link: false,
            mtu: None,
            protocol: RTPROT_SLUICE,
        }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(dev) = &self.dev {
            write!(f, " dev {dev}")?;
        }
        write!(f, " proto {}", self.protocol)?;
        if self.scope_link {
            write!(f, " scope link")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        if let Some(mtu) = self.mtu {
            write!(f, " mtu {mtu}")?;
        }
        Ok(())
    }
}

impl Route {
    fn validate(&self) -> Result<()> {
        if self.dst.trunc() != self.dst {
            return Err(Error::InvalidArgument(format!(
                "route destination {} has host bits set (use {})",
                self.dst,
                self.dst.trunc()
            )));
        }
        if let Some(dev) = &self.dev {
            check_ifname(dev)?;
        }
        if self.onlink && self.dev.is_none() {
            return Err(Error::InvalidArgument(format!(
                "route {self}: onlink needs a dev"
            )));
        }
        Ok(())
    }

    /// Netlink message; `for_delete` widens the match like `ip route del`.
    fn to_message(&self, oif: Option<u32>, for_delete: bool) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(self.dst.network(), self.dst.prefix_len())
            .protocol(RouteProtocol::from(self.protocol));
        b = if for_delete {
            // The kernel treats scope NOWHERE as "any scope" on delete.
            b.scope(RouteScope::NoWhere)
        } else if self.scope_link {
            b.scope(RouteScope::Link)
        } else {
            b.scope(RouteScope::Universe)
        };
        if let Some(gw) = self.gateway {
            b = b.gateway(gw);
        }
        if let Some(oif) = oif {
            b = b.output_interface(oif);
        }
        if self.onlink && !for_delete {
            b = b.onlink();
        }
        let mut msg = b.build();
        if let (Some(mtu), false) = (self.mtu, for_delete) {
            msg.attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        msg
    }

    fn from_message(msg: &RouteMessage, names: &HashMap<u32, String>) -> Option<Route> {
        if msg.header.address_family != AddressFamily::Inet || msg.header.kind != RouteType::Unicast
        {
            return None;
        }
        let mut table = u32::from(msg.header.table);
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut route = Route {
            dst: Ipv4Net::default(),
            gateway: None,
            dev: None,
            onlink: msg.header.flags.contains(RouteFlags::Onlink),
            scope_link: msg.header.scope == RouteScope::Link,
            mtu: None,
            protocol: u8::from(msg.header.protocol),
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.gateway = Some(*a),
                RouteAttribute::Oif(i) => {
                    route.dev = Some(names.get(i).cloned().unwrap_or_else(|| format!("if{i}")))
                }
                RouteAttribute::Metrics(ms) => {
                    for m in ms {
                        if let RouteMetric::Mtu(v) = m {
                            route.mtu = Some(*v);
                        }
                    }
                }
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            return None;
        }
        route.dst = Ipv4Net::new(dst, msg.header.destination_prefix_length).ok()?;
        Some(route)
    }
}

/// Resolve `route.dev` to an index; `Ok(None)` if there is no dev,
/// `Err(None)` (inner) if the dev does not exist.
async fn oif_of(
    h: &rtnetlink::Handle,
    route: &Route,
    op: &str,
) -> Result<std::result::Result<Option<u32>, ()>> {
    let Some(dev) = &route.dev else {
        return Ok(Ok(None));
    };
    match find_link(h, dev).await {
        Ok(Some(m)) => Ok(Ok(Some(m.header.index))),
        Ok(None) => Ok(Err(())),
        Err(e) => Err(Error::netlink(op.to_string(), e)),
    }
}

impl NetHandle {
    /// `ip route replace ROUTE` (create or overwrite; idempotent).
    pub fn replace_route(&self, route: &Route) -> Result<()> {
        route.validate()?;
        let route = route.clone();
        let ns = self.netns_label().to_string();
        let op = self.ctx(format!("replace route {route}"));
        self.call(move |h| async move {
            let oif = match oif_of(&h, &route, &op).await? {
                Ok(oif) => oif,
                Err(()) => {
                    let dev = route.dev.as_deref().unwrap_or_default();
                    return Err(Error::NotFound(format!(
                        "link {dev} in {ns} (route {route})"
                    )));
                }
            };
            h.route()
                .add(route.to_message(oif, false))
                .replace()
                .execute()
                .await
                .map_err(|e| Error::netlink(op, e))
        })
    }

    /// `ip route del ROUTE`; `Ok(false)` if no such route (or its dev is gone).
    pub fn delete_route(&self, route: &Route) -> Result<bool> {
        route.validate()?;
        let route = route.clone();
        let op = self.ctx(format!("delete route {route}"));
        self.call(move |h| async move {
            let Ok(oif) = oif_of(&h, &route, &op).await? else {
                return Ok(false);
            };
            match h.route().del(route.to_message(oif, true)).execute().await {
                Ok(()) => Ok(true),
                Err(e) if matches!(nl_errno(&e), Some(libc::ESRCH) | Some(libc::ENOENT)) => {
                    Ok(false)
                }
                Err(e) => Err(Error::netlink(op, e)),
            }
        })
    }

    /// IPv4 unicast routes in the main table, only `protocol`'s if given.
    pub fn routes(&self, protocol: Option<u8>) -> Result<Vec<Route>> {
        let op = self.ctx("list routes");
        self.call(move |h| async move {
            let links: Vec<LinkMessage> = h
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(|e| Error::netlink(op.clone(), e))?;
            let names: HashMap<u32, String> = links
                .iter()
                .map(LinkInfo::from_message)
                .map(|l| (l.index, l.name))
                .collect();
            let msgs: Vec<RouteMessage> = h
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute()
                .try_collect()
                .await
                .map_err(|e| Error::netlink(op, e))?;
            Ok(msgs
                .iter()
                .filter_map(|m| Route::from_message(m, &names))
                .filter(|r| protocol.is_none_or(|p| r.protocol == p))
                .collect())
        })
    }
}
