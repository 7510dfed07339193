//! [`NetHandle`]: a blocking netlink client bound to one namespace.
//!
//! A netlink socket acts in the namespace of the thread that created it, so
//! each handle owns a worker thread that `setns`-es into the namespace, runs
//! a current-thread tokio runtime with an rtnetlink connection, and executes
//! requests sent to it over a channel. Callers block on the reply. The worker
//! exits when the last clone of the handle is dropped.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;

use nix::sched::{setns, CloneFlags};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::netns::Netns;

type Job = Box<dyn FnOnce(rtnetlink::Handle) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A netlink handle bound to one network namespace. Cheap to clone; all
/// clones share one worker thread. Blocking: from async code call it inside
/// `tokio::task::spawn_blocking`.
#[derive(Clone)]
pub struct NetHandle {
    tx: mpsc::UnboundedSender<Job>,
    ns: Arc<str>,
}

impl std::fmt::Debug for NetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetHandle").field("ns", &self.ns).finish()
    }
}

impl NetHandle {
    /// A handle acting inside `ns`.
    pub fn new(ns: &Netns) -> Result<NetHandle> {
        Self::spawn(ns.open_fd()?, ns.to_string())
    }

    /// A handle acting in the calling thread's namespace.
    pub fn current() -> Result<NetHandle> {
        let ns = Netns::current()?;
        Self::spawn(ns.open_fd()?, ns.to_string())
    }

    /// Description of the namespace ("netns NAME" / "netns PATH"), for messages.
    pub fn netns_label(&self) -> &str {
        &self.ns
    }

    fn spawn(fd: OwnedFd, label: String) -> Result<NetHandle> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<()>>(1);
        let thread_label = label.clone();
        std::thread::Builder::new()
            .name("sluice-netlink".into())
            .spawn(move || {
                let setup = || -> Result<(tokio::runtime::Runtime, _, _)> {
                    setns(&fd, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| Error::nix(format!("setns into {thread_label}"), e))?;
                    drop(fd);
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| Error::io("build tokio runtime", e))?;
                    // The socket must be created here, after setns.
                    let (conn, handle, _) = rt
                        .block_on(async { rtnetlink::new_connection() })
                        .map_err(|e| Error::io(format!("netlink socket in {thread_label}"), e))?;
                    Ok((rt, conn, handle))
                };
                let (rt, conn, handle) = match setup() {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                rt.block_on(async move {
                    let conn_task = tokio::spawn(conn);
                    while let Some(job) = rx.recv().await {
                        job(handle.clone()).await;
                    }
                    conn_task.abort();
                });
            })
            .map_err(|e| Error::io("spawn netlink worker thread", e))?;
        ready_rx
            .recv()
            .map_err(|_| Error::WorkerGone(label.clone()))??;
        Ok(NetHandle {
            tx,
            ns: label.into(),
        })
    }

    /// Run `f` on the worker and wait for its result.
    pub(crate) fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move |h| {
            Box::pin(async move {
                let _ = tx.send(f(h).await);
            })
        });
        self.tx
            .send(job)
            .map_err(|_| Error::WorkerGone(self.ns.to_string()))?;
        rx.recv()
            .map_err(|_| Error::WorkerGone(self.ns.to_string()))?
    }

    /// "OP in netns X", the context string for errors.
    pub(crate) fn ctx(&self, op: impl std::fmt::Display) -> String {
        format!("{op} in {}", self.ns)
    }
}

/// Positive errno of a netlink error reply, if it is one.
pub(crate) fn nl_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// Kernel interface names: 1..=15 bytes, no '/', ':', whitespace or NUL.
pub(crate) fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "bad interface name {name:?} (1-15 chars, no '/', ':' or spaces)"
        )))
    }
}
