//! Group commit of proposals: writes that arrive while earlier ones are in
//! flight travel together.
//!
//! A raft write costs a log append on every manager, a replication round
//! trip and raft's per-entry bookkeeping, whatever its size; a write
//! forwarded by a follower costs an RPC to the leader on top. With one of
//! each per write, 64 clients making small writes got 3,650 writes/s, each
//! waiting out its own round trips. A [`ProposalBatcher`] keeps at most
//! [`RAFT_IN_FLIGHT`] (forwarding: [`FORWARDED_IN_FLIGHT`]) batches going
//! at once; whatever arrives meanwhile waits in its queue and goes out
//! together in the next batch, up to [`BATCH_OPS`] ops. A lone write still
//! goes out at once.
//!
//! The leader has one batcher in front of raft (a batch is one raft entry,
//! a [`Proposal`]); a follower has one per leader address in front of its
//! [`super::forward::Forwarder`].

use std::future::Future;
use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::ProposeError;
use crate::raft::pipeline::Backlog;
use crate::raft::types::{Proposal, Raft};
use crate::store::Transaction;

/// Raft entries a leader's batcher has in flight, at most. With
/// replication pipelined (`raft::pipeline`) an entry commits in about one
/// round trip, and every entry costs each manager an append, a sync and
/// raft's bookkeeping: at 64 clients making small writes, 1 in flight made
/// 7,400–10,100 writes/s, 2 made 6,400–7,900 and 8 made 4,100 (smaller
/// entries, more of them). Before the pipeline, 1 and 2 did about as well.
const RAFT_IN_FLIGHT: usize = 1;

/// Forwarded batches a follower's batcher has in flight, at most. The
/// leader's batcher gathers writes into entries anyway; a follower that
/// holds its writes back until a batch returns only adds to their wait
/// (2 in flight: batches of 6 writes, each back after 3.9 ms while the
/// leader committed an entry every 1.8 ms). On the stream 4 made 1.4% more
/// writes/s than 2 at the same CPU per write (ahead in 9 of 10 alternated
/// pairs), and 8 no more than 4; as calls, 1, 2 and 4 had done the same.
const FORWARDED_IN_FLIGHT: usize = 4;

/// Ops gathered into one batch, at most (a single larger transaction goes
/// alone). Control-loop transactions carry up to 1,000 ops; they are not
/// merged with each other, which keeps replication messages within
/// [`crate::raft::network`]'s bound.
const BATCH_OPS: usize = 1_000;

/// One transaction's outcome: the version its changes carry.
pub type Outcome = Result<u64, ProposeError>;

type Reply = oneshot::Sender<Outcome>;

/// Hands transactions on in batches. Cheap to clone; the batching task ends
/// when the last clone is dropped.
#[derive(Clone)]
pub struct ProposalBatcher {
    queue: mpsc::UnboundedSender<(Transaction, Reply)>,
    /// Writes queued and not yet in a batch.
    backlog: Backlog,
}

impl ProposalBatcher {
    /// Starts a batching task on the current runtime that keeps up to
    /// [`FORWARDED_IN_FLIGHT`] batches going (a follower's forwarder).
    /// `commit` takes a batch and answers one outcome per transaction, in
    /// order, or one error for the whole batch.
    pub fn start<F, Fut>(commit: F) -> Self
    where
        F: Fn(Vec<Transaction>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Outcome>, ProposeError>> + Send + 'static,
    {
        ProposalBatcher::with_limit(commit, FORWARDED_IN_FLIGHT, Backlog::default())
    }

    fn with_limit<F, Fut>(commit: F, in_flight: usize, backlog: Backlog) -> Self
    where
        F: Fn(Vec<Transaction>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Outcome>, ProposeError>> + Send + 'static,
    {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(run(commit, pending, in_flight, backlog.clone()));
        ProposalBatcher { queue, backlog }
    }

    /// The leader's batcher: each batch is one raft entry. `backlog`
    /// counts the writes waiting for the next one.
    pub fn for_raft(raft: Raft, backlog: Backlog) -> Self {
        ProposalBatcher::with_limit(
            move |txs| {
                let raft = raft.clone();
                async move { commit_to_raft(&raft, txs).await }
            },
            RAFT_IN_FLIGHT,
            backlog,
        )
    }

    fn queue(&self, tx: Transaction, reply: Reply) -> bool {
        self.backlog.add(1);
        let queued = self.queue.send((tx, reply)).is_ok();
        if !queued {
            self.backlog.remove(1);
        }
        queued
    }

    /// Commits `tx` with the next batch.
    pub async fn propose(&self, tx: Transaction) -> Outcome {
        let (reply, outcome) = oneshot::channel();
        if !self.queue(tx, reply) {
            return Err(ProposeError::Shutdown);
        }
        outcome.await.unwrap_or(Err(ProposeError::Shutdown))
    }

    /// Commits `txs`, queued together and in order, and answers their
    /// outcomes in the same order.
    pub async fn propose_all(&self, txs: Vec<Transaction>) -> Vec<Outcome> {
        let outcomes: Vec<_> = txs
            .into_iter()
            .map(|tx| {
                let (reply, outcome) = oneshot::channel();
                (self.queue(tx, reply), outcome)
            })
            .collect();
        let mut results = Vec::with_capacity(outcomes.len());
        for (queued, outcome) in outcomes {
            results.push(match queued {
                true => outcome.await.unwrap_or(Err(ProposeError::Shutdown)),
                false => Err(ProposeError::Shutdown),
            });
        }
        results
    }
}

async fn run<F, Fut>(
    commit: F,
    mut pending: mpsc::UnboundedReceiver<(Transaction, Reply)>,
    in_flight: usize,
    backlog: Backlog,
) where
    F: Fn(Vec<Transaction>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Outcome>, ProposeError>> + Send + 'static,
{
    let in_flight = Arc::new(Semaphore::new(in_flight));
    // A write that did not fit in the previous batch opens the next one.
    let mut carried: Option<(Transaction, Reply)> = None;
    loop {
        // Waiting for a free slot first is what lets writes pile up into
        // one batch while the earlier ones are busy.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(first) => first,
            None => match pending.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut ops = first.0.len();
        let mut batch = vec![first];
        while ops < BATCH_OPS {
            let Ok(next) = pending.try_recv() else { break };
            if ops + next.0.len() > BATCH_OPS {
                carried = Some(next);
                break;
            }
            ops += next.0.len();
            batch.push(next);
        }
        backlog.remove(batch.len());
        let (txs, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let committed = commit(txs);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let outcome = committed.await;
            tracing::debug!(
                writes = replies.len(),
                ops,
                ms = started.elapsed().as_secs_f64() * 1000.0,
                "batch committed"
            );
            answer(replies, outcome);
            drop(slot);
        });
    }
}

/// Gives each writer its own transaction's outcome, or the batch's error.
fn answer(replies: Vec<Reply>, outcome: Result<Vec<Outcome>, ProposeError>) {
    let count = replies.len();
    let outcome = outcome.and_then(|outcomes| match outcomes.len() == count {
        true => Ok(outcomes),
        false => Err(ProposeError::Raft(format!(
            "{} outcomes came back for {count} transactions",
            outcomes.len()
        ))),
    });
    match outcome {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Proposes `txs` as one raft entry.
async fn commit_to_raft(raft: &Raft, txs: Vec<Transaction>) -> Result<Vec<Outcome>, ProposeError> {
    match raft.client_write(Proposal::new(txs)).await {
        Ok(response) => Ok(response
            .data
            .into_iter()
            .map(|result| result.map_err(ProposeError::Rejected))
            .collect()),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Err(ProposeError::NotManager)
        }
        Err(e) => Err(ProposeError::Raft(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::store::{Patch, TaskState};
    use crate::testing::eventually;

    /// A transaction of `ops` ops, told apart by its time.
    fn tx(time: i64, ops: usize) -> Transaction {
        let mut tx = Transaction::new(time);
        for i in 0..ops {
            tx = tx.patch(Patch::TaskDesiredState {
                id: format!("t{i}"),
                state: TaskState::Shutdown,
            });
        }
        tx
    }

    /// A batcher whose batches take `delay`, recording their sizes. Each
    /// transaction's outcome is its time, so that a mixed-up answer shows.
    fn recording(delay: Duration) -> (ProposalBatcher, Arc<Mutex<Vec<usize>>>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = ProposalBatcher::start(move |txs: Vec<Transaction>| {
            seen.lock().unwrap().push(txs.len());
            async move {
                tokio::time::sleep(delay).await;
                Ok(txs.iter().map(|tx| Ok(tx.time as u64)).collect())
            }
        });
        (batcher, sizes)
    }

    #[tokio::test]
    async fn queued_writes_share_batches_of_bounded_size() {
        let (batcher, sizes) = recording(Duration::from_millis(20));
        // 60 writes of 100 ops, queued at once: each batch stops at
        // BATCH_OPS, the later ones wait for an in-flight slot to free.
        let writes = (0..60).map(|i| {
            let batcher = batcher.clone();
            async move { (i, batcher.propose(tx(i, 100)).await) }
        });
        for (i, outcome) in futures::future::join_all(writes).await {
            assert_eq!(
                outcome.unwrap(),
                i as u64,
                "each writer gets its own outcome"
            );
        }
        assert_eq!(sizes.lock().unwrap().clone(), [10; 6]);
    }

    #[tokio::test]
    async fn a_lone_write_goes_out_at_once_and_a_large_one_alone() {
        let (batcher, sizes) = recording(Duration::ZERO);
        assert_eq!(batcher.propose(tx(7, 1)).await.unwrap(), 7);
        let outcomes = batcher
            .propose_all(vec![tx(1, BATCH_OPS), tx(2, 2), tx(3, 3)])
            .await;
        let outcomes: Vec<u64> = outcomes.into_iter().map(Result::unwrap).collect();
        assert_eq!(outcomes, [1, 2, 3]);
        assert_eq!(sizes.lock().unwrap().clone(), [1, 1, 2]);
    }

    #[tokio::test]
    async fn the_backlog_counts_the_writes_waiting_for_the_next_batch() {
        let backlog = Backlog::default();
        let gate = Arc::new(Semaphore::new(0));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let (opened, seen) = (gate.clone(), batches.clone());
        let batcher = ProposalBatcher::with_limit(
            move |txs: Vec<Transaction>| {
                seen.lock().unwrap().push(txs.len());
                let gate = opened.clone();
                async move {
                    gate.acquire().await.expect("gate open").forget();
                    Ok(txs.iter().map(|tx| Ok(tx.time as u64)).collect())
                }
            },
            1,
            backlog.clone(),
        );
        let propose = |time| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.propose(tx(time, 1)).await })
        };
        let first = propose(1);
        eventually("the first batch went out", || {
            batches.lock().unwrap().len() == 1
        })
        .await;
        assert_eq!(backlog.writes(), 0, "the first write went out at once");
        let waiting: Vec<_> = (2..5).map(propose).collect();
        eventually("three writes wait", || backlog.writes() == 3).await;
        gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), 1);
        eventually("the second batch went out", || {
            batches.lock().unwrap().len() == 2
        })
        .await;
        assert_eq!(backlog.writes(), 0, "the next batch took them all");
        gate.add_permits(1);
        for (write, time) in waiting.into_iter().zip(2..) {
            assert_eq!(write.await.unwrap().unwrap(), time);
        }
        assert_eq!(batches.lock().unwrap().clone(), [1, 3]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_writes() {
        let batcher =
            ProposalBatcher::start(|_txs| async { Err(ProposeError::Raft("no quorum".into())) });
        let outcomes = batcher.propose_all(vec![tx(1, 1), tx(2, 1)]).await;
        assert_eq!(outcomes.len(), 2);
        for outcome in outcomes {
            assert!(matches!(outcome, Err(ProposeError::Raft(ref m)) if m == "no quorum"));
        }
    }
}
