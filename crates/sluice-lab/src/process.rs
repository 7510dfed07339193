//! Starting the lab's processes inside a network namespace and a cgroup, and watching them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where a child goes before it execs.
pub struct Placement {
    /// Network namespace to `setns` into.
    pub netns: OwnedFd,
    /// `cgroup.procs` of the cgroup to join.
    pub cgroup_procs: Option<OwnedFd>,
    /// Start a new session (detach from the terminal and the caller's process group).
    pub setsid: bool,
}

/// Configures `cmd` so the child joins the cgroup, enters the namespace and (optionally) starts
/// a new session before exec. Only async-signal-safe calls run in the child.
pub fn place(cmd: &mut Command, placement: Placement) {
    let Placement {
        netns,
        cgroup_procs,
        setsid,
    } = placement;
    // SAFETY: the closure only calls write(2), setns(2) and setsid(2) on descriptors opened
    // before fork and owned by the closure; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = &cgroup_procs {
                if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if setsid && libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Reaps `child` on a background thread so a long-lived caller (a test) keeps no zombies.
pub fn reap_in_background(mut child: Child) {
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}

/// True when `pid` exists and is not a zombie. When `cgroup` (a path relative to the cgroup2
/// root, e.g. `/sluice-lab-demo/node-a/agent`) is given, the process must also be in it, which
/// guards against a recycled pid.
pub fn alive(pid: u32, cgroup: Option<&str>) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    match cgroup {
        None => true,
        Some(cg) => std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|t| t.lines().any(|l| l.strip_prefix("0::") == Some(cg)))
            .unwrap_or(false),
    }
}

pub fn signal(pid: u32, sig: Signal) -> io::Result<()> {
    match kill(Pid::from_raw(pid as i32), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Waits until `check` is true or `timeout` passes; true when it became true.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The cgroup path of `dir` as /proc/PID/cgroup shows it (relative to the cgroup2 root).
pub fn cgroup_rel(root: &Path, dir: &Path) -> Option<String> {
    dir.strip_prefix(root)
        .ok()
        .map(|r| format!("/{}", r.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_bogus_pid_is_not() {
        assert!(alive(std::process::id(), None));
        assert!(!alive(u32::MAX - 1, None));
        assert!(!alive(std::process::id(), Some("/no/such/cgroup")));
    }

    #[test]
    fn cgroup_paths_relative_to_the_root() {
        assert_eq!(
            cgroup_rel(
                Path::new("/sys/fs/cgroup/unified"),
                Path::new("/sys/fs/cgroup/unified/a/b")
            ),
            Some("/a/b".into())
        );
    }

    /// Root only: a child lands in the namespace and cgroup, and cgroup.kill removes it.
    #[test]
    fn placement_and_cgroup_kill() {
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "this test needs root under CI"
            );
            eprintln!("SKIP placement_and_cgroup_kill: needs root");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let root = crate::cgroup::find_cgroup2()
            .unwrap()
            .expect("a cgroup2 mount");
        let tag = format!("unit-{}", std::process::id());
        let cg = root
            .join(format!("sluice-lab-{tag}"))
            .join("n")
            .join("agent");
        std::fs::create_dir_all(&cg).unwrap();
        let ns_name = format!("sluice.{tag}.node.n");
        let ns = sluice_netdev::Netns::create(&ns_name).unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        place(
            &mut cmd,
            Placement {
                netns: ns.open_fd().unwrap(),
                cgroup_procs: Some(crate::cgroup::procs_fd(&cg).unwrap()),
                setsid: true,
            },
        );
        let child = cmd.spawn().unwrap();
        let pid = child.id();
        reap_in_background(child);
        let rel = cgroup_rel(&root, &cg).unwrap();
        assert!(alive(pid, Some(&rel)), "child {pid} is not in {rel}");
        let child_ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .ino();
        assert_eq!(
            child_ns,
            std::fs::metadata(ns.path()).unwrap().ino(),
            "child is in another netns"
        );
        let top = root.join(format!("sluice-lab-{tag}"));
        crate::cgroup::kill_and_remove(&top, Duration::from_secs(5)).unwrap();
        assert!(!top.exists());
        assert!(
            wait_until(Duration::from_secs(5), || !alive(pid, None)),
            "child {pid} survived"
        );
        sluice_netdev::Netns::delete(&ns_name).unwrap();
    }
}
