//! openraft's type configuration for Shoal: entries carry [`Proposal`]s
//! (store transactions committed together), responses are their
//! [`TxResult`]s, and members are managers addressed by their raft id.

use std::io::Cursor;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::store::{Transaction, TxResult};

/// A manager's raft id: random, chosen when it joins raft, recorded in its
/// node object. Node ids are strings; raft needs a `Copy` id.
pub type RaftId = u64;

/// What raft knows of a member: where to reach it and which node it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMember {
    pub addr: String,
    pub node_id: String,
}

impl std::fmt::Display for RaftMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.node_id, self.addr)
    }
}

/// What a normal raft entry carries: transactions proposed at about the
/// same time, committed as one entry and applied in order at its index.
/// One entry per write would cost each write a full replication round
/// trip and raft's per-entry work; one per proposal batch shares both.
/// Each transaction still applies (or fails) on its own.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Proposal {
    pub txs: Vec<Transaction>,
    /// The encoding of the entry this proposal rides in, once made.
    #[serde(skip)]
    encoded: EntryBytes,
}

/// A normal entry's postcard encoding, carried beside it once made so that
/// no entry is encoded twice: the leader's log store encodes each new entry
/// once, for its own log and for every follower's message, and a follower
/// keeps the bytes an entry arrived in for its log (under small writes,
/// encoding entries again took 3% of the three managers' CPU). Never part
/// of the encoding itself.
#[derive(Clone, Default)]
struct EntryBytes(Option<Bytes>);

impl std::fmt::Debug for EntryBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(bytes) => write!(f, "{} bytes", bytes.len()),
            None => f.write_str("not encoded"),
        }
    }
}

/// `entry`'s postcard encoding: the one it carries, or made now.
pub fn entry_encoding(entry: &Entry) -> Result<Bytes, postcard::Error> {
    match &entry.payload {
        openraft::EntryPayload::Normal(Proposal {
            encoded: EntryBytes(Some(bytes)),
            ..
        }) => Ok(bytes.clone()),
        _ => postcard::to_stdvec(entry).map(Bytes::from),
    }
}

/// Readies a new normal `entry` for the log, unless it came over the wire
/// ready: stamps the objects it creates with their version (its index,
/// see [`Transaction::stamp_created`]), then encodes it once and keeps the
/// encoding with it. Blank and membership entries are rare and have
/// nowhere to keep it.
pub fn prepare_entry(entry: &mut Entry) -> Result<(), postcard::Error> {
    let index = entry.log_id.index;
    if let openraft::EntryPayload::Normal(proposal) = &mut entry.payload
        && proposal.encoded.0.is_none()
    {
        for tx in &mut proposal.txs {
            tx.stamp_created(index);
        }
        let bytes = Bytes::from(postcard::to_stdvec(&*entry)?);
        remember_entry_encoding(entry, bytes);
    }
    Ok(())
}

/// Keeps `bytes`, which `entry` was just decoded from, as its encoding.
pub fn remember_entry_encoding(entry: &mut Entry, bytes: Bytes) {
    if let openraft::EntryPayload::Normal(proposal) = &mut entry.payload {
        proposal.encoded = EntryBytes(Some(bytes));
    }
}

impl Proposal {
    pub fn new(txs: Vec<Transaction>) -> Proposal {
        Proposal {
            txs,
            encoded: EntryBytes(None),
        }
    }

    /// Store ops in all its transactions.
    pub fn ops(&self) -> usize {
        self.txs.iter().map(Transaction::len).sum()
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Proposal,
        R = Vec<TxResult>,
        NodeId = RaftId,
        Node = RaftMember,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type LogId = openraft::LogId<RaftId>;

/// An entry's weight in store ops: what bounds the log cache and the size
/// of a replication message. Entries without ops weigh one.
pub fn entry_ops(entry: &Entry) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(proposal) => proposal.ops().max(1),
        _ => 1,
    }
}
pub type Vote = openraft::Vote<RaftId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<RaftId, RaftMember>;
pub type Membership = openraft::Membership<RaftId, RaftMember>;
pub type SnapshotMeta = openraft::SnapshotMeta<RaftId, RaftMember>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<RaftId>;
pub type Raft = openraft::Raft<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<RaftId, RaftMember>;
