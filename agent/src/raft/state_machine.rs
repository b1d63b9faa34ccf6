//! openraft's `RaftStateMachine` over the in-memory [`Store`]. Applying an
//! entry applies its transaction; snapshots are the serialized store, kept
//! (encrypted) in [`RaftDb`] so that a restart resumes from the latest one
//! plus the log after it.

use std::sync::Arc;

use super::log_store::{RaftDb, RaftDbError};
use crate::store::Store;

#[derive(Clone)]
pub struct StateMachine {
    _private: (),
}

impl StateMachine {
    /// Opens the state machine, restoring `store` from the persisted
    /// snapshot if there is one.
    pub fn open(db: RaftDb, store: Arc<Store>) -> Result<Self, RaftDbError> {
        let _ = (db, store);
        todo!()
    }
}
