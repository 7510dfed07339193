//! Typed handles on the service load-balancing maps.

use aya::maps::{Array, HashMap, HashOfMaps, Map, MapData, MapError};

use crate::abi::{
    Ct4Entry, Ct4Key, Lb4Affinity, Lb4AffinityKey, Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service,
};
use crate::error::{map_err, Error, Result};

pub const MAP_LB_SERVICES: &str = "sluice_lb4_svc";
pub const MAP_LB_BACKENDS: &str = "sluice_lb4_be";
pub const MAP_LB_REVNAT: &str = "sluice_lb4_rnat";
pub const MAP_CT: &str = "sluice_ct4";
pub const MAP_LB_AFFINITY: &str = "sluice_lb4_aff";
pub const MAP_MAGLEV: &str = "sluice_maglev";
/// linux/bpf.h BPF_F_INNER_MAP.
const BPF_F_INNER_MAP: u32 = 1 << 12;

pub struct LbMaps {
    pub(crate) services: HashMap<MapData, Lb4Key, Lb4Service>,
    pub(crate) backends: HashMap<MapData, u32, Lb4Backend>,
    pub(crate) revnat: HashMap<MapData, u32, Lb4RevNat>,
    pub(crate) ct: HashMap<MapData, Ct4Key, Ct4Entry>,
    pub(crate) affinity: HashMap<MapData, Lb4AffinityKey, Lb4Affinity>,
    /// rev_nat_id -> that frontend's Maglev table (an array of backend ids).
    pub(crate) maglev: HashOfMaps<MapData, u32>,
}

/// Capacity of the map pinned at `pin` (0 when it cannot be read).
pub fn map_capacity(pin: &std::path::Path) -> u32 {
    aya::maps::MapInfo::from_pin(pin)
        .map(|i| i.max_entries())
        .unwrap_or(0)
}

fn removed(map: &'static str, r: std::result::Result<(), MapError>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        // Maps of maps report a missing key as the raw ENOENT.
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(false)
        }
        Err(e) => Err(map_err(map)(e)),
    }
}

fn collect<K: aya::Pod, V: aya::Pod>(
    map: &'static str,
    m: &HashMap<MapData, K, V>,
) -> Result<Vec<(K, V)>> {
    m.iter()
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(map_err(map))
}

impl LbMaps {
    pub(crate) fn take(object: &mut aya::Ebpf) -> Result<Self> {
        let mut take =
            |name: &'static str| object.take_map(name).ok_or(Error::MissingMap { map: name });
        Ok(Self {
            services: HashMap::try_from(take(MAP_LB_SERVICES)?)
                .map_err(map_err(MAP_LB_SERVICES))?,
            backends: HashMap::try_from(take(MAP_LB_BACKENDS)?)
                .map_err(map_err(MAP_LB_BACKENDS))?,
            revnat: HashMap::try_from(take(MAP_LB_REVNAT)?).map_err(map_err(MAP_LB_REVNAT))?,
            ct: HashMap::try_from(take(MAP_CT)?).map_err(map_err(MAP_CT))?,
            affinity: HashMap::try_from(take(MAP_LB_AFFINITY)?)
                .map_err(map_err(MAP_LB_AFFINITY))?,
            maglev: HashOfMaps::try_from(take(MAP_MAGLEV)?).map_err(map_err(MAP_MAGLEV))?,
        })
    }

    pub fn set_slot(&mut self, key: Lb4Key, value: Lb4Service) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(map_err(MAP_LB_SERVICES))
    }

    pub fn remove_slot(&mut self, key: &Lb4Key) -> Result<bool> {
        removed(MAP_LB_SERVICES, self.services.remove(key))
    }

    pub fn slots(&self) -> Result<Vec<(Lb4Key, Lb4Service)>> {
        collect(MAP_LB_SERVICES, &self.services)
    }

    pub fn set_backend(&mut self, id: u32, backend: Lb4Backend) -> Result<()> {
        self.backends
            .insert(id, backend, 0)
            .map_err(map_err(MAP_LB_BACKENDS))
    }

    pub fn remove_backend(&mut self, id: u32) -> Result<bool> {
        removed(MAP_LB_BACKENDS, self.backends.remove(&id))
    }

    pub fn backends(&self) -> Result<Vec<(u32, Lb4Backend)>> {
        collect(MAP_LB_BACKENDS, &self.backends)
    }

    pub fn set_revnat(&mut self, id: u32, revnat: Lb4RevNat) -> Result<()> {
        self.revnat
            .insert(id, revnat, 0)
            .map_err(map_err(MAP_LB_REVNAT))
    }

    pub fn remove_revnat(&mut self, id: u32) -> Result<bool> {
        removed(MAP_LB_REVNAT, self.revnat.remove(&id))
    }

    pub fn revnats(&self) -> Result<Vec<(u32, Lb4RevNat)>> {
        collect(MAP_LB_REVNAT, &self.revnat)
    }

    /// Installs (or atomically replaces) a frontend's Maglev table: slot -> backend id.
    pub fn set_maglev(&mut self, rev_nat_id: u32, table: &[u32]) -> Result<()> {
        let params = aya_obj::Map::new_from_params(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
            4,
            4,
            table.len() as u32,
            // The kernel wants the flags of the template in maps.h; this one is what lets
            // tables of any size sit in the same outer map.
            BPF_F_INNER_MAP,
        );
        let data = MapData::create(params, "sluice_mglv_tbl", None).map_err(map_err(MAP_MAGLEV))?;
        let mut map = Map::Array(data);
        {
            let mut array: Array<&mut MapData, u32> =
                Array::try_from(&mut map).map_err(map_err(MAP_MAGLEV))?;
            for (slot, id) in table.iter().enumerate() {
                array.set(slot as u32, id, 0).map_err(map_err(MAP_MAGLEV))?;
            }
        }
        let Map::Array(data) = map else {
            unreachable!("built as an array above")
        };
        self.maglev
            .insert(rev_nat_id, &data, 0)
            .map_err(map_err(MAP_MAGLEV))
    }

    pub fn remove_maglev(&mut self, rev_nat_id: u32) -> Result<bool> {
        removed(MAP_MAGLEV, self.maglev.remove(&rev_nat_id))
    }

    /// The backend id in slot `index` of a frontend's table (for tests and inspection).
    pub fn maglev_slot(&self, rev_nat_id: u32, index: u32) -> Result<Option<u32>> {
        let table: MapData = match self.maglev.get(&rev_nat_id, 0) {
            Ok(t) => t,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(map_err(MAP_MAGLEV)(e)),
        };
        let mut map = Map::Array(table);
        let array: Array<&mut MapData, u32> =
            Array::try_from(&mut map).map_err(map_err(MAP_MAGLEV))?;
        Ok(array.get(&index, 0).ok())
    }

    pub fn set_conntrack(&mut self, key: Ct4Key, entry: Ct4Entry) -> Result<()> {
        self.ct.insert(key, entry, 0).map_err(map_err(MAP_CT))
    }

    /// Removes one conntrack entry; false when there was none.
    pub fn remove_conntrack(&mut self, key: &Ct4Key) -> Result<bool> {
        removed(MAP_CT, self.ct.remove(key))
    }

    /// Entries in the conntrack map (walks its keys).
    pub fn conntrack_len(&self) -> usize {
        self.ct.keys().filter(|k| k.is_ok()).count()
    }

    pub fn conntrack(&self) -> Result<Vec<(Ct4Key, Ct4Entry)>> {
        collect(MAP_CT, &self.ct)
    }

    pub fn affinities(&self) -> Result<Vec<(Lb4AffinityKey, Lb4Affinity)>> {
        collect(MAP_LB_AFFINITY, &self.affinity)
    }
}
