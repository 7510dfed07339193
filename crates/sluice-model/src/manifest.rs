//! Parsing Kubernetes YAML manifests (multi-document) into typed objects.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

/// The kinds sluice reads; everything else is kept by kind name and ignored.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Node(Box<Node>),
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<k8s_openapi::api::discovery::v1::EndpointSlice>),
    NetworkPolicy(Box<k8s_openapi::api::networking::v1::NetworkPolicy>),
    Other { api_version: String, kind: String },
}

impl Object {
    /// The kind and metadata of a kind sluice reads (None for the others). Cheap: no key is
    /// formatted.
    pub fn kind_and_meta(&self) -> Option<(ObjectKind, &ObjectMeta)> {
        Some(match self {
            Object::Node(o) => (ObjectKind::Node, &o.metadata),
            Object::Namespace(o) => (ObjectKind::Namespace, &o.metadata),
            Object::Pod(o) => (ObjectKind::Pod, &o.metadata),
            Object::Service(o) => (ObjectKind::Service, &o.metadata),
            Object::EndpointSlice(o) => (ObjectKind::EndpointSlice, &o.metadata),
            Object::NetworkPolicy(o) => (ObjectKind::NetworkPolicy, &o.metadata),
            Object::Other { .. } => return None,
        })
    }

    /// Kind and "namespace/name" (namespaced kinds; namespace defaults to `default`) or name,
    /// as the desired state keys it; None for kinds sluice ignores or objects without a name.
    pub fn key(&self) -> Option<(ObjectKind, String)> {
        let (kind, meta) = self.kind_and_meta()?;
        let name = meta.name.as_deref()?;
        let namespaced = !matches!(kind, ObjectKind::Node | ObjectKind::Namespace);
        Some((
            kind,
            if namespaced {
                format!("{}/{name}", meta.namespace.as_deref().unwrap_or("default"))
            } else {
                name.to_string()
            },
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Node,
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 6] = [
        ObjectKind::Node,
        ObjectKind::Namespace,
        ObjectKind::Pod,
        ObjectKind::Service,
        ObjectKind::EndpointSlice,
        ObjectKind::NetworkPolicy,
    ];
}

/// The objects that may differ between two snapshots of a source (a superset is fine; a
/// missing key is not). Lets a reconcile look at what changed instead of comparing all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangedObjects(pub std::collections::BTreeSet<(ObjectKind, String)>);

impl ChangedObjects {
    pub fn note(&mut self, object: &Object) {
        if let Some(key) = object.key() {
            self.0.insert(key);
        }
    }

    pub fn keys(&self, kind: ObjectKind) -> impl Iterator<Item = &str> + '_ {
        self.0
            .iter()
            .filter(move |(k, _)| *k == kind)
            .map(|(_, key)| key.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    #[error("{origin}: not valid YAML: {message}")]
    Yaml { origin: String, message: String },
    #[error("{origin}: document {index}: {message}")]
    Document {
        origin: String,
        index: usize,
        message: String,
    },
}

/// The parser's default budget (1024 documents per file) guards against document storms in
/// config files; a manifest file may legitimately hold tens of thousands of objects. Alias
/// and depth limits stay at their defaults.
fn large_files() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = 1 << 20;
    budget.max_nodes = 64 << 20;
    budget.max_events = 256 << 20;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Parses every document of `text`; `origin` (a file name) prefixes error messages.
/// Empty documents are skipped.
pub fn parse_manifests(origin: &str, text: &str) -> Result<Vec<Object>, ManifestError> {
    let docs: Vec<Option<Value>> = serde_saphyr::from_multiple_with_options(text, large_files())
        .map_err(|e| ManifestError::Yaml {
            origin: origin.into(),
            message: e.to_string(),
        })?;
    let mut objects = Vec::new();
    for (index, doc) in docs.into_iter().enumerate() {
        let Some(doc) = doc else { continue };
        if doc.is_null() {
            continue;
        }
        let err = |message: String| ManifestError::Document {
            origin: origin.into(),
            index,
            message,
        };
        let field = |name: &str| doc.get(name).and_then(Value::as_str).map(str::to_string);
        let api_version = field("apiVersion").ok_or_else(|| err("apiVersion is missing".into()))?;
        let kind = field("kind").ok_or_else(|| err("kind is missing".into()))?;
        let typed = |what: &str, e: serde_json::Error| err(format!("{what}: {e}"));
        let object = match (api_version.as_str(), kind.as_str()) {
            ("v1", "Node") => {
                Object::Node(serde_json::from_value(doc).map_err(|e| typed("Node", e))?)
            }
            ("v1", "Namespace") => {
                Object::Namespace(serde_json::from_value(doc).map_err(|e| typed("Namespace", e))?)
            }
            ("v1", "Pod") => Object::Pod(serde_json::from_value(doc).map_err(|e| typed("Pod", e))?),
            ("discovery.k8s.io/v1", "EndpointSlice") => Object::EndpointSlice(
                serde_json::from_value(doc).map_err(|e| typed("EndpointSlice", e))?,
            ),
            ("networking.k8s.io/v1", "NetworkPolicy") => Object::NetworkPolicy(
                serde_json::from_value(doc).map_err(|e| typed("NetworkPolicy", e))?,
            ),
            ("v1", "Service") => {
                Object::Service(serde_json::from_value(doc).map_err(|e| typed("Service", e))?)
            }
            _ => Object::Other { api_version, kind },
        };
        objects.push(object);
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_kind_from_one_file() {
        let text = r#"
apiVersion: v1
kind: Node
metadata: { name: node-a }
spec: { podCIDR: 10.10.0.0/24 }
---
apiVersion: v1
kind: Namespace
metadata: { name: x, labels: { team: blue } }
---
apiVersion: v1
kind: Pod
metadata: { name: a, namespace: x, labels: { app: a } }
spec:
  nodeName: node-a
  containers: [{ name: c, ports: [{ containerPort: 80 }] }]
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: ignored }
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: deny, namespace: x }
spec: { podSelector: {}, policyTypes: [Ingress] }
"#;
        let objects = parse_manifests("test.yaml", text).unwrap();
        assert_eq!(objects.len(), 5);
        assert!(
            matches!(&objects[4], Object::NetworkPolicy(p) if p.metadata.name.as_deref() == Some("deny"))
        );
        assert!(
            matches!(&objects[0], Object::Node(n) if n.metadata.name.as_deref() == Some("node-a"))
        );
        assert!(matches!(&objects[1], Object::Namespace(_)));
        assert!(
            matches!(&objects[2], Object::Pod(p) if p.spec.as_ref().unwrap().node_name.as_deref() == Some("node-a"))
        );
        assert!(matches!(&objects[3], Object::Other { kind, .. } if kind == "Deployment"));
    }

    #[test]
    fn a_file_may_hold_many_objects() {
        let text: String = (0..3000)
            .map(|i| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: n{i}}}\n---\n"))
            .collect();
        assert_eq!(parse_manifests("big.yaml", &text).unwrap().len(), 3000);
    }

    #[test]
    fn errors_name_the_file_and_document() {
        let err = parse_manifests("bad.yaml", "apiVersion: v1\nkind: Pod\nspec: 3\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("bad.yaml: document 0: Pod:"), "{text}");
        let err = parse_manifests("x.yaml", "metadata: {}\n").unwrap_err();
        assert!(err.to_string().contains("apiVersion is missing"), "{err}");
        let err = parse_manifests("y.yaml", "a: [1, 2\n").unwrap_err();
        assert!(matches!(err, ManifestError::Yaml { .. }), "{err}");
    }
}
