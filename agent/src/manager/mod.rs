//! The manager side of a node: the services other nodes and operators call,
//! and the control loops the leader runs.
//!
//! Control loops (orchestrators, scheduler, reaper, ...) run only on the
//! leader. Each reads the local [`Store`] and writes by proposing
//! [`Transaction`]s through a [`Proposer`]; each is driven by store change
//! events, not by timers, and each stops when leadership is lost.

pub mod batcher;
pub mod ca_service;
pub mod control;
pub mod dispatcher;
pub mod dispatcher_service;
pub mod forward;
pub mod info;
pub mod logs;
pub mod orchestrator;
pub mod raft_service;
pub mod roles;
pub mod runtime;
pub mod scheduler;
pub mod validate;
pub mod watch;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::store::{Store, Transaction, TxError};

/// Why a proposal did not commit.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ProposeError {
    /// The transaction reached the log but its checks failed (conflict, not
    /// found, name in use): a value, not a fault.
    #[error(transparent)]
    Rejected(#[from] TxError),
    #[error("{}", no_leader_message(*.reachable, *.total))]
    NoLeader { reachable: usize, total: usize },
    #[error("this node is not a manager of the cluster")]
    NotManager,
    #[error("the write was not confirmed in time; it may still commit: check before retrying")]
    Timeout,
    #[error("raft: {0}")]
    Raft(String),
    #[error("this node is shutting down")]
    Shutdown,
    #[error("{}", raft_stopped_message(.0))]
    RaftStopped(String),
}

/// What a manager whose raft has stopped says: raft stops for good when a
/// write to its log or store fails, and only a restart brings it back.
pub fn raft_stopped_message(cause: &str) -> String {
    format!(
        "this manager's raft has stopped ({cause}); the other managers carry on without it: fix \
         the cause (a full or failing disk under its data directory) and restart its shoald, or \
         use another manager"
    )
}

pub fn no_leader_message(reachable: usize, total: usize) -> String {
    format!(
        "the cluster has no leader: {reachable} of {total} managers reachable; bring managers \
         back or run 'shoal swarm init --force-new-cluster' on a survivor"
    )
}

type ProposeFuture = Pin<Box<dyn Future<Output = Result<u64, ProposeError>> + Send>>;

/// Something that commits transactions through raft (the local raft on the
/// leader, or a forward to the leader).
#[derive(Clone)]
pub struct Proposer(Arc<dyn Fn(Transaction) -> ProposeFuture + Send + Sync>);

impl Proposer {
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(Transaction) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<u64, ProposeError>> + Send + 'static,
    {
        Proposer(Arc::new(move |tx| Box::pin(f(tx))))
    }

    /// Commits `tx` and returns the version its changes carry.
    pub async fn propose(&self, tx: Transaction) -> Result<u64, ProposeError> {
        if tx.is_empty() {
            return Ok(0);
        }
        (self.0)(tx).await
    }
}

/// What every leader control loop gets.
#[derive(Clone)]
pub struct LeaderContext {
    pub store: Arc<Store>,
    pub proposer: Proposer,
    /// Cancelled when this node stops being leader or shuts down.
    pub shutdown: CancellationToken,
}

/// The control loops a leader runs, started afresh with each leadership.
pub fn leader_loops() -> runtime::LeaderLoops {
    Arc::new(orchestrator::spawn_all)
}
