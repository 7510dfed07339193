//! Loading the objects with their maps pinned under one node's pin path.

use std::path::{Path, PathBuf};

use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};

use crate::error::{prog_err, Error, Result};

/// Capacities of the maps whose size is configuration (the rest are fixed in maps.h). Every
/// object must be loaded with the same sizes: they share the pinned maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// Service slots: one per frontend plus one per backend of each frontend.
    pub lb_slots: u32,
    pub backends: u32,
    pub conntrack: u32,
    /// Policy entries of all local endpoints together.
    pub policy: u32,
    /// Bytes of the flow-event ring buffer (a power of two, at least a page).
    pub events: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            lb_slots: 262_144,
            backends: 65_536,
            conntrack: 65_536,
            policy: 65_536,
            events: 4 << 20,
        }
    }
}

impl MapSizes {
    fn overrides(&self) -> [(&'static str, u32); 5] {
        [
            (crate::lb::MAP_LB_SERVICES, self.lb_slots),
            (crate::lb::MAP_LB_BACKENDS, self.backends),
            (crate::lb::MAP_CT, self.conntrack),
            (crate::policy::MAP_POLICY, self.policy),
            (crate::objects::MAP_EVENTS, self.events),
        ]
    }

    fn max_entries(&self, name: &str) -> Option<u32> {
        self.overrides()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s)
    }
}

/// The tc objects loaded, programs verified, maps shared through their pins.
pub struct Objects {
    pub endpoint: Ebpf,
    pub overlay: Ebpf,
    pub host: Ebpf,
}

pub const FROM_CONTAINER: &str = "from_container";
pub const TO_CONTAINER: &str = "to_container";
pub const FROM_OVERLAY: &str = "from_overlay";
pub const TO_OVERLAY: &str = "to_overlay";
pub const FROM_NETDEV: &str = "from_netdev";

impl Objects {
    /// Loads (or, after a restart, re-opens) the maps pinned in `pin_path` and loads every
    /// program into the kernel.
    pub fn load(pin_path: &Path, sizes: &MapSizes) -> Result<Self> {
        std::fs::create_dir_all(pin_path).map_err(|source| Error::Bpffs {
            path: pin_path.to_path_buf(),
            source,
        })?;
        let mut endpoint = load_object("endpoint", crate::objects::ENDPOINT, pin_path, sizes)?;
        let mut overlay = load_object("overlay", crate::objects::OVERLAY, pin_path, sizes)?;
        let mut host = load_object("host", crate::objects::HOST, pin_path, sizes)?;
        for name in [FROM_CONTAINER, TO_CONTAINER] {
            classifier(&mut endpoint, name)?
                .load()
                .map_err(prog_err(name))?;
        }
        for name in [FROM_OVERLAY, TO_OVERLAY] {
            classifier(&mut overlay, name)?
                .load()
                .map_err(prog_err(name))?;
        }
        classifier(&mut host, FROM_NETDEV)?
            .load()
            .map_err(prog_err(FROM_NETDEV))?;
        Ok(Self {
            endpoint,
            overlay,
            host,
        })
    }

    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier> {
        let object = match name {
            FROM_OVERLAY | TO_OVERLAY => &mut self.overlay,
            FROM_NETDEV => &mut self.host,
            _ => &mut self.endpoint,
        };
        classifier(object, name)
    }
}

pub(crate) fn load_object(
    object: &'static str,
    bytes: &[u8],
    pin_path: &Path,
    sizes: &MapSizes,
) -> Result<Ebpf> {
    drop_incompatible_pins(object, bytes, pin_path, sizes);
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_path);
    for (name, size) in sizes.overrides() {
        loader.map_max_entries(name, size);
    }
    loader.load(bytes).map_err(|source| Error::Load {
        object,
        source: Box::new(source),
    })
}

fn classifier<'a>(object: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    let program = object.program_mut(name).ok_or_else(|| Error::Attach {
        program: name,
        ifname: String::new(),
        reason: "program missing from the object".into(),
    })?;
    program.try_into().map_err(prog_err(name))
}

/// Where links for `ifname` are pinned: `<pin>/links/<ifindex>-<direction>-<ifname>`. The
/// ifindex is part of the name so a recreated device with a reused name never inherits a
/// stale link. (bpffs refuses names containing '.', hence the dashes.)
pub fn link_pin(pin_path: &Path, ifname: &str, ifindex: u32, direction: &str) -> PathBuf {
    pin_path.join("links").join(format!(
        "{ifindex}-{direction}-{}",
        ifname.replace('.', "_")
    ))
}

/// The inverse of `link_pin`'s file name: (ifname, ifindex).
pub fn parse_link_pin(file_name: &str) -> Option<(String, u32)> {
    let mut parts = file_name.splitn(3, '-');
    let ifindex = parts.next()?.parse().ok()?;
    let _direction = parts.next()?;
    Some((parts.next()?.to_string(), ifindex))
}

/// A pinned map whose shape differs from what this build's object declares (an upgrade
/// changed a struct) is unpinned, so the load creates a fresh one instead of handing the
/// programs a map they would misread. Its entries are lost; the agent re-programs what it
/// owns, and conntrack entries start over.
fn drop_incompatible_pins(object: &'static str, bytes: &[u8], pin_path: &Path, sizes: &MapSizes) {
    let Ok(parsed) = aya_obj::Object::parse(bytes) else {
        return;
    };
    for (name, map) in &parsed.maps {
        let pin = pin_path.join(name);
        if name.starts_with('.') || !pin.exists() {
            continue;
        }
        let compatible = aya::maps::MapInfo::from_pin(&pin).is_ok_and(|info| {
            info.key_size() == map.key_size()
                && info.value_size() == map.value_size()
                && info.max_entries() == sizes.max_entries(name).unwrap_or(map.max_entries())
        });
        if !compatible {
            tracing::warn!(object, map = %name, pin = %pin.display(), "pinned map has another shape than this build's; recreating it");
            let _ = std::fs::remove_file(&pin);
        }
    }
}
