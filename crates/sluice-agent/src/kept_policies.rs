//! The last valid version of every NetworkPolicy, kept on disk. An update that fails
//! validation keeps the previous version in force; this makes that hold across an agent
//! restart too (otherwise a restarted agent would drop the policy and open its pods).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use sluice_model::policy::PolicyInfo;
use sluice_model::{DesiredState, Object};

pub struct KeptPolicies {
    path: PathBuf,
    by_key: BTreeMap<String, NetworkPolicy>,
}

impl KeptPolicies {
    /// Reads `<stateDir>/policies.json`; a missing or unreadable file keeps nothing (and says so).
    pub fn load(state_dir: &Path) -> (Self, Option<String>) {
        let path = state_dir.join("policies.json");
        let (by_key, problem) = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(map) => (map, None),
                Err(e) => (
                    BTreeMap::new(),
                    Some(format!(
                        "{}: unreadable ({e}); starting without kept policies",
                        path.display()
                    )),
                ),
            },
            Err(_) => (BTreeMap::new(), None),
        };
        (Self { path, by_key }, problem)
    }

    /// The kept policies as a desired state, to build the next one against.
    pub fn as_previous(&self) -> DesiredState {
        let objects: Vec<Object> = self
            .by_key
            .values()
            .map(|np| Object::NetworkPolicy(Box::new(np.clone())))
            .collect();
        DesiredState::build(&objects).0
    }

    /// Remembers the valid policies of `objects` that made it into `desired`, forgets those
    /// gone from it, and writes the file when anything changed.
    pub fn update<O: std::borrow::Borrow<Object>>(
        &mut self,
        objects: &[O],
        desired: &DesiredState,
    ) -> Result<(), String> {
        let mut next = BTreeMap::new();
        for object in objects {
            let Object::NetworkPolicy(np) = object.borrow() else {
                continue;
            };
            if let Ok(info) = PolicyInfo::from_policy(np) {
                if desired.policies.contains_key(&info.key()) {
                    next.insert(info.key(), (**np).clone());
                }
            }
        }
        // Invalid updates: the previous object stays.
        for key in desired.policies.keys() {
            if !next.contains_key(key) {
                if let Some(old) = self.by_key.get(key) {
                    next.insert(key.clone(), old.clone());
                }
            }
        }
        if next == self.by_key {
            return Ok(());
        }
        self.by_key = next;
        let bytes = serde_json::to_vec(&self.by_key).map_err(|e| e.to_string())?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|e| format!("writing {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(cidr: &str) -> Vec<Object> {
        sluice_model::parse_manifests(
            "t",
            &format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{{ipBlock: {{cidr: \"{cidr}\"}}}}]}}]\n"
            ),
        )
        .unwrap()
    }

    #[test]
    fn an_invalid_update_survives_a_restart_as_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let (mut kept, problem) = KeptPolicies::load(dir.path());
        assert!(problem.is_none());
        let good = objects("10.0.0.0/8");
        let (desired, _) = DesiredState::build_with_previous(&good, &kept.as_previous());
        kept.update(&good, &desired).unwrap();

        // A restart, then a broken version of the same policy.
        let (mut kept, _) = KeptPolicies::load(dir.path());
        let bad = objects("10.0.0.0/33");
        let (desired, problems) = DesiredState::build_with_previous(&bad, &kept.as_previous());
        assert!(desired.policies.contains_key("x/p"), "{problems:?}");
        assert!(
            problems[0].contains("keeping the previous version"),
            "{problems:?}"
        );
        kept.update(&bad, &desired).unwrap();
        let (kept, _) = KeptPolicies::load(dir.path());
        assert!(kept.as_previous().policies.contains_key("x/p"));

        // Deleting the policy forgets it.
        let (mut kept, _) = KeptPolicies::load(dir.path());
        let (desired, _) = DesiredState::build_with_previous::<Object>(&[], &kept.as_previous());
        kept.update::<Object>(&[], &desired).unwrap();
        assert!(KeptPolicies::load(dir.path())
            .0
            .as_previous()
            .policies
            .is_empty());
    }
}
