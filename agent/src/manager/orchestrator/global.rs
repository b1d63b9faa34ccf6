//! The global orchestrator: one task per eligible node for every global
//! service. A node is eligible when it is not down, is active (a paused
//! node keeps its task but gets no new one) and satisfies the service's
//! constraints. Nodes that join get a task; drained, down, removed or no
//! longer matching nodes lose theirs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::{LeaderContext, Reconciler, commit, holds_slot, new_task, shutdown};
use crate::manager::ProposeError;
use crate::manager::scheduler::{constraints_of, satisfies};
use crate::store::*;

#[derive(Default)]
pub struct Global {
    dirty: HashSet<String>,
    all_dirty: bool,
}

impl Reconciler for Global {
    const NAME: &'static str = "global orchestrator";

    fn observe(&mut self, changes: &Changes) -> bool {
        for event in &changes.events {
            match &event.object {
                Object::Service(s) if s.spec.mode == ServiceMode::Global => {
                    self.dirty.insert(s.meta.id.clone());
                }
                Object::Task(t) if t.slot == 0 => {
                    let slot_freed = event.action == Action::Remove
                        || matches!(&event.old, Some(Object::Task(old)) if holds_slot(old) != holds_slot(t));
                    if slot_freed {
                        self.dirty.insert(t.service_id.clone());
                    }
                }
                Object::Node(_) => self.all_dirty = true,
                _ => {}
            }
        }
        self.all_dirty || !self.dirty.is_empty()
    }

    async fn reconcile(&mut self, ctx: &LeaderContext, full: bool) -> Result<(), ProposeError> {
        let ops = {
            let tables = ctx.store.read();
            let services: Vec<Arc<Service>> = tables
                .services
                .iter()
                .filter(|s| s.spec.mode == ServiceMode::Global)
                .filter(|s| full || self.all_dirty || self.dirty.contains(&s.meta.id))
                .cloned()
                .collect();
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
    let constraints = constraints_of(&service.spec.task.placement);
    let mut held: HashMap<&str, Vec<&Arc<Task>>> = HashMap::new();
    for task in tables.tasks_of_service(&service.meta.id) {
        if holds_slot(task) && task.slot == 0 {
            held.entry(task.node_id.as_str()).or_default().push(task);
        }
    }
    for node in tables.nodes.iter() {
        let down = node.status.state == NodeState::Down;
        let matches = satisfies(node, &constraints);
        let keeps = !down && node.spec.availability != Availability::Drain && matches;
        match held.remove(node.meta.id.as_str()) {
            Some(tasks) => {
                if !keeps {
                    for task in tasks {
                        if !task.status.state.is_terminal() {
                            ops.push(shutdown(task));
                        }
                    }
                }
            }
            None => {
                if keeps && node.spec.availability == Availability::Active {
                    ops.push(Op::Create(
                        new_task(service, 0, &node.meta.id, TaskState::Pending).into_object(),
                    ));
                }
            }
        }
    }
    // Tasks of nodes that are gone.
    for tasks in held.into_values() {
        for task in tasks {
            if !task.status.state.is_terminal() || task.desired_state <= TaskState::Running {
                ops.push(shutdown(task));
            }
        }
    }
}
