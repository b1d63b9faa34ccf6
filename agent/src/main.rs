//! `shoald`: the Shoal node agent. Thin: flags and config file, logging,
//! signals and the service manager; the agent itself lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use shoal_agent::daemon::config::{self, DEFAULT_LOG_LEVEL, Loaded};
use shoal_agent::daemon::logging::{self, LogControl};
use shoal_agent::daemon::systemd::{self, Notifier};
use shoal_agent::manager::runtime::RaftTiming;
use shoal_agent::node::{Agent, AgentConfig, ExecutorChoice, default_hostname};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Every setting can also come from the config file; a flag (or its
/// environment variable) wins over the file.
#[derive(Parser, Debug)]
#[command(name = "shoald", version = shoal_proto::VERSION, about = "The Shoal node agent")]
struct Args {
    /// Settings file with the same keys as these flags (data_dir, socket,
    /// hostname, executor, sim_delay, log_level, metrics_addr, threads)
    /// [default: /etc/shoal/shoald.toml if it exists].
    #[arg(long, env = "SHOALD_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Where the node keeps its membership, keys and raft log
    /// [default: /var/lib/shoal].
    #[arg(long, env = "SHOALD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The local control socket `shoal` talks to
    /// [default: /var/run/shoal/shoald.sock].
    #[arg(long, env = "SHOAL_SOCKET")]
    socket: Option<PathBuf>,
    /// The node's name in the cluster [default: the machine's hostname].
    #[arg(long)]
    hostname: Option<String>,
    /// What runs tasks: auto (docker if an engine answers, else process),
    /// docker, process or sim [default: auto].
    #[arg(long, value_parser = config::parse_executor)]
    executor: Option<ExecutorChoice>,
    /// Time each task state change takes with the sim executor
    /// [default: 0ms].
    #[arg(long, value_parser = humantime::parse_duration)]
    sim_delay: Option<Duration>,
    /// Log filter, e.g. info or info,shoal_agent=debug. From the config
    /// file, it is re-read on SIGHUP.
    #[arg(long, env = "SHOALD_LOG")]
    log_level: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "SHOALD_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Threads that run the agent's work: raft, the API, sessions and
    /// tasks [default: one per core it may use]. Agents sharing a machine
    /// do better splitting its cores than each waking a thread per core.
    #[arg(long, env = "SHOALD_THREADS", value_parser = config::parse_threads)]
    threads: Option<usize>,
}

/// The flags merged over the config file.
struct Settings {
    agent: AgentConfig,
    log_level: String,
    /// The level was given as a flag or in the environment, so SIGHUP's
    /// re-read of the file must not override it.
    log_level_pinned: bool,
    metrics_addr: Option<SocketAddr>,
    threads: usize,
}

fn settings(args: &Args, loaded: &Loaded) -> Result<Settings, config::ConfigError> {
    let file = &loaded.file;
    Ok(Settings {
        agent: AgentConfig {
            data_dir: (args.data_dir.clone())
                .or_else(|| file.data_dir.clone())
                .unwrap_or_else(|| "/var/lib/shoal".into()),
            socket: (args.socket.clone())
                .or_else(|| file.socket.clone())
                .unwrap_or_else(|| "/var/run/shoal/shoald.sock".into()),
            hostname: (args.hostname.clone())
                .or_else(|| file.hostname.clone())
                .unwrap_or_else(default_hostname),
            executor: match args.executor {
                Some(choice) => choice,
                None => loaded.executor()?.unwrap_or(ExecutorChoice::Auto),
            },
            sim_delay: match args.sim_delay {
                Some(delay) => delay,
                None => loaded.sim_delay()?.unwrap_or_default(),
            },
            raft_timing: RaftTiming::default(),
        },
        log_level: (args.log_level.clone())
            .or_else(|| file.log_level.clone())
            .unwrap_or_else(|| DEFAULT_LOG_LEVEL.into()),
        log_level_pinned: args.log_level.is_some(),
        metrics_addr: match args.metrics_addr {
            Some(addr) => Some(addr),
            None => loaded.metrics_addr()?,
        },
        threads: match args.threads {
            Some(threads) => threads,
            None => loaded.threads()?.unwrap_or_else(config::default_threads),
        },
    })
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let loaded = match Loaded::read(args.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => return fail(&e.to_string()),
    };
    let settings = match settings(&args, &loaded) {
        Ok(settings) => settings,
        Err(e) => return fail(&e.to_string()),
    };
    let logs = match logging::init(&settings.log_level) {
        Ok(logs) => logs,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(settings, args.config, logs)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            fail(&e)
        }
    }
}

fn fail(message: &str) -> std::process::ExitCode {
    eprintln!("shoald: {message}");
    std::process::ExitCode::FAILURE
}

async fn run(
    settings: Settings,
    config_path: Option<PathBuf>,
    logs: LogControl,
) -> Result<(), String> {
    let notifier = Notifier::from_env();
    let shutdown = CancellationToken::new();
    let config = settings.agent;
    let socket = config.socket.clone();
    tracing::info!(
        version = shoal_proto::VERSION,
        hostname = %config.hostname,
        data_dir = %config.data_dir.display(),
        logs = logs.sink,
        threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "shoald starting"
    );
    let metrics = match settings.metrics_addr {
        Some(addr) => Some(
            shoal_agent::metrics::bind(addr)
                .await
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let agent = Agent::new(config, shutdown.clone());
    agent.resume().await.map_err(|e| e.to_string())?;
    let listener = shoal_agent::node::server::bind_unix(&socket).await?;
    if let Some(listener) = metrics {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "metrics at http://{addr}/metrics");
        }
        tokio::spawn(shoal_agent::metrics::serve(
            listener,
            agent.clone(),
            shutdown.clone(),
        ));
    }

    let notifier = notifier.map(Arc::new);
    if let Some(notifier) = &notifier {
        notifier.notify("READY=1\nSTATUS=serving");
        if let Some(interval) = systemd::watchdog_interval() {
            tokio::spawn(watchdog(notifier.clone(), interval, shutdown.clone()));
        }
    }
    let reload = ReloadOnHangup {
        logs,
        config_path,
        pinned: settings.log_level_pinned,
    };
    tokio::spawn(handle_signals(reload, notifier, shutdown.clone()));

    let served =
        shoal_agent::node::server::serve_unix(agent.clone(), listener, &socket, shutdown.clone())
            .await;
    shutdown.cancel();
    agent.stop().await;
    tracing::info!("shoald stopped");
    served
}

/// Proves liveness to systemd from the runtime itself: if the runtime
/// wedges, the pings stop and systemd restarts the agent.
async fn watchdog(notifier: Arc<Notifier>, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => notifier.notify("WATCHDOG=1"),
            () = shutdown.cancelled() => return,
        }
    }
}

struct ReloadOnHangup {
    logs: LogControl,
    config_path: Option<PathBuf>,
    pinned: bool,
}

impl ReloadOnHangup {
    fn reload(&self) {
        if self.pinned {
            tracing::info!("SIGHUP: the log level is set by --log-level or SHOALD_LOG; unchanged");
            return;
        }
        let level = match Loaded::read(self.config_path.as_deref()) {
            Ok(loaded) => loaded
                .file
                .log_level
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.into()),
            Err(e) => {
                tracing::error!("SIGHUP: {e}; the log level is unchanged");
                return;
            }
        };
        match self.logs.set_level(&level) {
            Ok(()) => tracing::info!(level, "SIGHUP: log level reloaded"),
            Err(e) => tracing::error!("SIGHUP: {e}; the log level is unchanged"),
        }
    }
}

/// SIGTERM and SIGINT stop the agent (task workloads keep running and are
/// adopted on the next start); SIGHUP reloads the log level.
async fn handle_signals(
    reload: ReloadOnHangup,
    notifier: Option<Arc<Notifier>>,
    shutdown: CancellationToken,
) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("cannot install signal handlers: only the process's death stops shoald");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload.reload(),
        }
    }
    tracing::info!("stopping: task workloads keep running and are adopted on restart");
    if let Some(notifier) = &notifier {
        notifier.notify("STOPPING=1");
    }
    shutdown.cancel();
}
