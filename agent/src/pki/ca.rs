//! The cluster's root certificate authority and the certificates it issues.

use std::time::Duration;

use super::PkiError;
use super::identity::Identity;
use crate::secret::Secret;

/// Root CA validity: 20 years, as Docker's.
pub const ROOT_CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// A root CA able to sign: its certificate and its private key.
#[derive(Clone, Debug)]
pub struct CertificateAuthority {
    pub cert_pem: String,
    pub key_pem: Secret,
}

impl CertificateAuthority {
    /// A new self-signed ECDSA P-256 root for `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<Self, PkiError> {
        let _ = cluster_id;
        todo!()
    }

    pub fn from_pem(cert_pem: &str, key_pem: &Secret) -> Result<Self, PkiError> {
        let _ = (cert_pem, key_pem);
        todo!()
    }

    /// Base-36 sha256 of the certificate PEM: the digest in join tokens.
    pub fn digest(&self) -> String {
        ca_digest(&self.cert_pem)
    }

    /// Signs the public key of `csr_pem` into a certificate for `subject`,
    /// valid for `validity` from now. The CSR's own subject is ignored: the
    /// CA decides who the holder is. The certificate carries the DNS names
    /// the role's peers verify (`shoal-manager` / `shoal-worker`) and the
    /// node id.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        subject: &Identity,
        validity: Duration,
    ) -> Result<String, PkiError> {
        let _ = (csr_pem, subject, validity);
        todo!()
    }

    /// A fresh key and certificate for an operator, as PEMs.
    pub fn issue_operator(
        &self,
        subject: &Identity,
        validity: Duration,
    ) -> Result<(String, Secret), PkiError> {
        let _ = (subject, validity);
        todo!()
    }
}

/// Base-36 (50 characters) sha256 of a certificate PEM.
pub fn ca_digest(cert_pem: &str) -> String {
    let _ = cert_pem;
    todo!()
}

/// A new ECDSA P-256 key and a CSR for it, as PEMs.
pub fn new_key_and_csr() -> Result<(Secret, String), PkiError> {
    todo!()
}
