//! The plain topology the kube-proxy arms run on: a client and a few backends, each in its own
//! network namespace, attached to a node namespace (`<prefix>r`) the way sluice-cni attaches
//! pods; the rules under test live in the node namespace, as kube-proxy's do. No eBPF here:
//! this is the kernel's own path, with or without iptables/nftables.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;

use sluice_netdev::Netns;

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

/// Attaches namespace `inner` to the node namespace exactly as sluice-cni attaches a pod
/// (`sluice_netdev::pod::setup`: a veth, the pod's /32 behind the link-local gateway, a /32
/// route and a static neighbour on the node side), so the arms without sluice run on the same
/// interfaces the sluice lab's pods have, with the kernel routing between them.
fn attach(node: &Netns, inner: &Netns, host_if: &str, index: u8) -> Result<Ipv4Addr, String> {
    let address = Ipv4Addr::new(10, 250, 0, index + 1);
    let spec = sluice_netdev::pod::PodInterfaceSpec {
        netns: inner.path().to_path_buf(),
        ifname: "eth0".into(),
        host_ifname: host_if.into(),
        address,
        mtu: 1500,
    };
    node.run(|| sluice_netdev::pod::setup(&spec))
        .and_then(|r| r)
        .map_err(err(format!("pod interface {host_if}")))?;
    Ok(address)
}

impl Topology {
    /// Namespaces `<prefix>r` (the node, routing), `<prefix>c` (client), `<prefix>b<i>` (backends), each
    /// backend running a load server on BACKEND_PORT.
    pub fn build(prefix: &str, backends: usize) -> Result<Self, String> {
        let mut t = Topology {
            prefix: prefix.to_string(),
            router: Netns::create(&format!("{prefix}r")).map_err(err("router namespace"))?,
            client: Netns::create(&format!("{prefix}c")).map_err(err("client namespace"))?,
            backends: Vec::new(),
            servers: load::Servers::default(),
        };
        sluice_netdev::sysctl_set(&t.router, "net/ipv4/ip_forward", "1")
            .map_err(err("forwarding"))?;
        attach(&t.router, &t.client, "c0", 0)?;
        load::tune_client(&t.client)?;
        for i in 0..backends {
            let ns = Netns::create(&format!("{prefix}b{i}")).map_err(err("backend namespace"))?;
            let addr = attach(&t.router, &ns, &format!("b{i}"), i as u8 + 1)?;
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
