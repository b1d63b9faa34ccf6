//! `shoal info`.

use serde_json::json;
use shoal_proto::v1 as pb;

use super::output::{Format, print_json, role_name, short};
use super::{Target, rpc_error};

#[derive(clap::Args)]
pub struct InfoArgs {
    /// table for reading, json for scripts.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn state_name(state: i32) -> &'static str {
    match pb::LocalNodeState::try_from(state) {
        Ok(pb::LocalNodeState::Active) => "active",
        Ok(pb::LocalNodeState::Locked) => "locked",
        Ok(pb::LocalNodeState::Pending) => "pending",
        Ok(pb::LocalNodeState::Error) => "error",
        _ => "inactive",
    }
}

pub async fn run(target: &Target, args: InfoArgs) -> anyhow::Result<()> {
    let mut client = target.connect().await?;
    let info = client
        .info(pb::InfoRequest {})
        .await
        .map_err(|s| rpc_error(target, s))?
        .into_inner();
    let state = state_name(info.state);
    let active = state == "active";
    // A worker knows the managers it can reach, not the cluster's nodes.
    let is_manager = active && role_name(info.role) == "manager";
    let leader = info
        .manager_list
        .iter()
        .find(|m| m.leader)
        .map(|m| m.hostname.clone());
    match args.format {
        Format::Json => print_json(&json!({
            "state": state,
            "node_id": info.node_id,
            "hostname": info.hostname,
            "role": active.then(|| role_name(info.role)),
            "cluster_id": info.cluster_id,
            "node_addr": info.node_addr,
            "managers": info.managers,
            "nodes": is_manager.then_some(info.nodes),
            "manager_addrs": info.manager_addrs,
            "reachable_managers": info.reachable_managers,
            "fault_tolerance": info.fault_tolerance,
            "leader": if info.leader_id.is_empty() { None } else { Some(&info.leader_id) },
            "leader_addr": info.leader_addr,
            "raft_term": info.raft_term,
            "commit_index": info.commit_index,
            "applied_index": info.applied_index,
            "autolock": info.autolock,
            "executor": info.executor,
            "agent_version": info.agent_version,
            "cert_expires_at_ms": info.cert_expires_at_ms,
            "message": info.message,
            "manager_list": info.manager_list.iter().map(|m| json!({
                "node_id": m.node_id,
                "hostname": m.hostname,
                "addr": m.addr,
                "raft_id": m.raft_id,
                "leader": m.leader,
                "reachable": m.reachability == pb::Reachability::Reachable as i32,
            })).collect::<Vec<_>>(),
        })),
        Format::Table => {
            println!("Swarm: {state}");
            if !info.message.is_empty() {
                println!(" Message: {}", info.message);
            }
            if !info.node_id.is_empty() {
                println!(" NodeID: {}", info.node_id);
                println!(" Hostname: {}", info.hostname);
            }
            if active {
                println!(" Role: {}", role_name(info.role));
                println!(" Cluster ID: {}", info.cluster_id);
                println!(" Node Address: {}", info.node_addr);
                println!(" Managers: {}", info.managers);
                if is_manager {
                    println!(" Nodes: {}", info.nodes);
                } else {
                    println!(" Manager Addresses:");
                    for addr in &info.manager_addrs {
                        println!("  {addr}");
                    }
                }
                println!(" Executor: {}", info.executor);
                if is_manager {
                    match &leader {
                        Some(name) => println!(
                            " Leader: {} ({}) at {}",
                            name,
                            short(&info.leader_id),
                            info.leader_addr
                        ),
                        None => println!(" Leader: none"),
                    }
                    println!(
                        " Raft: term {}, commit index {}, applied {}",
                        info.raft_term, info.commit_index, info.applied_index
                    );
                    println!(
                        " Quorum: {} of {} managers reachable, {} more can fail",
                        info.reachable_managers,
                        info.managers,
                        info.fault_tolerance.max(0)
                    );
                    println!(" Autolock: {}", info.autolock);
                }
            }
            println!(" Agent Version: {}", info.agent_version);
            Ok(())
        }
    }
}
