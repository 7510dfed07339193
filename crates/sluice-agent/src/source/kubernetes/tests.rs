//! The watchers driven by a fake API server speaking the API server's list and watch JSON:
//! initial lists, watch events, bookmarks, `410 Gone` (relist), and a server that stops
//! answering (errors, backoff, recovery), checked on the snapshots the core would receive.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{json, Value};
use sluice_model::{DesiredState, Object};
use tokio::sync::mpsc as tmpsc;

use super::*;

type WatchSender = tmpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;
type FakeBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// What the fake API server holds: per resource, the items a list returns and the open
/// watch streams; plus a switch that makes every request fail like a refused connection.
#[derive(Default)]
struct FakeState {
    items: BTreeMap<String, Vec<Value>>,
    watches: BTreeMap<String, Vec<WatchSender>>,
    lists: BTreeMap<String, usize>,
    /// Resources whose next watch is answered with 410 Gone (history compacted).
    expired: std::collections::BTreeSet<String>,
    down: bool,
    resource_version: u64,
}

#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<FakeState>>);

impl FakeApi {
    fn client(&self) -> Client {
        let state = self.0.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let state = state.clone();
            async move { answer(&state, req) }
        });
        Client::new(service, "default")
    }

    fn set(&self, resource: &str, items: Vec<Value>) {
        let mut s = self.0.lock().unwrap();
        s.items.insert(resource.into(), items);
    }

    /// Sends one watch event to every open watch of `resource`.
    fn event(&self, resource: &str, event: Value) {
        let mut s = self.0.lock().unwrap();
        let line = Bytes::from(format!("{event}\n"));
        for w in s.watches.entry(resource.into()).or_default().iter() {
            let _ = w.send(Ok(Frame::data(line.clone())));
        }
    }

    fn lists(&self, resource: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .lists
            .get(resource)
            .copied()
            .unwrap_or(0)
    }

    fn watching(&self, resource: &str) -> bool {
        let s = self.0.lock().unwrap();
        s.watches
            .get(resource)
            .is_some_and(|w| w.iter().any(|w| !w.is_closed()))
    }

    /// Down: every request fails and open watches end (as when the API server restarts).
    /// Back up: the history of the outage is compacted, so every resumed watch gets 410 Gone.
    fn set_down(&self, down: bool) {
        let mut s = self.0.lock().unwrap();
        s.down = down;
        if down {
            s.watches.clear();
        } else {
            s.expired = WATCHED.iter().map(|(_, r)| r.to_string()).collect();
        }
    }
}

fn answer<B>(
    state: &Mutex<FakeState>,
    req: Request<B>,
) -> Result<Response<FakeBody>, std::io::Error> {
    let mut s = state.lock().unwrap();
    if s.down {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
    }
    let resource = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let query = req.uri().query().unwrap_or_default();
    s.resource_version += 1;
    let rv = s.resource_version.to_string();
    if req.uri().path() == "/version" {
        let version = json!({ "major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64" });
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .body(BodyExt::boxed_unsync(Full::new(Bytes::from(
                version.to_string(),
            ))))
            .unwrap());
    }
    if query.split('&').any(|p| p == "watch=true") {
        let (tx, rx) = tmpsc::unbounded_channel();
        if s.expired.remove(&resource) {
            let gone = json!({ "type": "ERROR", "object": { "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410 } });
            let _ = tx.send(Ok(Frame::data(Bytes::from(format!("{gone}\n")))));
        }
        s.watches.entry(resource).or_default().push(tx);
        let body = StreamBody::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed_unsync(body))
            .unwrap());
    }
    *s.lists.entry(resource.clone()).or_default() += 1;
    let items = s.items.get(&resource).cloned().unwrap_or_default();
    let list = json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": { "resourceVersion": rv },
        "items": items,
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed_unsync(Full::new(Bytes::from(
            list.to_string(),
        ))))
        .unwrap())
}

fn node(name: &str, cidr: &str, address: &str) -> Value {
    json!({
        "metadata": { "name": name, "resourceVersion": "1" },
        "spec": { "podCIDR": cidr },
        "status": { "addresses": [{ "type": "InternalIP", "address": address }] },
    })
}

fn pod(name: &str, ip: &str, app: &str) -> Value {
    json!({
        "metadata": { "name": name, "namespace": "x", "labels": { "app": app }, "resourceVersion": "1" },
        "spec": { "nodeName": "n1", "containers": [{ "name": "c", "ports": [{ "containerPort": 80, "name": "http" }] }] },
        "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }] },
    })
}

fn service(name: &str, ip: &str) -> Value {
    json!({
        "metadata": { "name": name, "namespace": "x", "resourceVersion": "1" },
        "spec": { "clusterIP": ip, "selector": { "app": name }, "ports": [{ "port": 80, "targetPort": "http", "protocol": "TCP" }] },
    })
}

fn slice(name: &str, service: &str, ips: &[&str]) -> Value {
    json!({
        "metadata": { "name": name, "namespace": "x", "resourceVersion": "1",
                      "labels": { "kubernetes.io/service-name": service } },
        "addressType": "IPv4",
        "ports": [{ "name": "", "port": 80, "protocol": "TCP" }],
        "endpoints": ips.iter().map(|ip| json!({ "addresses": [ip], "conditions": { "ready": true } })).collect::<Vec<_>>(),
    })
}

fn watch_event(kind: &str, object: Value) -> Value {
    json!({ "type": kind, "object": object })
}

/// A cluster with one node, two pods, a Service with its EndpointSlice, a namespace and a
/// policy.
fn cluster() -> FakeApi {
    let api = FakeApi::default();
    api.set("nodes", vec![node("n1", "10.1.0.0/24", "192.168.0.1")]);
    api.set(
        "namespaces",
        vec![json!({ "metadata": { "name": "x", "labels": { "team": "a" } } })],
    );
    api.set(
        "pods",
        vec![pod("a", "10.1.0.5", "web"), pod("b", "10.1.0.6", "db")],
    );
    api.set("services", vec![service("web", "10.96.0.10")]);
    api.set("endpointslices", vec![slice("web-1", "web", &["10.1.0.5"])]);
    api.set(
        "networkpolicies",
        vec![json!({
            "metadata": { "name": "deny", "namespace": "x" },
            "spec": { "podSelector": {}, "policyTypes": ["Ingress"] },
        })],
    );
    api
}

struct Running {
    rx: mpsc::Receiver<Snapshot>,
    _task: tokio::task::JoinHandle<()>,
}

fn start(api: &FakeApi) -> Running {
    let (tx, rx) = mpsc::channel();
    let client = api.client();
    let task = tokio::spawn(watch_all(client, tx));
    Running { rx, _task: task }
}

impl Running {
    /// Waits (without blocking the runtime) for a snapshot that satisfies `want`.
    async fn until(&self, what: &str, want: impl Fn(&Snapshot, &DesiredState) -> bool) -> Snapshot {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            while let Ok(s) = self.rx.try_recv() {
                let (state, _) = DesiredState::build(&s.objects);
                if want(&s, &state) {
                    return s;
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn wait_watching(api: &FakeApi, resources: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !resources.iter().all(|r| api.watching(r)) {
        assert!(Instant::now() < deadline, "watches never opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn kinds(s: &Snapshot) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for o in &s.objects {
        let k = match &**o {
            Object::Node(_) => "Node",
            Object::Namespace(_) => "Namespace",
            Object::Pod(_) => "Pod",
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::NetworkPolicy(_) => "NetworkPolicy",
            Object::Other { .. } => "Other",
        };
        *out.entry(k).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn the_initial_lists_become_one_snapshot_of_every_kind() {
    let api = cluster();
    let run = start(&api);
    let first = run.until("the first snapshot", |_, _| true).await;
    assert_eq!(
        kinds(&first),
        BTreeMap::from([
            ("Node", 1),
            ("Namespace", 1),
            ("Pod", 2),
            ("Service", 1),
            ("EndpointSlice", 1),
            ("NetworkPolicy", 1),
        ]),
        "the first snapshot waits for every list"
    );
    assert!(first.connected && first.problems.is_empty());
    assert_eq!(first.changed, None, "the first snapshot cannot itemise");
    let (state, problems) = DesiredState::build(&first.objects);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(state.nodes["n1"].pod_cidr.to_string(), "10.1.0.0/24");
    assert_eq!(state.pods["x/a"].ip, Some("10.1.0.5".parse().unwrap()));
    assert_eq!(state.namespaces["x"]["team"], "a");
    assert!(state.services.contains_key("x/web"));
    assert_eq!(state.endpoint_slices.len(), 1);
    assert!(state.policies.contains_key("x/deny"));
}

#[tokio::test]
async fn watch_events_add_change_and_remove_objects_and_bookmarks_change_nothing() {
    let api = cluster();
    let run = start(&api);
    run.until("the first snapshot", |_, _| true).await;
    wait_watching(&api, &["pods", "services", "endpointslices"]).await;

    api.event("pods", watch_event("ADDED", pod("c", "10.1.0.7", "web")));
    let added = run
        .until("pod c added", |_, s| s.pods.contains_key("x/c"))
        .await;
    assert_eq!(
        added.changed.map(|c| c.0.into_iter().collect::<Vec<_>>()),
        Some(vec![(sluice_model::ObjectKind::Pod, "x/c".to_string())]),
        "a watch event itemises its object"
    );

    let mut moved = pod("a", "10.1.0.5", "web");
    moved["metadata"]["labels"]["app"] = json!("api");
    api.event("pods", watch_event("MODIFIED", moved));
    run.until("pod a relabelled", |_, s| {
        s.pods["x/a"].labels.get("app").map(String::as_str) == Some("api")
    })
    .await;

    api.event(
        "endpointslices",
        watch_event("MODIFIED", slice("web-1", "web", &["10.1.0.5", "10.1.0.7"])),
    );
    run.until("slice grew", |_, s| {
        s.endpoint_slices.values().any(|e| e.endpoints.len() == 2)
    })
    .await;

    api.event(
        "pods",
        watch_event(
            "BOOKMARK",
            json!({ "kind": "Pod", "apiVersion": "v1", "metadata": { "resourceVersion": "99" } }),
        ),
    );
    api.event(
        "services",
        watch_event("DELETED", service("web", "10.96.0.10")),
    );
    let after = run
        .until("service deleted", |_, s| s.services.is_empty())
        .await;
    let (state, _) = DesiredState::build(&after.objects);
    assert_eq!(
        state.pods.len(),
        3,
        "a bookmark neither adds nor removes pods"
    );
}

#[tokio::test]
async fn gone_makes_the_watcher_relist_and_the_list_replaces_the_store() {
    let api = cluster();
    let run = start(&api);
    run.until("the first snapshot", |_, _| true).await;
    wait_watching(&api, &["pods"]).await;
    let lists_before = api.lists("pods");

    // While the watch was away pod b was deleted and d created; the server has compacted the
    // history, so the watch ends with 410 and only a new list tells the truth.
    api.set(
        "pods",
        vec![pod("a", "10.1.0.5", "web"), pod("d", "10.1.0.9", "web")],
    );
    api.event(
        "pods",
        watch_event(
            "ERROR",
            json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "too old resource version: 1 (5)", "reason": "Expired", "code": 410 }),
        ),
    );
    let after = run
        .until("the relisted pods", |_, s| {
            s.pods.contains_key("x/d") && !s.pods.contains_key("x/b")
        })
        .await;
    assert!(
        api.lists("pods") > lists_before,
        "410 Gone caused a new list"
    );
    assert_eq!(
        after.changed, None,
        "a relist's differences are not itemised"
    );
    assert_eq!(kinds(&after)["Service"], 1, "other kinds are untouched");
}

#[tokio::test]
async fn an_unreachable_api_server_keeps_the_last_state_and_recovers() {
    let api = cluster();
    let run = start(&api);
    let first = run.until("the first snapshot", |_, _| true).await;
    wait_watching(&api, &["pods"]).await;

    api.set_down(true);
    let down = run.until("the outage reported", |s, _| !s.connected).await;
    assert!(
        down.problems
            .iter()
            .any(|p| p.contains("retrying with backoff")),
        "{:?}",
        down.problems
    );
    assert_eq!(down.objects, first.objects, "the last known state is kept");

    // Changes made while the agent could not see them arrive with the next list.
    api.set("pods", vec![pod("a", "10.1.0.5", "web")]);
    api.set_down(false);
    let back = run
        .until("recovered", |s, st| {
            s.connected && !st.pods.contains_key("x/b")
        })
        .await;
    assert!(back.problems.is_empty(), "{:?}", back.problems);
}

#[tokio::test]
async fn nothing_is_sent_before_every_kind_was_listed() {
    let api = cluster();
    api.set_down(true);
    let run = start(&api);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        run.rx.try_recv().is_err(),
        "no snapshot while nothing could be listed (an empty one would remove everything)"
    );
    api.set_down(false);
    let first = run.until("the first snapshot", |_, _| true).await;
    assert_eq!(kinds(&first)["Pod"], 2);
}

#[tokio::test]
async fn objects_sluice_cannot_use_are_reported_by_name_and_skipped() {
    let api = cluster();
    api.set(
        "nodes",
        vec![
            node("n1", "10.1.0.0/24", "192.168.0.1"),
            node("bad", "10.1.0.0/33", "192.168.0.2"),
        ],
    );
    let run = start(&api);
    let first = run.until("the first snapshot", |_, _| true).await;
    let (state, problems) = DesiredState::build(&first.objects);
    assert!(state.nodes.contains_key("n1"));
    assert!(!state.nodes.contains_key("bad"));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("bad") && p.contains("10.1.0.0/33")),
        "{problems:?}"
    );
}

/// Serves the fake API over real HTTP on loopback; returns its URL.
async fn serve_http(api: &FakeApi) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = api.0.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { answer(&state, req) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeconfig_names_the_server_and_the_source_reads_it_over_http() {
    let api = cluster();
    let url = serve_http(&api).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{url}\"}}}}]\nusers: [{{name: u, user: {{token: t0ken}}}}]\ncontexts: [{{name: c, context: {{cluster: fake, user: u}}}}]\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    let cfg = KubernetesConfig {
        kubeconfig: Some(kubeconfig),
    };
    let source = Box::new(KubernetesSource::from_config(&cfg).await.unwrap());
    assert!(
        source.describe().starts_with(&format!("kubernetes:{url}")),
        "{}",
        source.describe()
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || source.run(tx));
    let first = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("a snapshot over HTTP");
    assert_eq!(kinds(&first)["Pod"], 2);
    assert!(first.connected);
}

#[tokio::test]
async fn a_bad_kubeconfig_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, "clusters: [oops\n").unwrap();
    let cfg = KubernetesConfig {
        kubeconfig: Some(path),
    };
    let err = KubernetesSource::from_config(&cfg)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().starts_with("kubernetes.kubeconfig:"),
        "{err}"
    );
}
