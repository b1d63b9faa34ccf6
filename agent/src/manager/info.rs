//! `shoal info`: what this node knows about itself and the cluster.

use shoal_proto::v1 as pb;

use crate::node::{Agent, Mode};
use crate::store::{Reachability, Role};

pub async fn info(agent: &Agent) -> pb::InfoResponse {
    let mut info = pb::InfoResponse {
        agent_version: crate::node::AGENT_VERSION.into(),
        hostname: agent.config.hostname.clone(),
        ..Default::default()
    };
    let active = match &*agent.mode_read().await {
        Mode::Inactive => {
            info.state = pb::LocalNodeState::Inactive as i32;
            info.message =
                "not part of a swarm: run 'shoal swarm init' or 'shoal swarm join'".into();
            return info;
        }
        Mode::Locked(membership) => {
            info.state = pb::LocalNodeState::Locked as i32;
            info.node_id = membership.node_id.clone();
            info.cluster_id = membership.cluster_id.clone();
            info.role = pb::NodeRole::from(membership.role) as i32;
            info.node_addr = membership.advertise_addr.clone();
            info.manager_addrs = membership.managers.clone();
            info.message =
                "this node is locked: run 'shoal swarm unlock' with the cluster's unlock key"
                    .into();
            return info;
        }
        Mode::Active(active) => active.clone(),
    };
    let membership = active.membership.lock().clone();
    info.state = pb::LocalNodeState::Active as i32;
    info.node_id = membership.node_id.clone();
    info.cluster_id = membership.cluster_id.clone();
    info.role = pb::NodeRole::from(membership.role) as i32;
    info.node_addr = membership.advertise_addr.clone();
    info.manager_addrs = membership.managers.clone();
    info.executor = active.worker.executor_kind().to_string();
    info.cert_expires_at_ms = active.tls.certificate().not_after;
    let Some(manager) = active.manager() else {
        info.leader_addr = active.worker.leader_addr().unwrap_or_default();
        info.managers = membership.managers.len() as u32;
        return info;
    };
    let metrics = manager.metrics();
    info.raft_term = metrics.current_term;
    info.applied_index = metrics.last_applied.map(|l| l.index).unwrap_or(0);
    info.commit_index = info.applied_index;
    let (reachable, total) = manager.reachable_voters();
    info.reachable_managers = reachable as u32;
    info.fault_tolerance = if total == 0 {
        0
    } else {
        reachable as i32 - shoal_proto::quorum(total) as i32
    };
    let leader = manager.leader();
    if let Some(cause) = manager.raft_stopped() {
        info.message = crate::manager::raft_stopped_message(&cause);
    } else if let Some((_, member)) = &leader {
        info.leader_id = member.node_id.clone();
        info.leader_addr = member.addr.clone();
    } else {
        info.message = crate::manager::no_leader_message(reachable, total);
    }
    let members = manager.members();
    let tables = manager.store.read();
    info.nodes = tables.nodes.len() as u32;
    info.autolock = tables.cluster().is_some_and(|c| c.spec.autolock);
    for (raft_id, member, voter) in &members {
        let node = tables.nodes.get(&member.node_id);
        let is_leader = leader.as_ref().is_some_and(|(id, _)| id == raft_id);
        let reachability = if is_leader || *raft_id == manager.raft_id {
            Reachability::Reachable
        } else {
            node.and_then(|n| n.manager_status.as_ref())
                .map(|m| m.reachability)
                .unwrap_or_default()
        };
        info.manager_list.push(pb::ManagerInfo {
            node_id: member.node_id.clone(),
            hostname: node
                .map(|n| n.description.hostname.clone())
                .unwrap_or_default(),
            addr: member.addr.clone(),
            raft_id: *raft_id,
            leader: is_leader,
            reachability: pb::Reachability::from(reachability) as i32,
            voter: *voter,
        });
    }
    // Raft ids are random: by hostname, as `node ls` lists nodes.
    info.manager_list
        .sort_by(|a, b| (&a.hostname, &a.node_id).cmp(&(&b.hostname, &b.node_id)));
    info.managers = members.iter().filter(|(_, _, voter)| *voter).count() as u32;
    if info.managers == 0 {
        info.managers = tables
            .nodes
            .iter()
            .filter(|n| n.role == Role::Manager)
            .count() as u32;
    }
    info
}
