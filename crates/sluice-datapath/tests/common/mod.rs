//! Helpers shared by the datapath's root tests.

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
