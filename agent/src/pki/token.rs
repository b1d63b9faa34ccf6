//! Join tokens and unlock keys.
//!
//! A join token is `SWMTKN-1-<digest>-<secret>`: `digest` is the sha256 of
//! the root CA certificate PEM in base 36 (50 characters), which lets the
//! joining node pin the CA before trusting anything; `secret` (25 base-36
//! characters) proves the holder may join, and its role.
//!
//! An unlock key is `SWMKEY-1-<base64 of 32 random bytes>`.

use crate::ids::base36;
use crate::secret::Secret;

const JOIN_PREFIX: &str = "SWMTKN-1-";
const UNLOCK_PREFIX: &str = "SWMKEY-1-";
/// Base-36 length of a sha256 digest (36^50 > 2^256).
pub const DIGEST_LEN: usize = 50;
/// Base-36 length of the 128-bit join secret.
const SECRET_LEN: usize = 25;

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
        let mut bytes = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        JoinToken {
            ca_digest: ca_digest.to_string(),
            secret: Secret::new(base36(&bytes, SECRET_LEN)),
        }
    }

    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let malformed = |why: &str| TokenError::MalformedJoinToken(why.to_string());
        let rest = text
            .trim()
            .strip_prefix(JOIN_PREFIX)
            .ok_or_else(|| malformed("it does not start with SWMTKN-1-"))?;
        let (digest, secret) = rest
            .split_once('-')
            .ok_or_else(|| malformed("it lacks the secret after the CA digest"))?;
        let is_base36 = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        };
        if digest.len() != DIGEST_LEN || !is_base36(digest) {
            return Err(malformed("the CA digest part is not 50 base-36 characters"));
        }
        if secret.len() != SECRET_LEN || !is_base36(secret) {
            return Err(malformed("the secret part is not 25 base-36 characters"));
        }
        Ok(JoinToken {
            ca_digest: digest.to_string(),
            secret: Secret::new(secret),
        })
    }

    /// The full token text, secret included: only for showing to an
    /// operator who asked for it.
    pub fn expose(&self) -> String {
        format!("{JOIN_PREFIX}{}-{}", self.ca_digest, self.secret.expose())
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
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        UnlockKey(bytes)
    }

    pub fn parse(text: &str) -> Result<Self, TokenError> {
        use base64::Engine;
        let malformed = |why: &str| TokenError::MalformedUnlockKey(why.to_string());
        let encoded = text
            .trim()
            .strip_prefix(UNLOCK_PREFIX)
            .ok_or_else(|| malformed("it does not start with SWMKEY-1-"))?;
        let not_a_key =
            || malformed("the part after SWMKEY-1- is not a key (43 base64 characters)");
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|_| not_a_key())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| not_a_key())?;
        Ok(UnlockKey(key))
    }

    /// `SWMKEY-1-…`, for showing once to the operator.
    pub fn expose(&self) -> Secret {
        use base64::Engine;
        Secret::new(format!(
            "{UNLOCK_PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.0)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_round_trip_and_reject_garbage() {
        let digest = "a".repeat(DIGEST_LEN);
        let token = JoinToken::generate(&digest);
        let text = token.expose();
        assert!(text.starts_with("SWMTKN-1-aaaa"));
        assert_eq!(JoinToken::parse(&format!(" {text}\n")).unwrap(), token);
        assert_ne!(JoinToken::generate(&digest).secret, token.secret);
        for bad in [
            "",
            "SWMTKN-1-",
            "SWMTKN-2-abc-def",
            &text[..text.len() - 1],
            &text.to_uppercase(),
        ] {
            let err = JoinToken::parse(bad).unwrap_err();
            assert!(err.to_string().contains("shoal swarm join-token"), "{err}");
        }
        assert!(!format!("{token:?}").contains(token.secret.expose()));
    }

    #[test]
    fn unlock_keys_round_trip() {
        let key = UnlockKey::generate();
        let text = key.expose();
        assert!(text.expose().starts_with("SWMKEY-1-"));
        assert_eq!(UnlockKey::parse(text.expose()).unwrap(), key);
        assert!(UnlockKey::parse("SWMKEY-1-tooshort").is_err());
        assert!(UnlockKey::parse("hello").is_err());
        assert_eq!(format!("{key:?}"), "UnlockKey(<redacted>)");
    }

    proptest::proptest! {
        /// Whatever an operator pastes, parsing answers with a token or a
        /// clear error, never a panic.
        #[test]
        fn parsing_any_text_never_panics(text in ".{0,120}") {
            if let Err(e) = JoinToken::parse(&text) {
                proptest::prop_assert!(e.to_string().contains("join-token"));
            }
            if let Err(e) = UnlockKey::parse(&text) {
                proptest::prop_assert!(e.to_string().contains("SWMKEY-1-"));
            }
        }

        #[test]
        fn near_miss_tokens_are_refused_cleanly(digest in "[0-9a-z]{0,60}", secret in "[0-9a-zA-Z-]{0,40}") {
            let _ = JoinToken::parse(&format!("SWMTKN-1-{digest}-{secret}"));
            let _ = UnlockKey::parse(&format!("SWMKEY-1-{secret}"));
        }
    }
}
