//! Finding the sluice binaries the lab runs.

use std::path::{Path, PathBuf};

use crate::error::{LabError, Result};

pub const SLUICE: &str = "sluice";
pub const AGENT: &str = "sluice-agent";
pub const CNI: &str = "sluice-cni";
/// Where Debian's containernetworking-plugins live (for extra chained plugins).
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

/// The directory holding `sluice`, `sluice-agent` and `sluice-cni`: `explicit`, else env
/// `SLUICE_BIN_DIR`, else the directory of the running executable. Fails naming what is missing.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    let dir = match explicit {
        Some(d) => d.to_path_buf(),
        None => match std::env::var_os("SLUICE_BIN_DIR").filter(|v| !v.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from(".")),
        },
    };
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let missing: Vec<String> = [SLUICE, AGENT, CNI]
        .into_iter()
        .filter(|b| !is_executable(&dir.join(b)))
        .map(String::from)
        .collect();
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(LabError::Binaries { dir, missing })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_missing_binary() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SLUICE), "").unwrap();
        let err = locate(Some(dir.path())).unwrap_err().to_string();
        assert!(
            err.contains("sluice-agent") && err.contains("sluice-cni"),
            "{err}"
        );
        assert!(
            err.contains(&dir.path().canonicalize().unwrap().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn finds_a_complete_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for b in [SLUICE, AGENT, CNI] {
            let p = dir.path().join(b);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert_eq!(
            locate(Some(dir.path())).unwrap(),
            dir.path().canonicalize().unwrap()
        );
    }
}
