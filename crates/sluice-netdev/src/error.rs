//! The crate's error type. Every message names the device, namespace or
//! address involved so a log line is enough to act on.

use std::io;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Errors from namespace and netlink operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something that must exist does not: a namespace, a link, a route.
    /// The string says what, e.g. `network namespace /var/run/netns/x`.
    #[error("{0} not found")]
    NotFound(String),

    /// Something that must not exist yet already does.
    #[error("{0} already exists")]
    AlreadyExists(String),

    /// Bad caller input (interface name too long, bad sysctl key...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The kernel rejected a netlink request. `errno` is positive (e.g. 22 for EINVAL).
    #[error("{op}: {message} (errno {errno})")]
    Netlink {
        op: String,
        errno: i32,
        message: String,
    },

    /// A system call or file operation failed.
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },

    /// The namespace worker thread of a [`crate::NetHandle`] is gone
    /// (it could not enter its namespace, or panicked).
    #[error("netlink worker for {0} is not running")]
    WorkerGone(String),
}

impl Error {
    /// Positive errno of the underlying failure, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::AlreadyExists(_))
    }

    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn nix(op: impl Into<String>, errno: nix::errno::Errno) -> Error {
        Error::io(op, io::Error::from_raw_os_error(errno as i32))
    }

    /// Convert an rtnetlink error, mapping EEXIST / ENODEV to the
    /// structured variants so callers can match on them.
    pub(crate) fn netlink(op: impl Into<String>, err: rtnetlink::Error) -> Error {
        let op = op.into();
        match err {
            rtnetlink::Error::NetlinkError(msg) => {
                let errno = msg.raw_code().abs();
                match errno {
                    libc::EEXIST => Error::AlreadyExists(op),
                    libc::ENODEV => Error::NotFound(op),
                    _ => Error::Netlink {
                        op,
                        errno,
                        message: msg.to_io().to_string(),
                    },
                }
            }
            other => Error::Netlink {
                op,
                errno: 0,
                message: other.to_string(),
            },
        }
    }
}
