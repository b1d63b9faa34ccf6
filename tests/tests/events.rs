//! `shoal events` tells what happens: nodes down and back, failing tasks
//! with their exit codes, leadership moving.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shoal_tests::{Cluster, Executor, shoal_path};

/// Reads JSON event lines from a running `shoal events` until `wanted`
/// accepts one, or the time is up.
fn wait_for(
    lines: &mpsc::Receiver<serde_json::Value>,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(event) = lines.recv_timeout(Duration::from_millis(200))
            && wanted(&event)
        {
            return Ok(event);
        }
    }
    bail!("no event: {what}")
}

#[test]
fn events_report_failures_node_loss_and_leader_changes() -> Result<()> {
    let mut cluster = Cluster::start(3, 1, Executor::Process)?;
    let leader = cluster.leader()?;
    let watcher_name = cluster.a_manager(&[&leader]).name.clone();
    let watcher_socket = cluster.agent(&watcher_name).socket.clone();
    let mut events = Command::new(shoal_path())
        .arg("--socket")
        .arg(&watcher_socket)
        .args(["events", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting shoal events")?;
    let stdout = events.stdout.take().context("events stdout")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                && tx.send(value).is_err()
            {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let result = (|| -> Result<()> {
        cluster.agent(&watcher_name).shoal_ok(&[
            "service",
            "create",
            "--detach",
            "--name",
            "crash",
            "--restart-condition",
            "none",
            "--constraint",
            "node.role==worker",
            "host",
            "sh",
            "-c",
            "exit 3",
        ])?;
        let failed = wait_for(&lines, "task failed", |e| {
            e["type"] == "task" && e["action"] == "failed"
        })?;
        assert_eq!(failed["service"], "crash");
        assert!(
            failed["message"].as_str().unwrap_or("").contains("exit"),
            "{failed}"
        );

        cluster.agent_mut("w1").kill9();
        wait_for(&lines, "node down", |e| {
            e["type"] == "node" && e["action"] == "down" && e["name"] == "w1"
        })?;
        cluster.agent_mut("w1").start()?;
        wait_for(&lines, "node ready", |e| {
            e["type"] == "node" && e["action"] == "ready" && e["name"] == "w1"
        })?;

        cluster.agent_mut(&leader).kill9();
        let changed = wait_for(&lines, "leader changed", |e| {
            e["type"] == "cluster"
                && e["action"] == "leader_changed"
                && !e["id"].as_str().unwrap_or("").is_empty()
        })?;
        assert!(
            changed["message"]
                .as_str()
                .unwrap_or("")
                .contains("leader changed"),
            "{changed}"
        );
        Ok(())
    })();
    let _ = events.kill();
    let _ = events.wait();
    result
}

#[test]
fn a_stopping_agent_ends_followed_events_with_the_reason() -> Result<()> {
    let mut cluster = Cluster::start(1, 0, Executor::Sim)?;
    let name = cluster.agents[0].name.clone();
    let mut events = Command::new(shoal_path())
        .arg("--socket")
        .arg(&cluster.agent(&name).socket)
        .arg("events")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting shoal events")?;
    let result = (|| -> Result<()> {
        // The stream is open once the node's own readiness came through;
        // a moment is enough on the local socket.
        std::thread::sleep(Duration::from_millis(500));
        // Bounded by the harness: an agent waiting for its clients to hang
        // up would not stop within its 20 s.
        let status = cluster.agent_mut(&name).stop()?;
        assert!(status.success(), "shoald exited with {status}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let exited = loop {
            if let Some(status) = events.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("shoal events still runs after its agent stopped");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = events.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
        }
        assert!(!exited.success(), "shoal events exited with {exited}");
        assert!(
            stderr.contains("shoald on this node is stopping"),
            "shoal events said: {stderr}"
        );
        Ok(())
    })();
    let _ = events.kill();
    let _ = events.wait();
    result
}
