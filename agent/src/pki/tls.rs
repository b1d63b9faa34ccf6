//! Mutual TLS for every TCP connection.
//!
//! [`NodeTls`] holds the node's certificate, key and trusted roots behind
//! swappable references: the rustls configs it hands out resolve them on
//! every handshake, so renewal and root rotation need no restart and no
//! new channels.
//!
//! Servers accept clients without a certificate (a joining node has none
//! yet); each gRPC method decides from [`TlsConnectInfo`] whether that is
//! allowed.

use std::net::SocketAddr;
use std::sync::Arc;

use super::PkiError;
use super::identity::{CertInfo, Identity};
use crate::secret::Secret;

pub struct NodeTls {
    _private: (),
}

impl NodeTls {
    pub fn new(root_ca_pem: &str, cert_pem: &str, key_pem: &Secret) -> Result<Arc<Self>, PkiError> {
        let _ = (root_ca_pem, cert_pem, key_pem);
        todo!()
    }

    /// Replaces the certificate and key (renewal, role change).
    pub fn set_certificate(&self, cert_pem: &str, key_pem: &Secret) -> Result<(), PkiError> {
        let _ = (cert_pem, key_pem);
        todo!()
    }

    /// Replaces the trusted roots (root rotation: old and new both trusted
    /// for a while). PEM may hold several certificates.
    pub fn set_roots(&self, roots_pem: &str) -> Result<(), PkiError> {
        let _ = roots_pem;
        todo!()
    }

    pub fn certificate(&self) -> CertInfo {
        todo!()
    }

    pub fn identity(&self) -> Identity {
        self.certificate().identity
    }

    /// Server side: presents the node certificate; verifies client
    /// certificates against the roots when one is offered; ALPN h2.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        todo!()
    }

    /// Client side: presents the node certificate; verifies the server
    /// against the roots and the given DNS name; ALPN h2.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        todo!()
    }
}

/// A client config with no certificate. With `root_ca_pem` it trusts only
/// that root; without, it accepts any server certificate — only for fetching
/// the root CA during join, which is then checked against the token digest.
pub fn anonymous_client_config(
    root_ca_pem: Option<&str>,
) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let _ = root_ca_pem;
    todo!()
}

/// What a gRPC handler knows about the connection it serves.
#[derive(Clone, Debug)]
pub struct TlsConnectInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The verified client certificate's identity, if one was presented.
    pub peer: Option<Identity>,
}

/// Accepts TCP connections and completes TLS handshakes concurrently (a slow
/// or failing handshake never blocks others), yielding connections that
/// tonic serves with [`TlsConnectInfo`] attached to every request.
pub fn incoming(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl futures::Stream<Item = Result<TlsConn, std::io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, remote_addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // rather than spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
                let stream = match handshake.await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote_addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote_addr, "TLS handshake timed out");
                        return;
                    }
                };
                let peer = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|der| super::identity::parse_der(der.as_ref()).ok())
                    .map(|info| info.identity);
                let info = TlsConnectInfo {
                    remote_addr: Some(remote_addr),
                    peer,
                };
                let _ = tx.send(Ok(TlsConn { stream, info })).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A server-side TLS connection and who is on the other end.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    info: TlsConnectInfo,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
