//! Aggregated task output: every replica's lines, from every node, through
//! any manager.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shoal_tests::{Cluster, Executor, build_test_images, shoal_path, wait_until};

const IMAGE: &str = "shoal-test/busybox:1";
const PRINT_200: &str = "for i in $(seq 1 200); do echo line $i; done; sleep 1000";

/// Lines per task prefix, in the order printed.
fn per_task(output: &str) -> BTreeMap<String, Vec<String>> {
    let mut tasks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in output.lines() {
        if let Some((prefix, text)) = line.split_once("    | ") {
            tasks
                .entry(prefix.to_string())
                .or_default()
                .push(text.to_string());
        }
    }
    tasks
}

#[test]
fn every_line_of_every_replica_arrives_in_order_with_its_task() -> Result<()> {
    build_test_images()?;
    let cluster = Cluster::start(2, 1, Executor::Docker)?;
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&[
        "service",
        "create",
        "--name",
        "counter",
        "--replicas",
        "3",
        IMAGE,
        "sh",
        "-c",
        PRINT_200,
    ])?;
    // Wait until each container has printed everything.
    wait_until(Duration::from_secs(30), || {
        let tasks = per_task(&m1.shoal_ok(&["service", "logs", "counter"])?);
        Ok(tasks.len() == 3 && tasks.values().all(|lines| lines.len() == 200))
    })?;

    // Through the other manager too (it relays the leader's stream).
    let output = cluster
        .agent("m2")
        .shoal_ok(&["service", "logs", "counter"])?;
    let tasks = per_task(&output);
    assert_eq!(tasks.len(), 3, "{output}");
    let mut nodes = Vec::new();
    for (prefix, lines) in &tasks {
        assert!(prefix.starts_with("counter."), "{prefix}");
        nodes.push(
            prefix
                .rsplit_once('@')
                .map(|(_, n)| n.to_string())
                .unwrap_or_default(),
        );
        let expected: Vec<String> = (1..=200).map(|i| format!("line {i}")).collect();
        assert_eq!(lines, &expected, "{prefix} lines out of order or missing");
    }
    nodes.sort();
    assert_eq!(nodes, ["m1", "m2", "w1"]);

    let tail = per_task(&m1.shoal_ok(&["service", "logs", "--tail", "5", "counter"])?);
    assert!(
        tail.values()
            .all(|lines| lines.len() == 5 && lines[4] == "line 200"),
        "{tail:?}"
    );

    // Nothing was printed in the last hour's future.
    let since = m1.shoal_ok(&[
        "service",
        "logs",
        "--since",
        "2099-01-01T00:00:00Z",
        "counter",
    ])?;
    assert!(per_task(&since).is_empty(), "{since}");
    let recent = per_task(&m1.shoal_ok(&["service", "logs", "--since", "10m", "counter"])?);
    assert_eq!(recent.values().map(Vec::len).sum::<usize>(), 600);

    // A name that is neither a service nor a task says both were tried.
    let unknown = m1.shoal(&["service", "logs", "countr"])?;
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        !unknown.status.success() && stderr.contains("no service or task named \"countr\""),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn following_picks_up_new_tasks_and_a_vanished_reader_harms_nothing() -> Result<()> {
    build_test_images()?;
    let cluster = Cluster::start(1, 1, Executor::Docker)?;
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&[
        "service",
        "create",
        "--name",
        "ticker",
        "--replicas",
        "1",
        IMAGE,
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done",
    ])?;
    let mut follower = Command::new(shoal_path())
        .arg("--socket")
        .arg(&m1.socket)
        .args(["service", "logs", "--follow", "--tail", "1", "ticker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting shoal service logs --follow")?;
    let stdout = follower.stdout.take().context("follower stdout")?;
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    m1.shoal_ok(&["service", "scale", "--detach", "ticker=2"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen_new_task = false;
    while Instant::now() < deadline && !seen_new_task {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            seen_new_task = line.starts_with("ticker.2.");
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    if !seen_new_task {
        bail!("the task started by the scale-up never appeared in the followed logs");
    }

    // The reader is gone: the cluster carries on and logs still work.
    std::thread::sleep(Duration::from_secs(1));
    let again = per_task(&m1.shoal_ok(&["service", "logs", "--tail", "3", "ticker"])?);
    assert_eq!(again.len(), 2, "{again:?}");
    m1.shoal_ok(&["service", "scale", "ticker=3"])?;
    Ok(())
}
