//! The task reaper keeps task history bounded and removes what is done.
//!
//! - Per slot (per node for global services), at most the cluster's task
//!   history limit of tasks are kept (default 5, the current one
//!   included); the oldest finished ones go first.
//! - Tasks to be removed (service removed, node removed) are deleted once
//!   finished, or at once if no node ever had them.
//! - Tasks stopped before any node got them are marked shut down, and
//!   tasks left on a removed node are marked orphaned: no worker will ever
//!   report on them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::{LeaderContext, Reconciler, commit, remove, slot_key};
use crate::ids::now_ms;
use crate::manager::ProposeError;
use crate::store::*;

/// A task's place within its service: see [`slot_key`].
type SlotKey = (u64, String);

#[derive(Default)]
pub struct Reaper {
    /// Per service, the slots to look at; `None` for all of them. Slots,
    /// not services: creating 100,000 tasks must not cost a walk of the
    /// whole service per batch (the store finds a slot's tasks by range).
    dirty: HashMap<String, Option<HashSet<SlotKey>>>,
    all_dirty: bool,
}

impl Reaper {
    fn mark_slot(&mut self, task: &Task) {
        let slots = self
            .dirty
            .entry(task.service_id.clone())
            .or_insert_with(|| Some(HashSet::new()));
        if let Some(slots) = slots {
            slots.insert(slot_key(task));
        }
    }
}

impl Reconciler for Reaper {
    const NAME: &'static str = "task reaper";

    fn observe(&mut self, changes: &Changes) -> bool {
        for event in &changes.events {
            match &event.object {
                Object::Task(t) => {
                    let relevant = t.status.state.is_terminal()
                        || t.desired_state > TaskState::Running
                        || event.action == Action::Create;
                    if relevant && event.action != Action::Remove {
                        self.mark_slot(t);
                    }
                }
                Object::Service(s) if event.action == Action::Remove => {
                    self.dirty.insert(s.meta.id.clone(), None);
                }
                Object::Cluster(_) => self.all_dirty = true,
                Object::Node(_) if event.action == Action::Remove => self.all_dirty = true,
                _ => {}
            }
        }
        self.all_dirty || !self.dirty.is_empty()
    }

    async fn reconcile(&mut self, ctx: &LeaderContext, full: bool) -> Result<(), ProposeError> {
        let ops = {
            let tables = ctx.store.read();
            let retention = tables
                .cluster()
                .map_or(5, |c| c.spec.task_history_retention.max(1))
                as usize;
            let mut ops = Vec::new();
            if full || self.all_dirty {
                let mut ids: HashSet<&str> =
                    tables.tasks.iter().map(|t| t.service_id.as_str()).collect();
                ids.extend(tables.services.iter().map(|s| s.meta.id.as_str()));
                for service_id in ids {
                    reap_service(&tables, service_id, None, retention, &mut ops);
                }
            } else {
                for (service_id, slots) in &self.dirty {
                    reap_service(&tables, service_id, slots.as_ref(), retention, &mut ops);
                }
            }
            ops
        };
        self.dirty.clear();
        self.all_dirty = false;
        commit(ctx, ops).await
    }

    fn next_deadline(&self) -> Option<Duration> {
        None
    }
}

fn delete(task: &Task) -> Op {
    Op::Delete {
        kind: Kind::Task,
        id: task.meta.id.clone(),
        version: None,
    }
}

fn mark(task: &Task, state: TaskState, message: &str) -> Op {
    Op::Patch(Patch::TaskStatus {
        id: task.meta.id.clone(),
        status: TaskStatus {
            state,
            timestamp: now_ms(),
            message: message.to_string(),
            err: task.status.err.clone(),
            exit_code: task.status.exit_code,
            container_id: task.status.container_id.clone(),
            ..Default::default()
        },
    })
}

/// Reaps the tasks of `service_id` in `only` those slots, or in all.
fn reap_service(
    tables: &Tables,
    service_id: &str,
    only: Option<&HashSet<SlotKey>>,
    retention: usize,
    ops: &mut Vec<Op>,
) {
    let service_exists = tables.services.get(service_id).is_some();
    let tasks: Box<dyn Iterator<Item = &Arc<Task>>> = match only {
        None => Box::new(tables.tasks_of_service(service_id)),
        Some(only) => Box::new(
            only.iter()
                .flat_map(|(slot, node_id)| tables.tasks_in_slot(service_id, *slot, node_id)),
        ),
    };
    let mut slots: BTreeMap<SlotKey, Vec<Arc<Task>>> = BTreeMap::new();
    for task in tasks {
        let key = slot_key(task);
        let never_assigned = task.status.state < TaskState::Assigned;
        let finished = task.status.state.is_terminal();
        let node_gone = !task.node_id.is_empty() && tables.nodes.get(&task.node_id).is_none();
        if task.desired_state == TaskState::Remove || !service_exists {
            if finished || never_assigned || node_gone {
                ops.push(delete(task));
            } else if task.desired_state != TaskState::Remove {
                ops.push(remove(task));
            }
            continue;
        }
        if task.desired_state > TaskState::Running && !finished {
            if never_assigned {
                ops.push(mark(
                    task,
                    TaskState::Shutdown,
                    "shutdown before a node got it",
                ));
            } else if node_gone {
                ops.push(mark(task, TaskState::Orphaned, "its node was removed"));
            }
        }
        slots.entry(key).or_default().push(task.clone());
    }
    for tasks in slots.values_mut() {
        if tasks.len() <= retention {
            continue;
        }
        // Oldest first; only finished tasks that no longer hold the slot go.
        tasks.sort_by_key(|t| (t.meta.created_at, t.meta.id.clone()));
        let mut excess = tasks.len() - retention;
        for task in tasks.iter() {
            if excess == 0 {
                break;
            }
            if task.desired_state > TaskState::Running && task.status.state.is_terminal() {
                ops.push(delete(task));
                excess -= 1;
            }
        }
    }
}
