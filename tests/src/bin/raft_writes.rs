//! Write throughput through the control API on 3 managers: `--clients`
//! concurrent clients, spread over the managers' local sockets (followers
//! forward to the leader), each creating small objects for `--seconds`.
//!
//!     cargo run --release -p shoal-tests --bin raft-writes -- --clients 64 --seconds 10
//!
//! `--to leader` sends every call to the leader and `--conns N` has the
//! clients share N connections: together, the setup of etcd's benchmark
//! (leader only, 100 connections for 1,000 clients), which measures raft and
//! the API without the forwarding hop.
//!
//! With `--floor`, the same clients then spend as long reading one of their
//! services by name: calls the control API answers from the local store,
//! without raft. That rate is the most these cores can carry of calls this
//! size, the floor under which writes cannot go, as `docker-converge`
//! measures the engine's.
//!
//! The managers split the machine's cores (`shoald --threads`, see
//! `shoal_proto::threads_per_agent`): on 2 cores, one runtime thread each.
//!
//! Last line: `writes_per_s=… p50_ms=… p99_ms=… cpu_us_per_write=…
//! writes_per_entry=… clients=… to=… conns=… writes=… [floor_calls_per_s=…]`.
//! `cpu_us_per_write` is the CPU time the three managers and the benchmark
//! itself used while writing, per write: on a shared VM whose speed varies
//! by the hour it moves less than writes/s does. `writes_per_entry` is how
//! many writes shared a raft entry (group commit).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Parser, ValueEnum};
use shoal_proto::v1 as pb;
use shoal_proto::v1::control_client::ControlClient;
use shoal_tests::{Agent, Cluster, Executor, cpu_time, replica_less_service};
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Also measure the API floor: as many read calls as the clients can
    /// make for as long.
    #[arg(long)]
    floor: bool,
    /// Which managers the clients call: `all` spreads them over the three
    /// (followers forward their writes to the leader), `leader` sends
    /// every call to the leader.
    #[arg(long, value_enum, default_value_t = Target::All)]
    to: Target,
    /// Connections the clients share (HTTP/2 carries many calls at once on
    /// one); 0 gives every client its own.
    #[arg(long, default_value_t = 0)]
    conns: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Target {
    All,
    Leader,
}

/// The connections `clients` clients share: `conns`, or one each for 0.
fn connections(conns: usize, clients: usize) -> usize {
    match conns {
        0 => clients,
        n => n.min(clients),
    }
}

/// Runs `clients` clients on `conns` shared connections, each making
/// `call(client, its index, call number)` until `seconds` pass; answers
/// every call's latency and the time taken.
async fn run_clients<F, Fut>(
    sockets: &[PathBuf],
    conns: usize,
    clients: usize,
    seconds: u64,
    call: F,
) -> Result<(Vec<Duration>, Duration)>
where
    F: Fn(ControlClient<Channel>, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let mut channels = Vec::with_capacity(conns);
    for n in 0..conns {
        channels.push(shoal_proto::transport::connect_unix(&sockets[n % sockets.len()]).await?);
    }
    // The rate is over the time the clients call, not the connecting.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let channel = channels[c % conns].clone();
        let stop = stop.clone();
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let client = ControlClient::new(channel);
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let began = Instant::now();
                call(client.clone(), c, i).await?;
                latencies.push(began.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok((all, started.elapsed()))
}

/// The CPU time `pids` have used so far, together.
fn total_cpu_time(pids: &[u32]) -> Result<Duration> {
    pids.iter()
        .map(|&pid| cpu_time(pid).ok_or_else(|| anyhow::anyhow!("process {pid} has exited")))
        .sum()
}

fn main() -> Result<()> {
    let args = Args::parse();
    // The three managers share this machine's cores, as `shoal demo`'s
    // agents do.
    let threads = shoal_proto::threads_per_agent(3).to_string();
    let cluster = Cluster::start_configured(3, 0, Executor::Sim, &|agent| {
        agent
            .extra_args
            .extend(["--threads".into(), threads.clone()]);
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let leader_name = cluster.leader()?;
    let leader = cluster.agent(&leader_name);
    let sockets: Vec<_> = cluster
        .agents
        .iter()
        .filter(|a| args.to == Target::All || a.name == leader_name)
        .map(|a| a.socket.clone())
        .collect();
    let conns = connections(args.conns, args.clients);
    let pids: Vec<u32> = cluster
        .agents
        .iter()
        .filter_map(Agent::pid)
        .chain([std::process::id()])
        .collect();
    let commit_before = runtime.block_on(leader.info())?.commit_index;
    let cpu_before = total_cpu_time(&pids)?;
    let (mut latencies, elapsed) = runtime.block_on(run_clients(
        &sockets,
        conns,
        args.clients,
        args.seconds,
        |mut client, c, i| async move {
            let spec = replica_less_service(format!("w{c}-{i}"));
            client
                .create_service(pb::CreateServiceRequest { spec: Some(spec) })
                .await
                .map(drop)
        },
    ))?;
    let cpu_used = total_cpu_time(&pids)?.saturating_sub(cpu_before);
    let entries = runtime
        .block_on(leader.info())?
        .commit_index
        .saturating_sub(commit_before);
    let writes = latencies.len();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let mut figures = format!(
        "writes_per_s={:.0} p50_ms={:.1} p99_ms={:.1} cpu_us_per_write={:.0} writes_per_entry={:.1} \
         clients={} to={} conns={} writes={}",
        writes as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        cpu_used.as_secs_f64() * 1e6 / writes.max(1) as f64,
        writes as f64 / entries.max(1) as f64,
        args.clients,
        args.to
            .to_possible_value()
            .map_or_else(String::new, |value| value.get_name().to_string()),
        conns,
        writes
    );
    if args.floor {
        // Every client made at least its first write, so `w{c}-1` exists.
        let (reads, elapsed) = runtime.block_on(run_clients(
            &sockets,
            conns,
            args.clients,
            args.seconds,
            |mut client, c, _| async move {
                client
                    .list_services(pb::ListServicesRequest {
                        names: vec![format!("w{c}-1")],
                    })
                    .await
                    .map(drop)
            },
        ))?;
        figures.push_str(&format!(
            " floor_calls_per_s={:.0}",
            reads.len() as f64 / elapsed.as_secs_f64()
        ));
    }
    println!("{figures}");
    Ok(())
}
