//! Client transports: a node's local unix socket, or a manager over mutual
//! TLS. Both yield a tonic [`Channel`] that any generated client wraps.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Channel, Endpoint, Uri};

/// Files of an operator credential bundle, as `shoal swarm ca operator-cert`
/// writes them.
pub const OPERATOR_CERT_FILE: &str = "cert.pem";
pub const OPERATOR_KEY_FILE: &str = "key.pem";
pub const OPERATOR_CA_FILE: &str = "ca.pem";

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot reach {target}: {}", innermost_cause(.source))]
    Connect {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },
    #[error("cannot read operator credentials {path}: {reason}")]
    Credentials { path: PathBuf, reason: String },
}

/// Timeout for establishing a connection; calls themselves set their own.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A free port on 127.0.0.1 for an agent to listen on a moment later
/// (`swarm init`/`join --advertise-addr`).
///
/// Ports come from just below the kernel's ephemeral range: a port handed
/// out by `bind(0)` is back in that range once released, and any outgoing
/// connection on the machine could take it as its local port before the
/// agent binds it ("Address already in use"). Each process starts at its
/// own point of the span, so concurrent callers walk apart.
pub fn free_loopback_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = u32::from(ephemeral_port_start());
    let low = ephemeral_start.saturating_sub(12_000).max(10_000);
    let span = ephemeral_start.saturating_sub(low).max(1);
    let origin = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let offset = (origin + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let Ok(port) = u16::try_from(low + offset) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
}

/// The first port of the kernel's ephemeral range (Linux's default when
/// it cannot be read).
fn ephemeral_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Connects to a node's local control socket.
pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Channel, TransportError> {
    let path = path.as_ref().to_path_buf();
    let target = path.display().to_string();
    // The URI is required by tonic but unused: the connector ignores it.
    let endpoint = Endpoint::from_static("http://localhost").connect_timeout(CONNECT_TIMEOUT);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| TransportError::Connect { target, source })
}

/// The error at the bottom of `error`'s chain: what actually went wrong
/// (say, "Connection refused" under tonic's bare "transport error").
pub fn innermost_cause<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> &'e (dyn std::error::Error + 'static) {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause
}

fn tls_endpoint(addr: &str) -> Result<Endpoint, TransportError> {
    let uri = format!("http://{addr}");
    Endpoint::from_shared(uri)
        .map(|e| {
            e.connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
        })
        .map_err(|e| TransportError::InvalidAddress {
            addr: addr.to_string(),
            reason: e.to_string(),
        })
}

fn tls_connector(
    addr: String,
    tls: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Future<
        Output = Result<
            TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
            std::io::Error,
        >,
    > + Send,
> + Clone
+ Send
+ 'static {
    let connector = tokio_rustls::TlsConnector::from(tls);
    tower::service_fn(move |_: Uri| {
        let addr = addr.clone();
        let connector = connector.clone();
        let server_name = server_name.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let stream = connector.connect(server_name, tcp).await?;
            Ok(TokioIo::new(stream))
        }
    })
}

/// Connects to `addr` (host:port) over mutual TLS, verifying the peer as
/// `server_name`. The config must offer ALPN `h2`.
pub async fn connect_tls(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> Result<Channel, TransportError> {
    let name = server_name_of(server_name)?;
    tls_endpoint(addr)?
        .connect_with_connector(tls_connector(addr.to_string(), tls, name))
        .await
        .map_err(|source| TransportError::Connect {
            target: addr.to_string(),
            source,
        })
}

/// Like [`connect_tls`] but connects on first use and reconnects after
/// failures: for long-lived peers such as raft members.
pub fn connect_tls_lazy(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> Result<Channel, TransportError> {
    let name = server_name_of(server_name)?;
    Ok(tls_endpoint(addr)?.connect_with_connector_lazy(tls_connector(addr.to_string(), tls, name)))
}

fn server_name_of(name: &str) -> Result<ServerName<'static>, TransportError> {
    ServerName::try_from(name.to_string()).map_err(|e| TransportError::InvalidAddress {
        addr: name.to_string(),
        reason: e.to_string(),
    })
}

/// Builds a client TLS config that trusts `root_ca_pem` only, presents the
/// given certificate chain and key, and speaks HTTP/2.
pub fn client_tls_config(
    root_ca_pem: &[u8],
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(root_ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| format!("root CA certificate: {e}"))?;
    }
    let chain = parse_certs(cert_chain_pem)?;
    let key = parse_key(key_pem)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("client certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate found in PEM".into());
    }
    Ok(certs)
}

pub fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| format!("bad private key PEM: {e}"))?
        .ok_or_else(|| "no private key found in PEM".to_string())
}

/// Operator credentials for `shoal --host`: a client certificate issued by
/// the cluster, with the cluster's root CA.
pub struct OperatorCredentials {
    pub tls: Arc<rustls::ClientConfig>,
}

impl OperatorCredentials {
    /// Loads `cert.pem`, `key.pem` and `ca.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TransportError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| TransportError::Credentials {
                path: path.clone(),
                reason: e.to_string(),
            })
        };
        let cert = read(OPERATOR_CERT_FILE)?;
        let key = read(OPERATOR_KEY_FILE)?;
        let ca = read(OPERATOR_CA_FILE)?;
        let tls =
            client_tls_config(&ca, &cert, &key).map_err(|reason| TransportError::Credentials {
                path: dir.to_path_buf(),
                reason,
            })?;
        Ok(Self { tls: Arc::new(tls) })
    }

    /// Credentials held in memory only, e.g. issued over a node's local
    /// socket for the console to fail over to other managers.
    pub fn from_pem(root_ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        let tls = client_tls_config(
            root_ca_pem.as_bytes(),
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
        )?;
        Ok(Self { tls: Arc::new(tls) })
    }

    /// Connects to a manager's TCP address with these credentials.
    pub async fn connect_manager(&self, addr: &str) -> Result<Channel, TransportError> {
        connect_tls(addr, self.tls.clone(), crate::MANAGER_SERVER_NAME).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let ephemeral_start = ephemeral_port_start();
        let ports: Vec<u16> = (0..20)
            .map(|_| free_loopback_port().expect("a free port"))
            .collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!(port < ephemeral_start, "{port} is in the ephemeral range");
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
        }
    }
}
