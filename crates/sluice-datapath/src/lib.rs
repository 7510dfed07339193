//! sluice's eBPF datapath: the C programs under `bpf/` (compiled by build.rs with clang-19 and
//! embedded), loaded with aya, with typed handles on their pinned maps.
//!
//! Everything is pinned under one node's pin path (`/sys/fs/bpf/sluice/<node>` by default):
//! maps by name, tc links under `links/`. What is pinned keeps forwarding while the agent is
//! down; a restarted agent re-opens the maps and swaps fresh programs into the same links.

pub mod abi;
mod attach;
mod error;
pub mod features;
pub mod lb;
mod loader;
mod objects;
pub mod policy;
pub mod socklb;
pub mod testrun;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::{SchedClassifier, TcAttachType};

pub use abi::{DatapathConfig, EndpointInfo, EndpointKey, MetricsKey, MetricsValue, TunnelInfo};
pub use error::{Error, Result};
pub use loader::{MapSizes, FROM_CONTAINER, FROM_NETDEV, FROM_OVERLAY, TO_CONTAINER, TO_OVERLAY};
pub use objects::{
    MAP_CONFIG, MAP_ENDPOINTS, MAP_EVENTS, MAP_EVENTS_LOST, MAP_METRICS, MAP_METRICS_PLAIN,
    MAP_TUNNELS,
};

use abi::{ip_from_be, ip_to_be};
use error::map_err;

pub struct Datapath {
    pin_path: PathBuf,
    objects: loader::Objects,
    endpoints: HashMap<MapData, EndpointKey, EndpointInfo>,
    tunnels: LpmTrie<MapData, u32, TunnelInfo>,
    config: Array<MapData, DatapathConfig>,
    metrics: PerCpuHashMap<MapData, MetricsKey, MetricsValue>,
    metrics_plain: PerCpuArray<MapData, MetricsValue>,
    events_lost: PerCpuArray<MapData, abi::EventsLost>,
    lb: lb::LbMaps,
    policy: policy::PolicyMaps,
}

impl Datapath {
    /// Loads the datapath with its maps pinned in `pin_path` (created if missing; existing pins
    /// are reused, so a restart keeps every entry).
    pub fn load(pin_path: &Path) -> Result<Self> {
        Self::load_with_sizes(pin_path, &MapSizes::default())
    }

    /// Like `load`, with the configurable map capacities given.
    pub fn load_with_sizes(pin_path: &Path, sizes: &MapSizes) -> Result<Self> {
        let mut objects = loader::Objects::load(pin_path, sizes)?;
        let take = |name: &'static str, objects: &mut loader::Objects| {
            objects
                .endpoint
                .take_map(name)
                .ok_or(Error::MissingMap { map: name })
        };
        let endpoints = HashMap::try_from(take(MAP_ENDPOINTS, &mut objects)?)
            .map_err(map_err(MAP_ENDPOINTS))?;
        let tunnels =
            LpmTrie::try_from(take(MAP_TUNNELS, &mut objects)?).map_err(map_err(MAP_TUNNELS))?;
        let config =
            Array::try_from(take(MAP_CONFIG, &mut objects)?).map_err(map_err(MAP_CONFIG))?;
        let metrics = PerCpuHashMap::try_from(take(MAP_METRICS, &mut objects)?)
            .map_err(map_err(MAP_METRICS))?;
        let metrics_plain = PerCpuArray::try_from(take(MAP_METRICS_PLAIN, &mut objects)?)
            .map_err(map_err(MAP_METRICS_PLAIN))?;
        let events_lost = PerCpuArray::try_from(take(MAP_EVENTS_LOST, &mut objects)?)
            .map_err(map_err(MAP_EVENTS_LOST))?;
        let lb = lb::LbMaps::take(&mut objects.endpoint)?;
        let policy = policy::PolicyMaps::take(&mut objects.endpoint)?;
        Ok(Self {
            pin_path: pin_path.to_path_buf(),
            objects,
            endpoints,
            tunnels,
            config,
            metrics,
            metrics_plain,
            events_lost,
            lb,
            policy,
        })
    }

    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// The service load-balancing maps.
    pub fn lb(&mut self) -> &mut lb::LbMaps {
        &mut self.lb
    }

    pub fn lb_ref(&self) -> &lb::LbMaps {
        &self.lb
    }

    /// The ipcache and policy maps.
    pub fn policy(&mut self) -> &mut policy::PolicyMaps {
        &mut self.policy
    }

    pub fn policy_ref(&self) -> &policy::PolicyMaps {
        &self.policy
    }

    /// A loaded program, e.g. for BPF_PROG_TEST_RUN.
    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier> {
        self.objects.program(name)
    }

    // --- attachment -----------------------------------------------------------------------

    /// from_container on tc ingress and to_container on tc egress of a pod's host-side veth.
    pub fn attach_endpoint(&mut self, ifname: &str, ifindex: u32) -> Result<()> {
        self.attach_pair(ifname, ifindex, FROM_CONTAINER, TO_CONTAINER)
    }

    /// from_overlay on tc ingress and to_overlay on tc egress of the VXLAN device.
    pub fn attach_overlay(&mut self, ifname: &str, ifindex: u32) -> Result<()> {
        self.attach_pair(ifname, ifindex, FROM_OVERLAY, TO_OVERLAY)
    }

    fn attach_pair(
        &mut self,
        ifname: &str,
        ifindex: u32,
        ingress: &'static str,
        egress: &'static str,
    ) -> Result<()> {
        let pin_in = loader::link_pin(&self.pin_path, ifname, ifindex, "ingress");
        let pin_out = loader::link_pin(&self.pin_path, ifname, ifindex, "egress");
        attach::attach_pinned(
            ingress,
            self.objects.program(ingress)?,
            ifname,
            TcAttachType::Ingress,
            &pin_in,
        )?;
        attach::attach_pinned(
            egress,
            self.objects.program(egress)?,
            ifname,
            TcAttachType::Egress,
            &pin_out,
        )
    }

    /// from_netdev on tc ingress of the node's uplink (the device holding the node address).
    pub fn attach_netdev(&mut self, ifname: &str, ifindex: u32) -> Result<()> {
        let pin = loader::link_pin(&self.pin_path, ifname, ifindex, "ingress");
        attach::attach_pinned(
            FROM_NETDEV,
            self.objects.program(FROM_NETDEV)?,
            ifname,
            TcAttachType::Ingress,
            &pin,
        )
    }

    /// Detaches both directions; Ok(false) when nothing was attached.
    pub fn detach(&mut self, ifname: &str, ifindex: u32) -> Result<bool> {
        let a = attach::remove_pin(&loader::link_pin(
            &self.pin_path,
            ifname,
            ifindex,
            "ingress",
        ))?;
        let b = attach::remove_pin(&loader::link_pin(&self.pin_path, ifname, ifindex, "egress"))?;
        Ok(a || b)
    }

    /// Whether both directions have a pinned link.
    pub fn is_attached(&self, ifname: &str, ifindex: u32) -> bool {
        ["ingress", "egress"]
            .iter()
            .all(|d| loader::link_pin(&self.pin_path, ifname, ifindex, d).exists())
    }

    /// Pinned links as (ifname, ifindex), one entry per device.
    pub fn pinned_links(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = std::fs::read_dir(self.pin_path.join("links"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| loader::parse_link_pin(&e.file_name().into_string().ok()?))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    // --- endpoints --------------------------------------------------------------------------

    pub fn upsert_endpoint(&mut self, ip: Ipv4Addr, info: EndpointInfo) -> Result<()> {
        self.endpoints
            .insert(EndpointKey { ip: ip_to_be(ip) }, info, 0)
            .map_err(map_err(MAP_ENDPOINTS))
    }

    pub fn endpoint(&self, ip: Ipv4Addr) -> Result<Option<EndpointInfo>> {
        match self.endpoints.get(&EndpointKey { ip: ip_to_be(ip) }, 0) {
            Ok(info) => Ok(Some(info)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(MAP_ENDPOINTS)(e)),
        }
    }

    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<bool> {
        match self.endpoints.remove(&EndpointKey { ip: ip_to_be(ip) }) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(map_err(MAP_ENDPOINTS)(e)),
        }
    }

    pub fn endpoints(&self) -> Result<Vec<(Ipv4Addr, EndpointInfo)>> {
        self.endpoints
            .iter()
            .map(|r| {
                r.map(|(k, v)| (ip_from_be(k.ip), v))
                    .map_err(map_err(MAP_ENDPOINTS))
            })
            .collect()
    }

    // --- tunnels ----------------------------------------------------------------------------

    pub fn upsert_tunnel(&mut self, prefix: Ipv4Addr, len: u8, info: TunnelInfo) -> Result<()> {
        self.tunnels
            .insert(&Key::new(len as u32, ip_to_be(prefix)), info, 0)
            .map_err(map_err(MAP_TUNNELS))
    }

    pub fn remove_tunnel(&mut self, prefix: Ipv4Addr, len: u8) -> Result<bool> {
        match self.tunnels.remove(&Key::new(len as u32, ip_to_be(prefix))) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(map_err(MAP_TUNNELS)(e)),
        }
    }

    /// Every tunnel entry as (prefix, length, info).
    pub fn tunnels(&self) -> Result<Vec<(Ipv4Addr, u8, TunnelInfo)>> {
        self.tunnels
            .iter()
            .map(|r| {
                r.map(|(k, v)| (ip_from_be(k.data()), k.prefix_len() as u8, v))
                    .map_err(map_err(MAP_TUNNELS))
            })
            .collect()
    }

    // --- config and metrics -----------------------------------------------------------------

    pub fn set_config(&mut self, config: DatapathConfig) -> Result<()> {
        self.config.set(0, config, 0).map_err(map_err(MAP_CONFIG))
    }

    pub fn config(&self) -> Result<DatapathConfig> {
        self.config.get(&0, 0).map_err(map_err(MAP_CONFIG))
    }

    /// Tells the datapath the policy changed: each tracked connection is re-judged by its
    /// next packet. Call after the new entries are all written.
    pub fn bump_policy_revision(&mut self) -> Result<u32> {
        let mut config = self.config()?;
        config.policy_revision = config.policy_revision.wrapping_add(1);
        self.set_config(config)?;
        Ok(config.policy_revision)
    }

    /// The flow-event ring buffer, for one reader (the agent's event loop): Err once taken.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .objects
            .endpoint
            .take_map(MAP_EVENTS)
            .ok_or(Error::MissingMap { map: MAP_EVENTS })?;
        RingBuf::try_from(map).map_err(map_err(MAP_EVENTS))
    }

    /// Events the ring buffer had no room for since the map was created, over all CPUs.
    pub fn events_lost(&self) -> Result<u64> {
        let per_cpu = self
            .events_lost
            .get(&0, 0)
            .map_err(map_err(MAP_EVENTS_LOST))?;
        Ok(per_cpu.iter().map(|v| v.events).sum())
    }

    /// A second handle on the lost-events counter, for a reader on another thread.
    pub fn open_events_lost(&self) -> Result<EventsLostCounter> {
        let pin = self.pin_path.join(MAP_EVENTS_LOST);
        let data = MapData::from_pin(&pin).map_err(map_err(MAP_EVENTS_LOST))?;
        let map = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
            .map_err(map_err(MAP_EVENTS_LOST))?;
        Ok(EventsLostCounter(map))
    }

    /// Which trace events the datapath sends (abi::AGGREGATION_*).
    pub fn set_monitor_aggregation(&mut self, level: u8) -> Result<()> {
        let mut config = self.config()?;
        config.monitor_aggregation = level;
        self.set_config(config)
    }

    /// Counters summed over CPUs, sorted by key: the plain (reason-less) array's non-zero
    /// slots and the reasoned hash's entries.
    pub fn metrics(&self) -> Result<Vec<(MetricsKey, MetricsValue)>> {
        let sum = |per_cpu: &aya::maps::PerCpuValues<MetricsValue>| {
            per_cpu
                .iter()
                .fold(MetricsValue::default(), |acc, v| MetricsValue {
                    packets: acc.packets + v.packets,
                    bytes: acc.bytes + v.bytes,
                })
        };
        // Keyed, so a counter found in both maps is summed (a hash pinned by an older
        // datapath may still hold reason-less counters the array now keeps).
        let mut out = std::collections::BTreeMap::<MetricsKey, MetricsValue>::new();
        let mut add = |key: MetricsKey, v: MetricsValue| {
            let total = out.entry(key).or_default();
            total.packets += v.packets;
            total.bytes += v.bytes;
        };
        for slot in 0..abi::POINTS * abi::OUTCOMES {
            let total = sum(&self
                .metrics_plain
                .get(&slot, 0)
                .map_err(map_err(MAP_METRICS_PLAIN))?);
            if total.packets > 0 {
                let key = MetricsKey {
                    point: (slot / abi::OUTCOMES) as u8,
                    outcome: (slot % abi::OUTCOMES) as u8,
                    reason: 0,
                };
                add(key, total);
            }
        }
        for entry in self.metrics.iter() {
            let (key, per_cpu) = entry.map_err(map_err(MAP_METRICS))?;
            add(key, sum(&per_cpu));
        }
        Ok(out.into_iter().collect())
    }
}

/// Events the ring buffer had no room for (summed over CPUs).
pub struct EventsLostCounter(PerCpuArray<MapData, abi::EventsLost>);

impl EventsLostCounter {
    pub fn total(&self) -> Result<u64> {
        let per_cpu = self.0.get(&0, 0).map_err(map_err(MAP_EVENTS_LOST))?;
        Ok(per_cpu.iter().map(|v| v.events).sum())
    }
}

/// The embedded objects, for tests that inspect them (e.g. the ABI layout test).
#[doc(hidden)]
pub mod objects_for_tests {
    pub use crate::objects::{ENDPOINT, OVERLAY};
}
