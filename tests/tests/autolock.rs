//! Autolock: a restarted manager opens nothing without the unlock key, and
//! nothing the store holds is readable on disk.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use shoal_tests::{Agent, Cluster, Executor, wait_until};

fn state(agent: &Agent) -> Result<String> {
    let info = agent.shoal_json(&["info"])?;
    Ok(info["state"].as_str().unwrap_or("").to_string())
}

fn unlock(agent: &Agent, key: &str) -> Result<std::process::Output> {
    use std::io::Write;
    let mut child = std::process::Command::new(shoal_tests::shoal_path())
        .arg("--socket")
        .arg(&agent.socket)
        .args(["swarm", "unlock"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{key}")?;
    }
    Ok(child.wait_with_output()?)
}

fn manager_status(cluster: &Cluster, from: &str, host: &str) -> Result<String> {
    let nodes = cluster.agent(from).shoal_json(&["node", "ls"])?;
    Ok(nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["hostname"] == host)
        .and_then(|n| n["manager_status"].as_str())
        .unwrap_or("")
        .to_string())
}

/// Every file under `dir`, searched for `needle` as bytes.
fn found_in(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(path.display().to_string());
        }
    }
    hits
}

#[test]
fn a_restarted_manager_stays_locked_until_the_right_key() -> Result<()> {
    let mut cluster = Cluster::start(3, 1, Executor::Sim)?;
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&["swarm", "update", "--autolock"])?;
    let key = m1
        .shoal_ok(&["swarm", "unlock-key", "-q"])?
        .trim()
        .to_string();
    assert!(key.starts_with("SWMKEY-1-"), "{key}");
    // Every manager re-seals its keys with the new key.
    wait_until(Duration::from_secs(10), || {
        Ok(["m1", "m2", "m3"].iter().all(|m| {
            std::fs::read_to_string(cluster.agent(m).data_dir.join("keys.json"))
                .is_ok_and(|text| text.contains("\"sealed\""))
        }))
    })?;

    cluster.agent_mut("m3").stop()?;
    cluster.agent_mut("m3").start()?;
    let m3 = cluster.agent("m3");
    assert_eq!(state(m3)?, "locked");
    let refused = m3.shoal(&["node", "ls"])?;
    assert!(String::from_utf8_lossy(&refused.stderr).contains("shoal swarm unlock"));

    // Written while m3 is locked.
    cluster
        .agent("m1")
        .shoal_ok(&["node", "update", "--label-add", "while=locked", "w1"])?;
    wait_until(Duration::from_secs(10), || {
        Ok(manager_status(&cluster, "m1", "m3")? == "unreachable")
    })?;

    let wrong = unlock(m3, "SWMKEY-1-V/GrIaDRXsRoTj+VMzbCcpBX7M/AhXhVR/jNej1UEPw")?;
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong"));
    assert_eq!(state(m3)?, "locked");

    let right = unlock(m3, &key)?;
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
    wait_until(Duration::from_secs(20), || {
        Ok(manager_status(&cluster, "m1", "m3")? == "reachable")
    })?;
    wait_until(Duration::from_secs(10), || {
        let node = cluster.agent("m3").shoal_json(&["node", "inspect", "w1"])?;
        Ok(node[0]["spec"]["labels"]["while"] == "locked")
    })?;
    Ok(())
}

#[test]
fn a_manager_down_during_rotation_unlocks_with_the_old_key() -> Result<()> {
    let mut cluster = Cluster::start(3, 0, Executor::Sim)?;
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&["swarm", "update", "--autolock"])?;
    let old_key = m1
        .shoal_ok(&["swarm", "unlock-key", "-q"])?
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_secs(1));
    cluster.agent_mut("m3").stop()?;
    let new_key = cluster
        .agent("m1")
        .shoal_ok(&["swarm", "unlock-key", "--rotate", "-q"])?
        .trim()
        .to_string();
    assert_ne!(old_key, new_key);

    cluster.agent_mut("m3").start()?;
    let m3 = cluster.agent("m3");
    assert_eq!(state(m3)?, "locked");
    let out = unlock(m3, &old_key)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Having caught up, it re-seals with the new key: the next restart
    // needs the new one.
    std::thread::sleep(Duration::from_secs(3));
    cluster.agent_mut("m3").stop()?;
    cluster.agent_mut("m3").start()?;
    let m3 = cluster.agent("m3");
    assert!(!unlock(m3, &old_key)?.status.success());
    assert!(unlock(m3, &new_key)?.status.success());
    Ok(())
}

#[test]
fn nothing_in_the_store_is_readable_in_any_data_directory() -> Result<()> {
    let mut cluster = Cluster::start(2, 1, Executor::Sim)?;
    let planted = "planted-label-value-7f3a9c";
    cluster.agent("m1").shoal_ok(&[
        "node",
        "update",
        "--label-add",
        &format!("secret={planted}"),
        "w1",
    ])?;
    cluster.agent("m1").shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "envy",
        "--env",
        &format!("TOKEN={planted}"),
        "img",
    ])?;
    std::thread::sleep(Duration::from_secs(1));
    // Stopped agents have flushed everything they will write.
    for name in ["m1", "m2", "w1"] {
        cluster.agent_mut(name).stop()?;
    }
    let hits = found_in(cluster.root(), planted.as_bytes())
        .into_iter()
        .filter(|path| !path.ends_with(".log"))
        .collect::<Vec<_>>();
    assert!(hits.is_empty(), "plain text found in {hits:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_reach_the_control_api_over_tls_but_not_raft() -> Result<()> {
    let cluster = tokio::task::block_in_place(|| Cluster::start(1, 0, Executor::Sim))?;
    let m1 = cluster.agent("m1");
    let dir = cluster.root().join("operator");
    let dir_text = dir.display().to_string();
    tokio::task::block_in_place(|| {
        m1.shoal_ok(&[
            "swarm",
            "ca",
            "operator-cert",
            "--name",
            "alice",
            "--out",
            &dir_text,
        ])
    })?;
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("key.pem"))?.permissions(),
    );
    assert_eq!(key_mode & 0o077, 0, "the operator key must be private");

    // The CLI over TCP with the operator bundle.
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(shoal_tests::shoal_path())
            .args([
                "--host",
                &m1.addr,
                "--tls-dir",
                &dir_text,
                "node",
                "ls",
                "--format",
                "json",
            ])
            .output()
    })?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"m1\""));

    // The same certificate on the raft service is refused by role.
    let creds = shoal_proto::transport::OperatorCredentials::load(&dir)?;
    let channel =
        shoal_proto::transport::connect_tls(&m1.addr, creds.tls, shoal_proto::MANAGER_SERVER_NAME)
            .await?;
    let mut raft = shoal_proto::v1::raft_client::RaftClient::new(channel);
    let refused = raft
        .vote(shoal_proto::v1::RaftPayload::default())
        .await
        .expect_err("an operator must not vote in raft");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    Ok(())
}

#[test]
fn a_short_lived_certificate_renews_before_it_expires() -> Result<()> {
    // A cluster whose certificates live one minute from the start.
    let mut cluster = Cluster::empty(Executor::Sim)?;
    cluster.add("m1")?;
    cluster.add("w1")?;
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&[
        "swarm",
        "init",
        "--cert-expiry",
        "1m",
        "--advertise-addr",
        &m1.addr,
    ])?;
    let w1 = cluster.agent("w1");
    w1.join_through(m1, "worker")?;
    let expiry = |agent: &Agent| -> Result<i64> {
        Ok(agent.shoal_json(&["info"])?["cert_expires_at_ms"]
            .as_i64()
            .unwrap_or(0))
    };
    let first = expiry(w1)?;
    let left = first - now_ms();
    assert!(left > 0 && left <= 61_000, "{left} ms left");
    // Renewed at 50–80 % of its minute: well before it runs out.
    wait_until(Duration::from_secs(60), || Ok(expiry(w1)? > first))?;
    assert!(now_ms() < first, "renewed only after expiry");
    // And the node keeps working with its new certificate.
    std::thread::sleep(Duration::from_secs(2));
    let nodes = m1.shoal_json(&["node", "ls"])?;
    assert!(
        nodes
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["hostname"] == "w1" && n["status"] == "ready"),
        "{nodes}"
    );
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
