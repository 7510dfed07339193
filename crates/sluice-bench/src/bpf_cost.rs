//! What sluice's datapath costs per packet at N Services, without the rest of the kernel:
//! BPF_PROG_TEST_RUN of `from_container` on a new connection's SYN to the measured frontend
//! (service lookup, backend choice, conntrack, policy), repeated many times.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use sluice_datapath::abi::{ip_to_be, Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service};
use sluice_datapath::testrun::{self, SkbContext};
use sluice_datapath::{Datapath, EndpointInfo};

use crate::arms::{background_services, VIP};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);

/// A datapath pinned in its own bpffs directory, removed on drop.
struct Scratch {
    dp: Datapath,
    pin: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin);
    }
}

fn frontend(
    dp: &mut Datapath,
    rev: u32,
    vip: Ipv4Addr,
    backends: &[(Ipv4Addr, u16)],
    next_backend: &mut u32,
) -> Result<(), String> {
    let lb = dp.lb();
    let key = |slot| Lb4Key {
        address: ip_to_be(vip),
        port: 80u16.to_be(),
        proto: 6,
        slot,
        ..Default::default()
    };
    for (i, (addr, port)) in backends.iter().enumerate() {
        *next_backend += 1;
        let backend = Lb4Backend {
            address: ip_to_be(*addr),
            port: port.to_be(),
            proto: 6,
            flags: 0,
        };
        lb.set_backend(*next_backend, backend)
            .map_err(|e| e.to_string())?;
        let slot = Lb4Service {
            backend_id: *next_backend,
            ..Default::default()
        };
        lb.set_slot(key(i as u16 + 1), slot)
            .map_err(|e| e.to_string())?;
    }
    let head = Lb4Service {
        count: backends.len() as u16,
        rev_nat_id: rev,
        ..Default::default()
    };
    lb.set_slot(key(0), head).map_err(|e| e.to_string())?;
    let revnat = Lb4RevNat {
        address: ip_to_be(vip),
        port: 80u16.to_be(),
        pad: 0,
    };
    lb.set_revnat(rev, revnat).map_err(|e| e.to_string())
}

/// Ethernet + IPv4 + TCP SYN from the client to VIP:80 with valid checksums.
fn syn() -> Vec<u8> {
    fn csum(b: &[u8]) -> u16 {
        let mut s: u32 = b
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }
    let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&CLIENT.octets());
    ip.extend_from_slice(&VIP.octets());
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut tcp = vec![
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];
    let mut pseudo = ip[12..20].to_vec();
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let c = csum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&[0x08, 0x00]);
    p.extend_from_slice(&ip);
    p.extend_from_slice(&tcp);
    p
}

/// A datapath with N background Services programmed, ready to run `from_container` on.
struct Loaded {
    services: usize,
    scratch: Scratch,
}

/// Loads a datapath (pin directory `<prefix>bpf<N>` under /sys/fs/bpf) with N background
/// Services, each with its own two backends, plus the measured frontend.
fn load(n: usize, prefix: &str) -> Result<Loaded, String> {
    sluice_datapath::features::ensure_bpffs(std::path::Path::new("/sys/fs/bpf"))
        .map_err(|e| e.to_string())?;
    let pin = PathBuf::from(format!("/sys/fs/bpf/{prefix}bpf{n}"));
    // Every background Service has its own two backends here: size the maps for N.
    let defaults = sluice_datapath::MapSizes::default();
    let sizes = sluice_datapath::MapSizes {
        lb_slots: defaults
            .lb_slots
            .max((3 * n as u32 + 64).next_power_of_two()),
        backends: defaults
            .backends
            .max((2 * n as u32 + 64).next_power_of_two()),
        ..defaults
    };
    let dp = Datapath::load_with_sizes(&pin, &sizes)
        .map_err(|e| format!("loading the datapath: {e}"))?;
    let mut s = Scratch { dp, pin };
    let client = EndpointInfo {
        ifindex: 1,
        ..Default::default()
    };
    s.dp.upsert_endpoint(CLIENT, client)
        .map_err(|e| e.to_string())?;
    let mut next_backend = 0;
    for (i, sp) in background_services(n).iter().enumerate() {
        frontend(
            &mut s.dp,
            i as u32 + 2,
            sp.cluster_ip,
            &sp.endpoints,
            &mut next_backend,
        )?;
    }
    let backends: Vec<(Ipv4Addr, u16)> = (0..3)
        .map(|i| (Ipv4Addr::new(10, 250, i + 1, 2), 8080))
        .collect();
    frontend(&mut s.dp, 1, VIP, &backends, &mut next_backend)?;
    Ok(Loaded {
        services: n,
        scratch: s,
    })
}

impl Loaded {
    /// Mean nanoseconds per run over `repeat` runs of the SYN.
    fn batch(&mut self, repeat: u32) -> Result<f64, String> {
        let ctx = SkbContext {
            ifindex: 1,
            ..Default::default()
        };
        let program = self
            .scratch
            .dp
            .program(sluice_datapath::FROM_CONTAINER)
            .map_err(|e| e.to_string())?;
        let r = testrun::run("from_container", program, &syn(), Some(ctx), repeat.max(1))
            .map_err(|e| e.to_string())?;
        if r.retval != testrun::TC_ACT_OK {
            return Err(format!(
                "from_container answered {} (expected TC_ACT_OK)",
                r.retval
            ));
        }
        Ok(r.duration_ns as f64)
    }
}

/// Batches the runs at each number of Services are split into.
pub const BATCHES: u32 = 5;

/// Nanoseconds per run of `from_container` at each of `ns` background Services. Every N's
/// datapath is loaded first; after a warm-up (caches, conntrack), the `repeat` runs per N go
/// in batches taken in turn across all N, so every N sees the same moments of a shared
/// machine, and the fastest batch is each N's cost (interference only ever adds time).
pub fn ns_per_packet(
    ns: &[usize],
    repeat: u32,
    prefix: &str,
    progress: &dyn Fn(&str),
) -> Result<Vec<(usize, f64)>, String> {
    let mut loaded = Vec::new();
    for &n in ns {
        progress(&format!("BPF_PROG_TEST_RUN: loading {n} services"));
        loaded.push(load(n, prefix)?);
    }
    for l in &mut loaded {
        l.batch(repeat / 10)?;
    }
    let mut fastest = vec![f64::INFINITY; loaded.len()];
    for round in 0..BATCHES {
        progress(&format!(
            "BPF_PROG_TEST_RUN: batch {}/{BATCHES} at every N ({} runs each)",
            round + 1,
            repeat / BATCHES
        ));
        for (l, best) in loaded.iter_mut().zip(fastest.iter_mut()) {
            *best = best.min(l.batch(repeat / BATCHES)?);
        }
    }
    Ok(loaded.iter().map(|l| l.services).zip(fastest).collect())
}
