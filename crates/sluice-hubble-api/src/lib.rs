//! Hubble's wire format as sluice speaks it: the `flow` and `observer` protobuf packages and
//! the `observer.Observer` gRPC service (server and client), plus the standard gRPC health
//! service. Field numbers and enum values match Hubble's, so Hubble tooling interoperates.

#[allow(clippy::all, missing_docs)]
pub mod flow {
    tonic::include_proto!("flow");
}

#[allow(clippy::all, missing_docs)]
pub mod observer {
    tonic::include_proto!("observer");
}

pub use prost;
pub use prost_types;
pub use tonic;
pub use tonic_health;

/// The name the health service reports SERVING for, as Hubble's server does.
pub const HEALTH_SERVICE: &str = "hubble.server.Observer";

/// A gRPC channel to a server on a unix socket (the agent's `hubble.sock`).
pub async fn connect_unix(
    path: &std::path::Path,
    timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is only a placeholder: every connection goes to the socket.
    tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}
