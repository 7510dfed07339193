//! Pod attachments: CNI ADD/DEL/CHECK/GC as the agent carries them out, and recovery of what
//! a previous run left behind.

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use sluice_api::{ApiError, Attachment, AttachmentKey, Endpoint, ErrorKind, PodRef};
use sluice_datapath::EndpointInfo;
use sluice_netdev::{format_mac, pod};

use crate::core::Core;
use crate::store::{Interface, Phase, Record, StoreError};

fn internal(what: &str) -> impl Fn(String) -> ApiError + '_ {
    move |e| ApiError::new(ErrorKind::Internal, format!("{what}: {e}"))
}

/// Container ids and interface names come from the runtime; check them before they name files
/// or devices.
fn validate_key(key: &AttachmentKey) -> Result<(), ApiError> {
    let id = &key.container_id;
    let id_ok = !id.is_empty()
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !id_ok {
        return Err(ApiError::new(
            ErrorKind::InvalidArgument,
            format!("container id {id:?} is invalid: use letters, digits, '_', '.', '-'"),
        ));
    }
    let n = &key.ifname;
    let name_ok = !n.is_empty()
        && n.len() <= 15
        && n != "."
        && n != ".."
        && !n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if !name_ok {
        return Err(ApiError::new(
            ErrorKind::InvalidArgument,
            format!("interface name {n:?} is invalid: 1-15 bytes without '/', ':' or spaces"),
        ));
    }
    Ok(())
}

impl Core {
    pub(crate) fn add(
        &mut self,
        key: AttachmentKey,
        netns: PathBuf,
        pod: Option<PodRef>,
    ) -> Result<Attachment, ApiError> {
        validate_key(&key)?;
        let node = self.require_ready()?.clone();
        if !netns.exists() {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("network namespace {} does not exist", netns.display()),
            ));
        }
        if let Some(existing) = self.records.get(&key) {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "container {} already has interface {} attached (address {})",
                    key.container_id, key.ifname, existing.address
                ),
            ));
        }
        let cidr = node.info.pod_cidr;
        let taken: BTreeSet<Ipv4Addr> = self
            .records
            .values()
            .map(|r| r.address)
            .chain(self.reserved.keys().copied())
            .collect();
        let address =
            sluice_model::ipam::next_free(cidr, &taken, self.last_allocated).ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Exhausted,
                    format!(
                        "pod CIDR {cidr} of node {} has no free address ({} in use)",
                        node.info.name,
                        taken.len()
                    ),
                )
            })?;
        let host_ifname = pod::host_ifname(&key.container_id, &key.ifname);
        let mut record = Record {
            key: key.clone(),
            pod,
            address,
            netns: netns.clone(),
            host_ifname: host_ifname.clone(),
            phase: Phase::Allocated,
        };
        // Persist the claim before anything exists, so a crash from here on is recoverable.
        self.store.claim(&record).map_err(|e| match e {
            StoreError::Taken(ip) => ApiError::new(
                ErrorKind::Internal,
                format!("address {ip} is claimed on disk but unknown to the agent"),
            ),
            other => internal("recording the allocation")(other.to_string()),
        })?;
        self.last_allocated = Some(address);
        match self.plumb(&record, self.pod_mtu(&node)) {
            Ok(iface) => {
                record.phase = Phase::Ready(iface);
                if let Err(e) = self.store.update(&record) {
                    self.unplumb(&record);
                    let _ = self.store.release(address);
                    return Err(internal("recording the endpoint")(e.to_string()));
                }
                tracing::info!(container = %key.container_id, ifname = %key.ifname, %address, host = %host_ifname, "endpoint added");
                let attachment = attachment(&record);
                self.records.insert(key, record);
                Ok(attachment)
            }
            Err(e) => {
                let _ = self.store.release(address);
                Err(e)
            }
        }
    }

    /// Creates the veth pair and attaches the datapath; undoes its own work on failure.
    fn plumb(&mut self, record: &Record, mtu: u32) -> Result<Interface, ApiError> {
        let spec = pod::PodInterfaceSpec {
            netns: record.netns.clone(),
            ifname: record.key.ifname.clone(),
            host_ifname: record.host_ifname.clone(),
            address: record.address,
            mtu,
        };
        let made = pod::setup(&spec).map_err(|e| {
            let kind = if e.is_already_exists() {
                ErrorKind::AlreadyExists
            } else if e.is_not_found() {
                ErrorKind::NotFound
            } else {
                ErrorKind::Internal
            };
            ApiError::new(
                kind,
                format!(
                    "setting up {} in {}: {e}",
                    record.key.ifname,
                    record.netns.display()
                ),
            )
        })?;
        let iface = Interface {
            host_ifindex: made.host_ifindex,
            host_mac: made.host_mac,
            pod_mac: made.pod_mac,
            mtu: made.mtu,
        };
        let info = endpoint_info(&iface, self.policy.endpoint_bits(record.address));
        let attached = self
            .dp
            .attach_endpoint(&record.host_ifname, iface.host_ifindex)
            .and_then(|_| self.dp.upsert_endpoint(record.address, info));
        if let Err(e) = attached {
            let _ = self.dp.detach(&record.host_ifname, iface.host_ifindex);
            let _ = pod::teardown(&record.host_ifname, Some(record.address));
            return Err(internal("attaching the datapath")(e.to_string()));
        }
        Ok(iface)
    }

    /// Removes everything `plumb` made; tolerant of pieces already gone.
    fn unplumb(&mut self, record: &Record) {
        if let Err(e) = self.dp.remove_endpoint(record.address) {
            tracing::warn!(error = %e, address = %record.address, "removing endpoint map entry");
        }
        if let Phase::Ready(iface) = &record.phase {
            if let Err(e) = self.dp.detach(&record.host_ifname, iface.host_ifindex) {
                tracing::warn!(error = %e, "detaching datapath");
            }
        }
        if let Err(e) = pod::teardown(&record.host_ifname, Some(record.address)) {
            tracing::warn!(error = %e, host = %record.host_ifname, "deleting pod veth");
        }
    }

    pub(crate) fn del(&mut self, key: &AttachmentKey) -> Result<bool, ApiError> {
        validate_key(key)?;
        let Some(record) = self.records.get(key).cloned() else {
            // Unknown to us, but a crashed ADD of another agent version may have left a device.
            let host = pod::host_ifname(&key.container_id, &key.ifname);
            let existed = pod::teardown(&host, None)
                .map_err(|e| internal("deleting pod veth")(e.to_string()))?;
            return Ok(existed);
        };
        self.unplumb(&record);
        self.store
            .release(record.address)
            .map_err(|e| internal("releasing the address")(e.to_string()))?;
        self.records.remove(key);
        tracing::info!(container = %key.container_id, ifname = %key.ifname, address = %record.address, "endpoint deleted");
        Ok(true)
    }

    pub(crate) fn check(
        &mut self,
        key: &AttachmentKey,
        netns: &Path,
    ) -> Result<Vec<String>, ApiError> {
        validate_key(key)?;
        let record = self.records.get(key).ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "container {} has no interface {} attached",
                    key.container_id, key.ifname
                ),
            )
        })?;
        let Phase::Ready(iface) = &record.phase else {
            return Ok(vec![format!(
                "attachment of {} is incomplete (agent crashed during ADD?)",
                key.container_id
            )]);
        };
        let mut problems = Vec::new();
        if netns != record.netns {
            problems.push(format!(
                "network namespace is {} but the attachment was made in {}",
                netns.display(),
                record.netns.display()
            ));
        }
        let expected = pod::PodInterface {
            host_ifname: record.host_ifname.clone(),
            host_ifindex: iface.host_ifindex,
            host_mac: iface.host_mac,
            pod_ifname: key.ifname.clone(),
            pod_mac: iface.pod_mac,
            address: record.address,
            mtu: iface.mtu,
        };
        problems.extend(
            pod::check(&expected, &record.netns)
                .map_err(|e| internal("checking the pod interface")(e.to_string()))?,
        );
        if !self.dp.is_attached(&record.host_ifname, iface.host_ifindex) {
            problems.push(format!(
                "datapath programs are not attached to {}",
                record.host_ifname
            ));
        }
        let in_map = self
            .dp
            .endpoints()
            .map_err(|e| internal("reading endpoints map")(e.to_string()))?;
        match in_map.iter().find(|(ip, _)| *ip == record.address) {
            None => problems.push(format!(
                "{} is missing from the datapath's endpoint map",
                record.address
            )),
            Some((_, info))
                if *info != endpoint_info(iface, self.policy.endpoint_bits(record.address)) =>
            {
                problems.push(format!(
                    "endpoint map entry for {} is out of date",
                    record.address
                ))
            }
            Some(_) => {}
        }
        Ok(problems)
    }

    pub(crate) fn gc(&mut self, valid: &[AttachmentKey]) -> Result<Vec<AttachmentKey>, ApiError> {
        let keep: HashSet<&AttachmentKey> = valid.iter().collect();
        let stale: Vec<AttachmentKey> = self
            .records
            .keys()
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        for key in &stale {
            self.del(key)?;
        }
        if !stale.is_empty() {
            tracing::info!(removed = stale.len(), "garbage-collected attachments");
        }
        Ok(stale)
    }

    pub(crate) fn endpoint_list(&self) -> Vec<Endpoint> {
        self.records
            .values()
            .map(|r| {
                let (ifindex, pod_mac, attached) = match &r.phase {
                    Phase::Ready(i) => (
                        i.host_ifindex,
                        format_mac(i.pod_mac),
                        self.dp.is_attached(&r.host_ifname, i.host_ifindex),
                    ),
                    Phase::Allocated => (0, String::new(), false),
                };
                Endpoint {
                    key: r.key.clone(),
                    pod: r.pod.clone(),
                    address: r.address,
                    host_ifname: r.host_ifname.clone(),
                    host_ifindex: ifindex,
                    pod_mac,
                    datapath_attached: attached,
                }
            })
            .collect()
    }

    /// Brings the datapath back in line with the records after a start: half-made attachments
    /// are undone, complete ones get the fresh programs swapped into their pinned links, and map
    /// entries or links nobody owns are removed.
    pub(crate) fn recover(&mut self, records: Vec<Record>) {
        let links = self.net.list_links().unwrap_or_default();
        for record in records {
            match &record.phase {
                Phase::Allocated => {
                    tracing::warn!(container = %record.key.container_id, address = %record.address, "undoing an ADD interrupted by a crash");
                    self.unplumb(&record);
                    if let Err(e) = self.store.release(record.address) {
                        self.state_problems
                            .push(format!("releasing {}: {e}", record.address));
                    }
                }
                Phase::Ready(iface) => {
                    let alive = links
                        .iter()
                        .any(|l| l.index == iface.host_ifindex && l.name == record.host_ifname);
                    if alive {
                        let info = endpoint_info(iface, self.policy.endpoint_bits(record.address));
                        let result = self
                            .dp
                            .attach_endpoint(&record.host_ifname, iface.host_ifindex)
                            .and_then(|_| self.dp.upsert_endpoint(record.address, info));
                        if let Err(e) = result {
                            self.state_problems
                                .push(format!("re-attaching {}: {e}", record.host_ifname));
                        }
                    } else {
                        // The pod's namespace went away without a DEL; the runtime's DEL or GC
                        // will release the address. Stop steering packets at a dead device.
                        let _ = self.dp.remove_endpoint(record.address);
                        let _ = self.dp.detach(&record.host_ifname, iface.host_ifindex);
                    }
                    self.records.insert(record.key.clone(), record);
                }
            }
        }
        self.last_allocated = self.records.values().map(|r| r.address).max();
        let owned: HashSet<Ipv4Addr> = self.records.values().map(|r| r.address).collect();
        if let Ok(entries) = self.dp.endpoints() {
            for (ip, _) in entries.into_iter().filter(|(ip, _)| !owned.contains(ip)) {
                let _ = self.dp.remove_endpoint(ip);
            }
        }
        // A pinned link stays while its device exists, unless it is a pod veth nobody owns
        // (the uplink and the VXLAN device are re-attached once the node is configured).
        let owned: HashSet<(String, u32)> = self
            .records
            .values()
            .filter_map(|r| match &r.phase {
                Phase::Ready(i) => Some((r.host_ifname.clone(), i.host_ifindex)),
                Phase::Allocated => None,
            })
            .collect();
        for (ifname, ifindex) in self.dp.pinned_links() {
            let exists = links.iter().any(|l| l.name == ifname && l.index == ifindex);
            let orphan_pod =
                ifname.starts_with("lxc") && !owned.contains(&(ifname.clone(), ifindex));
            if !exists || orphan_pod {
                let _ = self.dp.detach(&ifname, ifindex);
            }
        }
        tracing::info!(
            endpoints = self.records.len(),
            "recovered endpoints from pinned state"
        );
    }
}

/// The endpoint map entry of an interface; identity and isolation flags belong to policy and
/// are kept as it programmed them, so rewriting an entry never opens an isolated pod.
pub(crate) fn endpoint_info(iface: &Interface, (identity, flags): (u32, u32)) -> EndpointInfo {
    EndpointInfo {
        ifindex: iface.host_ifindex,
        pod_mac: iface.pod_mac,
        host_mac: iface.host_mac,
        flags,
        identity,
    }
}

fn attachment(record: &Record) -> Attachment {
    let (host_mac, pod_mac, mtu) = match &record.phase {
        Phase::Ready(i) => (format_mac(i.host_mac), format_mac(i.pod_mac), i.mtu),
        Phase::Allocated => (String::new(), String::new(), 0),
    };
    Attachment {
        key: record.key.clone(),
        address: Ipv4Net::new(record.address, 32).expect("/32 is valid"),
        gateway: pod::GATEWAY,
        mtu,
        host_ifname: record.host_ifname.clone(),
        host_mac,
        pod_mac,
        routes: vec![(Ipv4Net::default(), pod::GATEWAY)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, ifname: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: id.into(),
            ifname: ifname.into(),
        }
    }

    #[test]
    fn keys_from_the_runtime_are_validated() {
        assert!(validate_key(&key("abc-123_x.y", "eth0")).is_ok());
        for (id, ifname) in [
            ("", "eth0"),
            ("-x", "eth0"),
            ("a/b", "eth0"),
            ("a", ""),
            ("a", "a/b"),
            ("a", "waytoolongname16"),
            ("a", ".."),
            ("a", "e th"),
        ] {
            let err = validate_key(&key(id, ifname)).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidArgument, "{id:?} {ifname:?}");
        }
    }
}
