//! The node agent's lifecycle.
//!
//! ```text
//!              swarm init / join                  restart with autolock
//!   Inactive ─────────────────────► Active ◄───────────────────────── Locked
//!      ▲                              │            swarm unlock ──────►
//!      └──────── swarm leave ─────────┘
//! ```
//!
//! An active node always runs a worker (a session with the leader and the
//! tasks it assigns) and a TLS listener; a manager also runs raft and the
//! manager services. Role changes (promote/demote) start or stop the manager
//! part without restarting the node.
//!
//! - [`state`]: what is kept in the data directory.
//! - [`join`]: `swarm init` and `swarm join`.
//! - [`server`]: the unix socket and TLS listeners.

pub mod join;
pub mod roles;
pub mod server;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::manager::runtime::{ManagerRuntime, RaftTiming};
use crate::pki::tls::NodeTls;
use crate::pki::token::UnlockKey;
use crate::raft::log_store::RaftDb;
use crate::store::{Kind, NodeDescription, Role, next_touching};
use crate::worker::executor::Executor;
use crate::worker::{Worker, WorkerConfig};
use state::{DataDir, Keys, Membership, StateError};

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Which runtime runs this node's tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorChoice {
    /// Docker when an engine answers, else processes.
    Auto,
    Docker,
    Process,
    Sim,
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub hostname: String,
    pub executor: ExecutorChoice,
    /// Time each state change takes under the sim executor.
    pub sim_delay: Duration,
    pub raft_timing: RaftTiming,
}

/// Why an operation on this node failed, in words for the operator.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("this node is not part of a swarm: run 'shoal swarm init' or 'shoal swarm join'")]
    Inactive,
    #[error("this node is already part of a swarm: run 'shoal swarm leave' first")]
    AlreadyActive,
    #[error("this node is locked: run 'shoal swarm unlock' with the cluster's unlock key")]
    Locked,
    #[error("this node is not locked")]
    NotLocked,
    #[error("this node is not a manager: run the command on a manager, or point --host at one")]
    NotManager,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    State(#[from] StateError),
}

pub enum Mode {
    Inactive,
    /// Membership is known but the keys are sealed: nothing is served
    /// until the unlock key is given.
    Locked(Membership),
    Active(Arc<ActiveNode>),
}

/// A node that is part of a cluster.
pub struct ActiveNode {
    pub membership: Mutex<Membership>,
    pub tls: Arc<NodeTls>,
    /// Present while this node is a manager.
    pub manager: ArcSwapOption<ManagerRuntime>,
    pub worker: Arc<Worker>,
    /// The unlock key this node's keys are sealed with, if autolock is on.
    pub unlock_key: Mutex<Option<UnlockKey>>,
    pub keys: Mutex<Keys>,
    pub shutdown: CancellationToken,
    /// Serializes role changes.
    pub role_lock: tokio::sync::Mutex<()>,
}

impl ActiveNode {
    pub fn node_id(&self) -> String {
        self.membership.lock().node_id.clone()
    }

    pub fn cluster_id(&self) -> String {
        self.membership.lock().cluster_id.clone()
    }

    pub fn manager(&self) -> Option<Arc<ManagerRuntime>> {
        self.manager.load_full()
    }

    pub fn require_manager(&self) -> Result<Arc<ManagerRuntime>, NodeError> {
        self.manager().ok_or(NodeError::NotManager)
    }
}

pub struct Agent {
    pub config: AgentConfig,
    pub data: DataDir,
    mode: tokio::sync::RwLock<Mode>,
    /// Serializes init, join, leave and unlock.
    transition: tokio::sync::Mutex<()>,
    pub shutdown: CancellationToken,
    executor: Mutex<Option<Arc<dyn Executor>>>,
}

impl Agent {
    pub fn new(config: AgentConfig, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Agent {
            data: DataDir::new(config.data_dir.clone()),
            config,
            mode: tokio::sync::RwLock::new(Mode::Inactive),
            transition: tokio::sync::Mutex::new(()),
            shutdown,
            executor: Mutex::new(None),
        })
    }

    /// Resumes the membership kept in the data directory, if any.
    pub async fn resume(self: &Arc<Self>) -> Result<(), NodeError> {
        self.data.create()?;
        let Some(membership) = self.data.load_membership()? else {
            tracing::info!("no cluster membership: waiting for 'shoal swarm init' or 'join'");
            return Ok(());
        };
        match self.data.load_keys(None) {
            Ok(keys) => {
                let active = self.activate(membership, keys, None).await?;
                self.become_active(&active).await;
                Ok(())
            }
            Err(StateError::Locked) => {
                tracing::warn!(
                    "this node's keys are sealed (autolock): run 'shoal swarm unlock' to start it"
                );
                *self.mode.write().await = Mode::Locked(membership);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn with_mode<R>(&self, f: impl FnOnce(&Mode) -> R) -> R {
        f(&*self.mode.read().await)
    }

    pub async fn active(&self) -> Result<Arc<ActiveNode>, NodeError> {
        match &*self.mode.read().await {
            Mode::Active(active) => Ok(active.clone()),
            Mode::Locked(_) => Err(NodeError::Locked),
            Mode::Inactive => Err(NodeError::Inactive),
        }
    }

    pub async fn manager(&self) -> Result<Arc<ManagerRuntime>, NodeError> {
        self.active().await?.require_manager()
    }

    pub fn local_description(&self, executor: &str) -> NodeDescription {
        NodeDescription {
            hostname: self.config.hostname.clone(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            agent_version: AGENT_VERSION.into(),
            executor: executor.into(),
            ..Default::default()
        }
    }

    async fn executor(&self, node_id: &str) -> Result<Arc<dyn Executor>, NodeError> {
        if let Some(executor) = self.executor.lock().clone() {
            return Ok(executor);
        }
        let executor = crate::worker::executor::choose(
            self.config.executor,
            node_id,
            &self.data.root,
            self.config.sim_delay,
        )
        .await
        .map_err(|e| NodeError::Failed(e.to_string()))?;
        *self.executor.lock() = Some(executor.clone());
        Ok(executor)
    }

    /// Starts everything an active node runs, from its saved membership,
    /// but the worker's session: the caller opens it once the node is
    /// active ([`Worker::connect`]), since until then its own manager
    /// services refuse it.
    async fn activate(
        self: &Arc<Self>,
        membership: Membership,
        keys: Keys,
        unlock_key: Option<UnlockKey>,
    ) -> Result<Arc<ActiveNode>, NodeError> {
        let (root_pem, cert_pem) = self.data.load_certificates()?;
        let tls = NodeTls::new(&root_pem, &cert_pem, &keys.tls_key_pem)
            .map_err(|e| NodeError::Failed(format!("loading this node's certificate: {e}")))?;
        let executor = self.executor(&membership.node_id).await?;
        let shutdown = self.shutdown.child_token();
        let description = {
            let mut d = self.local_description(executor.kind());
            let info = executor.describe().await;
            d.resources = info.resources;
            d.engine_labels = info.engine_labels;
            if !info.os.is_empty() {
                d.os = info.os;
            }
            if !info.arch.is_empty() {
                d.arch = info.arch;
            }
            d
        };
        let worker = Worker::new(WorkerConfig {
            node_id: membership.node_id.clone(),
            tls: tls.clone(),
            managers: membership.managers.clone(),
            advertise_addr: membership.advertise_addr.clone(),
            description,
            executor,
            shutdown: shutdown.child_token(),
        });
        let active = Arc::new(ActiveNode {
            membership: Mutex::new(membership.clone()),
            tls: tls.clone(),
            manager: ArcSwapOption::empty(),
            worker,
            unlock_key: Mutex::new(unlock_key),
            keys: Mutex::new(keys.clone()),
            shutdown: shutdown.clone(),
            role_lock: tokio::sync::Mutex::new(()),
        });
        if membership.role == Role::Manager {
            self.start_manager(&active).await?;
        }
        if !membership.listen_addr.is_empty() {
            server::spawn_tcp(self.clone(), &membership.listen_addr, tls, shutdown.clone())
                .await
                .map_err(NodeError::Failed)?;
        }
        tokio::spawn(roles::follow_role_changes(self.clone(), active.clone()));
        tokio::spawn(roles::renew_before_expiry(self.clone(), active.clone()));
        Ok(active)
    }

    /// Starts raft and the manager services on an active node.
    pub(crate) async fn start_manager(
        self: &Arc<Self>,
        active: &Arc<ActiveNode>,
    ) -> Result<Arc<ManagerRuntime>, NodeError> {
        let membership = active.membership.lock().clone();
        let raft_id = membership
            .raft_id
            .ok_or_else(|| NodeError::Failed("this manager has no raft id".into()))?;
        let dek = active
            .keys
            .lock()
            .dek
            .clone()
            .ok_or_else(|| NodeError::Failed("this manager has no data key".into()))?;
        let db = RaftDb::open(&self.data.raft_dir(), dek)
            .map_err(|e| NodeError::Failed(e.to_string()))?;
        let runtime = ManagerRuntime::start(
            membership.node_id.clone(),
            raft_id,
            membership.advertise_addr.clone(),
            db,
            active.tls.clone(),
            self.config.raft_timing.clone(),
            crate::store::ClusterSpec::default().snapshot_interval,
            crate::manager::leader_loops(),
        )
        .await
        .map_err(|e| NodeError::Failed(e.to_string()))?;
        active.manager.store(Some(runtime.clone()));
        tokio::spawn(follow_unlock_key(
            self.clone(),
            active.clone(),
            runtime.clone(),
        ));
        Ok(runtime)
    }

    /// Stops and forgets everything: back to inactive.
    pub(crate) async fn deactivate(&self, active: &Arc<ActiveNode>) -> Result<(), NodeError> {
        if let Some(manager) = active.manager.swap(None) {
            manager.shutdown().await;
        }
        active.worker.shutdown().await;
        active.shutdown.cancel();
        // Give listeners a moment to release their sockets.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.data.wipe_membership()?;
        *self.mode.write().await = Mode::Inactive;
        Ok(())
    }

    pub(crate) fn mode_lock(&self) -> &tokio::sync::RwLock<Mode> {
        &self.mode
    }

    pub async fn set_mode(&self, mode: Mode) {
        *self.mode.write().await = mode;
    }

    /// Makes `active` this node's mode, then opens its worker's session,
    /// which this node's own manager services refuse until it is active.
    /// (`swarm init` opens the session later, once raft has a leader.)
    async fn become_active(&self, active: &Arc<ActiveNode>) {
        self.set_mode(Mode::Active(active.clone())).await;
        active.worker.connect();
    }

    pub async fn transition_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.transition.lock().await
    }

    /// Unlocks a locked node with the cluster's unlock key.
    pub async fn unlock(self: &Arc<Self>, key: &UnlockKey) -> Result<(), NodeError> {
        let _guard = self.transition.lock().await;
        let membership = match &*self.mode.read().await {
            Mode::Locked(membership) => membership.clone(),
            Mode::Active(_) => return Err(NodeError::NotLocked),
            Mode::Inactive => return Err(NodeError::Inactive),
        };
        let keys = self.data.load_keys(Some(key))?;
        let active = self.activate(membership, keys, Some(key.clone())).await?;
        self.become_active(&active).await;
        tracing::info!("node unlocked");
        Ok(())
    }

    /// Stops the node's services without forgetting anything: task
    /// workloads keep running and are adopted on the next start.
    pub async fn stop(&self) {
        let mode = std::mem::replace(&mut *self.mode.write().await, Mode::Inactive);
        if let Mode::Active(active) = mode {
            if let Some(manager) = active.manager.swap(None) {
                manager.shutdown().await;
            }
            active.worker.shutdown().await;
            active.shutdown.cancel();
        }
    }
}

/// The machine's hostname, for nodes started without `--hostname`.
pub fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Keeps this manager's keys sealed with the cluster's current unlock key:
/// autolock turned on or off, or the key rotated, re-seals them. A manager
/// that was down during a rotation unlocks with the old key and re-seals
/// with the new one here once it has caught up.
async fn follow_unlock_key(
    agent: Arc<Agent>,
    active: Arc<ActiveNode>,
    manager: Arc<ManagerRuntime>,
) {
    let mut changes = manager.store.subscribe();
    loop {
        let still_this_manager = active
            .manager()
            .is_some_and(|current| Arc::ptr_eq(&current, &manager));
        if !still_this_manager || active.shutdown.is_cancelled() {
            return;
        }
        let wanted = {
            let tables = manager.store.read();
            tables.cluster().map(|cluster| {
                cluster
                    .unlock_key
                    .as_ref()
                    .and_then(|key| UnlockKey::parse(key.expose()).ok())
            })
        };
        // Before the cluster object has reached this manager there is
        // nothing to follow yet.
        if let Some(wanted) = wanted {
            let current = active.unlock_key.lock().clone();
            if wanted != current {
                let keys = active.keys.lock().clone();
                match agent.data.save_keys(&keys, wanted.as_ref()) {
                    Ok(()) => {
                        tracing::info!(
                            autolock = wanted.is_some(),
                            "re-sealed this manager's keys"
                        );
                        *active.unlock_key.lock() = wanted;
                    }
                    Err(e) => tracing::warn!(error = %e, "re-sealing this manager's keys failed"),
                }
            }
        }
        tokio::select! {
            // The key lives in the cluster object: a change to it is a
            // reason to look again, other writes are not.
            open = next_touching(&mut changes, Kind::Cluster) => if !open {
                return;
            },
            () = active.shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
