//! Parsing Kubernetes YAML manifests (multi-document) into typed objects.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

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
    let parsed = parse_manifests_reusing(origin, text, &ParsedDocuments::default())?;
    // The map holds a second reference to every object: without it each Arc is unique and
    // unwraps without a copy.
    drop(parsed.documents);
    Ok(parsed
        .objects
        .into_iter()
        .map(Arc::unwrap_or_clone)
        .collect())
}

/// What one file's documents parsed to, by their text. Handed back to
/// [`parse_manifests_reusing`] when the file changes, it lets the re-parse skip every
/// document whose text it already knows; those keep their very `Arc`s, so a caller can tell
/// unchanged objects by pointer.
#[derive(Debug, Default, Clone)]
pub struct ParsedDocuments(HashMap<Box<str>, Arc<ParsedPiece>>);

/// One piece of a stream (see [`crate::yaml_documents`]): how many documents it held and
/// the objects of those that were not empty.
#[derive(Debug)]
struct ParsedPiece {
    documents: usize,
    objects: Vec<Arc<Object>>,
}

#[derive(Debug)]
pub struct ParsedFile {
    pub objects: Vec<Arc<Object>>,
    pub documents: ParsedDocuments,
    /// Pieces parsed afresh (the rest came from `known`).
    pub parsed: usize,
}

/// Fewer new documents than this are parsed on the calling thread: spawning costs more.
const PARALLEL_MIN: usize = 256;

/// Like [`parse_manifests`], reusing the documents `known` holds and parsing the new ones
/// on every core (YAML parsing costs tens of µs per object; a file may hold tens of
/// thousands).
pub fn parse_manifests_reusing(
    origin: &str,
    text: &str,
    known: &ParsedDocuments,
) -> Result<ParsedFile, ManifestError> {
    let Some(pieces) = crate::yaml_documents::split_documents(text) else {
        // Directives reach across documents: parse the stream whole, and remember nothing.
        let piece = parse_piece(text).map_err(|message| yaml_error(origin, message))?;
        let parsed = into_parsed(origin, 0, piece)?;
        return Ok(ParsedFile {
            objects: parsed.objects,
            documents: ParsedDocuments::default(),
            parsed: 1,
        });
    };
    let mut fresh: Vec<&str> = pieces
        .iter()
        .copied()
        .filter(|p| !known.0.contains_key(*p))
        .collect();
    fresh.sort_unstable();
    fresh.dedup();
    let results = parse_pieces(&fresh);
    let mut parsed_now: HashMap<&str, PieceResult> = fresh.iter().copied().zip(results).collect();

    let mut documents = HashMap::with_capacity(pieces.len());
    let mut objects = Vec::with_capacity(pieces.len());
    let mut index = 0;
    for piece in pieces {
        let done = match known.0.get(piece).or_else(|| documents.get(piece)) {
            Some(done) => Arc::clone(done),
            None => {
                let result = parsed_now
                    .remove(piece)
                    .expect("every new piece was parsed");
                // Line numbers inside a piece would mislead: report the whole stream's error.
                let docs = result.map_err(|message| {
                    let whole = parse_piece(text).err().unwrap_or(message);
                    yaml_error(origin, whole)
                })?;
                Arc::new(into_parsed(origin, index, docs)?)
            }
        };
        index += done.documents;
        objects.extend(done.objects.iter().cloned());
        documents.entry(Box::from(piece)).or_insert(done);
    }
    Ok(ParsedFile {
        objects,
        documents: ParsedDocuments(documents),
        parsed: fresh.len(),
    })
}

/// A piece's documents in order: None for an empty one, else the object or why not.
type PieceResult = Result<Vec<Option<Result<Object, String>>>, String>;

fn parse_pieces(pieces: &[&str]) -> Vec<PieceResult> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if pieces.len() < PARALLEL_MIN || threads < 2 {
        return pieces.iter().map(|p| parse_piece(p)).collect();
    }
    let per_thread = pieces.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = pieces
            .chunks(per_thread)
            .map(|group| scope.spawn(move || group.iter().map(|p| parse_piece(p)).collect()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| -> Vec<PieceResult> {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

fn parse_piece(text: &str) -> PieceResult {
    let docs: Vec<Option<Value>> =
        serde_saphyr::from_multiple_with_options(text, large_files()).map_err(|e| e.to_string())?;
    Ok(docs
        .into_iter()
        .map(|doc| doc.filter(|d| !d.is_null()).map(object_from))
        .collect())
}

fn yaml_error(origin: &str, message: String) -> ManifestError {
    ManifestError::Yaml {
        origin: origin.into(),
        message,
    }
}

/// `first`: the index of the piece's first document in its file, for error messages.
fn into_parsed(
    origin: &str,
    first: usize,
    docs: Vec<Option<Result<Object, String>>>,
) -> Result<ParsedPiece, ManifestError> {
    let documents = docs.len();
    let mut objects = Vec::with_capacity(documents);
    for (i, doc) in docs.into_iter().enumerate() {
        match doc {
            None => {}
            Some(Ok(object)) => objects.push(Arc::new(object)),
            Some(Err(message)) => {
                return Err(ManifestError::Document {
                    origin: origin.into(),
                    index: first + i,
                    message,
                })
            }
        }
    }
    Ok(ParsedPiece { documents, objects })
}

/// One document as the kind it names.
fn object_from(doc: Value) -> Result<Object, String> {
    let field = |name: &str| doc.get(name).and_then(Value::as_str).map(str::to_string);
    let api_version = field("apiVersion").ok_or("apiVersion is missing")?;
    let kind = field("kind").ok_or("kind is missing")?;
    let typed = |what: &str, e: serde_json::Error| format!("{what}: {e}");
    Ok(match (api_version.as_str(), kind.as_str()) {
        ("v1", "Node") => Object::Node(serde_json::from_value(doc).map_err(|e| typed("Node", e))?),
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
    })
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
        let objects = parse_manifests("big.yaml", &text).unwrap();
        assert_eq!(objects.len(), 3000);
        // Parsed on several threads, still in file order.
        for (i, o) in objects.iter().enumerate() {
            assert_eq!(o.key().unwrap().1, format!("n{i}"));
        }
    }

    fn namespace(name: &str) -> String {
        format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
    }

    #[test]
    fn a_reparse_parses_only_new_documents_and_keeps_the_rest() {
        let before: String = ["a", "b", "c"].map(namespace).concat();
        let first =
            parse_manifests_reusing("f.yaml", &before, &ParsedDocuments::default()).unwrap();
        assert_eq!(first.parsed, 3);
        let after: String = ["a", "x", "c", "a"].map(namespace).concat();
        let second = parse_manifests_reusing("f.yaml", &after, &first.documents).unwrap();
        assert_eq!(second.parsed, 1, "only x is new");
        let names: Vec<String> = second.objects.iter().map(|o| o.key().unwrap().1).collect();
        assert_eq!(names, ["a", "x", "c", "a"]);
        assert!(
            Arc::ptr_eq(&first.objects[0], &second.objects[0]),
            "a is the same object"
        );
        assert!(
            Arc::ptr_eq(&first.objects[2], &second.objects[2]),
            "c is the same object"
        );
        assert_eq!(second.documents.0.len(), 3, "b is forgotten");
    }

    #[test]
    fn document_indexes_count_across_pieces() {
        let text = format!(
            "# a comment\n{}---\n{}---\napiVersion: v1\nkind: Pod\nspec: 3\n",
            namespace("a"),
            namespace("b")
        );
        let err = parse_manifests("f.yaml", &text).unwrap_err();
        // a, b, then the bad Pod: like the parser, the count skips empty documents.
        assert!(
            err.to_string().starts_with("f.yaml: document 2: Pod:"),
            "{err}"
        );
    }

    #[test]
    fn yaml_errors_point_into_the_whole_file() {
        let text = format!("{}{}---\na: [1, 2\n", namespace("a"), namespace("b"));
        let err = parse_manifests("f.yaml", &text).unwrap_err();
        let whole = serde_saphyr::from_multiple_with_options::<Option<Value>>(&text, large_files())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            ManifestError::Yaml {
                origin: "f.yaml".into(),
                message: whole
            }
        );
    }

    #[test]
    fn directives_are_parsed_with_the_whole_stream() {
        let text = format!("%YAML 1.2\n{}{}", namespace("a"), namespace("b"));
        let parsed = parse_manifests_reusing("f.yaml", &text, &ParsedDocuments::default()).unwrap();
        assert_eq!(parsed.objects.len(), 2);
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
