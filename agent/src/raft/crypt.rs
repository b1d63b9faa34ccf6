//! Encryption at rest for the raft log and snapshots.
//!
//! Every entry and snapshot chunk is sealed with the manager's data key
//! (DEK, 32 random bytes) using an AEAD. With autolock on, the DEK itself is
//! stored wrapped by the cluster's unlock key (KEK); with it off, the DEK is
//! stored as is next to the log.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("decryption failed: the data is corrupt or the key is wrong")]
    Decrypt,
    #[error("malformed sealed data")]
    Malformed,
}

/// A 256-bit symmetric key.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        DataKey(bytes)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Encrypts `plaintext`, binding it to `aad` (for example the entry's
    /// index, so entries cannot be swapped on disk).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(self.0.as_ref().into());
        // 192-bit random nonces never repeat in practice, so no counter
        // has to be kept (and kept durable) per key. They come from the
        // thread's CSPRNG (seeded and reseeded from the OS) rather than a
        // getrandom call for every record sealed.
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        // Encryption with a valid key and in-memory buffers cannot fail.
        if let Ok(ciphertext) = cipher.encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        ) {
            out.extend_from_slice(&ciphertext);
        }
        out
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptError::Malformed);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new(self.0.as_ref().into());
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| CryptError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_key_and_context() {
        let key = DataKey::generate();
        let sealed = key.seal(b"log:1", b"hello");
        assert_eq!(key.open(b"log:1", &sealed).unwrap(), b"hello");
        assert!(matches!(
            DataKey::generate().open(b"log:1", &sealed),
            Err(CryptError::Decrypt)
        ));
        assert!(matches!(
            key.open(b"log:2", &sealed),
            Err(CryptError::Decrypt)
        ));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            key.open(b"log:1", &tampered),
            Err(CryptError::Decrypt)
        ));
        assert!(matches!(
            key.open(b"log:1", &sealed[..10]),
            Err(CryptError::Malformed)
        ));
        assert_ne!(key.seal(b"a", b"same"), key.seal(b"a", b"same"));
    }
}
