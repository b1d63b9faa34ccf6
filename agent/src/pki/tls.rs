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

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::DistinguishedName;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use shoal_proto::transport::{parse_certs, parse_key};

use super::PkiError;
use super::identity::{CertInfo, Identity};
use crate::secret::Secret;

const ALPN_H2: &[u8] = b"h2";

/// What changes at runtime, swapped as a whole.
struct Current {
    key: Arc<CertifiedKey>,
    info: CertInfo,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<dyn ServerCertVerifier>,
}

pub struct NodeTls {
    current: Arc<ArcSwap<Current>>,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(e: impl fmt::Display) -> PkiError {
    PkiError::Tls(e.to_string())
}

fn certified_key(
    cert_pem: &str,
    key_pem: &Secret,
) -> Result<(Arc<CertifiedKey>, CertInfo), PkiError> {
    let chain = parse_certs(cert_pem.as_bytes()).map_err(PkiError::Certificate)?;
    let key = parse_key(key_pem.expose().as_bytes()).map_err(PkiError::Key)?;
    let info = super::identity::parse_der(chain[0].as_ref())?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| PkiError::Key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|_| PkiError::Key("the private key does not belong to the certificate".into()))?;
    Ok((Arc::new(certified), info))
}

fn root_store(roots_pem: &str) -> Result<Arc<rustls::RootCertStore>, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(roots_pem.as_bytes()).map_err(PkiError::Certificate)? {
        roots
            .add(cert)
            .map_err(|e| PkiError::Certificate(format!("root CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

type Verifiers = (Arc<dyn ClientCertVerifier>, Arc<dyn ServerCertVerifier>);

fn verifiers(roots_pem: &str) -> Result<Verifiers, PkiError> {
    let roots = root_store(roots_pem)?;
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        // Joining nodes have no certificate yet; each RPC decides.
        .allow_unauthenticated()
        .build()
        .map_err(tls_error)?;
    let server = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(tls_error)?;
    Ok((client, server))
}

impl NodeTls {
    pub fn new(root_ca_pem: &str, cert_pem: &str, key_pem: &Secret) -> Result<Arc<Self>, PkiError> {
        let (key, info) = certified_key(cert_pem, key_pem)?;
        let (client_verifier, server_verifier) = verifiers(root_ca_pem)?;
        let current = Arc::new(ArcSwap::from_pointee(Current {
            key,
            info,
            client_verifier,
            server_verifier,
        }));
        let dynamic = Arc::new(Dynamic(current.clone()));
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_client_cert_verifier(dynamic.clone())
            .with_cert_resolver(dynamic.clone());
        server.alpn_protocols = vec![ALPN_H2.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .dangerous()
            .with_custom_certificate_verifier(dynamic.clone())
            .with_client_cert_resolver(dynamic);
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(NodeTls {
            current,
            server: Arc::new(server),
            client: Arc::new(client),
        }))
    }

    /// Replaces the certificate and key (renewal, role change).
    pub fn set_certificate(&self, cert_pem: &str, key_pem: &Secret) -> Result<(), PkiError> {
        let (key, info) = certified_key(cert_pem, key_pem)?;
        self.current.rcu(|current| Current {
            key: key.clone(),
            info: info.clone(),
            client_verifier: current.client_verifier.clone(),
            server_verifier: current.server_verifier.clone(),
        });
        Ok(())
    }

    /// Replaces the trusted roots (root rotation: old and new both trusted
    /// for a while). PEM may hold several certificates.
    pub fn set_roots(&self, roots_pem: &str) -> Result<(), PkiError> {
        let (client_verifier, server_verifier) = verifiers(roots_pem)?;
        self.current.rcu(|current| Current {
            key: current.key.clone(),
            info: current.info.clone(),
            client_verifier: client_verifier.clone(),
            server_verifier: server_verifier.clone(),
        });
        Ok(())
    }

    pub fn certificate(&self) -> CertInfo {
        self.current.load().info.clone()
    }

    pub fn identity(&self) -> Identity {
        self.certificate().identity
    }

    /// Server side: presents the node certificate; verifies client
    /// certificates against the roots when one is offered; ALPN h2.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// Client side: presents the node certificate; verifies the server
    /// against the roots and the given DNS name; ALPN h2.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }
}

/// Resolves certificates and verifiers from the current state at every
/// handshake, which is what lets one config live through renewals.
struct Dynamic(Arc<ArcSwap<Current>>);

impl fmt::Debug for Dynamic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeTls")
    }
}

impl ResolvesServerCert for Dynamic {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().key.clone())
    }
}

impl ResolvesClientCert for Dynamic {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for Dynamic {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would borrow from state that can be swapped; clients have
        // exactly one certificate to offer anyway.
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .load()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .load()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .load()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.load().client_verifier.supported_verify_schemes()
    }
}

impl ServerCertVerifier for Dynamic {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.load().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .load()
            .server_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .load()
            .server_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.load().server_verifier.supported_verify_schemes()
    }
}

/// Accepts any server certificate. Used only to fetch the root CA during a
/// join, whose digest is then checked against the token before anything
/// else is trusted.
#[derive(Debug)]
struct TrustOnFirstFetch(Arc<CryptoProvider>);

impl ServerCertVerifier for TrustOnFirstFetch {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config with no certificate. With `root_ca_pem` it trusts only
/// that root; without, it accepts any server certificate — only for fetching
/// the root CA during join, which is then checked against the token digest.
pub fn anonymous_client_config(
    root_ca_pem: Option<&str>,
) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?;
    let mut config = match root_ca_pem {
        Some(pem) => builder
            .with_root_certificates(root_store(pem)?)
            .with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TrustOnFirstFetch(provider())))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::pki::ca::{CertificateAuthority, new_key_and_csr};
    use crate::pki::identity::PeerRole;

    fn node(ca: &CertificateAuthority, id: &str, role: PeerRole) -> Arc<NodeTls> {
        let (key, csr) = new_key_and_csr().unwrap();
        let who = Identity {
            node_id: id.into(),
            role,
            cluster_id: "c1".into(),
        };
        let cert = ca.sign_csr(&csr, &who, Duration::from_secs(3600)).unwrap();
        NodeTls::new(&ca.cert_pem, &cert, &key).unwrap()
    }

    /// Serves one connection and returns who the server saw, or None when
    /// the handshake failed.
    async fn handshake(
        server: &NodeTls,
        client: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Option<Option<Identity>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(incoming(listener, server.server_config()));
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        let connect = async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            let mut tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .ok()?;
            tls.write_all(b"x").await.ok()?;
            Some(tls)
        };
        let accept = tokio::spawn(async move {
            let mut conn = incoming.next().await?.ok()?;
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte).await.ok()?;
            Some(conn.info.peer.clone())
        });
        // A refused handshake fails the client at once; the server side
        // then never yields a connection, so it is not waited for long.
        let Ok(Some(_client)) = tokio::time::timeout(Duration::from_secs(3), connect).await else {
            accept.abort();
            return None;
        };
        let seen = tokio::time::timeout(Duration::from_millis(500), accept).await;
        seen.ok().and_then(Result::ok).flatten()
    }

    #[tokio::test]
    async fn peers_of_one_cluster_see_each_others_identity() {
        let ca = CertificateAuthority::generate("c1").unwrap();
        let manager = node(&ca, "m1", PeerRole::Manager);
        let worker = node(&ca, "w1", PeerRole::Worker);
        let seen = handshake(&manager, worker.client_config(), "shoal-manager").await;
        let peer = seen.expect("handshake").expect("client identity");
        assert_eq!(peer.node_id, "w1");
        assert_eq!(peer.role, PeerRole::Worker);
        // A worker certificate does not pass as a manager's.
        assert!(
            handshake(&worker, manager.client_config(), "shoal-manager")
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn foreign_clusters_are_refused_and_anonymous_clients_have_no_identity() {
        let ca = CertificateAuthority::generate("c1").unwrap();
        let other = CertificateAuthority::generate("c2").unwrap();
        let manager = node(&ca, "m1", PeerRole::Manager);
        let stranger = node(&other, "x1", PeerRole::Manager);
        assert!(
            handshake(&manager, stranger.client_config(), "shoal-manager")
                .await
                .is_none()
        );
        let anonymous = anonymous_client_config(Some(&ca.cert_pem)).unwrap();
        assert_eq!(
            handshake(&manager, anonymous, "shoal-manager").await,
            Some(None)
        );
        let pinned_wrong = anonymous_client_config(Some(&other.cert_pem)).unwrap();
        assert!(
            handshake(&manager, pinned_wrong, "shoal-manager")
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_renewed_certificate_is_presented_without_new_configs() {
        let ca = CertificateAuthority::generate("c1").unwrap();
        let manager = node(&ca, "m1", PeerRole::Manager);
        let worker = node(&ca, "w1", PeerRole::Worker);
        let client = worker.client_config();
        let (key, csr) = new_key_and_csr().unwrap();
        let promoted = Identity {
            node_id: "w1".into(),
            role: PeerRole::Manager,
            cluster_id: "c1".into(),
        };
        let cert = ca
            .sign_csr(&csr, &promoted, Duration::from_secs(3600))
            .unwrap();
        worker.set_certificate(&cert, &key).unwrap();
        assert_eq!(worker.identity().role, PeerRole::Manager);
        let seen = handshake(&manager, client, "shoal-manager").await;
        assert_eq!(seen.flatten().map(|p| p.role), Some(PeerRole::Manager));
    }
}
