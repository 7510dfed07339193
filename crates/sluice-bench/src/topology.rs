//! The plain topology the kube-proxy arms run on: a client and a few backends, each in its own
//! network namespace, joined by veth pairs to a router namespace where the rules under test
//! live. No eBPF here: this is the kernel's own path, with or without iptables/nftables.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;

use sluice_netdev::{Ipv4Net, NetHandle, Netns, Route};

use crate::load;

/// Backend port of every server; the measured Service's frontend is VIP:80.
pub const BACKEND_PORT: u16 = 8080;
/// The pod range the backends and the client live in (non-pod sources are masqueraded).
pub const POD_CIDR: &str = "10.250.0.0/16";

pub struct Topology {
    prefix: String,
    pub router: Netns,
    pub client: Netns,
    pub backends: Vec<Ipv4Addr>,
    servers: load::Servers,
}

fn err(what: impl std::fmt::Display) -> impl FnOnce(sluice_netdev::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Joins namespace `inner` to the router: `<inner> eth0 10.250.<subnet>.2/24`, router side
/// `.1`, default route through the router.
fn attach(
    router: &NetHandle,
    router_ns: &Netns,
    inner: &Netns,
    host_if: &str,
    subnet: u8,
) -> Result<Ipv4Addr, String> {
    let peer = format!("{host_if}p");
    router
        .create_veth(host_if, &peer)
        .map_err(err(format!("veth {host_if}")))?;
    router
        .move_to_netns(&peer, inner)
        .map_err(err(format!("move {peer}")))?;
    let gw = Ipv4Addr::new(10, 250, subnet, 1);
    let addr = Ipv4Addr::new(10, 250, subnet, 2);
    router
        .add_address(host_if, Ipv4Net::new(gw, 24).unwrap())
        .map_err(err("router address"))?;
    router.set_up(host_if).map_err(err("router link up"))?;
    let h = NetHandle::new(inner).map_err(err("netlink in namespace"))?;
    h.add_address(&peer, Ipv4Net::new(addr, 24).unwrap())
        .map_err(err("address"))?;
    h.set_up(&peer).map_err(err("link up"))?;
    h.replace_route(&Route {
        gateway: Some(gw),
        ..Default::default()
    })
    .map_err(err("default route"))?;
    let _ = router_ns;
    Ok(addr)
}

impl Topology {
    /// Namespaces `<prefix>r` (router), `<prefix>c` (client), `<prefix>b<i>` (backends), each
    /// backend running a load server on BACKEND_PORT.
    pub fn build(prefix: &str, backends: usize) -> Result<Self, String> {
        let mut t = Topology {
            prefix: prefix.to_string(),
            router: Netns::create(&format!("{prefix}r")).map_err(err("router namespace"))?,
            client: Netns::create(&format!("{prefix}c")).map_err(err("client namespace"))?,
            backends: Vec::new(),
            servers: load::Servers::default(),
        };
        let router = NetHandle::new(&t.router).map_err(err("router netlink"))?;
        sluice_netdev::sysctl_set(&t.router, "net/ipv4/ip_forward", "1")
            .map_err(err("forwarding"))?;
        attach(&router, &t.router, &t.client, "c0", 0)?;
        load::tune_client(&t.client)?;
        for i in 0..backends {
            let ns = Netns::create(&format!("{prefix}b{i}")).map_err(err("backend namespace"))?;
            let addr = attach(&router, &t.router, &ns, &format!("b{i}"), i as u8 + 1)?;
            let fd: OwnedFd = ns.open_fd().map_err(err("backend fd"))?;
            t.servers
                .spawn(fd, SocketAddr::from((addr, BACKEND_PORT)))?;
            t.backends.push(addr);
        }
        Ok(t)
    }

    pub fn router_name(&self) -> String {
        format!("{}r", self.prefix)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Stop the servers before their namespaces go.
        drop(std::mem::take(&mut self.servers));
        let mut names = vec![format!("{}r", self.prefix), format!("{}c", self.prefix)];
        names.extend((0..self.backends.len()).map(|i| format!("{}b{i}", self.prefix)));
        for n in names {
            let _ = Netns::delete(&n);
        }
    }
}

/// Namespaces a crashed run left behind (names start with `prefix`).
pub fn leftovers(prefix: &str) -> Vec<String> {
    Netns::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}
