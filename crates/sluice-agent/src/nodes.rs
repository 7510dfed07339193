//! Reconciling nodes: this node's own settings, and for every other node a route to its pod
//! CIDR (native) or a route into the tunnel plus a tunnel-map entry (vxlan). Only what changed
//! is touched.

use std::collections::BTreeMap;

use sluice_api::config::RoutingMode;
use sluice_datapath::abi::{ip_to_be, ROUTING_NATIVE, ROUTING_VXLAN};
use sluice_datapath::{DatapathConfig, TunnelInfo};
use sluice_model::{diff_maps, NodeInfo};
use sluice_netdev::{Netns, Route, RTPROT_SLUICE};

use crate::core::{Core, SelfNode};
use crate::overlay::{self, VNI, VXLAN_DEVICE};

impl Core {
    pub(crate) fn reconcile_nodes(&mut self) {
        let Some(me) = self.desired.nodes.get(&self.cfg.node_name).cloned() else {
            if self.node.is_some() {
                tracing::warn!(node = %self.cfg.node_name, "own Node object disappeared; keeping the programmed state");
            }
            return;
        };
        if self.node.as_ref().map(|n| &n.info) != Some(&me) {
            if let Err(e) = self.configure_self(me) {
                tracing::error!(error = %e, "configuring this node");
                self.node_problems = vec![e];
                return;
            }
        }
        let desired: BTreeMap<String, NodeInfo> = self
            .desired
            .nodes
            .iter()
            .filter(|(name, _)| **name != self.cfg.node_name)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !self.swept {
            self.sweep_stale(&desired);
            self.swept = true;
        }
        let old = std::mem::take(&mut self.remote);
        let diff = diff_maps(&old, &desired);
        for (_, node) in diff
            .removed
            .iter()
            .map(|(k, v)| (k, *v))
            .chain(diff.changed.iter().map(|(k, v, _)| (k, *v)))
        {
            self.unprogram_node(node);
        }
        let mut failed = Vec::new();
        for node in diff
            .added
            .iter()
            .map(|(_, v)| *v)
            .chain(diff.changed.iter().map(|(_, _, v)| *v))
        {
            if let Err(e) = self.program_node(node) {
                tracing::error!(node = %node.name, error = %e, "programming remote node");
                failed.push(format!("node {}: {e}", node.name));
            }
        }
        if !diff.is_empty() {
            tracing::info!(
                added = diff.added.len(),
                removed = diff.removed.len(),
                changed = diff.changed.len(),
                "remote nodes reconciled"
            );
        }
        self.node_problems = failed;
        self.remote = desired;
    }

    fn configure_self(&mut self, me: NodeInfo) -> Result<(), String> {
        let uplink = self.uplink(&me);
        let underlay_mtu = match (self.cfg.underlay_mtu, &uplink) {
            (Some(m), _) => m,
            (None, Some(link)) => link.mtu,
            (None, None) => 1500,
        };
        // Traffic from outside the cluster to NodePorts and external IPs enters here.
        self.uplink_problem = None;
        match &uplink {
            Some(link) => self
                .dp
                .attach_netdev(&link.name, link.index)
                .map_err(|e| format!("attaching from_netdev to uplink {}: {e}", link.name))?,
            None => {
                let problem = format!(
                    "no device holds node address {}: NodePort/ExternalIP traffic from outside is not handled",
                    me.address
                );
                tracing::warn!("{problem}");
                self.uplink_problem = Some(problem);
            }
        }
        let node = SelfNode {
            info: me,
            underlay_mtu,
        };
        let mut config = DatapathConfig {
            routing_mode: ROUTING_NATIVE,
            node_ip: ip_to_be(node.info.address),
            vni: VNI,
            maglev_size: self.cfg.maglev_table_size,
            // Tracked connections compare against it: it only moves forward.
            policy_revision: self.dp.config().map(|c| c.policy_revision).unwrap_or(0),
            monitor_aggregation: crate::observe::datapath_aggregation(
                self.cfg.hubble.monitor_aggregation,
            ),
            ..Default::default()
        };
        if self.cfg.routing == RoutingMode::Vxlan {
            let mtu = underlay_mtu - sluice_api::config::VXLAN_OVERHEAD;
            let ifindex = overlay::ensure_device(&self.net, &node, self.cfg.vxlan_port, mtu)?;
            self.dp
                .attach_overlay(VXLAN_DEVICE, ifindex)
                .map_err(|e| e.to_string())?;
            config.routing_mode = ROUTING_VXLAN;
            config.vxlan_ifindex = ifindex;
            config.vxlan_mac = node.info.vxlan_mac();
        }
        self.dp
            .set_config(config)
            .map_err(|e| format!("writing datapath config: {e}"))?;
        if let Ok(ns) = Netns::current() {
            sluice_netdev::sysctl_set(&ns, "net/ipv4/ip_forward", "1")
                .map_err(|e| format!("enabling IPv4 forwarding: {e}"))?;
        }
        tracing::info!(node = %node.info.name, pod_cidr = %node.info.pod_cidr, address = %node.info.address, underlay_mtu, routing = %self.cfg.routing, "node configured");
        self.node = Some(node);
        Ok(())
    }

    /// The device that carries the node's address: the uplink.
    fn uplink(&self, me: &NodeInfo) -> Option<sluice_netdev::LinkInfo> {
        let links = self.net.list_links().ok()?;
        links.into_iter().find(|link| {
            self.net
                .addresses(&link.name)
                .is_ok_and(|addrs| addrs.iter().any(|a| a.addr() == me.address))
        })
    }

    fn node_route(&self, node: &NodeInfo) -> Route {
        match self.cfg.routing {
            RoutingMode::Native => Route {
                dst: node.pod_cidr,
                gateway: Some(node.address),
                ..Default::default()
            },
            RoutingMode::Vxlan => Route {
                dst: node.pod_cidr,
                dev: Some(VXLAN_DEVICE.to_string()),
                scope_link: true,
                ..Default::default()
            },
        }
    }

    fn program_node(&mut self, node: &NodeInfo) -> Result<(), String> {
        if self.cfg.routing == RoutingMode::Vxlan {
            let info = TunnelInfo {
                node_ip: ip_to_be(node.address),
                node_mac: node.vxlan_mac(),
                flags: 0,
            };
            self.dp
                .upsert_tunnel(node.pod_cidr.network(), node.pod_cidr.prefix_len(), info)
                .map_err(|e| e.to_string())?;
        }
        let route = self.node_route(node);
        self.net
            .replace_route(&route)
            .map_err(|e| format!("route {route}: {e}"))
    }

    fn unprogram_node(&mut self, node: &NodeInfo) {
        let route = self.node_route(node);
        if let Err(e) = self.net.delete_route(&route) {
            tracing::warn!(route = %route, error = %e, "deleting route");
        }
        let _ = self
            .dp
            .remove_tunnel(node.pod_cidr.network(), node.pod_cidr.prefix_len());
    }

    /// After a restart: drop routes and tunnel entries of nodes that no longer exist (or of the
    /// other routing mode). Pod /32 routes on lxc devices belong to endpoints and stay.
    fn sweep_stale(&mut self, desired: &BTreeMap<String, NodeInfo>) {
        let wanted: Vec<Route> = desired.values().map(|n| self.node_route(n)).collect();
        for route in self.net.routes(Some(RTPROT_SLUICE)).unwrap_or_default() {
            let pod_route = route.dst.prefix_len() == 32
                && route.dev.as_deref().is_some_and(|d| d.starts_with("lxc"));
            let wanted_now = wanted
                .iter()
                .any(|w| w.dst == route.dst && w.gateway == route.gateway && w.dev == route.dev);
            if !pod_route && !wanted_now {
                tracing::info!(route = %route, "removing stale route");
                let _ = self.net.delete_route(&route);
            }
        }
        let wanted_prefixes: Vec<_> = desired
            .values()
            .map(|n| (n.pod_cidr.network(), n.pod_cidr.prefix_len()))
            .collect();
        for (prefix, len, _) in self.dp.tunnels().unwrap_or_default() {
            if self.cfg.routing != RoutingMode::Vxlan || !wanted_prefixes.contains(&(prefix, len)) {
                let _ = self.dp.remove_tunnel(prefix, len);
            }
        }
    }
}
