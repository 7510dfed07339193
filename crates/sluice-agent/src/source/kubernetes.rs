//! The Kubernetes source: one kube-rs watcher per kind the agent uses. Each watcher lists,
//! then watches; a `410 Gone` (or any desync) makes it list again, and the relisted objects
//! replace that kind's store at once, so deletions missed meanwhile are seen. While the API
//! server is unreachable the watchers retry with exponential backoff, the agent keeps the last
//! state it programmed and `sluice status` shows the error.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use sluice_api::config::KubernetesConfig;
use sluice_model::{ChangedObjects, Object};
use tokio::sync::Notify;

use super::{Snapshot, Source};

/// (API group, resource) of every kind the agent lists and watches. `deploy/rbac.yaml` grants
/// exactly these (verbs `list`, `watch`); a test holds the two together.
pub const WATCHED: [(&str, &str); 6] = [
    ("", "nodes"),
    ("", "namespaces"),
    ("", "pods"),
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("networking.k8s.io", "networkpolicies"),
];

/// Watch events arrive in bursts (a relist, a rollout); one snapshot per burst.
const SETTLE: Duration = Duration::from_millis(50);
/// How often the API server is asked whether it is back while watches fail.
const PROBE: Duration = Duration::from_secs(2);

pub struct KubernetesSource {
    client: Client,
    server: String,
    runtime: tokio::runtime::Handle,
}

impl KubernetesSource {
    /// Connects lazily: a client is built from the kubeconfig (or the pod's service account),
    /// the first request happens in `run`.
    pub async fn from_config(cfg: &KubernetesConfig) -> anyhow::Result<Self> {
        let config = match &cfg.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    anyhow::anyhow!("kubernetes.kubeconfig: {}: {e}", path.display())
                })?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("kubernetes.kubeconfig: {}: {e}", path.display())
                    })?
            }
            None => kube::Config::infer().await.map_err(|e| {
                anyhow::anyhow!(
                    "kubernetes: no in-cluster service account and no usable kubeconfig ($KUBECONFIG, ~/.kube/config): {e}"
                )
            })?,
        };
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config)
            .map_err(|e| anyhow::anyhow!("kubernetes: building a client for {server}: {e}"))?;
        Ok(Self::with_client(client, server))
    }

    /// Must be called inside a tokio runtime; the watchers run on it.
    pub fn with_client(client: Client, server: String) -> Self {
        Self {
            client,
            server,
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl Source for KubernetesSource {
    fn describe(&self) -> String {
        format!("kubernetes:{}", self.server)
    }

    fn run(self: Box<Self>, tx: mpsc::Sender<Snapshot>) {
        let runtime = self.runtime.clone();
        runtime.block_on(watch_all(self.client, tx));
    }
}

/// What one kind's watcher knows.
#[derive(Default)]
struct KindState {
    objects: BTreeMap<String, Arc<Object>>,
    /// A relist in progress; it replaces `objects` when complete.
    relisting: Option<BTreeMap<String, Arc<Object>>>,
    synced: bool,
    error: Option<String>,
}

#[derive(Default)]
struct Stores {
    kinds: BTreeMap<&'static str, KindState>,
    /// Bumped whenever a snapshot would differ (objects or errors).
    version: u64,
    /// Objects changed by watch events since the last snapshot sent.
    changed: ChangedObjects,
    /// A relist happened since then (its differences are not itemised) or nothing was sent
    /// yet: the next snapshot says "unknown".
    unitemised: bool,
}

struct Shared {
    stores: Mutex<Stores>,
    changed: Notify,
}

/// Runs every watcher and sends a snapshot after each burst of changes, once every kind has
/// been listed (an agent must not act on a partial picture: a missing Pod list would look
/// like every pod gone). Returns when `tx` closes.
pub async fn watch_all(client: Client, tx: mpsc::Sender<Snapshot>) {
    let shared = Arc::new(Shared {
        stores: Mutex::new(Stores {
            unitemised: true,
            ..Default::default()
        }),
        changed: Notify::new(),
    });
    let mut tasks = vec![
        spawn_watcher::<Node>(&client, &shared, "nodes", |o| Object::Node(Box::new(o))),
        spawn_watcher::<Namespace>(&client, &shared, "namespaces", |o| {
            Object::Namespace(Box::new(o))
        }),
        spawn_watcher::<Pod>(&client, &shared, "pods", |o| Object::Pod(Box::new(o))),
        spawn_watcher::<Service>(&client, &shared, "services", |o| {
            Object::Service(Box::new(o))
        }),
        spawn_watcher::<EndpointSlice>(&client, &shared, "endpointslices", |o| {
            Object::EndpointSlice(Box::new(o))
        }),
        spawn_watcher::<NetworkPolicy>(&client, &shared, "networkpolicies", |o| {
            Object::NetworkPolicy(Box::new(o))
        }),
    ];
    tasks.push(tokio::spawn(probe_while_failing(
        client.clone(),
        shared.clone(),
    )));
    let mut sent = 0u64;
    loop {
        shared.changed.notified().await;
        tokio::time::sleep(SETTLE).await;
        let snapshot = {
            let mut stores = shared.stores.lock().unwrap_or_else(|p| p.into_inner());
            if stores.version == sent {
                continue;
            }
            sent = stores.version;
            snapshot_of(&mut stores)
        };
        let Some(snapshot) = snapshot else { continue };
        if tx.send(snapshot).is_err() {
            break;
        }
    }
    for task in tasks.drain(..) {
        task.abort();
    }
}

/// A watcher that resumes after an outage says nothing until the next change, so its error
/// would linger; while any watcher reports one, ask the server for its version and clear
/// the errors once it answers (a watcher that still fails sets its error again).
async fn probe_while_failing(client: Client, shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(PROBE).await;
        let failing = {
            let stores = shared.stores.lock().unwrap_or_else(|p| p.into_inner());
            stores.kinds.values().any(|k| k.error.is_some())
        };
        if !failing || client.apiserver_version().await.is_err() {
            continue;
        }
        let mut stores = shared.stores.lock().unwrap_or_else(|p| p.into_inner());
        for k in stores.kinds.values_mut() {
            k.error = None;
        }
        stores.version += 1;
        drop(stores);
        tracing::info!("kubernetes: the API server answers again");
        shared.changed.notify_one();
    }
}

fn snapshot_of(stores: &mut Stores) -> Option<Snapshot> {
    let all_listed = stores.kinds.len() == WATCHED.len() && stores.kinds.values().all(|k| k.synced);
    if !all_listed {
        return None;
    }
    let changed = std::mem::take(&mut stores.changed);
    let changed = (!std::mem::take(&mut stores.unitemised)).then_some(changed);
    let problems: Vec<String> = stores
        .kinds
        .values()
        .filter_map(|k| k.error.clone())
        .collect();
    Some(Snapshot {
        connected: problems.is_empty(),
        objects: stores
            .kinds
            .values()
            .flat_map(|k| k.objects.values().cloned())
            .collect(),
        problems,
        changed,
    })
}

fn spawn_watcher<K>(
    client: &Client,
    shared: &Arc<Shared>,
    kind: &'static str,
    to_object: fn(K) -> Object,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let shared = shared.clone();
    shared
        .stores
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .kinds
        .insert(kind, KindState::default());
    tokio::spawn(follow(stream, shared, kind, to_object))
}

/// Applies one kind's watch events to its store.
async fn follow<K>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    shared: Arc<Shared>,
    kind: &'static str,
    to_object: fn(K) -> Object,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        let mut stores = shared.stores.lock().unwrap_or_else(|p| p.into_inner());
        let Stores {
            kinds,
            version,
            changed: keys,
            unitemised,
        } = &mut *stores;
        let state = kinds.entry(kind).or_default();
        let mut changed = false;
        match item {
            Ok(event) => {
                if state.error.take().is_some() {
                    tracing::info!(kind, "kubernetes: watching again");
                    changed = true;
                }
                match event {
                    Event::Init => state.relisting = Some(BTreeMap::new()),
                    Event::InitApply(o) => {
                        if let Some((key, object)) = keyed(to_object(o)) {
                            state
                                .relisting
                                .get_or_insert_with(BTreeMap::new)
                                .insert(key, Arc::new(object));
                        }
                    }
                    Event::InitDone => {
                        if let Some(listed) = state.relisting.take() {
                            state.objects = listed;
                        }
                        *unitemised = true;
                        state.synced = true;
                        changed = true;
                    }
                    Event::Apply(o) => {
                        if let Some((key, object)) = keyed(to_object(o)) {
                            keys.note(&object);
                            state.objects.insert(key, Arc::new(object));
                            changed = true;
                        }
                    }
                    Event::Delete(o) => {
                        let gone =
                            keyed(to_object(o)).and_then(|(key, _)| state.objects.remove(&key));
                        if let Some(gone) = gone {
                            keys.note(&gone);
                            changed = true;
                        }
                    }
                }
            }
            Err(e) => {
                let message = format!("kubernetes: watching {kind}: {e} (retrying with backoff)");
                if state.error.as_deref() != Some(&message) {
                    tracing::warn!(kind, error = %e, "kubernetes: watch failed; keeping the last known state");
                    state.error = Some(message);
                    changed = true;
                }
            }
        }
        if changed {
            *version += 1;
            drop(stores);
            shared.changed.notify_one();
        }
    }
}

/// The object with its desired-state key ("namespace/name" or name); None without a name.
fn keyed(object: Object) -> Option<(String, Object)> {
    let (_, key) = object.key()?;
    Some((key, object))
}

#[cfg(test)]
mod tests;
