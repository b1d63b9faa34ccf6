//! `swarm init`, `swarm join` and `swarm leave` on this node.

use std::sync::Arc;
use std::time::Duration;

use shoal_proto::v1 as pb;
use shoal_proto::v1::ca_client::CaClient;

use super::state::{Keys, Membership};
use super::{Agent, Mode, NodeError};
use crate::manager::runtime::{ManagerRuntime, new_raft_id};
use crate::pki::ca::{self, CertificateAuthority};
use crate::pki::identity::{Identity, PeerRole};
use crate::pki::token::{JoinToken, UnlockKey};
use crate::raft::crypt::DataKey;
use crate::store::*;

/// How long `swarm init` and `join` wait for the node's session before
/// they answer anyway (the node then turns ready when it opens).
const SESSION_WAIT: Duration = Duration::from_secs(5);

pub struct InitRequest {
    pub advertise_addr: String,
    pub listen_addr: String,
    pub force_new_cluster: bool,
    pub autolock: bool,
    pub spec: Option<ClusterSpec>,
}

pub struct InitOutcome {
    pub node_id: String,
    pub cluster_id: String,
    pub tokens: JoinTokens,
    pub unlock_key: Option<UnlockKey>,
}

pub struct JoinRequest {
    pub token: String,
    pub remote_addr: String,
    pub advertise_addr: String,
    pub listen_addr: String,
}

/// Checks a `host:port` address, naming the flag it came from.
pub fn check_addr(flag: &str, addr: &str) -> Result<(), NodeError> {
    let valid = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if valid {
        Ok(())
    } else {
        Err(NodeError::Invalid(format!(
            "{flag} {addr:?} is not a valid address: use host:port, e.g. 192.168.1.10:4700"
        )))
    }
}

/// Resolves the advertise and listen addresses: either may default to the
/// other; an unspecified listen host cannot be advertised.
fn addresses(advertise: &str, listen: &str) -> Result<(String, String), NodeError> {
    let (advertise, listen) = match (advertise.is_empty(), listen.is_empty()) {
        (true, true) => {
            return Err(NodeError::Invalid(
                "--advertise-addr is required: the address other nodes reach this one at".into(),
            ));
        }
        (false, true) => (advertise.to_string(), advertise.to_string()),
        (true, false) => (listen.to_string(), listen.to_string()),
        (false, false) => (advertise.to_string(), listen.to_string()),
    };
    check_addr("--advertise-addr", &advertise)?;
    check_addr("--listen-addr", &listen)?;
    if advertise.starts_with("0.0.0.0:") || advertise.starts_with("[::]:") {
        return Err(NodeError::Invalid(format!(
            "cannot advertise {advertise}: give --advertise-addr an address other nodes can reach"
        )));
    }
    Ok((advertise, listen))
}

impl Agent {
    /// `swarm init`: a new cluster with this node as its only manager.
    pub async fn init(self: &Arc<Self>, request: InitRequest) -> Result<InitOutcome, NodeError> {
        let _guard = self.transition_lock().await;
        if request.force_new_cluster {
            return self.force_new_cluster().await;
        }
        match &*self.mode_read().await {
            Mode::Inactive => {}
            Mode::Locked(_) => return Err(NodeError::Locked),
            Mode::Active(_) => return Err(NodeError::AlreadyActive),
        }
        let (advertise, listen) = addresses(&request.advertise_addr, &request.listen_addr)?;
        // Fail before creating anything if the port is taken.
        super::server::check_bindable(&listen).await?;

        let cluster_id = crate::ids::new_id();
        let node_id = crate::ids::new_id();
        let raft_id = new_raft_id();
        let now = crate::ids::now_ms();
        let mut spec = request.spec.unwrap_or_default();
        spec.autolock = request.autolock;
        let spec = normalize_cluster_spec(spec);

        let root = CertificateAuthority::generate(&cluster_id).map_err(failed)?;
        let identity = Identity {
            node_id: node_id.clone(),
            role: PeerRole::Manager,
            cluster_id: cluster_id.clone(),
        };
        let (key_pem, csr) = ca::new_key_and_csr().map_err(failed)?;
        let cert = root
            .sign_csr(
                &csr,
                &identity,
                Duration::from_secs(spec.node_cert_expiry_s),
            )
            .map_err(failed)?;
        let digest = root.digest();
        let tokens = JoinTokens {
            worker: JoinToken::generate(&digest).expose(),
            manager: JoinToken::generate(&digest).expose(),
        };
        let unlock_key = request.autolock.then(UnlockKey::generate);
        let keys = Keys {
            tls_key_pem: key_pem,
            dek: Some(DataKey::generate()),
        };
        let membership = Membership {
            node_id: node_id.clone(),
            cluster_id: cluster_id.clone(),
            role: Role::Manager,
            raft_id: Some(raft_id),
            listen_addr: listen,
            advertise_addr: advertise.clone(),
            managers: vec![advertise.clone()],
        };
        self.data.create()?;
        self.data.save_certificates(&root.cert_pem, &cert)?;
        self.data.save_keys(&keys, unlock_key.as_ref())?;
        self.data.save_membership(&membership)?;

        let active = match self.activate(membership, keys, unlock_key.clone()).await {
            Ok(active) => active,
            Err(e) => {
                let _ = self.data.wipe_membership();
                return Err(e);
            }
        };
        self.set_mode(Mode::Active(active.clone())).await;
        let result = async {
            let manager = active.require_manager()?;
            manager.initialize().await.map_err(NodeError::Failed)?;
            manager
                .wait_for_leader(Duration::from_secs(10))
                .await
                .ok_or_else(|| NodeError::Failed("raft elected no leader".into()))?;
            let cluster = Cluster {
                meta: Meta::new(CLUSTER_OBJECT_ID.into(), now),
                spec,
                cluster_id: cluster_id.clone(),
                root_ca: RootCa {
                    cert_pem: root.cert_pem.clone(),
                    key_pem: root.key_pem.expose().to_string(),
                    digest,
                    next: None,
                },
                join_tokens: tokens.clone(),
                unlock_key: unlock_key.as_ref().map(|k| k.expose()),
                removed_nodes: Default::default(),
            };
            let node = Node {
                meta: Meta::new(node_id.clone(), now),
                spec: NodeSpec {
                    desired_role: Role::Manager,
                    ..Default::default()
                },
                description: self.local_description(""),
                status: NodeStatus {
                    state: NodeState::Unknown,
                    addr: advertise.clone(),
                    timestamp: now,
                    ..Default::default()
                },
                role: Role::Manager,
                manager_status: Some(ManagerStatus {
                    raft_id,
                    addr: advertise.clone(),
                    reachability: Reachability::Reachable,
                    locked: false,
                }),
            };
            manager
                .propose(Transaction::new(now).create(cluster).create(node))
                .await
                .map_err(|e| NodeError::Failed(e.to_string()))?;
            Ok::<_, NodeError>(())
        }
        .await;
        if let Err(e) = result {
            let _ = self.deactivate(&active).await;
            return Err(e);
        }
        active.worker.connect();
        active.worker.wait_connected(SESSION_WAIT).await;
        tracing::info!(node_id, cluster_id, "swarm initialized");
        Ok(InitOutcome {
            node_id,
            cluster_id,
            tokens,
            unlock_key,
        })
    }

    pub(crate) async fn mode_read(&self) -> tokio::sync::RwLockReadGuard<'_, Mode> {
        self.mode_lock().read().await
    }

    /// `swarm join`: pins the cluster's CA by the token digest, gets a
    /// certificate, and starts as a worker or a manager.
    pub async fn join(
        self: &Arc<Self>,
        request: JoinRequest,
    ) -> Result<(String, Role, String), NodeError> {
        let _guard = self.transition_lock().await;
        match &*self.mode_read().await {
            Mode::Inactive => {}
            Mode::Locked(_) => return Err(NodeError::Locked),
            Mode::Active(_) => return Err(NodeError::AlreadyActive),
        }
        let token =
            JoinToken::parse(&request.token).map_err(|e| NodeError::Invalid(e.to_string()))?;
        check_addr("the manager address", &request.remote_addr)?;
        let (advertise, listen) =
            if request.advertise_addr.is_empty() && request.listen_addr.is_empty() {
                (String::new(), String::new())
            } else {
                addresses(&request.advertise_addr, &request.listen_addr)?
            };
        if !listen.is_empty() {
            super::server::check_bindable(&listen).await?;
        }
        let remote = request.remote_addr.clone();

        // 1. Fetch the root CA without trusting anyone, then pin it.
        let root_pem = fetch_root_ca(&remote).await?;
        let digest = ca::ca_digest(&root_pem);
        if digest != token.ca_digest {
            return Err(NodeError::Invalid(format!(
                "the remote CA at {remote} does not match the token: check that the token \
                 belongs to this cluster and that {remote} is one of its managers"
            )));
        }

        // 2. Present the token's secret to get a certificate.
        let (key_pem, csr) = ca::new_key_and_csr().map_err(failed)?;
        let tls = crate::pki::tls::anonymous_client_config(Some(&root_pem)).map_err(failed)?;
        let channel =
            shoal_proto::transport::connect_tls(&remote, tls, shoal_proto::MANAGER_SERVER_NAME)
                .await
                .map_err(|e| NodeError::Failed(e.to_string()))?;
        let executor = self.executor_kind_hint();
        let issued = CaClient::new(channel)
            .issue_node_certificate(pb::IssueNodeCertificateRequest {
                token: token.expose(),
                csr_pem: csr,
                description: Some((&self.local_description(&executor)).into()),
                advertise_addr: advertise.clone(),
            })
            .await
            .map_err(|status| NodeError::Failed(status.message().to_string()))?
            .into_inner();
        let role = match pb::NodeRole::try_from(issued.role) {
            Ok(pb::NodeRole::Manager) => Role::Manager,
            _ => Role::Worker,
        };
        if role == Role::Manager && advertise.is_empty() {
            return Err(NodeError::Invalid(
                "joining as a manager needs --advertise-addr: other managers must reach this one"
                    .into(),
            ));
        }
        let keys = Keys {
            tls_key_pem: key_pem,
            dek: (role == Role::Manager).then(DataKey::generate),
        };
        let mut managers = issued.manager_addrs.clone();
        if !managers.contains(&remote) {
            managers.insert(0, remote.clone());
        }
        let membership = Membership {
            node_id: issued.node_id.clone(),
            cluster_id: issued.cluster_id.clone(),
            role,
            raft_id: (role == Role::Manager).then_some(issued.raft_id),
            listen_addr: listen,
            advertise_addr: advertise.clone(),
            managers: managers.clone(),
        };
        self.data.create()?;
        self.data
            .save_certificates(&issued.root_ca_pem, &issued.certificate_pem)?;
        self.data.save_keys(&keys, None)?;
        self.data.save_membership(&membership)?;

        let active = match self.activate(membership, keys, None).await {
            Ok(active) => active,
            Err(e) => {
                let _ = self.data.wipe_membership();
                return Err(e);
            }
        };
        self.become_active(&active).await;
        if role == Role::Manager {
            // 3. Ask the leader to make this manager a raft voter; it returns
            // once this node has caught up.
            let joined =
                ManagerRuntime::join_raft(&active.tls, &managers, issued.raft_id, &advertise).await;
            match joined {
                Ok(addrs) => {
                    let mut m = active.membership.lock();
                    for addr in addrs {
                        if !m.managers.contains(&addr) {
                            m.managers.push(addr);
                        }
                    }
                    let snapshot = m.clone();
                    drop(m);
                    self.data.save_membership(&snapshot)?;
                }
                Err(e) => {
                    let _ = self.deactivate(&active).await;
                    return Err(NodeError::Failed(format!(
                        "the cluster did not accept this node as a manager: {e}"
                    )));
                }
            }
        }
        active.worker.wait_connected(SESSION_WAIT).await;
        tracing::info!(node_id = %issued.node_id, role = role.name(), "joined the swarm");
        Ok((issued.node_id, role, issued.cluster_id))
    }

    fn executor_kind_hint(&self) -> String {
        match self.config.executor {
            super::ExecutorChoice::Docker => "docker",
            super::ExecutorChoice::Process => "process",
            super::ExecutorChoice::Sim => "sim",
            super::ExecutorChoice::Auto => "",
        }
        .to_string()
    }

    /// `swarm leave`: refuses to break quorum unless forced.
    pub async fn leave(self: &Arc<Self>, force: bool) -> Result<(), NodeError> {
        let _guard = self.transition_lock().await;
        let active = match &*self.mode_read().await {
            Mode::Active(active) => active.clone(),
            Mode::Locked(_) if force => {
                drop(_guard);
                self.data.wipe_membership()?;
                self.set_mode(Mode::Inactive).await;
                return Ok(());
            }
            Mode::Locked(_) => return Err(NodeError::Locked),
            Mode::Inactive => return Err(NodeError::Inactive),
        };
        if let Some(manager) = active.manager() {
            let (reachable, total) = manager.reachable_voters();
            if !force {
                if total <= 1 {
                    return Err(NodeError::Invalid(
                        "this node is the last manager of the swarm: leaving destroys the swarm \
                         and everything in it. Use --force to leave anyway"
                            .into(),
                    ));
                }
                let remaining = total - 1;
                let quorum = shoal_proto::quorum(remaining);
                if reachable.saturating_sub(1) < quorum {
                    return Err(NodeError::Invalid(format!(
                        "removing this manager leaves {} of {remaining} managers reachable, below \
                         the quorum of {quorum}: the swarm would become unusable until \
                         'shoal swarm init --force-new-cluster' is run on a survivor. Use --force \
                         to leave anyway",
                        reachable.saturating_sub(1)
                    )));
                }
            }
            if total > 1
                && let Err(e) = manager.leave_raft(manager.raft_id).await
            {
                if !force {
                    return Err(NodeError::Failed(format!(
                        "could not leave raft cleanly: {e}; use --force to leave anyway"
                    )));
                }
                tracing::warn!(error = %e, "leaving raft failed; leaving anyway (--force)");
            }
        }
        self.deactivate(&active).await?;
        tracing::info!("left the swarm");
        Ok(())
    }

    /// `swarm init --force-new-cluster` on a manager that lost quorum:
    /// keeps the store, becomes the only manager.
    async fn force_new_cluster(self: &Arc<Self>) -> Result<InitOutcome, NodeError> {
        let active = match &*self.mode_read().await {
            Mode::Active(active) => active.clone(),
            Mode::Locked(_) => return Err(NodeError::Locked),
            Mode::Inactive => {
                return Err(NodeError::Invalid(
                    "--force-new-cluster recovers a manager of an existing swarm, and this node \
                     is not part of one: run 'shoal swarm init' without it"
                        .into(),
                ));
            }
        };
        let Some(old) = active.manager() else {
            return Err(NodeError::Invalid(
                "--force-new-cluster must run on a manager: this node is a worker".into(),
            ));
        };
        let _role = active.role_lock.lock().await;
        // The store as this manager last applied it is what the new cluster
        // starts from.
        let snapshot = old.store.snapshot();
        active.manager.store(None);
        old.shutdown().await;
        self.data.wipe_raft()?;

        let raft_id = new_raft_id();
        let mut membership = active.membership.lock().clone();
        membership.raft_id = Some(raft_id);
        membership.managers = vec![membership.advertise_addr.clone()];
        self.data.save_membership(&membership)?;
        *active.membership.lock() = membership.clone();
        let manager = self.start_manager(&active).await?;
        manager.initialize().await.map_err(NodeError::Failed)?;
        manager
            .wait_for_leader(Duration::from_secs(10))
            .await
            .ok_or_else(|| NodeError::Failed("raft elected no leader".into()))?;

        let now = crate::ids::now_ms();
        let mut cluster = None;
        let mut batch = Transaction::new(now);
        for mut object in snapshot.objects {
            object.meta_mut().version = 0;
            match &mut object {
                Object::Cluster(c) => cluster = Some(c.clone()),
                Object::Node(node) if node.meta.id == membership.node_id => {
                    let node = Arc::make_mut(node);
                    node.manager_status = Some(ManagerStatus {
                        raft_id,
                        addr: membership.advertise_addr.clone(),
                        reachability: Reachability::Reachable,
                        locked: false,
                    });
                    node.role = Role::Manager;
                    node.spec.desired_role = Role::Manager;
                }
                // Other managers are no longer raft members: when they come
                // back, they see themselves demoted and rejoin as workers.
                Object::Node(node) if node.role == Role::Manager => {
                    let node = Arc::make_mut(node);
                    node.role = Role::Worker;
                    node.spec.desired_role = Role::Worker;
                    node.manager_status = None;
                }
                _ => {}
            }
            batch.push(Op::Create(object));
            if batch.len() >= 1_000 {
                let full = std::mem::replace(&mut batch, Transaction::new(now));
                manager
                    .propose(full)
                    .await
                    .map_err(|e| NodeError::Failed(e.to_string()))?;
            }
        }
        manager
            .propose(batch)
            .await
            .map_err(|e| NodeError::Failed(e.to_string()))?;
        let cluster = cluster.ok_or_else(|| {
            NodeError::Failed("the store held no cluster object to recover".into())
        })?;
        tracing::warn!("forced a new cluster from this manager's copy of the store");
        Ok(InitOutcome {
            node_id: membership.node_id,
            cluster_id: cluster.cluster_id.clone(),
            tokens: cluster.join_tokens.clone(),
            unlock_key: None,
        })
    }
}

fn failed(e: impl std::fmt::Display) -> NodeError {
    NodeError::Failed(e.to_string())
}

/// Cluster settings with zeros replaced by defaults.
pub fn normalize_cluster_spec(mut spec: ClusterSpec) -> ClusterSpec {
    let defaults = ClusterSpec::default();
    if spec.name.is_empty() {
        spec.name = defaults.name;
    }
    if spec.heartbeat_period_ms == 0 {
        spec.heartbeat_period_ms = defaults.heartbeat_period_ms;
    }
    if spec.heartbeat_tolerance == 0 {
        spec.heartbeat_tolerance = defaults.heartbeat_tolerance;
    }
    if spec.task_history_retention == 0 {
        spec.task_history_retention = defaults.task_history_retention;
    }
    if spec.node_cert_expiry_s == 0 {
        spec.node_cert_expiry_s = defaults.node_cert_expiry_s;
    }
    if spec.snapshot_interval == 0 {
        spec.snapshot_interval = defaults.snapshot_interval;
    }
    spec
}

/// Gets the root CA certificate from a manager without verifying it; the
/// caller checks it against the join token's digest.
async fn fetch_root_ca(remote: &str) -> Result<String, NodeError> {
    let tls = crate::pki::tls::anonymous_client_config(None).map_err(failed)?;
    let channel =
        shoal_proto::transport::connect_tls(remote, tls, shoal_proto::MANAGER_SERVER_NAME)
            .await
            .map_err(|e| NodeError::Failed(format!("{e}: check the manager address")))?;
    let response = CaClient::new(channel)
        .get_root_certificate(pb::GetRootCertificateRequest {})
        .await
        .map_err(|status| match status.code() {
            tonic::Code::FailedPrecondition => NodeError::Failed(format!(
                "{remote} is not a manager of a swarm: join through a manager's address \
                 ('shoal swarm join-token worker' on a manager prints one)"
            )),
            _ => NodeError::Failed(format!(
                "{remote} did not give its root CA: {}",
                status.message()
            )),
        })?;
    Ok(response.into_inner().certificate_pem)
}
