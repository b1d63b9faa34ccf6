//! openraft's `RaftStateMachine` over the in-memory [`Store`]. Applying an
//! entry applies its transactions; snapshots are the serialized store, kept
//! (encrypted) in [`RaftDb`] so that a restart resumes from the latest one
//! plus the log after it.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};

use super::log_store::{RaftDb, RaftDbError};
use super::types::{
    Entry, LogId, RaftId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::store::{Store, StoreSnapshot, TxResult};

#[derive(Clone)]
pub struct StateMachine {
    db: RaftDb,
    store: Arc<Store>,
}

fn sm_error(
    kind: fn(AnyError) -> StorageIOError<RaftId>,
    e: impl std::fmt::Display,
) -> StorageError {
    kind(AnyError::error(e.to_string())).into()
}

fn snapshot_error(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::<RaftId>::write_snapshot(None, AnyError::error(e.to_string())).into()
}

impl StateMachine {
    /// Opens the state machine, restoring `store` from the persisted
    /// snapshot if there is one.
    pub fn open(db: RaftDb, store: Arc<Store>) -> Result<Self, RaftDbError> {
        let failed = |reason: String| RaftDbError::Open {
            path: db.path().display().to_string(),
            reason,
        };
        if let Some((meta, data)) = db.snapshot().map_err(|e| failed(e.to_string()))? {
            let snapshot = decode(&meta, &data)
                .map_err(|e| failed(format!("snapshot {}: {e}", meta.snapshot_id)))?;
            store.restore(snapshot);
        }
        Ok(StateMachine { db, store })
    }
}

/// The store a snapshot holds, with raft's view of it taken from the meta
/// (which is what raft trusts).
fn decode(meta: &SnapshotMeta, data: &[u8]) -> Result<StoreSnapshot, postcard::Error> {
    let mut snapshot: StoreSnapshot = postcard::from_bytes(data)?;
    snapshot.raft.last_applied = meta.last_log_id;
    snapshot.raft.membership = meta.last_membership.clone();
    if let Some(last) = meta.last_log_id {
        snapshot.version = snapshot.version.max(last.index);
    }
    Ok(snapshot)
}

/// Serializes the store and keeps it as the latest snapshot.
fn build(store: &Store, db: &RaftDb) -> Result<Snapshot, String> {
    let (data, applied) = store.encode_snapshot().map_err(|e| e.to_string())?;
    let last = applied.last_applied;
    let mut nonce = [0u8; 4];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let meta = SnapshotMeta {
        last_log_id: last,
        last_membership: applied.membership,
        snapshot_id: format!(
            "{}-{}-{}",
            last.map_or(0, |l| l.leader_id.term),
            last.map_or(0, |l| l.index),
            u32::from_be_bytes(nonce)
        ),
    };
    db.save_snapshot(&meta, &data).map_err(|e| e.to_string())?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data)),
    })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // Encoding and syncing a store of 100,000 tasks takes a while: off
        // the async threads, which carry raft's heartbeats.
        let store = self.store.clone();
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || build(&store, &db))
            .await
            .map_err(snapshot_error)?
            .map_err(snapshot_error)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.store.raft_applied();
        Ok((applied.last_applied, applied.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<TxResult>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let result = match entry.payload {
                EntryPayload::Normal(proposal) => {
                    let started = std::time::Instant::now();
                    let result = self.store.apply(log_id, &proposal.txs);
                    crate::metrics::METRICS
                        .raft_apply
                        .observe(started.elapsed());
                    result
                }
                EntryPayload::Blank => {
                    self.store.apply_raft(log_id, None);
                    Vec::new()
                }
                EntryPayload::Membership(membership) => {
                    self.store.apply_raft(
                        log_id,
                        Some(StoredMembership::new(Some(log_id), membership)),
                    );
                    Vec::new()
                }
            };
            results.push(result);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let decoded = decode(meta, &data).map_err(|e| {
            sm_error(
                StorageIOError::write_state_machine,
                format!("snapshot {}: {e}", meta.snapshot_id),
            )
        })?;
        // Durable first: once installed, raft may purge the log it covers.
        self.db.save_snapshot(meta, &data).map_err(snapshot_error)?;
        self.store.restore(decoded);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let stored = self
            .db
            .snapshot()
            .map_err(|e| sm_error(StorageIOError::read_state_machine, e))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
