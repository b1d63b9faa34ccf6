//! Cluster identity: the root CA, node and operator certificates, join
//! tokens and unlock keys, and the mutual-TLS configurations built from
//! them.
//!
//! - [`token`]: `SWMTKN-1-<ca digest>-<secret>` join tokens and
//!   `SWMKEY-1-<key>` unlock keys.
//! - [`ca`]: the root CA (ECDSA P-256) and certificate issuance.
//! - [`identity`]: who a certificate says its holder is (node id, role,
//!   cluster id in the subject).
//! - [`tls`]: rustls client/server configs whose certificates and roots can
//!   be swapped at runtime (renewal, rotation), and the TLS listener glue
//!   that tells gRPC handlers who is calling.

pub mod ca;
pub mod identity;
pub mod tls;
pub mod token;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate error: {0}")]
    Certificate(String),
    #[error("key error: {0}")]
    Key(String),
    #[error("TLS configuration error: {0}")]
    Tls(String),
}
