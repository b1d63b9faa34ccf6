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

impl PeerRole {
    fn from_ou(ou: &str) -> Option<Self> {
        [PeerRole::Worker, PeerRole::Manager, PeerRole::Operator]
            .into_iter()
            .find(|role| role.ou() == ou)
    }
}

/// Reads the identity from a DER certificate.
pub fn parse_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let bad = |why: String| PkiError::Certificate(why);
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| bad(format!("unreadable certificate: {e}")))?;
    let subject = cert.subject();
    let first = |attrs: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>, what: &str| {
        attrs
            .and_then(|a| a.as_str().ok())
            .map(str::to_string)
            .ok_or_else(|| bad(format!("certificate subject has no {what}")))
    };
    let node_id = first(subject.iter_common_name().next(), "common name (node id)")?;
    let ou = first(
        subject.iter_organizational_unit().next(),
        "organizational unit (role)",
    )?;
    let cluster_id = first(
        subject.iter_organization().next(),
        "organization (cluster id)",
    )?;
    let role = PeerRole::from_ou(&ou)
        .ok_or_else(|| bad(format!("certificate names an unknown role {ou:?}")))?;
    let validity = cert.validity();
    Ok(CertInfo {
        identity: Identity {
            node_id,
            role,
            cluster_id,
        },
        not_before: validity.not_before.timestamp() * 1000,
        not_after: validity.not_after.timestamp() * 1000,
        serial_hex: cert.raw_serial_as_string().replace(':', ""),
    })
}

/// Reads the identity from the first certificate of a PEM.
pub fn parse_pem(pem: &str) -> Result<CertInfo, PkiError> {
    parse_der(&first_der(pem)?)
}

/// The raw public key of the first certificate of a PEM.
pub(crate) fn public_key_of_pem(pem: &str) -> Result<Vec<u8>, PkiError> {
    let der = first_der(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::Certificate(format!("unreadable certificate: {e}")))?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

fn first_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let certs =
        shoal_proto::transport::parse_certs(pem.as_bytes()).map_err(PkiError::Certificate)?;
    certs
        .into_iter()
        .next()
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| PkiError::Certificate("no certificate in PEM".into()))
}
