//! A running manager: its raft node, its copy of the store, and — while it
//! leads — the control loops.
//!
//! Writes go through [`ManagerRuntime::propose`]: on the leader straight
//! into raft, on a follower forwarded to the leader over the `Raft` service.
//! Reads come from the local store. Without a leader every write fails at
//! once with how many managers are reachable, rather than hanging.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use shoal_proto::v1::raft_client::RaftClient;
use shoal_proto::v1::{JoinRaftRequest, LeaveRaftRequest};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::batcher::{Outcome, ProposalBatcher};
use super::forward::Forwarder;
use super::{LeaderContext, ProposeError, Proposer};
use crate::pki::tls::NodeTls;
use crate::raft::log_store::RaftDb;
use crate::raft::network::{self, Network, PeerContacts};
use crate::raft::pipeline::Backlog;
use crate::raft::state_machine::StateMachine;
use crate::raft::types::{Raft, RaftId, RaftMember, RaftMetrics};
use crate::store::{Reachability, Store, Tables, Transaction};

/// Raft timing. Heartbeats every 50 ms. openraft starts an election after
/// the leader lease (the maximum timeout) plus this node's random timeout
/// (250–500 ms) of silence, so a dead leader is noticed after 0.75–1 s,
/// while a busy machine has ten missed heartbeats of slack before a
/// needless election.
#[derive(Clone, Debug)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 50,
            election_min_ms: 250,
            election_max_ms: 500,
        }
    }
}

/// Raft entries kept after a snapshot (swarmkit keeps 500 as well).
pub const LOG_ENTRIES_FOR_SLOW_FOLLOWERS: u64 = 500;

/// How long a write may wait for commit before the caller is told.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Raft happenings that are not store changes, for `Watch` and events.
#[derive(Clone, Debug)]
pub enum ClusterEvent {
    LeaderChanged {
        old: Option<String>,
        new: Option<String>,
        time: i64,
    },
}

/// Starts the leader's control loops when this manager becomes leader;
/// the returned handles are aborted when leadership ends.
pub type LeaderLoops = Arc<dyn Fn(LeaderContext) -> Vec<tokio::task::JoinHandle<()>> + Send + Sync>;

pub struct ManagerRuntime {
    pub node_id: String,
    pub raft_id: RaftId,
    pub addr: String,
    pub raft: Raft,
    /// The way into `raft` for writes: batches them into entries.
    proposals: ProposalBatcher,
    pub store: Arc<Store>,
    pub contacts: Arc<PeerContacts>,
    pub timing: RaftTiming,
    tls: Arc<NodeTls>,
    /// Batchers forwarding writes to the leader, by its address.
    forwarders: Mutex<HashMap<String, ProposalBatcher>>,
    events: broadcast::Sender<ClusterEvent>,
    /// Present while this manager leads.
    dispatcher: arc_swap::ArcSwapOption<super::dispatcher::Dispatcher>,
    shutdown: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] crate::raft::log_store::RaftDbError),
    #[error("raft: {0}")]
    Raft(String),
}

impl ManagerRuntime {
    /// Opens the raft storage under `db` and starts raft. A new manager's
    /// raft is empty until the cluster is initialized or it is added as a
    /// member.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        node_id: String,
        raft_id: RaftId,
        addr: String,
        db: RaftDb,
        tls: Arc<NodeTls>,
        timing: RaftTiming,
        snapshot_interval: u64,
        leader_loops: LeaderLoops,
    ) -> Result<Arc<Self>, StartError> {
        let store = Arc::new(Store::new());
        let state_machine = StateMachine::open(db.clone(), store.clone())?;
        let log_store = db.log_store();
        let contacts = Arc::new(PeerContacts::default());
        let backlog = Backlog::default();
        let network = Network::new(tls.clone(), contacts.clone(), db.clone(), backlog.clone());
        let config = openraft::Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: timing.heartbeat_ms,
            election_timeout_min: timing.election_min_ms,
            election_timeout_max: timing.election_max_ms,
            install_snapshot_timeout: 5_000,
            // Snapshots are triggered by `snapshot_when_due`, following the
            // cluster's setting, which can change at runtime.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            // Small chunks: a big snapshot goes over in many messages, none
            // near gRPC's limits (moby/swarmkit#2374 broke on one message).
            snapshot_max_chunk_size: 1024 * 1024,
            // Entries kept after a snapshot so that a slightly slow follower
            // catches up from the log rather than a whole snapshot.
            max_in_snapshot_log_to_keep: LOG_ENTRIES_FOR_SLOW_FOLLOWERS,
            max_payload_entries: 256,
            replication_lag_threshold: 5_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        // Raft's tasks run on the agent's one runtime, beside sessions and
        // the control API. A runtime of its own (two more threads) once kept
        // raft's appends from queueing behind session work, until appends
        // were made to outlive openraft's deadline (`raft::network`); since
        // then it only cost thread hand-offs on every write: sharing made
        // 64 clients' small writes 7% faster (8,700-9,100 against
        // 7,900-8,400 writes/s, alternated runs), and swarm2k converged as
        // fast (5.6-6.3 s) with no leader change.
        let raft = Raft::new(raft_id, Arc::new(config), network, log_store, state_machine)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let (events, _) = broadcast::channel(256);
        let runtime = Arc::new(ManagerRuntime {
            node_id,
            raft_id,
            addr,
            proposals: ProposalBatcher::for_raft(raft.clone(), backlog),
            raft,
            store,
            contacts,
            timing,
            tls,
            forwarders: Mutex::new(HashMap::new()),
            events,
            dispatcher: arc_swap::ArcSwapOption::empty(),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(watch_leadership(runtime.clone(), leader_loops));
        tokio::spawn(snapshot_when_due(runtime.clone(), snapshot_interval));
        Ok(runtime)
    }

    /// Makes this manager the first and only member of a new cluster.
    pub async fn initialize(&self) -> Result<(), String> {
        let mut members = BTreeMap::new();
        members.insert(
            self.raft_id,
            RaftMember {
                addr: self.addr.clone(),
                node_id: self.node_id.clone(),
            },
        );
        self.raft
            .initialize(members)
            .await
            .map_err(|e| e.to_string())
    }

    /// Waits until some manager leads; None once `timeout` passes or raft
    /// stops.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<RaftId> {
        tokio::time::timeout(timeout, self.leader_where(|_| true))
            .await
            .ok()
            .flatten()
    }

    /// Waits until raft names a leader that `wanted` accepts (not while
    /// there is none): that leader, or None if raft stopped first.
    async fn leader_where(&self, wanted: impl Fn(RaftId) -> bool) -> Option<RaftId> {
        // Raft's server metrics change only with the vote, role, leader or
        // membership; its full metrics change with every append and apply,
        // and every forwarded write in flight waits here.
        let mut metrics = self.raft.server_metrics();
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            if let Some(leader) = leader.filter(|l| wanted(*l)) {
                return Some(leader);
            }
            if metrics.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Waits (briefly) until the local store has applied `version`.
    async fn wait_applied(&self, version: u64) {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, self.store.wait_for(version)).await;
    }

    /// Waits (at most a few election timeouts) until raft names a leader
    /// other than `failed`.
    async fn wait_for_leader_other_than(&self, failed: RaftId) {
        let limit = Duration::from_millis(self.timing.election_max_ms * 3);
        let _ = tokio::time::timeout(limit, self.leader_moves_from(failed)).await;
    }

    /// Waits until raft names a leader other than `leader` (not while there
    /// is none: an election may re-elect it): true then, false if raft
    /// stopped first.
    async fn leader_moves_from(&self, leader: RaftId) -> bool {
        self.leader_where(|l| l != leader).await.is_some()
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// The leader raft names now, without copying the rest of its metrics.
    pub fn current_leader(&self) -> Option<RaftId> {
        self.raft.server_metrics().borrow().current_leader
    }

    /// The dispatcher, while this manager leads.
    pub fn dispatcher(&self) -> Option<Arc<super::dispatcher::Dispatcher>> {
        self.dispatcher.load_full().filter(|d| !d.is_stopped())
    }

    pub fn subscribe_events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }

    pub fn is_leader(&self) -> bool {
        self.current_leader() == Some(self.raft_id)
    }

    /// The TLS client config this manager uses towards its peers.
    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.client_config()
    }

    /// The leader's raft id and member record, as this manager knows it.
    pub fn leader(&self) -> Option<(RaftId, RaftMember)> {
        let metrics = self.raft.server_metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let member = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .clone();
        Some((leader, member))
    }

    /// All members (voters and learners) of the current membership.
    pub fn members(&self) -> Vec<(RaftId, RaftMember, bool)> {
        let metrics = self.raft.server_metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<RaftId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, member)| (*id, member.clone(), voters.contains(id)))
            .collect()
    }

    /// Voting managers reachable now, this one included, and how many
    /// voters there are.
    pub fn reachable_voters(&self) -> (usize, usize) {
        self.reachable_voters_in(&self.store.read())
    }

    /// [`Self::reachable_voters`] for a caller already holding `tables`.
    ///
    /// A leader hears from every voter it replicates to. A follower hears
    /// only from the leader, so while it does, the other followers'
    /// reachability is the leader's, as recorded on their nodes; without a
    /// leader it can only count whom it heard from itself.
    pub fn reachable_voters_in(&self, tables: &Tables) -> (usize, usize) {
        let window = Duration::from_millis(self.quorum_silence_limit_ms());
        let members = self.members();
        let voters: Vec<_> = members.iter().filter(|(_, _, voter)| *voter).collect();
        let leader_heard = self.leader().is_some_and(|(leader, member)| {
            leader != self.raft_id && self.contacts.recently(&member.node_id, window)
        });
        let recorded_reachable = |node_id: &str| {
            tables
                .nodes
                .get(node_id)
                .and_then(|node| node.manager_status.as_ref())
                .is_some_and(|status| status.reachability == Reachability::Reachable)
        };
        let reachable = voters
            .iter()
            .filter(|(id, member, _)| {
                *id == self.raft_id
                    || self.contacts.recently(&member.node_id, window)
                    || (leader_heard && recorded_reachable(&member.node_id))
            })
            .count();
        (reachable, voters.len())
    }

    /// Whether the leader (this node) has lost touch with a quorum: it has
    /// not heard from a majority for several election timeouts.
    fn leader_lost_quorum(&self, metrics: &RaftMetrics) -> bool {
        let limit = self.quorum_silence_limit_ms();
        metrics
            .millis_since_quorum_ack
            .is_some_and(|since| since > limit)
    }

    /// How long a peer may be silent before it counts as unreachable: a
    /// leader that heard from no quorum for longer than a follower waits
    /// before starting an election has been replaced or cut off.
    fn quorum_silence_limit_ms(&self) -> u64 {
        self.timing.election_max_ms + self.timing.heartbeat_ms
    }

    /// Why this manager's raft has stopped, if it failed. raft stops for
    /// good when a write to its log or state machine fails (a full disk, a
    /// failing one); until the agent restarts, this manager takes no part
    /// in raft and says so instead of answering as if it did. A raft shut
    /// down on purpose (the agent stopping, the node leaving) is not a
    /// failure.
    pub fn raft_stopped(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let running = metrics.borrow();
        raft_failure(&running.running_state)
    }

    /// Whether writes can commit as far as this manager knows: its raft
    /// runs, there is a leader, and if it is this manager, it still hears
    /// from a quorum.
    pub fn has_working_leader(&self) -> bool {
        if self.raft_stopped().is_some() {
            return false;
        }
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        match metrics.current_leader {
            None => false,
            Some(leader) if leader == self.raft_id => !self.leader_lost_quorum(&metrics),
            Some(_) => true,
        }
    }

    fn no_leader(&self) -> ProposeError {
        let (reachable, total) = self.reachable_voters();
        ProposeError::NoLeader { reachable, total }
    }

    /// Commits `tx`, forwarding it to the leader when this manager is not.
    pub async fn propose(&self, tx: Transaction) -> Result<u64, ProposeError> {
        if tx.is_empty() {
            return Ok(0);
        }
        if let Some(cause) = self.raft_stopped() {
            return Err(ProposeError::RaftStopped(cause));
        }
        // Built only when needed: counting reachable voters reads the
        // store and the membership, too much to do on every write.
        let mut last_error = None;
        let mut tried_leader: Option<RaftId> = None;
        for _attempt in 0..4u32 {
            if let Some(failed) = tried_leader {
                // Leadership is moving: retry as soon as raft names
                // another leader, rather than after a fixed pause.
                self.wait_for_leader_other_than(failed).await;
            }
            if self.shutdown.is_cancelled() {
                return Err(ProposeError::Shutdown);
            }
            // The leader as the server metrics name it, which is what
            // `wait_for_leader` and the leadership watch follow: raft sends
            // its full metrics after them, and a write made the moment a
            // leader is named could otherwise read the full metrics from
            // before (no leader, no members) and fail.
            let (leader, leader_addr) = {
                let metrics = self.raft.server_metrics();
                let metrics = metrics.borrow();
                let leader = metrics.current_leader;
                let addr = leader.filter(|l| *l != self.raft_id).and_then(|l| {
                    let member = metrics.membership_config.membership().get_node(&l)?;
                    Some(member.addr.clone())
                });
                (leader, addr)
            };
            tried_leader = leader;
            let result = match leader {
                None => return Err(self.no_leader()),
                Some(leader) if leader == self.raft_id => {
                    if self.leader_lost_quorum(&self.raft.metrics().borrow()) {
                        return Err(self.no_leader());
                    }
                    // A write that cannot reach a quorum would hang until
                    // its timeout; fail as soon as the quorum is known lost.
                    let quorum_lost = async {
                        loop {
                            tokio::time::sleep(Duration::from_millis(self.timing.heartbeat_ms))
                                .await;
                            if self.leader_lost_quorum(&self.raft.metrics().borrow()) {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        result = self.propose_local(tx.clone()) => result,
                        () = quorum_lost => return Err(self.no_leader()),
                    }
                }
                Some(leader) => {
                    let Some(addr) = leader_addr else {
                        return Err(self.no_leader());
                    };
                    // A leader cut off mid-call never answers (its packets
                    // are lost, not refused): once raft names another
                    // leader, the write goes there instead of waiting for
                    // the connection to be declared dead.
                    let forwarded = tokio::select! {
                        forwarded = self.forward(&addr, tx.clone()) => forwarded,
                        () = async {
                            if !self.leader_moves_from(leader).await {
                                // raft stopped: nothing will move; the
                                // forward decides.
                                std::future::pending::<()>().await;
                            }
                        } => Err(ProposeError::Raft(format!(
                            "the leader at {addr} was replaced while the write was on its way"
                        ))),
                    };
                    if let Ok(version) = forwarded {
                        // Read-your-writes: the caller reads this manager's
                        // store next, so answer once it has the write.
                        self.wait_applied(version).await;
                    }
                    forwarded
                }
            };
            match result {
                Err(error @ (ProposeError::NotManager | ProposeError::Raft(_))) => {
                    last_error = Some(error);
                    continue;
                }
                other => return other,
            }
        }
        Err(last_error.unwrap_or_else(|| self.no_leader()))
    }

    /// Commits `tx` on this node's raft; fails with `NotManager` if this
    /// node does not lead.
    pub async fn propose_local(&self, tx: Transaction) -> Result<u64, ProposeError> {
        propose_on(&self.proposals, tx).await
    }

    /// Commits `txs` on this node's raft, together as far as they fit in
    /// one entry; one outcome per transaction, in order.
    pub async fn propose_all_local(&self, txs: Vec<Transaction>) -> Vec<Outcome> {
        let count = txs.len();
        let outcomes = tokio::time::timeout(WRITE_TIMEOUT, self.proposals.propose_all(txs));
        match outcomes.await {
            Ok(outcomes) => outcomes,
            Err(_) => vec![Err(ProposeError::Timeout); count],
        }
    }

    /// A proposer for the leader's control loops.
    pub fn local_proposer(&self) -> Proposer {
        let proposals = self.proposals.clone();
        Proposer::new(move |tx| {
            let proposals = proposals.clone();
            async move { propose_on(&proposals, tx).await }
        })
    }

    /// Forwards `tx` to the leader at `leader_addr`, batched with the other
    /// writes this manager forwards meanwhile.
    async fn forward(&self, leader_addr: &str, tx: Transaction) -> Result<u64, ProposeError> {
        let forwarder = {
            let mut forwarders = self.forwarders.lock();
            match forwarders.get(leader_addr) {
                Some(forwarder) => forwarder.clone(),
                None => {
                    let client = self.leader_client(leader_addr)?;
                    let stream = Arc::new(Forwarder::new(client, leader_addr.to_string()));
                    let forwarder = ProposalBatcher::start(move |txs| {
                        let stream = stream.clone();
                        async move { stream.forward(txs).await }
                    });
                    forwarders.insert(leader_addr.to_string(), forwarder.clone());
                    forwarder
                }
            }
        };
        forwarder.propose(tx).await
    }

    fn leader_client(&self, addr: &str) -> Result<RaftClient<Channel>, ProposeError> {
        let channel = shoal_proto::transport::connect_tls_lazy(
            addr,
            self.tls.client_config(),
            shoal_proto::MANAGER_SERVER_NAME,
        )
        .map_err(|e| ProposeError::Raft(e.to_string()))?;
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(network::MAX_RAFT_MESSAGE)
            .max_encoding_message_size(network::MAX_RAFT_MESSAGE))
    }

    /// Asks the leader to add this manager to raft as a voter. Retries on
    /// the leader the contacted manager points to.
    pub async fn join_raft(
        tls: &Arc<NodeTls>,
        manager_addrs: &[String],
        raft_id: RaftId,
        addr: &str,
    ) -> Result<Vec<String>, String> {
        let mut targets: Vec<String> = manager_addrs.to_vec();
        let mut last_error = "no manager address known".to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut i = 0;
        while tokio::time::Instant::now() < deadline {
            let Some(target) = targets.get(i % targets.len().max(1)).cloned() else {
                break;
            };
            i += 1;
            let channel = shoal_proto::transport::connect_tls(
                &target,
                tls.client_config(),
                shoal_proto::MANAGER_SERVER_NAME,
            )
            .await;
            let result = match channel {
                Ok(channel) => RaftClient::new(channel)
                    .join_raft(JoinRaftRequest {
                        raft_id,
                        addr: addr.to_string(),
                    })
                    .await
                    .map(|r| r.into_inner().manager_addrs)
                    .map_err(|status| {
                        if let Some(leader) = status
                            .metadata()
                            .get(LEADER_ADDR_HEADER)
                            .and_then(|v| v.to_str().ok())
                            && !targets.iter().any(|t| t == leader)
                        {
                            targets.insert(0, leader.to_string());
                            i = 0;
                        }
                        status.message().to_string()
                    }),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(addrs) => return Ok(addrs),
                Err(e) => {
                    last_error = e;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        Err(last_error)
    }

    /// Asks the leader to remove `raft_id` from raft.
    pub async fn leave_raft(&self, raft_id: RaftId) -> Result<(), String> {
        for _ in 0..20 {
            match self.leader() {
                Some((leader, _)) if leader == self.raft_id => {
                    return self.remove_member(raft_id).await;
                }
                Some((_, member)) => {
                    let mut client = self
                        .leader_client(&member.addr)
                        .map_err(|e| e.to_string())?;
                    match client.leave_raft(LeaveRaftRequest { raft_id }).await {
                        Ok(_) => return Ok(()),
                        Err(status) => {
                            tracing::debug!(error = %status.message(), "leaving raft failed; retrying");
                        }
                    }
                }
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err("the leader did not confirm the removal from raft".into())
    }

    /// On the leader: adds a new manager as learner (waiting until it has
    /// caught up, snapshot included), then as voter.
    pub async fn add_member(&self, raft_id: RaftId, member: RaftMember) -> Result<(), String> {
        let already_voter = self
            .members()
            .iter()
            .any(|(id, _, voter)| *id == raft_id && *voter);
        if already_voter {
            return Ok(());
        }
        self.raft
            .add_learner(raft_id, member, true)
            .await
            .map_err(|e| format!("adding the manager to raft: {e}"))?;
        let mut voters = BTreeSet::new();
        voters.insert(raft_id);
        self.raft
            .change_membership(openraft::ChangeMembers::AddVoterIds(voters), false)
            .await
            .map_err(|e| format!("making the manager a voter: {e}"))?;
        Ok(())
    }

    /// On the leader: removes a member from raft entirely.
    pub async fn remove_member(&self, raft_id: RaftId) -> Result<(), String> {
        let is_member = self.members().iter().any(|(id, _, _)| *id == raft_id);
        if !is_member {
            return Ok(());
        }
        let mut ids = BTreeSet::new();
        ids.insert(raft_id);
        let is_voter = self
            .members()
            .iter()
            .any(|(id, _, voter)| *id == raft_id && *voter);
        if is_voter {
            self.raft
                .change_membership(openraft::ChangeMembers::RemoveVoters(ids.clone()), false)
                .await
                .map_err(|e| format!("removing the manager from raft: {e}"))?;
        }
        let still_member = self.members().iter().any(|(id, _, _)| *id == raft_id);
        if still_member {
            self.raft
                .change_membership(openraft::ChangeMembers::RemoveNodes(ids), false)
                .await
                .map_err(|e| format!("removing the manager from raft: {e}"))?;
        }
        Ok(())
    }

    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }

    pub fn is_shut_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

/// Metadata key a follower sets on refusals, pointing at the leader.
pub const LEADER_ADDR_HEADER: &str = "shoal-leader-addr";

async fn propose_on(proposals: &ProposalBatcher, tx: Transaction) -> Result<u64, ProposeError> {
    tokio::time::timeout(WRITE_TIMEOUT, proposals.propose(tx))
        .await
        .unwrap_or(Err(ProposeError::Timeout))
}

/// What made raft stop, unless it was shut down on purpose.
fn raft_failure(running: &Result<(), openraft::error::Fatal<RaftId>>) -> Option<String> {
    match running {
        Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
        Err(fatal) => Some(fatal.to_string()),
    }
}

/// Follows raft's view of leadership: runs the control loops while this
/// manager leads, and announces leader changes.
async fn watch_leadership(runtime: Arc<ManagerRuntime>, leader_loops: LeaderLoops) {
    // Raft's server metrics change only with the vote, role, leader or
    // membership. Its full metrics are sent on every turn of raft's loop,
    // several times per entry on every manager: following them woke this
    // task for nothing thousands of times a second under write load.
    let mut metrics = runtime.raft.server_metrics();
    let mut current_leader: Option<RaftId> = None;
    let mut leading: Option<(CancellationToken, Vec<tokio::task::JoinHandle<()>>)> = None;
    loop {
        let (leader, is_leader, names) = {
            let m = metrics.borrow();
            let name = |id: Option<RaftId>| {
                id.and_then(|id| {
                    m.membership_config
                        .membership()
                        .get_node(&id)
                        .map(|member| member.node_id.clone())
                })
            };
            let names = (m.current_leader != current_leader)
                .then(|| (name(current_leader), name(m.current_leader)));
            (
                m.current_leader,
                m.current_leader == Some(runtime.raft_id)
                    && m.state == openraft::ServerState::Leader,
                names,
            )
        };
        if let Some((old, new)) = names {
            let event = ClusterEvent::LeaderChanged {
                old,
                new,
                time: crate::ids::now_ms(),
            };
            tracing::info!(?event, "leader changed");
            crate::metrics::METRICS
                .leader_changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = runtime.events.send(event);
            current_leader = leader;
        }
        match (&leading, is_leader) {
            (None, true) => {
                let token = runtime.shutdown.child_token();
                let ctx = LeaderContext {
                    store: runtime.store.clone(),
                    proposer: runtime.local_proposer(),
                    shutdown: token.clone(),
                };
                tracing::info!("this manager is now the leader: starting control loops");
                runtime
                    .dispatcher
                    .store(Some(super::dispatcher::Dispatcher::start(ctx.clone())));
                let mut handles = leader_loops(ctx.clone());
                handles.push(tokio::spawn(super::roles::manage_roles(
                    runtime.clone(),
                    ctx,
                )));
                leading = Some((token, handles));
            }
            (Some(_), false) => {
                if let Some((token, handles)) = leading.take() {
                    tracing::info!("leadership lost: stopping control loops");
                    runtime.dispatcher.store(None);
                    token.cancel();
                    for handle in handles {
                        handle.abort();
                    }
                }
            }
            _ => {}
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { break },
            () = runtime.shutdown.cancelled() => break,
        }
    }
    // The metrics close when raft stops; say why, unless on purpose.
    if let Some(cause) = runtime.raft_stopped() {
        tracing::error!("{}", super::raft_stopped_message(&cause));
    }
    if let Some((token, handles)) = leading.take() {
        token.cancel();
        for handle in handles {
            handle.abort();
        }
    }
}

/// How often [`snapshot_when_due`] looks at how far the log has grown.
/// Raft's full metrics are sent on every turn of its loop, several times
/// per entry: waking on each to compare two numbers cost every manager
/// thousands of wake-ups a second under write load. A few hundred entries
/// past the interval before the snapshot starts are of no consequence.
const SNAPSHOT_CHECK: Duration = Duration::from_millis(250);

/// Builds a snapshot whenever the cluster's snapshot interval of entries
/// has been applied since the last one. Every manager snapshots its own
/// log; the interval is read from the store so changes apply at once.
async fn snapshot_when_due(runtime: Arc<ManagerRuntime>, default_interval: u64) {
    let mut metrics = runtime.raft.metrics();
    loop {
        let (applied, snapshot) = {
            let m = metrics.borrow();
            (
                m.last_applied.map_or(0, |l| l.index),
                m.snapshot.map_or(0, |l| l.index),
            )
        };
        let interval = runtime
            .store
            .read()
            .cluster()
            .map_or(default_interval, |c| c.spec.snapshot_interval)
            .max(1);
        if applied.saturating_sub(snapshot) >= interval {
            if let Err(e) = runtime.raft.trigger().snapshot().await {
                tracing::warn!(error = %e, "triggering a snapshot failed");
            }
            // Wait for it to land before judging again.
            let _ = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    if metrics.borrow().snapshot.map_or(0, |l| l.index) > snapshot {
                        return;
                    }
                    if metrics.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await;
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(SNAPSHOT_CHECK) => {}
            () = runtime.shutdown.cancelled() => return,
        }
        // Closed: raft has stopped.
        if metrics.has_changed().is_err() {
            return;
        }
    }
}

/// A random non-zero raft id.
pub fn new_raft_id() -> RaftId {
    rand::thread_rng().gen_range(1..u64::MAX)
}
