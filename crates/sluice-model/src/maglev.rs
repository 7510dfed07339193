//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size M in
//! which every backend owns almost exactly M/N slots, and a backend change moves few flows.
//! Every node computes the same table from the same backend names, so the same flow picks the
//! same backend whichever node it enters.

use sha2::{Digest, Sha256};

/// Cilium's and sluice's default table size (prime).
pub const DEFAULT_TABLE_SIZE: u32 = 16381;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error("maglev table size {0} is not a prime")]
    NotPrime(u32),
    #[error("maglev table size {size} is smaller than the {backends} backends")]
    TooSmall { size: u32, backends: usize },
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= n as u64 {
        if (n as u64).is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Offset and skip of a backend's permutation, from a stable hash of its name.
fn offset_skip(name: &str, size: u32) -> (u64, u64) {
    let digest = Sha256::digest(name.as_bytes());
    let h1 = u64::from_le_bytes(digest[0..8].try_into().unwrap());
    let h2 = u64::from_le_bytes(digest[8..16].try_into().unwrap());
    let m = size as u64;
    (h1 % m, h2 % (m - 1) + 1)
}

/// The table: slot -> index into `backends`. Empty when there are no backends.
/// `backends` are stable names (e.g. "10.0.1.5:8080"); their order does not matter.
pub fn table(backends: &[String], size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    if backends.len() > size as usize {
        return Err(MaglevError::TooSmall {
            size,
            backends: backends.len(),
        });
    }
    if backends.is_empty() {
        return Ok(Vec::new());
    }
    // Sort so the result depends only on the set of names, not on their order.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by(|a, b| backends[*a].cmp(&backends[*b]));
    let perms: Vec<(u64, u64)> = order
        .iter()
        .map(|i| offset_skip(&backends[*i], size))
        .collect();
    let m = size as u64;
    let mut next = vec![0u64; order.len()];
    let mut entry = vec![u32::MAX; size as usize];
    let mut filled = 0u32;
    // Round robin: each backend claims its next preferred free slot per turn, so slot counts
    // differ by at most one between backends.
    'fill: loop {
        for (turn, (offset, skip)) in perms.iter().enumerate() {
            let mut slot = (offset + next[turn] * skip) % m;
            while entry[slot as usize] != u32::MAX {
                next[turn] += 1;
                slot = (offset + next[turn] * skip) % m;
            }
            entry[slot as usize] = order[turn] as u32;
            next[turn] += 1;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:80", i / 250, i % 250 + 1))
            .collect()
    }

    fn counts(t: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &b in t {
            c[b as usize] += 1;
        }
        c
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(table(&names(2), 16380), Err(MaglevError::NotPrime(16380)));
        assert_eq!(
            table(&names(10), 7),
            Err(MaglevError::TooSmall {
                size: 7,
                backends: 10
            })
        );
        assert!(table(&[], 7).unwrap().is_empty());
        assert!(is_prime(DEFAULT_TABLE_SIZE));
    }

    #[test]
    fn order_of_backends_does_not_matter() {
        let a = names(5);
        let mut b = a.clone();
        b.reverse();
        let ta = table(&a, 251).unwrap();
        let tb = table(&b, 251).unwrap();
        let by_name =
            |t: &[u32], n: &[String]| t.iter().map(|i| n[*i as usize].clone()).collect::<Vec<_>>();
        assert_eq!(by_name(&ta, &a), by_name(&tb, &b));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        /// Every backend owns floor(M/N) or ceil(M/N) slots.
        #[test]
        fn slots_are_balanced(n in 1usize..200) {
            let t = table(&names(n), DEFAULT_TABLE_SIZE).unwrap();
            let c = counts(&t, n);
            let (min, max) = (*c.iter().min().unwrap(), *c.iter().max().unwrap());
            prop_assert!(max - min <= 1, "min {min} max {max}");
        }

        /// Removing one of N backends moves its own slots plus only a little more: the other
        /// backends keep almost all of their flows.
        #[test]
        fn removing_a_backend_disrupts_little(n in 3usize..100, victim in 0usize..100) {
            let victim = victim % n;
            let before_names = names(n);
            let mut after_names = before_names.clone();
            after_names.remove(victim);
            let before = table(&before_names, DEFAULT_TABLE_SIZE).unwrap();
            let after = table(&after_names, DEFAULT_TABLE_SIZE).unwrap();
            let moved_elsewhere = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| **b as usize != victim && before_names[**b as usize] != after_names[**a as usize])
                .count();
            let m = DEFAULT_TABLE_SIZE as f64;
            // Measured here: at most ~1.5% of the table for N <= 100; allow 3%.
            prop_assert!((moved_elsewhere as f64) < m * 0.03,
                "{moved_elsewhere} slots of surviving backends moved (n={n})");
        }
    }
}
