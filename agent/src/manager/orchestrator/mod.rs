//! Orchestrators turn service specs into tasks, and keep them so.
//!
//! - [`replicated`]: slots 1..N per replicated service.
//! - [`global`]: one task per eligible node per global service.
//! - [`restart`]: restart policies; delayed restarts.
//! - [`update`]: rolling updates and rollbacks of tasks whose spec changed.
//! - [`reaper`]: task history retention and removal.
//! - [`constraint`]: tasks on nodes that stopped satisfying them.
//!
//! Each is a [`Reconciler`] run by [`drive`]: it observes store changes,
//! and when something it cares about changed (or a timer of its own is
//! due) it reconciles from the store and proposes what it would change.
//! Bursts of changes are gathered for a few milliseconds so that 100,000
//! task creations cost a handful of passes, not 100,000.

pub mod constraint;
pub mod global;
pub mod reaper;
pub mod replicated;
pub mod restart;
pub mod update;

use std::time::Duration;

use tokio::sync::broadcast;

use super::{LeaderContext, ProposeError};
use crate::ids::now_ms;
use crate::store::*;

/// Ops per proposed transaction.
pub const BATCH: usize = 1_000;
/// Transactions of one pass proposed at once.
const IN_FLIGHT: usize = 4;
/// How long changes are gathered before a pass.
const GATHER: Duration = Duration::from_millis(10);

/// Starts every leader loop: the orchestrators and the scheduler.
pub fn spawn_all(ctx: LeaderContext) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(super::scheduler::run(ctx.clone())),
        tokio::spawn(drive(ctx.clone(), replicated::Replicated::default())),
        tokio::spawn(drive(ctx.clone(), global::Global::default())),
        tokio::spawn(drive(ctx.clone(), restart::Restarts::default())),
        tokio::spawn(drive(ctx.clone(), update::Updates::default())),
        tokio::spawn(drive(ctx.clone(), reaper::Reaper::default())),
        tokio::spawn(drive(ctx, constraint::Enforcer::default())),
    ]
}

/// A control loop's logic; [`drive`] supplies the events and timing.
#[allow(async_fn_in_trait)]
pub trait Reconciler {
    const NAME: &'static str;

    /// Notes what `changes` concern; returns whether a pass is needed.
    fn observe(&mut self, changes: &Changes) -> bool;

    /// Reads the store and proposes changes. `full` asks to look at
    /// everything (first pass, or events were missed).
    async fn reconcile(&mut self, ctx: &LeaderContext, full: bool) -> Result<(), ProposeError>;

    /// When the loop wants a pass even without events (timers).
    fn next_deadline(&self) -> Option<Duration>;
}

/// Runs a reconciler until leadership ends.
pub async fn drive<R: Reconciler>(ctx: LeaderContext, mut reconciler: R) {
    let mut changes = ctx.store.subscribe();
    let mut full = true;
    let mut dirty = true;
    let mut backoff = Duration::from_millis(100);
    loop {
        if dirty || full {
            let started = std::time::Instant::now();
            let outcome = reconciler.reconcile(&ctx, full).await;
            tracing::debug!(
                control_loop = R::NAME,
                full,
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                ok = outcome.is_ok(),
                "pass"
            );
            match outcome {
                Ok(()) => {
                    full = false;
                    dirty = false;
                    backoff = Duration::from_millis(100);
                }
                Err(ProposeError::Rejected(TxError::Conflict { .. })) => {
                    // Someone changed what we read: read again at once.
                    dirty = true;
                    continue;
                }
                Err(e) => {
                    if ctx.shutdown.is_cancelled() {
                        return;
                    }
                    tracing::warn!(control_loop = R::NAME, error = %e, "pass failed; retrying");
                    full = true;
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = ctx.shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let deadline = reconciler.next_deadline();
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            change = changes.recv() => {
                match change {
                    Ok(change) if change.reset => full = true,
                    Ok(change) => dirty |= reconciler.observe(&change),
                    Err(broadcast::error::RecvError::Lagged(_)) => full = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                // Gather the rest of a burst before the pass.
                if dirty || full {
                    let gathered = tokio::time::sleep(GATHER);
                    tokio::pin!(gathered);
                    loop {
                        tokio::select! {
                            () = &mut gathered => break,
                            change = changes.recv() => match change {
                                Ok(change) if change.reset => full = true,
                                Ok(change) => dirty |= reconciler.observe(&change),
                                Err(broadcast::error::RecvError::Lagged(_)) => full = true,
                                Err(broadcast::error::RecvError::Closed) => return,
                            },
                        }
                    }
                }
            }
            () = timer => dirty = true,
            () = ctx.shutdown.cancelled() => return,
        }
    }
}

/// Proposes `ops` in transactions of at most [`BATCH`] ops, up to
/// [`IN_FLIGHT`] of them at once: raft then appends, replicates and syncs
/// several in one round instead of paying a round per transaction. The
/// transactions of one pass touch different objects, so their order does
/// not matter; an op a concurrent commit made stale fails its own check.
pub async fn commit(ctx: &LeaderContext, ops: Vec<Op>) -> Result<(), ProposeError> {
    // One group larger than a transaction is cut where transactions fill.
    commit_groups(ctx, vec![ops]).await
}

/// Commits `groups` of ops, each group whole in one transaction: a group
/// that checks an object's version passes or fails with the ops it guards.
pub async fn commit_groups(ctx: &LeaderContext, groups: Vec<Vec<Op>>) -> Result<(), ProposeError> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(pack_groups(groups, now_ms()))
        .map(|tx| ctx.proposer.propose(tx))
        .buffer_unordered(IN_FLIGHT)
        .try_for_each(|_| async { Ok(()) })
        .await
}

/// Packs `groups` into transactions of up to [`BATCH`] ops, never splitting
/// a group that fits in one. A larger group (which carries no version
/// check: raft messages are bounded) is cut where the transactions fill.
fn pack_groups(groups: Vec<Vec<Op>>, time: i64) -> Vec<Transaction> {
    let mut transactions = Vec::new();
    let mut tx = Transaction::new(time);
    for group in groups {
        if group.len() <= BATCH && tx.len() + group.len() > BATCH {
            transactions.push(std::mem::replace(&mut tx, Transaction::new(time)));
        }
        for op in group {
            if tx.len() == BATCH {
                transactions.push(std::mem::replace(&mut tx, Transaction::new(time)));
            }
            tx.push(op);
        }
    }
    if !tx.is_empty() {
        transactions.push(tx);
    }
    transactions
}

/// A new task for `service` in `slot` (replicated) or on `node_id`
/// (global), in `state` (Pending, or New when a restart must wait).
pub fn new_task(service: &Service, slot: u64, node_id: &str, state: TaskState) -> Task {
    let now = now_ms();
    Task {
        meta: Meta::new(crate::ids::new_id(), now),
        service_id: service.meta.id.clone(),
        service_name: service.spec.name.clone(),
        slot,
        node_id: node_id.to_string(),
        spec: service.spec.task.clone(),
        spec_version: service.meta.version,
        desired_state: TaskState::Running,
        status: TaskStatus {
            state,
            timestamp: now,
            message: match state {
                TaskState::New => "waiting for the restart delay".into(),
                _ => "created".into(),
            },
            ..Default::default()
        },
    }
}

/// The op that stops a task.
pub fn shutdown(task: &Task) -> Op {
    desire(task, TaskState::Shutdown)
}

/// The op that stops a task for good: its service or node is going away,
/// and the reaper deletes it once it has stopped.
pub fn remove(task: &Task) -> Op {
    desire(task, TaskState::Remove)
}

fn desire(task: &Task, state: TaskState) -> Op {
    Op::Patch(Patch::TaskDesiredState {
        id: task.meta.id.clone(),
        state,
    })
}

/// Whether the task holds its slot: it is meant to run (or ran and its
/// restart policy said not to restart it).
pub fn holds_slot(task: &Task) -> bool {
    task.desired_state <= TaskState::Running
}

/// Whether the node can keep running tasks: it exists, is not down and is
/// not drained.
pub fn node_keeps_tasks(tables: &Tables, node_id: &str) -> bool {
    if node_id.is_empty() {
        return true;
    }
    tables.nodes.get(node_id).is_some_and(|n| {
        n.status.state != NodeState::Down && n.spec.availability != Availability::Drain
    })
}

/// The key of a task's place: its slot, or for global tasks its node.
pub fn slot_key(task: &Task) -> (u64, String) {
    if task.slot == 0 {
        (0, task.node_id.clone())
    } else {
        (task.slot, String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(len: usize) -> Vec<Op> {
        (0..len)
            .map(|i| {
                Op::Patch(Patch::TaskDesiredState {
                    id: format!("t{i}"),
                    state: TaskState::Shutdown,
                })
            })
            .collect()
    }

    #[test]
    fn groups_that_fit_share_transactions_but_are_never_split() {
        let sizes = |txs: &[Transaction]| txs.iter().map(Transaction::len).collect::<Vec<_>>();
        let packed = pack_groups(vec![group(600), group(300), group(200), vec![]], 0);
        assert_eq!(sizes(&packed), vec![900, 200]);
        // A group larger than a transaction may hold is cut where they fill.
        let packed = pack_groups(vec![group(10), group(BATCH + 5), group(10)], 0);
        assert_eq!(sizes(&packed), vec![BATCH, 25]);
        assert!(pack_groups(vec![vec![], vec![]], 0).is_empty());
    }
}
