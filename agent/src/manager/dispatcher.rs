//! The dispatcher: the leader's side of every node's session.
//!
//! - A node opens a session (server stream) and heartbeats on it. A node
//!   whose heartbeats stop for `period × tolerance` is marked down. A new
//!   leader gives every node that long again before judging it, so a
//!   leader change never marks nodes down en masse (moby/moby#25017).
//! - Assignments: the set of tasks placed on the node, sent whole when the
//!   session opens and then as changes. One router follows the store and
//!   routes task changes to the sessions of their nodes; each session
//!   coalesces what piled up into one message, so a burst of 100,000 task
//!   changes costs one pass, not one per node.
//! - Status reports from workers are batched into few raft proposals.
//!
//! Only the leader dispatches; followers refuse sessions and point at the
//! leader.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shoal_proto::v1 as pb;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::LeaderContext;
use crate::api::convert::*;
use crate::ids::now_ms;
use crate::store::*;

/// Updates batched into one proposal at most.
const STATUS_BATCH: usize = 2_000;
/// Status proposals committing at once.
const STATUS_PROPOSALS_IN_FLIGHT: usize = 4;
/// A session's changes that keep coming less than this apart are sent
/// together: during a large scale-up each node gets a few messages instead
/// of one per task, while a lone change waits only this long.
const SESSION_QUIET: Duration = Duration::from_millis(25);
/// Longest a change waits for more to join it (swarmkit's dispatcher: 100 ms;
/// 200 ms measured best with 2,300 sessions on two cores).
const SESSION_GATHER_MAX: Duration = Duration::from_millis(200);

pub struct Dispatcher {
    ctx: LeaderContext,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Last sign of life per node id.
    last_seen: Mutex<HashMap<String, Instant>>,
    started: Instant,
    statuses: mpsc::Sender<StatusBatch>,
    /// Readers of `Logs`, by subscription id.
    log_readers: Mutex<HashMap<String, mpsc::Sender<PublishedLogs>>>,
}

/// Log lines a node published for a subscription.
pub struct PublishedLogs {
    pub node_id: String,
    pub message: pb::PublishLogsMessage,
}

struct StatusBatch {
    updates: Vec<(String, TaskStatus)>,
    done: oneshot::Sender<Result<(), super::ProposeError>>,
}

/// One node's session: what is waiting to be sent to it.
pub struct Session {
    pub id: String,
    pub node_id: String,
    pending: Mutex<Pending>,
    wake: Notify,
    closed: CancellationToken,
}

#[derive(Default)]
struct Pending {
    full: bool,
    tasks: HashMap<String, Arc<Task>>,
    removed: HashSet<String>,
    node: bool,
    managers: bool,
    cluster: bool,
    log_subscriptions: Vec<pb::LogSubscription>,
}

impl Dispatcher {
    /// Starts dispatching for a new leadership term.
    pub fn start(ctx: LeaderContext) -> Arc<Self> {
        let (statuses, status_rx) = mpsc::channel(1024);
        let dispatcher = Arc::new(Dispatcher {
            ctx: ctx.clone(),
            sessions: Mutex::new(HashMap::new()),
            last_seen: Mutex::new(HashMap::new()),
            started: Instant::now(),
            statuses,
            log_readers: Mutex::new(HashMap::new()),
        });
        tokio::spawn(route_changes(dispatcher.clone()));
        tokio::spawn(watch_heartbeats(dispatcher.clone()));
        tokio::spawn(commit_statuses(dispatcher.clone(), status_rx));
        dispatcher
    }

    fn heartbeat_settings(&self) -> (Duration, u32) {
        heartbeat_settings(&self.ctx.store.read())
    }

    pub fn heartbeat_period(&self) -> Duration {
        self.heartbeat_settings().0
    }

    pub fn is_stopped(&self) -> bool {
        self.ctx.shutdown.is_cancelled()
    }

    /// Opens a session for `node_id`, replacing an older one of the same
    /// node. Returns the session and the stream of messages for it.
    pub async fn open_session(
        self: &Arc<Self>,
        node_id: &str,
        request: pb::SessionRequest,
        remote_addr: Option<String>,
    ) -> Result<
        (
            Arc<Session>,
            mpsc::Receiver<Result<pb::SessionMessage, tonic::Status>>,
        ),
        tonic::Status,
    > {
        let node = self
            .ctx
            .store
            .read()
            .nodes
            .get(node_id)
            .cloned()
            .ok_or_else(|| {
                tonic::Status::permission_denied(format!(
                    "node {node_id} is not part of the cluster"
                ))
            })?;
        let session = Arc::new(Session {
            id: crate::ids::new_id(),
            node_id: node_id.to_string(),
            pending: Mutex::new(Pending {
                full: true,
                node: true,
                managers: true,
                cluster: true,
                ..Default::default()
            }),
            wake: Notify::new(),
            closed: self.ctx.shutdown.child_token(),
        });
        if let Some(old) = self
            .sessions
            .lock()
            .insert(node_id.to_string(), session.clone())
        {
            old.closed.cancel();
        }
        self.last_seen
            .lock()
            .insert(node_id.to_string(), Instant::now());

        // The node is up: record what it reports about itself.
        let mut description: NodeDescription = request
            .description
            .as_ref()
            .map(Into::into)
            .unwrap_or_else(|| node.description.clone());
        if description.hostname.is_empty() {
            description.hostname = node.description.hostname.clone();
        }
        let addr = if request.advertise_addr.is_empty() {
            remote_addr.unwrap_or_default()
        } else {
            request.advertise_addr.clone()
        };
        let mut tx = Transaction::new(now_ms()).patch(Patch::NodeStatus {
            id: node_id.to_string(),
            status: NodeStatus {
                state: NodeState::Ready,
                message: String::new(),
                addr,
                timestamp: now_ms(),
            },
        });
        if description != node.description {
            tx = tx.patch(Patch::NodeDescription {
                id: node_id.to_string(),
                description,
            });
        }
        self.ctx.proposer.propose(tx).await?;
        tracing::info!(node = %node.description.hostname, session = %session.id, "session opened");

        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(write_session(self.clone(), session.clone(), tx));
        Ok((session, rx))
    }

    /// Records a heartbeat; an unknown session must reconnect.
    pub fn heartbeat(&self, node_id: &str, session_id: &str) -> Result<Duration, tonic::Status> {
        let valid = self
            .sessions
            .lock()
            .get(node_id)
            .is_some_and(|s| s.id == session_id && !s.closed.is_cancelled());
        if !valid {
            return Err(tonic::Status::not_found(
                "session expired or unknown: open a new session",
            ));
        }
        self.last_seen
            .lock()
            .insert(node_id.to_string(), Instant::now());
        Ok(self.heartbeat_period())
    }

    /// Commits status reports from `node_id`'s worker; returns once they
    /// are in raft, so the worker can forget them.
    pub async fn update_statuses(
        &self,
        node_id: &str,
        session_id: &str,
        updates: Vec<(String, TaskStatus)>,
    ) -> Result<(), tonic::Status> {
        self.heartbeat(node_id, session_id)?;
        // A worker reports only on its own tasks.
        let updates: Vec<(String, TaskStatus)> = {
            let tables = self.ctx.store.read();
            updates
                .into_iter()
                .filter(|(id, _)| tables.tasks.get(id).is_some_and(|t| t.node_id == node_id))
                .collect()
        };
        if updates.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.statuses
            .send(StatusBatch { updates, done })
            .await
            .map_err(|_| tonic::Status::unavailable("this manager stopped leading: retry"))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(tonic::Status::unavailable(
                "this manager stopped leading: retry",
            )),
        }
    }

    /// Open sessions that have not been closed.
    pub fn session_count(&self) -> usize {
        self.sessions
            .lock()
            .values()
            .filter(|s| !s.closed.is_cancelled())
            .count()
    }

    fn session_of(&self, node_id: &str) -> Option<Arc<Session>> {
        self.sessions.lock().get(node_id).cloned()
    }

    fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.lock().values().cloned().collect()
    }

    /// Asks `nodes` to publish the logs `selector` picks; returns the
    /// subscription id, the receiver of what they publish, and the nodes
    /// that have no session (they cannot answer).
    pub fn subscribe_logs(
        &self,
        selector: pb::LogSelector,
        options: pb::LogsOptions,
        nodes: &[String],
    ) -> (String, mpsc::Receiver<PublishedLogs>, Vec<String>) {
        let id = crate::ids::new_id();
        // Bounded: a slow reader makes publishers drop (and count) lines
        // instead of stalling the node or the manager.
        let (tx, rx) = mpsc::channel(256);
        self.log_readers.lock().insert(id.clone(), tx);
        let subscription = pb::LogSubscription {
            id: id.clone(),
            selector: Some(selector),
            options: Some(options),
            close: false,
        };
        let mut unreachable = Vec::new();
        let sessions = self.sessions.lock();
        for node in nodes {
            match sessions.get(node) {
                Some(session) => session.touch(|p| p.log_subscriptions.push(subscription.clone())),
                None => unreachable.push(node.clone()),
            }
        }
        (id, rx, unreachable)
    }

    /// Ends a subscription: the reader went away or has everything.
    pub fn close_logs(&self, id: &str, nodes: &[String]) {
        self.log_readers.lock().remove(id);
        let close = pb::LogSubscription {
            id: id.to_string(),
            close: true,
            ..Default::default()
        };
        let sessions = self.sessions.lock();
        for node in nodes {
            if let Some(session) = sessions.get(node) {
                session.touch(|p| p.log_subscriptions.push(close.clone()));
            }
        }
    }

    /// Hands published lines to their reader. Returns false when the
    /// reader is full (the lines are dropped and must be counted) or gone.
    pub fn deliver_logs(&self, node_id: &str, message: pb::PublishLogsMessage) -> bool {
        let reader = self
            .log_readers
            .lock()
            .get(&message.subscription_id)
            .cloned();
        let Some(reader) = reader else { return false };
        reader
            .try_send(PublishedLogs {
                node_id: node_id.to_string(),
                message,
            })
            .is_ok()
    }

    fn forget_session(&self, session: &Session) {
        let mut sessions = self.sessions.lock();
        if sessions
            .get(&session.node_id)
            .is_some_and(|s| s.id == session.id)
        {
            sessions.remove(&session.node_id);
        }
    }
}

impl Session {
    fn touch(&self, f: impl FnOnce(&mut Pending)) {
        f(&mut self.pending.lock());
        self.wake.notify_one();
    }
}

/// The heartbeat period and how many periods a node may miss. Asked on
/// every beat, so the defaults (whose name allocates) are built only for a
/// store that has no cluster object yet.
fn heartbeat_settings(tables: &Tables) -> (Duration, u32) {
    let (period_ms, tolerance) = match tables.cluster() {
        Some(cluster) => (
            cluster.spec.heartbeat_period_ms,
            cluster.spec.heartbeat_tolerance,
        ),
        None => {
            let defaults = ClusterSpec::default();
            (defaults.heartbeat_period_ms, defaults.heartbeat_tolerance)
        }
    };
    (Duration::from_millis(period_ms.max(100)), tolerance.max(1))
}

/// Sends what piled up for a session, one message at a time.
async fn write_session(
    dispatcher: Arc<Dispatcher>,
    session: Arc<Session>,
    tx: mpsc::Sender<Result<pb::SessionMessage, tonic::Status>>,
) {
    let mut first = true;
    loop {
        let pending = std::mem::take(&mut *session.pending.lock());
        let message = build_message(&dispatcher, &session, pending, first);
        first = false;
        if let Some(message) = message {
            tokio::select! {
                sent = tx.send(Ok(message)) => if sent.is_err() { break },
                () = session.closed.cancelled() => break,
            }
        }
        tokio::select! {
            () = session.wake.notified() => {}
            () = session.closed.cancelled() => break,
            () = tx.closed() => break,
        }
        if !gather(&session).await {
            break;
        }
    }
    if dispatcher.is_stopped() {
        let _ = tx
            .send(Err(tonic::Status::unavailable(
                "this manager stopped leading: reconnect to the leader",
            )))
            .await;
    }
    dispatcher.forget_session(&session);
    tracing::debug!(node = %session.node_id, "session closed");
}

/// Waits while changes keep arriving, up to [`SESSION_GATHER_MAX`]; false
/// when the session closed meanwhile.
async fn gather(session: &Session) -> bool {
    let deadline = tokio::time::Instant::now() + SESSION_GATHER_MAX;
    loop {
        let quiet_until = (tokio::time::Instant::now() + SESSION_QUIET).min(deadline);
        tokio::select! {
            () = tokio::time::sleep_until(quiet_until) => return true,
            () = session.wake.notified() => {
                if tokio::time::Instant::now() >= deadline {
                    return true;
                }
            }
            () = session.closed.cancelled() => return false,
        }
    }
}

fn build_message(
    dispatcher: &Dispatcher,
    session: &Session,
    pending: Pending,
    first: bool,
) -> Option<pb::SessionMessage> {
    let tables = dispatcher.ctx.store.read();
    let mut message = pb::SessionMessage {
        session_id: session.id.clone(),
        heartbeat_period_ms: heartbeat_settings(&tables).0.as_millis() as u64,
        ..Default::default()
    };
    let mut any = first;
    let hostname = |node_id: &str| hostname_of(&tables, node_id);
    if pending.full {
        let tasks = tables
            .tasks_on_node(&session.node_id)
            .filter(|t| t.status.state >= TaskState::Assigned)
            .map(|t| task_to_pb(t, &hostname(&t.node_id)))
            .collect();
        message.assignments = Some(pb::Assignments {
            full: true,
            tasks,
            removed: Vec::new(),
        });
        any = true;
    } else if !pending.tasks.is_empty() || !pending.removed.is_empty() {
        message.assignments = Some(pb::Assignments {
            full: false,
            tasks: pending
                .tasks
                .values()
                .map(|t| task_to_pb(t, &hostname(&t.node_id)))
                .collect(),
            removed: pending.removed.into_iter().collect(),
        });
        any = true;
    }
    if pending.node
        && let Some(node) = tables.nodes.get(&session.node_id)
    {
        message.node = Some(node_to_pb(node, &LiveView::default()));
        any = true;
    }
    if pending.managers {
        let mut addrs: Vec<String> = tables
            .nodes
            .iter()
            .filter(|n| n.role == Role::Manager)
            .filter_map(|n| n.manager_status.as_ref().map(|m| m.addr.clone()))
            .filter(|a| !a.is_empty())
            .collect();
        addrs.sort();
        message.managers = Some(pb::ManagerList {
            addrs,
            leader_addr: String::new(),
        });
        any = true;
    }
    if !pending.log_subscriptions.is_empty() {
        message.log_subscriptions = pending.log_subscriptions;
        any = true;
    }
    if pending.cluster
        && let Some(cluster) = tables.cluster()
    {
        message.cluster = Some(cluster.as_ref().into());
        any = true;
    }
    any.then_some(message)
}

/// Follows the store and tells each session what changed for its node.
async fn route_changes(dispatcher: Arc<Dispatcher>) {
    let mut changes = dispatcher.ctx.store.subscribe();
    loop {
        let change = tokio::select! {
            change = changes.recv() => change,
            () = dispatcher.ctx.shutdown.cancelled() => break,
        };
        match change {
            Ok(change) if !change.reset => route(&dispatcher, &change),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                for session in dispatcher.all_sessions() {
                    session.touch(|p| {
                        p.full = true;
                        p.node = true;
                        p.managers = true;
                        p.cluster = true;
                    });
                }
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    for session in dispatcher.all_sessions() {
        session.closed.cancel();
    }
}

/// Whether a task change is news for the node running it. Status changes
/// are not: the node reported most of them itself, and echoing 100,000
/// "running" reports back would double the traffic of every rollout.
fn assignment_changed(old: &Task, new: &Task) -> bool {
    old.node_id != new.node_id
        || old.status.state < TaskState::Assigned
        || old.desired_state != new.desired_state
        || old.spec_version != new.spec_version
}

fn route(dispatcher: &Dispatcher, change: &Changes) {
    for event in &change.events {
        match &event.object {
            Object::Task(task) => {
                let old_node = match &event.old {
                    Some(Object::Task(old)) => old.node_id.as_str(),
                    _ => "",
                };
                let assigned = task.status.state >= TaskState::Assigned
                    && !task.node_id.is_empty()
                    && event.action != Action::Remove;
                let news_for_node = match &event.old {
                    Some(Object::Task(old)) => assignment_changed(old, task),
                    _ => true,
                };
                if assigned
                    && news_for_node
                    && let Some(session) = dispatcher.session_of(&task.node_id)
                {
                    session.touch(|p| {
                        p.removed.remove(&task.meta.id);
                        p.tasks.insert(task.meta.id.clone(), task.clone());
                    });
                }
                let gone_from = if event.action == Action::Remove {
                    Some(task.node_id.as_str())
                } else if !old_node.is_empty() && old_node != task.node_id {
                    Some(old_node)
                } else {
                    None
                };
                if let Some(node_id) = gone_from
                    && !node_id.is_empty()
                    && let Some(session) = dispatcher.session_of(node_id)
                {
                    session.touch(|p| {
                        p.tasks.remove(&task.meta.id);
                        p.removed.insert(task.meta.id.clone());
                    });
                }
            }
            Object::Node(node) => {
                let manager_change = match &event.old {
                    Some(Object::Node(old)) => {
                        old.role != node.role || old.manager_status != node.manager_status
                    }
                    _ => node.role == Role::Manager,
                };
                if manager_change {
                    for session in dispatcher.all_sessions() {
                        session.touch(|p| p.managers = true);
                    }
                }
                if event.action == Action::Remove {
                    if let Some(session) = dispatcher.session_of(&node.meta.id) {
                        session.closed.cancel();
                    }
                } else if let Some(session) = dispatcher.session_of(&node.meta.id) {
                    session.touch(|p| p.node = true);
                }
            }
            Object::Cluster(_) => {
                for session in dispatcher.all_sessions() {
                    session.touch(|p| p.cluster = true);
                }
            }
            Object::Service(_) => {}
        }
    }
}

/// Marks nodes down when their heartbeats stop.
async fn watch_heartbeats(dispatcher: Arc<Dispatcher>) {
    loop {
        let (period, tolerance) = dispatcher.heartbeat_settings();
        tokio::select! {
            () = tokio::time::sleep(period / 2) => {}
            () = dispatcher.ctx.shutdown.cancelled() => return,
        }
        let limit = period * tolerance;
        // A new leader gives every node a full allowance to reconnect.
        let grace = limit.max(Duration::from_secs(5));
        if dispatcher.started.elapsed() < grace {
            continue;
        }
        let now = Instant::now();
        let late: Vec<(String, String)> = {
            let tables = dispatcher.ctx.store.read();
            let last_seen = dispatcher.last_seen.lock();
            tables
                .nodes
                .iter()
                .filter(|n| n.status.state == NodeState::Ready)
                .filter(|n| {
                    let seen = last_seen
                        .get(&n.meta.id)
                        .copied()
                        .unwrap_or(dispatcher.started);
                    now.duration_since(seen) > limit
                })
                .map(|n| (n.meta.id.clone(), n.status.addr.clone()))
                .collect()
        };
        if late.is_empty() {
            continue;
        }
        let mut tx = Transaction::new(now_ms());
        for (node_id, addr) in &late {
            if let Some(session) = dispatcher.session_of(node_id) {
                session.closed.cancel();
            }
            tx.push(Op::Patch(Patch::NodeStatus {
                id: node_id.clone(),
                status: NodeStatus {
                    state: NodeState::Down,
                    message: "heartbeat failure".into(),
                    addr: addr.clone(),
                    timestamp: now_ms(),
                },
            }));
        }
        match dispatcher.ctx.proposer.propose(tx).await {
            Ok(_) => {
                crate::metrics::METRICS
                    .missed_heartbeats
                    .fetch_add(late.len() as u64, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(nodes = late.len(), "nodes marked down: heartbeats stopped");
            }
            Err(e) => tracing::warn!(error = %e, "marking nodes down failed"),
        }
    }
}

/// Batches worker status reports into proposals.
async fn commit_statuses(dispatcher: Arc<Dispatcher>, mut batches: mpsc::Receiver<StatusBatch>) {
    // A few proposals in flight: raft syncs and replicates them together.
    // Reports of one task landing out of order are harmless: the store
    // ignores a status older than the one it has.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(STATUS_PROPOSALS_IN_FLIGHT));
    loop {
        let first = tokio::select! {
            batch = batches.recv() => match batch { Some(b) => b, None => return },
            () = dispatcher.ctx.shutdown.cancelled() => return,
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut waiting = vec![first.done];
        let mut updates = first.updates;
        while updates.len() < STATUS_BATCH {
            match batches.try_recv() {
                Ok(batch) => {
                    updates.extend(batch.updates);
                    waiting.push(batch.done);
                }
                Err(_) => break,
            }
        }
        let count = updates.len();
        let mut tx = Transaction::new(now_ms());
        for (id, status) in updates {
            tx.push(Op::Patch(Patch::TaskStatus { id, status }));
        }
        let proposer = dispatcher.ctx.proposer.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = proposer.propose(tx).await.map(|_| ());
            drop(permit);
            tracing::debug!(
                updates = count,
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                "task statuses committed"
            );
            for done in waiting {
                let _ = done.send(result.clone());
            }
        });
    }
}
