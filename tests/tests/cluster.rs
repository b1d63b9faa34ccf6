//! Forming, keeping and recovering a cluster: real `shoald` processes on
//! loopback, driven through the `shoal` CLI.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shoal_tests::{Agent, Cluster, Executor, SmallDisk, wait_until};

fn hostnames(nodes: &[serde_json::Value]) -> Vec<String> {
    let mut names: Vec<String> = nodes
        .iter()
        .filter_map(|n| n["hostname"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[test]
fn three_managers_and_two_workers_form_and_every_manager_agrees() -> Result<()> {
    let cluster = Cluster::start(3, 2, Executor::Sim)?;
    let mut views = Vec::new();
    for name in ["m1", "m2", "m3"] {
        let nodes = cluster.agent(name).shoal_json(&["node", "ls"])?;
        let nodes = nodes.as_array().cloned().unwrap_or_default();
        assert_eq!(
            hostnames(&nodes),
            ["m1", "m2", "m3", "w1", "w2"],
            "seen from {name}"
        );
        let managers = nodes.iter().filter(|n| n["role"] == "manager").count();
        assert_eq!(managers, 3, "seen from {name}: {nodes:?}");
        let leaders = nodes
            .iter()
            .filter(|n| n["manager_status"] == "leader")
            .count();
        assert_eq!(leaders, 1, "seen from {name}");
        for node in &nodes {
            assert_eq!(node["status"], "ready");
            assert_eq!(node["availability"], "active");
        }
        views.push(
            nodes
                .iter()
                .map(|n| (n["id"].clone(), n["role"].clone()))
                .collect::<Vec<_>>(),
        );
    }
    assert!(views.windows(2).all(|w| w[0] == w[1]));
    // Followers hear only from the leader, yet count every reachable
    // manager: quorum checks (leave, demote) run on whichever manager the
    // operator asks.
    for name in ["m1", "m2", "m3"] {
        wait_until(Duration::from_secs(5), || {
            let info = cluster.agent(name).shoal_json(&["info"])?;
            Ok(info["reachable_managers"] == 3 && info["fault_tolerance"] == 1)
        })
        .map_err(|e| anyhow::anyhow!("{name} does not see 3 of 3 managers: {e}"))?;
    }
    // The table marks the local node and names the leader.
    let table = cluster.agent("m2").shoal_ok(&["node", "ls"])?;
    assert!(
        table.contains("HOSTNAME") && table.contains("MANAGER STATUS"),
        "{table}"
    );
    assert!(table.contains("Leader"), "{table}");
    assert!(
        table.lines().any(|l| l.contains(" *") && l.contains("m2")),
        "{table}"
    );
    // Docker's filters: values of one key are alternatives, keys combine.
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&["node", "update", "--label-add", "zone=b", "w2"])?;
    let listed = |filters: &[&str]| -> Result<Vec<String>> {
        let mut args = vec!["node", "ls"];
        for filter in filters {
            args.extend(["--filter", filter]);
        }
        let nodes = m1.shoal_json(&args)?;
        Ok(hostnames(nodes.as_array().map_or(&[][..], Vec::as_slice)))
    };
    assert_eq!(listed(&["role=manager"])?, ["m1", "m2", "m3"]);
    assert_eq!(listed(&["role=worker", "name=m", "name=w1"])?, ["w1"]);
    assert_eq!(listed(&["node.label=zone"])?, ["w2"]);
    assert_eq!(listed(&["node.label=zone=a"])?, Vec::<String>::new());
    let quiet = m1.shoal_ok(&["node", "ls", "-q", "--filter", "role=worker"])?;
    assert_eq!(quiet.lines().count(), 2, "{quiet}");
    let bad = m1.shoal(&["node", "ls", "--filter", "rol=manager"])?;
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("KEY one of id, name, role"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn init_and_join_answer_once_the_node_is_ready() -> Result<()> {
    let mut cluster = Cluster::empty(Executor::Sim)?;
    cluster.add("m1")?;
    cluster.add("w1")?;
    let (m1, w1) = (cluster.agent("m1"), cluster.agent("w1"));
    // No waiting between the commands, as in a script: a node that has
    // just been made part of the swarm is listed ready, as with Docker.
    m1.shoal_ok(&["swarm", "init", "--advertise-addr", &m1.addr])?;
    assert_eq!(m1.node_field("m1", "status")?, "ready");
    w1.join_through(m1, "worker")?;
    assert_eq!(m1.node_field("w1", "status")?, "ready");
    Ok(())
}

#[test]
fn killing_the_leader_keeps_the_cluster_writable_and_loses_nothing() -> Result<()> {
    let mut cluster = Cluster::start(3, 0, Executor::Sim)?;
    cluster
        .agent("m1")
        .shoal_ok(&["node", "update", "--label-add", "zone=a", "m2"])?;
    let leader = cluster.leader()?;
    cluster.agent_mut(&leader).kill9();

    // A write through a survivor succeeds within 2 s.
    let survivor = cluster.a_manager(&[&leader]).name.clone();
    let started = Instant::now();
    wait_until(Duration::from_secs(2), || {
        cluster.agent(&survivor).accepts_write("after=kill", "m2")
    })?;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "write accepted after {took:?}"
    );

    // The killed manager comes back from its data directory.
    cluster.agent_mut(&leader).start()?;
    wait_until(Duration::from_secs(20), || {
        is_raft_member(cluster.agent(&survivor), &leader)
    })?;
    // It has what was written before and while it was down.
    wait_until(Duration::from_secs(10), || {
        let node = cluster
            .agent(&leader)
            .shoal_json(&["node", "inspect", "m2"])?;
        let labels = &node[0]["spec"]["labels"];
        Ok(labels["zone"] == "a" && labels["after"] == "kill")
    })?;
    Ok(())
}

#[test]
fn stopping_and_restarting_every_manager_keeps_nodes_labels_and_availability() -> Result<()> {
    let mut cluster = Cluster::start(3, 1, Executor::Sim)?;
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&["node", "update", "--label-add", "disk=ssd", "w1"])?;
    m1.shoal_ok(&["node", "update", "--availability", "drain", "m3"])?;
    for name in ["m1", "m2", "m3"] {
        cluster.agent_mut(name).stop()?;
    }
    for name in ["m1", "m2", "m3"] {
        cluster.agent_mut(name).start()?;
    }
    cluster.wait_ready(4)?;
    let nodes = cluster.nodes()?;
    assert_eq!(hostnames(&nodes), ["m1", "m2", "m3", "w1"]);
    let w1 = nodes.iter().find(|n| n["hostname"] == "w1").expect("w1");
    assert_eq!(w1["labels"]["disk"], "ssd");
    let m3 = nodes.iter().find(|n| n["hostname"] == "m3").expect("m3");
    assert_eq!(m3["availability"], "drain");
    assert_eq!(nodes.iter().filter(|n| n["role"] == "manager").count(), 3);
    Ok(())
}

#[test]
fn wrong_and_rotated_tokens_are_refused_with_clear_messages() -> Result<()> {
    let mut cluster = Cluster::start(1, 0, Executor::Sim)?;
    let manager_addr = cluster.agent("m1").addr.clone();
    let token = cluster
        .agent("m1")
        .shoal_ok(&["swarm", "join-token", "-q", "worker"])?
        .trim()
        .to_string();
    let joiner = cluster.add("j1")?;
    let join = |joiner: &shoal_tests::Agent, token: &str| -> Result<String> {
        let out = joiner.shoal(&[
            "swarm",
            "join",
            "--token",
            token,
            "--advertise-addr",
            &joiner.addr,
            &manager_addr,
        ])?;
        assert!(!out.status.success(), "join with {token} should fail");
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };

    // Right CA, wrong secret.
    let (prefix, _) = token.rsplit_once('-').expect("token shape");
    let wrong_secret = format!("{prefix}-{}", "0".repeat(25));
    let err = join(joiner, &wrong_secret)?;
    assert!(err.contains("join token is not valid"), "{err}");

    // A digest of another CA.
    let parts: Vec<&str> = token.split('-').collect();
    let wrong_digest = format!("SWMTKN-1-{}-{}", "1".repeat(50), parts[3]);
    let err = join(joiner, &wrong_digest)?;
    assert!(err.contains("does not match the token"), "{err}");

    // Not a token at all.
    let err = join(joiner, "SWMTKN-2-nonsense")?;
    assert!(err.contains("invalid join token"), "{err}");

    // A rotated-out token.
    cluster
        .agent("m1")
        .shoal_ok(&["swarm", "join-token", "--rotate", "worker"])?;
    let joiner = cluster.agent("j1");
    let err = join(joiner, &token)?;
    assert!(err.contains("join token is not valid"), "{err}");
    // The node is still inactive and can join with the new token.
    let fresh = cluster
        .agent("m1")
        .shoal_ok(&["swarm", "join-token", "-q", "worker"])?;
    joiner.join_with(fresh.trim(), &manager_addr)?;
    cluster.wait_ready(2)?;
    Ok(())
}

fn is_reachable_manager(cluster: &Cluster, hostname: &str) -> Result<bool> {
    Ok(cluster.node_field(hostname, "role")? == "manager"
        && cluster.node_field(hostname, "manager_status")? == "reachable")
}

/// Whether `asked` lists `hostname` as a manager taking part in raft
/// (leading or reachable).
fn is_raft_member(asked: &Agent, hostname: &str) -> Result<bool> {
    Ok(asked.node_field(hostname, "role")? == "manager"
        && ["reachable", "leader"]
            .contains(&asked.node_field(hostname, "manager_status")?.as_str()))
}

#[test]
fn a_worker_promoted_joins_raft_and_demoted_leaves_it() -> Result<()> {
    let cluster = Cluster::start(3, 1, Executor::Sim)?;
    let m1 = cluster.agent("m1");
    let changing_roles = Duration::from_secs(30);

    // promote and demote answer once the change is carried out, so that
    // what they print and the listing that follows are true.
    let out = m1.shoal_ok(&["node", "promote", "w1"])?;
    assert!(out.contains("promoted"), "{out}");
    assert_eq!(cluster.node_field("w1", "role")?, "manager");
    wait_until(changing_roles, || is_reachable_manager(&cluster, "w1"))?;
    wait_until(changing_roles, || {
        Ok(cluster.agent("w1").shoal_json(&["info"])?["role"] == "manager")
    })?;
    // A write through the new manager goes through raft.
    cluster
        .agent("w1")
        .shoal_ok(&["node", "update", "--label-add", "promoted=yes", "w1"])?;
    let out = m1.shoal_ok(&["node", "demote", "w1"])?;
    assert!(out.contains("demoted"), "{out}");
    assert_eq!(cluster.node_field("w1", "role")?, "worker");
    assert_eq!(cluster.node_field("w1", "manager_status")?, "");
    wait_until(changing_roles, || {
        Ok(cluster.node_field("w1", "role")? == "worker"
            && cluster.agent("w1").shoal_json(&["info"])?["role"] == "worker")
    })?;

    Ok(())
}

#[test]
fn a_manager_that_missed_its_demotion_and_promotion_joins_raft_again() -> Result<()> {
    let mut cluster = Cluster::start(3, 0, Executor::Sim)?;
    // m3 is frozen through its demotion and the promotion that follows,
    // then restarts: its data dir says manager, the cluster's first word
    // says "worker wanted as a manager", and the cluster no longer has its
    // old raft self. It must leave raft and join again.
    cluster.agent("m3").pause();
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&["node", "demote", "m3"])?;
    assert_eq!(cluster.node_field("m3", "role")?, "worker");
    // A frozen node cannot take the role: the promotion is recorded and
    // said to wait for it.
    let out = m1.shoal_ok(&["node", "promote", "m3"])?;
    assert!(out.contains("once its agent is back"), "{out}");
    let m3 = cluster.agent_mut("m3");
    m3.kill9();
    m3.start()?;
    wait_until(Duration::from_secs(30), || {
        is_reachable_manager(&cluster, "m3")
    })?;
    let log = std::fs::read_to_string(cluster.root().join("m3/shoald.log"))?;
    assert!(log.contains("joining again"), "m3 did not rejoin raft");
    // A write through m3 goes through raft again.
    cluster
        .agent("m3")
        .shoal_ok(&["node", "update", "--label-add", "back=yes", "m3"])?;
    Ok(())
}

#[test]
fn a_manager_leaves_and_is_told_what_the_swarm_can_still_lose() -> Result<()> {
    let cluster = Cluster::start(3, 0, Executor::Sim)?;
    // Two of three keep a quorum: allowed without --force, with the cost.
    let out = cluster.agent("m3").shoal_ok(&["swarm", "leave"])?;
    assert!(out.contains("Node left the swarm."), "{out}");
    assert!(
        out.contains("2 managers left and cannot lose another"),
        "{out}"
    );
    let m1 = cluster.agent("m1");
    // Raft's membership changes first, the node object a moment later.
    wait_until(Duration::from_secs(10), || {
        Ok(m1.shoal_json(&["info"])?["managers"] == 2 && !is_raft_member(m1, "m3")?)
    })?;
    assert!(m1.accepts_write("after=leave", "m1")?);
    // As in Docker, the node stays listed, down, until 'node rm'.
    wait_until(Duration::from_secs(10), || {
        Ok(m1.node_field("m3", "status")? == "down")
    })?;
    Ok(())
}

#[test]
fn quorum_rules_are_enforced_and_a_survivor_can_force_a_new_cluster() -> Result<()> {
    let cluster = Cluster::start(1, 1, Executor::Sim)?;
    // The last manager cannot be demoted.
    let out = cluster.agent("m1").shoal(&["node", "demote", "m1"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("last manager"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(cluster);

    let mut cluster = Cluster::start(3, 0, Executor::Sim)?;
    cluster
        .agent("m1")
        .shoal_ok(&["node", "update", "--label-add", "keep=me", "m1"])?;
    // With one manager already gone, leaving would break quorum.
    cluster.agent_mut("m3").kill9();
    wait_until(Duration::from_secs(10), || {
        Ok(cluster
            .a_manager(&["m3"])
            .node_field("m3", "manager_status")?
            == "unreachable")
    })?;
    let out = cluster.agent("m2").shoal(&["swarm", "leave"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("quorum") && err.contains("--force"), "{err}");

    // Lose quorum: writes fail fast with the explanation, reads still answer.
    cluster.agent_mut("m2").kill9();
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let out = cluster
        .agent("m1")
        .shoal(&["node", "update", "--label-add", "x=y", "m1"])?;
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the cluster has no leader: 1 of 3 managers reachable"),
        "{err}"
    );
    assert!(err.contains("--force-new-cluster"), "{err}");
    let read = cluster.agent("m1").shoal(&["node", "ls"])?;
    assert!(read.status.success());
    assert!(
        String::from_utf8_lossy(&read.stderr).contains("stale"),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );

    // Force a new cluster on the survivor: writable again, data kept.
    let m1 = cluster.agent("m1");
    m1.shoal_ok(&[
        "swarm",
        "init",
        "--force-new-cluster",
        "--advertise-addr",
        &m1.addr,
    ])?;
    wait_until(Duration::from_secs(10), || {
        m1.accepts_write("after=recovery", "m1")
    })?;
    let node = m1.shoal_json(&["node", "inspect", "m1"])?;
    assert_eq!(node[0]["spec"]["labels"]["keep"], "me");
    assert_eq!(node[0]["spec"]["labels"]["after"], "recovery");
    Ok(())
}

#[test]
fn a_snapshot_larger_than_4_mib_reaches_a_late_manager() -> Result<()> {
    let mut cluster = Cluster::start(1, 0, Executor::Sim)?;
    // Services with large labels and no replicas: store content only.
    let big = "x".repeat(60_000);
    let label = format!("blob={big}");
    for i in 0..90 {
        cluster.agent("m1").shoal_ok(&[
            "service",
            "create",
            "-d",
            "-q",
            "--replicas",
            "0",
            "--name",
            &format!("filler{i}"),
            "--label",
            &label,
            "shoal-test/busybox:1",
        ])?;
    }
    let token = cluster
        .agent("m1")
        .shoal_ok(&["swarm", "join-token", "-q", "manager"])?;
    let addr = cluster.agent("m1").addr.clone();
    let late = cluster.add("m2")?;
    late.join_with(token.trim(), &addr)?;
    let late = cluster.agent("m2");
    wait_until(Duration::from_secs(30), || {
        let services = late.shoal_json(&["service", "ls"])?;
        Ok(services.as_array().map_or(0, Vec::len) == 90)
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_manager_certificates_of_this_cluster_reach_the_manager_api() -> Result<()> {
    let cluster = tokio::task::block_in_place(|| Cluster::start(1, 2, Executor::Sim))?;
    let manager = cluster.agent("m1");
    let list = shoal_proto::v1::ListNodesRequest::default();

    // A manager's own certificate is accepted.
    let mut as_manager = manager.control_as_node(&manager.addr).await?;
    assert!(as_manager.list_nodes(list.clone()).await.is_ok());

    // A worker certificate on a manager-only call is refused by role.
    let worker = cluster.agent("w1");
    let mut as_worker = worker.control_as_node(&manager.addr).await?;
    let refused = as_worker.list_nodes(list.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // A certificate from another cluster does not get through TLS.
    let other = tokio::task::block_in_place(|| Cluster::start(1, 0, Executor::Sim))?;
    let stranger = other.agent("m1").control_as_node(&manager.addr).await;
    let refused = match stranger {
        Err(e) => e.to_string(),
        Ok(mut client) => format!("{:?}", client.list_nodes(list.clone()).await.unwrap_err()),
    };
    assert!(!refused.is_empty());

    // A removed node's certificate is refused from then on.
    let removed = cluster.agent("w2");
    let mut before = removed.control_as_node(&manager.addr).await?;
    assert_eq!(
        before.list_nodes(list.clone()).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    tokio::task::block_in_place(|| manager.shoal_ok(&["node", "rm", "--force", "w2"]))?;
    let mut after = removed.control_as_node(&manager.addr).await?;
    let refused = after
        .info(shoal_proto::v1::InfoRequest {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ),
        "{refused:?}"
    );
    assert!(refused.message().contains("removed"), "{refused:?}");
    Ok(())
}

#[test]
fn a_manager_whose_disk_fills_stops_its_raft_says_why_and_recovers_after_a_restart() -> Result<()> {
    let mut cluster = Cluster::start(3, 0, Executor::Sim)?;
    let m3 = cluster.agent_mut("m3");
    m3.stop()?;
    let disk = SmallDisk::mount_over(&m3.data_dir, 32 * 1024 * 1024)?;
    m3.start()?;
    wait_until(Duration::from_secs(30), || {
        is_reachable_manager(&cluster, "m3")
    })?;

    // Writes go on through the leader; the first one m3 must append
    // fails its sync, and its raft stops for good.
    disk.fill()?;
    let m1 = cluster.agent("m1");
    let m3 = cluster.agent("m3");
    let mut label = 0;
    wait_until(Duration::from_secs(30), || {
        label += 1;
        m1.shoal_ok(&["node", "update", "--label-add", &format!("n={label}"), "m1"])?;
        let message = m3.shoal_json(&["info"])?["message"].to_string();
        Ok(message.contains("raft has stopped"))
    })?;
    let message = m3.shoal_json(&["info"])?["message"].to_string();
    assert!(
        message.contains("No space left on device") && message.contains("restart"),
        "{message}"
    );
    let refused = m3.shoal(&["node", "update", "--label-add", "via=m3", "m3"])?;
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(error.contains("raft has stopped"), "{error}");

    // The others count m3 out and carry on with two of three.
    wait_until(Duration::from_secs(30), || {
        Ok(cluster.node_field("m3", "manager_status")? == "unreachable")
    })?;
    assert_eq!(m1.shoal_json(&["info"])?["reachable_managers"], 2);
    m1.shoal_ok(&["node", "update", "--label-add", "while=full", "m1"])?;
    // m3 refuses raft calls instead of handing them to a stopped raft,
    // whose every refusal would be logged.
    let log = std::fs::read_to_string(&m3.log)?;
    assert!(
        !log.contains("failure sending RaftMsg"),
        "m3 kept calling its stopped raft"
    );

    // With room again, a restart brings m3 back, and it catches up.
    disk.make_room()?;
    let m3 = cluster.agent_mut("m3");
    m3.stop()?;
    m3.start()?;
    wait_until(Duration::from_secs(30), || {
        let m1_seen_from_m3 = cluster.agent("m3").shoal_json(&["node", "inspect", "m1"])?;
        Ok(is_reachable_manager(&cluster, "m3")?
            && m1_seen_from_m3[0]["spec"]["labels"]["while"] == "full")
    })?;
    Ok(())
}

#[test]
fn a_partitioned_leader_takes_no_writes_and_rejoins_the_majority_without_a_split_brain()
-> Result<()> {
    let cluster = Cluster::start_networked(3, 0, Executor::Sim)?;
    assert_eq!(cluster.leader()?, "m1");
    let (m1, m2) = (cluster.agent("m1"), cluster.agent("m2"));

    // m1 runs on, cut off from m2 and m3.
    cluster.cut_off("m1")?;
    let cut = Instant::now();
    // The majority elects a leader of its own and takes writes.
    wait_until(Duration::from_secs(10), || {
        m2.accepts_write("side=majority", "m2")
    })?;
    eprintln!("majority writable {:?} after the cut", cut.elapsed());
    // The old leader refuses writes instead of taking ones that could
    // never commit, and says why.
    let refused = wait_until(Duration::from_secs(10), || {
        let out = m1.shoal(&["node", "update", "--label-add", "side=minority", "m1"])?;
        Ok(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no leader"))
    });
    refused.context("the cut-off leader still takes writes")?;
    let stale = m1.shoal(&["node", "ls"])?;
    assert!(
        String::from_utf8_lossy(&stale.stderr).contains("may be stale"),
        "reads on the cut-off side are marked as possibly stale"
    );

    // Healed, m1 follows the new leader and has the majority's write; the
    // write it refused never happened anywhere.
    cluster.reconnect("m1")?;
    wait_until(Duration::from_secs(30), || {
        let m2_labels = m1.shoal_json(&["node", "inspect", "m2"])?[0]["spec"]["labels"].clone();
        Ok(
            m2_labels["side"] == "majority"
                && m1.node_field("m1", "manager_status")? == "reachable",
        )
    })?;
    for agent in ["m1", "m2", "m3"] {
        let m1_seen = cluster
            .agent(agent)
            .shoal_json(&["node", "inspect", "m1"])?;
        assert_eq!(
            m1_seen[0]["spec"]["labels"]["side"],
            serde_json::Value::Null,
            "on {agent}"
        );
    }
    Ok(())
}

#[test]
fn a_leader_whose_disk_fills_gives_way_to_the_others() -> Result<()> {
    let mut cluster = Cluster::start(3, 1, Executor::Sim)?;
    // Every manager's data on a small disk of its own, so that whichever
    // leads can be the one whose disk fills.
    let mut disks = Vec::new();
    for name in ["m1", "m2", "m3"] {
        let agent = cluster.agent_mut(name);
        agent.stop()?;
        disks.push((
            name,
            SmallDisk::mount_over(&agent.data_dir, 32 * 1024 * 1024)?,
        ));
        agent.start()?;
        wait_until(Duration::from_secs(30), || {
            is_raft_member(cluster.a_manager(&[]), name)
        })?;
    }
    let leader = cluster.leader()?;
    let survivor = cluster.a_manager(&[&leader]).name.clone();
    let (_, disk) = disks
        .iter()
        .find(|(name, _)| *name == leader)
        .expect("the leader is a manager");
    disk.fill()?;

    // Writes go on through a survivor; the first one the leader must
    // append stops its raft, and the others elect a leader of their own.
    let full = cluster.agent(&leader);
    let through = cluster.agent(&survivor);
    let mut label = 0;
    wait_until(Duration::from_secs(30), || {
        label += 1;
        through.accepts_write(&format!("n={label}"), "w1")?;
        let message = full.shoal_json(&["info"])?["message"].to_string();
        Ok(message.contains("raft has stopped"))
    })?;
    wait_until(Duration::from_secs(30), || {
        through.accepts_write("after=full", "w1")
    })?;
    wait_until(Duration::from_secs(30), || {
        Ok(through.node_field(&leader, "manager_status")? == "unreachable")
    })?;
    // The worker's session moved to the new leader: it is still ready.
    wait_until(Duration::from_secs(30), || {
        Ok(through.node_field("w1", "status")? == "ready")
    })?;
    Ok(())
}
