//! Encryption at rest for the raft log and snapshots.
//!
//! Every entry and snapshot chunk is sealed with the manager's data key
//! (DEK, 32 random bytes) using an AEAD. With autolock on, the DEK itself is
//! stored wrapped by the cluster's unlock key (KEK); with it off, the DEK is
//! stored as is next to the log.

use zeroize::Zeroizing;

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
        todo!()
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
        let _ = (aad, plaintext);
        todo!()
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptError> {
        let _ = (aad, sealed);
        todo!()
    }
}
