//! Differences between two keyed snapshots: what a reconcile must add, remove and change.

use std::collections::BTreeMap;

#[derive(Debug, PartialEq, Eq)]
pub struct MapDiff<'a, K, V> {
    pub added: Vec<(&'a K, &'a V)>,
    pub removed: Vec<(&'a K, &'a V)>,
    /// (key, old, new)
    pub changed: Vec<(&'a K, &'a V, &'a V)>,
}

impl<K, V> MapDiff<'_, K, V> {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Walks both maps once: cost proportional to their sizes, output only what differs.
pub fn diff_maps<'a, K: Ord, V: PartialEq>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> MapDiff<'a, K, V> {
    let mut d = MapDiff {
        added: vec![],
        removed: vec![],
        changed: vec![],
    };
    // Both iterate in key order: a merge, one key comparison per step instead of a lookup.
    let mut a = old.iter().peekable();
    let mut b = new.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return d,
            (Some(&(k, v)), None) => {
                d.removed.push((k, v));
                a.next();
            }
            (None, Some(&(k, v))) => {
                d.added.push((k, v));
                b.next();
            }
            (Some(&(ka, va)), Some(&(kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    d.removed.push((ka, va));
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    d.added.push((kb, vb));
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        d.changed.push((ka, va, vb));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reports_each_kind_of_change() {
        let old = BTreeMap::from([(1, "a"), (2, "b"), (3, "c")]);
        let new = BTreeMap::from([(2, "b"), (3, "C"), (4, "d")]);
        let d = diff_maps(&old, &new);
        assert_eq!(d.removed, vec![(&1, &"a")]);
        assert_eq!(d.changed, vec![(&3, &"c", &"C")]);
        assert_eq!(d.added, vec![(&4, &"d")]);
    }

    proptest! {
        /// Applying the diff to the old map always yields the new one.
        #[test]
        fn applying_the_diff_reproduces_the_new_map(
            old in proptest::collection::btree_map(0u8..50, 0u8..4, 0..30),
            new in proptest::collection::btree_map(0u8..50, 0u8..4, 0..30),
        ) {
            let d = diff_maps(&old, &new);
            let mut applied = old.clone();
            for (k, _) in &d.removed { applied.remove(*k); }
            for (k, _, v) in &d.changed { applied.insert(**k, **v); }
            for (k, v) in &d.added { applied.insert(**k, **v); }
            prop_assert_eq!(applied, new.clone());
            prop_assert_eq!(d.is_empty(), old == new);
        }
    }
}
