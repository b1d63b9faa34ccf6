//! Services become tasks on nodes and stay so through failures: real
//! `shoald` processes, real containers on the local engine (or host
//! processes, or simulated tasks where the runtime is not the subject).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::Value;
use shoal_tests::{Agent, Cluster, Executor, build_test_images, wait_until};

const IMAGE: &str = "shoal-test/busybox:1";

/// Creates `web`: `replicas` tasks of the test image, and waits, as the
/// CLI does, until they run.
fn create_web(manager: &Agent, replicas: usize) -> Result<()> {
    let replicas = replicas.to_string();
    manager.shoal_ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        &replicas,
        IMAGE,
    ])?;
    Ok(())
}

fn tasks(manager: &Agent, service: &str) -> Result<Vec<Value>> {
    Ok(manager
        .shoal_json(&["service", "ps", service])?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Tasks meant to run and running, per node hostname.
fn running_per_node(manager: &Agent, service: &str) -> Result<BTreeMap<String, usize>> {
    let mut per_node = BTreeMap::new();
    for task in tasks(manager, service)? {
        if task["desired_state"] == "running" && task["current_state"] == "running" {
            let node = task["node"].as_str().unwrap_or_default().to_string();
            *per_node.entry(node).or_default() += 1;
        }
    }
    Ok(per_node)
}

fn wait_running(manager: &Agent, service: &str, count: usize) -> Result<()> {
    wait_until(Duration::from_secs(60), || {
        Ok(running_per_node(manager, service)?.values().sum::<usize>() == count)
    })
}

/// Running containers of this cluster's nodes: (container name, node id).
fn containers(cluster: &Cluster, all: bool) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for agent in &cluster.agents {
        if agent.node_id.is_empty() {
            continue;
        }
        let mut args = vec!["ps", "--format", "{{.Names}}"];
        if all {
            args.push("-a");
        }
        let filter = format!("label=com.shoal.node.id={}", agent.node_id);
        args.extend(["--filter", &filter]);
        let out = Command::new("docker").args(&args).output()?;
        if !out.status.success() {
            bail!("docker ps failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        for name in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            found.push((name.to_string(), agent.node_id.clone()));
        }
    }
    Ok(found)
}

/// Running task containers of the node with `node_id`.
fn containers_on(cluster: &Cluster, node_id: &str) -> Result<usize> {
    Ok(containers(cluster, false)?
        .into_iter()
        .filter(|(_, node)| node == node_id)
        .count())
}

/// Waits until all `replicas` of `service` run again, none on `lost`.
fn wait_replaced(manager: &Agent, service: &str, lost: &str, replicas: usize) -> Result<()> {
    wait_until(Duration::from_secs(30), || {
        let per_node = running_per_node(manager, service)?;
        Ok(!per_node.contains_key(lost) && per_node.values().sum::<usize>() == replicas)
    })
}

#[test]
fn six_replicas_spread_evenly_as_labelled_running_containers() -> Result<()> {
    build_test_images()?;
    let cluster = Cluster::start(1, 2, Executor::Docker)?;
    let m1 = cluster.agent("m1");
    create_web(m1, 6)?;
    let per_node = running_per_node(m1, "web")?;
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{per_node:?}"
    );
    let running = containers(&cluster, false)?;
    assert_eq!(running.len(), 6, "{running:?}");
    for (name, _) in &running {
        assert!(name.starts_with("web."), "{name}");
    }
    let listed = m1.shoal_json(&["service", "ls"])?;
    assert_eq!(listed[0]["replicas_running"], 6);
    assert_eq!(listed[0]["replicas_desired"], 6);

    // Scale down, then remove: nothing is left behind.
    m1.shoal_ok(&["service", "scale", "web=2"])?;
    wait_until(Duration::from_secs(30), || {
        Ok(containers(&cluster, false)?.len() == 2)
    })?;
    let per_node = running_per_node(m1, "web")?;
    assert_eq!(
        per_node.len(),
        2,
        "scaling down keeps the spread: {per_node:?}"
    );
    m1.shoal_ok(&["service", "rm", "web"])?;
    wait_until(Duration::from_secs(30), || {
        Ok(containers(&cluster, true)?.is_empty())
    })?;
    Ok(())
}

#[test]
fn a_global_service_follows_the_nodes() -> Result<()> {
    let mut cluster = Cluster::start(1, 1, Executor::Sim)?;
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&[
        "service", "create", "--detach", "--name", "agent", "--mode", "global", "img",
    ])?;
    wait_until(Duration::from_secs(30), || {
        Ok(running_per_node(m1, "agent")?.len() == 2)
    })?;
    // A replica count means nothing to it: asked for one, every way is
    // refused rather than ignored.
    for (args, says) in [
        (
            &[
                "service",
                "create",
                "--mode",
                "global",
                "--replicas",
                "2",
                "--name",
                "g",
                "img",
            ][..],
            "--replicas does not apply",
        ),
        (
            &["service", "scale", "agent=3"][..],
            "service agent is global",
        ),
        (
            &["service", "update", "--detach", "--replicas", "3", "agent"][..],
            "service agent is global: it runs one task per node",
        ),
    ] {
        let out = m1.shoal(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }
    m1.shoal_ok(&["service", "create", "--detach", "--name", "web", "img"])?;
    let global = m1.shoal_ok(&["service", "ls", "--filter", "mode=global"])?;
    assert!(
        global.contains("agent") && !global.contains("web"),
        "{global}"
    );
    let named = m1.shoal_ok(&[
        "service",
        "ls",
        "-q",
        "-f",
        "name=we",
        "-f",
        "mode=replicated",
    ])?;
    assert_eq!(named.lines().count(), 1, "{named}");

    // A node that joins gets one.
    let token = m1.shoal_ok(&["swarm", "join-token", "-q", "worker"])?;
    let addr = m1.addr.clone();
    let w2 = cluster.add("w2")?;
    w2.join_with(token.trim(), &addr)?;
    let m1 = cluster.agent("m1");
    wait_until(Duration::from_secs(30), || {
        Ok(running_per_node(m1, "agent")?.get("w2") == Some(&1))
    })?;

    // A drained node loses it.
    m1.shoal_ok(&["node", "update", "--availability", "drain", "w1"])?;
    wait_until(Duration::from_secs(30), || {
        let per_node = running_per_node(m1, "agent")?;
        Ok(!per_node.contains_key("w1") && per_node.len() == 2)
    })?;
    // Its task history stays, told apart by desired state.
    let desired_states = |filter: &str| -> Result<Vec<String>> {
        let tasks = m1.shoal_json(&["node", "ps", "--filter", filter, "w1"])?;
        Ok(tasks
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|t| t["desired_state"].as_str().unwrap_or_default().to_string())
            .collect())
    };
    assert!(desired_states("desired-state=running")?.is_empty());
    let shut_down = desired_states("desired-state=shutdown")?;
    assert!(
        !shut_down.is_empty() && shut_down.iter().all(|s| s == "shutdown" || s == "remove"),
        "{shut_down:?}"
    );
    Ok(())
}

#[test]
fn constraints_place_tasks_or_explain_why_they_wait() -> Result<()> {
    let cluster = Cluster::start(1, 2, Executor::Sim)?;
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&[
        "service",
        "create",
        "--name",
        "workers-only",
        "--replicas",
        "4",
        "--constraint",
        "node.role==worker",
        "img",
    ])?;
    let per_node = running_per_node(m1, "workers-only")?;
    assert_eq!(
        per_node.keys().cloned().collect::<Vec<_>>(),
        ["w1", "w2"],
        "{per_node:?}"
    );

    m1.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "ssd",
        "--replicas",
        "2",
        "--constraint",
        "node.labels.disk==ssd",
        "img",
    ])?;
    wait_until(Duration::from_secs(20), || {
        let pending = tasks(m1, "ssd")?;
        Ok(pending.len() == 2
            && pending.iter().all(|t| {
                t["current_state"] == "pending"
                    && t["error"].as_str().is_some_and(|m| {
                        m.contains("no suitable node") && m.contains("3 nodes unmet constraint")
                    })
            }))
    })?;
    m1.shoal_ok(&["node", "update", "--label-add", "disk=ssd", "w2"])?;
    wait_running(m1, "ssd", 2)?;
    assert_eq!(
        running_per_node(m1, "ssd")?
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        ["w2"]
    );

    // The constraint enforcer: remove the label and the tasks leave w2.
    m1.shoal_ok(&["node", "update", "--label-rm", "disk", "w2"])?;
    wait_until(Duration::from_secs(20), || {
        Ok(running_per_node(m1, "ssd")?.is_empty())
    })?;
    Ok(())
}

#[test]
fn a_dead_workers_tasks_move_and_do_not_run_twice_when_it_returns() -> Result<()> {
    build_test_images()?;
    let mut cluster = Cluster::start(1, 2, Executor::Docker)?;
    create_web(cluster.agent("m1"), 4)?;
    let before = running_per_node(cluster.agent("m1"), "web")?;
    assert!(before.get("w1").copied().unwrap_or(0) > 0, "{before:?}");

    cluster.agent_mut("w1").kill9();
    wait_replaced(cluster.agent("m1"), "web", "w1", 4)?;
    assert_eq!(cluster.node_field("w1", "status")?, "down");

    // Back again: it stops what was replaced; tasks do not move back.
    cluster.agent_mut("w1").start()?;
    cluster.wait_ready(3)?;
    let w1_id = &cluster.agent("w1").node_id;
    wait_until(Duration::from_secs(30), || {
        Ok(containers_on(&cluster, w1_id)? == 0)
    })?;
    assert_eq!(containers(&cluster, false)?.len(), 4);
    assert!(!running_per_node(cluster.agent("m1"), "web")?.contains_key("w1"));
    Ok(())
}

#[test]
fn a_cut_off_worker_keeps_its_containers_until_it_hears_they_were_replaced() -> Result<()> {
    build_test_images()?;
    let cluster = Cluster::start_networked(1, 2, Executor::Docker)?;
    let m1 = cluster.agent("m1");
    create_web(m1, 4)?;
    assert!(running_per_node(m1, "web")?.get("w1").copied().unwrap_or(0) > 0);
    let w1_id = &cluster.agent("w1").node_id;
    let w1_before = containers_on(&cluster, w1_id)?;

    // Cut off, w1 is marked down and its tasks are started elsewhere; its
    // own containers run on meanwhile, as Swarm's do: it cannot know.
    cluster.cut_off("w1")?;
    wait_replaced(m1, "web", "w1", 4)?;
    assert_eq!(cluster.node_field("w1", "status")?, "down");
    assert_eq!(
        containers_on(&cluster, w1_id)?,
        w1_before,
        "a cut-off worker stops nothing by itself"
    );

    // Back in touch (the same process, its session resumed), it stops the
    // replaced containers: four run in all, none of them twice.
    cluster.reconnect("w1")?;
    wait_until(Duration::from_secs(30), || {
        Ok(cluster.node_field("w1", "status")? == "ready" && containers_on(&cluster, w1_id)? == 0)
    })?;
    assert_eq!(containers(&cluster, false)?.len(), 4);
    assert!(!running_per_node(m1, "web")?.contains_key("w1"));
    Ok(())
}

#[test]
fn a_failing_container_is_restarted_and_its_history_is_kept_within_the_limit() -> Result<()> {
    build_test_images()?;
    let cluster = Cluster::start(1, 0, Executor::Docker)?;
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&["swarm", "update", "--task-history-limit", "3"])?;
    m1.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "crashy",
        "--restart-delay",
        "200ms",
        IMAGE,
        "sh",
        "-c",
        "sleep 0.3; exit 1",
    ])?;
    wait_until(Duration::from_secs(60), || {
        let failed = tasks(m1, "crashy")?
            .iter()
            .filter(|t| t["current_state"] == "failed" && t["exit_code"] == 1)
            .count();
        Ok(failed >= 2)
    })?;
    // More restarts happen; the slot's history, current task included,
    // stays within the limit.
    std::thread::sleep(Duration::from_secs(3));
    wait_until(Duration::from_secs(20), || {
        Ok(tasks(m1, "crashy")?.len() <= 3)
    })?;
    let table = m1.shoal_ok(&["service", "ps", "crashy"])?;
    assert!(table.contains(" \\_ crashy.1"), "{table}");
    assert!(table.contains("non-zero exit (1)"), "{table}");
    Ok(())
}

#[test]
fn an_agent_stopped_by_sigterm_leaves_its_containers_running_and_adopts_them() -> Result<()> {
    build_test_images()?;
    let mut cluster = Cluster::start(1, 1, Executor::Docker)?;
    create_web(cluster.agent("m1"), 2)?;
    let before = containers(&cluster, false)?;
    let ids_before = tasks(cluster.agent("m1"), "web")?;
    // SIGTERM: the agent exits cleanly and its workloads keep running.
    let status = cluster.agent_mut("w1").stop()?;
    assert!(status.success(), "shoald exited with {status} on SIGTERM");
    assert_eq!(containers(&cluster, false)?, before);
    cluster.agent_mut("w1").start()?;
    cluster.wait_ready(2)?;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(containers(&cluster, false)?, before);
    let ids_after = tasks(cluster.agent("m1"), "web")?;
    assert_eq!(
        ids_before
            .iter()
            .map(|t| t["id"].clone())
            .collect::<Vec<_>>(),
        ids_after
            .iter()
            .map(|t| t["id"].clone())
            .collect::<Vec<_>>()
    );
    assert!(ids_after.iter().all(|t| t["current_state"] == "running"));
    Ok(())
}

#[test]
fn the_process_executor_runs_replicated_and_global_services_without_docker() -> Result<()> {
    let cluster = Cluster::start(1, 1, Executor::Process)?;
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&[
        "service",
        "create",
        "--name",
        "sleepers",
        "--replicas",
        "3",
        "host",
        "sleep",
        "60",
    ])?;
    assert_eq!(running_per_node(m1, "sleepers")?.values().sum::<usize>(), 3);
    m1.shoal_ok(&[
        "service", "create", "--name", "each", "--mode", "global", "host", "sleep", "60",
    ])?;
    assert_eq!(running_per_node(m1, "each")?.len(), 2);
    // A command that exits is reported with its code.
    m1.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "once",
        "--restart-condition",
        "none",
        "host",
        "sh",
        "-c",
        "exit 5",
    ])?;
    wait_until(Duration::from_secs(20), || {
        Ok(tasks(m1, "once")?
            .iter()
            .any(|t| t["exit_code"] == 5 && t["current_state"] == "failed"))
    })?;
    Ok(())
}
