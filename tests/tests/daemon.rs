//! `shoald` as a system service: the sd_notify protocol, SIGHUP, the config
//! file and the Prometheus endpoint.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shoal_tests::harness::{Cluster, Executor, free_port, shoal_path, shoald_path, wait_until};

/// A `shoald` started by hand (not through the cluster harness, which pins
/// the log level and has no notify socket), killed if the test fails.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(config: &str, notify_socket: Option<&std::path::Path>) -> Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("shoald.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("shoald.log"))?;
        let mut command = Command::new(shoald_path());
        command
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--socket")
            .arg(dir.path().join("shoald.sock"))
            .args(["--hostname", "svc", "--executor", "process"])
            .env_remove("SHOALD_LOG")
            .env("WATCHDOG_USEC", "400000")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(socket) = notify_socket {
            command.env("NOTIFY_SOCKET", socket);
        }
        let child = command.spawn().context("starting shoald")?;
        Ok(Daemon { child, dir })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("shoald.log")).unwrap_or_default()
    }

    fn signal(&self, signal: i32) {
        // The pid is our own child's.
        unsafe_kill(self.child.id(), signal);
    }

    fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "shoald did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, signal: i32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a pid we own; no memory is involved.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

fn receive_until(socket: &UnixDatagram, wanted: &str, seen: &mut Vec<String>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(read) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..read]).to_string();
            let done = message.lines().any(|l| l == wanted);
            seen.push(message);
            if done {
                return Ok(());
            }
        }
    }
    bail!("no {wanted} from shoald within 20s; received {seen:?}")
}

#[test]
fn shoald_tells_systemd_it_is_ready_alive_and_stopping() -> Result<()> {
    let socket_dir = tempfile::tempdir()?;
    let socket_path = socket_dir.path().join("notify");
    let systemd = UnixDatagram::bind(&socket_path)?;
    systemd.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut daemon = Daemon::start("", Some(&socket_path))?;
    let mut seen = Vec::new();
    receive_until(&systemd, "READY=1", &mut seen)?;
    // READY means the control socket answers.
    let info = Command::new(shoal_path())
        .arg("--socket")
        .arg(daemon.dir.path().join("shoald.sock"))
        .args(["info", "--format", "json"])
        .output()?;
    assert!(info.status.success(), "{info:?}");
    // WatchdogSec=0.4s asks for a ping every 0.2s.
    receive_until(&systemd, "WATCHDOG=1", &mut seen)?;
    daemon.signal(libc::SIGTERM);
    receive_until(&systemd, "STOPPING=1", &mut seen)?;
    let status = daemon.wait_exit(Duration::from_secs(20))?;
    assert!(status.success(), "exit {status}; log:\n{}", daemon.log());
    Ok(())
}

#[test]
fn sighup_reloads_the_log_level_from_the_config_file() -> Result<()> {
    let mut daemon = Daemon::start("log_level = \"warn\"\n", None)?;
    let socket = daemon.dir.path().join("shoald.sock");
    wait_until(Duration::from_secs(20), || Ok(socket.exists()))?;
    assert!(
        !daemon.log().contains("shoald starting"),
        "info lines at warn level:\n{}",
        daemon.log()
    );
    std::fs::write(
        daemon.dir.path().join("shoald.toml"),
        "log_level = \"info\"\n",
    )?;
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), || {
        Ok(daemon.log().contains("log level reloaded"))
    })
    .with_context(|| daemon.log())?;

    // A broken file keeps the level it had and says why.
    std::fs::write(daemon.dir.path().join("shoald.toml"), "log_level = [\n")?;
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), || {
        Ok(daemon.log().contains("the log level is unchanged"))
    })
    .with_context(|| daemon.log())?;
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(20))?.success());
    Ok(())
}

#[test]
fn a_bad_config_file_stops_the_start_with_the_key_and_the_fix() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("shoald.toml");
    std::fs::write(&config, "executor = \"podman\"\n")?;
    let output = Command::new(shoald_path())
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("executor"), "{stderr}");
    assert!(
        stderr.contains("use auto, docker, process or sim"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn the_threads_setting_sizes_the_runtime_and_zero_is_refused() -> Result<()> {
    let daemon = Daemon::start("threads = 1\nlog_level = \"info\"\n", None)?;
    wait_until(Duration::from_secs(20), || {
        Ok(daemon.log().contains("shoald starting"))
    })?;
    assert!(daemon.log().contains("threads=1"), "{}", daemon.log());

    let dir = tempfile::tempdir()?;
    let output = Command::new(shoald_path())
        .args(["--threads", "0", "--config", "/dev/null", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--threads"), "{stderr}");
    assert!(stderr.contains("a whole number from 1"), "{stderr}");
    Ok(())
}

/// Parses Prometheus text format strictly enough to catch what a scraper
/// would reject: every sample belongs to a declared family and has a
/// number for a value. Returns `name{labels}` → value.
fn parse_prometheus(text: &str) -> Result<BTreeMap<String, f64>> {
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let valid_name = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context("TYPE without a kind")?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                bail!("unknown metric type in {line:?}");
            }
            families.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').context("sample without a value")?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other
                .parse()
                .with_context(|| format!("value in {line:?}"))?,
        };
        let name = series.split('{').next().unwrap_or_default();
        if !valid_name(name) {
            bail!("bad metric name in {line:?}");
        }
        let labels = series.strip_prefix(name).unwrap_or_default();
        let labels_well_formed =
            labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}'));
        if !labels_well_formed {
            bail!("bad labels in {line:?}");
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| families.get(*base).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        if !families.contains_key(family) {
            bail!("sample {name} has no TYPE line before it");
        }
        samples.insert(series.to_string(), value);
    }
    Ok(samples)
}

fn scrape(addr: &str) -> Result<BTreeMap<String, f64>> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: shoal\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("response without a body")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("metrics answered {head}");
    }
    if !head.contains("text/plain; version=0.0.4") {
        bail!("metrics content type is not Prometheus text: {head}");
    }
    parse_prometheus(body)
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(f64::NAN)
}

#[test]
fn the_metrics_endpoint_parses_as_prometheus_text_and_moves_with_the_cluster() -> Result<()> {
    let mut cluster = Cluster::start(1, 1, Executor::Process)?;
    let addr = format!("127.0.0.1:{}", free_port());
    {
        let m1 = cluster.agent_mut("m1");
        m1.stop()?;
        m1.extra_args = vec!["--metrics-addr".into(), addr.clone()];
        m1.start()?;
    }
    cluster.wait_ready(2)?;
    // Both nodes reopen their sessions with the restarted leader.
    wait_until(Duration::from_secs(20), || {
        let samples = scrape(&addr)?;
        Ok(value(&samples, "shoal_raft_is_leader") == 1.0
            && value(&samples, "shoal_dispatcher_sessions") == 2.0)
    })?;
    let before = scrape(&addr)?;
    assert!(value(&before, "shoal_raft_term") >= 1.0, "{before:?}");
    assert!(value(&before, "shoal_raft_commit_index") >= 1.0);
    assert!(value(&before, "shoal_raft_leader_changes_total") >= 1.0);
    assert_eq!(value(&before, "shoal_nodes{status=\"ready\"}"), 2.0);
    assert_eq!(value(&before, "shoal_tasks{state=\"running\"}"), 0.0);

    cluster.agent("m1").shoal_ok(&[
        "service",
        "create",
        "--name",
        "sleepers",
        "--replicas",
        "3",
        "host-process",
        "sleep",
        "600",
    ])?;
    wait_until(Duration::from_secs(30), || {
        Ok(value(&scrape(&addr)?, "shoal_tasks{state=\"running\"}") == 3.0)
    })?;
    let after = scrape(&addr)?;
    assert!(
        value(&after, "shoal_raft_commit_index") > value(&before, "shoal_raft_commit_index"),
        "commit index did not move"
    );
    assert!(value(&after, "shoal_task_placement_seconds_count") >= 3.0);
    assert!(
        value(&after, "shoal_raft_apply_seconds_count")
            > value(&before, "shoal_raft_apply_seconds_count")
    );
    // m1 runs some of the tasks itself: its executor counted the starts.
    assert!(value(&after, "shoal_executor_operations_total{op=\"start\"}") >= 1.0);
    assert_eq!(
        value(&after, "shoal_executor_errors_total{op=\"start\"}"),
        0.0
    );

    // A worker that goes silent is counted as a missed heartbeat.
    cluster.agent_mut("w1").kill9();
    wait_until(Duration::from_secs(30), || {
        Ok(value(&scrape(&addr)?, "shoal_missed_heartbeats_total") >= 1.0)
    })?;
    assert_eq!(value(&scrape(&addr)?, "shoal_nodes{status=\"down\"}"), 1.0);
    Ok(())
}

/// The leader streams new entries to its followers as it appends them, and
/// answers raft's own appends, and the heartbeats that share each new
/// committed index, from what the stream carried: the metrics show both
/// paths, a follower killed and restarted is streamed to again,
/// and every manager ends with every write.
#[test]
fn a_leader_streams_new_entries_to_its_followers() -> Result<()> {
    let mut cluster = Cluster::start_configured(3, 0, Executor::Process, &|agent| {
        let addr = format!("127.0.0.1:{}", free_port());
        agent.extra_args = vec!["--metrics-addr".into(), addr];
    })?;
    let metrics_of = |cluster: &Cluster, name: &str| cluster.agent(name).extra_args[1].clone();
    let leader = cluster.leader()?;
    let addr = metrics_of(&cluster, &leader);
    let managers = ["m1", "m2", "m3"];
    let follower = *managers
        .iter()
        .find(|m| **m != leader)
        .context("a follower")?;
    let streamed = |samples: &BTreeMap<String, f64>| {
        value(samples, "shoal_raft_appends_total{path=\"stream\"}")
    };
    // Through every manager (followers forward theirs to the leader).
    let write_rounds = |cluster: &Cluster, rounds: std::ops::Range<u32>| -> Result<()> {
        for round in rounds {
            for manager in managers {
                let label = format!("round={round}");
                cluster.agent(manager).shoal_ok(&[
                    "node",
                    "update",
                    "--label-add",
                    &label,
                    manager,
                ])?;
            }
        }
        Ok(())
    };
    let before = scrape(&addr)?;
    write_rounds(&cluster, 0..10)?;
    let after = scrape(&addr)?;
    assert!(
        streamed(&after) > streamed(&before),
        "no append answered from the stream: {after:?}"
    );
    assert!(value(&after, "shoal_raft_appends_total{path=\"call\"}") >= 1.0);
    // Each committed entry's index reached the followers on the stream
    // too, not in a heartbeat call each.
    assert!(
        value(&after, "shoal_raft_commits_streamed_total")
            > value(&before, "shoal_raft_commits_streamed_total"),
        "no committed index shared on the stream: {after:?}"
    );

    // A follower that dies mid-stream: the stream ends with its
    // connection, raft's own calls catch it up, and a new stream reaches
    // it (its counters start again from zero).
    cluster.agent_mut(follower).kill9();
    cluster.agent_mut(follower).start()?;
    wait_until(Duration::from_secs(20), || {
        cluster
            .agent(follower)
            .accepts_write("restarted=yes", follower)
    })?;
    write_rounds(&cluster, 10..20)?;
    let received = scrape(&metrics_of(&cluster, follower))?;
    assert!(
        value(
            &received,
            "shoal_raft_appends_received_total{path=\"stream\"}"
        ) >= 1.0,
        "no stream reached {follower} after it restarted: {received:?}"
    );
    for asked in managers {
        wait_until(Duration::from_secs(10), || {
            let nodes = cluster
                .agent(asked)
                .shoal_json(&["node", "inspect", "m1", "m2", "m3"])?;
            Ok(nodes
                .as_array()
                .into_iter()
                .flatten()
                .all(|node| node["spec"]["labels"]["round"] == "19"))
        })
        .with_context(|| format!("{asked} does not list every write"))?;
    }
    Ok(())
}

#[test]
fn a_taken_metrics_port_stops_the_start_with_a_clear_error() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let dir = tempfile::tempdir()?;
    let output = Command::new(shoald_path())
        .args(["--config", "/dev/null", "--metrics-addr", &addr])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(dir.path().join("shoald.sock"))
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&addr), "{stderr}");
    assert!(stderr.contains("--metrics-addr"), "{stderr}");
    Ok(())
}

#[test]
fn version_names_the_commit_and_completion_scripts_generate() -> Result<()> {
    for program in [shoal_path(), shoald_path()] {
        let output = Command::new(&program).arg("--version").output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success());
        // "shoal 0.1.0 (1a2b3c4d5e6f)": a release and a commit.
        assert!(
            text.contains(env!("CARGO_PKG_VERSION")) && text.contains('(') && text.contains(')'),
            "{text}"
        );
    }
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef shoal"),
        ("fish", "complete -c shoal"),
    ] {
        let output = Command::new(shoal_path())
            .args(["completion", shell])
            .output()?;
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{shell}");
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        assert!(script.contains("demo"), "{shell}: subcommands missing");
    }
    Ok(())
}
