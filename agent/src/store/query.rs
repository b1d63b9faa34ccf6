//! Finding objects by what operators type: a full id, a unique id prefix,
//! or a name (hostname for nodes, service name for services).

use std::sync::Arc;

use super::{Node, Service, Tables, Task};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("{kind} {reference:?} not found: {}", list_command(kind))]
    NotFound {
        kind: &'static str,
        reference: String,
    },
    #[error("{kind} {reference:?} is ambiguous: it matches {candidates}; use a longer id prefix")]
    Ambiguous {
        kind: &'static str,
        reference: String,
        candidates: String,
    },
}

/// Where an operator sees the objects of `kind` that do exist.
fn list_command(kind: &str) -> &'static str {
    match kind {
        "node" => "'shoal node ls' lists the nodes",
        "service" => "'shoal service ls' lists the services",
        _ => "'shoal service ps SERVICE' lists a service's tasks",
    }
}

fn pick<T>(
    kind: &'static str,
    reference: &str,
    mut matches: Vec<Arc<T>>,
    id_of: impl Fn(&T) -> &str,
) -> Result<Arc<T>, LookupError> {
    match matches.len() {
        0 => Err(LookupError::NotFound {
            kind,
            reference: reference.to_string(),
        }),
        1 => Ok(matches.remove(0)),
        _ => Err(LookupError::Ambiguous {
            kind,
            reference: reference.to_string(),
            candidates: matches
                .iter()
                .take(5)
                .map(|o| crate::ids::short(id_of(o)).to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

impl Tables {
    /// A node by id, hostname or unique id prefix, in that order.
    pub fn find_node(&self, reference: &str) -> Result<Arc<Node>, LookupError> {
        if let Some(node) = self.nodes.get(reference) {
            return Ok(node.clone());
        }
        let by_name: Vec<_> = self
            .nodes
            .iter()
            .filter(|n| n.description.hostname == reference)
            .cloned()
            .collect();
        if !by_name.is_empty() {
            return pick("node", reference, by_name, |n| &n.meta.id);
        }
        let by_prefix = self
            .nodes
            .with_prefix(reference, 6)
            .into_iter()
            .cloned()
            .collect();
        pick("node", reference, by_prefix, |n| &n.meta.id)
    }

    /// A service by id, name or unique id prefix, in that order.
    pub fn find_service(&self, reference: &str) -> Result<Arc<Service>, LookupError> {
        if let Some(service) = self.services.get(reference) {
            return Ok(service.clone());
        }
        if let Some(service) = self.service_by_name(reference) {
            return Ok(service.clone());
        }
        let by_prefix = self
            .services
            .with_prefix(reference, 6)
            .into_iter()
            .cloned()
            .collect();
        pick("service", reference, by_prefix, |s| &s.meta.id)
    }

    /// A task by id or unique id prefix.
    pub fn find_task(&self, reference: &str) -> Result<Arc<Task>, LookupError> {
        if let Some(task) = self.tasks.get(reference) {
            return Ok(task.clone());
        }
        let by_prefix = self
            .tasks
            .with_prefix(reference, 6)
            .into_iter()
            .cloned()
            .collect();
        pick("task", reference, by_prefix, |t| &t.meta.id)
    }
}
