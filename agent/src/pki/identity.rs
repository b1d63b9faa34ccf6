//! Who a certificate says its holder is. The subject carries it:
//! CN = node id, OU = role (`shoal-manager`, `shoal-worker` or
//! `shoal-operator`), O = cluster id.

use super::PkiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerRole {
    Worker,
    Manager,
    Operator,
}

impl PeerRole {
    /// The OU value in certificate subjects.
    pub fn ou(self) -> &'static str {
        match self {
            PeerRole::Worker => shoal_proto::WORKER_SERVER_NAME,
            PeerRole::Manager => shoal_proto::MANAGER_SERVER_NAME,
            PeerRole::Operator => shoal_proto::OPERATOR_ROLE,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Node id, or for operators the id of the certificate.
    pub node_id: String,
    pub role: PeerRole,
    pub cluster_id: String,
}

/// What a certificate says, and when it is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub identity: Identity,
    /// Unix ms.
    pub not_before: i64,
    pub not_after: i64,
    pub serial_hex: String,
}

/// Reads the identity from a DER certificate.
pub fn parse_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let _ = der;
    todo!()
}

/// Reads the identity from the first certificate of a PEM.
pub fn parse_pem(pem: &str) -> Result<CertInfo, PkiError> {
    let _ = pem;
    todo!()
}
