//! Scale: 3 managers and `--nodes` simulated nodes with real sessions
//! (each joins with the worker token, gets its own certificate, keeps a
//! mutual-TLS session with heartbeats and reports its tasks running), then
//! one service of `--replicas` replicas. Measures the time until all are
//! running as the store records it, and the leader's memory.
//!
//!     cargo run --release -p shoal-tests --bin swarm2k -- --nodes 2300 --replicas 100000
//!
//! Last line: `converged_s=… manager_rss_mb=… assignment_messages=…`, the
//! last counting the session messages that carried assignments (fewer,
//! fuller messages are what keeps 2,300 sessions cheap).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use futures::StreamExt;
use shoal_proto::v1 as pb;
use shoal_proto::v1::ca_client::CaClient;
use shoal_proto::v1::dispatcher_client::DispatcherClient;
use shoal_tests::{Cluster, Executor};
use tokio::sync::Semaphore;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 2300)]
    nodes: usize,
    #[arg(long, default_value_t = 100_000)]
    replicas: u64,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 32)]
    parallel_joins: usize,
}

/// Session messages that carried assignments, over all simulated nodes.
static ASSIGNMENT_MESSAGES: AtomicU64 = AtomicU64::new(0);

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One simulated node: join, then serve the session until the process ends.
async fn simulated_node(
    index: usize,
    leader: String,
    token: String,
    root: String,
    joined: Arc<Semaphore>,
    join_slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<()> {
    let (key, csr) = shoal_agent::pki::ca::new_key_and_csr()?;
    let description = pb::NodeDescription {
        hostname: format!("sim-{index:04}"),
        executor: "sim".into(),
        resources: Some(pb::Resources {
            nano_cpus: 4_000_000_000,
            memory_bytes: 8 << 30,
        }),
        ..Default::default()
    };
    let anonymous = shoal_agent::pki::tls::anonymous_client_config(Some(&root))?;
    let channel =
        shoal_proto::transport::connect_tls(&leader, anonymous, shoal_proto::MANAGER_SERVER_NAME)
            .await?;
    let issued = CaClient::new(channel)
        .issue_node_certificate(pb::IssueNodeCertificateRequest {
            token,
            csr_pem: csr,
            description: Some(description.clone()),
            advertise_addr: String::new(),
        })
        .await?
        .into_inner();
    let tls = shoal_proto::transport::client_tls_config(
        root.as_bytes(),
        issued.certificate_pem.as_bytes(),
        key.expose().as_bytes(),
    )
    .map_err(anyhow::Error::msg)?;
    let channel = shoal_proto::transport::connect_tls(
        &leader,
        Arc::new(tls),
        shoal_proto::MANAGER_SERVER_NAME,
    )
    .await?;
    let mut client = DispatcherClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let mut stream = client
        .session(pb::SessionRequest {
            description: Some(description),
            advertise_addr: String::new(),
            running_task_ids: Vec::new(),
        })
        .await?
        .into_inner();
    joined.add_permits(1);
    drop(join_slot);
    let mut session_id = String::new();
    let (beats, outgoing) = tokio::sync::mpsc::channel(4);
    let mut acks = client
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return Ok(()) };
                let message = message?;
                if !message.session_id.is_empty() {
                    session_id = message.session_id.clone();
                }
                let Some(assignments) = message.assignments else { continue };
                ASSIGNMENT_MESSAGES.fetch_add(1, Ordering::Relaxed);
                let updates: Vec<pb::TaskStatusUpdate> = assignments
                    .tasks
                    .iter()
                    .filter(|t| t.desired_state <= pb::TaskState::Running as i32)
                    .filter(|t| t.status.as_ref().is_none_or(|s| s.state < pb::TaskState::Running as i32))
                    .filter_map(|t| t.meta.as_ref())
                    .map(|meta| pb::TaskStatusUpdate {
                        task_id: meta.id.clone(),
                        status: Some(pb::TaskStatus {
                            state: pb::TaskState::Running as i32,
                            timestamp_ms: shoal_agent::ids::now_ms(),
                            message: "simulated".into(),
                            ..Default::default()
                        }),
                    })
                    .collect();
                if !updates.is_empty() {
                    client
                        .update_task_status(pb::UpdateTaskStatusRequest {
                            session_id: session_id.clone(),
                            updates,
                        })
                        .await?;
                }
            }
            _ = heartbeat.tick() => {
                if !session_id.is_empty() {
                    beats.send(pb::HeartbeatRequest { session_id: session_id.clone() }).await?;
                }
            }
            ack = acks.message() => {
                if ack?.is_none() {
                    anyhow::bail!("the leader ended the heartbeat stream");
                }
            }
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cluster = Cluster::start(3, 0, Executor::Sim)?;
    let leader_name = cluster.leader()?;
    let leader = cluster.agent(&leader_name);
    let token = leader
        .shoal_ok(&["swarm", "join-token", "-q", "worker"])?
        .trim()
        .to_string();
    let root = std::fs::read_to_string(leader.data_dir.join("certificates").join("root-ca.pem"))
        .context("reading the root CA")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let joined = Arc::new(Semaphore::new(0));
    let gate = Arc::new(Semaphore::new(args.parallel_joins));
    // Sessions cut by the shutdown at the end are not failures to report.
    let measuring = Arc::new(AtomicBool::new(true));
    runtime.block_on(async {
        for i in 0..args.nodes {
            let leader = leader.addr.clone();
            let token = token.clone();
            let root = root.clone();
            let joined = joined.clone();
            let gate = gate.clone();
            let measuring = measuring.clone();
            tokio::spawn(async move {
                let Ok(permit) = gate.acquire_owned().await else {
                    return;
                };
                let counted = joined.clone();
                if let Err(e) = simulated_node(i, leader, token, root, joined, permit).await {
                    if measuring.load(Ordering::Relaxed) {
                        eprintln!("simulated node {i}: {e:#}");
                    }
                    counted.add_permits(1);
                }
            });
        }
        let all = joined.acquire_many(args.nodes as u32).await;
        all.map(|p| p.forget())
    })?;
    println!(
        "{} simulated nodes joined with sessions in {:.1} s",
        args.nodes,
        started.elapsed().as_secs_f64()
    );

    let replicas = args.replicas.to_string();
    let started = Instant::now();
    leader.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "big",
        "--replicas",
        &replicas,
        "img",
    ])?;
    let socket = leader.socket.clone();
    let converged = runtime.block_on(async {
        let channel = shoal_proto::transport::connect_unix(&socket).await?;
        let mut control =
            pb::control_client::ControlClient::new(channel).max_decoding_message_size(256 << 20);
        let mut last_report = Instant::now();
        loop {
            let services = control
                .list_services(pb::ListServicesRequest {
                    names: vec!["big".into()],
                })
                .await?
                .into_inner()
                .services;
            let running = services.first().map_or(0, |s| s.replicas_running);
            if last_report.elapsed() >= Duration::from_secs(2) {
                println!(
                    "  {:>5.1} s: {running} running",
                    started.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
            if running >= args.replicas {
                return anyhow::Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(600) {
                anyhow::bail!(
                    "only {running} of {} running after 10 minutes",
                    args.replicas
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })?;
    let rss = leader.pid().map_or(0.0, rss_mb);
    println!(
        "nodes={} replicas={} converged_s={:.1} manager_rss_mb={rss:.0} assignment_messages={}",
        args.nodes + 3,
        args.replicas,
        converged.as_secs_f64(),
        ASSIGNMENT_MESSAGES.load(Ordering::Relaxed)
    );
    measuring.store(false, Ordering::Relaxed);
    runtime.shutdown_background();
    Ok(())
}
