//! Network namespaces: create/open/delete named ones under /run/netns (the
//! same layout `ip netns` uses, so both tools see each other's namespaces),
//! and run code inside one.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{statfs, NSFS_MAGIC};

use crate::error::{Error, Result};
use crate::NetHandle;

/// Where named namespaces live (iproute2's NETNS_RUN_DIR).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Serialises the "make /run/netns a shared mount" step inside this process
/// so two threads do not both stack a bind mount on it.
static RUN_DIR_LOCK: Mutex<()> = Mutex::new(());

/// A network namespace, named (under /run/netns) or given by path.
///
/// Holds no file descriptor for named/path namespaces (so keeping a `Netns`
/// around does not keep a deleted namespace alive); [`Netns::current`] holds
/// one because `/proc/thread-self` would mean a different thread later.
#[derive(Clone)]
pub struct Netns {
    name: Option<String>,
    path: PathBuf,
    fd: Option<Arc<OwnedFd>>,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netns")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish()
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "netns {n}"),
            None => write!(f, "netns {}", self.path.display()),
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || name.contains(['/', '\0'])
    {
        return Err(Error::InvalidArgument(format!(
            "bad network namespace name {name:?}"
        )));
    }
    Ok(())
}

/// Fail unless `path` exists and is an nsfs file (a bound namespace). A
/// leftover plain file under /run/netns (e.g. after a crash) is not one.
fn check_nsfs(path: &Path) -> Result<()> {
    match statfs(path) {
        Ok(st) if st.filesystem_type() == NSFS_MAGIC => Ok(()),
        Ok(_) => Err(Error::InvalidArgument(format!(
            "{} is not a network namespace (not an nsfs mount)",
            path.display()
        ))),
        Err(Errno::ENOENT) => Err(Error::NotFound(format!(
            "network namespace {}",
            path.display()
        ))),
        Err(e) => Err(Error::nix(format!("statfs {}", path.display()), e)),
    }
}

/// Make /run/netns exist and be a shared mount point, as `ip netns add`
/// does, so namespace bind mounts propagate to other mount namespaces.
fn ensure_run_dir() -> Result<()> {
    let _guard = RUN_DIR_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    fs::create_dir_all(NETNS_RUN_DIR)
        .map_err(|e| Error::io(format!("create {NETNS_RUN_DIR}"), e))?;
    let mut bound = false;
    loop {
        match mount(
            Some("none"),
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet; bind it onto itself once, retry.
            Err(Errno::EINVAL) if !bound => {
                mount(
                    Some(NETNS_RUN_DIR),
                    NETNS_RUN_DIR,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| Error::nix(format!("bind mount {NETNS_RUN_DIR}"), e))?;
                bound = true;
            }
            Err(e) => {
                return Err(Error::nix(
                    format!("make {NETNS_RUN_DIR} a shared mount"),
                    e,
                ))
            }
        }
    }
}

impl Netns {
    /// Create `/run/netns/NAME` like `ip netns add NAME` and bring `lo` up.
    /// `AlreadyExists` if the file is already there.
    pub fn create(name: &str) -> Result<Netns> {
        check_name(name)?;
        ensure_run_dir()?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => {
                    Error::AlreadyExists(format!("network namespace {}", path.display()))
                }
                _ => Error::io(format!("create {}", path.display()), e),
            })?;

        // unshare() changes the calling thread's namespace for good, so do
        // it on a throwaway thread; the bind mount keeps the namespace alive.
        let target = path.clone();
        let made = std::thread::spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::nix("unshare(CLONE_NEWNET)", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| Error::nix(format!("bind mount netns onto {}", target.display()), e))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::InvalidArgument(
                "netns creation thread panicked".into(),
            ))
        });
        if let Err(e) = made {
            let _ = fs::remove_file(&path);
            return Err(e);
        }

        let ns = Netns {
            name: Some(name.to_string()),
            path,
            fd: None,
        };
        if let Err(e) = NetHandle::new(&ns).and_then(|h| h.set_up("lo")) {
            let _ = Netns::delete(name);
            return Err(e);
        }
        Ok(ns)
    }

    /// An existing named namespace (`/run/netns/NAME`); `NotFound` if absent.
    pub fn open(name: &str) -> Result<Netns> {
        check_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        check_nsfs(&path)?;
        Ok(Netns {
            name: Some(name.to_string()),
            path,
            fd: None,
        })
    }

    /// A namespace given by path (e.g. CNI_NETNS, `/proc/PID/ns/net`);
    /// `NotFound` if the path does not exist.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref().to_path_buf();
        check_nsfs(&path)?;
        let name = (path.parent() == Some(Path::new(NETNS_RUN_DIR)))
            .then(|| path.file_name().and_then(|n| n.to_str()).map(String::from))
            .flatten();
        Ok(Netns {
            name,
            path,
            fd: None,
        })
    }

    /// The namespace of the calling thread. Keeps an fd open, so it stays
    /// valid when used from other threads.
    pub fn current() -> Result<Netns> {
        let file = File::open("/proc/thread-self/ns/net")
            .map_err(|e| Error::io("open /proc/thread-self/ns/net", e))?;
        let path = PathBuf::from(format!(
            "/proc/{}/task/{}/ns/net",
            std::process::id(),
            nix::unistd::gettid()
        ));
        Ok(Netns {
            name: None,
            path,
            fd: Some(Arc::new(file.into())),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel's cookie for this namespace: what `bpf_get_netns_cookie()` returns for its
    /// sockets, so BPF events from a socket can be tied back to the namespace (Linux 5.14+).
    pub fn cookie(&self) -> Result<u64> {
        self.run(current_netns_cookie)?
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Unmount and remove `/run/netns/NAME`. Ok if it does not exist. The
    /// namespace itself disappears once nothing else (process, fd) uses it.
    pub fn delete(name: &str) -> Result<()> {
        check_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        match umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (half-created); ENOENT: gone already.
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(Error::nix(format!("umount {}", path.display()), e)),
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
        }
    }

    /// Names under /run/netns, sorted. Empty if the directory is missing.
    pub fn list() -> Result<Vec<String>> {
        let dir = match fs::read_dir(NETNS_RUN_DIR) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("read {NETNS_RUN_DIR}"), e)),
        };
        let mut names = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| Error::io(format!("read {NETNS_RUN_DIR}"), e))?;
            if let Some(n) = entry.file_name().to_str() {
                names.push(n.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Run `f` on a fresh thread that has entered this namespace and return
    /// its value. A panic in `f` is propagated to the caller.
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let fd = self.open_fd()?;
        let what = self.to_string();
        std::thread::scope(|s| {
            let worker = s.spawn(move || -> Result<T> {
                setns(&fd, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::nix(format!("setns into {what}"), e))?;
                drop(fd);
                Ok(f())
            });
            match worker.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// An fd for this namespace, e.g. for `setns` in a child's `pre_exec`,
    /// or for moving a link into it.
    pub fn open_fd(&self) -> Result<OwnedFd> {
        if let Some(fd) = &self.fd {
            return fd
                .try_clone()
                .map_err(|e| Error::io(format!("dup fd of {self}"), e));
        }
        match File::open(&self.path) {
            Ok(f) => Ok(f.into()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NotFound(format!(
                "network namespace {}",
                self.path.display()
            ))),
            Err(e) => Err(Error::io(format!("open {}", self.path.display()), e)),
        }
    }
}

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE of a fresh socket).
pub fn current_netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket/getsockopt/close calls on a descriptor this function owns, with an
    // output buffer of the size passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(Error::io(
                "socket() for SO_NETNS_COOKIE",
                std::io::Error::last_os_error(),
            ));
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(Error::io("getsockopt(SO_NETNS_COOKIE)", err));
        }
        Ok(cookie)
    }
}
