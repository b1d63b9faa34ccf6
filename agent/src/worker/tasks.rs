//! Running the tasks assigned to this node.
//!
//! Each assigned task gets a runner that drives its workload through the
//! executor and reports every state it reaches:
//!
//! ```text
//!  assigned → accepted → preparing → starting → running → complete | failed
//!                  │          │           │          │
//!                  └──────────┴───────────┴──────────┴─ desired shutdown → shutdown
//!  prepare fails → rejected         start fails → failed      unhealthy → failed
//! ```
//!
//! Stopping is idempotent. A task that leaves the assignment set (deleted,
//! or moved away while this node was down) has its workload stopped and
//! removed, so nothing runs twice. After an agent restart, workloads that
//! are still running are adopted rather than restarted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::executor::{ExecError, Executor, Existing};
use crate::ids::now_ms;
use crate::store::{Health, Task, TaskState, TaskStatus};

/// Default time a workload gets between SIGTERM and SIGKILL.
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// How often a running task's health is looked at.
const HEALTH_POLL: Duration = Duration::from_secs(1);

/// Status reports waiting to reach the leader; the latest per task wins.
#[derive(Default)]
pub struct StatusQueue {
    pending: Mutex<HashMap<String, TaskStatus>>,
    pub wake: Notify,
}

impl StatusQueue {
    pub fn report(&self, task_id: &str, status: TaskStatus) {
        {
            let mut pending = self.pending.lock();
            let keep_existing = pending
                .get(task_id)
                .is_some_and(|existing| existing.state > status.state);
            if !keep_existing {
                pending.insert(task_id.to_string(), status);
            }
        }
        self.wake.notify_one();
    }

    pub fn take(&self) -> Vec<(String, TaskStatus)> {
        self.pending.lock().drain().collect()
    }

    /// Puts back reports that could not be delivered, unless newer ones
    /// arrived meanwhile.
    pub fn put_back(&self, reports: Vec<(String, TaskStatus)>) {
        let mut pending = self.pending.lock();
        for (id, status) in reports {
            pending.entry(id).or_insert(status);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.lock().is_empty()
    }
}

struct Runner {
    assignment: watch::Sender<Task>,
    stop: CancellationToken,
}

pub struct TaskManager {
    executor: Arc<dyn Executor>,
    pub statuses: Arc<StatusQueue>,
    runners: Mutex<HashMap<String, Runner>>,
    /// Workloads found when the agent started, by task id.
    existing: Mutex<HashMap<String, Existing>>,
    shutdown: CancellationToken,
}

impl TaskManager {
    pub fn new(executor: Arc<dyn Executor>, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(TaskManager {
            executor,
            statuses: Arc::new(StatusQueue::default()),
            runners: Mutex::new(HashMap::new()),
            existing: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// Looks for workloads left running by an earlier life of the agent.
    pub async fn discover(&self) -> Vec<String> {
        match self.executor.list().await {
            Ok(found) => {
                let running = found
                    .iter()
                    .filter(|e| e.running)
                    .map(|e| e.task_id.clone())
                    .collect();
                *self.existing.lock() = found.into_iter().map(|e| (e.task_id.clone(), e)).collect();
                running
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not list existing workloads");
                Vec::new()
            }
        }
    }

    /// The tasks assigned to this node, as last assigned.
    pub fn assigned(&self) -> Vec<Task> {
        self.runners
            .lock()
            .values()
            .map(|runner| runner.assignment.borrow().clone())
            .collect()
    }

    /// Whether `task_id` is still assigned to this node.
    pub fn holds(&self, task_id: &str) -> bool {
        self.runners.lock().contains_key(task_id)
    }

    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.executor
    }

    /// Applies an assignment message from the leader.
    pub fn assign(self: &Arc<Self>, full: bool, tasks: Vec<Task>, removed: Vec<String>) {
        let mut runners = self.runners.lock();
        let assigned: std::collections::HashSet<String> =
            tasks.iter().map(|t| t.meta.id.clone()).collect();
        for task in tasks {
            match runners.get(&task.meta.id) {
                Some(runner) => {
                    let newer = task.meta.version >= runner.assignment.borrow().meta.version;
                    if newer {
                        runner.assignment.send_replace(task);
                    }
                }
                None => {
                    let (tx, rx) = watch::channel(task.clone());
                    let stop = self.shutdown.child_token();
                    let existing = self.existing.lock().remove(&task.meta.id);
                    tokio::spawn(run_task(
                        self.executor.clone(),
                        self.statuses.clone(),
                        rx,
                        existing,
                        stop.clone(),
                    ));
                    runners.insert(
                        task.meta.id.clone(),
                        Runner {
                            assignment: tx,
                            stop,
                        },
                    );
                }
            }
        }
        let mut gone: Vec<String> = removed;
        if full {
            gone.extend(runners.keys().filter(|id| !assigned.contains(*id)).cloned());
            // Workloads of tasks this node no longer has (replaced while it
            // was away): remove them so nothing runs twice.
            let leftovers: Vec<Existing> = self
                .existing
                .lock()
                .drain()
                .map(|(_, e)| e)
                .filter(|e| !assigned.contains(&e.task_id))
                .collect();
            for leftover in leftovers {
                let executor = self.executor.clone();
                tokio::spawn(async move {
                    tracing::info!(task = %leftover.task_id, "removing the workload of a task no longer assigned here");
                    remove_workload(&*executor, &leftover.task_id).await;
                });
            }
        }
        for id in gone {
            // Dropping the sender tells the runner the task is gone.
            if let Some(runner) = runners.remove(&id) {
                drop(runner.assignment);
            }
        }
    }

    /// Stops the runners without touching workloads: they keep running and
    /// are adopted on the next start.
    pub fn detach_all(&self) {
        for (_, runner) in self.runners.lock().drain() {
            runner.stop.cancel();
        }
    }

    pub fn running_count(&self) -> usize {
        self.runners.lock().len()
    }
}

async fn remove_workload(executor: &dyn Executor, task_id: &str) {
    let placeholder = Task {
        meta: crate::store::Meta {
            id: task_id.to_string(),
            ..Default::default()
        },
        ..Default::default()
    };
    let _ = executor.stop(&placeholder, DEFAULT_STOP_GRACE).await;
    if let Err(e) = executor.remove(task_id).await {
        tracing::warn!(task = task_id, error = %e, "removing a workload failed");
    }
}

fn status(state: TaskState, message: &str) -> TaskStatus {
    TaskStatus {
        state,
        timestamp: now_ms(),
        message: message.to_string(),
        ..Default::default()
    }
}

fn grace(task: &Task) -> Duration {
    match task.spec.container.stop_grace_period_ms {
        0 => DEFAULT_STOP_GRACE,
        ms => Duration::from_millis(ms),
    }
}

/// The outcome of waiting on a running workload.
enum Ended {
    Exited(super::executor::Exit),
    Unhealthy,
    ShutdownWanted,
    Removed,
    Detached,
    WaitFailed(String),
}

/// Drives one task. Returns when the task is gone from this node or the
/// agent stops.
async fn run_task(
    executor: Arc<dyn Executor>,
    statuses: Arc<StatusQueue>,
    mut assignment: watch::Receiver<Task>,
    existing: Option<Existing>,
    stop: CancellationToken,
) {
    let task = assignment.borrow().clone();
    let id = task.meta.id.clone();
    let mut current = task.status.clone();
    let report = |status: TaskStatus, current: &mut TaskStatus| {
        *current = status.clone();
        statuses.report(&id, status);
    };

    if !current.state.is_terminal() {
        let adopt = existing.filter(|e| !e.container_id.is_empty());
        let started = match adopt {
            Some(found) if found.running => {
                tracing::info!(task = %id, container = %found.container_id, "adopting a running workload");
                let mut s = status(TaskState::Running, "adopted after agent restart");
                s.container_id = found.container_id.clone();
                s.timestamp = current.timestamp.max(1);
                if current.state != TaskState::Running {
                    report(s, &mut current);
                }
                true
            }
            Some(found) => {
                // It ended while the agent was away.
                let code = found.exit_code.unwrap_or(-1);
                let mut s = if code == 0 {
                    status(TaskState::Complete, "finished")
                } else {
                    let mut s = status(TaskState::Failed, "task: non-zero exit");
                    s.err = format!("task: non-zero exit ({code})");
                    s
                };
                s.exit_code = Some(code);
                s.container_id = found.container_id.clone();
                report(s, &mut current);
                false
            }
            None if current.state == TaskState::Running || current.state == TaskState::Starting => {
                let mut s = status(TaskState::Failed, "task: workload lost");
                s.err = "the task's workload is gone (the node restarted or it was removed outside Shoal)".into();
                report(s, &mut current);
                false
            }
            None => {
                start_task(&*executor, &task, &mut assignment, &stop, &mut |s| {
                    report(s, &mut current)
                })
                .await
            }
        };
        if started {
            let ended =
                supervise(&*executor, &mut assignment, &stop, &statuses, &mut current).await;
            let latest = assignment.borrow().clone();
            match ended {
                Ended::Detached => return,
                Ended::Exited(exit) => {
                    let mut s = if exit.code == 0 {
                        status(TaskState::Complete, "finished")
                    } else {
                        let mut s = status(TaskState::Failed, "task: non-zero exit");
                        s.err = match &exit.message {
                            Some(m) => format!("task: non-zero exit ({}): {m}", exit.code),
                            None => format!("task: non-zero exit ({})", exit.code),
                        };
                        s
                    };
                    s.exit_code = Some(exit.code);
                    s.container_id = current.container_id.clone();
                    s.health = current.health;
                    report(s, &mut current);
                }
                Ended::Unhealthy => {
                    let _ = executor.stop(&latest, grace(&latest)).await;
                    let mut s = status(TaskState::Failed, "task: unhealthy container");
                    s.err = "task: unhealthy container".into();
                    s.health = Health::Unhealthy;
                    s.container_id = current.container_id.clone();
                    report(s, &mut current);
                }
                Ended::WaitFailed(e) => {
                    let mut s = status(TaskState::Failed, "task: lost track of the workload");
                    s.err = e;
                    s.container_id = current.container_id.clone();
                    report(s, &mut current);
                }
                Ended::ShutdownWanted | Ended::Removed => {
                    if let Err(e) = executor.stop(&latest, grace(&latest)).await {
                        tracing::warn!(task = %id, error = %e, "stopping the workload failed");
                    }
                    let mut s = status(TaskState::Shutdown, "shutdown");
                    s.container_id = current.container_id.clone();
                    s.exit_code = match executor.wait(&latest).await {
                        Ok(exit) => Some(exit.code),
                        Err(_) => None,
                    };
                    report(s, &mut current);
                    if matches!(ended, Ended::Removed) {
                        remove_workload(&*executor, &id).await;
                        return;
                    }
                }
            }
        }
    }

    // Terminal: keep the workload (its logs) until the task is deleted or
    // is to be removed.
    loop {
        let desired = assignment.borrow().desired_state;
        if desired == TaskState::Remove {
            remove_workload(&*executor, &id).await;
        }
        tokio::select! {
            changed = assignment.changed() => {
                if changed.is_err() {
                    remove_workload(&*executor, &id).await;
                    return;
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Takes a task from assigned to running. Returns whether it runs.
async fn start_task(
    executor: &dyn Executor,
    task: &Task,
    assignment: &mut watch::Receiver<Task>,
    stop: &CancellationToken,
    report: &mut impl FnMut(TaskStatus),
) -> bool {
    let shutdown_wanted = |a: &watch::Receiver<Task>| a.borrow().desired_state > TaskState::Running;
    if shutdown_wanted(assignment) {
        report(status(TaskState::Shutdown, "shutdown before start"));
        return false;
    }
    report(status(TaskState::Accepted, "accepted"));
    report(status(TaskState::Preparing, "preparing"));
    let container_id = tokio::select! {
        prepared = executor.prepare(task) => match prepared {
            Ok(id) => id,
            Err(e) => {
                let mut s = status(TaskState::Rejected, "preparing failed");
                s.err = e.to_string();
                report(s);
                return false;
            }
        },
        () = stop.cancelled() => return false,
    };
    if shutdown_wanted(assignment) {
        let _ = executor.remove(&task.meta.id).await;
        report(status(TaskState::Shutdown, "shutdown before start"));
        return false;
    }
    let mut starting = status(TaskState::Starting, "starting");
    starting.container_id = container_id.clone();
    report(starting);
    if let Err(e) = executor.start(task).await {
        let mut s = status(
            match e {
                ExecError::Rejected(_) => TaskState::Rejected,
                _ => TaskState::Failed,
            },
            "starting failed",
        );
        s.err = e.to_string();
        s.container_id = container_id;
        report(s);
        return false;
    }
    let mut running = status(TaskState::Running, "started");
    running.container_id = container_id;
    if has_healthcheck(task) {
        running.health = Health::Starting;
    }
    report(running);
    true
}

fn has_healthcheck(task: &Task) -> bool {
    let container = &task.spec.container;
    !container.no_healthcheck
        && container
            .healthcheck
            .as_ref()
            .is_some_and(|h| h.test.first().is_some_and(|t| t != "NONE"))
}

/// Watches a running task until it ends, is to stop, or turns unhealthy.
async fn supervise(
    executor: &dyn Executor,
    assignment: &mut watch::Receiver<Task>,
    stop: &CancellationToken,
    statuses: &StatusQueue,
    current: &mut TaskStatus,
) -> Ended {
    let task = assignment.borrow().clone();
    let wait = executor.wait(&task);
    tokio::pin!(wait);
    let mut health_tick = tokio::time::interval(HEALTH_POLL);
    health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if assignment.borrow().desired_state > TaskState::Running {
            return Ended::ShutdownWanted;
        }
        tokio::select! {
            exit = &mut wait => return match exit {
                Ok(exit) => Ended::Exited(exit),
                Err(e) => Ended::WaitFailed(e.to_string()),
            },
            changed = assignment.changed() => {
                if changed.is_err() {
                    return Ended::Removed;
                }
            }
            _ = health_tick.tick() => {
                let Ok(health) = executor.health(&task).await else { continue };
                if health == Health::Unhealthy {
                    return Ended::Unhealthy;
                }
                if health != current.health && health != Health::None {
                    let mut s = current.clone();
                    s.health = health;
                    s.message = format!("health: {}", match health {
                        Health::Healthy => "healthy",
                        Health::Starting => "starting",
                        _ => "unknown",
                    });
                    *current = s.clone();
                    statuses.report(&task.meta.id, s);
                }
            }
            () = stop.cancelled() => return Ended::Detached,
        }
    }
}
