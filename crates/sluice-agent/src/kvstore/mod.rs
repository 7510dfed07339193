//! Cluster-wide state in etcd (`kvstore.type: etcd`), the way Cilium's kvstore mode keeps it:
//! identities are claimed with compare-and-swap transactions; each node publishes its own
//! node record and its endpoints (pod IP -> identity) under a lease it keeps alive, so a dead
//! node's entries expire; every agent watches the prefix and feeds what the other nodes
//! published into its ipcache.
//!
//! The session reconnects with backoff after any error (etcd restarted, lease lost), grants a
//! new lease and publishes everything again. Meanwhile the core keeps the last view it was
//! given, so the datapath is not disturbed while etcd is away.

pub mod identities;
pub mod records;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use sluice_api::config::KvstoreConfig;
use sluice_api::KvstoreStatus;
use tokio::sync::watch;

use records::{endpoint_key, node_key, parse_entry, parse_slot};
pub use records::{ClusterView, EndpointRecord, NodeRecord};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// What this node wants published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publication {
    pub node: Option<NodeRecord>,
    pub endpoints: Vec<EndpointRecord>,
}

/// The running session: publish through it, read its status.
pub struct Kvstore {
    publication: watch::Sender<Publication>,
    status: Arc<Mutex<KvstoreStatus>>,
}

impl Kvstore {
    /// Starts the session on `runtime`; `on_view` gets the other nodes' state after every
    /// change (and after each reconnect).
    pub fn start(
        cfg: &KvstoreConfig,
        node: &str,
        runtime: &tokio::runtime::Handle,
        on_view: impl Fn(ClusterView) + Send + Sync + 'static,
    ) -> Self {
        let (publication, rx) = watch::channel(Publication::default());
        let status = Arc::new(Mutex::new(KvstoreStatus {
            endpoints: cfg.endpoints.join(","),
            ..Default::default()
        }));
        let session = Session {
            cfg: cfg.clone(),
            node: node.to_string(),
            status: status.clone(),
            on_view: Box::new(on_view),
        };
        runtime.spawn(session.run(rx));
        Self {
            publication,
            status,
        }
    }

    pub fn publish(&self, publication: Publication) {
        self.publication.send_if_modified(|current| {
            if *current == publication {
                return false;
            }
            *current = publication;
            true
        });
    }

    pub fn status(&self) -> KvstoreStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub async fn connect(endpoints: &[String]) -> Result<Client, String> {
    let options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT);
    Client::connect(endpoints, Some(options))
        .await
        .map_err(|e| format!("connecting to etcd at {}: {e}", endpoints.join(",")))
}

struct Session {
    cfg: KvstoreConfig,
    node: String,
    status: Arc<Mutex<KvstoreStatus>>,
    on_view: Box<dyn Fn(ClusterView) + Send + Sync>,
}

impl Session {
    async fn run(self, mut publication: watch::Receiver<Publication>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let started = std::time::Instant::now();
            let error = match self.session(&mut publication).await {
                Ok(()) => "the agent stopped".to_string(),
                Err(e) => e,
            };
            if publication.has_changed().is_err() {
                return; // the agent is gone
            }
            tracing::warn!(error = %error, "kvstore: session ended; reconnecting");
            self.set_status(|s| {
                s.connected = false;
                s.last_error = Some(error);
            });
            if started.elapsed() > MAX_BACKOFF * 2 {
                backoff = Duration::from_millis(500);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn set_status(&self, f: impl FnOnce(&mut KvstoreStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// One connection's life: ends with why (Ok when the agent is gone).
    async fn session(&self, publication: &mut watch::Receiver<Publication>) -> Result<(), String> {
        let prefix = &self.cfg.prefix;
        let mut client = connect(&self.cfg.endpoints).await?;
        let lease = client
            .lease_grant(self.cfg.lease_ttl_seconds as i64, None)
            .await
            .map_err(|e| format!("etcd: granting a lease: {e}"))?
            .id();
        let (mut keeper, mut renewals) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| format!("etcd: keeping lease {lease:x} alive: {e}"))?;

        // Everything as of one revision, then every change after it.
        let listing = client
            .get(format!("{prefix}/"), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| format!("etcd: reading {prefix}/: {e}"))?;
        let revision = listing.header().map(|h| h.revision()).unwrap_or(0);
        let mut view = ClusterView::default();
        let mut ignored = 0;
        // Keys a previous run of this node left behind: removed unless published again.
        let mut leftovers = Vec::new();
        for kv in listing.kvs() {
            match parse_entry(prefix, kv.key(), kv.value()) {
                Ok((slot, entry)) => {
                    if self.owns(&slot) {
                        leftovers.push(kv.key().to_vec());
                    }
                    view.put(entry);
                }
                Err(why) => {
                    ignored += 1;
                    tracing::warn!(%why, "kvstore: ignoring a key");
                }
            }
        }
        let mut watch = client
            .watch(
                format!("{prefix}/"),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .map_err(|e| format!("etcd: watching {prefix}/: {e}"))?;

        let mut published: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let wanted = publication.borrow_and_update().clone();
        self.publish(&mut client, lease, &wanted, &mut published, leftovers)
            .await?;
        self.report_view(&view, ignored, published.len());
        (self.on_view)(view.clone());
        tracing::info!(
            lease = format!("{lease:x}"),
            revision,
            "kvstore: connected to etcd"
        );

        let mut renew = tokio::time::interval(Duration::from_secs(
            (self.cfg.lease_ttl_seconds as u64 / 3).max(1),
        ));
        loop {
            tokio::select! {
                _ = renew.tick() => keeper
                    .keep_alive()
                    .await
                    .map_err(|e| format!("etcd: renewing lease {lease:x}: {e}"))?,
                renewal = renewals.message() => match renewal {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(Some(_)) => return Err(format!("etcd: lease {lease:x} expired")),
                    Ok(None) => return Err("etcd: the lease stream ended".into()),
                    Err(e) => return Err(format!("etcd: lease stream: {e}")),
                },
                changed = publication.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let wanted = publication.borrow_and_update().clone();
                    self.publish(&mut client, lease, &wanted, &mut published, Vec::new()).await?;
                    self.set_status(|s| s.published = published.len());
                }
                message = watch.message() => {
                    let response = message
                        .map_err(|e| format!("etcd: watch: {e}"))?
                        .ok_or("etcd: the watch ended")?;
                    if response.canceled() {
                        return Err(format!("etcd: watch canceled: {}", response.cancel_reason()));
                    }
                    let mut changed = false;
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        match event.event_type() {
                            EventType::Put => match parse_entry(prefix, kv.key(), kv.value()) {
                                Ok((_, entry)) => changed |= view.put(entry),
                                Err(why) => {
                                    ignored += 1;
                                    tracing::warn!(%why, "kvstore: ignoring a key");
                                }
                            },
                            EventType::Delete => {
                                if let Ok(slot) = parse_slot(prefix, kv.key()) {
                                    changed |= view.delete(&slot);
                                }
                            }
                        }
                    }
                    self.report_view(&view, ignored, published.len());
                    if changed {
                        (self.on_view)(view.clone());
                    }
                }
            }
        }
    }

    fn owns(&self, slot: &records::Slot) -> bool {
        match slot {
            records::Slot::Node(n) => *n == self.node,
            records::Slot::Endpoint { node, .. } => *node == self.node,
            records::Slot::Identity(_) => false,
        }
    }

    fn report_view(&self, view: &ClusterView, ignored: usize, published: usize) {
        let remote_nodes = view.nodes.keys().filter(|n| **n != self.node).count();
        let remote_endpoints = view.remote_endpoints(&self.node).len();
        self.set_status(|s| {
            s.connected = true;
            s.last_error = None;
            s.ignored = ignored;
            s.published = published;
            s.remote_nodes = remote_nodes;
            s.remote_endpoints = remote_endpoints;
        });
    }

    /// Writes what changed since the last publication (under `lease`), removes what is no
    /// longer wanted, and removes `leftovers` (keys of an earlier run) not wanted now.
    async fn publish(
        &self,
        client: &mut Client,
        lease: i64,
        wanted: &Publication,
        published: &mut BTreeMap<Vec<u8>, Vec<u8>>,
        leftovers: Vec<Vec<u8>>,
    ) -> Result<(), String> {
        let prefix = &self.cfg.prefix;
        let mut desired: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        if let Some(node) = &wanted.node {
            desired.insert(
                node_key(prefix, &node.name).into_bytes(),
                serde_json::to_vec(node).map_err(|e| e.to_string())?,
            );
        }
        for e in &wanted.endpoints {
            desired.insert(
                endpoint_key(prefix, &e.node, e.ip).into_bytes(),
                serde_json::to_vec(e).map_err(|e| e.to_string())?,
            );
        }
        for (key, value) in &desired {
            if published.get(key) == Some(value) {
                continue;
            }
            client
                .put(
                    key.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .map_err(|e| format!("etcd: writing {}: {e}", String::from_utf8_lossy(key)))?;
            published.insert(key.clone(), value.clone());
        }
        let stale: Vec<Vec<u8>> = published
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .chain(leftovers.into_iter().filter(|k| !desired.contains_key(k)))
            .collect();
        for key in stale {
            client
                .delete(key.clone(), None)
                .await
                .map_err(|e| format!("etcd: removing {}: {e}", String::from_utf8_lossy(&key)))?;
            published.remove(&key);
        }
        Ok(())
    }
}
