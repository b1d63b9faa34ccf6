//! Promotion and demotion as the node lives them.
//!
//! The cluster decides (an operator sets the desired role, the leader
//! changes raft membership and the node's role); the node follows what its
//! session with the leader reports:
//!
//! - desired manager while running as a worker: get a manager certificate,
//!   a data key and a raft id, start raft empty, ask the leader to add it.
//! - demoted (role worker while running raft): stop raft, wipe its data,
//!   get a worker certificate.

use std::sync::Arc;
use std::time::Duration;

use shoal_proto::v1 as pb;
use shoal_proto::v1::ca_client::CaClient;

use super::state::Membership;
use super::{ActiveNode, Agent, NodeError};
use crate::manager::runtime::ManagerRuntime;
use crate::pki::ca;
use crate::raft::crypt::DataKey;
use crate::store::Role;

/// Reacts to the node as the cluster sees it, for as long as the node is
/// active.
pub async fn follow_role_changes(agent: Arc<Agent>, active: Arc<ActiveNode>) {
    let mut updates = active.worker.node_updates();
    loop {
        let node = updates.borrow_and_update().clone();
        if let Some(node) = node
            && let Err(e) = reconcile_role(&agent, &active, &node).await
        {
            tracing::warn!(error = %e, "changing this node's role failed; will retry");
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(2)) => continue,
                () = active.shutdown.cancelled() => return,
            }
        }
        tokio::select! {
            changed = updates.changed() => if changed.is_err() { return },
            () = active.shutdown.cancelled() => return,
        }
    }
}

async fn reconcile_role(
    agent: &Arc<Agent>,
    active: &Arc<ActiveNode>,
    node: &pb::Node,
) -> Result<(), NodeError> {
    let desired = node
        .spec
        .as_ref()
        .and_then(|s| pb::NodeRole::try_from(s.desired_role).ok());
    let actual = pb::NodeRole::try_from(node.role).ok();
    let (running_as, running_raft_id) = {
        let membership = active.membership.lock();
        (membership.role, membership.raft_id)
    };
    let cluster_raft_id = node.manager_status.as_ref().map(|m| m.raft_id);
    tracing::debug!(?running_as, ?desired, ?actual, "following this node's role");
    match (running_as, desired, actual) {
        (Role::Worker, Some(pb::NodeRole::Manager), _) => promote(agent, active).await,
        (Role::Manager, Some(pb::NodeRole::Worker), Some(pb::NodeRole::Worker)) => {
            demote(agent, active).await
        }
        (Role::Manager, Some(pb::NodeRole::Manager), Some(pb::NodeRole::Worker))
            if cluster_raft_id != running_raft_id =>
        {
            rejoin_if_removed(agent, active).await
        }
        _ => Ok(()),
    }
}

/// A manager demoted and promoted again before it heard of the demotion
/// still runs raft as the member the cluster removed, and the cluster waits
/// for it to ask to join. The object alone cannot tell that apart from a
/// promotion under way (the raft id is recorded a moment later), so the CA
/// decides: it hands out the raft id the cluster has for this node, and a
/// different one means leave raft and join afresh under it.
async fn rejoin_if_removed(agent: &Arc<Agent>, active: &Arc<ActiveNode>) -> Result<(), NodeError> {
    let removed = {
        let _guard = active.role_lock.lock().await;
        let running = active.membership.lock().raft_id;
        let (issued, _) = renew_certificate(active).await?;
        pb::NodeRole::try_from(issued.role) == Ok(pb::NodeRole::Manager)
            && issued.raft_id != 0
            && Some(issued.raft_id) != running
    };
    if !removed {
        return Ok(());
    }
    tracing::info!("the cluster took this manager out of raft and wants it back: joining again");
    demote(agent, active).await?;
    promote(agent, active).await
}

/// Asks a manager to sign a new certificate for this node's current role
/// in the cluster's eyes, with a fresh key.
pub async fn renew_certificate(
    active: &ActiveNode,
) -> Result<(pb::IssueNodeCertificateResponse, crate::secret::Secret), NodeError> {
    let managers = active.membership.lock().managers.clone();
    let (key_pem, csr) = ca::new_key_and_csr().map_err(|e| NodeError::Failed(e.to_string()))?;
    let mut last_error = "no manager address known".to_string();
    for addr in managers {
        let channel = match shoal_proto::transport::connect_tls(
            &addr,
            active.tls.client_config(),
            shoal_proto::MANAGER_SERVER_NAME,
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        let advertise_addr = active.membership.lock().advertise_addr.clone();
        match CaClient::new(channel)
            .issue_node_certificate(pb::IssueNodeCertificateRequest {
                token: String::new(),
                csr_pem: csr.clone(),
                description: None,
                advertise_addr,
            })
            .await
        {
            Ok(response) => return Ok((response.into_inner(), key_pem)),
            Err(status) => last_error = format!("{addr}: {}", status.message()),
        }
    }
    Err(NodeError::Failed(format!(
        "renewing this node's certificate failed: {last_error}"
    )))
}

/// Renews this node's certificate at a random point between 50 % and 80 %
/// of its life (random so that a whole cluster does not renew at once),
/// with a fresh key; retries with backoff while no manager answers.
pub async fn renew_before_expiry(agent: Arc<Agent>, active: Arc<ActiveNode>) {
    let mut backoff = Duration::from_secs(5);
    loop {
        let current = active.tls.certificate();
        // Certificates start an hour early for clock skew; life counts
        // from issuance.
        let issued_at = current.not_before + crate::pki::ca::CLOCK_SKEW.as_millis() as i64;
        let life = (current.not_after - issued_at).max(0) as f64;
        let fraction = rand::Rng::gen_range(&mut rand::thread_rng(), 0.5..0.8);
        let renew_at = issued_at + (life * fraction) as i64;
        let wait = Duration::from_millis((renew_at - crate::ids::now_ms()).max(0) as u64);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = active.shutdown.cancelled() => return,
        }
        let guard = active.role_lock.lock().await;
        if active.tls.certificate().serial_hex != current.serial_hex {
            // A role change renewed it meanwhile.
            continue;
        }
        let renewed = match renew_certificate(&active).await {
            Ok((issued, key_pem)) => install_certificate(&agent, &active, &issued, key_pem),
            Err(e) => Err(e),
        };
        match renewed {
            Ok(()) => {
                backoff = Duration::from_secs(5);
                tracing::info!(
                    expires_at_ms = active.tls.certificate().not_after,
                    "renewed this node's certificate"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "certificate renewal failed");
                drop(guard);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = active.shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
        }
    }
}

/// Installs a newly issued certificate and key: in memory and on disk.
pub fn install_certificate(
    agent: &Agent,
    active: &ActiveNode,
    issued: &pb::IssueNodeCertificateResponse,
    key_pem: crate::secret::Secret,
) -> Result<(), NodeError> {
    agent
        .data
        .save_certificates(&issued.root_ca_pem, &issued.certificate_pem)?;
    let keys = {
        let mut keys = active.keys.lock();
        keys.tls_key_pem = key_pem;
        keys.clone()
    };
    let unlock = active.unlock_key.lock().clone();
    agent.data.save_keys(&keys, unlock.as_ref())?;
    active
        .tls
        .set_certificate(&issued.certificate_pem, &keys.tls_key_pem)
        .map_err(|e| NodeError::Failed(e.to_string()))?;
    Ok(())
}

async fn promote(agent: &Arc<Agent>, active: &Arc<ActiveNode>) -> Result<(), NodeError> {
    let _guard = active.role_lock.lock().await;
    if active.membership.lock().role == Role::Manager {
        return Ok(());
    }
    let advertise = active.membership.lock().advertise_addr.clone();
    if advertise.is_empty() {
        return Err(NodeError::Invalid(
            "this node cannot become a manager: it joined without --advertise-addr".into(),
        ));
    }
    let (issued, key_pem) = renew_certificate(active).await?;
    if pb::NodeRole::try_from(issued.role) != Ok(pb::NodeRole::Manager) || issued.raft_id == 0 {
        // The cluster has not decided yet; the next update retries.
        return Ok(());
    }
    install_certificate(agent, active, &issued, key_pem)?;
    {
        let mut keys = active.keys.lock();
        if keys.dek.is_none() {
            keys.dek = Some(DataKey::generate());
        }
        let keys = keys.clone();
        let unlock = active.unlock_key.lock().clone();
        agent.data.save_keys(&keys, unlock.as_ref())?;
    }
    agent.data.wipe_raft()?;
    let membership = {
        let mut m = active.membership.lock();
        m.role = Role::Manager;
        m.raft_id = Some(issued.raft_id);
        for addr in &issued.manager_addrs {
            if !m.managers.contains(addr) {
                m.managers.push(addr.clone());
            }
        }
        m.clone()
    };
    agent.data.save_membership(&membership)?;
    let manager = agent.start_manager(active).await?;
    if let Err(e) = ManagerRuntime::join_raft(
        &active.tls,
        &membership.managers,
        issued.raft_id,
        &advertise,
    )
    .await
    {
        // Undo, so the next update tries again from a clean state.
        active.manager.store(None);
        manager.shutdown().await;
        let mut m = active.membership.lock();
        m.role = Role::Worker;
        m.raft_id = None;
        let snapshot: Membership = m.clone();
        drop(m);
        agent.data.save_membership(&snapshot)?;
        return Err(NodeError::Failed(format!("joining raft: {e}")));
    }
    tracing::info!("promoted: this node is now a manager");
    Ok(())
}

async fn demote(agent: &Arc<Agent>, active: &Arc<ActiveNode>) -> Result<(), NodeError> {
    let _guard = active.role_lock.lock().await;
    if active.membership.lock().role == Role::Worker {
        return Ok(());
    }
    if let Some(manager) = active.manager.swap(None) {
        manager.shutdown().await;
    }
    agent.data.wipe_raft()?;
    {
        let mut keys = active.keys.lock();
        keys.dek = None;
    }
    let membership = {
        let mut m = active.membership.lock();
        m.role = Role::Worker;
        m.raft_id = None;
        m.clone()
    };
    agent.data.save_membership(&membership)?;
    match renew_certificate(active).await {
        Ok((issued, key_pem)) => install_certificate(agent, active, &issued, key_pem)?,
        Err(e) => tracing::warn!(error = %e, "could not get a worker certificate yet"),
    }
    tracing::info!("demoted: this node is now a worker");
    Ok(())
}
