//! The scheduler places pending tasks on nodes.
//!
//! [`plan`] is pure: it reads a [`ClusterView`] and returns where each
//! pending task goes, or why it cannot go anywhere. No I/O, no clock; the
//! loop in [`run`] feeds it from the store and proposes its plan.
//!
//! Filters, in order (the first one a node fails is what the explanation
//! counts): ready and active; constraints; resource reservations; max
//! replicas per node. Among the nodes left, placement preferences split
//! tasks evenly across label values (hierarchically, one preference after
//! the other), then the node with the fewest tasks of the service wins,
//! then the one with the fewest tasks overall, then the lowest node id.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::LeaderContext;
use crate::ids::now_ms;
use crate::store::*;

// ------------------------------------------------------------ constraints

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConstraintKey {
    NodeId,
    Hostname,
    Role,
    NodeLabel(String),
    EngineLabel(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    pub key: ConstraintKey,
    pub equal: bool,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid constraint {text:?}: {reason}; use KEY==VALUE or KEY!=VALUE with KEY one of node.id, \
     node.hostname, node.role, node.labels.NAME, engine.labels.NAME"
)]
pub struct ConstraintError {
    pub text: String,
    pub reason: String,
}

/// Parses `node.labels.zone==east` and the like.
pub fn parse_constraint(text: &str) -> Result<Constraint, ConstraintError> {
    let error = |reason: &str| ConstraintError {
        text: text.to_string(),
        reason: reason.to_string(),
    };
    let (key, value, equal) = if let Some((k, v)) = text.split_once("==") {
        (k, v, true)
    } else if let Some((k, v)) = text.split_once("!=") {
        (k, v, false)
    } else {
        return Err(error("no == or != operator"));
    };
    let key = key.trim();
    let value = value.trim();
    if value.is_empty() {
        return Err(error("the value is empty"));
    }
    if value.contains("==") || value.contains("!=") {
        return Err(error("more than one operator"));
    }
    let label = |prefix: &str| -> Result<Option<String>, ConstraintError> {
        match key.strip_prefix(prefix) {
            Some("") => Err(error("the label name is empty")),
            Some(name) => Ok(Some(name.to_string())),
            None => Ok(None),
        }
    };
    let key = match key.to_ascii_lowercase().as_str() {
        "node.id" => ConstraintKey::NodeId,
        "node.hostname" => ConstraintKey::Hostname,
        "node.role" => {
            if value != "manager" && value != "worker" {
                return Err(error("node.role is manager or worker"));
            }
            ConstraintKey::Role
        }
        _ => {
            if let Some(name) = label("node.labels.")? {
                ConstraintKey::NodeLabel(name)
            } else if let Some(name) = label("engine.labels.")? {
                ConstraintKey::EngineLabel(name)
            } else {
                return Err(error("unknown key"));
            }
        }
    };
    Ok(Constraint {
        key,
        equal,
        value: value.to_string(),
    })
}

impl Constraint {
    /// Whether `node` satisfies the constraint. A missing label fails `==`
    /// and passes `!=`, as in Swarm.
    pub fn matches(&self, node: &Node) -> bool {
        let actual: Option<&str> = match &self.key {
            ConstraintKey::NodeId => Some(&node.meta.id),
            ConstraintKey::Hostname => Some(&node.description.hostname),
            ConstraintKey::Role => Some(node.role.name()),
            ConstraintKey::NodeLabel(k) => node.spec.labels.get(k).map(String::as_str),
            ConstraintKey::EngineLabel(k) => {
                node.description.engine_labels.get(k).map(String::as_str)
            }
        };
        let equal = match (&self.key, actual) {
            (ConstraintKey::Hostname | ConstraintKey::Role, Some(a)) => {
                a.eq_ignore_ascii_case(&self.value)
            }
            (_, Some(a)) => a == self.value,
            (_, None) => false,
        };
        equal == self.equal
    }
}

/// Parses every constraint of a spec; ones that do not parse (validated at
/// creation, so only from older data) match nothing.
pub fn constraints_of(placement: &Placement) -> Vec<Option<Constraint>> {
    placement
        .constraints
        .iter()
        .map(|c| parse_constraint(c).ok())
        .collect()
}

pub fn satisfies(node: &Node, constraints: &[Option<Constraint>]) -> bool {
    constraints
        .iter()
        .all(|c| c.as_ref().is_some_and(|c| c.matches(node)))
}

// ------------------------------------------------------------ the view

/// A node as the scheduler sees it: what it has and what it runs.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    /// Reservations of the tasks meant to run there.
    pub reserved: Resources,
    pub tasks: u64,
    pub tasks_by_service: HashMap<String, u64>,
}

impl NodeInfo {
    fn service_tasks(&self, service_id: &str) -> u64 {
        self.tasks_by_service.get(service_id).copied().unwrap_or(0)
    }

    fn fits(&self, want: &Resources) -> bool {
        let have = &self.node.description.resources;
        // A node that reports no resources is not limited.
        let cpu_ok = want.nano_cpus == 0
            || have.nano_cpus == 0
            || self.reserved.nano_cpus + want.nano_cpus <= have.nano_cpus;
        let mem_ok = want.memory_bytes == 0
            || have.memory_bytes == 0
            || self.reserved.memory_bytes + want.memory_bytes <= have.memory_bytes;
        cpu_ok && mem_ok
    }

    fn add(&mut self, service_id: &str, reservations: &Resources) {
        self.tasks += 1;
        // Counted once per task of the cluster on every pass: no key
        // allocation for services already seen.
        match self.tasks_by_service.get_mut(service_id) {
            Some(count) => *count += 1,
            None => {
                self.tasks_by_service.insert(service_id.to_string(), 1);
            }
        }
        self.reserved.nano_cpus += reservations.nano_cpus;
        self.reserved.memory_bytes += reservations.memory_bytes;
    }
}

#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub nodes: Vec<NodeInfo>,
}

/// Whether a task holds a place on its node (and its reservations).
fn occupies(task: &Task) -> bool {
    !task.node_id.is_empty()
        && task.desired_state <= TaskState::Running
        && !task.status.state.is_terminal()
}

impl ClusterView {
    pub fn from_tables(tables: &Tables) -> Self {
        let nodes = tables
            .nodes
            .iter()
            .map(|node| {
                let mut info = NodeInfo {
                    node: node.clone(),
                    reserved: Resources::default(),
                    tasks: 0,
                    tasks_by_service: HashMap::new(),
                };
                for task in tables.tasks_on_node(&node.meta.id) {
                    if occupies(task) {
                        info.add(&task.service_id, &task.spec.reservations);
                    }
                }
                info
            })
            .collect();
        ClusterView { nodes }
    }
}

// ------------------------------------------------------------ the plan

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// (task id, node id)
    pub assignments: Vec<(String, String)>,
    /// (task id, why it fits nowhere)
    pub unplaceable: Vec<(String, String)>,
}

/// Why nodes were passed over, for the explanation.
#[derive(Default)]
struct Rejections {
    unavailable: usize,
    constraint: usize,
    resources: usize,
    max_replicas: usize,
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "node" } else { "nodes" }
}

impl Rejections {
    fn explain(&self) -> String {
        let mut parts = Vec::new();
        if self.unavailable > 0 {
            parts.push(format!(
                "{} {} not available for new tasks",
                self.unavailable,
                plural(self.unavailable)
            ));
        }
        if self.constraint > 0 {
            parts.push(format!(
                "{} {} unmet constraint",
                self.constraint,
                plural(self.constraint)
            ));
        }
        if self.resources > 0 {
            parts.push(format!(
                "{} {} insufficient resources",
                self.resources,
                plural(self.resources)
            ));
        }
        if self.max_replicas > 0 {
            parts.push(format!(
                "{} {} max replicas per node limit exceed",
                self.max_replicas,
                plural(self.max_replicas)
            ));
        }
        if parts.is_empty() {
            "no suitable node (no nodes in the cluster)".into()
        } else {
            format!("no suitable node ({})", parts.join("; "))
        }
    }
}

/// Places `pending` tasks on the view's nodes. The view is updated as
/// tasks are placed, so one call spreads a whole batch.
pub fn plan(view: &mut ClusterView, pending: &[Arc<Task>]) -> Plan {
    let mut result = Plan::default();
    let index: HashMap<String, usize> = view
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.node.meta.id.clone(), i))
        .collect();

    // Tasks with a node chosen already (global services) are checked one
    // by one; the others are placed per group of identical placement.
    let mut groups: BTreeMap<(String, u64), Vec<&Arc<Task>>> = BTreeMap::new();
    for task in pending {
        if task.node_id.is_empty() {
            groups
                .entry((task.service_id.clone(), task.spec_version))
                .or_default()
                .push(task);
        } else {
            place_on_node(view, &index, task, &mut result);
        }
    }
    for tasks in groups.values() {
        place_group(view, tasks, &mut result);
    }
    result
}

fn place_on_node(
    view: &mut ClusterView,
    index: &HashMap<String, usize>,
    task: &Task,
    result: &mut Plan,
) {
    let constraints = constraints_of(&task.spec.placement);
    let mut rejections = Rejections::default();
    let Some(&i) = index.get(&task.node_id) else {
        rejections.unavailable += 1;
        result
            .unplaceable
            .push((task.meta.id.clone(), rejections.explain()));
        return;
    };
    let info = &mut view.nodes[i];
    if !info.node.is_available() {
        rejections.unavailable += 1;
    } else if !satisfies(&info.node, &constraints) {
        rejections.constraint += 1;
    } else if !info.fits(&task.spec.reservations) {
        rejections.resources += 1;
    } else {
        info.add(&task.service_id, &task.spec.reservations);
        result
            .assignments
            .push((task.meta.id.clone(), task.node_id.clone()));
        return;
    }
    result
        .unplaceable
        .push((task.meta.id.clone(), rejections.explain()));
}

/// Candidate order: fewest tasks of the service, then fewest overall, then
/// node id (as an index into the sorted node list).
type Rank = Reverse<(u64, u64, usize)>;

struct Branch {
    /// Tasks of the service in this branch (sum over its nodes).
    load: u64,
    heap: BinaryHeap<Rank>,
}

fn place_group(view: &mut ClusterView, tasks: &[&Arc<Task>], result: &mut Plan) {
    let Some(first) = tasks.first() else { return };
    let spec = &first.spec;
    let service_id = first.service_id.clone();
    let constraints = constraints_of(&spec.placement);
    let max_per_node = spec.placement.max_replicas_per_node;

    // Static filters once per group; node order by id for determinism.
    let mut order: Vec<usize> = (0..view.nodes.len()).collect();
    order.sort_by(|a, b| {
        view.nodes[*a]
            .node
            .meta
            .id
            .cmp(&view.nodes[*b].node.meta.id)
    });
    let mut base = Rejections::default();
    let mut eligible = Vec::new();
    for (rank, &i) in order.iter().enumerate() {
        let node = &view.nodes[i].node;
        if !node.is_available() {
            base.unavailable += 1;
        } else if !satisfies(node, &constraints) {
            base.constraint += 1;
        } else {
            eligible.push((rank, i));
        }
    }

    // Preference branches: the tuple of preference label values.
    let branch_key = |node: &Node| -> Vec<Option<String>> {
        spec.placement
            .preferences
            .iter()
            .map(|p| {
                p.strip_prefix("node.labels.")
                    .and_then(|k| node.spec.labels.get(k).cloned())
            })
            .collect()
    };
    let mut branches: BTreeMap<Vec<Option<String>>, Branch> = BTreeMap::new();
    for &(rank, i) in &eligible {
        let info = &view.nodes[i];
        let branch = branches
            .entry(branch_key(&info.node))
            .or_insert_with(|| Branch {
                load: 0,
                heap: BinaryHeap::new(),
            });
        branch.load += info.service_tasks(&service_id);
        branch
            .heap
            .push(Reverse((info.service_tasks(&service_id), info.tasks, rank)));
    }
    let by_rank: HashMap<usize, usize> = eligible.iter().copied().collect();
    let mut dynamic = Rejections::default();
    let mut rejected_nodes: HashSet<usize> = HashSet::new();

    for task in tasks {
        let mut placed = false;
        while !placed {
            // The branch with the least of this service, hierarchically: a
            // lexicographic minimum over per-level loads approximates
            // Swarm's tree by taking the least loaded branch at each level.
            let Some(key) = pick_branch(&branches) else {
                break;
            };
            let Some(branch) = branches.get_mut(&key) else {
                break;
            };
            let Some(Reverse((_, _, rank))) = branch.heap.pop() else {
                branches.remove(&key);
                continue;
            };
            let Some(&i) = by_rank.get(&rank) else {
                continue;
            };
            let info = &mut view.nodes[i];
            if max_per_node > 0 && info.service_tasks(&service_id) >= max_per_node {
                if rejected_nodes.insert(i) {
                    dynamic.max_replicas += 1;
                }
                continue;
            }
            if !info.fits(&task.spec.reservations) {
                if rejected_nodes.insert(i) {
                    dynamic.resources += 1;
                }
                continue;
            }
            info.add(&service_id, &task.spec.reservations);
            branch.load += 1;
            branch
                .heap
                .push(Reverse((info.service_tasks(&service_id), info.tasks, rank)));
            result
                .assignments
                .push((task.meta.id.clone(), info.node.meta.id.clone()));
            placed = true;
        }
        if !placed {
            let explanation = Rejections {
                unavailable: base.unavailable,
                constraint: base.constraint,
                resources: dynamic.resources,
                max_replicas: dynamic.max_replicas,
            }
            .explain();
            result.unplaceable.push((task.meta.id.clone(), explanation));
        }
    }
}

/// The least loaded non-empty branch; ties go to the first in order.
fn pick_branch(branches: &BTreeMap<Vec<Option<String>>, Branch>) -> Option<Vec<Option<String>>> {
    // Hierarchical: at each preference level, restrict to the value whose
    // branches hold the fewest tasks in total.
    let mut candidates: Vec<&Vec<Option<String>>> = branches
        .iter()
        .filter(|(_, b)| !b.heap.is_empty())
        .map(|(k, _)| k)
        .collect();
    let depth = candidates.first().map_or(0, |k| k.len());
    for level in 0..depth {
        let mut loads: BTreeMap<&Option<String>, u64> = BTreeMap::new();
        for key in &candidates {
            *loads.entry(&key[level]).or_default() += branches[*key].load;
        }
        let Some(best) = loads
            .iter()
            .min_by_key(|(_, load)| **load)
            .map(|(value, _)| (*value).clone())
        else {
            break;
        };
        candidates.retain(|k| k[level] == best);
    }
    candidates.first().map(|k| (*k).clone())
}

/// The ops that record `assignments`, each node's together. The ops are
/// proposed in transactions of 1,000, and a session sends what one
/// transaction brings in one message: spread deals tasks out to nodes in
/// turn, and in that order a transaction at 2,300 nodes gave each node at
/// most one task, so 100,000 tasks took 75,000 session messages and as many
/// status reports back. Grouped by node, 23,000.
fn assignment_ops(mut assignments: Vec<(String, String)>, now: i64) -> Vec<Op> {
    assignments.sort_by(|a, b| a.1.cmp(&b.1));
    assignments
        .into_iter()
        .map(|(id, node_id)| {
            Op::Patch(Patch::TaskAssign {
                id,
                node_id,
                status: TaskStatus {
                    state: TaskState::Assigned,
                    timestamp: now,
                    message: "scheduler assigned task to node".into(),
                    ..Default::default()
                },
            })
        })
        .collect()
}

// ------------------------------------------------------------ the loop

/// Runs the scheduler while this manager leads.
pub async fn run(ctx: LeaderContext) {
    super::orchestrator::drive(ctx, Scheduler::default()).await;
}

#[derive(Default)]
struct Scheduler {
    /// Pending tasks to place (or to retry).
    pending: HashSet<String>,
    /// Whether a node changed since the last pass (every pending task is
    /// worth another try).
    nodes_changed: bool,
}

fn is_pending(task: &Task) -> bool {
    task.status.state == TaskState::Pending && task.desired_state <= TaskState::Running
}

impl super::orchestrator::Reconciler for Scheduler {
    const NAME: &'static str = "scheduler";

    fn observe(&mut self, changes: &Changes) -> bool {
        let mut dirty = false;
        for event in &changes.events {
            match &event.object {
                Object::Task(task) => {
                    if event.action != Action::Remove && is_pending(task) {
                        // A repeat of an unchanged explanation is not news.
                        let only_explained =
                            matches!(&event.old, Some(Object::Task(old)) if is_pending(old));
                        if self.pending.insert(task.meta.id.clone()) || !only_explained {
                            dirty = true;
                        }
                    } else {
                        self.pending.remove(&task.meta.id);
                        // A task that stopped frees room for others.
                        if task.status.state.is_terminal()
                            || task.desired_state > TaskState::Running
                        {
                            dirty |= !self.pending.is_empty();
                        }
                    }
                }
                Object::Node(_) => {
                    self.nodes_changed = true;
                    dirty |= !self.pending.is_empty();
                }
                _ => {}
            }
        }
        dirty
    }

    async fn reconcile(
        &mut self,
        ctx: &LeaderContext,
        full: bool,
    ) -> Result<(), super::ProposeError> {
        let (plan, errors) = {
            let tables = ctx.store.read();
            if full {
                self.pending = tables
                    .tasks
                    .iter()
                    .filter(|t| is_pending(t))
                    .map(|t| t.meta.id.clone())
                    .collect();
            }
            let pending: Vec<Arc<Task>> = self
                .pending
                .iter()
                .filter_map(|id| tables.tasks.get(id))
                .filter(|t| is_pending(t))
                .cloned()
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            let mut view = ClusterView::from_tables(&tables);
            let plan = plan(&mut view, &pending);
            // Explanations only when they change, to avoid write storms.
            let errors: Vec<(String, String)> = plan
                .unplaceable
                .iter()
                .filter(|(id, reason)| {
                    tables
                        .tasks
                        .get(id)
                        .is_some_and(|t| t.status.err != *reason)
                })
                .cloned()
                .collect();
            let now = now_ms();
            for (task_id, _) in &plan.assignments {
                if let Some(task) = tables.tasks.get(task_id) {
                    let waited = u64::try_from(now - task.meta.created_at).unwrap_or(0);
                    crate::metrics::METRICS
                        .placement
                        .observe(Duration::from_millis(waited));
                }
            }
            (plan, errors)
        };
        self.nodes_changed = false;
        let now = now_ms();
        for (task_id, _) in &plan.assignments {
            self.pending.remove(task_id);
        }
        let mut ops = assignment_ops(plan.assignments, now);
        ops.extend(errors.into_iter().map(|(task_id, reason)| {
            Op::Patch(Patch::TaskStatus {
                id: task_id,
                status: TaskStatus {
                    state: TaskState::Pending,
                    timestamp: now,
                    message: "pending task scheduling".into(),
                    err: reason,
                    ..Default::default()
                },
            })
        }));
        super::orchestrator::commit(ctx, ops).await
    }

    fn next_deadline(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests;
