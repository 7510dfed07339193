//! The lab's stand-in Kubernetes API server (`spec.source: kubernetes`). No kube-apiserver
//! can be installed here, so the lab serves its desired-state directory the way the API
//! server would to sluice's watchers: list and watch of nodes, namespaces, pods, services,
//! EndpointSlices (those in the directory plus what the endpoint-slice controller would
//! write) and NetworkPolicies, with resource versions, `410 Gone` for a watch older than the
//! kept history, and the `/version` endpoint. It is a test fixture for the real client path
//! (kube-rs over HTTP), not a product component: no auth, no writes, no field selectors.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use sluice_model::{parse_manifests, DesiredState, Object};
use tokio::sync::{mpsc, watch};

/// (path prefix, resource, list kind) of everything served.
const RESOURCES: [(&str, &str, &str); 6] = [
    ("/api/v1", "nodes", "NodeList"),
    ("/api/v1", "namespaces", "NamespaceList"),
    ("/api/v1", "pods", "PodList"),
    ("/api/v1", "services", "ServiceList"),
    (
        "/apis/discovery.k8s.io/v1",
        "endpointslices",
        "EndpointSliceList",
    ),
    (
        "/apis/networking.k8s.io/v1",
        "networkpolicies",
        "NetworkPolicyList",
    ),
];
const RESCAN: Duration = Duration::from_millis(200);
/// Events kept for watches that resume; older resource versions get 410 Gone.
const HISTORY: usize = 10_000;

type Body = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Clone)]
struct Event {
    rv: u64,
    resource: &'static str,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// (resource, namespace/name) -> object with its resourceVersion set.
    objects: BTreeMap<(&'static str, String), Value>,
    history: VecDeque<Event>,
    /// Oldest resource version a watch may resume from.
    oldest: u64,
}

impl Store {
    /// Replaces the objects with `desired`, recording an event per difference.
    fn apply(&mut self, desired: BTreeMap<(&'static str, String), Value>) -> bool {
        let mut events = Vec::new();
        for (key, object) in &desired {
            let kind = match self.objects.get(key) {
                None => "ADDED",
                Some(old) if without_rv(old) != *object => "MODIFIED",
                Some(_) => continue,
            };
            events.push((key.clone(), kind, object.clone()));
        }
        for (key, old) in &self.objects {
            if !desired.contains_key(key) {
                events.push((key.clone(), "DELETED", without_rv(old)));
            }
        }
        let changed = !events.is_empty();
        for (key, kind, mut object) in events {
            self.rv += 1;
            object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            if kind == "DELETED" {
                self.objects.remove(&key);
            } else {
                self.objects.insert(key.clone(), object.clone());
            }
            self.history.push_back(Event {
                rv: self.rv,
                resource: key.0,
                kind,
                object,
            });
        }
        while self.history.len() > HISTORY {
            if let Some(e) = self.history.pop_front() {
                self.oldest = e.rv;
            }
        }
        changed
    }
}

fn without_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    v
}

/// Everything the directory describes, by resource, plus the controller's EndpointSlices.
fn read_dir(dir: &Path) -> BTreeMap<(&'static str, String), Value> {
    let mut objects = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for path in files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match parse_manifests(&path.display().to_string(), &text) {
            Ok(o) => objects.extend(o),
            Err(e) => eprintln!("apiserver: {e}"),
        }
    }
    let (state, _) = DesiredState::build(&objects);
    let slices = sluice_model::slice_controller::controller_slices(&state);
    objects.extend(
        slices
            .into_iter()
            .map(|s| Object::EndpointSlice(Box::new(s))),
    );
    let mut out = BTreeMap::new();
    for object in objects {
        let Some((_, key)) = object.key() else {
            continue;
        };
        let (resource, value) = match object {
            Object::Node(o) => ("nodes", serde_json::to_value(o)),
            Object::Namespace(o) => ("namespaces", serde_json::to_value(o)),
            Object::Pod(o) => ("pods", serde_json::to_value(o)),
            Object::Service(o) => ("services", serde_json::to_value(o)),
            Object::EndpointSlice(o) => ("endpointslices", serde_json::to_value(o)),
            Object::NetworkPolicy(o) => ("networkpolicies", serde_json::to_value(o)),
            Object::Other { .. } => continue,
        };
        let Ok(value) = value else { continue };
        out.insert((resource, key), value);
    }
    out
}

struct Server {
    store: Mutex<Store>,
    changed: watch::Sender<u64>,
}

/// Serves `dir` on `listen` until the process is killed.
pub fn run(dir: &Path, listen: SocketAddr) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(dir.to_path_buf(), listen))
}

async fn serve(dir: PathBuf, listen: SocketAddr) -> std::io::Result<()> {
    // Resource versions continue across restarts (as etcd's revisions do for a real API
    // server), and a restarted server has no history: watchers resuming from before it get
    // 410 Gone and list again.
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1);
    let mut store = Store {
        rv: start,
        oldest: start,
        ..Default::default()
    };
    store.apply(read_dir(&dir));
    let (changed, _) = watch::channel(store.rv);
    let server = Arc::new(Server {
        store: Mutex::new(store),
        changed,
    });
    let scanner = server.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RESCAN).await;
            let desired = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || read_dir(&dir))
                    .await
                    .unwrap_or_default()
            };
            let mut store = scanner.store.lock().unwrap_or_else(|p| p.into_inner());
            if store.apply(desired) {
                let rv = store.rv;
                drop(store);
                scanner.changed.send_replace(rv);
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("apiserver: serving on {listen}");
    loop {
        let (stream, _) = listener.accept().await?;
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(handle(&server, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .unwrap_or_default()
}

fn status_body(code: u16, reason: &str, message: String) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code })
}

fn handle<B>(server: &Arc<Server>, req: Request<B>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if path == "/version" {
        return respond(
            StatusCode::OK,
            json!({ "major": "1", "minor": "33", "gitVersion": "v1.33.0-sluice-lab",
                    "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "",
                    "compiler": "", "platform": "linux/amd64" }),
        );
    }
    let Some((_, resource, list_kind)) = RESOURCES
        .iter()
        .find(|(prefix, resource, _)| path == format!("{prefix}/{resource}"))
    else {
        return respond(
            StatusCode::NOT_FOUND,
            status_body(404, "NotFound", format!("{path} is not served by the lab")),
        );
    };
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        let store = server.store.lock().unwrap_or_else(|p| p.into_inner());
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|((r, _), _)| r == resource)
            .map(|(_, v)| v.clone())
            .collect();
        return respond(
            StatusCode::OK,
            json!({ "kind": list_kind, "apiVersion": "v1",
                    "metadata": { "resourceVersion": store.rv.to_string() }, "items": items }),
        );
    }
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300u64);
    let (tx, rx) = mpsc::unbounded_channel::<Result<Frame<Bytes>, Infallible>>();
    tokio::spawn(stream_events(
        server.clone(),
        resource,
        since,
        Duration::from_secs(timeout),
        tx,
    ));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(
            StreamBody::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
                .boxed_unsync(),
        )
        .unwrap_or_default()
}

/// Sends `resource`'s events after `since` until `timeout` or the client goes away.
async fn stream_events(
    server: Arc<Server>,
    resource: &'static str,
    mut since: u64,
    timeout: Duration,
    tx: mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>,
) {
    let send = |event: Value| {
        tx.send(Ok(Frame::data(Bytes::from(format!("{event}\n")))))
            .is_ok()
    };
    let mut changed = server.changed.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let pending: Result<Vec<Event>, ()> = {
            let store = server.store.lock().unwrap_or_else(|p| p.into_inner());
            if since < store.oldest {
                Err(())
            } else {
                Ok(store
                    .history
                    .iter()
                    .filter(|e| e.rv > since && e.resource == resource)
                    .cloned()
                    .collect())
            }
        };
        let Ok(pending) = pending else {
            send(
                json!({ "type": "ERROR", "object": status_body(410, "Expired",
                format!("too old resource version: {since}")) }),
            );
            return;
        };
        for e in pending {
            since = e.rv;
            if !send(json!({ "type": e.kind, "object": e.object })) {
                return;
            }
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, v: &str) -> Value {
        json!({ "metadata": { "name": name }, "spec": { "v": v } })
    }

    #[test]
    fn changes_become_events_with_increasing_resource_versions() {
        let mut store = Store::default();
        let a = ("nodes", "a".to_string());
        let b = ("nodes", "b".to_string());
        assert!(store.apply([(a.clone(), obj("a", "1")), (b.clone(), obj("b", "1"))].into()));
        assert_eq!(store.rv, 2);
        assert!(!store.apply([(a.clone(), obj("a", "1")), (b.clone(), obj("b", "1"))].into()));
        assert!(store.apply([(a.clone(), obj("a", "2"))].into()));
        let kinds: Vec<(&str, u64)> = store.history.iter().map(|e| (e.kind, e.rv)).collect();
        assert_eq!(
            kinds,
            vec![("ADDED", 1), ("ADDED", 2), ("MODIFIED", 3), ("DELETED", 4)]
        );
        assert_eq!(store.objects[&a]["metadata"]["resourceVersion"], "3");
    }
}
