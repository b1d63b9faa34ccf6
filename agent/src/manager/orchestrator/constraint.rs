//! The constraint enforcer: when a node changes (labels, role, engine
//! labels, availability), tasks on it that no longer belong there are
//! shut down; the orchestrators place replacements elsewhere.

use std::collections::HashSet;
use std::time::Duration;

use super::{LeaderContext, Reconciler, commit, shutdown};
use crate::manager::ProposeError;
use crate::manager::scheduler::{constraints_of, satisfies};
use crate::store::*;

#[derive(Default)]
pub struct Enforcer {
    /// Nodes that changed since the last pass.
    dirty: HashSet<String>,
}

impl Reconciler for Enforcer {
    const NAME: &'static str = "constraint enforcer";

    fn observe(&mut self, changes: &Changes) -> bool {
        let mut dirty = false;
        for event in &changes.events {
            if let (Object::Node(node), Some(Object::Node(old))) = (&event.object, &event.old) {
                let changed = old.spec != node.spec
                    || old.role != node.role
                    || old.description.engine_labels != node.description.engine_labels;
                if changed {
                    self.dirty.insert(node.meta.id.clone());
                    dirty = true;
                }
            }
        }
        dirty
    }

    async fn reconcile(&mut self, ctx: &LeaderContext, full: bool) -> Result<(), ProposeError> {
        let ops = {
            let tables = ctx.store.read();
            let nodes: Vec<String> = if full {
                tables.nodes.iter().map(|n| n.meta.id.clone()).collect()
            } else {
                self.dirty.drain().collect()
            };
            let mut ops = Vec::new();
            for node_id in nodes {
                let Some(node) = tables.nodes.get(&node_id) else {
                    continue;
                };
                let drained = node.spec.availability == Availability::Drain;
                for task in tables.tasks_on_node(&node_id) {
                    if task.desired_state > TaskState::Running || task.status.state.is_terminal() {
                        continue;
                    }
                    if drained || !satisfies(node, &constraints_of(&task.spec.placement)) {
                        ops.push(shutdown(task));
                    }
                }
            }
            ops
        };
        commit(ctx, ops).await
    }

    fn next_deadline(&self) -> Option<Duration> {
        None
    }
}
