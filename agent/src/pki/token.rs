//! Join tokens and unlock keys.
//!
//! A join token is `SWMTKN-1-<digest>-<secret>`: `digest` is the sha256 of
//! the root CA certificate PEM in base 36 (50 characters), which lets the
//! joining node pin the CA before trusting anything; `secret` (25 base-36
//! characters) proves the holder may join, and its role.
//!
//! An unlock key is `SWMKEY-1-<base64 of 32 random bytes>`.

use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("invalid join token: {0}; copy the whole token from 'shoal swarm join-token'")]
    MalformedJoinToken(String),
    #[error(
        "invalid unlock key: {0}; it looks like SWMKEY-1-… as printed when autolock was turned on"
    )]
    MalformedUnlockKey(String),
}

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: String,
    pub secret: Secret,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken(SWMTKN-1-{}-<redacted>)", self.ca_digest)
    }
}

impl JoinToken {
    /// A new token for the CA with this digest, with a fresh random secret.
    pub fn generate(ca_digest: &str) -> Self {
        todo!("{ca_digest}")
    }

    pub fn parse(text: &str) -> Result<Self, TokenError> {
        todo!("{text}")
    }

    /// The full token text, secret included: only for showing to an
    /// operator who asked for it.
    pub fn expose(&self) -> String {
        todo!()
    }
}

/// The key that unlocks managers' keys at rest when autolock is on.
#[derive(Clone, PartialEq, Eq)]
pub struct UnlockKey(pub [u8; 32]);

impl std::fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnlockKey(<redacted>)")
    }
}

impl UnlockKey {
    pub fn generate() -> Self {
        todo!()
    }

    pub fn parse(text: &str) -> Result<Self, TokenError> {
        todo!("{text}")
    }

    /// `SWMKEY-1-…`, for showing once to the operator.
    pub fn expose(&self) -> Secret {
        todo!()
    }
}
