//! The listeners: the local unix socket (the `Control` service for local
//! operators; file permissions are the authority) and the TLS port (every
//! service, each method checking the caller's certificate).

use std::path::Path;
use std::sync::Arc;

use shoal_proto::v1::ca_server::CaServer;
use shoal_proto::v1::control_server::ControlServer;
use shoal_proto::v1::dispatcher_server::DispatcherServer;
use shoal_proto::v1::raft_server::RaftServer;
use tokio_util::sync::CancellationToken;

use super::{Agent, NodeError};
use crate::manager::ca_service::CaService;
use crate::manager::control::ControlService;
use crate::manager::dispatcher_service::DispatcherService;
use crate::manager::raft_service::RaftService;
use crate::pki::tls::NodeTls;
use crate::raft::network::MAX_RAFT_MESSAGE;

/// Largest message on the operator API: a full store copy is chunked, so
/// this only bounds single requests and answers (a big `service ps`).
const MAX_CONTROL_MESSAGE: usize = 64 * 1024 * 1024;

fn control(agent: &Arc<Agent>) -> ControlServer<ControlService> {
    ControlServer::new(ControlService {
        agent: agent.clone(),
    })
    .max_decoding_message_size(MAX_CONTROL_MESSAGE)
    .max_encoding_message_size(MAX_CONTROL_MESSAGE)
}

/// Serves the local control socket until `shutdown`.
/// Listens on the control socket, replacing a stale one a crash left.
/// Separate from [`serve_unix`] so the service manager hears "ready" only
/// once `shoal` can connect.
pub async fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("creating the socket directory {}: {e}", dir.display()))?;
    }
    if path.exists() {
        // A socket nobody answers on is a leftover from a crash.
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(format!(
                "another shoald is already listening on {}: stop it or use --socket",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("removing the stale socket {}: {e}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("listening on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("restricting {}: {e}", path.display()))?;
    tracing::info!(socket = %path.display(), "control socket ready");
    Ok(listener)
}

/// Serves the control API on `listener` until `shutdown`, then removes the
/// socket file.
///
/// Plain HTTP/2 in front of the one service the socket carries: tonic's
/// server would add a router, boxed layers and connect info to every call
/// (about a tenth of a small write's cost at the leader, a quarter of a
/// read's), and the socket needs none of them: file permissions are its
/// only authority.
pub async fn serve_unix(
    agent: Arc<Agent>,
    listener: tokio::net::UnixListener,
    path: &Path,
    shutdown: CancellationToken,
) -> Result<(), String> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let service = TowerToHyperService::new(control(&agent));
    let mut connections = tokio::task::JoinSet::new();
    let result = loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, or a client gone before it was
                // accepted: the listener itself is fine.
                Err(e) if is_transient_accept_error(&e) => {
                    tracing::warn!(error = %e, "accepting a control connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => break Err(format!("control socket: {e}")),
            },
            () = shutdown.cancelled() => break Ok(()),
        };
        while connections.try_join_next().is_some() {}
        let service = service.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
            // gRPC clients read no `date` header; without it each response
            // is one header fewer to format and compress.
            builder
                .http2()
                .timer(TokioTimer::new())
                .auto_date_header(false);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = shutdown.cancelled() => {
                    // Calls under way finish; no new ones start.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    };
    // A client holding a stream open does not hold up the stop for long.
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(CONTROL_DRAIN, drained).await.is_err() {
        tracing::info!(
            open = connections.len(),
            "closing control connections still open after {CONTROL_DRAIN:?}"
        );
        connections.shutdown().await;
    }
    let _ = std::fs::remove_file(path);
    result
}

/// How long a stopping agent waits for control calls under way.
const CONTROL_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Accept errors that concern one connection or a passing shortage, not the
/// listening socket.
fn is_transient_accept_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Fails early, with a clear message, when `addr` cannot be listened on.
pub async fn check_bindable(addr: &str) -> Result<(), NodeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map(drop)
        .map_err(|e| NodeError::Invalid(format!("cannot listen on {addr}: {e}")))
}

/// Starts the TLS listener on `addr`; it runs until `shutdown`.
pub async fn spawn_tcp(
    agent: Arc<Agent>,
    addr: &str,
    tls: Arc<NodeTls>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "cluster port ready");
    let incoming = crate::pki::tls::incoming(listener, tls.server_config());
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(control(&agent))
        .add_service(
            RaftServer::new(RaftService {
                agent: agent.clone(),
            })
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE),
        )
        .add_service(
            DispatcherServer::new(DispatcherService {
                agent: agent.clone(),
            })
            .max_decoding_message_size(MAX_CONTROL_MESSAGE)
            .max_encoding_message_size(MAX_CONTROL_MESSAGE),
        )
        .add_service(CaServer::new(CaService { agent }));
    tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
            .await
        {
            tracing::error!(error = %e, "cluster port stopped");
        }
    });
    Ok(())
}
