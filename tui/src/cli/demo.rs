//! `shoal demo`: a live local cluster in the console, from nothing.
//!
//! Five real `shoald` agents (three managers, two workers) on loopback,
//! each with its own data directory under one demo directory, run tasks
//! in Docker when an engine answers (the demo image is built locally from
//! a static busybox, no registry) and as host processes otherwise. Sample
//! services give every view something to show, one of them failing now and
//! then for the problems view. Quitting the console takes it all down;
//! `--keep` leaves it running and `shoal demo down` removes it later.
//!
//! The demo directory holds `demo.json`, the agents' pids and node ids, so
//! that a kept (or crashed) demo can always be found and removed.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use shoal_proto::v1 as pb;
use shoal_proto::v1::control_client::ControlClient;
use tokio::process::Command;
use tonic::transport::Channel;

use super::Target;
use super::service::CreateArgs;

/// The image Docker tasks of the demo run, built by [`ensure_image`].
const DEMO_IMAGE: &str = "shoal-demo/busybox:1";
/// What the process executor records as the image; it runs the command on
/// the host.
const PROCESS_IMAGE: &str = "host-process";
/// Mirrors the agent's container label (the console knows only the wire).
const LABEL_NODE: &str = "com.shoal.node.id";
const MANAGERS: [&str; 3] = ["m1", "m2", "m3"];
const WORKERS: [&str; 2] = ["w1", "w2"];
const STATE_FILE: &str = "demo.json";

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DemoArgs {
    #[command(subcommand)]
    command: Option<DemoCommand>,
    #[command(flatten)]
    start: StartArgs,
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Stop and remove a demo cluster left running with --keep.
    Down {
        /// The demo's directory [default: $TMPDIR/shoal-demo-<uid>].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct StartArgs {
    /// Leave the cluster running when the console closes.
    #[arg(long)]
    keep: bool,
    /// Start the cluster and return without opening the console (implies
    /// --keep).
    #[arg(long)]
    detach: bool,
    /// What runs the tasks: docker when an engine answers, else host
    /// processes.
    #[arg(long, value_enum, default_value_t = DemoExecutor::Auto)]
    executor: DemoExecutor,
    /// Where the agents keep their files [default: $TMPDIR/shoal-demo-<uid>].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DemoExecutor {
    Auto,
    Docker,
    Process,
}

impl DemoExecutor {
    fn flag(self) -> &'static str {
        match self {
            DemoExecutor::Auto => "auto",
            DemoExecutor::Docker => "docker",
            DemoExecutor::Process => "process",
        }
    }
}

/// What `demo.json` records; enough to take the demo down from any shell.
#[derive(Default, Serialize, Deserialize)]
struct DemoState {
    executor: Option<DemoExecutor>,
    node_ids: Vec<String>,
}

fn default_dir() -> PathBuf {
    let uid = rustix::process::getuid().as_raw();
    std::env::temp_dir().join(format!("shoal-demo-{uid}"))
}

fn socket_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(name).join("shoald.sock")
}

pub async fn run(args: DemoArgs, console: &crate::console::Options) -> anyhow::Result<()> {
    match args.command {
        Some(DemoCommand::Down { dir }) => {
            let dir = dir.unwrap_or_else(default_dir);
            if !dir.join(STATE_FILE).exists() {
                bail!(
                    "no demo cluster in {}: nothing to remove (pass --dir if it was started \
                     with one)",
                    dir.display()
                );
            }
            teardown(&dir).await
        }
        None => start(args.start, console).await,
    }
}

async fn start(args: StartArgs, options: &crate::console::Options) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    claim_dir(&dir).await?;
    let keep = args.keep || args.detach;
    let setup = async {
        let shoald = find_shoald().await?;
        let executor = pick_executor(args.executor).await?;
        form_cluster(&dir, &shoald, executor).await
    };
    let setup_result = tokio::select! {
        result = setup => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = setup_result {
        if keep {
            eprintln!(
                "The demo cluster did not come up; it is left in {} as --keep asks (agent logs \
                 in */shoald.log). Remove it with 'shoal demo down{}'.",
                dir.display(),
                dir_flag(&args.dir)
            );
        } else {
            eprintln!("The demo cluster did not come up: removing it");
            if let Err(cleanup) = teardown(&dir).await {
                eprintln!("Error: {cleanup:#}");
            }
        }
        return Err(e);
    }

    let m1 = socket_of(&dir, "m1");
    if args.detach {
        print_attach(&dir, &args.dir);
        return Ok(());
    }
    let target = Target {
        socket: m1,
        host: None,
        tls_dir: None,
    };
    let console = crate::console::run(&target, options).await;
    if keep {
        print_attach(&dir, &args.dir);
    } else {
        teardown(&dir).await?;
    }
    console
}

fn dir_flag(dir: &Option<PathBuf>) -> String {
    dir.as_ref()
        .map(|d| format!(" --dir {}", d.display()))
        .unwrap_or_default()
}

fn print_attach(dir: &Path, explicit: &Option<PathBuf>) {
    println!(
        "The demo cluster keeps running in {}.\n\
         Attach the console:  shoal --socket {}\n\
         Or any command:      SHOAL_SOCKET={} shoal service ls\n\
         Remove it:           shoal demo down{}",
        dir.display(),
        socket_of(dir, "m1").display(),
        socket_of(dir, "m1").display(),
        dir_flag(explicit)
    );
}

/// Makes `dir` ours: refuses a running demo or someone else's files, and
/// clears what a crashed demo left.
async fn claim_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.join(STATE_FILE).exists() {
        read_state(dir)?;
        if !running_agents(dir).is_empty() {
            bail!(
                "a demo cluster is already running in {}: attach with 'shoal --socket {}', or \
                 remove it with 'shoal demo down' (add --dir {} if you chose the directory)",
                dir.display(),
                socket_of(dir, "m1").display(),
                dir.display()
            );
        }
        println!("Removing what an earlier demo left in {}", dir.display());
        teardown(dir).await?;
    } else if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        if !empty {
            bail!(
                "{} exists and is not a demo directory: choose an empty or new one with --dir",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_state(dir, &DemoState::default())
}

fn read_state(dir: &Path) -> anyhow::Result<DemoState> {
    let path = dir.join(STATE_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is damaged: stop its shoald processes by hand and remove {}",
            path.display(),
            dir.display()
        )
    })
}

fn write_state(dir: &Path, state: &DemoState) -> anyhow::Result<()> {
    let path = dir.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state)?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// The `shoald` beside this `shoal` (as built and as installed), else on
/// PATH. From a source checkout it is built when missing, so `cargo run -p
/// shoal-tui -- demo` works on a fresh clone.
async fn find_shoald() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the shoal program")?;
    let sibling = exe.with_file_name("shoald");
    if sibling.is_file() {
        return Ok(sibling);
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("shoald"))
            .find(|p| p.is_file())
    }) {
        return Ok(found);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let profile_dir = exe.parent();
    let target_dir = profile_dir.and_then(Path::parent);
    let profile = profile_dir
        .and_then(Path::file_name)
        .and_then(|n| n.to_str());
    if let (true, Some(target_dir), Some(profile)) =
        (workspace.join("Cargo.toml").is_file(), target_dir, profile)
    {
        println!("Building shoald (first run only)...");
        let mut build = Command::new("cargo");
        build
            .current_dir(&workspace)
            .args(["build", "--locked", "-p", "shoal-agent", "--bin", "shoald"])
            .arg("--target-dir")
            .arg(target_dir);
        if profile == "release" {
            build.arg("--release");
        }
        let status = build.status().await.context("running cargo")?;
        if status.success() && sibling.is_file() {
            return Ok(sibling);
        }
    }
    bail!(
        "shoald is not next to shoal ({}) nor on PATH: build it with 'cargo build --release \
         --bins' or install it beside shoal",
        sibling.display()
    )
}

/// Runs a command to completion, with a deadline: a wedged engine must
/// not hang the demo.
async fn output(command: &mut Command, timeout: Duration) -> Option<std::process::Output> {
    command.stdin(Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(timeout, command.output())
        .await
        .ok()?
        .ok()
}

async fn docker_answers() -> bool {
    let mut command = Command::new("docker");
    command.args(["info", "--format", "{{.ServerVersion}}"]);
    output(&mut command, Duration::from_secs(10))
        .await
        .is_some_and(|o| o.status.success())
}

async fn pick_executor(asked: DemoExecutor) -> anyhow::Result<DemoExecutor> {
    match asked {
        DemoExecutor::Process => Ok(DemoExecutor::Process),
        DemoExecutor::Docker => {
            if !docker_answers().await {
                bail!(
                    "no Docker engine answers: start it, or run the demo with --executor process"
                );
            }
            ensure_image().await?;
            Ok(DemoExecutor::Docker)
        }
        DemoExecutor::Auto => {
            if !docker_answers().await {
                println!("No Docker engine answers: tasks run as host processes");
                return Ok(DemoExecutor::Process);
            }
            match ensure_image().await {
                Ok(()) => Ok(DemoExecutor::Docker),
                Err(e) => {
                    println!("{e:#}\nTasks run as host processes instead");
                    Ok(DemoExecutor::Process)
                }
            }
        }
    }
}

/// Builds the demo image when missing: a root filesystem holding only a
/// statically linked busybox, imported with `docker import`, so no
/// registry is needed.
async fn ensure_image() -> anyhow::Result<()> {
    let mut inspect = Command::new("docker");
    inspect.args(["image", "inspect", DEMO_IMAGE]);
    if output(&mut inspect, Duration::from_secs(10))
        .await
        .is_some_and(|o| o.status.success())
    {
        return Ok(());
    }
    let Some(busybox) = static_busybox().await else {
        bail!(
            "the demo image {DEMO_IMAGE} needs a statically linked busybox to build without a \
             registry: install it (apt-get install busybox-static) for Docker tasks"
        );
    };
    println!(
        "Building the demo image {DEMO_IMAGE} from {}...",
        busybox.display()
    );
    let work = std::env::temp_dir().join(format!("shoal-demo-image-{}", std::process::id()));
    let result = import_rootfs(&busybox, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn static_busybox() -> Option<PathBuf> {
    for candidate in ["/bin/busybox", "/usr/bin/busybox"] {
        if !Path::new(candidate).is_file() {
            continue;
        }
        // ldd fails on a static binary; a dynamic one would find no C
        // library inside the image.
        let mut ldd = Command::new("ldd");
        ldd.arg(candidate);
        if output(&mut ldd, Duration::from_secs(10))
            .await
            .is_some_and(|o| !o.status.success())
        {
            return Some(candidate.into());
        }
    }
    None
}

async fn import_rootfs(busybox: &Path, work: &Path) -> anyhow::Result<()> {
    let rootfs = work.join("rootfs");
    for sub in ["bin", "tmp", "etc", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(sub))
            .with_context(|| format!("creating {}", rootfs.display()))?;
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;
    for applet in [
        "sh", "sleep", "echo", "cat", "date", "env", "hostname", "printf", "seq", "true", "false",
        "kill", "ps", "head", "tail", "grep",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
            .with_context(|| format!("linking {applet} in {}", rootfs.display()))?;
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    let archive = work.join("rootfs.tar");
    let mut tar = Command::new("tar");
    tar.arg("-C").arg(&rootfs).arg("-cf").arg(&archive).arg(".");
    match output(&mut tar, Duration::from_secs(60)).await {
        Some(o) if o.status.success() => {}
        _ => bail!("packing the demo image's files with tar failed"),
    }
    let mut import = Command::new("docker");
    import
        .args(["import", "--change", "CMD [\"sh\"]", "--change"])
        .arg("LABEL com.shoal.demo=1")
        .arg(&archive)
        .arg(DEMO_IMAGE);
    match output(&mut import, Duration::from_secs(120)).await {
        Some(o) if o.status.success() => Ok(()),
        Some(o) => bail!(
            "docker import of the demo image failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        None => bail!("docker import of the demo image did not finish within 2 minutes"),
    }
}

/// A free loopback address for an agent to listen on.
fn free_addr() -> anyhow::Result<String> {
    let port = shoal_proto::transport::free_loopback_port().context("finding a free port")?;
    Ok(format!("127.0.0.1:{port}"))
}

async fn form_cluster(dir: &Path, shoald: &Path, executor: DemoExecutor) -> anyhow::Result<()> {
    let mut state = read_state(dir)?;
    state.executor = Some(executor);
    let names: Vec<&str> = MANAGERS.iter().chain(WORKERS.iter()).copied().collect();
    println!(
        "Starting {} agents ({} managers, {} workers, {} executor) in {}",
        names.len(),
        MANAGERS.len(),
        WORKERS.len(),
        executor.flag(),
        dir.display()
    );
    write_state(dir, &state)?;
    let threads = shoal_proto::threads_per_agent(names.len());
    for name in &names {
        spawn_agent(dir, shoald, name, executor, threads)?;
    }
    for name in &names {
        wait_for_socket(dir, name).await?;
    }

    let m1_addr = free_addr()?;
    let mut m1 = connect(dir, "m1").await?;
    m1.swarm_init(pb::SwarmInitRequest {
        advertise_addr: m1_addr.clone(),
        ..Default::default()
    })
    .await
    .map_err(|s| anyhow::anyhow!("m1: swarm init failed: {}", s.message()))?;
    let tokens = m1
        .get_join_tokens(pb::GetJoinTokensRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("m1: reading the join tokens failed: {}", s.message()))?
        .into_inner()
        .tokens
        .unwrap_or_default();
    for name in names.iter().skip(1) {
        let token = if MANAGERS.contains(name) {
            &tokens.manager
        } else {
            &tokens.worker
        };
        connect(dir, name)
            .await?
            .swarm_join(pb::SwarmJoinRequest {
                token: token.clone(),
                remote_addr: m1_addr.clone(),
                advertise_addr: free_addr()?,
                listen_addr: String::new(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{name}: joining the swarm failed: {}", s.message()))?;
    }
    state.node_ids = wait_for_ready_nodes(&mut m1, names.len()).await?;
    write_state(dir, &state)?;
    println!("Swarm formed: {} nodes ready", names.len());

    for service in sample_services(executor) {
        let parsed = CreateCommand::try_parse_from(std::iter::once("create").chain(service))
            .context("a sample service's flags")?;
        let spec = parsed.args.to_spec()?;
        let name = spec.name.clone();
        m1.create_service(pb::CreateServiceRequest { spec: Some(spec) })
            .await
            .map_err(|s| anyhow::anyhow!("creating service {name} failed: {}", s.message()))?;
        println!("Service {name} created");
    }
    Ok(())
}

/// `service create`'s own flags, so the samples read like the commands an
/// operator would type.
#[derive(Parser)]
struct CreateCommand {
    #[command(flatten)]
    args: CreateArgs,
}

fn sample_services(executor: DemoExecutor) -> Vec<Vec<&'static str>> {
    let image = match executor {
        DemoExecutor::Docker => DEMO_IMAGE,
        _ => PROCESS_IMAGE,
    };
    vec![
        vec![
            "--name",
            "web",
            "--replicas",
            "4",
            "--label",
            "tier=frontend",
            "--stop-grace-period",
            "1s",
            "--update-parallelism",
            "1",
            "--update-delay",
            "3s",
            image,
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo \"GET /orders/$i 200 $((i % 9 + 2))ms\"; sleep 1; done",
        ],
        vec![
            "--name",
            "metrics-agent",
            "--mode",
            "global",
            "--stop-grace-period",
            "1s",
            image,
            "sh",
            "-c",
            "while true; do echo \"scraped $(hostname) at $(date +%T)\"; sleep 5; done",
        ],
        // Fails every half minute or so, for the problems view and the
        // task history.
        vec![
            "--name",
            "payments",
            "--replicas",
            "2",
            "--restart-delay",
            "5s",
            "--stop-grace-period",
            "1s",
            image,
            "sh",
            "-c",
            "echo 'payments: connected to ledger'; sleep 25; echo 'payments: ledger connection reset' >&2; exit 3",
        ],
    ]
}

fn spawn_agent(
    dir: &Path,
    shoald: &Path,
    name: &str,
    executor: DemoExecutor,
    threads: usize,
) -> anyhow::Result<()> {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    let log_path = home.join("shoald.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let stderr = log.try_clone()?;
    std::process::Command::new(shoald)
        .arg("--data-dir")
        .arg(home.join("data"))
        .arg("--socket")
        .arg(socket_of(dir, name))
        .args(["--hostname", name, "--executor", executor.flag()])
        // The demo's agents share this machine's cores.
        .args(["--threads", &threads.to_string()])
        // No config file or environment of the host's own agent applies.
        .arg("--config")
        .arg("/dev/null")
        .env_remove("SHOAL_SOCKET")
        .env_remove("SHOALD_DATA_DIR")
        .env_remove("SHOALD_METRICS_ADDR")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        // Its own process group: Ctrl-C in the terminal reaches the demo,
        // which stops the agents in order, not the agents directly.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", shoald.display()))?;
    Ok(())
}

async fn wait_for_socket(dir: &Path, name: &str) -> anyhow::Result<()> {
    let socket = socket_of(dir, name);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if socket.exists() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "agent {name} did not open its socket within 30s; see {}",
        dir.join(name).join("shoald.log").display()
    )
}

async fn connect(dir: &Path, name: &str) -> anyhow::Result<ControlClient<Channel>> {
    Target {
        socket: socket_of(dir, name),
        host: None,
        tls_dir: None,
    }
    .connect()
    .await
}

/// Waits until `count` nodes are ready; returns their ids.
async fn wait_for_ready_nodes(
    m1: &mut ControlClient<Channel>,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        if let Ok(response) = m1.list_nodes(pb::ListNodesRequest::default()).await {
            last = response.into_inner().nodes;
            let ready = last
                .iter()
                .filter(|n| n.status.as_ref().map(|s| s.state) == Some(pb::NodeState::Ready as i32))
                .count();
            if ready == count {
                return Ok(last
                    .iter()
                    .filter_map(|n| n.meta.as_ref().map(|m| m.id.clone()))
                    .collect());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "only {} of {count} nodes became ready within 60s; see the agents' shoald.log files",
        last.len()
    )
}

/// A demo agent that is running.
struct RunningAgent {
    pid: u32,
    /// Its `--hostname`, or its pid when it has none.
    name: String,
}

/// The demo's agents that are running, found by their command lines
/// rather than by the pids the demo started: an operator may have
/// restarted one by hand, and it must be stopped before its data
/// directory goes.
fn running_agents(dir: &Path) -> Vec<RunningAgent> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let args = our_agent_args(pid, dir)?;
            let name = args
                .iter()
                .position(|arg| arg == "--hostname")
                .and_then(|i| args.get(i + 1))
                .cloned()
                .unwrap_or_else(|| pid.to_string());
            Some(RunningAgent { pid, name })
        })
        .collect()
}

/// Whether `pid` is a running `shoald` of the demo in `dir`.
fn is_our_agent(pid: u32, dir: &Path) -> bool {
    our_agent_args(pid, dir).is_some()
}

/// The arguments of `pid` if it is a running `shoald` of the demo in
/// `dir`: named so on its command line, data directory inside `dir`. Only
/// such processes are ever signalled.
fn our_agent_args(pid: u32, dir: &Path) -> Option<Vec<String>> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    let inside = format!("{}/", dir.to_string_lossy().trim_end_matches('/'));
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    let ours = args.iter().any(|arg| arg.contains("shoald"))
        && args.iter().any(|arg| arg.contains(&inside));
    (ours && !zombie).then_some(args)
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Takes the demo down: services removed first (so every executor stops
/// and removes its own workloads), then the agents stopped, containers
/// that outlived them removed, and the directory deleted.
async fn teardown(dir: &Path) -> anyhow::Result<()> {
    let state = read_state(dir)?;
    let running = running_agents(dir);
    if !running.is_empty() {
        println!("Stopping the demo cluster in {}...", dir.display());
        remove_services(dir).await;
    }
    for agent in &running {
        signal(agent.pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while running.iter().any(|a| is_our_agent(a.pid, dir)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for agent in running.iter().filter(|a| is_our_agent(a.pid, dir)) {
        eprintln!("agent {} did not stop within 20s: killing it", agent.name);
        signal(agent.pid, rustix::process::Signal::KILL);
    }
    let containers = remove_containers(&state.node_ids).await;
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    println!(
        "Demo cluster removed: {} agents stopped, {} leftover containers removed, {} deleted",
        running.len(),
        containers,
        dir.display()
    );
    Ok(())
}

/// Removes every service through whichever manager answers and waits for
/// their tasks to go, so workloads end the way Shoal ends them. Best
/// effort: what is left is cleaned up after the agents stop.
async fn remove_services(dir: &Path) {
    let mut client = None;
    for name in MANAGERS {
        if let Ok(c) = connect(dir, name).await {
            client = Some(c);
            break;
        }
    }
    let Some(mut client) = client else {
        return;
    };
    let Ok(services) = client
        .list_services(pb::ListServicesRequest::default())
        .await
    else {
        return;
    };
    for service in services.into_inner().services {
        if let Some(meta) = service.meta {
            let _ = client
                .remove_service(pb::RemoveServiceRequest { service: meta.id })
                .await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match client.list_tasks(pb::ListTasksRequest::default()).await {
            Ok(tasks) if tasks.get_ref().tasks.is_empty() => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(_) => return,
        }
    }
}

/// Removes containers of the demo's nodes that are still there (an agent
/// stopped by a signal leaves its workloads running by design). Returns
/// how many it removed.
async fn remove_containers(node_ids: &[String]) -> usize {
    let mut ids = Vec::new();
    // One query per node: several label filters in `docker ps` must all
    // match, not any.
    for node_id in node_ids {
        let mut list = Command::new("docker");
        list.args(["ps", "-aq", "--filter"])
            .arg(format!("label={LABEL_NODE}={node_id}"));
        if let Some(listed) = output(&mut list, Duration::from_secs(20)).await {
            ids.extend(
                String::from_utf8_lossy(&listed.stdout)
                    .split_whitespace()
                    .map(str::to_string),
            );
        }
    }
    if ids.is_empty() {
        return 0;
    }
    let mut remove = Command::new("docker");
    remove.args(["rm", "-f"]).args(&ids);
    match output(&mut remove, Duration::from_secs(60)).await {
        Some(o) if o.status.success() => ids.len(),
        _ => {
            eprintln!(
                "could not remove containers {}: remove them with 'docker rm -f'",
                ids.join(" ")
            );
            0
        }
    }
}
