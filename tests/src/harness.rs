use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use shoal_proto::v1 as pb;
use shoal_proto::v1::control_client::ControlClient;
use tonic::transport::Channel;

/// Which runtime the agents use for tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Executor {
    Docker,
    Process,
    Sim,
}

impl Executor {
    fn flag(self) -> &'static str {
        match self {
            Executor::Docker => "docker",
            Executor::Process => "process",
            Executor::Sim => "sim",
        }
    }
}

/// Where the binaries under test are, built once per test process.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("SHOAL_BIN_DIR") {
            return PathBuf::from(dir);
        }
        // Test executables live in <target>/<profile>/deps.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| {
                if deps.file_name().is_some_and(|n| n == "deps") {
                    deps.parent()
                } else {
                    Some(deps)
                }
            })
            .expect("test executable directory")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--quiet",
            "-p",
            "shoal-agent",
            "-p",
            "shoal-tui",
            "--bins",
        ]);
        if release {
            build.arg("--release");
        }
        // Cargo describes the test's own package to it in the environment
        // (CARGO_PKG_NAME, CARGO_MANIFEST_DIR…). Build scripts that watch
        // those names (ring's does) would see them change from the
        // developer's shell and rebuild, and the next plain build would
        // rebuild again: 20 s at the start of every test run.
        for (name, _) in std::env::vars_os() {
            let describes_package = name.to_str().is_some_and(|name| {
                [
                    "CARGO_PKG_",
                    "CARGO_MANIFEST_",
                    "CARGO_CRATE_",
                    "CARGO_BIN_",
                ]
                .iter()
                .any(|prefix| name.starts_with(prefix))
                    || name == "CARGO_PRIMARY_PACKAGE"
                    || name == "CARGO_TARGET_TMPDIR"
            });
            if describes_package {
                build.env_remove(&name);
            }
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build for the binaries under test");
        assert!(status.success(), "building shoald and shoal failed");
        profile_dir
    })
}

pub fn shoald_path() -> PathBuf {
    bin_dir().join("shoald")
}

pub fn shoal_path() -> PathBuf {
    bin_dir().join("shoal")
}

/// A free TCP port on 127.0.0.1 for an agent to listen on later.
pub fn free_port() -> u16 {
    shoal_proto::transport::free_loopback_port().expect("a free port on 127.0.0.1")
}

/// One `shoald` process and its data.
pub struct Agent {
    pub name: String,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub addr: String,
    pub log: PathBuf,
    pub executor: Executor,
    child: Option<Child>,
    pub node_id: String,
    /// More `shoald` flags, e.g. `--metrics-addr`.
    pub extra_args: Vec<String>,
    /// The network namespace the agent runs in, when its cluster has a
    /// [`Network`] of its own.
    pub netns: Option<String>,
}

impl Agent {
    pub fn new(root: &Path, name: &str, executor: Executor) -> Agent {
        let dir = root.join(name);
        Agent {
            name: name.to_string(),
            data_dir: dir.join("data"),
            socket: dir.join("shoald.sock"),
            addr: format!("127.0.0.1:{}", free_port()),
            log: dir.join("shoald.log"),
            executor,
            child: None,
            node_id: String::new(),
            extra_args: Vec::new(),
            netns: None,
        }
    }

    /// Starts the agent and waits until its socket answers.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(self.data_dir.parent().unwrap_or(&self.data_dir))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        // `ip netns exec` enters the namespace and execs shoald: the pid
        // stays the agent's.
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(shoald_path());
                command
            }
            None => Command::new(shoald_path()),
        };
        // If the test process is killed (a timeout, Ctrl-C), its agents die
        // with it instead of running on unowned.
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches
        // only the child being started.
        #[allow(unsafe_code)]
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--hostname", &self.name, "--executor", self.executor.flag()])
            // The host's own /etc/shoal/shoald.toml must not leak in.
            .args(["--config", "/dev/null"])
            .args(&self.extra_args)
            .env(
                "SHOALD_LOG",
                std::env::var("SHOALD_LOG").unwrap_or_else(|_| {
                    "info,openraft=error,openraft::replication=off,openraft::engine=off".into()
                }),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting shoald for {}", self.name))?;
        self.child = Some(child);
        wait_until(Duration::from_secs(20), || {
            Ok(self.shoal(&["info", "--format", "json"])?.status.success())
        })
        .with_context(|| format!("{} did not start; log:\n{}", self.name, self.log_tail()))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freezes the agent (SIGSTOP): it hears nothing and says nothing. A
    /// frozen agent is still killed on drop.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            unsafe_kill(pid, libc::SIGSTOP);
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: no chance to clean up, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.name);
        };
        // The pid is our own child's.
        unsafe_kill(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not stop within 20s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `shoal --socket <this agent> ARGS`.
    pub fn shoal(&self, args: &[&str]) -> Result<Output> {
        Command::new(shoal_path())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running shoal {}", args.join(" ")))
    }

    /// Joins this agent to the swarm `manager` is in, as `role`
    /// (`worker` or `manager`), with a token `manager` hands out.
    pub fn join_through(&self, manager: &Agent, role: &str) -> Result<String> {
        let token = manager.shoal_ok(&["swarm", "join-token", "-q", role])?;
        self.join_with(token.trim(), &manager.addr)
    }

    /// `shoal swarm join` with `token`, through the manager at
    /// `manager_addr`, advertising this agent's address.
    pub fn join_with(&self, token: &str, manager_addr: &str) -> Result<String> {
        self.shoal_ok(&[
            "swarm",
            "join",
            "--token",
            token,
            "--advertise-addr",
            &self.addr,
            manager_addr,
        ])
    }

    /// Whether a write through this agent is accepted now: label `label`
    /// (`key=value`) added to node `node`. What the tests wait for after a
    /// fault.
    pub fn accepts_write(&self, label: &str, node: &str) -> Result<bool> {
        let out = self.shoal(&["node", "update", "--label-add", label, node])?;
        Ok(out.status.success())
    }

    /// Runs `shoal`, failing with its stderr when it fails.
    pub fn shoal_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.shoal(args)?;
        if !out.status.success() {
            bail!(
                "shoal {} on {} failed: {}{}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `shoal ARGS --format json`, parsed.
    pub fn shoal_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let text = self.shoal_ok(&all)?;
        serde_json::from_str(&text).with_context(|| format!("parsing {text:?}"))
    }

    /// A string field of `node ls --format json` (the documented shape)
    /// for the node named `hostname`, as this agent lists it; empty when
    /// the field is null.
    pub fn node_field(&self, hostname: &str, field: &str) -> Result<String> {
        let nodes = self.shoal_json(&["node", "ls"])?;
        let node = nodes
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["hostname"] == hostname)
            .ok_or_else(|| anyhow::anyhow!("no node {hostname} in {nodes}"))?;
        Ok(node[field].as_str().unwrap_or_default().to_string())
    }

    pub async fn control(&self) -> Result<ControlClient<Channel>> {
        let channel = shoal_proto::transport::connect_unix(&self.socket).await?;
        Ok(ControlClient::new(channel))
    }

    /// A Control client that reaches `addr` over TCP presenting this
    /// agent's own node certificate, as another node (or a thief holding
    /// its files) would.
    pub async fn control_as_node(&self, addr: &str) -> Result<ControlClient<Channel>> {
        let certificates = self.data_dir.join("certificates");
        let root = std::fs::read(certificates.join("root-ca.pem"))?;
        let cert = std::fs::read(certificates.join("node.pem"))?;
        let keys: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.data_dir.join("keys.json"))?)?;
        let key = keys["tls_key_pem"]
            .as_str()
            .context("keys.json holds no plain TLS key (is autolock on?)")?;
        let tls = shoal_proto::transport::client_tls_config(&root, &cert, key.as_bytes())
            .map_err(|e| anyhow!(e))?;
        let channel = shoal_proto::transport::connect_tls(
            addr,
            std::sync::Arc::new(tls),
            shoal_proto::MANAGER_SERVER_NAME,
        )
        .await?;
        Ok(ControlClient::new(channel))
    }

    pub async fn info(&self) -> Result<pb::InfoResponse> {
        Ok(self
            .control()
            .await?
            .info(pb::InfoRequest {})
            .await?
            .into_inner())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn unsafe_kill(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a pid of a child this process spawned.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// The CPU time process `pid` has used so far, all its threads, user and
/// system (None once it is gone): what benchmarks divide by the work done
/// for a figure that holds when the machine's speed varies.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf only reads a constant of the running system.
    #[allow(unsafe_code)]
    let ticks_per_s = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let ticks = cpu_ticks(&stat)?;
    (ticks_per_s > 0).then(|| Duration::from_secs_f64(ticks as f64 / ticks_per_s as f64))
}

/// User plus system clock ticks from a `/proc/<pid>/stat` line.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name, in parentheses, may hold spaces and parentheses:
    // count fields from after its last `)`. utime and stime are fields 14
    // and 15 of the line.
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// A service of no replicas: a write that costs raft and nothing else,
/// for the benchmarks that measure writes.
pub fn replica_less_service(name: impl Into<String>) -> pb::ServiceSpec {
    pb::ServiceSpec {
        name: name.into(),
        replicas: 0,
        task: Some(pb::TaskSpec {
            container: Some(pb::ContainerSpec {
                image: "img".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Retries `check` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > deadline {
            return Err(match last_error {
                Some(e) => anyhow!("timed out after {timeout:?}; last error: {e:#}"),
                None => anyhow!("timed out after {timeout:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A cluster of agents in one temporary directory.
pub struct Cluster {
    pub agents: Vec<Agent>,
    pub executor: Executor,
    /// Dropped after the agents are killed (fields drop after `drop`).
    network: Option<Network>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `managers` managers and `workers` workers and waits until
    /// every node is ready.
    pub fn start(managers: usize, workers: usize, executor: Executor) -> Result<Cluster> {
        Cluster::form(Cluster::empty(executor)?, managers, workers, &|_| {})
    }

    /// As [`Cluster::start`], with each agent set up by `configure` (its
    /// [`Agent::extra_args`], say) before it first starts.
    pub fn start_configured(
        managers: usize,
        workers: usize,
        executor: Executor,
        configure: &dyn Fn(&mut Agent),
    ) -> Result<Cluster> {
        Cluster::form(Cluster::empty(executor)?, managers, workers, configure)
    }

    /// As [`Cluster::start`], each agent in a network namespace of its own
    /// wired to one switch, so that links can be cut: see
    /// [`Cluster::cut_off`].
    pub fn start_networked(managers: usize, workers: usize, executor: Executor) -> Result<Cluster> {
        let mut cluster = Cluster::empty(executor)?;
        cluster.network = Some(Network::create()?);
        Cluster::form(cluster, managers, workers, &|_| {})
    }

    fn form(
        mut cluster: Cluster,
        managers: usize,
        workers: usize,
        configure: &dyn Fn(&mut Agent),
    ) -> Result<Cluster> {
        for i in 1..=managers {
            cluster.add_configured(&format!("m{i}"), configure)?;
        }
        for i in 1..=workers {
            cluster.add_configured(&format!("w{i}"), configure)?;
        }
        let first = &cluster.agents[0];
        first.shoal_ok(&["swarm", "init", "--advertise-addr", &first.addr])?;
        let manager_token = first.shoal_ok(&["swarm", "join-token", "-q", "manager"])?;
        let worker_token = first.shoal_ok(&["swarm", "join-token", "-q", "worker"])?;
        let leader_addr = first.addr.clone();
        for (i, agent) in cluster.agents.iter().enumerate().skip(1) {
            let token = if i < managers {
                manager_token.trim()
            } else {
                worker_token.trim()
            };
            agent.join_with(token, &leader_addr)?;
        }
        cluster.learn_node_ids()?;
        cluster.wait_ready(managers + workers)?;
        Ok(cluster)
    }

    /// Agents created but not started or joined.
    pub fn empty(executor: Executor) -> Result<Cluster> {
        sweep_killed_runs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", run_prefix()))
            .tempdir()?;
        Ok(Cluster {
            agents: Vec::new(),
            executor,
            network: None,
            dir,
        })
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Creates and starts an agent (not joined).
    pub fn add(&mut self, name: &str) -> Result<&mut Agent> {
        self.add_configured(name, &|_| {})
    }

    fn add_configured(&mut self, name: &str, configure: &dyn Fn(&mut Agent)) -> Result<&mut Agent> {
        let mut agent = Agent::new(self.dir.path(), name, self.executor);
        configure(&mut agent);
        if let Some(network) = &mut self.network {
            let (netns, ip) = network.attach(name)?;
            agent.netns = Some(netns);
            agent.addr = format!("{ip}:4700");
        }
        agent.start()?;
        self.agents.push(agent);
        Ok(self.agents.last_mut().expect("just pushed"))
    }

    pub fn agent(&self, name: &str) -> &Agent {
        self.agents
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent named {name}"))
    }

    pub fn agent_mut(&mut self, name: &str) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent named {name}"))
    }

    pub fn learn_node_ids(&mut self) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        for agent in &mut self.agents {
            if agent.is_running() {
                let info = rt.block_on(agent.info())?;
                agent.node_id = info.node_id;
            }
        }
        Ok(())
    }

    /// A running manager's agent, other than those named in `except`.
    pub fn a_manager(&self, except: &[&str]) -> &Agent {
        self.agents
            .iter()
            .find(|a| {
                a.is_running() && a.name.starts_with('m') && !except.contains(&a.name.as_str())
            })
            .expect("a running manager")
    }

    /// `node ls --format json` from a running manager.
    pub fn nodes(&self) -> Result<Vec<serde_json::Value>> {
        let value = self.a_manager(&[]).shoal_json(&["node", "ls"])?;
        Ok(value.as_array().cloned().unwrap_or_default())
    }

    /// [`Agent::node_field`] as a running manager lists it.
    pub fn node_field(&self, hostname: &str, field: &str) -> Result<String> {
        self.a_manager(&[]).node_field(hostname, field)
    }

    /// Waits until `count` nodes report ready.
    pub fn wait_ready(&self, count: usize) -> Result<()> {
        wait_until(Duration::from_secs(60), || {
            let ready = self
                .nodes()?
                .iter()
                .filter(|n| n["status"] == "ready")
                .count();
            Ok(ready >= count)
        })
        .with_context(|| format!("waiting for {count} ready nodes"))
    }

    /// The name of the agent that leads, as a manager reports it.
    pub fn leader(&self) -> Result<String> {
        let nodes = self.nodes()?;
        nodes
            .iter()
            .find(|n| n["manager_status"] == "leader")
            .and_then(|n| n["hostname"].as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no leader in node ls"))
    }

    /// Removes task containers the cluster's agents may have left.
    fn remove_containers(&self) {
        if self.executor != Executor::Docker {
            return;
        }
        for agent in &self.agents {
            remove_containers_of(&agent.node_id);
        }
    }

    /// Cuts the named agent's link to the switch: it runs on, hearing no
    /// one and heard by no one (its control socket still answers).
    pub fn cut_off(&self, name: &str) -> Result<()> {
        self.network()?.set_link(name, "down")
    }

    /// Restores what [`Cluster::cut_off`] cut.
    pub fn reconnect(&self, name: &str) -> Result<()> {
        self.network()?.set_link(name, "up")
    }

    fn network(&self) -> Result<&Network> {
        self.network
            .as_ref()
            .ok_or_else(|| anyhow!("this cluster was not started with Cluster::start_networked"))
    }

    /// Prints every agent's log tail (for failing tests).
    pub fn dump_logs(&self) {
        for agent in &self.agents {
            eprintln!(
                "===== {} ({}) =====\n{}",
                agent.name,
                agent.addr,
                agent.log_tail()
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for agent in &mut self.agents {
            agent.kill9();
        }
        self.remove_containers();
        // Killed agents leave process-executor tasks running.
        for agent in &self.agents {
            shoal_agent::worker::executor::process::kill_left_processes(&agent.data_dir);
        }
        if std::env::var_os("SHOAL_KEEP_TEST_DIRS").is_some() {
            let path = self.dir.path().to_path_buf();
            eprintln!("keeping {}", path.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::Builder::new().tempdir().expect("temp dir"),
            ));
        }
    }
}

/// Builds the test images (idempotent).
pub fn build_test_images() -> Result<()> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build.sh");
            let out = Command::new("bash")
                .arg(script)
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "tests/images/build.sh failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Removes the task containers of node `node_id`.
fn remove_containers_of(node_id: &str) {
    if node_id.is_empty() {
        return;
    }
    let filter = format!("label=com.shoal.node.id={node_id}");
    let Ok(out) = Command::new("docker")
        .args(["ps", "-aq", "--filter", &filter])
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// What names this test process's directories and network namespaces:
/// `shoal-test-<pid>`, so that a later run can tell a killed run's
/// leftovers from a live one's.
fn run_prefix() -> String {
    format!("shoal-test-{}", std::process::id())
}

/// Whether `name` (`shoal-test-<pid>-…`) belongs to a test process that is
/// gone. Names of live processes, and any other names, are left alone.
fn of_a_killed_run(name: &str) -> bool {
    name.strip_prefix("shoal-test-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Cleans up after test processes that were killed before their clusters
/// were dropped (SIGKILL, a timeout): their agents died with them, but
/// network namespaces, tmpfs mounts, task processes and containers, and
/// directories outlive them. Once per test process, before its first
/// cluster.
fn sweep_killed_runs() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        if let Ok(namespaces) = std::fs::read_dir("/run/netns") {
            for netns in namespaces.flatten() {
                let name = netns.file_name().to_string_lossy().into_owned();
                if of_a_killed_run(&name) {
                    let _ = Command::new("ip")
                        .args(["netns", "del", &name])
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for entry in entries.flatten() {
            if !of_a_killed_run(&entry.file_name().to_string_lossy()) {
                continue;
            }
            let root = entry.path();
            let inside = format!("{}/", root.display());
            for mount_point in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
                if mount_point.starts_with(&inside) {
                    let _ = Command::new("umount")
                        .args(["--lazy", mount_point])
                        .status();
                }
            }
            for agent in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let data = shoal_agent::node::state::DataDir::new(agent.path().join("data"));
                shoal_agent::worker::executor::process::kill_left_processes(&data.root);
                if let Ok(Some(membership)) = data.load_membership() {
                    remove_containers_of(&membership.node_id);
                }
            }
            let _ = std::fs::remove_dir_all(&root);
        }
    });
}

/// A filesystem of its own, small enough to fill: how tests make a disk
/// full. A tmpfs is mounted over a directory (which needs root, as CI and
/// this machine's tests run) and lazily unmounted on drop, so that an
/// agent still holding files there cannot keep it mounted.
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Moves the directory at `path` onto a new tmpfs of `bytes` mounted
    /// in its place. Whatever uses it must be stopped meanwhile.
    pub fn mount_over(path: &Path, bytes: u64) -> Result<SmallDisk> {
        let aside = path.with_extension("before-mount");
        std::fs::rename(path, &aside)
            .with_context(|| format!("moving {} aside", path.display()))?;
        std::fs::create_dir_all(path)?;
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
                .arg(path),
            "mounting a tmpfs (tests that fill a disk run as root)",
        )?;
        let disk = SmallDisk {
            path: path.to_path_buf(),
        };
        let mut contents = aside.clone().into_os_string();
        contents.push("/.");
        run_ok(
            Command::new("cp").arg("-a").arg(contents).arg(path),
            "copying onto the tmpfs",
        )?;
        std::fs::remove_dir_all(&aside)?;
        Ok(disk)
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Writes zeros until the filesystem has no byte left.
    pub fn fill(&self) -> Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(self.filler())?;
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Frees what [`SmallDisk::fill`] took.
    pub fn make_room(&self) -> Result<()> {
        Ok(std::fs::remove_file(self.filler())?)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(&self.path)
            .status();
    }
}

fn run_ok(command: &mut Command, what: &str) -> Result<()> {
    let out = command.output().with_context(|| what.to_string())?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Network namespaces for a cluster's agents, each linked by a veth pair
/// to a bridge in a switch namespace. Addresses are 10.77.0.N inside
/// those namespaces only: nothing touches the host's own network, and
/// deleting the namespaces (on drop) removes every link.
pub struct Network {
    prefix: String,
    switch: String,
    namespaces: Vec<String>,
}

impl Network {
    pub fn create() -> Result<Network> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sweep_killed_runs();
        let prefix = format!("{}-{n}", run_prefix());
        let switch = format!("{prefix}-switch");
        ip(&["netns", "add", &switch])?;
        let network = Network {
            prefix,
            switch,
            namespaces: Vec::new(),
        };
        ip(&[
            "-n",
            &network.switch,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
        ])?;
        ip(&["-n", &network.switch, "link", "set", "br0", "up"])?;
        Ok(network)
    }

    /// A namespace for agent `name`, linked to the switch; answers the
    /// namespace and the agent's address.
    fn attach(&mut self, name: &str) -> Result<(String, String)> {
        let netns = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &netns])?;
        self.namespaces.push(netns.clone());
        let address = format!("10.77.0.{}", self.namespaces.len() + 1);
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            &netns,
            "type",
            "veth",
            "peer",
            "name",
            name,
            "netns",
            &self.switch,
        ])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &self.switch, "link", "set", name, "master", "br0"])?;
        ip(&["-n", &self.switch, "link", "set", name, "up"])?;
        Ok((netns, address))
    }

    fn set_link(&self, name: &str, state: &str) -> Result<()> {
        ip(&["-n", &self.switch, "link", "set", name, state])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for netns in self.namespaces.iter().chain([&self.switch]) {
            let _ = Command::new("ip")
                .args(["netns", "del", netns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run_ok(
        Command::new("ip").args(args),
        &format!(
            "ip {} (network namespaces need root and iproute2)",
            args.join(" ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_from_after_the_command_name() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 530 0 0 0 \
                    170 35 0 0 20 0 9 0 1234 567890 1234 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(205));
        assert_eq!(cpu_ticks("4242 (cut short) S 1"), None);
    }

    #[test]
    fn this_process_has_used_cpu_time() {
        // Spin until the count moves: on a loaded machine a fixed spin may
        // get less than the one tick /proc counts in.
        let before = cpu_time(std::process::id()).expect("our own /proc stat");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_secs(20) {
            let now = cpu_time(std::process::id()).expect("our own /proc stat");
            if now > before {
                return;
            }
        }
        panic!("20 s of spinning did not move this process's CPU time from {before:?}");
    }
}
