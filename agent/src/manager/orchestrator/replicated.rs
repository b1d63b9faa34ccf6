//! The replicated orchestrator: every replicated service has slots 1..N,
//! each held by one task.
//!
//! - A missing slot gets a new task (gaps are filled first).
//! - Scaling down shuts down whole slots: first those whose task is not
//!   running, then those on the nodes with the most tasks of the service,
//!   then the highest slot numbers.
//! - A task on a node that is down, drained or gone is shut down and its
//!   slot gets a replacement elsewhere. It does not move back.
//!
//! Tasks whose spec differs from the service's are the update
//! supervisor's business ([`super::update`]), not this one's.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::{LeaderContext, Reconciler, commit, holds_slot, new_task, node_keeps_tasks, shutdown};
use crate::manager::ProposeError;
use crate::store::*;

#[derive(Default)]
pub struct Replicated {
    dirty: HashSet<String>,
    all_dirty: bool,
}

impl Reconciler for Replicated {
    const NAME: &'static str = "replicated orchestrator";

    fn observe(&mut self, changes: &Changes) -> bool {
        for event in &changes.events {
            match &event.object {
                Object::Service(s) if s.spec.mode == ServiceMode::Replicated => {
                    self.dirty.insert(s.meta.id.clone());
                }
                Object::Task(t) if t.slot > 0 => {
                    let slot_freed = event.action == Action::Remove
                        || !holds_slot(t)
                        || matches!(&event.old, Some(Object::Task(old)) if holds_slot(old) != holds_slot(t));
                    if slot_freed {
                        self.dirty.insert(t.service_id.clone());
                    }
                }
                Object::Node(n) => {
                    let availability_changed = match &event.old {
                        Some(Object::Node(old)) => {
                            old.status.state != n.status.state
                                || old.spec.availability != n.spec.availability
                        }
                        _ => true,
                    };
                    if availability_changed || event.action == Action::Remove {
                        self.all_dirty = true;
                    }
                }
                _ => {}
            }
        }
        self.all_dirty || !self.dirty.is_empty()
    }

    async fn reconcile(&mut self, ctx: &LeaderContext, full: bool) -> Result<(), ProposeError> {
        let ops = {
            let tables = ctx.store.read();
            let services: Vec<Arc<Service>> = if full || self.all_dirty {
                tables
                    .services
                    .iter()
                    .filter(|s| s.spec.mode == ServiceMode::Replicated)
                    .cloned()
                    .collect()
            } else {
                self.dirty
                    .iter()
                    .filter_map(|id| tables.services.get(id))
                    .filter(|s| s.spec.mode == ServiceMode::Replicated)
                    .cloned()
                    .collect()
            };
            let mut ops = Vec::new();
            for service in services {
                reconcile_service(&tables, &service, &mut ops);
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

fn reconcile_service(tables: &Tables, service: &Service, ops: &mut Vec<Op>) {
    // Slot → tasks holding it, on nodes that can keep them.
    let mut held: BTreeMap<u64, Vec<Arc<Task>>> = BTreeMap::new();
    for task in tables.tasks_of_service(&service.meta.id) {
        if !holds_slot(task) || task.slot == 0 {
            continue;
        }
        if !task.status.state.is_terminal() && !node_keeps_tasks(tables, &task.node_id) {
            // Replaced below, like any missing slot.
            ops.push(shutdown(task));
            continue;
        }
        held.entry(task.slot).or_default().push(task.clone());
    }
    let desired = service.spec.replicas as usize;
    let have = held.len();
    if have < desired {
        let taken: BTreeSet<u64> = held.keys().copied().collect();
        let free = (1u64..).filter(|s| !taken.contains(s)).take(desired - have);
        for slot in free {
            ops.push(Op::Create(
                new_task(service, slot, "", TaskState::Pending).into_object(),
            ));
        }
    } else if have > desired {
        for slot in pick_slots_to_remove(&held, have - desired) {
            for task in &held[&slot] {
                ops.push(shutdown(task));
            }
        }
    }
}

/// Chooses `count` slots to give up: slots without a running task first,
/// then one at a time from whichever node holds the most slots of the
/// service (highest slot number first), so what remains stays balanced.
fn pick_slots_to_remove(held: &BTreeMap<u64, Vec<Arc<Task>>>, count: usize) -> Vec<u64> {
    let node_of =
        |tasks: &Vec<Arc<Task>>| tasks.first().map(|t| t.node_id.clone()).unwrap_or_default();
    let mut per_node: HashMap<String, Vec<u64>> = HashMap::new();
    let mut not_running = Vec::new();
    for (slot, tasks) in held {
        if tasks.iter().any(|t| t.status.state == TaskState::Running) {
            per_node.entry(node_of(tasks)).or_default().push(*slot);
        } else {
            not_running.push(*slot);
        }
    }
    not_running.reverse();
    let mut chosen: Vec<u64> = not_running.into_iter().take(count).collect();
    let mut heap: std::collections::BinaryHeap<(usize, String)> = per_node
        .iter()
        .map(|(node, slots)| (slots.len(), node.clone()))
        .collect();
    while chosen.len() < count {
        let Some((_, node)) = heap.pop() else { break };
        let Some(slots) = per_node.get_mut(&node) else {
            continue;
        };
        if let Some(slot) = slots.pop() {
            chosen.push(slot);
        }
        if !slots.is_empty() {
            heap.push((slots.len(), node));
        }
    }
    chosen
}
