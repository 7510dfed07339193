//! Crash-safe record of every attachment, which is also the IPAM state: one file per allocated
//! address (`<state>/endpoints/<ip>`) holding the attachment's record.
//!
//! An address is claimed by hard-linking a fully written temporary file to its name: `link(2)`
//! either creates the name atomically or fails because it exists, so a crash at any instant
//! leaves the address either free or claimed with a complete record — never handed out twice.
//! Updates replace the file with `rename(2)`, also atomic.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_api::{AttachmentKey, PodRef};

/// Where an attachment is in its life. `Allocated` survives only a crash in the middle of an
/// ADD; recovery tears such attachments down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Phase {
    Allocated,
    Ready(Interface),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub pod_mac: [u8; 6],
    pub mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: AttachmentKey,
    #[serde(default)]
    pub pod: Option<PodRef>,
    pub address: Ipv4Addr,
    pub netns: PathBuf,
    pub host_ifname: String,
    #[serde(flatten)]
    pub phase: Phase,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("address {0} is already claimed in the store")]
    Taken(Ipv4Addr),
    #[error("state store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

pub struct Store {
    dir: PathBuf,
}

/// What `open` found: good records, plus addresses whose files could not be read (kept
/// reserved, never reused, and reported).
pub struct Loaded {
    pub records: Vec<Record>,
    pub unreadable: BTreeMap<Ipv4Addr, String>,
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<(Self, Loaded), StoreError> {
        let dir = state_dir.join("endpoints");
        let io_err = |source| StoreError::Io {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io_err)?;
        let mut loaded = Loaded {
            records: Vec::new(),
            unreadable: BTreeMap::new(),
        };
        for entry in fs::read_dir(&dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // Temporaries of a write that crashed before its link/rename: garbage.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Ok(ip) = name.parse::<Ipv4Addr>() else {
                continue;
            };
            match fs::read(entry.path())
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<Record>(&bytes).map_err(|e| e.to_string())
                }) {
                Ok(record) if record.address == ip => loaded.records.push(record),
                Ok(record) => {
                    loaded
                        .unreadable
                        .insert(ip, format!("file names {ip} but holds {}", record.address));
                }
                Err(e) => {
                    loaded.unreadable.insert(ip, e);
                }
            }
        }
        Ok((Self { dir }, loaded))
    }

    fn path(&self, ip: Ipv4Addr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    fn write_temp(&self, record: &Record) -> Result<PathBuf, StoreError> {
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", record.address, std::process::id()));
        let io_err = |source| StoreError::Io {
            path: tmp.clone(),
            source,
        };
        let mut file = fs::File::create(&tmp).map_err(io_err)?;
        file.write_all(&serde_json::to_vec_pretty(record).expect("records serialize"))
            .map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        Ok(tmp)
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::Io {
                path: self.dir.clone(),
                source,
            })
    }

    /// Claims `record.address` for `record`; fails with `Taken` if anything holds it.
    pub fn claim(&self, record: &Record) -> Result<(), StoreError> {
        let tmp = self.write_temp(record)?;
        let target = self.path(record.address);
        let linked = fs::hard_link(&tmp, &target);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(StoreError::Taken(record.address))
            }
            Err(source) => Err(StoreError::Io {
                path: target,
                source,
            }),
        }
    }

    /// Replaces the record of an address this store already holds.
    pub fn update(&self, record: &Record) -> Result<(), StoreError> {
        let tmp = self.write_temp(record)?;
        let target = self.path(record.address);
        fs::rename(&tmp, &target).map_err(|source| StoreError::Io {
            path: target,
            source,
        })?;
        self.sync_dir()
    }

    /// Frees an address; Ok(false) if it was not claimed.
    pub fn release(&self, ip: Ipv4Addr) -> Result<bool, StoreError> {
        match fs::remove_file(self.path(ip)) {
            Ok(()) => self.sync_dir().map(|_| true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io {
                path: self.path(ip),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ip: [u8; 4], id: &str) -> Record {
        Record {
            key: AttachmentKey {
                container_id: id.into(),
                ifname: "eth0".into(),
            },
            pod: None,
            address: Ipv4Addr::from(ip),
            netns: "/run/netns/x".into(),
            host_ifname: "lxc0".into(),
            phase: Phase::Allocated,
        }
    }

    #[test]
    fn an_address_is_claimed_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.records.is_empty());
        store.claim(&record([10, 0, 0, 1], "a")).unwrap();
        assert!(matches!(
            store.claim(&record([10, 0, 0, 1], "b")),
            Err(StoreError::Taken(_))
        ));
        let mut ready = record([10, 0, 0, 1], "a");
        ready.phase = Phase::Ready(Interface {
            host_ifindex: 7,
            host_mac: [1; 6],
            pod_mac: [2; 6],
            mtu: 1500,
        });
        store.update(&ready).unwrap();

        let (store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.records, vec![ready]);
        assert!(store.release(Ipv4Addr::new(10, 0, 0, 1)).unwrap());
        assert!(!store.release(Ipv4Addr::new(10, 0, 0, 1)).unwrap());
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.records.is_empty());
    }

    #[test]
    fn leftovers_of_a_crash_are_handled() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        store.claim(&record([10, 0, 0, 2], "a")).unwrap();
        let endpoints = dir.path().join("endpoints");
        // A temporary from a write that never got linked: removed, its address stays free.
        fs::write(endpoints.join(".10.0.0.3.99.tmp"), b"{").unwrap();
        // A damaged record: its address stays reserved and is reported.
        fs::write(endpoints.join("10.0.0.4"), b"{ not json").unwrap();
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.records.len(), 1);
        assert!(loaded.unreadable.contains_key(&Ipv4Addr::new(10, 0, 0, 4)));
        assert!(!endpoints.join(".10.0.0.3.99.tmp").exists());
    }
}
