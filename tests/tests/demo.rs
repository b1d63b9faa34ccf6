//! `shoal demo`: the whole cluster from one command, and nothing left
//! behind after it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use shoal_tests::harness::{shoal_path, wait_until};
use shoal_tests::terminal::Terminal;

/// The demo's agents and nodes: the `shoald` processes whose data
/// directories are in the demo's, and the node ids `demo.json` keeps.
struct Recorded {
    pids: Vec<u32>,
    node_ids: Vec<String>,
}

/// Running `shoald` processes with data in `dir`, with their arguments.
fn agents_in(dir: &Path) -> Vec<(u32, Vec<String>)> {
    let inside = format!("{}/", dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| is_alive(*pid))
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            let ours = args.first().is_some_and(|a| a.ends_with("shoald"))
                && args.iter().any(|a| a.starts_with(&inside));
            ours.then_some((pid, args))
        })
        .collect()
}

fn recorded(dir: &Path) -> Result<Recorded> {
    let text = std::fs::read_to_string(dir.join("demo.json"))?;
    let state: serde_json::Value = serde_json::from_str(&text)?;
    let pids = agents_in(dir).into_iter().map(|(pid, _)| pid).collect();
    let node_ids = state["node_ids"]
        .as_array()
        .context("node_ids")?
        .iter()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect();
    Ok(Recorded { pids, node_ids })
}

fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Task processes of the process executor carry their node's id.
fn task_processes_of(node_ids: &[String]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                let environ = String::from_utf8_lossy(&environ);
                node_ids
                    .iter()
                    .any(|id| environ.contains(&format!("SHOAL_NODE_ID={id}")))
            })
        })
        .filter(|pid| is_alive(*pid))
        .collect()
}

fn containers_of(node_ids: &[String]) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for id in node_ids {
        let output = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=com.shoal.node.id={id}"))
            .output();
        match output {
            Ok(o) if o.status.success() => found.extend(
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string),
            ),
            // No Docker, no containers.
            _ => {}
        }
    }
    Ok(found)
}

fn assert_nothing_left(dir: &Path, recorded: &Recorded) -> Result<()> {
    assert!(!dir.exists(), "{} is still there", dir.display());
    let alive: Vec<u32> = recorded
        .pids
        .iter()
        .copied()
        .filter(|p| is_alive(*p))
        .collect();
    assert!(alive.is_empty(), "agents still running: {alive:?}");
    let tasks = task_processes_of(&recorded.node_ids);
    assert!(tasks.is_empty(), "task processes still running: {tasks:?}");
    let containers = containers_of(&recorded.node_ids)?;
    assert!(containers.is_empty(), "containers left: {containers:?}");
    Ok(())
}

fn ready_nodes(dir: &Path) -> Result<usize> {
    let output = Command::new(shoal_path())
        .arg("--socket")
        .arg(dir.join("m1/shoald.sock"))
        .args(["node", "ls", "--format", "json"])
        .output()?;
    if !output.status.success() {
        bail!("{}", String::from_utf8_lossy(&output.stderr));
    }
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;
    Ok(nodes.iter().filter(|n| n["status"] == "ready").count())
}

/// Removes whatever a failed test left, with the demo's own `down`.
struct Cleanup {
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.dir.join("demo.json").exists() {
            let _ = Command::new(shoal_path())
                .args(["demo", "down", "--dir"])
                .arg(&self.dir)
                .output();
        }
    }
}

#[test]
fn the_demo_shows_five_ready_nodes_and_leaves_nothing_behind_after_quit() -> Result<()> {
    let parent = tempfile::tempdir()?;
    let dir = parent.path().join("demo");
    let _cleanup = Cleanup { dir: dir.clone() };
    let command = format!(
        "{} demo --dir {}; echo DEMO-EXIT=$?; sleep 120",
        shoal_path().display(),
        dir.display()
    );
    let terminal = Terminal::start("demo", &command, 100, 30)?;
    // The docker executor may build the demo image first.
    wait_until(Duration::from_secs(180), || {
        Ok(terminal.screen().contains("5 nodes") && ready_nodes(&dir)? == 5)
    })
    .with_context(|| {
        format!(
            "the console did not show the cluster:\n{}",
            terminal.screen()
        )
    })?;
    let recorded = recorded(&dir)?;
    assert_eq!(recorded.pids.len(), 5);
    assert_eq!(recorded.node_ids.len(), 5);
    // The sample services are there for the console to show.
    terminal.keys(&["2"])?;
    for service in ["web", "payments", "metrics-agent"] {
        terminal.wait_for(service, Duration::from_secs(30))?;
    }

    terminal.keys(&["q"])?;
    terminal.wait_for("DEMO-EXIT=", Duration::from_secs(90))?;
    let text = terminal.screen();
    assert!(text.contains("DEMO-EXIT=0"), "{text}");
    assert!(text.contains("Demo cluster removed"), "{text}");
    assert_nothing_left(&dir, &recorded)
}

#[test]
fn a_detached_demo_keeps_running_until_demo_down() -> Result<()> {
    let parent = tempfile::tempdir()?;
    let dir = parent.path().join("demo");
    let _cleanup = Cleanup { dir: dir.clone() };
    let shoal = |args: &[&str]| -> Result<String> {
        let output = Command::new(shoal_path())
            .args(args)
            .arg("--dir")
            .arg(&dir)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            bail!("shoal {args:?} failed: {text}");
        }
        Ok(text)
    };
    let started = shoal(&["demo", "--detach", "--executor", "process"])?;
    assert!(started.contains("shoal demo down"), "{started}");
    assert_eq!(ready_nodes(&dir)?, 5);
    let recorded = recorded(&dir)?;
    wait_until(Duration::from_secs(30), || {
        Ok(!task_processes_of(&recorded.node_ids).is_empty())
    })?;

    // A second demo in the same place is refused, and says what to do.
    let again = shoal(&["demo", "--detach", "--executor", "process"])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(again.contains("already running"), "{again}");
    assert!(again.contains("shoal demo down"), "{again}");

    // An agent restarted by hand has a pid the demo never saw; `down`
    // still stops it before deleting its data.
    let (m2, args) = agents_in(&dir)
        .into_iter()
        .find(|(_, args)| {
            args.windows(2)
                .any(|w| w[0] == "--hostname" && w[1] == "m2")
        })
        .context("agent m2 is not running")?;
    Command::new("kill")
        .args(["-9", &m2.to_string()])
        .status()?;
    wait_until(Duration::from_secs(10), || Ok(!is_alive(m2)))?;
    let mut restarted = Command::new(&args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut recorded = recorded;
    recorded.pids.push(restarted.id());
    wait_until(Duration::from_secs(30), || Ok(ready_nodes(&dir)? == 5))?;

    let down = shoal(&["demo", "down"])?;
    assert!(
        down.contains("Demo cluster removed: 5 agents stopped"),
        "{down}"
    );
    restarted.wait()?;
    assert_nothing_left(&dir, &recorded)?;
    let nothing = shoal(&["demo", "down"])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(nothing.contains("nothing to remove"), "{nothing}");
    Ok(())
}
