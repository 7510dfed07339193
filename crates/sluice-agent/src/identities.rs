//! Security identities claimed in a directory every agent of the cluster shares: one file per
//! number, named by it and holding the label key. A claim is `link(2)` of a finished file
//! onto the number's name, which is atomic, so two agents allocating the same labels at once
//! end up with one number (the loser sees the winner's file and takes the next candidate,
//! or finds its own key there).

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use sluice_model::identity::{allocate, Claim, IdentityLabels, IdentityStore};

pub struct IdentityAllocator {
    store: Box<dyn IdentityStore<Error = String> + Send>,
    known: BTreeMap<IdentityLabels, u32>,
}

struct DirStore {
    dir: PathBuf,
}

impl IdentityAllocator {
    pub fn open(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("creating the identity directory {}: {e}", dir.display()))?;
        Ok(Self::with_store(Box::new(DirStore {
            dir: dir.to_path_buf(),
        })))
    }

    /// Claims in another shared store (etcd).
    pub fn with_store(store: Box<dyn IdentityStore<Error = String> + Send>) -> Self {
        Self {
            store,
            known: BTreeMap::new(),
        }
    }

    /// The identity of `labels`, claiming one when no agent has yet.
    pub fn resolve(&mut self, labels: &IdentityLabels) -> Result<u32, String> {
        if let Some(id) = self.known.get(labels) {
            return Ok(*id);
        }
        let id = allocate(self.store.as_mut(), labels).map_err(|e| e.to_string())?;
        self.known.insert(labels.clone(), id);
        Ok(id)
    }

    /// Identities this agent has resolved.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Labels of an identity this agent has resolved.
    pub fn labels_of(&self, id: u32) -> Option<&IdentityLabels> {
        self.known.iter().find(|(_, v)| **v == id).map(|(k, _)| k)
    }
}

impl IdentityStore for DirStore {
    type Error = String;

    fn claim(&mut self, id: u32, key: &str) -> Result<Claim, String> {
        let path = self.dir.join(id.to_string());
        if let Some(holder) = read_holder(&path)? {
            return Ok(held(holder, key));
        }
        static CLAIMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = CLAIMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".claim-{}-{n}-{id}", std::process::id()));
        std::fs::write(&tmp, key).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(Claim::Won),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => match read_holder(&path)? {
                Some(holder) => Ok(held(holder, key)),
                None => Err(format!("{} vanished while claiming it", path.display())),
            },
            Err(e) => Err(format!("claiming {}: {e}", path.display())),
        }
    }
}

fn held(holder: String, key: &str) -> Claim {
    if holder == key {
        Claim::AlreadyOurs
    } else {
        Claim::HeldBy(holder)
    }
}

fn read_holder(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ns: &str, app: &str) -> IdentityLabels {
        IdentityLabels {
            namespace: ns.into(),
            labels: [("app".to_string(), app.to_string())].into(),
        }
    }

    #[test]
    fn two_allocators_sharing_a_directory_agree() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = IdentityAllocator::open(dir.path()).unwrap();
        let mut b = IdentityAllocator::open(dir.path()).unwrap();
        let x = a.resolve(&labels("x", "a")).unwrap();
        assert_eq!(b.resolve(&labels("x", "a")).unwrap(), x);
        let y = b.resolve(&labels("y", "a")).unwrap();
        assert_ne!(x, y);
        assert_eq!(a.resolve(&labels("y", "a")).unwrap(), y);
        assert!((256..=65535).contains(&x));
    }

    #[test]
    fn concurrent_claims_of_one_label_set_yield_one_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<u32> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let mut a = IdentityAllocator::open(dir.path()).unwrap();
                        a.resolve(&labels("x", "same")).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1, "one claim file, no leftovers");
    }

    #[test]
    fn a_number_held_by_other_labels_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let want = labels("x", "a");
        let first = sluice_model::identity::candidate_identities(&want.key())
            .next()
            .unwrap();
        std::fs::write(dir.path().join(first.to_string()), "someone-else").unwrap();
        let mut a = IdentityAllocator::open(dir.path()).unwrap();
        let id = a.resolve(&want).unwrap();
        assert_ne!(id, first);
    }
}
