//! The agent API on a unix socket: one JSON request line in, one JSON response line out.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;

use anyhow::Context;
use sluice_api::{ApiError, ErrorKind, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

use crate::core::Command;

/// Larger requests are refused: a GC list of 100k attachments still fits.
const MAX_REQUEST: usize = 16 << 20;

/// Binds the socket root-only: the parent directory 0700 (when we create it), the socket 0600.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()))
        }
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, core: mpsc::Sender<Command>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let core = core.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, core).await {
                        tracing::debug!(error = %e, "API connection");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "accepting API connection"),
        }
    }
}

async fn handle(stream: UnixStream, core: mpsc::Sender<Command>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::Error(ApiError::new(
            ErrorKind::InvalidArgument,
            format!("unreadable request: {e}"),
        )),
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            if core.send(Command::Api(request, tx)).is_err() {
                Response::Error(ApiError::new(
                    ErrorKind::Unavailable,
                    "agent is shutting down",
                ))
            } else {
                rx.await.unwrap_or_else(|_| {
                    Response::Error(ApiError::new(
                        ErrorKind::Internal,
                        "agent dropped the request",
                    ))
                })
            }
        }
    };
    let mut out = serde_json::to_vec(&response).expect("responses serialize");
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}
