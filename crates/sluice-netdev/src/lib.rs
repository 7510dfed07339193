//! Netlink plumbing for sluice: network namespaces, links (veth, bridge,
//! VXLAN), IPv4 addresses, routes, neighbours, sysctls, and the pod veth
//! setup used by the CNI path. Everything is blocking; from async code use
//! `tokio::task::spawn_blocking`. No shelling out to `ip`.
//!
//! * [`Netns`] — named namespaces under /run/netns (compatible with `ip netns`),
//!   or any namespace path; [`Netns::run`] runs a closure inside one.
//! * [`NetHandle`] — a netlink client bound to one namespace (a worker thread
//!   inside it). Operations take device *names*, resolved in that namespace.
//! * [`pod`] — CNI ADD/DEL/CHECK building blocks.
//!
//! ## Differences from the first API sketch (read this)
//! * The handle type is [`NetHandle`] (not `Link`).
//! * [`LinkInfo`] has two extra fields: `flags` (raw IFF_*; see
//!   [`LinkInfo::noarp`]) and `master` (bridge ifindex).
//! * Extra methods: [`NetHandle::set_down`], [`NetHandle::netns_label`],
//!   [`Error::errno`], [`Error::is_not_found`], [`Error::is_already_exists`].
//! * Errors: [`Error::NotFound`] / [`Error::AlreadyExists`] carry a description
//!   of the thing (e.g. `"network namespace /run/netns/x"`); netlink EEXIST
//!   maps to `AlreadyExists`, ENODEV to `NotFound`.
//! * [`NetHandle::create_vxlan_external`] leaves the device down (like
//!   `ip link add`); call `set_up`. [`NetHandle::create_bridge`] brings the
//!   bridge up. Veths are created down.
//! * [`Route`] `Default` has protocol [`RTPROT_SLUICE`]; `dst` must not have
//!   host bits set (InvalidArgument). In `delete_route`, protocol 0 = any.
//! * [`Netns::current`] keeps an fd open (so it stays valid on other threads);
//!   other `Netns` values hold no fd and do not keep a namespace alive.
//! * sysctl keys: slash form (`net/ipv4/conf/eth0/rp_filter`) or sysctl(8)
//!   dot form when the key has no '/'.
//! * [`pod::check`] reports a missing pod namespace as a problem string, not
//!   an error.

mod addr;
mod error;
mod handle;
mod link;
mod mac;
mod neigh;
mod netns;
pub mod pod;
mod route;
mod sysctl;

pub use error::{Error, Result};
pub use handle::NetHandle;
pub use ipnet::Ipv4Net;
pub use link::{LinkInfo, IFF_NOARP};
pub use mac::{format_mac, parse_mac};
pub use netns::{current_netns_cookie, Netns, NETNS_RUN_DIR};
pub use route::{Route, RTPROT_BOOT, RTPROT_KERNEL, RTPROT_SLUICE, RTPROT_STATIC};
pub use sysctl::{sysctl_get, sysctl_set};
