//! The raft log and vote, kept in fjall and encrypted with the data key.
//!
//! Appends are acknowledged to raft only once durable: entries are written
//! to fjall's journal, then a flusher thread fdatasyncs the journal and
//! calls back every append that the sync covered (group commit), so many
//! concurrent proposals share one sync.

use std::path::Path;

use super::crypt::DataKey;

#[derive(Debug, thiserror::Error)]
pub enum RaftDbError {
    #[error("raft storage at {path}: {reason}")]
    Open { path: String, reason: String },
}

/// The fjall database under `<data dir>/raft`: log, vote, committed index
/// and snapshots.
#[derive(Clone)]
pub struct RaftDb {
    _private: (),
}

impl RaftDb {
    pub fn open(dir: &Path, dek: DataKey) -> Result<Self, RaftDbError> {
        let _ = (dir, dek);
        todo!()
    }

    pub fn log_store(&self) -> LogStore {
        todo!()
    }
}

/// openraft's `RaftLogStorage` and `RaftLogReader` over [`RaftDb`].
#[derive(Clone)]
pub struct LogStore {
    _private: (),
}
