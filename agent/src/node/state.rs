//! What a node keeps in its data directory, and how it is written.
//!
//! ```text
//! <data dir>/
//!   node.json          membership: node id, cluster id, role, addresses, known managers
//!   certificates/
//!     root-ca.pem      the cluster's root CA (public)
//!     node.pem         this node's certificate (public)
//!   keys.json          TLS private key and raft data key: plain (mode 0600), or
//!                      sealed with the unlock key when autolock is on
//!   raft/              fjall: raft log, vote, snapshots (encrypted with the data key)
//!   tasks/             process executor output
//! ```
//!
//! Every file is replaced atomically (write, fsync, rename, fsync the
//! directory) so a crash leaves either the old or the new version.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::pki::token::UnlockKey;
use crate::raft::crypt::{CryptError, DataKey};
use crate::secret::Secret;
use crate::store::Role;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is corrupt: {reason}; restore it from a backup or remove the data directory and join again"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("this node is locked: run 'shoal swarm unlock' with the cluster's unlock key")]
    Locked,
    #[error("the unlock key is wrong: it does not open this node's keys")]
    WrongUnlockKey,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically and durably, with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

/// Membership facts, no secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub node_id: String,
    pub cluster_id: String,
    pub role: Role,
    /// Set while the node is (or is becoming) a manager.
    pub raft_id: Option<u64>,
    pub listen_addr: String,
    pub advertise_addr: String,
    /// Managers this node knows, to reconnect after a restart.
    pub managers: Vec<String>,
}

/// The node's secrets.
#[derive(Clone)]
pub struct Keys {
    pub tls_key_pem: Secret,
    /// Present on managers: encrypts the raft log at rest.
    pub dek: Option<DataKey>,
}

#[derive(Serialize, Deserialize)]
struct PlainKeys {
    tls_key_pem: String,
    dek: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
enum KeysFile {
    Plain(PlainKeys),
    /// Sealed with the unlock key: base64 of the AEAD output.
    Sealed {
        sealed: String,
    },
}

const SEALED_AAD: &[u8] = b"shoal-node-keys";

/// The data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    pub fn membership_path(&self) -> PathBuf {
        self.root.join("node.json")
    }
    pub fn root_ca_path(&self) -> PathBuf {
        self.root.join("certificates").join("root-ca.pem")
    }
    pub fn cert_path(&self) -> PathBuf {
        self.root.join("certificates").join("node.pem")
    }
    pub fn keys_path(&self) -> PathBuf {
        self.root.join("keys.json")
    }
    pub fn raft_dir(&self) -> PathBuf {
        self.root.join("raft")
    }

    pub fn create(&self) -> Result<(), StateError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(io_err(&self.root))
    }

    /// The membership, if this node has joined a cluster.
    pub fn load_membership(&self) -> Result<Option<Membership>, StateError> {
        let path = self.membership_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }

    pub fn save_membership(&self, membership: &Membership) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(membership).map_err(|e| StateError::Corrupt {
            path: self.membership_path(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.membership_path(), &bytes, 0o600)
    }

    pub fn save_certificates(&self, root_ca_pem: &str, cert_pem: &str) -> Result<(), StateError> {
        write_atomic(&self.root_ca_path(), root_ca_pem.as_bytes(), 0o644)?;
        write_atomic(&self.cert_path(), cert_pem.as_bytes(), 0o644)
    }

    pub fn load_certificates(&self) -> Result<(String, String), StateError> {
        let read = |path: PathBuf| std::fs::read_to_string(&path).map_err(|e| io_err(&path)(e));
        Ok((read(self.root_ca_path())?, read(self.cert_path())?))
    }

    /// Whether the keys are sealed with an unlock key.
    pub fn keys_sealed(&self) -> Result<bool, StateError> {
        Ok(matches!(self.read_keys_file()?, KeysFile::Sealed { .. }))
    }

    fn read_keys_file(&self) -> Result<KeysFile, StateError> {
        let path = self.keys_path();
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    /// Reads the keys; sealed keys need the unlock key.
    pub fn load_keys(&self, unlock: Option<&UnlockKey>) -> Result<Keys, StateError> {
        let path = self.keys_path();
        let corrupt = |reason: String| StateError::Corrupt {
            path: path.clone(),
            reason,
        };
        let plain = match self.read_keys_file()? {
            KeysFile::Plain(plain) => plain,
            KeysFile::Sealed { sealed } => {
                let Some(unlock) = unlock else {
                    return Err(StateError::Locked);
                };
                let sealed = base64::engine::general_purpose::STANDARD
                    .decode(sealed)
                    .map_err(|e| corrupt(e.to_string()))?;
                let kek = DataKey::from_bytes(unlock.0);
                let bytes = kek.open(SEALED_AAD, &sealed).map_err(|e| match e {
                    CryptError::Decrypt => StateError::WrongUnlockKey,
                    CryptError::Malformed => corrupt(e.to_string()),
                })?;
                serde_json::from_slice::<PlainKeys>(&bytes).map_err(|e| corrupt(e.to_string()))?
            }
        };
        let dek = match plain.dek {
            Some(text) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| corrupt(e.to_string()))?;
                let bytes: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| corrupt("data key is not 32 bytes".into()))?;
                Some(DataKey::from_bytes(bytes))
            }
            None => None,
        };
        Ok(Keys {
            tls_key_pem: Secret::new(plain.tls_key_pem),
            dek,
        })
    }

    /// Writes the keys, sealed with `unlock` when given.
    pub fn save_keys(&self, keys: &Keys, unlock: Option<&UnlockKey>) -> Result<(), StateError> {
        let plain = PlainKeys {
            tls_key_pem: keys.tls_key_pem.expose().to_string(),
            dek: keys
                .dek
                .as_ref()
                .map(|d| base64::engine::general_purpose::STANDARD.encode(d.as_bytes())),
        };
        let file = match unlock {
            None => KeysFile::Plain(plain),
            Some(unlock) => {
                let bytes = zeroize::Zeroizing::new(serde_json::to_vec(&plain).map_err(|e| {
                    StateError::Corrupt {
                        path: self.keys_path(),
                        reason: e.to_string(),
                    }
                })?);
                let sealed = DataKey::from_bytes(unlock.0).seal(SEALED_AAD, &bytes);
                KeysFile::Sealed {
                    sealed: base64::engine::general_purpose::STANDARD.encode(sealed),
                }
            }
        };
        let bytes = zeroize::Zeroizing::new(serde_json::to_vec(&file).map_err(|e| {
            StateError::Corrupt {
                path: self.keys_path(),
                reason: e.to_string(),
            }
        })?);
        write_atomic(&self.keys_path(), &bytes, 0o600)
    }

    /// Forgets the cluster: membership, certificates, keys, raft. Task
    /// output is kept.
    pub fn wipe_membership(&self) -> Result<(), StateError> {
        for path in [self.membership_path(), self.keys_path()] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        for dir in [self.root.join("certificates"), self.raft_dir()] {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
        Ok(())
    }

    pub fn wipe_raft(&self) -> Result<(), StateError> {
        let dir = self.raft_dir();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&dir)(e)),
        }
    }
}
