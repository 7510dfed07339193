//! Address arithmetic for a node's pod CIDR. Which addresses are taken is the caller's
//! (persistent) business; this only decides which one to hand out next.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Addresses of `cidr` that may go to pods: all but the network and broadcast addresses
/// (for prefixes shorter than /31), so the range looks ordinary to every tool.
pub fn usable(cidr: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let (first, last) = bounds(cidr);
    (first..=last).map(Ipv4Addr::from)
}

pub fn capacity(cidr: Ipv4Net) -> usize {
    let (first, last) = bounds(cidr);
    (last as u64 + 1 - first as u64) as usize
}

fn bounds(cidr: Ipv4Net) -> (u32, u32) {
    let net = u32::from(cidr.network());
    let bcast = u32::from(cidr.broadcast());
    if cidr.prefix_len() >= 31 {
        (net, bcast)
    } else {
        (net + 1, bcast - 1)
    }
}

/// The next free address after `last` (wrapping), so a just-released address is not reused
/// at once: a late packet for a deleted pod must not reach its successor.
pub fn next_free(
    cidr: Ipv4Net,
    taken: &BTreeSet<Ipv4Addr>,
    last: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let (first, end) = bounds(cidr);
    let start = match last {
        Some(l) if cidr.contains(&l) && u32::from(l) >= first && u32::from(l) < end => {
            u32::from(l) + 1
        }
        _ => first,
    };
    (start..=end)
        .chain(first..start)
        .map(Ipv4Addr::from)
        .find(|ip| !taken.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn skips_network_and_broadcast() {
        let all: Vec<_> = usable(net("10.0.0.0/30")).collect();
        assert_eq!(
            all,
            vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
        );
        assert_eq!(capacity(net("10.0.0.0/24")), 254);
        assert_eq!(capacity(net("10.0.0.0/32")), 1);
    }

    #[test]
    fn continues_after_the_last_allocation_and_wraps() {
        let c = net("10.0.0.0/29"); // .1 - .6
        let taken = BTreeSet::from([Ipv4Addr::new(10, 0, 0, 1)]);
        assert_eq!(next_free(c, &taken, None), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(
            next_free(c, &taken, Some(Ipv4Addr::new(10, 0, 0, 3))),
            Some(Ipv4Addr::new(10, 0, 0, 4))
        );
        assert_eq!(
            next_free(c, &taken, Some(Ipv4Addr::new(10, 0, 0, 6))),
            Some(Ipv4Addr::new(10, 0, 0, 2)),
            "wraps past the end and skips the taken .1"
        );
    }

    #[test]
    fn exhausted_pool_yields_none() {
        let c = net("10.0.0.0/30");
        let taken: BTreeSet<_> = usable(c).collect();
        assert_eq!(next_free(c, &taken, None), None);
    }

    proptest! {
        #[test]
        fn never_hands_out_a_taken_or_foreign_address(
            prefix in 24u8..=30,
            taken_bits in proptest::collection::vec(any::<bool>(), 256),
            last in 0u8..=255,
        ) {
            let c = Ipv4Net::new(Ipv4Addr::new(10, 1, 2, 0), prefix).unwrap();
            let taken: BTreeSet<Ipv4Addr> = usable(c)
                .enumerate()
                .filter(|(i, _)| taken_bits[*i % 256])
                .map(|(_, ip)| ip)
                .collect();
            let got = next_free(c, &taken, Some(Ipv4Addr::new(10, 1, 2, last)));
            match got {
                Some(ip) => {
                    prop_assert!(!taken.contains(&ip));
                    prop_assert!(usable(c).any(|u| u == ip));
                }
                None => prop_assert_eq!(taken.len(), capacity(c)),
            }
        }
    }
}
