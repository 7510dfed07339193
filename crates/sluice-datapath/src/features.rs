//! What the datapath needs from the kernel, checked up front so a missing piece fails with its
//! name instead of an errno deep inside a load.

use std::path::Path;

use crate::error::{Error, Result};

/// bpffs magic number from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Fails naming the first missing feature: BTF, TCX (kernel >= 6.6), bpf() itself.
pub fn check() -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(Error::MissingFeature {
            feature: "BTF",
            hint: "/sys/kernel/btf/vmlinux is absent; a kernel built with CONFIG_DEBUG_INFO_BTF is needed".into(),
        });
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    if !kernel_at_least(&release, 6, 6) {
        return Err(Error::MissingFeature {
            feature: "TCX",
            hint: format!(
                "kernel {release} is older than 6.6; sluice attaches tc programs with TCX links"
            ),
        });
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::MissingFeature {
            feature: "CAP_BPF/CAP_NET_ADMIN",
            hint: "sluice-agent must run as root".into(),
        });
    }
    Ok(())
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let got_major: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let got_minor: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (got_major, got_minor) >= (major, minor)
}

/// Mounts bpffs on `root` (normally /sys/fs/bpf) unless one is already there.
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    let err = |source| Error::Bpffs {
        path: root.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(root).map_err(err)?;
    if is_bpffs(root) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| err(std::io::Error::from(e)))?;
    Ok(())
}

pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// The first cgroup v2 mount point, from /proc/self/mounts.
pub fn cgroup2_root() -> Result<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| std::path::PathBuf::from(dir))
        })
        .next()
        .ok_or(Error::MissingFeature {
            feature: "cgroup2",
            hint: "no cgroup v2 hierarchy is mounted; socket-LB needs one (or set socketLb: false)"
                .into(),
        })
}

#[cfg(test)]
mod tests {
    use super::kernel_at_least;

    #[test]
    fn kernel_versions_compare_numerically() {
        assert!(kernel_at_least("6.18.44-fc-v445", 6, 6));
        assert!(kernel_at_least("6.6.0", 6, 6));
        assert!(!kernel_at_least("6.5.13-generic", 6, 6));
        assert!(!kernel_at_least("5.15.0", 6, 6));
        assert!(!kernel_at_least("garbage", 6, 6));
    }
}
