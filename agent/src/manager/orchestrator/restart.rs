//! The restart supervisor applies restart policies.
//!
//! A task meant to run (desired running) that stopped — completed, failed,
//! rejected — is replaced in its slot when its policy says so:
//!
//! - condition `any` restarts always, `on-failure` only after a failure or
//!   a non-zero exit, `none` never;
//! - at most `max_attempts` restarts within `window` (0: no limit, no
//!   window);
//! - after `delay`: the replacement is created in state `new` and promoted
//!   to `pending` (schedulable) once the delay has passed. The delay is
//!   computed from the replacement's timestamp, so a new leader keeps it.
//!
//! A task that is not restarted keeps its slot (desired running, terminal
//! state), so the orchestrators do not replace it either: that is what
//! "don't restart" means.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use super::{LeaderContext, Reconciler, commit, new_task, shutdown, slot_key};
use crate::ids::now_ms;
use crate::manager::ProposeError;
use crate::store::*;

#[derive(Default)]
pub struct Restarts {
    /// Stopped tasks to judge.
    stopped: HashSet<String>,
    /// Replacements waiting for their delay.
    waiting: HashSet<String>,
    /// Restart times per (service, slot key), for max attempts.
    history: HashMap<(String, (u64, String)), VecDeque<i64>>,
    next_due: Option<i64>,
}

fn wants_judging(task: &Task) -> bool {
    task.desired_state <= TaskState::Running && task.status.state.is_terminal()
}

fn should_restart(policy: &RestartPolicy, task: &Task) -> bool {
    match policy.condition {
        RestartCondition::None => false,
        RestartCondition::Any => true,
        RestartCondition::OnFailure => match task.status.state {
            TaskState::Complete => task.status.exit_code.is_some_and(|c| c != 0),
            _ => true,
        },
    }
}

fn delay_of(task: &Task) -> i64 {
    task.spec.restart.delay_ms as i64
}

impl Reconciler for Restarts {
    const NAME: &'static str = "restart supervisor";

    fn observe(&mut self, changes: &Changes) -> bool {
        let mut dirty = false;
        for event in &changes.events {
            let Object::Task(task) = &event.object else {
                continue;
            };
            if event.action == Action::Remove {
                self.stopped.remove(&task.meta.id);
                self.waiting.remove(&task.meta.id);
                continue;
            }
            if wants_judging(task) {
                let newly = !matches!(&event.old, Some(Object::Task(old)) if wants_judging(old));
                if newly && self.stopped.insert(task.meta.id.clone()) {
                    dirty = true;
                }
            }
            if task.status.state == TaskState::New && task.desired_state <= TaskState::Running {
                if self.waiting.insert(task.meta.id.clone()) {
                    dirty = true;
                }
            } else {
                self.waiting.remove(&task.meta.id);
            }
        }
        dirty
    }

    async fn reconcile(&mut self, ctx: &LeaderContext, full: bool) -> Result<(), ProposeError> {
        let now = now_ms();
        let ops = {
            let tables = ctx.store.read();
            if full {
                self.stopped.clear();
                self.waiting.clear();
                for task in tables.tasks.iter() {
                    if task.status.state == TaskState::New
                        && task.desired_state <= TaskState::Running
                    {
                        self.waiting.insert(task.meta.id.clone());
                    }
                }
                self.seed_history(&tables);
            }
            let mut ops = Vec::new();
            for id in std::mem::take(&mut self.stopped) {
                let Some(task) = tables.tasks.get(&id) else {
                    continue;
                };
                if !wants_judging(task) {
                    continue;
                }
                let Some(service) = tables.services.get(&task.service_id) else {
                    continue;
                };
                // Judge with the service's current policy.
                let policy = &service.spec.task.restart;
                if !should_restart(policy, task) {
                    continue;
                }
                let key = (task.service_id.clone(), slot_key(task));
                let attempts = self.history.entry(key).or_default();
                if policy.window_ms > 0 {
                    let since = now - policy.window_ms as i64;
                    while attempts.front().is_some_and(|t| *t < since) {
                        attempts.pop_front();
                    }
                }
                if policy.max_attempts > 0 && attempts.len() as u64 >= policy.max_attempts {
                    tracing::info!(task = %task.meta.id, "not restarting: max attempts reached");
                    continue;
                }
                attempts.push_back(now);
                let state = if policy.delay_ms > 0 {
                    TaskState::New
                } else {
                    TaskState::Pending
                };
                let node = if task.slot == 0 {
                    task.node_id.as_str()
                } else {
                    ""
                };
                let mut replacement = new_task(service, task.slot, node, state);
                // While an update is paused, a restart must not carry it on:
                // the replacement keeps the spec of the task it replaces.
                let paused = service.update_status.as_ref().is_some_and(|u| {
                    matches!(u.state, UpdateState::Paused | UpdateState::RollbackPaused)
                });
                if paused {
                    replacement.spec = task.spec.clone();
                    replacement.spec_version = task.spec_version;
                }
                if policy.delay_ms > 0 {
                    self.waiting.insert(replacement.meta.id.clone());
                }
                ops.push(shutdown(task));
                ops.push(Op::Create(replacement.into_object()));
            }
            // Promote replacements whose delay has passed.
            let mut next_due: Option<i64> = None;
            for id in self.waiting.clone() {
                let Some(task) = tables.tasks.get(&id) else {
                    self.waiting.remove(&id);
                    continue;
                };
                if task.status.state != TaskState::New || task.desired_state > TaskState::Running {
                    self.waiting.remove(&id);
                    continue;
                }
                let due = task.status.timestamp + delay_of(task);
                if due <= now {
                    ops.push(Op::Patch(Patch::TaskStatus {
                        id: id.clone(),
                        status: TaskStatus {
                            state: TaskState::Pending,
                            timestamp: now,
                            message: "restart delay passed".into(),
                            ..Default::default()
                        },
                    }));
                    self.waiting.remove(&id);
                } else {
                    next_due = Some(next_due.map_or(due, |d: i64| d.min(due)));
                }
            }
            self.next_due = next_due;
            ops
        };
        commit(ctx, ops).await
    }

    fn next_deadline(&self) -> Option<Duration> {
        self.next_due
            .map(|due| Duration::from_millis((due - now_ms()).max(0) as u64 + 1))
    }
}

impl Restarts {
    /// After a leader change, past restarts are read back from the task
    /// history (as far as retention kept it).
    fn seed_history(&mut self, tables: &Tables) {
        self.history.clear();
        for task in tables.tasks.iter() {
            // Every task beyond the first in a slot was a restart or a
            // replacement; count those that ended badly as attempts.
            if task.desired_state > TaskState::Running
                && matches!(
                    task.status.state,
                    TaskState::Failed | TaskState::Rejected | TaskState::Complete
                )
            {
                self.history
                    .entry((task.service_id.clone(), slot_key(task)))
                    .or_default()
                    .push_back(task.status.timestamp);
            }
        }
        for attempts in self.history.values_mut() {
            attempts.make_contiguous().sort_unstable();
        }
    }
}
