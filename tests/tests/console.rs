//! The console end to end: the real `shoal` in a real terminal (tmux)
//! against a live cluster. Every key's effect is checked through the CLI,
//! not through the screen that sent it.

use std::time::Duration;

use anyhow::{Context, Result};
use shoal_tests::harness::{Agent, Cluster, Executor, shoal_path, wait_until};
use shoal_tests::terminal::Terminal;

const SCREEN: Duration = Duration::from_secs(15);
const CLUSTER: Duration = Duration::from_secs(60);

fn console_on(agent: &Agent, name: &str) -> Result<Terminal> {
    let command = format!(
        "env TERM=xterm-256color {} --socket {}",
        shoal_path().display(),
        agent.socket.display()
    );
    Terminal::start(name, &command, 120, 34)
}

/// Narrows the current view to rows matching `text`, so the first row is
/// the one the test acts on. The nodes view filters on "ID HOSTNAME", and
/// a random base-36 id can hold a short hostname such as "m3": select nodes
/// by " HOSTNAME".
fn select(terminal: &Terminal, text: &str) -> Result<()> {
    if terminal.screen().contains("(filter: ") {
        // Escape clears the earlier filter. The next key waits until the
        // screen shows it cleared: an escape byte read together with the
        // next key is Alt+key, and on a busy machine a fixed pause was not
        // always enough.
        terminal.keys(&["/"])?;
        terminal.keys(&["Escape"])?;
        wait_until(SCREEN, || Ok(!terminal.screen().contains("(filter: ")))
            .with_context(|| terminal.screen())?;
    }
    terminal.keys(&["/"])?;
    terminal.type_text(text)?;
    terminal.keys(&["Enter"])?;
    // A key meant for the selected row must not land on another one.
    terminal.wait_for(&format!("(filter: {text})"), SCREEN)
}

#[test]
fn s_scales_the_selected_service() -> Result<()> {
    let cluster = Cluster::start(1, 1, Executor::Process)?;
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "2",
        "host-process",
        "sleep",
        "600",
    ])?;
    let terminal = console_on(m1, "scale")?;
    terminal.keys(&["2"])?;
    terminal.wait_for("web", SCREEN)?;
    select(&terminal, "web")?;
    // The prompt starts with the current count.
    terminal.keys(&["s", "BSpace", "BSpace", "BSpace"])?;
    terminal.type_text("5")?;
    terminal.keys(&["Enter"])?;
    wait_until(CLUSTER, || {
        let services = m1.shoal_json(&["service", "ls"])?;
        Ok(services[0]["replicas_desired"] == 5 && services[0]["replicas_running"] == 5)
    })?;
    terminal.wait_for("5/5", SCREEN)?;
    Ok(())
}

#[test]
fn d_drains_a_node_after_confirmation_and_a_activates_it() -> Result<()> {
    let cluster = Cluster::start(1, 1, Executor::Process)?;
    let terminal = console_on(cluster.agent("m1"), "drain")?;
    terminal.keys(&["1"])?;
    terminal.wait_for("w1", SCREEN)?;
    select(&terminal, " w1")?;
    // A key other than y cancels.
    terminal.keys(&["d", "n"])?;
    terminal.wait_for("cancelled", SCREEN)?;
    assert_eq!(cluster.node_field("w1", "availability")?, "active");
    terminal.keys(&["d", "y"])?;
    wait_until(CLUSTER, || {
        Ok(cluster.node_field("w1", "availability")? == "drain")
    })?;
    terminal.keys(&["a"])?;
    wait_until(CLUSTER, || {
        Ok(cluster.node_field("w1", "availability")? == "active")
    })?;
    Ok(())
}

#[test]
fn space_marks_nodes_and_one_drain_takes_them_all() -> Result<()> {
    let cluster = Cluster::start(1, 2, Executor::Process)?;
    let terminal = console_on(cluster.agent("m1"), "bulk")?;
    terminal.keys(&["1"])?;
    terminal.wait_for("w2", SCREEN)?;
    // Rows are sorted by hostname: m1, w1, w2. Space marks and moves on.
    terminal.keys(&["j", "Space", "Space"])?;
    terminal.wait_for("2 marked", SCREEN)?;
    terminal.keys(&["d"])?;
    terminal.wait_for("Set w1, w2 to drain?", SCREEN)?;
    terminal.keys(&["y"])?;
    wait_until(CLUSTER, || {
        Ok(cluster.node_field("w1", "availability")? == "drain"
            && cluster.node_field("w2", "availability")? == "drain")
    })?;
    assert_eq!(cluster.node_field("m1", "availability")?, "active");
    terminal.wait_for("done: set w1, w2 to drain", SCREEN)?;
    Ok(())
}

#[test]
fn minus_demotes_and_plus_promotes_a_manager() -> Result<()> {
    let cluster = Cluster::start(3, 0, Executor::Process)?;
    let terminal = console_on(cluster.agent("m1"), "roles")?;
    terminal.keys(&["1"])?;
    terminal.wait_for("m3", SCREEN)?;
    select(&terminal, " m3")?;
    terminal.keys(&["-", "y"])?;
    // The demotion done on m3 itself too, so "+" starts a plain promotion
    // (the late-hearing case has its own test in cluster.rs).
    wait_until(CLUSTER, || {
        Ok(cluster.node_field("m3", "role")? == "worker"
            && cluster.agent("m3").shoal_json(&["info"])?["role"] == "worker")
    })?;
    terminal.keys(&["+"])?;
    wait_until(CLUSTER, || {
        Ok(cluster.node_field("m3", "role")? == "manager"
            && cluster.node_field("m3", "manager_status")? == "reachable")
    })?;
    Ok(())
}

#[test]
fn u_unlocks_a_locked_manager_with_a_masked_key() -> Result<()> {
    let mut cluster = Cluster::start(1, 0, Executor::Process)?;
    cluster
        .agent("m1")
        .shoal_ok(&["swarm", "update", "--autolock"])?;
    let key = cluster
        .agent("m1")
        .shoal_ok(&["swarm", "unlock-key", "-q"])?
        .trim()
        .to_string();
    cluster.agent_mut("m1").stop()?;
    cluster.agent_mut("m1").start()?;
    let m1 = cluster.agent("m1");
    assert_eq!(m1.shoal_json(&["info"])?["state"], "locked");

    let terminal = console_on(m1, "unlock")?;
    terminal.wait_for("LOCKED", SCREEN)?;
    terminal.keys(&["u"])?;
    terminal.type_text(&key)?;
    // The key never shows on screen.
    let screen = terminal.screen();
    assert!(!screen.contains(&key[12..]), "{screen}");
    terminal.keys(&["Enter"])?;
    wait_until(CLUSTER, || {
        Ok(m1.shoal_json(&["info"])?["state"] == "active")
    })?;
    terminal.wait_for("1 nodes", SCREEN)?;
    Ok(())
}

#[test]
fn killing_the_attached_manager_moves_the_console_to_another() -> Result<()> {
    let mut cluster = Cluster::start(3, 0, Executor::Process)?;
    cluster.agent("m1").shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "1",
        "host-process",
        "sleep",
        "600",
    ])?;
    let terminal = console_on(cluster.agent("m1"), "failover")?;
    terminal.keys(&["2"])?;
    terminal.wait_for("web", SCREEN)?;
    terminal.wait_for("3/3 managers", SCREEN)?;
    // The console has fetched its in-memory credentials by its second
    // info poll.
    std::thread::sleep(Duration::from_secs(3));
    cluster.agent_mut("m1").kill9();
    wait_until(SCREEN, || {
        let screen = terminal.screen();
        Ok(screen.contains("following m2") || screen.contains("following m3"))
    })
    .with_context(|| terminal.screen())?;

    // Still a working console: a scale through it lands.
    select(&terminal, "web")?;
    terminal.keys(&["s", "BSpace", "BSpace"])?;
    terminal.type_text("3")?;
    terminal.keys(&["Enter"])?;
    let m2 = cluster.agent("m2");
    wait_until(CLUSTER, || {
        Ok(m2.shoal_json(&["service", "ls"])?[0]["replicas_desired"] == 3)
    })?;
    Ok(())
}

#[test]
fn capital_u_rolls_out_a_new_image_through_the_update_form() -> Result<()> {
    let cluster = Cluster::start(1, 1, Executor::Process)?;
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "2",
        "--update-delay",
        "1s",
        "host-process",
        "sleep",
        "600",
    ])?;
    let terminal = console_on(m1, "update")?;
    terminal.keys(&["2"])?;
    terminal.wait_for("web", SCREEN)?;
    select(&terminal, "web")?;
    terminal.keys(&["U"])?;
    // The form opens on the image, filled with the current one.
    terminal.wait_for("host-process", SCREEN)?;
    for _ in 0..20 {
        terminal.keys(&["BSpace"])?;
    }
    terminal.type_text("host-process:2")?;
    terminal.keys(&["Enter"])?;
    wait_until(CLUSTER, || {
        let tasks =
            m1.shoal_json(&["service", "ps", "--filter", "desired-state=running", "web"])?;
        let tasks = tasks.as_array().cloned().unwrap_or_default();
        Ok(tasks.len() == 2
            && tasks
                .iter()
                .all(|t| t["image"] == "host-process:2" && t["current_state"] == "running"))
    })
    .with_context(|| terminal.screen())?;
    Ok(())
}
