//! Typed handles on the policy maps: the ipcache (address -> identity), the ipBlock prefix
//! map (prefix -> CIDR identity) and the endpoints' policy entries.

use std::net::Ipv4Addr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{MapData, MapError};

use crate::abi::{ip_from_be, ip_to_be, IpcacheInfo, PolicyEntry, PolicyKeyData};
use crate::error::{map_err, Error, Result};

pub const MAP_IPCACHE: &str = "sluice_ipcache";
pub const MAP_POLICY_CIDRS: &str = "sluice_policy_cidrs";
pub const MAP_POLICY: &str = "sluice_policy";

pub struct PolicyMaps {
    ipcache: LpmTrie<MapData, u32, IpcacheInfo>,
    cidrs: LpmTrie<MapData, u32, u32>,
    entries: LpmTrie<MapData, PolicyKeyData, PolicyEntry>,
}

/// A policy entry's key: what `prefix_len` bits of `data` must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyMapKey {
    pub prefix_len: u32,
    pub data: PolicyKeyData,
}

fn removed(map: &'static str, r: std::result::Result<(), MapError>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(e) => Err(map_err(map)(e)),
    }
}

impl PolicyMaps {
    pub(crate) fn take(object: &mut aya::Ebpf) -> Result<Self> {
        let mut take =
            |name: &'static str| object.take_map(name).ok_or(Error::MissingMap { map: name });
        Ok(Self {
            ipcache: LpmTrie::try_from(take(MAP_IPCACHE)?).map_err(map_err(MAP_IPCACHE))?,
            cidrs: LpmTrie::try_from(take(MAP_POLICY_CIDRS)?).map_err(map_err(MAP_POLICY_CIDRS))?,
            entries: LpmTrie::try_from(take(MAP_POLICY)?).map_err(map_err(MAP_POLICY))?,
        })
    }

    // --- ipcache ----------------------------------------------------------------------------

    pub fn set_ipcache(&mut self, prefix: Ipv4Addr, len: u8, info: IpcacheInfo) -> Result<()> {
        self.ipcache
            .insert(&Key::new(len as u32, ip_to_be(prefix)), info, 0)
            .map_err(map_err(MAP_IPCACHE))
    }

    pub fn remove_ipcache(&mut self, prefix: Ipv4Addr, len: u8) -> Result<bool> {
        removed(
            MAP_IPCACHE,
            self.ipcache.remove(&Key::new(len as u32, ip_to_be(prefix))),
        )
    }

    /// Every ipcache entry as (prefix, length, info).
    pub fn ipcache(&self) -> Result<Vec<(Ipv4Addr, u8, IpcacheInfo)>> {
        self.ipcache
            .iter()
            .map(|r| {
                r.map(|(k, v)| (ip_from_be(k.data()), k.prefix_len() as u8, v))
                    .map_err(map_err(MAP_IPCACHE))
            })
            .collect()
    }

    // --- ipBlock prefixes -------------------------------------------------------------------

    pub fn set_cidr(&mut self, prefix: Ipv4Addr, len: u8, identity: u32) -> Result<()> {
        self.cidrs
            .insert(&Key::new(len as u32, ip_to_be(prefix)), identity, 0)
            .map_err(map_err(MAP_POLICY_CIDRS))
    }

    pub fn remove_cidr(&mut self, prefix: Ipv4Addr, len: u8) -> Result<bool> {
        removed(
            MAP_POLICY_CIDRS,
            self.cidrs.remove(&Key::new(len as u32, ip_to_be(prefix))),
        )
    }

    pub fn cidrs(&self) -> Result<Vec<(Ipv4Addr, u8, u32)>> {
        self.cidrs
            .iter()
            .map(|r| {
                r.map(|(k, v)| (ip_from_be(k.data()), k.prefix_len() as u8, v))
                    .map_err(map_err(MAP_POLICY_CIDRS))
            })
            .collect()
    }

    // --- policy entries ---------------------------------------------------------------------

    pub fn set_entry(&mut self, key: PolicyMapKey, entry: PolicyEntry) -> Result<()> {
        self.entries
            .insert(&Key::new(key.prefix_len, key.data), entry, 0)
            .map_err(map_err(MAP_POLICY))
    }

    pub fn remove_entry(&mut self, key: PolicyMapKey) -> Result<bool> {
        removed(
            MAP_POLICY,
            self.entries.remove(&Key::new(key.prefix_len, key.data)),
        )
    }

    pub fn entries(&self) -> Result<Vec<(PolicyMapKey, PolicyEntry)>> {
        self.entries
            .iter()
            .map(|r| {
                r.map(|(k, v)| {
                    (
                        PolicyMapKey {
                            prefix_len: k.prefix_len(),
                            data: k.data(),
                        },
                        v,
                    )
                })
                .map_err(map_err(MAP_POLICY))
            })
            .collect()
    }
}
