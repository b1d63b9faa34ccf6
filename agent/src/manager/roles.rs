//! The leader's role manager: makes raft membership follow the nodes'
//! desired roles, and records which managers are reachable.
//!
//! Promotion is driven by the promoted node (it asks to join raft, see
//! `Raft.JoinRaft`); demotion and departures are driven from here:
//!
//! - desired worker, still a raft member → removed from raft, then its
//!   role becomes worker (the node then renews its certificate as one);
//! - a manager no longer in raft (it left) → its role becomes worker.
//!
//! Reachability is observed (the leader hears from every member several
//! times a second) and written only when it changes, so every manager
//! shows the same answer.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::LeaderContext;
use super::runtime::ManagerRuntime;
use crate::ids::now_ms;
use crate::store::*;

pub async fn manage_roles(runtime: Arc<ManagerRuntime>, ctx: LeaderContext) {
    let mut changes = ctx.store.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // Roles follow the nodes. Raft membership changes publish no
            // event: the tick covers them.
            open = next_touching(&mut changes, Kind::Node) => if !open {
                return;
            },
            () = ctx.shutdown.cancelled() => return,
        }
        if let Err(e) = reconcile(&runtime, &ctx).await {
            tracing::debug!(error = %e, "role reconciliation will retry");
        }
    }
}

async fn reconcile(runtime: &Arc<ManagerRuntime>, ctx: &LeaderContext) -> Result<(), String> {
    let window = Duration::from_millis(runtime.timing.election_max_ms * 3);
    // Membership as applied to the store, read together with the nodes: a
    // promoted node's role is recorded after raft added it, so the two
    // agree. raft's metrics can lag the store, and a freshly promoted
    // manager read against them looked as if it had left raft.
    let (members, nodes) = {
        let tables = ctx.store.read();
        let members: HashSet<u64> = tables
            .raft
            .membership
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        let nodes: Vec<Arc<Node>> = tables
            .nodes
            .iter()
            .filter(|n| n.role == Role::Manager)
            .cloned()
            .collect();
        (members, nodes)
    };
    for node in nodes {
        let raft_id = node.manager_status.as_ref().map_or(0, |m| m.raft_id);
        let in_raft = members.contains(&raft_id);
        if node.spec.desired_role == Role::Worker && in_raft {
            tracing::info!(node = %node.description.hostname, "demoting: removing the manager from raft");
            runtime.remove_member(raft_id).await?;
            // Leaders that removed themselves step down; the next leader
            // records the role.
            if raft_id == runtime.raft_id {
                return Ok(());
            }
            continue;
        }
        let mut updated = (*node).clone();
        if !in_raft {
            tracing::info!(node = %node.description.hostname, "manager is no longer in raft: recording it as a worker");
            updated.role = Role::Worker;
            updated.spec.desired_role = Role::Worker;
            updated.manager_status = None;
        } else if raft_id != runtime.raft_id {
            let reachable = node
                .manager_status
                .as_ref()
                .is_some_and(|_| runtime.contacts.recently(&node.meta.id, window));
            let reachability = if reachable {
                Reachability::Reachable
            } else {
                Reachability::Unreachable
            };
            if let Some(status) = updated.manager_status.as_mut() {
                status.reachability = reachability;
            }
        } else if let Some(status) = updated.manager_status.as_mut() {
            status.reachability = Reachability::Reachable;
        }
        if updated != *node {
            updated.meta.updated_at = now_ms();
            match ctx
                .proposer
                .propose(Transaction::new(now_ms()).update(updated))
                .await
            {
                Ok(_) | Err(super::ProposeError::Rejected(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    Ok(())
}
