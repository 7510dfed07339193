//! cgroup v2 directories for the lab's processes, and killing them all with `cgroup.kill`.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup2 mount point from /proc/mounts (e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified).
pub fn find_cgroup2() -> io::Result<Option<PathBuf>> {
    Ok(parse_mounts(&fs::read_to_string("/proc/mounts")?))
}

fn parse_mounts(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_src, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape(dir)))
    })
}

/// /proc/mounts escapes spaces and friends as octal (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts a cgroup2 hierarchy at `dir` (used when the machine has none mounted).
pub fn mount_cgroup2(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    nix::mount::mount(
        Some("none"),
        dir,
        Some("cgroup2"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(io::Error::from)
}

pub fn unmount(dir: &Path) -> io::Result<()> {
    match nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// An open `cgroup.procs` of `cgroup`: a child writes "0" to it before exec to join.
pub fn procs_fd(cgroup: &Path) -> io::Result<OwnedFd> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))?;
    Ok(f.into())
}

/// Pids directly in `cgroup` (not its children).
pub fn procs(cgroup: &Path) -> io::Result<Vec<u32>> {
    match fs::read_to_string(cgroup.join("cgroup.procs")) {
        Ok(t) => Ok(t.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Whether any process is in `cgroup` or below (`cgroup.events`).
pub fn populated(cgroup: &Path) -> io::Result<bool> {
    match fs::read_to_string(cgroup.join("cgroup.events")) {
        Ok(t) => Ok(t.lines().any(|l| l.trim() == "populated 1")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every cgroup directory at and below `cgroup`, deepest first.
fn tree(cgroup: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(dir) = fs::read_dir(cgroup) {
        for e in dir.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(tree(&e.path()));
            }
        }
    }
    out.push(cgroup.to_path_buf());
    out
}

/// Kills every process at and below `cgroup`, waits until none is left, removes the directories.
/// Ok when `cgroup` does not exist.
pub fn kill_and_remove(cgroup: &Path, timeout: Duration) -> Result<(), String> {
    if !cgroup.exists() {
        return Ok(());
    }
    kill(cgroup, timeout)?;
    for dir in tree(cgroup) {
        if let Err(e) = fs::remove_dir(&dir) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(format!("remove cgroup {}: {e}", dir.display()));
            }
        }
    }
    Ok(())
}

/// Kills every process at and below `cgroup` and waits until none is left.
pub fn kill(cgroup: &Path, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while populated(cgroup).map_err(|e| format!("read {}/cgroup.events: {e}", cgroup.display()))? {
        match fs::write(cgroup.join("cgroup.kill"), "1") {
            Ok(()) => {}
            // Kernels before 5.14 have no cgroup.kill: signal each process.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                for dir in tree(cgroup) {
                    for pid in procs(&dir).unwrap_or_default() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            Err(e) => return Err(format!("write {}/cgroup.kill: {e}", cgroup.display())),
        }
        if Instant::now() > deadline {
            let left: Vec<u32> = tree(cgroup)
                .iter()
                .flat_map(|d| procs(d).unwrap_or_default())
                .collect();
            return Err(format!(
                "processes {left:?} in cgroup {} survived SIGKILL for {timeout:?}",
                cgroup.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid =
            "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(
            parse_mounts(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"),
            Some("/sys/fs/cgroup".into())
        );
        assert_eq!(
            parse_mounts("none /a\\040b cgroup2 rw 0 0\n"),
            Some("/a b".into())
        );
        assert_eq!(parse_mounts("tmpfs /tmp tmpfs rw 0 0\n"), None);
    }
}
