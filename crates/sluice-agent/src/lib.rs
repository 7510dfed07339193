//! sluice-agent: one per node. Reads desired state from a source, programs the datapath, and
//! serves the agent API that `sluice-cni` and the `sluice` CLI use.

mod api;
mod core;
mod endpoints;
mod identities;
mod kept_policies;
pub mod kvstore;
mod metrics;
mod nodes;
pub mod observe;
mod overlay;
mod policy;
mod policy_requests;
mod services;
pub mod source;
mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use anyhow::{bail, Context};
use sluice_api::config::{AgentConfig, KvstoreKind, SourceKind};
use sluice_datapath::{features, Datapath};
use sluice_netdev::NetHandle;

use crate::core::{Command, Core};

/// Reads and validates the agent's YAML configuration.
pub fn load_config(path: &Path) -> anyhow::Result<AgentConfig> {
    load_config_for(path, None)
}

/// Like `load_config`, with the node name given from outside the file (`--node-name`).
pub fn load_config_for(path: &Path, node_name: Option<&str>) -> anyhow::Result<AgentConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut cfg: AgentConfig =
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if let Some(name) = node_name {
        cfg.node_name = name.to_string();
    }
    if cfg.node_name.is_empty() {
        bail!(
            "{}: nodeName must not be empty (or pass --node-name / SLUICE_NODE_NAME)",
            path.display()
        );
    }
    if !sluice_model::maglev::is_prime(cfg.maglev_table_size) || cfg.maglev_table_size > 1 << 20 {
        bail!(
            "{}: maglevTableSize: {} is not a prime up to 1048576 (the default is 16381)",
            path.display(),
            cfg.maglev_table_size
        );
    }
    for (field, value) in [
        ("maps.lbSlots", cfg.maps.lb_slots),
        ("maps.backends", cfg.maps.backends),
        ("maps.conntrack", cfg.maps.conntrack),
        ("maps.policy", cfg.maps.policy),
    ] {
        if !(16..=1 << 24).contains(&value) {
            bail!(
                "{}: {field}: {value} is outside 16..=16777216",
                path.display()
            );
        }
    }
    let events = cfg.hubble.events_buffer_bytes;
    if !events.is_power_of_two() || !(4096..=1 << 30).contains(&events) {
        bail!(
            "{}: hubble.eventsBufferBytes: {events} is not a power of two in 4096..=1073741824",
            path.display()
        );
    }
    if cfg.hubble.buffer_capacity == 0 || cfg.hubble.buffer_capacity > 1 << 20 {
        bail!(
            "{}: hubble.bufferCapacity: {} is outside 1..=1048576",
            path.display(),
            cfg.hubble.buffer_capacity
        );
    }
    match (cfg.source, &cfg.manifests) {
        (SourceKind::Files, None) => bail!(
            "{}: manifests: a directory is required when source is files",
            path.display()
        ),
        (SourceKind::Kubernetes, Some(dir)) => bail!(
            "{}: manifests: {} is set but source is kubernetes (the API server is the source)",
            path.display(),
            dir.display()
        ),
        _ => {}
    }
    if cfg.kvstore.kind == KvstoreKind::Etcd {
        if cfg.kvstore.endpoints.is_empty() {
            bail!(
                "{}: kvstore.endpoints: at least one etcd URL is required when kvstore.type is etcd",
                path.display()
            );
        }
        for url in &cfg.kvstore.endpoints {
            if !url.starts_with("http://") {
                bail!(
                    "{}: kvstore.endpoints: {url:?} is not an http:// URL (TLS to etcd is not supported yet)",
                    path.display()
                );
            }
        }
        if !(2..=3600).contains(&cfg.kvstore.lease_ttl_seconds) {
            bail!(
                "{}: kvstore.leaseTtlSeconds: {} is outside 2..=3600",
                path.display(),
                cfg.kvstore.lease_ttl_seconds
            );
        }
        if !cfg.kvstore.prefix.starts_with('/') || cfg.kvstore.prefix.ends_with('/') {
            bail!(
                "{}: kvstore.prefix: {:?} must start with / and not end with /",
                path.display(),
                cfg.kvstore.prefix
            );
        }
    }
    if let Some(mtu) = cfg.underlay_mtu {
        if !(1280..=65535).contains(&mtu) {
            bail!(
                "{}: underlayMtu: {mtu} is outside 1280..=65535",
                path.display()
            );
        }
    }
    Ok(cfg)
}

/// Runs the agent until SIGTERM/SIGINT. The datapath stays in place when it exits.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    features::check()?;
    let pin_path = cfg.pin_path();
    let bpffs_root = Path::new("/sys/fs/bpf");
    if pin_path.starts_with(bpffs_root) {
        features::ensure_bpffs(bpffs_root)?;
    }
    if !features::is_bpffs(pin_path.parent().unwrap_or(bpffs_root))
        && !pin_path.starts_with(bpffs_root)
    {
        tracing::warn!(pin = %pin_path.display(), "pin path is not on bpffs");
    }
    let source = source::open(&cfg).await?;
    let (core_tx, core_rx) = mpsc::channel::<Command>();
    type EventSource = Option<(
        aya::maps::RingBuf<aya::maps::MapData>,
        sluice_datapath::EventsLostCounter,
    )>;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<EventSource>>();
    let observer = cfg.hubble.enabled.then(|| {
        Arc::new(observe::Observer::new(
            &cfg.node_name,
            cfg.hubble.buffer_capacity,
        ))
    });
    let directory = observer.as_ref().map(|o| o.directory.clone());
    let agent_metrics = metrics::AgentMetrics::default();
    let core_metrics = agent_metrics.clone();
    let core_cfg = cfg.clone();
    let description = source.describe();
    if cfg.source == SourceKind::Kubernetes && cfg.kvstore.kind == KvstoreKind::None {
        tracing::warn!(
            dir = %cfg.identity_dir().display(),
            "no kvstore: identities are claimed in a local directory; nodes agree on a label set's number (its hash) unless two label sets collide. Use kvstore.type: etcd for cluster-wide identities"
        );
    }
    let runtime = tokio::runtime::Handle::current();
    let kvstore = match cfg.kvstore.kind {
        KvstoreKind::Etcd => {
            let to_core = core_tx.clone();
            Some(kvstore::Kvstore::start(
                &cfg.kvstore,
                &cfg.node_name,
                &runtime,
                move |view| {
                    let _ = to_core.send(Command::Cluster(view));
                },
            ))
        }
        KvstoreKind::None => None,
    };
    // The datapath handles (aya) and netlink handle live on this one thread.
    let core_thread = std::thread::Builder::new()
        .name("core".into())
        .spawn(move || {
            let started = (|| -> anyhow::Result<(Core, EventSource)> {
                let sizes = sluice_datapath::MapSizes {
                    lb_slots: core_cfg.maps.lb_slots,
                    backends: core_cfg.maps.backends,
                    conntrack: core_cfg.maps.conntrack,
                    policy: core_cfg.maps.policy,
                    events: core_cfg.hubble.events_buffer_bytes,
                };
                let mut dp =
                    Datapath::load_with_sizes(&core_cfg.pin_path(), &sizes).with_context(|| {
                        format!("loading the datapath at {}", core_cfg.pin_path().display())
                    })?;
                dp.set_monitor_aggregation(observe::datapath_aggregation(
                    core_cfg.hubble.monitor_aggregation,
                ))?;
                let events = if directory.is_some() {
                    Some((dp.take_events()?, dp.open_events_lost()?))
                } else {
                    None
                };
                let net = NetHandle::current().context("opening netlink")?;
                let (store, loaded) = store::Store::open(&core_cfg.state_dir)?;
                let sock_lb = if core_cfg.socket_lb {
                    let cgroup = match &core_cfg.cgroup_path {
                        Some(p) => p.clone(),
                        None => features::cgroup2_root()?,
                    };
                    let mut s =
                        sluice_datapath::socklb::SockLb::load(&core_cfg.pin_path(), &sizes)?;
                    s.attach(&core_cfg.pin_path(), &cgroup).with_context(|| {
                        format!("attaching socket-LB to cgroup {}", cgroup.display())
                    })?;
                    tracing::info!(cgroup = %cgroup.display(), "socket-LB attached");
                    Some(s)
                } else {
                    let n = sluice_datapath::socklb::SockLb::detach_all(&core_cfg.pin_path())?;
                    if n > 0 {
                        tracing::info!("socket-LB disabled: removed {n} links of a previous run");
                    }
                    None
                };
                let lb = services::LbState::load(&dp, core_cfg.maglev_table_size)
                    .map_err(|e| anyhow::anyhow!("reading service maps: {e}"))?;
                let identities = match core_cfg.kvstore.kind {
                    KvstoreKind::Etcd => identities::IdentityAllocator::with_store(Box::new(
                        kvstore::identities::EtcdIdentities::new(
                            core_cfg.kvstore.endpoints.clone(),
                            core_cfg.kvstore.prefix.clone(),
                            runtime.clone(),
                        ),
                    )),
                    KvstoreKind::None => {
                        identities::IdentityAllocator::open(&core_cfg.identity_dir())
                            .map_err(|e| anyhow::anyhow!(e))?
                    }
                };
                let policy = policy::PolicyState::load(&dp, identities)
                    .map_err(|e| anyhow::anyhow!("reading policy maps: {e}"))?;
                let (kept, kept_problem) = kept_policies::KeptPolicies::load(&core_cfg.state_dir);
                let mut core = Core {
                    cfg: core_cfg,
                    source: description,
                    source_connected: false,
                    last_sync: None,
                    kvstore,
                    cluster: None,
                    dp,
                    net,
                    store,
                    records: BTreeMap::new(),
                    reserved: BTreeMap::new(),
                    last_allocated: None,
                    node: None,
                    remote: BTreeMap::new(),
                    swept: false,
                    desired: Default::default(),
                    desired_built: false,
                    source_problems: Vec::new(),
                    state_problems: Vec::new(),
                    node_problems: Vec::new(),
                    uplink_problem: None,
                    service_problems: Vec::new(),
                    started: Instant::now(),
                    lb,
                    services_synced: false,
                    sock_lb,
                    policy,
                    kept,
                    policy_problems: Vec::new(),
                    flow_directory: directory,
                    metrics: core_metrics,
                    netns_cookies: Default::default(),
                    host_netns_cookie: sluice_netdev::current_netns_cookie().ok(),
                };
                core.state_problems.extend(kept_problem);
                let stale = core
                    .lb
                    .sweep(&mut core.dp)
                    .map_err(|e| anyhow::anyhow!("sweeping service backends: {e}"))?;
                if stale > 0 {
                    tracing::info!(stale, "removed unreferenced service backends");
                }
                for (ip, why) in &loaded.unreadable {
                    core.state_problems.push(format!(
                        "state file for {ip} is unreadable ({why}); address kept reserved"
                    ));
                }
                core.reserved = loaded.unreadable;
                core.recover(loaded.records);
                Ok((core, events))
            })();
            match started {
                Ok((core, events)) => {
                    let _ = ready_tx.send(Ok(events));
                    core.run(core_rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
    let events = ready_rx.recv().context("core thread died")??;
    let mut observer_tasks = Vec::new();
    if let (Some(observer), Some((ring, lost))) = (&observer, events) {
        let tcp = if cfg.hubble.listen_address.is_empty() {
            None
        } else {
            Some(cfg.hubble.listen_address.parse().with_context(|| {
                format!(
                    "hubble.listenAddress: {:?} is not an address:port",
                    cfg.hubble.listen_address
                )
            })?)
        };
        let socket = cfg.hubble_socket();
        observer_tasks = observe::serve(observer.clone(), &socket, tcp).await?;
        tracing::info!(socket = %socket.display(), "serving the Hubble Observer API");
        let reader = observer.clone();
        std::thread::Builder::new()
            .name("flow-events".into())
            .spawn(move || {
                if let Err(e) = observe::read_events(reader, ring, lost) {
                    tracing::error!(error = %e, "flow events: reader stopped");
                }
            })?;
    }

    let (snap_tx, snap_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("source".into())
        .spawn(move || source.run(snap_tx))?;
    let forward = core_tx.clone();
    std::thread::Builder::new()
        .name("source-forward".into())
        .spawn(move || {
            for snapshot in snap_rx {
                if forward.send(Command::Snapshot(snapshot)).is_err() {
                    return;
                }
            }
        })?;

    let listener = api::bind(&cfg.socket)?;
    tracing::info!(socket = %cfg.socket.display(), node = %cfg.node_name, routing = %cfg.routing, "sluice-agent serving");
    let server = tokio::spawn(api::serve(listener, core_tx.clone()));
    let metrics_server = if cfg.metrics_address.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&cfg.metrics_address)
            .await
            .with_context(|| format!("metricsAddress: binding {:?}", cfg.metrics_address))?;
        tracing::info!(address = %cfg.metrics_address, "serving /metrics");
        Some(tokio::spawn(metrics::serve(
            listener,
            core_tx.clone(),
            agent_metrics.clone(),
            observer.as_ref().map(|o| o.metrics.clone()),
        )))
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping; the datapath stays pinned"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping; the datapath stays pinned"),
    }
    server.abort();
    for t in observer_tasks {
        t.abort();
    }
    if observer.is_some() {
        let _ = std::fs::remove_file(cfg.hubble_socket());
    }
    if let Some(m) = metrics_server {
        m.abort();
    }
    let _ = std::fs::remove_file(&cfg.socket);
    // Let a request in progress finish so its on-disk record is consistent.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    if core_tx.send(Command::Shutdown(done_tx)).is_ok() {
        let _ = done_rx.await;
    }
    let _ = core_thread;
    Ok(())
}
