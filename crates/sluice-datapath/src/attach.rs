//! Attaching tc programs with TCX links pinned in bpffs: the links (and so the datapath) outlive
//! the agent, and a restarted agent swaps its fresh programs in atomically.

use std::io;
use std::path::Path;

use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::sys::SyscallError;

use crate::error::{Error, Result};

/// Attaches `prog` to `ifname` in `direction`, reusing the link pinned at `pin` when there is
/// one (atomic program replacement), and pins a new link otherwise.
pub fn attach_pinned(
    program: &'static str,
    prog: &mut SchedClassifier,
    ifname: &str,
    attach_type: TcAttachType,
    pin: &Path,
) -> Result<()> {
    let fail = |reason: String| Error::Attach {
        program,
        ifname: ifname.to_string(),
        reason,
    };
    match PinnedLink::from_pin(pin) {
        Ok(old) => {
            let link: SchedClassifierLink = FdLink::from(old).try_into().map_err(|e| {
                fail(format!(
                    "pinned link {} is not a tc link: {e}",
                    pin.display()
                ))
            })?;
            match prog.attach_to_link(link) {
                // The pin still names the same kernel link, now running the new program.
                Ok(_) => return Ok(()),
                Err(e) => {
                    // The device behind the link is gone or the link is defunct: start over.
                    tracing::warn!(ifname, pin = %pin.display(), error = %e, "replacing stale pinned link");
                    remove_pin(pin)?;
                }
            }
        }
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(format!("opening pinned link {}: {e}", pin.display()))),
    }
    let id = prog
        .attach_with_options(
            ifname,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| fail(e.to_string()))?;
    let link = prog.take_link(id).map_err(|e| fail(e.to_string()))?;
    let fd_link: FdLink = link
        .try_into()
        .map_err(|e| fail(format!("not a TCX link: {e}")))?;
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::PinnedLink {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    fd_link
        .pin(pin)
        .map_err(|e| fail(format!("pinning link at {}: {e}", pin.display())))?;
    Ok(())
}

/// Removing the last reference to a TCX link detaches its program.
pub fn remove_pin(pin: &Path) -> Result<bool> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::PinnedLink {
            path: pin.to_path_buf(),
            source,
        }),
    }
}
