//! `shoal node ...`.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use shoal_proto::v1 as pb;

use super::output::{
    Filters, Format, Table, ago, availability_name, capitalize, has_label, key_value,
    manager_status_name, node_state_name, print_json, role_name, short, warn_if_stale,
};
use super::{Target, rpc_error, written_error};
use crate::fresh::write_fresh;

#[derive(Subcommand)]
pub enum NodeCommand {
    /// List the swarm's nodes.
    #[command(alias = "list")]
    Ls {
        /// Only ids.
        #[arg(long, short)]
        quiet: bool,
        /// table for reading, json for scripts.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// id=PREFIX, name=HOSTNAME-PREFIX, role=manager|worker,
        /// node.label=KEY[=VALUE], label=KEY[=VALUE] (engine labels),
        /// membership=accepted; repeatable.
        #[arg(long = "filter", short = 'f')]
        filters: Vec<String>,
    },
    /// Show nodes in detail (JSON unless --pretty).
    Inspect {
        /// Human-readable instead of JSON.
        #[arg(long)]
        pretty: bool,
        /// json (the default) or table (same as --pretty).
        #[arg(long, value_enum)]
        format: Option<Format>,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability or labels.
    Update(UpdateArgs),
    /// Make workers managers.
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers.
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes from the swarm.
    #[command(alias = "remove")]
    Rm {
        /// Remove a node that is not down (it is cut off at once).
        #[arg(long, short)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// List the tasks on a node.
    Ps {
        /// table for reading, json for scripts.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Do not truncate ids and errors.
        #[arg(long)]
        no_trunc: bool,
        /// desired-state=running|shutdown; repeatable.
        #[arg(long = "filter", short = 'f')]
        filters: Vec<String>,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Args)]
pub struct UpdateArgs {
    /// active: takes tasks; pause: keeps its tasks, takes no new ones;
    /// drain: its tasks move elsewhere.
    #[arg(long, value_parser = ["active", "pause", "drain"])]
    availability: Option<String>,
    /// Add or change a label (KEY=VALUE); repeatable.
    #[arg(long = "label-add")]
    label_add: Vec<String>,
    /// Remove a label; repeatable.
    #[arg(long = "label-rm")]
    label_rm: Vec<String>,
    node: String,
}

pub async fn run(target: &Target, command: NodeCommand) -> anyhow::Result<()> {
    let mut client = target.connect().await?;
    let rpc = |s| rpc_error(target, s);
    match command {
        NodeCommand::Ls {
            quiet,
            format,
            filters,
        } => {
            let filters = Filters::parse(
                &filters,
                &["id", "name", "role", "node.label", "label", "membership"],
            )?;
            let local = client
                .info(pb::InfoRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .node_id;
            let response = client
                .list_nodes(pb::ListNodesRequest::default())
                .await
                .map_err(rpc)?
                .into_inner();
            warn_if_stale(response.read.as_ref());
            let nodes: Vec<pb::Node> = response
                .nodes
                .into_iter()
                .filter(|node| node_passes(node, &filters))
                .collect();
            if quiet {
                for node in &nodes {
                    println!("{}", id_of(node));
                }
                return Ok(());
            }
            match format {
                Format::Json => {
                    print_json(&Value::Array(nodes.iter().map(node_summary).collect()))?
                }
                Format::Table => {
                    let mut table = Table::new(&[
                        "ID",
                        "HOSTNAME",
                        "STATUS",
                        "AVAILABILITY",
                        "MANAGER STATUS",
                        "AGENT VERSION",
                    ]);
                    for node in &nodes {
                        let id = id_of(node);
                        let marker = if id == local { " *" } else { "" };
                        let description = node.description.clone().unwrap_or_default();
                        table.row(vec![
                            format!("{id}{marker}"),
                            description.hostname,
                            capitalize(node_state_name(status_of(node).state)),
                            capitalize(availability_name(spec_of(node).availability)),
                            manager_status_name(node)
                                .map(capitalize)
                                .unwrap_or_default(),
                            description.agent_version,
                        ]);
                    }
                    table.print();
                }
            }
        }
        NodeCommand::Inspect {
            pretty,
            format,
            nodes,
        } => {
            let pretty = pretty || format == Some(Format::Table);
            let response = client
                .list_nodes(pb::ListNodesRequest { names: nodes })
                .await
                .map_err(rpc)?
                .into_inner();
            warn_if_stale(response.read.as_ref());
            if pretty {
                for node in &response.nodes {
                    print_pretty(node);
                }
            } else {
                print_json(&Value::Array(
                    response.nodes.iter().map(node_detail).collect(),
                ))?;
            }
        }
        NodeCommand::Update(args) => {
            change_node(&mut client, target, &args.node, |node, spec| {
                if let Some(availability) = &args.availability {
                    spec.availability = match availability.as_str() {
                        "pause" => pb::NodeAvailability::Pause,
                        "drain" => pb::NodeAvailability::Drain,
                        _ => pb::NodeAvailability::Active,
                    } as i32;
                }
                for label in &args.label_add {
                    let (k, v) = key_value(label);
                    if k.is_empty() {
                        anyhow::bail!("invalid label {label:?}: use KEY=VALUE");
                    }
                    spec.labels.insert(k, v);
                }
                for key in &args.label_rm {
                    if spec.labels.remove(key).is_none() {
                        let labels = match spec.labels.is_empty() {
                            true => "it has none".to_string(),
                            false => format!(
                                "its labels are: {}",
                                spec.labels.keys().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        };
                        anyhow::bail!("node {} has no label {key:?}; {labels}", hostname_of(node));
                    }
                }
                Ok(())
            })
            .await?;
            // As docker does: the node as the operator named it.
            println!("{}", args.node);
        }
        NodeCommand::Promote { nodes } => {
            for name in nodes {
                let node = find(&mut client, target, &name).await?;
                if role_name(node.role) == "manager" {
                    println!("Node {} is already a manager.", hostname_of(&node));
                    continue;
                }
                change_node(&mut client, target, &name, |_, spec| {
                    spec.desired_role = pb::NodeRole::Manager as i32;
                    Ok(())
                })
                .await?;
                let hostname = hostname_of(&node);
                match await_role(&mut client, target, &name, pb::NodeRole::Manager).await? {
                    RoleChange::Done => {
                        println!("Node {hostname} promoted to a manager in the swarm.")
                    }
                    RoleChange::WhenBack => println!(
                        "Node {hostname} is down: it becomes a manager once its agent is back."
                    ),
                }
            }
        }
        NodeCommand::Demote { nodes } => {
            for name in nodes {
                let node = find(&mut client, target, &name).await?;
                if role_name(node.role) == "worker"
                    && role_name(spec_of(&node).desired_role) == "worker"
                {
                    println!("Node {} is already a worker.", hostname_of(&node));
                    continue;
                }
                change_node(&mut client, target, &name, |_, spec| {
                    spec.desired_role = pb::NodeRole::Worker as i32;
                    Ok(())
                })
                .await?;
                await_role(&mut client, target, &name, pb::NodeRole::Worker).await?;
                println!("Manager {} demoted in the swarm.", hostname_of(&node));
            }
        }
        NodeCommand::Rm { force, nodes } => {
            for name in nodes {
                client
                    .remove_node(pb::RemoveNodeRequest {
                        node: name.clone(),
                        force,
                    })
                    .await
                    .map_err(rpc)?;
                println!("{name}");
            }
        }
        NodeCommand::Ps {
            format,
            no_trunc,
            filters,
            nodes,
        } => {
            let query = pb::ListTasksRequest {
                nodes,
                ..super::service::task_query(&filters, &["desired-state"])?
            };
            let response = client.list_tasks(query).await.map_err(rpc)?.into_inner();
            warn_if_stale(response.read.as_ref());
            super::service::print_tasks(response.tasks, format, no_trunc)?;
        }
    }
    Ok(())
}

async fn find(
    client: &mut shoal_proto::v1::control_client::ControlClient<tonic::transport::Channel>,
    target: &Target,
    name: &str,
) -> anyhow::Result<pb::Node> {
    client
        .list_nodes(pb::ListNodesRequest {
            names: vec![name.to_string()],
        })
        .await
        .map_err(|s| rpc_error(target, s))?
        .into_inner()
        .nodes
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no such node: {name}"))
}

/// How long promote and demote wait for the leader to carry the change
/// out: a raft membership change, a few heartbeats at most.
const ROLE_CHANGE_WAIT: Duration = Duration::from_secs(20);

enum RoleChange {
    Done,
    /// A down node takes a manager role when its agent returns and asks
    /// to join raft; that is reported, not waited for.
    WhenBack,
}

/// Waits until the node named `name` holds `role`, so that the verdict
/// printed, and the `node ls` that follows, are true.
async fn await_role(
    client: &mut shoal_proto::v1::control_client::ControlClient<tonic::transport::Channel>,
    target: &Target,
    name: &str,
    role: pb::NodeRole,
) -> anyhow::Result<RoleChange> {
    let deadline = Instant::now() + ROLE_CHANGE_WAIT;
    loop {
        let node = match find(client, target, name).await {
            Ok(node) => node,
            // The node this command talks to demoted itself: it no longer
            // answers as a manager, which is the change asked for.
            Err(_) if role == pb::NodeRole::Worker && !still_manager(client).await => {
                return Ok(RoleChange::Done);
            }
            Err(e) => return Err(e),
        };
        let settled = node.role == role as i32
            && (role == pb::NodeRole::Manager || node.manager_status.is_none());
        if settled {
            return Ok(RoleChange::Done);
        }
        let down = status_of(&node).state == pb::NodeState::Down as i32;
        if role == pb::NodeRole::Manager && down {
            return Ok(RoleChange::WhenBack);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "node {} is still a {} {} s after the change was accepted; the leader keeps \
                 trying: see 'shoal node inspect --pretty {}' and the leader's log",
                hostname_of(&node),
                role_name(node.role),
                ROLE_CHANGE_WAIT.as_secs(),
                hostname_of(&node)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the node this command talks to still answers as a manager.
async fn still_manager(
    client: &mut shoal_proto::v1::control_client::ControlClient<tonic::transport::Channel>,
) -> bool {
    let refused = client
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .is_err_and(|s| s.code() == tonic::Code::FailedPrecondition);
    !refused
}

/// Reads a node, changes its spec and writes it back naming the version
/// read (made again from a fresh read if the cluster changed the node
/// meanwhile, see [`crate::fresh`]). Answers the node as read.
async fn change_node(
    client: &mut shoal_proto::v1::control_client::ControlClient<tonic::transport::Channel>,
    target: &Target,
    name: &str,
    change: impl Fn(&pb::Node, &mut pb::NodeSpec) -> anyhow::Result<()>,
) -> anyhow::Result<pb::Node> {
    let node = find(client, target, name).await?;
    let written = write_fresh(
        node,
        |node| {
            let mut client = client.clone();
            let mut spec = spec_of(node);
            let changed = change(node, &mut spec);
            let request = pb::UpdateNodeRequest {
                node: id_of(node).to_string(),
                version: node.meta.as_ref().map_or(0, |m| m.version),
                spec: Some(spec),
            };
            let node = node.clone();
            async move {
                changed?;
                client.update_node(request).await?;
                Ok(node)
            }
        },
        || {
            let mut client = client.clone();
            async move { find(&mut client, target, name).await }
        },
    )
    .await;
    written.map_err(|e| written_error(target, e))
}

fn id_of(node: &pb::Node) -> &str {
    node.meta.as_ref().map(|m| m.id.as_str()).unwrap_or("")
}

fn hostname_of(node: &pb::Node) -> String {
    node.description
        .as_ref()
        .map(|d| d.hostname.clone())
        .unwrap_or_default()
}

fn spec_of(node: &pb::Node) -> pb::NodeSpec {
    node.spec.clone().unwrap_or_default()
}

fn status_of(node: &pb::Node) -> pb::NodeStatus {
    node.status.clone().unwrap_or_default()
}

/// The shape of `node ls --format json`.
/// Whether `node` passes `node ls`'s filters.
fn node_passes(node: &pb::Node, filters: &Filters) -> bool {
    let description = node.description.clone().unwrap_or_default();
    filters.allow("id", |prefix| id_of(node).starts_with(prefix))
        && filters.allow("name", |prefix| description.hostname.starts_with(prefix))
        && filters.allow("role", |role| role_name(node.role) == role)
        && filters.allow("node.label", |label| has_label(&spec_of(node).labels, label))
        && filters.allow("label", |label| has_label(&description.engine_labels, label))
        // Every node in the store has been accepted: there is no pending
        // state to filter for.
        && filters.allow("membership", |membership| membership == "accepted")
}

fn node_summary(node: &pb::Node) -> Value {
    let description = node.description.clone().unwrap_or_default();
    json!({
        "id": id_of(node),
        "hostname": description.hostname,
        "role": role_name(node.role),
        "status": node_state_name(status_of(node).state),
        "availability": availability_name(spec_of(node).availability),
        "manager_status": manager_status_name(node),
        "addr": status_of(node).addr,
        "labels": spec_of(node).labels,
        "agent_version": description.agent_version,
    })
}

/// The shape of `node inspect`.
/// The shape of `node inspect` (the console's inspect pane too).
pub(crate) fn node_detail(node: &pb::Node) -> Value {
    let meta = node.meta.clone().unwrap_or_default();
    let spec = spec_of(node);
    let description = node.description.clone().unwrap_or_default();
    let resources = description.resources.unwrap_or_default();
    let status = status_of(node);
    json!({
        "id": meta.id,
        "version": meta.version,
        "created_at_ms": meta.created_at_ms,
        "updated_at_ms": meta.updated_at_ms,
        "spec": {
            "role": role_name(spec.desired_role),
            "availability": availability_name(spec.availability),
            "labels": spec.labels,
        },
        "role": role_name(node.role),
        "description": {
            "hostname": description.hostname,
            "os": description.platform_os,
            "arch": description.platform_arch,
            "nano_cpus": resources.nano_cpus,
            "memory_bytes": resources.memory_bytes,
            "engine_labels": description.engine_labels,
            "agent_version": description.agent_version,
            "executor": description.executor,
        },
        "status": {
            "state": node_state_name(status.state),
            "message": status.message,
            "addr": status.addr,
            "timestamp_ms": status.timestamp_ms,
        },
        "manager_status": node.manager_status.as_ref().filter(|_| role_name(node.role) == "manager").map(|m| json!({
            "raft_id": m.raft_id,
            "addr": m.addr,
            "leader": m.leader,
            "reachability": manager_status_name(node),
            "locked": m.locked,
        })),
    })
}

fn print_pretty(node: &pb::Node) {
    let meta = node.meta.clone().unwrap_or_default();
    let spec = spec_of(node);
    let description = node.description.clone().unwrap_or_default();
    let resources = description.resources.unwrap_or_default();
    let status = status_of(node);
    println!("ID:\t\t\t{}", meta.id);
    println!("Hostname:\t\t{}", description.hostname);
    println!("Joined at:\t\t{}", ago(meta.created_at_ms));
    println!("Status:");
    println!(" State:\t\t\t{}", capitalize(node_state_name(status.state)));
    if !status.message.is_empty() {
        println!(" Message:\t\t{}", status.message);
    }
    println!(
        " Availability:\t\t{}",
        capitalize(availability_name(spec.availability))
    );
    println!(" Address:\t\t{}", status.addr);
    if let Some(manager) = manager_status_name(node) {
        println!("Manager Status:");
        if let Some(m) = &node.manager_status {
            println!(" Address:\t\t{}", m.addr);
        }
        println!(" Raft Status:\t\t{}", capitalize(manager));
    }
    if !spec.labels.is_empty() {
        println!("Labels:");
        for (k, v) in &spec.labels {
            println!(" - {k}={v}");
        }
    }
    println!("Platform:");
    println!(" Operating System:\t{}", description.platform_os);
    println!(" Architecture:\t\t{}", description.platform_arch);
    println!("Resources:");
    println!(" CPUs:\t\t\t{}", resources.nano_cpus as f64 / 1e9);
    println!(
        " Memory:\t\t{:.1} GiB",
        resources.memory_bytes as f64 / (1u64 << 30) as f64
    );
    println!("Executor:\t\t{}", description.executor);
    println!("Agent Version:\t\t{}", description.agent_version);
    println!("Short ID:\t\t{}", short(&meta.id));
    println!();
}
