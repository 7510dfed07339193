//! Security identities: one number per distinct (namespace, pod labels), the same on every
//! node, so policy entries name identities instead of addresses. Plus node-local numbers for
//! the CIDR prefixes policies mention.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

use crate::state::{DesiredState, PodInfo};

/// Wildcard peer, used only in policy entries.
pub const IDENTITY_ANY: u32 = 0;
/// This node.
pub const IDENTITY_HOST: u32 = 1;
/// Anything not otherwise known.
pub const IDENTITY_WORLD: u32 = 2;
pub const IDENTITY_REMOTE_NODE: u32 = 6;
/// Cluster identities (pods), allocated cluster-wide.
pub const CLUSTER_IDENTITIES: std::ops::RangeInclusive<u32> = 256..=65535;
/// Node-local identities of CIDR prefixes start here.
pub const CIDR_IDENTITY_BASE: u32 = 1 << 24;

const NAMESPACE_LABEL: &str = "k8s:io.kubernetes.pod.namespace";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityLabels {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

impl IdentityLabels {
    pub fn of(pod: &PodInfo) -> Self {
        IdentityLabels {
            namespace: pod.namespace.clone(),
            labels: pod.labels.clone(),
        }
    }

    /// Canonical text: `k8s:io.kubernetes.pod.namespace=<ns>;<key>=<value>;…` in key order.
    /// `\`, `;` and `=` are backslash-escaped so any strings round-trip.
    pub fn key(&self) -> String {
        let mut out = format!("{NAMESPACE_LABEL}={}", escape(&self.namespace));
        for (k, v) in &self.labels {
            out.push(';');
            out.push_str(&escape(k));
            out.push('=');
            out.push_str(&escape(v));
        }
        out
    }

    pub fn from_key(key: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("identity key {key:?}: {why}");
        let mut parts = split_unescaped(key, ';').into_iter();
        let first = parts.next().unwrap_or_default();
        let (name, namespace) =
            split_pair(&first).ok_or_else(|| bad("no '=' in the first part"))?;
        if name != NAMESPACE_LABEL {
            return Err(bad(&format!("does not start with {NAMESPACE_LABEL}=")));
        }
        let mut labels = BTreeMap::new();
        for part in parts {
            let (k, v) = split_pair(&part).ok_or_else(|| bad(&format!("{part:?} has no '='")))?;
            if labels.insert(k, v).is_some() {
                return Err(bad("a label appears twice"));
            }
        }
        Ok(IdentityLabels { namespace, labels })
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ';' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Splits at unescaped `sep`, keeping escapes in the parts.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let last = parts.last_mut().expect("never empty");
        if c == '\\' {
            last.push(c);
            if let Some(n) = chars.next() {
                last.push(n);
            }
        } else if c == sep {
            parts.push(String::new());
        } else {
            last.push(c);
        }
    }
    parts
}

/// `k=v` with escapes into the unescaped (k, v); None without exactly one unescaped '='.
fn split_pair(part: &str) -> Option<(String, String)> {
    let halves = split_unescaped(part, '=');
    let [k, v] = halves.as_slice() else {
        return None;
    };
    let unescape = |s: &str| {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            out.push(if c == '\\' { chars.next()? } else { c });
        }
        Some(out)
    };
    Some((unescape(k)?, unescape(v)?))
}

/// The cluster identities to try for `key`, in order: from a stable hash of the key, linearly
/// with wrap-around, each cluster identity exactly once. Every node computes the same order,
/// so uncontended keys get the same number without coordination.
pub fn candidate_identities(key: &str) -> impl Iterator<Item = u32> {
    let digest = Sha256::digest(key.as_bytes());
    let hash = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    let (low, high) = (*CLUSTER_IDENTITIES.start(), *CLUSTER_IDENTITIES.end());
    let size = high - low + 1;
    let start = (hash % size as u64) as u32;
    (0..size).map(move |i| low + (start + i) % size)
}

/// The outcome of claiming one number in the shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Won,
    AlreadyOurs,
    /// Someone holds it for another key: try the next candidate.
    HeldBy(String),
}

/// The shared store identities are claimed in (files claimed with link(2), later etcd).
/// `claim` must be atomic: of two nodes claiming one number, one wins.
pub trait IdentityStore {
    type Error;
    fn claim(&mut self, id: u32, key: &str) -> Result<Claim, Self::Error>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError<E> {
    Store(E),
    /// Every cluster identity is held by another key.
    Exhausted {
        key: String,
    },
}

impl<E: fmt::Display> fmt::Display for AllocError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::Store(e) => write!(f, "identity store: {e}"),
            AllocError::Exhausted { key } => write!(
                f,
                "no free cluster identity for {key:?}: all of {}..={} are taken",
                CLUSTER_IDENTITIES.start(),
                CLUSTER_IDENTITIES.end()
            ),
        }
    }
}

/// Claims the first free candidate of `labels` (or finds the one it already holds, when that
/// comes first in the probe order).
pub fn allocate<S: IdentityStore + ?Sized>(
    store: &mut S,
    labels: &IdentityLabels,
) -> Result<u32, AllocError<S::Error>> {
    let key = labels.key();
    for id in candidate_identities(&key) {
        match store.claim(id, &key).map_err(AllocError::Store)? {
            Claim::Won | Claim::AlreadyOurs => return Ok(id),
            Claim::HeldBy(_) => continue,
        }
    }
    Err(AllocError::Exhausted { key })
}

/// Every prefix some policy's ipBlock names, as cidr or except.
pub fn policy_prefixes(state: &DesiredState) -> BTreeSet<Ipv4Net> {
    let mut out = BTreeSet::new();
    for policy in state.policies.values() {
        for (cidr, except) in policy.ip_blocks() {
            out.insert(*cidr);
            out.extend(except.iter().copied());
        }
    }
    out
}

/// Node-local identities of the policy prefixes. The datapath's CIDR map returns the longest
/// listed prefix containing an address; listing excepts too makes each prefix's region lie
/// wholly inside or outside every block, so entries can be per prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrIdentities {
    by_prefix: BTreeMap<Ipv4Net, u32>,
}

impl CidrIdentities {
    /// The assignments found programmed (after an agent restart), so `update` keeps them.
    /// Numbers outside the CIDR range, and a number seen twice, are dropped: `update` gives
    /// those prefixes fresh numbers.
    pub fn restore(assignments: impl IntoIterator<Item = (Ipv4Net, u32)>) -> Self {
        let mut by_prefix = BTreeMap::new();
        let mut used = BTreeSet::new();
        for (prefix, id) in assignments {
            if id >= CIDR_IDENTITY_BASE && used.insert(id) {
                by_prefix.entry(prefix.trunc()).or_insert(id);
            }
        }
        CidrIdentities { by_prefix }
    }

    /// Keeps existing numbers (entries in the maps stay valid), frees those of removed
    /// prefixes and gives new ones the lowest free number.
    pub fn update(&mut self, prefixes: &BTreeSet<Ipv4Net>) {
        self.by_prefix.retain(|p, _| prefixes.contains(p));
        let mut used: BTreeSet<u32> = self.by_prefix.values().copied().collect();
        let mut next = CIDR_IDENTITY_BASE;
        for p in prefixes {
            if self.by_prefix.contains_key(p) {
                continue;
            }
            while used.contains(&next) {
                next += 1;
            }
            used.insert(next);
            self.by_prefix.insert(*p, next);
        }
    }

    pub fn get(&self, prefix: &Ipv4Net) -> Option<u32> {
        self.by_prefix.get(prefix).copied()
    }

    /// The longest listed prefix containing `ip`, as the datapath's LPM lookup finds it.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<(Ipv4Net, u32)> {
        self.by_prefix
            .iter()
            .filter(|(p, _)| p.contains(&ip))
            .max_by_key(|(p, _)| p.prefix_len())
            .map(|(p, id)| (*p, *id))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Ipv4Net, u32)> {
        self.by_prefix.iter().map(|(p, id)| (p, *id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct MemoryStore {
        held: HashMap<u32, String>,
        claims: usize,
    }

    impl IdentityStore for MemoryStore {
        type Error = String;
        fn claim(&mut self, id: u32, key: &str) -> Result<Claim, String> {
            self.claims += 1;
            Ok(match self.held.get(&id) {
                None => {
                    self.held.insert(id, key.to_string());
                    Claim::Won
                }
                Some(k) if k == key => Claim::AlreadyOurs,
                Some(k) => Claim::HeldBy(k.clone()),
            })
        }
    }

    fn labels(ns: &str, pairs: &[(&str, &str)]) -> IdentityLabels {
        IdentityLabels {
            namespace: ns.into(),
            labels: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn key_is_canonical() {
        let l = labels("x", &[("pod", "a"), ("app", "web")]);
        assert_eq!(l.key(), "k8s:io.kubernetes.pod.namespace=x;app=web;pod=a");
        assert!(IdentityLabels::from_key("app=web").is_err());
        assert!(IdentityLabels::from_key("k8s:io.kubernetes.pod.namespace=x;a").is_err());
    }

    #[test]
    fn candidates_visit_every_cluster_identity_once() {
        let all: Vec<u32> = candidate_identities("k").collect();
        assert_eq!(all.len(), 65280);
        let set: BTreeSet<u32> = all.iter().copied().collect();
        assert_eq!(set.len(), 65280);
        assert_eq!(set.first(), Some(&256));
        assert_eq!(set.last(), Some(&65535));
        // Linear with wrap-around.
        for w in all.windows(2) {
            assert!(w[1] == w[0] + 1 || (w[0] == 65535 && w[1] == 256));
        }
        // Stable: the same on every node and run.
        let again: Vec<u32> = candidate_identities("k").take(3).collect();
        assert_eq!(&all[..3], &again[..]);
    }

    #[test]
    fn allocation_is_stable_and_skips_collisions() {
        let a = labels("x", &[("pod", "a")]);
        let b = labels("x", &[("pod", "b")]);
        let mut store = MemoryStore::default();
        let ia = allocate(&mut store, &a).unwrap();
        assert_eq!(ia, candidate_identities(&a.key()).next().unwrap());
        // Asking again finds our own claim.
        assert_eq!(allocate(&mut store, &a).unwrap(), ia);
        // Force b's first two candidates to be held by others.
        let mut cands = candidate_identities(&b.key());
        let (c0, c1, c2) = (
            cands.next().unwrap(),
            cands.next().unwrap(),
            cands.next().unwrap(),
        );
        store.held.insert(c0, "other-1".into());
        store.held.insert(c1, "other-2".into());
        store.claims = 0;
        assert_eq!(allocate(&mut store, &b).unwrap(), c2);
        assert_eq!(store.claims, 3);
        assert!(CLUSTER_IDENTITIES.contains(&c2));
    }

    #[test]
    fn exhaustion_and_store_errors_are_reported() {
        let mut store = MemoryStore::default();
        for id in CLUSTER_IDENTITIES {
            store.held.insert(id, format!("k{id}"));
        }
        let e = allocate(&mut store, &labels("x", &[])).unwrap_err();
        assert!(matches!(e, AllocError::Exhausted { .. }));
        assert!(e.to_string().contains("256..=65535"), "{e}");

        struct Broken;
        impl IdentityStore for Broken {
            type Error = String;
            fn claim(&mut self, _: u32, _: &str) -> Result<Claim, String> {
                Err("disk full".into())
            }
        }
        let e = allocate(&mut Broken, &labels("x", &[])).unwrap_err();
        assert_eq!(e.to_string(), "identity store: disk full");
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_identities_stay_stable_and_reuse_freed_numbers() {
        let mut c = CidrIdentities::default();
        c.update(&BTreeSet::from([net("10.0.0.0/8"), net("10.1.0.0/16")]));
        assert_eq!(c.get(&net("10.0.0.0/8")), Some(CIDR_IDENTITY_BASE));
        assert_eq!(c.get(&net("10.1.0.0/16")), Some(CIDR_IDENTITY_BASE + 1));
        // Removing the first frees its number; a new prefix takes it; the other keeps its own.
        c.update(&BTreeSet::from([net("0.0.0.0/0"), net("10.1.0.0/16")]));
        assert_eq!(c.get(&net("10.0.0.0/8")), None);
        assert_eq!(c.get(&net("0.0.0.0/0")), Some(CIDR_IDENTITY_BASE));
        assert_eq!(c.get(&net("10.1.0.0/16")), Some(CIDR_IDENTITY_BASE + 1));
        assert_eq!(
            c.lookup(Ipv4Addr::new(10, 1, 2, 3)),
            Some((net("10.1.0.0/16"), CIDR_IDENTITY_BASE + 1))
        );
        assert_eq!(
            c.lookup(Ipv4Addr::new(10, 2, 2, 3)),
            Some((net("0.0.0.0/0"), CIDR_IDENTITY_BASE))
        );
        assert_eq!(c.iter().count(), 2);
        c.update(&BTreeSet::new());
        assert_eq!(c.lookup(Ipv4Addr::new(10, 1, 2, 3)), None);
    }

    #[test]
    fn restored_assignments_survive_the_next_update() {
        let mut c = CidrIdentities::restore([
            (net("10.1.0.0/16"), CIDR_IDENTITY_BASE + 5),
            (net("10.2.0.0/16"), CIDR_IDENTITY_BASE + 5),
            (net("10.3.0.0/16"), 7),
        ]);
        c.update(&BTreeSet::from([
            net("10.1.0.0/16"),
            net("10.2.0.0/16"),
            net("10.3.0.0/16"),
        ]));
        assert_eq!(c.get(&net("10.1.0.0/16")), Some(CIDR_IDENTITY_BASE + 5));
        assert_eq!(c.get(&net("10.2.0.0/16")), Some(CIDR_IDENTITY_BASE));
        assert_eq!(c.get(&net("10.3.0.0/16")), Some(CIDR_IDENTITY_BASE + 1));
    }

    proptest! {
        #[test]
        fn keys_round_trip(ns in ".{0,6}", l in proptest::collection::btree_map(".{0,5}", ".{0,5}", 0..4)) {
            let labels = IdentityLabels { namespace: ns, labels: l };
            prop_assert_eq!(IdentityLabels::from_key(&labels.key()).unwrap(), labels);
        }

        /// Numbers are unique, stable for kept prefixes, and always the lowest free ones.
        #[test]
        fn cidr_updates(rounds in proptest::collection::vec(proptest::collection::btree_set((0u8..8, 24u8..=26), 0..6), 1..5)) {
            let mut c = CidrIdentities::default();
            for round in rounds {
                let prefixes: BTreeSet<Ipv4Net> = round.iter().map(|(o, l)| Ipv4Net::new(Ipv4Addr::new(10, 0, *o, 0), *l).unwrap().trunc()).collect();
                let before = c.clone();
                c.update(&prefixes);
                let ids: BTreeSet<u32> = c.iter().map(|(_, id)| id).collect();
                prop_assert_eq!(ids.len(), prefixes.len());
                prop_assert_eq!(c.iter().map(|(p, _)| *p).collect::<BTreeSet<_>>(), prefixes.clone());
                for p in &prefixes {
                    if let Some(old) = before.get(p) {
                        prop_assert_eq!(c.get(p), Some(old));
                    }
                }
                // New prefixes took the lowest numbers kept ones left free.
                let kept: BTreeSet<u32> = prefixes.iter().filter_map(|p| before.get(p)).collect();
                let fresh = prefixes.len() - kept.len();
                let expected: BTreeSet<u32> = (CIDR_IDENTITY_BASE..).filter(|i| !kept.contains(i)).take(fresh).collect();
                prop_assert_eq!(ids.difference(&kept).copied().collect::<BTreeSet<_>>(), expected);
            }
        }
    }
}
