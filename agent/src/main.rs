//! `shoald`: the Shoal node agent. Thin: flags, logging, signals; the
//! agent itself lives in the library.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use shoal_agent::manager::runtime::RaftTiming;
use shoal_agent::node::{Agent, AgentConfig, ExecutorChoice, default_hostname};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "shoald", version, about = "The Shoal node agent")]
struct Args {
    /// Where the node keeps its membership, keys and raft log.
    #[arg(long, env = "SHOALD_DATA_DIR", default_value = "/var/lib/shoal")]
    data_dir: PathBuf,
    /// The local control socket `shoal` talks to.
    #[arg(
        long,
        env = "SHOAL_SOCKET",
        default_value = "/var/run/shoal/shoald.sock"
    )]
    socket: PathBuf,
    /// The node's name in the cluster (default: the machine's hostname).
    #[arg(long)]
    hostname: Option<String>,
    /// What runs tasks: auto (docker if an engine answers, else process),
    /// docker, process or sim.
    #[arg(long, default_value = "auto", value_parser = parse_executor)]
    executor: ExecutorChoice,
    /// Time each task state change takes with the sim executor.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    sim_delay: Duration,
    /// Log filter, e.g. info or shoal_agent=debug.
    #[arg(
        long,
        env = "SHOALD_LOG",
        default_value = "info,openraft=error,openraft::replication=off,openraft::engine=off"
    )]
    log_level: String,
}

fn parse_executor(text: &str) -> Result<ExecutorChoice, String> {
    match text {
        "auto" => Ok(ExecutorChoice::Auto),
        "docker" => Ok(ExecutorChoice::Docker),
        "process" => Ok(ExecutorChoice::Process),
        "sim" => Ok(ExecutorChoice::Sim),
        other => Err(format!(
            "unknown executor {other:?}: use auto, docker, process or sim"
        )),
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("shoald: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("shoald: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let shutdown = CancellationToken::new();
    let config = AgentConfig {
        data_dir: args.data_dir,
        socket: args.socket.clone(),
        hostname: args.hostname.unwrap_or_else(default_hostname),
        executor: args.executor,
        sim_delay: args.sim_delay,
        raft_timing: RaftTiming::default(),
    };
    tracing::info!(hostname = %config.hostname, data_dir = %config.data_dir.display(), "shoald starting");
    let agent = Agent::new(config, shutdown.clone());
    agent.resume().await.map_err(|e| e.to_string())?;

    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: task workloads keep running and are adopted on restart");
        signals.cancel();
    });
    let served =
        shoal_agent::node::server::serve_unix(agent.clone(), &args.socket, shutdown.clone()).await;
    shutdown.cancel();
    agent.stop().await;
    served
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, only the process's death stops it.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
