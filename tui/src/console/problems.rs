//! Triage: what needs attention, worst first — nodes down, unreachable
//! managers, quorum at risk, paused updates, services short of replicas,
//! tasks failing again and again.

use std::collections::HashMap;

use shoal_proto::v1 as pb;

use super::state::{Level, Model};
use crate::cli::output::manager_status_name;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Node(String),
    Service(String),
    Cluster,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub level: Level,
    pub text: String,
    pub target: Target,
}

impl Problem {
    /// A stable row key for selection.
    pub fn key(&self) -> String {
        match &self.target {
            Target::Node(id) => format!("node:{id}:{}", self.text),
            Target::Service(id) => format!("service:{id}:{}", self.text),
            Target::Cluster => format!("cluster:{}", self.text),
        }
    }
}

/// Failures in a slot's history that make a task "failing repeatedly".
const REPEATED: usize = 3;

pub fn find(model: &Model) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(info) = &model.info
        && info.managers > 0
    {
        if info.reachable_managers * 2 <= info.managers {
            problems.push(Problem {
                level: Level::Error,
                text: format!(
                    "quorum lost: {} of {} managers reachable",
                    info.reachable_managers, info.managers
                ),
                target: Target::Cluster,
            });
        } else if info.fault_tolerance == 0 && info.managers > 1 {
            problems.push(Problem {
                level: Level::Warn,
                text: "quorum at risk: losing one more manager stops all writes".into(),
                target: Target::Cluster,
            });
        }
    }
    for (id, node) in &model.nodes {
        let host = model.hostname(id);
        if node
            .status
            .as_ref()
            .is_some_and(|s| s.state == pb::NodeState::Down as i32)
        {
            problems.push(Problem {
                level: Level::Error,
                text: format!("node {host} is down"),
                target: Target::Node(id.clone()),
            });
        } else if manager_status_name(node) == Some("unreachable") {
            problems.push(Problem {
                level: Level::Error,
                text: format!("manager {host} is unreachable"),
                target: Target::Node(id.clone()),
            });
        }
    }
    for (id, service) in &model.services {
        let name = service
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        if let Some(update) = &service.update_status
            && matches!(
                pb::UpdateState::try_from(update.state),
                Ok(pb::UpdateState::Paused | pb::UpdateState::RollbackPaused)
            )
        {
            problems.push(Problem {
                level: Level::Error,
                text: format!("{name}: update paused: {}", update.message),
                target: Target::Service(id.clone()),
            });
        }
        let (running, desired) = model.replicas(service);
        if running < desired {
            problems.push(Problem {
                level: Level::Warn,
                text: format!("{name}: {running}/{desired} replicas running"),
                target: Target::Service(id.clone()),
            });
        }
        // Failures per slot, with the newest failure's error.
        let mut failures: HashMap<(u64, &str), (usize, &pb::Task)> = HashMap::new();
        // Newest first within a slot: the first seen is the newest.
        for task in model.failed_tasks_of(id) {
            let entry = failures
                .entry(crate::cli::output::slot_key(task))
                .or_insert((0, task));
            entry.0 += 1;
        }
        let mut repeated: Vec<_> = failures
            .into_iter()
            .filter(|(_, (n, _))| *n >= REPEATED)
            .collect();
        repeated.sort_by_key(|((slot, node), _)| (*slot, node.to_string()));
        for ((slot, _), (count, task)) in repeated {
            let status = task.status.clone().unwrap_or_default();
            let place = if slot > 0 {
                slot.to_string()
            } else {
                model.hostname(&task.node_id)
            };
            let code = if status.has_exit_code && !status.err.contains("exit") {
                format!(" (exit code {})", status.exit_code)
            } else {
                String::new()
            };
            problems.push(Problem {
                level: Level::Error,
                text: format!("{name}.{place} failed {count} times: {}{code}", status.err),
                target: Target::Service(id.clone()),
            });
        }
    }
    problems.sort_by_key(|p| match p.level {
        Level::Error => 0,
        Level::Warn => 1,
        Level::Info => 2,
    });
    problems
}
