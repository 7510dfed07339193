//! Reconciling services into the load-balancing maps. The maps themselves are the record of
//! what is programmed: on start they are read back, so a restart is just another diff.
//! Each change touches only the frontends that differ, and per frontend only its own slots.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use sluice_datapath::abi::{
    ip_from_be, ip_to_be, Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service, SVC_AFFINITY, SVC_EXTERNAL,
    SVC_MAGLEV,
};
use sluice_datapath::Datapath;
use sluice_model::lb::{
    affected_services, affected_services_by, lb_entries, lb_entries_for, Frontend, FrontendOrigin,
    LbEntry, NodeView,
};
use sluice_model::{diff_maps, ChangedObjects, DesiredState, Protocol};

type BackendAddr = (Ipv4Addr, u16, Protocol);

struct Programmed {
    rev_nat_id: u32,
    entry: LbEntry,
    backend_ids: Vec<u32>,
}

struct BackendRef {
    id: u32,
    users: u32,
}

/// Smallest free id first, so ids stay dense.
#[derive(Default)]
struct Ids {
    next: u32,
    free: Vec<u32>,
}

impl Ids {
    fn take(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next
        })
    }
    fn give(&mut self, id: u32) {
        self.free.push(id);
    }
}

/// What one reconcile did.
pub struct Reconciled {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    /// Frontends left out because a map is full (described).
    pub skipped: Vec<String>,
}

#[derive(Default)]
pub struct LbState {
    programmed: BTreeMap<Frontend, Programmed>,
    /// Slots `programmed` occupies in sluice_lb4_svc (kept, not summed, so capacity checks
    /// stay O(1) in a reconcile over thousands of frontends).
    slots_used: usize,
    backends: BTreeMap<BackendAddr, BackendRef>,
    backend_addrs: BTreeMap<u32, BackendAddr>,
    backend_ids: Ids,
    rev_nat_ids: Ids,
    origins: BTreeMap<Frontend, FrontendOrigin>,
    /// "namespace/name" -> its frontends, so a change to one service finds its frontends.
    by_service: BTreeMap<String, std::collections::BTreeSet<Frontend>>,
    /// Entries of each Maglev table.
    maglev_size: u32,
    /// What the maps can hold (read from the pinned maps).
    capacity: sluice_datapath::MapSizes,
    /// The node the frontends were computed for; a change means recomputing everything.
    node: Option<(String, Ipv4Addr)>,
}

fn protocol(number: u8) -> Option<Protocol> {
    match number {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

fn slot_key(f: &Frontend, slot: u16) -> Lb4Key {
    Lb4Key {
        address: ip_to_be(f.address),
        port: f.port.to_be(),
        proto: f.protocol.number(),
        slot,
        ..Default::default()
    }
}

impl LbState {
    /// Reads what a previous run programmed.
    pub fn load(dp: &Datapath, maglev_size: u32) -> Result<Self, String> {
        let capacity = |name| sluice_datapath::lb::map_capacity(&dp.pin_path().join(name));
        let mut state = LbState {
            maglev_size,
            capacity: sluice_datapath::MapSizes {
                lb_slots: capacity(sluice_datapath::lb::MAP_LB_SERVICES),
                backends: capacity(sluice_datapath::lb::MAP_LB_BACKENDS),
                conntrack: capacity(sluice_datapath::lb::MAP_CT),
                policy: capacity(sluice_datapath::policy::MAP_POLICY),
                ..Default::default()
            },
            ..Default::default()
        };
        let lb = dp.lb_ref();
        let mut by_id: BTreeMap<u32, BackendAddr> = BTreeMap::new();
        for (id, b) in lb.backends().map_err(|e| e.to_string())? {
            if let Some(p) = protocol(b.proto) {
                by_id.insert(id, (ip_from_be(b.address), u16::from_be(b.port), p));
            }
            state.backend_ids.next = state.backend_ids.next.max(id);
        }
        let mut heads: BTreeMap<Frontend, Lb4Service> = BTreeMap::new();
        let mut slots: BTreeMap<Frontend, BTreeMap<u16, u32>> = BTreeMap::new();
        for (key, value) in lb.slots().map_err(|e| e.to_string())? {
            let Some(p) = protocol(key.proto) else {
                continue;
            };
            let f = Frontend {
                address: ip_from_be(key.address),
                port: u16::from_be(key.port),
                protocol: p,
            };
            if key.slot == 0 {
                heads.insert(f, value);
            } else {
                slots
                    .entry(f)
                    .or_default()
                    .insert(key.slot, value.backend_id);
            }
        }
        for (f, head) in heads {
            let ids: Vec<u32> = (1..=head.count)
                .filter_map(|s| slots.get(&f)?.get(&s).copied())
                .collect();
            let backends: Vec<(Ipv4Addr, u16)> = ids
                .iter()
                .filter_map(|id| by_id.get(id))
                .map(|(a, p, _)| (*a, *p))
                .collect();
            for id in &ids {
                if let Some(addr) = by_id.get(id) {
                    state
                        .backends
                        .entry(*addr)
                        .or_insert(BackendRef { id: *id, users: 0 })
                        .users += 1;
                    state.backend_addrs.insert(*id, *addr);
                }
            }
            let affinity_timeout =
                (head.flags & SVC_AFFINITY != 0).then_some(head.affinity_timeout);
            let external = head.flags & SVC_EXTERNAL != 0;
            state.rev_nat_ids.next = state.rev_nat_ids.next.max(head.rev_nat_id);
            state.slots_used += ids.len() + 1;
            state.programmed.insert(
                f,
                Programmed {
                    rev_nat_id: head.rev_nat_id,
                    entry: LbEntry {
                        backends,
                        affinity_timeout,
                        external,
                    },
                    backend_ids: ids,
                },
            );
        }
        Ok(state)
    }

    /// Removes backend entries no frontend refers to (left by a crash between writes).
    pub fn sweep(&self, dp: &mut Datapath) -> Result<usize, String> {
        let stale: Vec<u32> = dp
            .lb_ref()
            .backends()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| !self.backend_addrs.contains_key(id))
            .collect();
        for id in &stale {
            dp.lb().remove_backend(*id).map_err(|e| e.to_string())?;
        }
        Ok(stale.len())
    }

    /// (slots in use, capacity) of the service map.
    pub fn slot_pressure(&self) -> (usize, u32) {
        (self.slots_used, self.capacity.lb_slots)
    }

    pub fn frontends(&self) -> usize {
        self.programmed.len()
    }

    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// The service each frontend came from.
    pub fn origins(&self) -> impl Iterator<Item = (&Frontend, &FrontendOrigin)> + '_ {
        self.origins.iter()
    }

    /// (frontend, origin, backends) for display.
    pub fn list(&self) -> Vec<(Frontend, Option<&FrontendOrigin>, &LbEntry)> {
        self.programmed
            .iter()
            .map(|(f, p)| (*f, self.origins.get(f), &p.entry))
            .collect()
    }

    /// Brings the maps to `state`'s frontends; returns (added, removed, changed).
    /// Brings the maps to `new`'s frontends; returns (added, removed, changed) frontends.
    /// With the previous state `old` and the same node, only services whose frontends may
    /// have changed are recomputed and compared; otherwise everything is.
    pub fn reconcile(
        &mut self,
        dp: &mut Datapath,
        old: Option<&DesiredState>,
        new: &DesiredState,
        node: NodeView,
        changed: Option<&ChangedObjects>,
    ) -> Result<Reconciled, String> {
        let node_key = (node.name.to_string(), node.address);
        let incremental = old.filter(|_| self.node.as_ref() == Some(&node_key));
        self.node = Some(node_key);
        let (desired, current) = match incremental {
            Some(old) => {
                // The source's change list when it has one: no comparing 20k Services to
                // find the one that changed.
                let scope = match changed {
                    Some(changed) => affected_services_by(changed, old, new),
                    None => affected_services(old, new),
                };
                let desired = lb_entries_for(
                    new,
                    Some(node),
                    scope.iter().filter_map(|k| new.services.get(k)),
                );
                let current: BTreeMap<Frontend, LbEntry> = scope
                    .iter()
                    .filter_map(|svc| self.by_service.get(svc))
                    .flatten()
                    .filter_map(|f| self.programmed.get(f).map(|p| (*f, p.entry.clone())))
                    .collect();
                for svc in &scope {
                    for f in self.by_service.remove(svc).unwrap_or_default() {
                        self.origins.remove(&f);
                    }
                }
                (desired, current)
            }
            None => {
                self.origins.clear();
                self.by_service.clear();
                let current = self
                    .programmed
                    .iter()
                    .map(|(f, p)| (*f, p.entry.clone()))
                    .collect();
                (lb_entries(new, Some(node)), current)
            }
        };
        let wanted: BTreeMap<Frontend, LbEntry> =
            desired.iter().map(|(f, (e, _))| (*f, e.clone())).collect();
        for (f, (_, origin)) in desired {
            self.by_service
                .entry(origin.service.clone())
                .or_default()
                .insert(f);
            self.origins.insert(f, origin);
        }
        let diff = diff_maps(&current, &wanted);
        let mut counts = (diff.added.len(), diff.removed.len(), diff.changed.len());
        let is_new: std::collections::BTreeSet<Frontend> =
            diff.added.iter().map(|(f, _)| **f).collect();
        let removed: Vec<Frontend> = diff.removed.iter().map(|(f, _)| **f).collect();
        let upserts: Vec<(Frontend, LbEntry)> = diff
            .added
            .iter()
            .map(|(f, e)| (**f, (*e).clone()))
            .chain(diff.changed.iter().map(|(f, _, e)| (**f, (*e).clone())))
            .collect();
        for f in removed {
            self.unprogram(dp, &f)?;
        }
        let mut skipped = Vec::new();
        for (f, entry) in upserts {
            // A full map is refused up front, so nothing is written half-way and what is
            // programmed stays as it was.
            if let Err(why) = self.fits(&f, &entry) {
                let service = self
                    .origins
                    .get(&f)
                    .map(|o| o.service.clone())
                    .unwrap_or_default();
                if is_new.contains(&f) {
                    counts.0 -= 1;
                } else {
                    counts.2 -= 1;
                }
                skipped.push(format!(
                    "service {service} frontend {}:{}/{} not programmed: {why}",
                    f.address, f.port, f.protocol
                ));
                continue;
            }
            self.program(dp, f, entry)?;
        }
        Ok(Reconciled {
            added: counts.0,
            removed: counts.1,
            changed: counts.2,
            skipped,
        })
    }

    /// Whether programming `entry` for `f` stays within the maps' capacities.
    fn fits(&self, f: &Frontend, entry: &LbEntry) -> Result<(), String> {
        let slots_now = self.slots_used;
        let old = self
            .programmed
            .get(f)
            .map(|p| p.backend_ids.len() + 1)
            .unwrap_or(0);
        let slots_after = slots_now - old + entry.backends.len() + 1;
        if slots_after > self.capacity.lb_slots as usize {
            return Err(format!(
                "map sluice_lb4_svc is full ({slots_now} of {} slots used, {} more needed)",
                self.capacity.lb_slots,
                slots_after - slots_now
            ));
        }
        let new_backends = entry
            .backends
            .iter()
            .filter(|(a, p)| !self.backends.contains_key(&(*a, *p, f.protocol)))
            .count();
        if self.backends.len() + new_backends > self.capacity.backends as usize {
            return Err(format!(
                "map sluice_lb4_be is full ({} of {} backends, {new_backends} more needed)",
                self.backends.len(),
                self.capacity.backends
            ));
        }
        Ok(())
    }

    fn acquire_backend(&mut self, dp: &mut Datapath, addr: BackendAddr) -> Result<u32, String> {
        if let Some(b) = self.backends.get_mut(&addr) {
            b.users += 1;
            return Ok(b.id);
        }
        let id = self.backend_ids.take();
        let value = Lb4Backend {
            address: ip_to_be(addr.0),
            port: addr.1.to_be(),
            proto: addr.2.number(),
            flags: 0,
        };
        dp.lb().set_backend(id, value).map_err(|e| e.to_string())?;
        self.backends.insert(addr, BackendRef { id, users: 1 });
        self.backend_addrs.insert(id, addr);
        Ok(id)
    }

    fn release_backend(&mut self, dp: &mut Datapath, id: u32) -> Result<(), String> {
        let Some(addr) = self.backend_addrs.get(&id).copied() else {
            return Ok(());
        };
        let Some(b) = self.backends.get_mut(&addr) else {
            return Ok(());
        };
        b.users -= 1;
        if b.users == 0 {
            self.backends.remove(&addr);
            self.backend_addrs.remove(&id);
            dp.lb().remove_backend(id).map_err(|e| e.to_string())?;
            self.backend_ids.give(id);
        }
        Ok(())
    }

    fn program(&mut self, dp: &mut Datapath, f: Frontend, entry: LbEntry) -> Result<(), String> {
        let old = self.programmed.remove(&f);
        if let Some(o) = &old {
            self.slots_used -= o.backend_ids.len() + 1;
        }
        let rev_nat_id = match &old {
            Some(p) => p.rev_nat_id,
            None => {
                let id = self.rev_nat_ids.take();
                let value = Lb4RevNat {
                    address: ip_to_be(f.address),
                    port: f.port.to_be(),
                    pad: 0,
                };
                dp.lb().set_revnat(id, value).map_err(|e| e.to_string())?;
                id
            }
        };
        let mut ids = Vec::with_capacity(entry.backends.len());
        for (addr, port) in &entry.backends {
            ids.push(self.acquire_backend(dp, (*addr, *port, f.protocol))?);
        }
        // Slots first, then the head that makes them visible; shrinking drops the tail after.
        for (i, id) in ids.iter().enumerate() {
            dp.lb()
                .set_slot(
                    slot_key(&f, i as u16 + 1),
                    Lb4Service {
                        backend_id: *id,
                        ..Default::default()
                    },
                )
                .map_err(|e| e.to_string())?;
        }
        // External frontends choose by Maglev so every node sends a flow to the same backend;
        // the table is built whole and swapped in atomically.
        let maglev = entry.external && !ids.is_empty();
        if maglev {
            let names: Vec<String> = entry
                .backends
                .iter()
                .map(|(a, p)| format!("{a}:{p}"))
                .collect();
            let table: Vec<u32> = sluice_model::maglev::table(&names, self.maglev_size)
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|i| ids[i as usize])
                .collect();
            dp.lb()
                .set_maglev(rev_nat_id, &table)
                .map_err(|e| e.to_string())?;
        }
        let head = Lb4Service {
            backend_id: 0,
            count: ids.len() as u16,
            flags: if entry.affinity_timeout.is_some() {
                SVC_AFFINITY
            } else {
                0
            } | if entry.external { SVC_EXTERNAL } else { 0 }
                | if maglev { SVC_MAGLEV } else { 0 },
            rev_nat_id,
            affinity_timeout: entry.affinity_timeout.unwrap_or(0),
        };
        dp.lb()
            .set_slot(slot_key(&f, 0), head)
            .map_err(|e| e.to_string())?;
        if !maglev {
            dp.lb()
                .remove_maglev(rev_nat_id)
                .map_err(|e| e.to_string())?;
        }
        if let Some(old) = old {
            for slot in ids.len() + 1..=old.backend_ids.len() {
                dp.lb()
                    .remove_slot(&slot_key(&f, slot as u16))
                    .map_err(|e| e.to_string())?;
            }
            for id in old.backend_ids {
                self.release_backend(dp, id)?;
            }
        }
        self.slots_used += ids.len() + 1;
        self.programmed.insert(
            f,
            Programmed {
                rev_nat_id,
                entry,
                backend_ids: ids,
            },
        );
        Ok(())
    }

    fn unprogram(&mut self, dp: &mut Datapath, f: &Frontend) -> Result<(), String> {
        let Some(old) = self.programmed.remove(f) else {
            return Ok(());
        };
        self.slots_used -= old.backend_ids.len() + 1;
        dp.lb()
            .remove_slot(&slot_key(f, 0))
            .map_err(|e| e.to_string())?;
        for slot in 1..=old.backend_ids.len() {
            dp.lb()
                .remove_slot(&slot_key(f, slot as u16))
                .map_err(|e| e.to_string())?;
        }
        for id in old.backend_ids {
            self.release_backend(dp, id)?;
        }
        dp.lb()
            .remove_maglev(old.rev_nat_id)
            .map_err(|e| e.to_string())?;
        dp.lb()
            .remove_revnat(old.rev_nat_id)
            .map_err(|e| e.to_string())?;
        self.rev_nat_ids.give(old.rev_nat_id);
        Ok(())
    }
}
