//! Helpers shared by the datapath's root tests.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use sluice_datapath::testrun::{self, SkbContext};
use sluice_datapath::Datapath;

/// Root tests run for real in CI; elsewhere they skip loudly instead of failing.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test needs root (BPF), and CI=true forbids skipping it");
    }
    eprintln!("SKIP: not root; this test needs BPF privileges");
    false
}

/// A datapath pinned in a unique directory that is removed on drop.
pub struct TestDatapath {
    pub dp: Datapath,
    pub pin: PathBuf,
}

impl TestDatapath {
    pub fn load() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        sluice_datapath::features::ensure_bpffs(std::path::Path::new("/sys/fs/bpf")).unwrap();
        let pin = PathBuf::from(format!(
            "/sys/fs/bpf/sluice-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let dp = Datapath::load(&pin).expect("datapath loads");
        Self { dp, pin }
    }
}

impl Drop for TestDatapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin);
    }
}

/// The Internet checksum of `bytes` (0 when a header including its checksum is intact).
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Runs `program` once on `packet` as if on loopback (ifindex 1).
pub fn run(t: &mut TestDatapath, program: &'static str, packet: &[u8]) -> testrun::TestRun {
    let ctx = SkbContext {
        ifindex: 1,
        ..Default::default()
    };
    testrun::run(
        program,
        t.dp.program(program).unwrap(),
        packet,
        Some(ctx),
        1,
    )
    .unwrap()
}

const TCP: u8 = 6;
const UDP: u8 = 17;

/// Ethernet + IPv4 + TCP/UDP with correct checksums.
pub fn packet(
    proto: u8,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    tcp_flags: u8,
    udp_csum: bool,
) -> Vec<u8> {
    let payload = b"ping";
    let l4_len = if proto == TCP { 20 } else { 8 } + payload.len();
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    if proto == TCP {
        l4.extend_from_slice(&[
            0, 0, 0, 1, 0, 0, 0, 0, 0x50, tcp_flags, 0xff, 0xff, 0, 0, 0, 0,
        ]);
    } else {
        l4.extend_from_slice(&(l4_len as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    if proto == TCP || udp_csum {
        let c = l4_checksum(&ip, &l4);
        let off = if proto == TCP { 16 } else { 6 };
        l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    }
    p.extend_from_slice(&ip);
    p.extend_from_slice(&l4);
    p
}

pub fn l4_checksum(ip: &[u8], l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    let mut both = pseudo;
    both.extend_from_slice(l4);
    checksum(&both)
}

pub struct Parsed {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub ip_ok: bool,
    pub l4_ok: bool,
    pub l4_csum: u16,
    pub ttl: u8,
}

pub fn parse(p: &[u8]) -> Parsed {
    let ip = &p[14..34];
    let l4 = &p[34..];
    let addr = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
    let port = |o: usize| u16::from_be_bytes([l4[o], l4[o + 1]]);
    let off = if ip[9] == TCP { 16 } else { 6 };
    let l4_csum = u16::from_be_bytes([l4[off], l4[off + 1]]);
    Parsed {
        src: (addr(12), port(0)),
        dst: (addr(16), port(2)),
        ip_ok: checksum(ip) == 0,
        l4_ok: (ip[9] == UDP && l4_csum == 0) || l4_checksum(ip, l4) == 0,
        l4_csum,
        ttl: ip[8],
    }
}

/// Frontend `vip`:80/TCP with one backend, `backend`:8080 (backend id 1, rev-NAT id 1).
pub fn one_backend_service(t: &mut TestDatapath, vip: Ipv4Addr, backend: Ipv4Addr) {
    use sluice_datapath::abi::{ip_to_be, Lb4Backend, Lb4Key, Lb4RevNat, Lb4Service};
    let lb = t.dp.lb();
    let backend = Lb4Backend {
        address: ip_to_be(backend),
        port: 8080u16.to_be(),
        proto: TCP,
        flags: 0,
    };
    lb.set_backend(1, backend).unwrap();
    let slot = |slot| Lb4Key {
        address: ip_to_be(vip),
        port: 80u16.to_be(),
        proto: TCP,
        slot,
        ..Default::default()
    };
    let head = Lb4Service {
        count: 1,
        rev_nat_id: 1,
        ..Default::default()
    };
    lb.set_slot(slot(0), head).unwrap();
    let first = Lb4Service {
        backend_id: 1,
        ..Default::default()
    };
    lb.set_slot(slot(1), first).unwrap();
    let revnat = Lb4RevNat {
        address: ip_to_be(vip),
        port: 80u16.to_be(),
        pad: 0,
    };
    lb.set_revnat(1, revnat).unwrap();
}
