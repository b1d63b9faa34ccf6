//! The cluster's root certificate authority and the certificates it issues.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};

use super::PkiError;
use super::identity::{Identity, PeerRole};
use super::token::DIGEST_LEN;
use crate::ids::base36;
use crate::secret::Secret;

/// Certificates start a little in the past so that a peer whose clock is
/// slightly behind accepts them at once.
pub const CLOCK_SKEW: Duration = Duration::from_secs(3600);

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
        let key = new_key()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "shoal-root-ca");
        name.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, ROOT_CA_VALIDITY);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(cert_error)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            key_pem: Secret::new(key.serialize_pem()),
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &Secret) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem.expose())
            .map_err(|e| PkiError::Key(format!("root CA key: {e}")))?;
        let cert_public_key = super::identity::public_key_of_pem(cert_pem)?;
        if cert_public_key != key.public_key_raw() {
            return Err(PkiError::Key(
                "the root CA key does not belong to the root CA certificate".into(),
            ));
        }
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.clone(),
        })
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
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Certificate(format!("invalid certificate request: {e}")))?;
        csr.params = leaf_params(subject, validity)?;
        let issuer = self.issuer()?;
        let cert = csr.signed_by(&issuer).map_err(cert_error)?;
        Ok(cert.pem())
    }

    /// A fresh key and certificate for an operator, as PEMs.
    pub fn issue_operator(
        &self,
        subject: &Identity,
        validity: Duration,
    ) -> Result<(String, Secret), PkiError> {
        let key = new_key()?;
        let params = leaf_params(subject, validity)?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(cert_error)?;
        Ok((cert.pem(), Secret::new(key.serialize_pem())))
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(self.key_pem.expose())
            .map_err(|e| PkiError::Key(format!("root CA key: {e}")))?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(cert_error)
    }
}

/// Base-36 (50 characters) sha256 of a certificate PEM.
pub fn ca_digest(cert_pem: &str) -> String {
    base36(&Sha256::digest(cert_pem.as_bytes()), DIGEST_LEN)
}

/// A new ECDSA P-256 key and a CSR for it, as PEMs.
pub fn new_key_and_csr() -> Result<(Secret, String), PkiError> {
    let key = new_key()?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(cert_error)?;
    Ok((Secret::new(key.serialize_pem()), csr))
}

fn new_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| PkiError::Key(e.to_string()))
}

fn cert_error(e: rcgen::Error) -> PkiError {
    PkiError::Certificate(e.to_string())
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    // Positive as a DER integer.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + validity;
}

fn leaf_params(subject: &Identity, validity: Duration) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, subject.node_id.as_str());
    name.push(DnType::OrganizationalUnitName, subject.role.ou());
    name.push(DnType::OrganizationName, subject.cluster_id.as_str());
    params.distinguished_name = name;
    let dns = |s: &str| {
        s.to_string()
            .try_into()
            .map(SanType::DnsName)
            .map_err(|e| PkiError::Certificate(format!("DNS name {s:?}: {e}")))
    };
    params.subject_alt_names = vec![dns(subject.role.ou())?];
    if !subject.node_id.is_empty() {
        params.subject_alt_names.push(dns(&subject.node_id)?);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match subject.role {
        // Nodes both serve and call.
        PeerRole::Manager | PeerRole::Worker => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        PeerRole::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, validity);
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::identity::parse_pem;

    #[test]
    fn signed_certificates_carry_the_identity_the_ca_chose() {
        let ca = CertificateAuthority::generate("cluster1").unwrap();
        assert_eq!(ca.digest().len(), 50);
        let reloaded = CertificateAuthority::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
        assert_eq!(reloaded.digest(), ca.digest());
        let (_key, csr) = new_key_and_csr().unwrap();
        let who = Identity {
            node_id: "abc123".into(),
            role: PeerRole::Manager,
            cluster_id: "cluster1".into(),
        };
        let pem = ca
            .sign_csr(&csr, &who, Duration::from_secs(90 * 24 * 3600))
            .unwrap();
        let info = parse_pem(&pem).unwrap();
        assert_eq!(info.identity, who);
        assert!(info.not_after > crate::ids::now_ms() + 89 * 24 * 3600 * 1000);
        let (op_cert, _op_key) = ca
            .issue_operator(
                &Identity {
                    node_id: "op1".into(),
                    role: PeerRole::Operator,
                    cluster_id: "cluster1".into(),
                },
                Duration::from_secs(3600),
            )
            .unwrap();
        assert_eq!(
            parse_pem(&op_cert).unwrap().identity.role,
            PeerRole::Operator
        );
    }

    #[test]
    fn a_mismatched_key_is_refused() {
        let a = CertificateAuthority::generate("a").unwrap();
        let b = CertificateAuthority::generate("b").unwrap();
        let err = CertificateAuthority::from_pem(&a.cert_pem, &b.key_pem).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        let who = Identity {
            node_id: "x".into(),
            role: PeerRole::Worker,
            cluster_id: "a".into(),
        };
        let err = a
            .sign_csr("not a csr", &who, Duration::from_secs(60))
            .unwrap_err();
        assert!(err.to_string().contains("certificate request"), "{err}");
    }
}
