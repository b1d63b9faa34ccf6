//! The worker: every node's side of the cluster. It keeps one session with
//! the leader (finding it through any manager it knows), heartbeats on it,
//! runs the tasks it is assigned and reports their states.
//!
//! - [`tasks`]: the per-task runners and the status queue.
//! - [`logs`]: publishing task logs for the leader's log subscriptions.
//! - [`executor`]: the runtimes that run workloads.

pub mod executor;
pub mod logs;
pub mod tasks;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use shoal_proto::v1 as pb;
use shoal_proto::v1::dispatcher_client::DispatcherClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::pki::tls::NodeTls;
use crate::store::{NodeDescription, Task};
use executor::Executor;
use tasks::TaskManager;

pub struct WorkerConfig {
    pub node_id: String,
    pub tls: Arc<NodeTls>,
    pub managers: Vec<String>,
    pub advertise_addr: String,
    pub description: NodeDescription,
    pub executor: Arc<dyn Executor>,
    pub shutdown: CancellationToken,
}

pub struct Worker {
    node_id: String,
    tls: Arc<NodeTls>,
    advertise_addr: String,
    description: NodeDescription,
    tasks: Arc<TaskManager>,
    managers: watch::Sender<Vec<String>>,
    leader: Mutex<Option<String>>,
    node: watch::Sender<Option<pb::Node>>,
    cluster: watch::Sender<Option<pb::Cluster>>,
    shutdown: CancellationToken,
    connected: watch::Sender<bool>,
    logs: logs::Publishers,
}

impl Worker {
    /// A worker for this node; it reaches out to the cluster once
    /// [`Worker::connect`] is called.
    pub fn new(config: WorkerConfig) -> Arc<Self> {
        Arc::new(Worker {
            node_id: config.node_id,
            tls: config.tls,
            advertise_addr: config.advertise_addr,
            description: config.description,
            tasks: TaskManager::new(config.executor, config.shutdown.child_token()),
            managers: watch::Sender::new(config.managers),
            leader: Mutex::new(None),
            node: watch::Sender::new(None),
            cluster: watch::Sender::new(None),
            shutdown: config.shutdown,
            connected: watch::Sender::new(false),
            logs: logs::Publishers::default(),
        })
    }

    /// Opens the session with the leader, and keeps it open. Called once
    /// the node is active and its own cluster port listens: on a manager
    /// the first address tried is often its own, and a refused call costs
    /// a backoff (`node ls` right after `swarm init` showed the only node
    /// `unknown` for a quarter of a second).
    pub fn connect(self: &Arc<Self>) {
        tokio::spawn(keep_session(self.clone()));
    }

    /// Waits at most `limit` for the session to be open. The leader marks
    /// a node ready before it answers the session, so `swarm init` and
    /// `join` return with the node ready, as Docker's do; one that is not
    /// open in time turns ready when it opens.
    pub async fn wait_connected(&self, limit: Duration) {
        let mut connected = self.connected();
        let _ = tokio::time::timeout(limit, connected.wait_for(|open| *open)).await;
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node as the cluster last described it.
    pub fn node_updates(&self) -> watch::Receiver<Option<pb::Node>> {
        self.node.subscribe()
    }

    /// The cluster settings as last received.
    pub fn cluster_updates(&self) -> watch::Receiver<Option<pb::Cluster>> {
        self.cluster.subscribe()
    }

    /// Manager addresses as last received.
    pub fn manager_updates(&self) -> watch::Receiver<Vec<String>> {
        self.managers.subscribe()
    }

    /// Whether a session with the leader is open.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }

    pub fn executor_kind(&self) -> &'static str {
        self.tasks.executor().kind()
    }

    pub fn executor(&self) -> Arc<dyn Executor> {
        self.tasks.executor().clone()
    }

    pub fn leader_addr(&self) -> Option<String> {
        self.leader.lock().clone()
    }

    /// Stops the session and the runners; workloads keep running.
    pub async fn shutdown(&self) {
        self.tasks.detach_all();
        self.shutdown.cancel();
    }

    fn next_target(&self, attempt: usize) -> Option<String> {
        if let Some(leader) = self.leader.lock().clone() {
            return Some(leader);
        }
        let managers = self.managers.borrow().clone();
        if managers.is_empty() {
            return None;
        }
        Some(managers[attempt % managers.len()].clone())
    }
}

/// Keeps a session open with the leader for as long as the node is active.
async fn keep_session(worker: Arc<Worker>) {
    let running = worker.tasks.discover().await;
    let mut attempt = 0usize;
    let mut backoff = Duration::from_millis(100);
    loop {
        if worker.shutdown.is_cancelled() {
            return;
        }
        let Some(target) = worker.next_target(attempt) else {
            tracing::warn!("no manager address known: cannot reach the cluster");
            if sleep_or_stop(&worker, Duration::from_secs(2)).await {
                return;
            }
            continue;
        };
        attempt += 1;
        match run_session(&worker, &target, &running).await {
            SessionEnd::Stopped => return,
            SessionEnd::Redirect(leader) => {
                tracing::debug!(%leader, "redirected to the leader");
                *worker.leader.lock() = Some(leader);
                backoff = Duration::from_millis(100);
                continue;
            }
            SessionEnd::Ended(reason) => {
                tracing::info!(manager = %target, %reason, "session ended; reconnecting");
                *worker.leader.lock() = None;
                backoff = Duration::from_millis(100);
            }
            SessionEnd::Failed(reason) => {
                tracing::debug!(manager = %target, %reason, "session failed");
                *worker.leader.lock() = None;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        worker.connected.send_replace(false);
        // Jitter keeps thousands of nodes from reconnecting in lockstep.
        let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
        if sleep_or_stop(&worker, backoff + Duration::from_millis(jitter)).await {
            return;
        }
    }
}

async fn sleep_or_stop(worker: &Worker, duration: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        () = worker.shutdown.cancelled() => true,
    }
}

enum SessionEnd {
    Stopped,
    Redirect(String),
    Ended(String),
    Failed(String),
}

async fn run_session(worker: &Arc<Worker>, target: &str, running: &[String]) -> SessionEnd {
    let channel = match shoal_proto::transport::connect_tls(
        target,
        worker.tls.client_config(),
        shoal_proto::MANAGER_SERVER_NAME,
    )
    .await
    {
        Ok(channel) => channel,
        Err(e) => return SessionEnd::Failed(e.to_string()),
    };
    let mut client = DispatcherClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let request = pb::SessionRequest {
        description: Some((&worker.description).into()),
        advertise_addr: worker.advertise_addr.clone(),
        running_task_ids: running.to_vec(),
    };
    let mut stream = match client.session(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            if let Some(leader) = status
                .metadata()
                .get(crate::manager::runtime::LEADER_ADDR_HEADER)
                .and_then(|v| v.to_str().ok())
                && leader != target
            {
                return SessionEnd::Redirect(leader.to_string());
            }
            return SessionEnd::Failed(status.message().to_string());
        }
    };
    *worker.leader.lock() = Some(target.to_string());
    worker.connected.send_replace(true);
    let session = worker.shutdown.child_token();
    let session_id: Arc<Mutex<String>> = Arc::default();
    let period: Arc<Mutex<Duration>> = Arc::new(Mutex::new(Duration::from_secs(1)));
    let heartbeats = tokio::spawn(heartbeat(
        client.clone(),
        session_id.clone(),
        period.clone(),
        session.clone(),
    ));
    let reports = tokio::spawn(report_statuses(
        client.clone(),
        worker.tasks.statuses.clone(),
        session_id.clone(),
        session.clone(),
    ));
    let end = loop {
        let message = tokio::select! {
            message = stream.message() => message,
            () = session.cancelled() => {
                break if worker.shutdown.is_cancelled() {
                    SessionEnd::Stopped
                } else {
                    SessionEnd::Ended("heartbeats were refused".into())
                };
            }
        };
        match message {
            Ok(Some(mut message)) => {
                if !message.session_id.is_empty() {
                    *session_id.lock() = message.session_id.clone();
                }
                if message.heartbeat_period_ms > 0 {
                    *period.lock() = Duration::from_millis(message.heartbeat_period_ms);
                }
                // Assignments first: a subscription may name a task that
                // arrives in the same message.
                let subscriptions = std::mem::take(&mut message.log_subscriptions);
                apply_message(worker, message);
                worker
                    .logs
                    .apply(subscriptions, &worker.tasks, &client, &session);
            }
            Ok(None) => break SessionEnd::Ended("the manager closed the session".into()),
            Err(status) => break SessionEnd::Ended(status.message().to_string()),
        }
    };
    session.cancel();
    heartbeats.abort();
    reports.abort();
    end
}

fn apply_message(worker: &Arc<Worker>, message: pb::SessionMessage) {
    if let Some(assignments) = message.assignments {
        let mut tasks = Vec::with_capacity(assignments.tasks.len());
        for task in &assignments.tasks {
            match Task::try_from(task) {
                Ok(task) => tasks.push(task),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an assignment this agent cannot read")
                }
            }
        }
        worker
            .tasks
            .assign(assignments.full, tasks, assignments.removed);
    }
    if let Some(managers) = message.managers
        && !managers.addrs.is_empty()
    {
        worker.managers.send_if_modified(|current| {
            let changed = *current != managers.addrs;
            if changed {
                *current = managers.addrs.clone();
            }
            changed
        });
    }
    if let Some(node) = message.node {
        tracing::debug!(
            version = node.meta.as_ref().map_or(0, |m| m.version),
            role = node.role,
            desired_role = node.spec.as_ref().map_or(0, |s| s.desired_role),
            "the leader sent this node's object"
        );
        worker.node.send_replace(Some(node));
    }
    if let Some(cluster) = message.cluster {
        worker.cluster.send_replace(Some(cluster));
    }
}

/// Beats every period on one stream for the whole session. The session
/// ends when the leader refuses a beat (it no longer knows the session),
/// the stream breaks, or no beat has been acknowledged for three periods.
async fn heartbeat(
    mut client: DispatcherClient<Channel>,
    session_id: Arc<Mutex<String>>,
    period: Arc<Mutex<Duration>>,
    session: CancellationToken,
) {
    let unanswered_limit = || 3 * (*period.lock()).max(Duration::from_secs(1));
    let (beats, outgoing) = tokio::sync::mpsc::channel(4);
    let opening = client.heartbeat(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    let mut acks = tokio::select! {
        opened = tokio::time::timeout(unanswered_limit(), opening) => match opened {
            Ok(Ok(response)) => response.into_inner(),
            _ => {
                session.cancel();
                return;
            }
        },
        () = session.cancelled() => return,
    };
    let mut last_ack = tokio::time::Instant::now();
    let mut next_beat = last_ack + *period.lock();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_beat) => {
                if last_ack.elapsed() >= unanswered_limit() {
                    session.cancel();
                    return;
                }
                // A full queue means earlier beats are stuck on the way;
                // the unanswered limit above deals with that.
                let _ = beats.try_send(pb::HeartbeatRequest {
                    session_id: session_id.lock().clone(),
                });
                next_beat = tokio::time::Instant::now() + *period.lock();
            }
            ack = acks.message() => match ack {
                Ok(Some(ack)) => {
                    last_ack = tokio::time::Instant::now();
                    if ack.period_ms > 0 {
                        *period.lock() = Duration::from_millis(ack.period_ms);
                    }
                }
                Ok(None) | Err(_) => {
                    session.cancel();
                    return;
                }
            },
            () = session.cancelled() => return,
        }
    }
}

async fn report_statuses(
    mut client: DispatcherClient<Channel>,
    statuses: Arc<tasks::StatusQueue>,
    session_id: Arc<Mutex<String>>,
    session: CancellationToken,
) {
    loop {
        if statuses.is_empty() {
            tokio::select! {
                () = statuses.wake.notified() => {}
                () = session.cancelled() => return,
            }
        }
        // Let a burst of reports gather into one call.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let reports = statuses.take();
        if reports.is_empty() {
            continue;
        }
        let request = pb::UpdateTaskStatusRequest {
            session_id: session_id.lock().clone(),
            updates: reports
                .iter()
                .map(|(id, status)| pb::TaskStatusUpdate {
                    task_id: id.clone(),
                    status: Some(status.into()),
                })
                .collect(),
        };
        if let Err(status) = client.update_task_status(request).await {
            tracing::debug!(error = %status.message(), "status report failed; will resend");
            statuses.put_back(reports);
            if status.code() == tonic::Code::NotFound {
                session.cancel();
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = session.cancelled() => return,
            }
        }
    }
}
