//! Per-namespace sysctls. /proc/sys/net resolves against the network
//! namespace of the thread that opens it, so the file I/O runs on a thread
//! inside `ns` (via [`Netns::run`]).

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::netns::Netns;

/// `/proc/sys/KEY`. KEY is slash-separated (`net/ipv4/conf/eth0/rp_filter`),
/// or dot-separated like sysctl(8) when it contains no '/' (then an
/// interface name must not contain '.').
fn sysctl_path(key: &str) -> Result<PathBuf> {
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    let bad = rel.is_empty()
        || rel.contains('\0')
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::InvalidArgument(format!("bad sysctl key {key:?}")));
    }
    Ok(PathBuf::from("/proc/sys").join(rel))
}

/// Write `value` to sysctl `key` inside `ns`, then read it back and fail if
/// the kernel did not take it.
pub fn sysctl_set(ns: &Netns, key: &str, value: &str) -> Result<()> {
    let path = sysctl_path(key)?;
    let got = ns.run(|| -> Result<String> {
        std::fs::write(&path, value)
            .map_err(|e| Error::io(format!("write {value:?} to {} in {ns}", path.display()), e))?;
        std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("read {} in {ns}", path.display()), e))
    })??;
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    if norm(&got) != norm(value) {
        return Err(Error::InvalidArgument(format!(
            "sysctl {key} in {ns}: wrote {value:?} but it reads back {:?}",
            got.trim()
        )));
    }
    Ok(())
}

/// Read sysctl `key` inside `ns` (trailing newline removed).
pub fn sysctl_get(ns: &Netns, key: &str) -> Result<String> {
    let path = sysctl_path(key)?;
    let got = ns.run(|| {
        std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::NotFound(format!("sysctl {} in {ns}", path.display()))
            }
            _ => Error::io(format!("read {} in {ns}", path.display()), e),
        })
    })??;
    Ok(got.trim_end_matches('\n').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        for bad in ["", "net/../../etc/passwd", "/net/ipv4", "net//x", "net.."] {
            assert!(sysctl_path(bad).is_err(), "{bad}");
        }
    }
}
