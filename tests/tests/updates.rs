//! Rolling updates and rollbacks on real containers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use shoal_tests::{Agent, Cluster, Executor, build_test_images, wait_until};

const V1: &str = "shoal-test/busybox:1";
const V2: &str = "shoal-test/busybox:2";

fn tasks(manager: &Agent, service: &str) -> Result<Vec<Value>> {
    Ok(manager
        .shoal_json(&["service", "ps", service])?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn running(tasks: &[Value]) -> Vec<&Value> {
    tasks
        .iter()
        .filter(|t| t["desired_state"] == "running" && t["current_state"] == "running")
        .collect()
}

fn update_state(manager: &Agent, service: &str) -> Result<String> {
    let inspected = manager.shoal_json(&["service", "inspect", service])?;
    Ok(inspected[0]["update_status"]["state"]
        .as_str()
        .unwrap_or("")
        .to_string())
}

/// Runs an update while watching how many tasks run; returns the
/// fewest seen.
fn update_watching(manager: &Agent, service: &str, args: &[&str]) -> Result<usize> {
    let fewest = Arc::new(AtomicUsize::new(usize::MAX));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let fewest = fewest.clone();
        let done = done.clone();
        let socket = manager.socket.clone();
        let service = service.to_string();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let out = std::process::Command::new(shoal_tests::shoal_path())
                    .arg("--socket")
                    .arg(&socket)
                    .args(["service", "ps", "--format", "json", &service])
                    .output();
                if let Ok(out) = out
                    && let Ok(Value::Array(tasks)) = serde_json::from_slice::<Value>(&out.stdout)
                {
                    fewest.fetch_min(running(&tasks).len(), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut all = vec!["service", "update"];
    all.extend_from_slice(args);
    all.push(service);
    let result = manager.shoal_ok(&all);
    done.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    result?;
    Ok(fewest.load(Ordering::Relaxed))
}

fn create_six(manager: &Agent, name: &str, order: &str) -> Result<()> {
    manager.shoal_ok(&[
        "service",
        "create",
        "--name",
        name,
        "--replicas",
        "6",
        "--update-parallelism",
        "2",
        "--update-delay",
        "1s",
        "--update-monitor",
        "1s",
        "--update-order",
        order,
        "--stop-grace-period",
        "1s",
        V1,
    ])?;
    Ok(())
}

#[test]
fn a_stop_first_rolling_update_keeps_four_of_six_running() -> Result<()> {
    build_test_images()?;
    let cluster = Cluster::start(1, 2, Executor::Docker)?;
    let m1 = cluster.agent("m1");
    create_six(m1, "web", "stop-first")?;
    let fewest = update_watching(m1, "web", &["--image", V2])?;
    assert!(fewest >= 4, "only {fewest} tasks ran at one point");
    let all = tasks(m1, "web")?;
    let current = running(&all);
    assert_eq!(current.len(), 6);
    assert!(current.iter().all(|t| t["image"] == V2));
    let old = all
        .iter()
        .filter(|t| t["image"] == V1 && t["desired_state"] == "shutdown")
        .count();
    assert_eq!(old, 6, "history keeps the replaced tasks");
    assert_eq!(update_state(m1, "web")?, "completed");

    // A manual rollback returns to :1.
    m1.shoal_ok(&["service", "rollback", "web"])?;
    let all = tasks(m1, "web")?;
    assert!(running(&all).iter().all(|t| t["image"] == V1));
    assert_eq!(update_state(m1, "web")?, "rollback_completed");
    Ok(())
}

#[test]
fn a_start_first_rolling_update_never_drops_below_six() -> Result<()> {
    build_test_images()?;
    let cluster = Cluster::start(1, 2, Executor::Docker)?;
    let m1 = cluster.agent("m1");
    create_six(m1, "api", "start-first")?;
    let fewest = update_watching(m1, "api", &["--image", V2])?;
    assert!(fewest >= 6, "only {fewest} tasks ran at one point");
    assert!(running(&tasks(m1, "api")?).iter().all(|t| t["image"] == V2));
    Ok(())
}

#[test]
fn failing_updates_pause_or_roll_back_by_themselves() -> Result<()> {
    build_test_images()?;
    let cluster = Cluster::start(1, 1, Executor::Docker)?;
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&[
        "service",
        "create",
        "--name",
        "paused",
        "--replicas",
        "2",
        "--update-monitor",
        "2s",
        V1,
    ])?;
    let out = m1.shoal(&["service", "update", "--args", "sh -c 'exit 1'", "paused"])?;
    assert!(!out.status.success(), "the update should not succeed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("paused") && err.contains("task"), "{err}");
    assert_eq!(update_state(m1, "paused")?, "paused");

    m1.shoal_ok(&[
        "service",
        "create",
        "--name",
        "undo",
        "--replicas",
        "2",
        "--update-monitor",
        "2s",
        "--update-failure-action",
        "rollback",
        V1,
    ])?;
    let _ = m1.shoal(&[
        "service",
        "update",
        "--image",
        V2,
        "--args",
        "sh -c 'exit 1'",
        "undo",
    ])?;
    wait_until(Duration::from_secs(60), || {
        Ok(update_state(m1, "undo")? == "rollback_completed")
    })?;
    let inspected = m1.shoal_json(&["service", "inspect", "undo"])?;
    assert_eq!(inspected[0]["spec"]["container"]["image"], V1);
    wait_until(Duration::from_secs(30), || {
        Ok(running(&tasks(m1, "undo")?)
            .iter()
            .filter(|t| t["image"] == V1)
            .count()
            == 2)
    })?;
    Ok(())
}

#[test]
fn an_unhealthy_image_pauses_the_update_on_health() -> Result<()> {
    build_test_images()?;
    let cluster = Cluster::start(1, 0, Executor::Docker)?;
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&[
        "service",
        "create",
        "--name",
        "svc",
        "--replicas",
        "1",
        "--update-monitor",
        "2s",
        V1,
    ])?;
    let out = m1.shoal(&[
        "service",
        "update",
        "--image",
        "shoal-test/busybox:unhealthy",
        "svc",
    ])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unhealthy"), "{err}");
    Ok(())
}

#[test]
fn an_update_survives_the_death_of_the_leader() -> Result<()> {
    build_test_images()?;
    let mut cluster = Cluster::start(3, 0, Executor::Docker)?;
    let leader = cluster.leader()?;
    let survivor = cluster.a_manager(&[&leader]).name.clone();
    let m = cluster.agent(&survivor);
    m.shoal_ok(&[
        "service",
        "create",
        "--name",
        "slow",
        "--replicas",
        "4",
        "--update-parallelism",
        "1",
        "--update-delay",
        "2s",
        "--update-monitor",
        "1s",
        "--stop-grace-period",
        "1s",
        V1,
    ])?;
    m.shoal_ok(&["service", "update", "--detach", "--image", V2, "slow"])?;
    wait_until(Duration::from_secs(30), || {
        Ok(running(&tasks(cluster.agent(&survivor), "slow")?)
            .iter()
            .any(|t| t["image"] == V2))
    })?;
    cluster.agent_mut(&leader).kill9();
    let m = cluster.agent(&survivor);
    wait_until(Duration::from_secs(90), || {
        Ok(update_state(m, "slow")? == "completed")
    })?;
    let all = tasks(m, "slow")?;
    let current = running(&all);
    assert!(current.iter().all(|t| t["image"] == V2), "{current:?}");
    Ok(())
}
