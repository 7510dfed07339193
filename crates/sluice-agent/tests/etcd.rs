//! The kvstore against a real etcd on loopback (Debian's etcd-server; `make test` installs
//! it): concurrent identity claims, publication and watch between two agents, lease expiry
//! of a dead node, corrupt keys, and an etcd restart.

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_agent::kvstore::identities::EtcdIdentities;
use sluice_agent::kvstore::{ClusterView, EndpointRecord, Kvstore, NodeRecord, Publication};
use sluice_api::config::{KvstoreConfig, KvstoreKind};
use sluice_model::identity::{allocate, IdentityLabels};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member on loopback with its data in a temporary directory; killed on drop.
struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    fn start() -> Self {
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.spawn();
        etcd
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("etcd.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}): install it with `make deps` (etcd-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "etcd did not listen: {}",
                std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn config(&self, prefix: &str, ttl: u32) -> KvstoreConfig {
        KvstoreConfig {
            kind: KvstoreKind::Etcd,
            endpoints: vec![self.url()],
            prefix: prefix.into(),
            lease_ttl_seconds: ttl,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn labels(app: &str) -> IdentityLabels {
    IdentityLabels {
        namespace: "x".into(),
        labels: [("app".to_string(), app.to_string())].into(),
    }
}

fn publication(node: &str, node_ip: &str, pods: &[(&str, u32)]) -> Publication {
    let node_ip: Ipv4Addr = node_ip.parse().unwrap();
    Publication {
        node: Some(NodeRecord {
            name: node.into(),
            address: node_ip,
            pod_cidr: "10.1.0.0/24".parse().unwrap(),
        }),
        endpoints: pods
            .iter()
            .map(|(ip, identity)| EndpointRecord {
                ip: ip.parse().unwrap(),
                identity: *identity,
                node: node.into(),
                node_ip,
                namespace: "x".into(),
                pod: format!("pod-{ip}"),
            })
            .collect(),
    }
}

/// An agent's session and the views it delivers.
struct Agent {
    kv: Kvstore,
    views: mpsc::Receiver<ClusterView>,
    name: String,
}

fn agent(rt: &tokio::runtime::Runtime, cfg: &KvstoreConfig, name: &str) -> Agent {
    let (tx, views) = mpsc::channel();
    let kv = Kvstore::start(cfg, name, rt.handle(), move |v| {
        let _ = tx.send(v);
    });
    Agent {
        kv,
        views,
        name: name.into(),
    }
}

impl Agent {
    /// Waits for a view in which the other nodes' endpoints (address -> identity) are `want`.
    fn sees(&self, want: &[(&str, u32)], within: Duration) -> Duration {
        let started = Instant::now();
        let want: Vec<(Ipv4Addr, u32)> = want
            .iter()
            .map(|(ip, id)| (ip.parse().unwrap(), *id))
            .collect();
        let mut last = Vec::new();
        while started.elapsed() < within {
            if let Ok(view) = self.views.recv_timeout(Duration::from_millis(100)) {
                last = view
                    .remote_endpoints(&self.name)
                    .iter()
                    .map(|(ip, r)| (*ip, r.identity))
                    .collect();
                if last == want {
                    return started.elapsed();
                }
            }
        }
        panic!("{} wanted {want:?}, last saw {last:?}", self.name);
    }
}

fn prefix(test: &str) -> String {
    format!("/sluice-test-{}-{test}", std::process::id())
}

#[test]
fn two_agents_claiming_one_label_set_at_once_get_one_identity() {
    let etcd = Etcd::start();
    let rt = runtime();
    let cfg = etcd.config(&prefix("ids"), 5);
    let ids: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let handle = rt.handle().clone();
                let cfg = cfg.clone();
                s.spawn(move || {
                    let mut store =
                        EtcdIdentities::new(cfg.endpoints.clone(), cfg.prefix.clone(), handle);
                    allocate(&mut store, &labels("same")).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let mut store = EtcdIdentities::new(
        cfg.endpoints.clone(),
        cfg.prefix.clone(),
        rt.handle().clone(),
    );
    let other = allocate(&mut store, &labels("other")).unwrap();
    assert_ne!(other, ids[0], "other labels get another number");
    assert_eq!(allocate(&mut store, &labels("same")).unwrap(), ids[0]);
}

#[test]
fn an_identity_number_held_by_garbage_is_skipped() {
    let etcd = Etcd::start();
    let rt = runtime();
    let cfg = etcd.config(&prefix("garbage"), 5);
    let want = labels("a");
    let first = sluice_model::identity::candidate_identities(&want.key())
        .next()
        .unwrap();
    rt.block_on(async {
        let mut c = sluice_agent::kvstore::connect(&cfg.endpoints)
            .await
            .unwrap();
        c.put(
            format!("{}/identities/{first}", cfg.prefix),
            vec![0xffu8, 0x00],
            None,
        )
        .await
        .unwrap();
    });
    let mut store = EtcdIdentities::new(
        cfg.endpoints.clone(),
        cfg.prefix.clone(),
        rt.handle().clone(),
    );
    let id = allocate(&mut store, &want).unwrap();
    assert_ne!(id, first);
}

#[test]
fn endpoints_published_by_one_node_reach_the_other_and_expire_with_its_lease() {
    let etcd = Etcd::start();
    let rt = runtime();
    let cfg = etcd.config(&prefix("lease"), 2);
    let b = agent(&rt, &cfg, "b");
    // a runs on its own runtime so that it can die without revoking its lease.
    let rt_a = runtime();
    let a = agent(&rt_a, &cfg, "a");
    a.kv.publish(publication(
        "a",
        "192.168.0.1",
        &[("10.1.0.5", 300), ("10.1.0.6", 301)],
    ));
    b.sees(
        &[("10.1.0.5", 300), ("10.1.0.6", 301)],
        Duration::from_secs(10),
    );

    // A change is incremental: one endpoint goes, one identity changes.
    a.kv.publish(publication("a", "192.168.0.1", &[("10.1.0.5", 302)]));
    b.sees(&[("10.1.0.5", 302)], Duration::from_secs(10));
    until("node record + one endpoint published", 5, || {
        let s = a.kv.status();
        (s.published == 2).then_some(()).ok_or(s)
    });
    assert!(a.kv.status().connected);

    // Node a dies: nobody renews its lease, etcd deletes its keys.
    drop(a);
    rt_a.shutdown_background();
    let took = b.sees(&[], Duration::from_secs(15));
    println!("a dead node's endpoints expired after {took:?} (lease TTL 2 s)");
    assert!(b.kv.status().remote_nodes == 0);
}

#[test]
fn corrupt_keys_are_ignored_and_do_not_disturb_other_nodes() {
    let etcd = Etcd::start();
    let rt = runtime();
    let cfg = etcd.config(&prefix("corrupt"), 5);
    let a = agent(&rt, &cfg, "a");
    let b = agent(&rt, &cfg, "b");
    a.kv.publish(publication("a", "192.168.0.1", &[("10.1.0.5", 300)]));
    b.sees(&[("10.1.0.5", 300)], Duration::from_secs(10));
    rt.block_on(async {
        let mut c = sluice_agent::kvstore::connect(&cfg.endpoints)
            .await
            .unwrap();
        let p = &cfg.prefix;
        // Not JSON; a record claiming to be node a's written under node c; a foreign key.
        c.put(format!("{p}/endpoints/c/10.3.0.1"), "{oops", None)
            .await
            .unwrap();
        let lie = serde_json::json!({"ip": "10.1.0.5", "identity": 999, "node": "a",
            "nodeIP": "192.168.0.9", "namespace": "x", "pod": "evil"});
        c.put(format!("{p}/endpoints/c/10.1.0.5"), lie.to_string(), None)
            .await
            .unwrap();
        c.put(format!("{p}/unrelated"), "x", None).await.unwrap();
        // Something b can see change after the garbage, to know it was processed.
        a.kv.publish(publication(
            "a",
            "192.168.0.1",
            &[("10.1.0.5", 300), ("10.1.0.7", 303)],
        ));
    });
    b.sees(
        &[("10.1.0.5", 300), ("10.1.0.7", 303)],
        Duration::from_secs(10),
    );
    let status = b.kv.status();
    assert_eq!(status.ignored, 3, "{status:?}");
    assert!(status.connected);
}

#[test]
fn agents_survive_an_etcd_restart_and_publish_again() {
    let mut etcd = Etcd::start();
    let rt = runtime();
    let cfg = etcd.config(&prefix("restart"), 3);
    let a = agent(&rt, &cfg, "a");
    let b = agent(&rt, &cfg, "b");
    a.kv.publish(publication("a", "192.168.0.1", &[("10.1.0.5", 300)]));
    b.sees(&[("10.1.0.5", 300)], Duration::from_secs(10));

    etcd.kill();
    let noticed = |s: &sluice_api::KvstoreStatus| !s.connected && s.last_error.is_some();
    until("both notice the outage", 15, || {
        let (sa, sb) = (a.kv.status(), b.kv.status());
        (noticed(&sa) && noticed(&sb)).then_some(()).ok_or(sa)
    });
    // Changes made while etcd is away are published once it is back.
    a.kv.publish(publication(
        "a",
        "192.168.0.1",
        &[("10.1.0.5", 300), ("10.1.0.8", 304)],
    ));
    std::thread::sleep(Duration::from_secs(1));
    etcd.spawn();
    b.sees(
        &[("10.1.0.5", 300), ("10.1.0.8", 304)],
        Duration::from_secs(30),
    );
    until("both reconnected", 15, || {
        let (sa, sb) = (a.kv.status(), b.kv.status());
        (sa.connected && sb.connected).then_some(()).ok_or(sa)
    });
}

/// Polls `ok` until it succeeds; after `seconds`, panics with the status it last saw.
fn until(what: &str, seconds: u64, mut ok: impl FnMut() -> Result<(), sluice_api::KvstoreStatus>) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        match ok() {
            Ok(()) => return,
            Err(s) if Instant::now() > deadline => panic!("{what}: last status {s:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
