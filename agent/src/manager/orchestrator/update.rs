//! The update supervisor: rolling updates and rollbacks.
//!
//! A task is *outdated* when its spec differs from its service's. While a
//! service has outdated tasks, its slots are replaced in batches of
//! `parallelism` (0 = all at once): stop-first shuts the old task down in
//! the same transaction that creates its replacement, so the slot is never
//! seen empty; start-first creates the replacement first and shuts the old
//! task down once the new one is ready. A replacement is *ready* when it
//! runs, is healthy (if it has a health check), and has stayed so for the
//! monitor period. The next batch starts `delay` after the previous one is
//! ready.
//!
//! Failures are counted from the store, so a new leader resumes an update
//! where the old one left it: a task with the new spec that failed or was
//! rejected after the update started is a failure. When failures exceed
//! `max_failure_ratio` of the slots, the failure action applies: pause,
//! continue, or roll back to the previous spec (a rollback that fails
//! pauses).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    BATCH, LeaderContext, Reconciler, commit_groups, holds_slot, new_task, shutdown, slot_key,
};
use crate::ids::{now_ms, short};
use crate::manager::ProposeError;
use crate::store::*;

#[derive(Default)]
pub struct Updates {
    dirty: HashSet<String>,
    /// Services whose update or rollback is in progress, as of the last
    /// pass.
    updating: HashSet<String>,
    /// Per service: when its next batch may start (the delay after the
    /// previous batch became ready).
    next_batch_at: HashMap<String, Instant>,
    /// Services that had replacements in flight at the last pass.
    batch_in_flight: HashSet<String>,
    /// The earliest time a pass is due without events (delay or monitor
    /// period ending).
    wake_at: Option<Instant>,
}

impl Reconciler for Updates {
    const NAME: &'static str = "update supervisor";

    fn observe(&mut self, changes: &Changes) -> bool {
        for event in &changes.events {
            match &event.object {
                Object::Service(s) => {
                    self.dirty.insert(s.meta.id.clone());
                }
                // Tasks only move an update along while one is in
                // progress, and an update starts with a service change: a
                // task change elsewhere (100,000 tasks reporting running)
                // needs no pass.
                Object::Task(t) if self.updating.contains(&t.service_id) => {
                    self.dirty.insert(t.service_id.clone());
                }
                _ => {}
            }
        }
        !self.dirty.is_empty()
    }

    async fn reconcile(&mut self, ctx: &LeaderContext, full: bool) -> Result<(), ProposeError> {
        let now = Instant::now();
        let now_wall = now_ms();
        self.wake_at = None;
        let groups = {
            let tables = ctx.store.read();
            // Services mid-update are looked at on every pass: their
            // timers (delay, monitor period) fire without store events.
            // Only those and the changed ones are read, so a pass costs
            // what changed, not the number of services.
            let services: Vec<Arc<Service>> = if full {
                tables.services.iter().cloned().collect()
            } else {
                self.dirty
                    .iter()
                    .chain(self.updating.iter().filter(|id| !self.dirty.contains(*id)))
                    .filter_map(|id| tables.services.get(id).cloned())
                    .collect()
            };
            // Every service whose status could have changed is in hand:
            // the others stay as they were.
            self.updating = services
                .iter()
                .filter(|s| {
                    s.update_status
                        .as_ref()
                        .is_some_and(|u| u.state.in_progress())
                })
                .map(|s| s.meta.id.clone())
                .collect();
            // A service's ops commit together: a batch is guarded by its
            // service's version (see `step`).
            let mut groups = Vec::new();
            for service in services {
                let plan = Plan::of(&tables, &service, now_wall);
                let mut ops = Vec::new();
                self.step(&service, &plan, now, now_wall, &mut ops);
                groups.push(ops);
            }
            groups
        };
        self.dirty.clear();
        // Forget services that are gone.
        {
            let tables = ctx.store.read();
            self.next_batch_at
                .retain(|id, _| tables.services.get(id).is_some());
            self.batch_in_flight
                .retain(|id| tables.services.get(id).is_some());
        }
        commit_groups(ctx, groups).await
    }

    fn next_deadline(&self) -> Option<Duration> {
        self.wake_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

/// A slot's tasks with an outdated spec, and with the current one.
type OldAndNew = (Vec<Arc<Task>>, Vec<Arc<Task>>);

/// What a service's slots look like against its current spec.
struct Plan {
    /// Slots holding only outdated tasks, in slot order.
    outdated: Vec<Vec<Arc<Task>>>,
    /// Slots whose replacement is not ready yet, with the time (unix ms)
    /// at which it will be if it keeps running.
    in_flight: Vec<Option<i64>>,
    /// Outdated tasks whose start-first replacement is ready.
    superseded: Vec<Arc<Task>>,
    /// Replacements that failed since the update started.
    failures: Vec<Arc<Task>>,
    slots: usize,
}

impl Plan {
    fn of(tables: &Tables, service: &Service, now_wall: i64) -> Plan {
        let wanted = &service.spec.task;
        let started_at = service
            .update_status
            .as_ref()
            .map_or(0, |status| status.started_at);
        let monitor = service_config(service).monitor_ms as i64;
        let mut slots: BTreeMap<(u64, String), OldAndNew> = BTreeMap::new();
        let mut failures = Vec::new();
        for task in tables.tasks_of_service(&service.meta.id) {
            let current = &task.spec == wanted;
            if current
                && matches!(task.status.state, TaskState::Failed | TaskState::Rejected)
                && task.status.timestamp >= started_at
                && started_at > 0
            {
                failures.push(task.clone());
            }
            if !holds_slot(task) || task.status.state.is_terminal() {
                continue;
            }
            let (old, new) = slots.entry(slot_key(task)).or_default();
            if current {
                new.push(task.clone());
            } else {
                old.push(task.clone());
            }
        }
        let mut plan = Plan {
            outdated: Vec::new(),
            in_flight: Vec::new(),
            superseded: Vec::new(),
            failures,
            slots: slots.len(),
        };
        for (old, new) in slots.into_values() {
            if new.is_empty() {
                if !old.is_empty() {
                    plan.outdated.push(old);
                }
                continue;
            }
            let ready_at = new.iter().map(|t| ready_at(t, monitor)).min().flatten();
            match ready_at {
                Some(at) if at <= now_wall => plan.superseded.extend(old),
                _ if old.is_empty() && started_at == 0 => {}
                at => plan.in_flight.push(at),
            }
        }
        plan
    }
}

/// When a replacement counts as ready: running, healthy if checked, for
/// the monitor period. None while it is not running yet.
fn ready_at(task: &Task, monitor_ms: i64) -> Option<i64> {
    let healthy = matches!(task.status.health, Health::None | Health::Healthy);
    (task.status.state == TaskState::Running && healthy).then(|| task.status.timestamp + monitor_ms)
}

fn rolling_back(service: &Service) -> bool {
    service.update_status.as_ref().is_some_and(|s| {
        matches!(
            s.state,
            UpdateState::RollbackStarted | UpdateState::RollbackPaused
        )
    })
}

fn service_config(service: &Service) -> &UpdateConfig {
    if rolling_back(service) {
        &service.spec.rollback
    } else {
        &service.spec.update
    }
}

fn with_status(service: &Service, state: UpdateState, message: String, now_wall: i64) -> Op {
    let mut updated = service.clone();
    let started_at = match &service.update_status {
        Some(s) if !matches!(state, UpdateState::Updating) || s.state.in_progress() => s.started_at,
        _ => now_wall,
    };
    let completed_at = match state {
        UpdateState::Completed | UpdateState::RollbackCompleted => now_wall,
        _ => 0,
    };
    updated.update_status = Some(UpdateStatus {
        state,
        started_at,
        completed_at,
        message,
    });
    updated.meta.updated_at = now_wall;
    Op::Update(updated.into_object())
}

impl Updates {
    fn step(
        &mut self,
        service: &Service,
        plan: &Plan,
        now: Instant,
        now_wall: i64,
        ops: &mut Vec<Op>,
    ) {
        let id = &service.meta.id;
        let state = service.update_status.as_ref().map(|s| s.state);
        let work_left = !plan.outdated.is_empty() || !plan.in_flight.is_empty();
        match state {
            Some(UpdateState::Paused | UpdateState::RollbackPaused) => return,
            Some(UpdateState::Updating | UpdateState::RollbackStarted) => {}
            _ if plan.outdated.is_empty() => return,
            _ => {
                // A new spec arrived: the update starts now.
                ops.push(with_status(
                    service,
                    UpdateState::Updating,
                    "update in progress".into(),
                    now_wall,
                ));
                self.next_batch_at.remove(id);
                self.batch_in_flight.remove(id);
                return;
            }
        }
        let rollback = rolling_back(service);
        let config = service_config(service);

        // Start-first: old tasks whose replacement is ready go now.
        for task in &plan.superseded {
            ops.push(shutdown(task));
        }

        if let Some(failed) = plan.failures.last()
            && config.failure_action != FailureAction::Continue
            && plan.failures.len() as f64
                > f64::from(config.max_failure_ratio) * plan.slots.max(1) as f64
        {
            let cause = format!(
                "task {} failed: {}",
                short(&failed.meta.id),
                if failed.status.err.is_empty() {
                    &failed.status.message
                } else {
                    &failed.status.err
                }
            );
            let op = match (rollback, config.failure_action, &service.previous_spec) {
                (false, FailureAction::Rollback, Some(previous)) => {
                    let mut reverted = service.clone();
                    reverted.previous_spec = Some(service.spec.clone());
                    reverted.spec = previous.clone();
                    reverted.update_status = Some(UpdateStatus {
                        state: UpdateState::RollbackStarted,
                        started_at: now_wall,
                        completed_at: 0,
                        message: format!("update rolled back due to failure: {cause}"),
                    });
                    reverted.meta.updated_at = now_wall;
                    Op::Update(reverted.into_object())
                }
                (true, _, _) => with_status(
                    service,
                    UpdateState::RollbackPaused,
                    format!("rollback paused due to failure: {cause}"),
                    now_wall,
                ),
                _ => with_status(
                    service,
                    UpdateState::Paused,
                    format!("update paused due to failure: {cause}"),
                    now_wall,
                ),
            };
            ops.push(op);
            return;
        }

        if !work_left && plan.superseded.is_empty() {
            let (state, message) = if rollback {
                (UpdateState::RollbackCompleted, "rollback completed")
            } else {
                (UpdateState::Completed, "update completed")
            };
            ops.push(with_status(service, state, message.into(), now_wall));
            self.next_batch_at.remove(id);
            self.batch_in_flight.remove(id);
            return;
        }

        // Wake when an in-flight replacement's monitor period ends.
        for ready in plan.in_flight.iter().flatten() {
            let wait = Duration::from_millis((ready - now_wall).max(0) as u64 + 1);
            self.wake(now + wait);
        }

        let parallelism = match config.parallelism {
            0 => usize::MAX,
            n => n as usize,
        };
        if !plan.in_flight.is_empty() {
            self.batch_in_flight.insert(id.clone());
            return;
        }
        if self.batch_in_flight.remove(id) {
            self.next_batch_at
                .insert(id.clone(), now + Duration::from_millis(config.delay_ms));
        }
        if let Some(at) = self.next_batch_at.get(id)
            && *at > now
        {
            self.wake(*at);
            return;
        }
        self.next_batch_at.remove(id);
        let mut batch = Vec::new();
        for old in plan.outdated.iter().take(parallelism) {
            let Some(first) = old.first() else { continue };
            let mut replacement = new_task(service, first.slot, "", TaskState::Pending);
            if first.slot == 0 {
                // Global: the replacement belongs to the same node.
                replacement.node_id = first.node_id.clone();
            }
            if config.order == UpdateOrder::StopFirst {
                batch.extend(old.iter().map(|t| shutdown(t)));
            }
            batch.push(Op::Create(replacement.into_object()));
        }
        // The batch holds only if the service is still as read: a pause or
        // a new spec committed meanwhile fails the whole transaction, and
        // the next pass sees it instead of replacing one more batch. A
        // batch too large for one transaction (all slots of a large service
        // at once) goes unguarded in several.
        if ops.len() + batch.len() < BATCH {
            ops.push(Op::Update(service.clone().into_object()));
        }
        ops.extend(batch);
        self.batch_in_flight.insert(id.clone());
    }

    fn wake(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |current| current.min(at)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(index: u64) -> crate::raft::types::LogId {
        openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
    }

    fn apply(store: &Store, index: u64, tx: Transaction) -> TxResult {
        let mut results = store.apply(log_id(index), &[tx]);
        results.remove(0)
    }

    fn spec(image: &str) -> TaskSpec {
        TaskSpec {
            container: ContainerSpec {
                image: image.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A service updating from image `old` to `new`, two slots still old.
    fn updating_service(store: &Store) {
        let service = Service {
            meta: Meta::new("s1".into(), 1),
            spec: ServiceSpec {
                name: "web".into(),
                replicas: 2,
                task: spec("new"),
                ..Default::default()
            },
            previous_spec: None,
            update_status: Some(UpdateStatus {
                state: UpdateState::Updating,
                started_at: 1,
                completed_at: 0,
                message: "update in progress".into(),
            }),
        };
        let mut tx = Transaction::new(1).create(service);
        for slot in 1..=2 {
            tx = tx.create(Task {
                meta: Meta::new(format!("t{slot}"), 1),
                service_id: "s1".into(),
                slot,
                spec: spec("old"),
                desired_state: TaskState::Running,
                status: TaskStatus {
                    state: TaskState::Running,
                    timestamp: 1,
                    ..Default::default()
                },
                ..Default::default()
            });
        }
        assert!(apply(store, 1, tx).is_ok());
    }

    /// The supervisor's next batch for `s1`, planned from the store as it
    /// is now.
    fn next_batch(updates: &mut Updates, store: &Store) -> Vec<Op> {
        let tables = store.read();
        let service = tables.services.get("s1").cloned().expect("s1 exists");
        let now_wall = now_ms();
        let plan = Plan::of(&tables, &service, now_wall);
        let mut ops = Vec::new();
        updates.step(&service, &plan, Instant::now(), now_wall, &mut ops);
        ops
    }

    #[test]
    fn a_batch_planned_before_a_pause_replaces_nothing_after_it() {
        let store = Store::new();
        updating_service(&store);
        let mut updates = Updates::default();
        let batch = next_batch(&mut updates, &store);
        assert!(
            batch
                .iter()
                .any(|op| matches!(op, Op::Create(Object::Task(_)))),
            "{batch:?}"
        );

        // The operator's pause commits between the plan and its proposal.
        let mut paused = (**store.read().services.get("s1").expect("s1")).clone();
        paused.update_status = Some(UpdateStatus {
            state: UpdateState::Paused,
            started_at: 1,
            completed_at: 0,
            message: "paused by the operator".into(),
        });
        assert!(apply(&store, 2, Transaction::new(2).update(paused)).is_ok());

        let mut tx = Transaction::new(3);
        for op in batch {
            tx.push(op);
        }
        assert!(
            matches!(apply(&store, 3, tx), Err(TxError::Conflict { .. })),
            "the batch committed after the pause"
        );
        let tables = store.read();
        assert_eq!(tables.tasks_of_service("s1").count(), 2);
        assert!(
            tables
                .tasks_of_service("s1")
                .all(|t| t.desired_state == TaskState::Running),
            "an old task was shut down"
        );
        // Planned again, the paused service gets no batch.
        drop(tables);
        assert!(next_batch(&mut updates, &store).is_empty());
    }
}
