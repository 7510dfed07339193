//! The embedded source: a directory of Kubernetes YAML manifests, watched with inotify (via
//! `notify`) and rescanned periodically as a safety net.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use sluice_model::{parse_manifests_reusing, ChangedObjects, Object, ParsedDocuments};

use super::{Snapshot, Source};

const RESCAN: Duration = Duration::from_secs(5);
/// Editors and copies write files in several steps: after a change, wait until the
/// directory has been quiet this long (but no longer than SETTLE_MAX) before reading it.
const SETTLE: Duration = Duration::from_millis(10);
const SETTLE_MAX: Duration = Duration::from_millis(500);

pub struct ManifestDir {
    dir: PathBuf,
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

/// One file as last read: its signature (mtime, length), its objects and what its documents
/// parsed to (so the next read parses only documents that changed).
struct FileState {
    signature: (Option<SystemTime>, u64),
    objects: Vec<Arc<Object>>,
    documents: ParsedDocuments,
    problem: Option<String>,
}

/// A re-read slower than this is logged with what it parsed.
const SLOW_READ: Duration = Duration::from_millis(20);

fn read_file(
    path: &Path,
    signature: (Option<SystemTime>, u64),
    previous: Option<&FileState>,
) -> FileState {
    let started = Instant::now();
    let origin = path.display().to_string();
    let none = ParsedDocuments::default();
    let known = previous.map_or(&none, |p| &p.documents);
    let parsed = std::fs::read_to_string(path)
        .map_err(|e| format!("{origin}: {e}"))
        .and_then(|text| parse_manifests_reusing(&origin, &text, known).map_err(|e| e.to_string()));
    match parsed {
        Ok(file) => {
            let took = started.elapsed();
            if took > SLOW_READ {
                tracing::info!(
                    file = %origin,
                    objects = file.objects.len(),
                    parsed = file.parsed,
                    ms = took.as_secs_f64() * 1e3,
                    "manifest file read"
                );
            }
            FileState {
                signature,
                objects: file.objects,
                documents: file.documents,
                problem: None,
            }
        }
        // Keep what the file said before it broke: bad input changes nothing.
        Err(problem) => FileState {
            signature,
            objects: previous.map(|p| p.objects.clone()).unwrap_or_default(),
            documents: known.clone(),
            problem: Some(problem),
        },
    }
}

fn pointers<'a>(objects: impl IntoIterator<Item = &'a Arc<Object>>) -> HashSet<*const Object> {
    objects.into_iter().map(Arc::as_ptr).collect()
}

struct Scanner {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

impl Scanner {
    /// Re-reads files whose signature changed; returns the snapshot, or None when no file
    /// changed since the last scan (a rescan of a large, quiet directory costs only stats).
    fn scan(&mut self) -> Option<Snapshot> {
        let mut problems = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let first = self.files.is_empty();
        let mut changed = first;
        let mut connected = true;
        let mut keys = ChangedObjects::default();
        match std::fs::read_dir(&self.dir) {
            Err(e) => {
                connected = false;
                problems.push(format!("manifest directory {}: {e}", self.dir.display()))
            }
            Ok(entries) => {
                for entry in entries.flatten() {
                    let path = entry.path();
                    if !is_manifest(&path) {
                        continue;
                    }
                    seen.insert(path.clone());
                    let meta = entry.metadata().ok();
                    let signature = (
                        meta.as_ref().and_then(|m| m.modified().ok()),
                        meta.as_ref().map(|m| m.len()).unwrap_or(0),
                    );
                    if self
                        .files
                        .get(&path)
                        .is_some_and(|f| f.signature == signature)
                    {
                        continue;
                    }
                    changed = true;
                    let previous = self.files.remove(&path);
                    let state = read_file(&path, signature, previous.as_ref());
                    // Objects kept from the last read are unchanged: only the others may
                    // differ, so a large file's edit reconciles just what it touched.
                    let before = pointers(previous.iter().flat_map(|p| &p.objects));
                    let after = pointers(&state.objects);
                    let gone = previous.iter().flat_map(|p| &p.objects);
                    for o in gone.filter(|o| !after.contains(&Arc::as_ptr(o))) {
                        keys.note(o);
                    }
                    for o in state
                        .objects
                        .iter()
                        .filter(|o| !before.contains(&Arc::as_ptr(o)))
                    {
                        keys.note(o);
                    }
                    self.files.insert(path, state);
                }
            }
        }
        // An unreadable directory removes nothing: its files keep what they last said.
        if connected {
            let before = self.files.len();
            for (_, gone) in self.files.iter().filter(|(path, _)| !seen.contains(*path)) {
                for o in &gone.objects {
                    keys.note(o);
                }
            }
            self.files.retain(|path, _| seen.contains(path));
            changed |= self.files.len() != before;
        }
        if !changed && problems.is_empty() {
            return None;
        }
        let mut objects = Vec::new();
        for file in self.files.values() {
            objects.extend(file.objects.iter().cloned());
            problems.extend(file.problem.clone());
        }
        Some(Snapshot {
            objects,
            problems,
            connected,
            changed: (!first).then_some(keys),
        })
    }
}

fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    !hidden && matches!(ext, "yaml" | "yml" | "json") && path.is_file()
}

/// Whether a watch event may mean a file changed. Reads are not changes: a scan opens the
/// directory itself, so waking on opens would rescan, and wake, forever (every agent
/// watching the directory, 20 times a second).
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

/// Watches `dir` (not recursively), sending on `wake` when something in it may have changed.
/// Errors from the watcher wake too: a rescan finds out what happened.
fn watch_changes(dir: &Path, wake: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.as_ref().map_or(true, |e| is_change(&e.kind)) {
            let _ = wake.send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Waits until no change has been reported for SETTLE (at most SETTLE_MAX): a rename is
/// read 10 ms after it lands, a long write once it stops.
fn settle(wake: &mpsc::Receiver<()>) {
    let deadline = Instant::now() + SETTLE_MAX;
    loop {
        std::thread::sleep(SETTLE);
        let mut more = false;
        while wake.try_recv().is_ok() {
            more = true;
        }
        if !more || Instant::now() >= deadline {
            return;
        }
    }
}

impl Source for ManifestDir {
    fn describe(&self) -> String {
        format!("files:{}", self.dir.display())
    }

    fn run(self: Box<Self>, tx: mpsc::Sender<Snapshot>) {
        let (wake_tx, wake_rx) = mpsc::channel::<()>();
        let watcher = watch_changes(&self.dir, wake_tx);
        if let Err(e) = &watcher {
            tracing::warn!(dir = %self.dir.display(), error = %e, "inotify watch failed; polling only");
        }
        let mut scanner = Scanner {
            dir: self.dir.clone(),
            files: BTreeMap::new(),
        };
        // Problems and connectivity of the last snapshot sent: a rescan that changed no
        // object and reports the same problems (a file that stays broken) sends nothing.
        // Objects are never compared: the change list says whether they differ.
        let mut last: Option<(Vec<String>, bool)> = None;
        loop {
            if let Some(snapshot) = scanner.scan() {
                let nothing_new = snapshot.changed.as_ref().is_some_and(|c| c.0.is_empty())
                    && last.as_ref() == Some(&(snapshot.problems.clone(), snapshot.connected));
                if !nothing_new {
                    last = Some((snapshot.problems.clone(), snapshot.connected));
                    if tx.send(snapshot).is_err() {
                        return;
                    }
                }
            }
            match wake_rx.recv_timeout(RESCAN) {
                Ok(()) => settle(&wake_rx),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // No watcher: fall back to polling.
                    std::thread::sleep(RESCAN);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str =
        "apiVersion: v1\nkind: Node\nmetadata: {name: a}\nspec: {podCIDR: 10.0.0.0/24}\n";

    #[test]
    fn a_broken_file_keeps_its_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nodes.yaml");
        std::fs::write(&file, NODE).unwrap();
        let mut scanner = Scanner {
            dir: dir.path().into(),
            files: BTreeMap::new(),
        };
        let first = scanner.scan().expect("the first scan reports");
        assert_eq!(first.objects.len(), 1);
        assert!(first.problems.is_empty());
        assert!(
            scanner.scan().is_none(),
            "nothing changed: nothing to report"
        );

        std::fs::write(&file, "kind: [broken\n").unwrap();
        let second = scanner.scan().expect("a changed file is reported");
        assert_eq!(second.objects, first.objects, "objects kept");
        assert_eq!(second.problems.len(), 1);
        assert!(
            second.problems[0].contains("nodes.yaml"),
            "{:?}",
            second.problems
        );

        std::fs::remove_file(&file).unwrap();
        let third = scanner.scan().expect("a removed file is reported");
        assert!(
            third.objects.is_empty(),
            "a removed file removes its objects"
        );

        std::fs::write(&file, NODE).unwrap();
        scanner.scan().expect("the file is back");
        let moved = dir.path().with_extension("moved");
        std::fs::rename(dir.path(), &moved).unwrap();
        let gone = scanner.scan().expect("an unreadable directory is reported");
        assert!(!gone.connected && gone.problems.len() == 1, "{gone:?}");
        assert_eq!(gone.objects.len(), 1, "the last objects are kept");
        std::fs::rename(&moved, dir.path()).unwrap();
    }

    #[test]
    fn snapshots_list_the_objects_of_changed_files() {
        use sluice_model::ObjectKind;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nodes.yaml"), NODE).unwrap();
        let svc = |ip: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: x}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n")
        };
        std::fs::write(dir.path().join("svc.yaml"), svc("10.96.0.1")).unwrap();
        let mut scanner = Scanner {
            dir: dir.path().into(),
            files: BTreeMap::new(),
        };
        assert_eq!(
            scanner.scan().unwrap().changed,
            None,
            "the first scan cannot itemise"
        );
        // A different length makes the signature differ even within one mtime tick.
        std::fs::write(dir.path().join("svc.yaml"), svc("10.96.0.100")).unwrap();
        let changed = scanner.scan().unwrap().changed.unwrap();
        assert_eq!(
            changed.0.into_iter().collect::<Vec<_>>(),
            vec![(ObjectKind::Service, "x/web".to_string())],
            "only the changed file's objects"
        );
        // Within a file, only the documents that changed.
        let web = |ip: &str| svc(ip).replace("web", "api") + "---\n" + &svc("10.96.0.100");
        std::fs::write(dir.path().join("svc.yaml"), web("10.96.0.2")).unwrap();
        scanner.scan().unwrap();
        std::fs::write(dir.path().join("svc.yaml"), web("10.96.0.33")).unwrap();
        let snapshot = scanner.scan().unwrap();
        assert_eq!(snapshot.objects.len(), 3);
        assert_eq!(
            snapshot.changed.unwrap().0.into_iter().collect::<Vec<_>>(),
            vec![(ObjectKind::Service, "x/api".to_string())],
            "x/web's document is as it was"
        );
        std::fs::remove_file(dir.path().join("nodes.yaml")).unwrap();
        let changed = scanner.scan().unwrap().changed.unwrap();
        assert_eq!(
            changed.0.into_iter().collect::<Vec<_>>(),
            vec![(ObjectKind::Node, "a".to_string())]
        );
    }

    #[test]
    fn changes_are_delivered_by_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let source = Box::new(ManifestDir::new(dir.path()));
        std::thread::spawn(move || source.run(tx));
        let empty = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(empty.objects.is_empty());
        std::fs::write(dir.path().join("n.yaml"), NODE).unwrap();
        // Within the rescan period, so inotify must have delivered it.
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let next = rx
                .recv_timeout(left)
                .expect("change seen before the rescan");
            if next.objects.len() == 1 {
                break;
            }
        }
    }

    #[test]
    fn reading_the_directory_does_not_wake_the_watcher_and_writing_does() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("n.yaml"), NODE).unwrap();
        let (tx, rx) = mpsc::channel();
        let _watcher = watch_changes(dir.path(), tx).unwrap();
        // What a scan does: list the directory, stat and read a file.
        let mut scanner = Scanner {
            dir: dir.path().into(),
            files: BTreeMap::new(),
        };
        scanner.scan().unwrap();
        std::fs::read_to_string(dir.path().join("n.yaml")).unwrap();
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "a scan woke the watcher (it would rescan itself forever)"
        );
        std::fs::write(dir.path().join("m.yaml"), NODE).unwrap();
        rx.recv_timeout(Duration::from_secs(4))
            .expect("a new file wakes the watcher");
    }

    #[test]
    fn settling_waits_out_a_burst_of_changes_but_not_a_quiet_directory() {
        let (tx, rx) = mpsc::channel();
        tx.send(()).unwrap();
        let started = Instant::now();
        settle(&rx);
        assert!(started.elapsed() < SETTLE_MAX, "quiet: one settle period");
        assert!(rx.try_recv().is_err(), "the wakes seen are consumed");
        // A write that goes on for 200 ms (a change every 2 ms). Its first change is sent
        // before settling starts, so however the writer thread is scheduled, the first
        // period sees a change and settling waits at least one more.
        tx.send(()).unwrap();
        let writer = std::thread::spawn(move || {
            for _ in 0..100 {
                let _ = tx.send(());
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let started = Instant::now();
        settle(&rx);
        let waited = started.elapsed();
        writer.join().unwrap();
        assert!(
            waited >= SETTLE * 2 && waited < SETTLE_MAX + SETTLE * 10,
            "waited {waited:?} during a burst"
        );
    }
}
