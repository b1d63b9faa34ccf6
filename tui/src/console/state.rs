//! The console's copy of the cluster, kept current by the `Watch` stream:
//! a full copy after each (re)connection, then change events. Notable
//! changes (a node going down, a task failing, an update pausing, the
//! leader moving) are also turned into lines of the event log.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};

use shoal_proto::v1 as pb;
use shoal_proto::v1::watch_event::{Object, Old};

use super::ordered::OrderedSet;

use crate::cli::output::{node_state_name, short, slot_key, task_state_name, update_state_name};

/// Event log length kept in memory.
const EVENTS_KEPT: usize = 1_000;
/// Log lines kept for the logs view.
pub const LOG_LINES_KEPT: usize = 10_000;

/// A line of task output, ready to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRow {
    pub timestamp_ns: i64,
    /// `service.slot@node`.
    pub source: String,
    pub stderr: bool,
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// What an event is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    /// `node`, `service`, `task` or `cluster`.
    pub kind: &'static str,
    /// What happened: `down`, `ready`, `failed`, `update_paused`, ...
    pub action: String,
    pub id: String,
    pub name: String,
    /// The service a task or service event belongs to.
    pub service: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLine {
    pub time_ms: i64,
    pub level: Level,
    pub subject: Subject,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    Connecting,
    Live,
    /// Lost, with the reason; the last known state is still shown.
    Lost(String),
}

/// A task's place in the order `service ps` uses: by slot (or, for
/// global tasks, node), newest first within it; the id breaks ties so
/// that two tasks never share a place.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TaskOrder {
    slot: u64,
    /// Empty for replicated tasks, whose slot already places them.
    node: String,
    newest_first: Reverse<i64>,
    id: String,
    /// Never decides the order (the id before it is unique): here so that
    /// a filter by node reads the index alone, not every task.
    node_number: NodeNumber,
}

impl TaskOrder {
    fn of(id: &str, task: &pb::Task, node_number: NodeNumber) -> Self {
        let (slot, node) = slot_key(task);
        TaskOrder {
            slot,
            node: node.to_string(),
            newest_first: Reverse(task.meta.as_ref().map_or(0, |m| m.created_at_ms)),
            id: id.to_string(),
            node_number,
        }
    }
}

/// A node as the task index numbers it. A filter matches each node once,
/// then each task by its node's number: no string to read per task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeNumber(u32);

impl NodeNumber {
    /// Numbers count up from 0: a vector indexed by them stays small.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Indexes over the tasks, kept in step with every insert and removal so
/// that a frame never has to scan or sort all tasks: a service with
/// 100,000 tasks must draw as fast as one with ten.
#[derive(Clone, Debug, Default)]
struct TaskIndex {
    /// Per service, its tasks in `service ps` order.
    by_service: HashMap<String, OrderedSet<TaskOrder>>,
    /// Per service, tasks meant to run that run (the REPLICAS column).
    running_by_service: HashMap<String, usize>,
    /// Per node, tasks meant to run that run (the TASKS column).
    running_by_node: HashMap<String, usize>,
    /// Per service, its failed and rejected tasks in `service ps` order:
    /// the problems view looks for slots failing again and again, and
    /// failures are few next to all tasks.
    failed_by_service: HashMap<String, OrderedSet<TaskOrder>>,
    /// Per service, the distinct specs its running tasks run, with how
    /// many run each: update progress is the count for the service's
    /// current spec. Rarely more than two (old and new) at a time.
    running_specs: HashMap<String, Vec<(Option<pb::TaskSpec>, usize)>>,
    /// Every node id a task has named, by number; never shrinks (nodes
    /// are few next to tasks).
    node_ids: Vec<String>,
    node_numbers: HashMap<String, NodeNumber>,
}

fn failed(task: &pb::Task) -> bool {
    task.status.as_ref().is_some_and(|s| {
        s.state == pb::TaskState::Failed as i32 || s.state == pb::TaskState::Rejected as i32
    })
}

/// Whether a task counts as a running replica: meant to run, and running.
fn runs(task: &pb::Task) -> bool {
    task.desired_state <= pb::TaskState::Running as i32
        && task
            .status
            .as_ref()
            .is_some_and(|s| s.state == pb::TaskState::Running as i32)
}

impl TaskIndex {
    fn number(&mut self, node_id: &str) -> NodeNumber {
        if let Some(number) = self.node_numbers.get(node_id) {
            return *number;
        }
        let number = NodeNumber(self.node_ids.len() as u32);
        self.node_ids.push(node_id.to_string());
        self.node_numbers.insert(node_id.to_string(), number);
        number
    }

    fn add(&mut self, id: &str, task: &pb::Task) {
        let order = TaskOrder::of(id, task, self.number(&task.node_id));
        if failed(task) {
            self.failed_by_service
                .entry(task.service_id.clone())
                .or_default()
                .insert(order.clone());
        }
        self.by_service
            .entry(task.service_id.clone())
            .or_default()
            .insert(order);
        if runs(task) {
            *self
                .running_by_service
                .entry(task.service_id.clone())
                .or_default() += 1;
            *self
                .running_by_node
                .entry(task.node_id.clone())
                .or_default() += 1;
            let specs = self
                .running_specs
                .entry(task.service_id.clone())
                .or_default();
            match specs.iter_mut().find(|(spec, _)| *spec == task.spec) {
                Some((_, count)) => *count += 1,
                None => specs.push((task.spec.clone(), 1)),
            }
        }
    }

    fn remove(&mut self, id: &str, task: &pb::Task) {
        let key = TaskOrder::of(id, task, self.number(&task.node_id));
        for index in [&mut self.by_service, &mut self.failed_by_service] {
            if let Some(order) = index.get_mut(&task.service_id) {
                order.remove(&key);
                if order.is_empty() {
                    index.remove(&task.service_id);
                }
            }
        }
        if runs(task) {
            decrement(&mut self.running_by_service, &task.service_id);
            decrement(&mut self.running_by_node, &task.node_id);
            if let Some(specs) = self.running_specs.get_mut(&task.service_id) {
                if let Some(at) = specs.iter().position(|(spec, _)| *spec == task.spec) {
                    specs[at].1 -= 1;
                    if specs[at].1 == 0 {
                        specs.swap_remove(at);
                    }
                }
                if specs.is_empty() {
                    self.running_specs.remove(&task.service_id);
                }
            }
        }
    }
}

/// Counts drop to nothing rather than to zero, so the maps hold only
/// services and nodes that have running tasks.
fn decrement(counts: &mut HashMap<String, usize>, key: &str) {
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
}

/// Where a service's rolling update (or rollback) stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateProgress {
    pub state: i32,
    /// Why it paused, or what it is doing.
    pub message: String,
    /// Running tasks with the service's current spec.
    pub updated: u64,
    /// Tasks the service wants.
    pub total: u64,
}

/// A slot in a rolling update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Runs the service's current spec.
    Updated,
    /// Its task with the current spec is on its way.
    Starting,
    /// Its task with the current spec failed.
    Failed,
    /// Still on an older spec.
    Outdated,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub nodes: BTreeMap<String, pb::Node>,
    pub services: BTreeMap<String, pb::Service>,
    /// Private so that every change goes through [`Model::put_task`] and
    /// [`Model::remove_task`], which keep `task_index` in step.
    tasks: BTreeMap<String, pb::Task>,
    task_index: TaskIndex,
    pub cluster: Option<pb::Cluster>,
    /// Newest first.
    pub events: VecDeque<EventLine>,
    pub info: Option<pb::InfoResponse>,
    pub connection: Connection,
    /// Store version of the last change seen, to resume the watch.
    pub version: u64,
    /// Between a reset and `synced`: objects arrive as a copy, not news.
    copying: bool,
    /// The followed logs, oldest first, at most [`LOG_LINES_KEPT`].
    pub logs: VecDeque<LogRow>,
    /// Lines received since the stream started (the newest line's number).
    pub logs_received: u64,
    /// Why the log stream stopped, if it did.
    pub logs_status: Option<String>,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            nodes: BTreeMap::new(),
            services: BTreeMap::new(),
            tasks: BTreeMap::new(),
            task_index: TaskIndex::default(),
            cluster: None,
            events: VecDeque::new(),
            info: None,
            connection: Connection::Connecting,
            version: 0,
            copying: false,
            logs: VecDeque::new(),
            logs_received: 0,
            logs_status: None,
        }
    }
}

fn id_of(meta: &Option<pb::Meta>) -> String {
    meta.as_ref().map(|m| m.id.clone()).unwrap_or_default()
}

impl Model {
    pub fn apply(&mut self, message: pb::WatchMessage) {
        if message.reset {
            self.nodes.clear();
            self.services.clear();
            self.tasks.clear();
            self.task_index = TaskIndex::default();
            self.cluster = None;
            self.copying = true;
        }
        let time = message.time_ms;
        for event in message.events {
            self.apply_event(event, time);
        }
        for cluster_event in message.cluster_events {
            self.apply_cluster_event(cluster_event);
        }
        if message.synced {
            self.copying = false;
        }
        self.version = self.version.max(message.version);
        self.connection = Connection::Live;
    }

    fn note(&mut self, time_ms: i64, level: Level, subject: Subject, text: String) {
        self.events.push_front(EventLine {
            time_ms,
            level,
            subject,
            text,
        });
        self.events.truncate(EVENTS_KEPT);
    }

    /// Whether the service runs one task per node (and so has no replica
    /// count to scale).
    pub fn service_is_global(&self, service_id: &str) -> bool {
        self.services
            .get(service_id)
            .and_then(|s| s.spec.as_ref())
            .is_some_and(|s| s.mode == pb::ServiceMode::Global as i32)
    }

    /// A service's name, or its id once it is gone.
    pub fn service_name(&self, service_id: &str) -> String {
        self.services
            .get(service_id)
            .and_then(|s| s.spec.as_ref())
            .map(|s| s.name.clone())
            .unwrap_or_else(|| service_id.to_string())
    }

    pub fn hostname(&self, node_id: &str) -> String {
        self.nodes
            .get(node_id)
            .and_then(|n| n.description.as_ref())
            .map(|d| d.hostname.clone())
            .unwrap_or_else(|| short(node_id).to_string())
    }

    fn apply_event(&mut self, event: pb::WatchEvent, time: i64) {
        let removed = event.action == pb::WatchAction::Remove as i32;
        let news = !self.copying;
        match event.object {
            Some(Object::Node(node)) => {
                let id = id_of(&node.meta);
                if news {
                    self.node_news(&node, event.old.as_ref(), removed, time);
                }
                if removed {
                    self.nodes.remove(&id);
                } else {
                    self.nodes.insert(id, node);
                }
            }
            Some(Object::Service(service)) => {
                let id = id_of(&service.meta);
                if news {
                    self.service_news(&service, event.old.as_ref(), removed, time);
                }
                if removed {
                    self.services.remove(&id);
                } else {
                    self.services.insert(id, service);
                }
            }
            Some(Object::Task(task)) => {
                let id = id_of(&task.meta);
                if news && !removed {
                    self.task_news(&task, event.old.as_ref(), time);
                }
                if removed {
                    self.remove_task(&id);
                } else {
                    self.put_task(task);
                }
            }
            Some(Object::Cluster(cluster)) => {
                self.cluster = (!removed).then_some(cluster);
            }
            None => {}
        }
    }

    fn node_news(&mut self, node: &pb::Node, old: Option<&Old>, removed: bool, time: i64) {
        let name = node
            .description
            .as_ref()
            .map(|d| d.hostname.clone())
            .unwrap_or_default();
        let subject = |action: &str| Subject {
            kind: "node",
            action: action.to_string(),
            id: id_of(&node.meta),
            name: name.clone(),
            service: String::new(),
        };
        if removed {
            self.note(
                time,
                Level::Warn,
                subject("removed"),
                format!("node {name} removed from the swarm"),
            );
            return;
        }
        let state = node.status.as_ref().map_or(0, |s| s.state);
        let old_state = match old {
            Some(Old::OldNode(old)) => old.status.as_ref().map(|s| s.state),
            _ => None,
        };
        if old_state.is_some_and(|o| o != state) {
            let (level, text) = match pb::NodeState::try_from(state) {
                Ok(pb::NodeState::Down) => (Level::Error, format!("node {name} is down")),
                Ok(pb::NodeState::Ready) => (Level::Info, format!("node {name} is ready")),
                _ => (
                    Level::Warn,
                    format!("node {name} is {}", node_state_name(state)),
                ),
            };
            self.note(time, level, subject(node_state_name(state)), text);
        } else if old.is_none() {
            self.note(
                time,
                Level::Info,
                subject("joined"),
                format!("node {name} joined the swarm"),
            );
        }
    }

    fn service_news(&mut self, service: &pb::Service, old: Option<&Old>, removed: bool, time: i64) {
        let name = service
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let subject = |action: &str| Subject {
            kind: "service",
            action: action.to_string(),
            id: id_of(&service.meta),
            name: name.clone(),
            service: name.clone(),
        };
        if removed {
            self.note(
                time,
                Level::Info,
                subject("removed"),
                format!("service {name} removed"),
            );
            return;
        }
        let Some(Old::OldService(old)) = old else {
            self.note(
                time,
                Level::Info,
                subject("created"),
                format!("service {name} created"),
            );
            return;
        };
        let state = service.update_status.as_ref().map(|u| u.state);
        let old_state = old.update_status.as_ref().map(|u| u.state);
        if state != old_state
            && let Some(update) = &service.update_status
        {
            let level = match pb::UpdateState::try_from(update.state) {
                Ok(pb::UpdateState::Paused | pb::UpdateState::RollbackPaused) => Level::Error,
                Ok(pb::UpdateState::RollbackStarted) => Level::Warn,
                _ => Level::Info,
            };
            let mut text = format!(
                "service {name}: update {}",
                update_state_name(update.state).replace('_', " ")
            );
            if !update.message.is_empty() {
                text.push_str(&format!(": {}", update.message));
            }
            let action = format!("update_{}", update_state_name(update.state));
            self.note(time, level, subject(&action), text);
        }
    }

    fn task_news(&mut self, task: &pb::Task, old: Option<&Old>, time: i64) {
        let status = task.status.clone().unwrap_or_default();
        let old_state = match old {
            Some(Old::OldTask(old)) => old.status.as_ref().map(|s| s.state),
            _ => None,
        };
        if old_state == Some(status.state) {
            return;
        }
        let failed = matches!(
            pb::TaskState::try_from(status.state),
            Ok(pb::TaskState::Failed | pb::TaskState::Rejected)
        );
        if failed {
            let name = if task.slot > 0 {
                format!("{}.{}", task.service_name, task.slot)
            } else {
                task.service_name.clone()
            };
            let reason = if status.err.is_empty() {
                &status.message
            } else {
                &status.err
            };
            let mut text = format!(
                "task {name} {} on {}: {reason}",
                task_state_name(status.state),
                self.hostname(&task.node_id)
            );
            if let Some(code) = status.has_exit_code.then_some(status.exit_code)
                && !reason.contains("exit")
            {
                text.push_str(&format!(" (exit code {code})"));
            }
            let subject = Subject {
                kind: "task",
                action: task_state_name(status.state).to_string(),
                id: id_of(&task.meta),
                name,
                service: task.service_name.clone(),
            };
            self.note(time, Level::Error, subject, text);
        }
    }

    fn apply_cluster_event(&mut self, event: pb::ClusterEvent) {
        use pb::cluster_event::Kind;
        let (level, text) = match Kind::try_from(event.kind) {
            Ok(Kind::LeaderChanged) => {
                if event.new_leader_id.is_empty() {
                    (Level::Warn, "the cluster has no leader".to_string())
                } else {
                    let old = if event.old_leader_id.is_empty() {
                        "none".to_string()
                    } else {
                        self.hostname(&event.old_leader_id)
                    };
                    (
                        Level::Info,
                        format!(
                            "leader changed {old} → {}",
                            self.hostname(&event.new_leader_id)
                        ),
                    )
                }
            }
            Ok(Kind::QuorumLost) => (Level::Error, format!("quorum lost: {}", event.message)),
            Ok(Kind::QuorumRegained) => (Level::Info, "quorum regained".to_string()),
            _ => return,
        };
        let action = match Kind::try_from(event.kind) {
            Ok(Kind::LeaderChanged) => "leader_changed",
            Ok(Kind::QuorumLost) => "quorum_lost",
            _ => "quorum_regained",
        };
        let subject = Subject {
            kind: "cluster",
            action: action.to_string(),
            id: event.new_leader_id.clone(),
            name: self.hostname(&event.new_leader_id),
            service: String::new(),
        };
        self.note(event.time_ms, level, subject, text);
    }

    pub fn add_logs(&mut self, rows: Vec<LogRow>) {
        for row in rows {
            self.logs.push_back(row);
            self.logs_received += 1;
        }
        while self.logs.len() > LOG_LINES_KEPT {
            self.logs.pop_front();
        }
    }

    pub fn clear_logs(&mut self) {
        self.logs.clear();
        self.logs_received = 0;
        self.logs_status = None;
    }

    /// Every task, by id.
    pub fn tasks(&self) -> &BTreeMap<String, pb::Task> {
        &self.tasks
    }

    pub fn task(&self, id: &str) -> Option<&pb::Task> {
        self.tasks.get(id)
    }

    /// Adds or replaces a task (keyed by its id).
    pub fn put_task(&mut self, task: pb::Task) {
        let id = id_of(&task.meta);
        if let Some(old) = self.tasks.get(&id) {
            self.task_index.remove(&id, old);
        }
        self.task_index.add(&id, &task);
        self.tasks.insert(id, task);
    }

    pub fn remove_task(&mut self, id: &str) {
        if let Some(old) = self.tasks.remove(id) {
            self.task_index.remove(id, &old);
        }
    }

    /// How many tasks a service has, history included.
    pub fn task_count(&self, service_id: &str) -> usize {
        self.task_index
            .by_service
            .get(service_id)
            .map_or(0, OrderedSet::len)
    }

    /// Ids of a service's tasks from position `start` on, each with its
    /// node, in the order of [`Model::tasks_of`]. Reads only the index,
    /// and reaches `start` without walking the tasks before it.
    pub fn task_ids_of<'a>(
        &'a self,
        service_id: &str,
        start: usize,
    ) -> impl Iterator<Item = (&'a str, NodeNumber)> + 'a {
        self.task_index
            .by_service
            .get(service_id)
            .into_iter()
            .flat_map(move |order| order.iter_from(start))
            .map(|order| (order.id.as_str(), order.node_number))
    }

    /// The id of a node [`Model::task_ids_of`] numbered.
    pub fn node_id_of(&self, number: NodeNumber) -> &str {
        self.task_index
            .node_ids
            .get(number.index())
            .map_or("", String::as_str)
    }

    /// Tasks of a service, grouped by slot (or node), newest first within
    /// each: the order `service ps` uses. Lazy, so that a page of rows
    /// costs a page, not the whole service.
    pub fn tasks_of<'a>(&'a self, service_id: &str) -> impl Iterator<Item = &'a pb::Task> + 'a {
        self.task_ids_of(service_id, 0)
            .filter_map(|(id, _)| self.tasks.get(id))
    }

    /// A service's failed and rejected tasks, in the order of
    /// [`Model::tasks_of`].
    pub fn failed_tasks_of<'a>(
        &'a self,
        service_id: &str,
    ) -> impl Iterator<Item = &'a pb::Task> + 'a {
        self.task_index
            .failed_by_service
            .get(service_id)
            .into_iter()
            .flat_map(|order| order.iter_from(0))
            .filter_map(|order| self.tasks.get(&order.id))
    }

    /// Ids of the tasks on a node, in the order `node ps` lists them: by
    /// service and slot, newest first within a slot. Walks every task, so
    /// it is for one node's view, not for each frame of a big service.
    pub fn task_ids_on(&self, node_id: &str) -> Vec<String> {
        let mut tasks: Vec<&pb::Task> = self
            .tasks
            .values()
            .filter(|t| t.node_id == node_id)
            .collect();
        let created = |t: &pb::Task| t.meta.as_ref().map_or(0, |m| m.created_at_ms);
        tasks.sort_by(|a, b| {
            (
                a.service_name.as_str(),
                slot_key(a),
                std::cmp::Reverse(created(a)),
            )
                .cmp(&(
                    b.service_name.as_str(),
                    slot_key(b),
                    std::cmp::Reverse(created(b)),
                ))
        });
        tasks.into_iter().map(|t| id_of(&t.meta)).collect()
    }

    /// Tasks meant to run on a node that run.
    pub fn running_on(&self, node_id: &str) -> usize {
        self.task_index
            .running_by_node
            .get(node_id)
            .copied()
            .unwrap_or(0)
    }

    /// The service's update, if it has had one: its state, and how many
    /// of its tasks run the current spec. Counted as `service update`
    /// counts them: a slot is updated when its task with the new spec runs.
    pub fn update_progress(&self, service: &pb::Service) -> Option<UpdateProgress> {
        let status = service.update_status.as_ref()?;
        let current = service.spec.as_ref().and_then(|s| s.task.as_ref());
        let updated = self
            .task_index
            .running_specs
            .get(&id_of(&service.meta))
            .and_then(|specs| specs.iter().find(|(spec, _)| spec.as_ref() == current))
            .map_or(0, |(_, count)| *count as u64);
        Some(UpdateProgress {
            state: status.state,
            message: status.message.clone(),
            updated,
            total: self.replicas(service).1,
        })
    }

    /// Where each of a service's first `limit` slots (nodes, for a global
    /// service) stands in its update, from the slot's newest task. Walks
    /// only those slots' tasks, so a huge service costs what is drawn.
    pub fn slot_states(&self, service: &pb::Service, limit: usize) -> Vec<SlotState> {
        let id = id_of(&service.meta);
        let current = service.spec.as_ref().and_then(|s| s.task.as_ref());
        let mut states = Vec::new();
        let mut last_slot: Option<(u64, &str)> = None;
        for task in self.tasks_of(&id) {
            let slot = slot_key(task);
            // Newest first within a slot: the first task seen decides.
            if last_slot == Some(slot) {
                continue;
            }
            if states.len() == limit {
                break;
            }
            last_slot = Some(slot);
            let state = task.status.as_ref().map_or(0, |s| s.state);
            let failed =
                state == pb::TaskState::Failed as i32 || state == pb::TaskState::Rejected as i32;
            states.push(match (task.spec.as_ref() == current, state) {
                (false, _) => SlotState::Outdated,
                (true, _) if failed => SlotState::Failed,
                (true, s) if s == pb::TaskState::Running as i32 => SlotState::Updated,
                (true, _) => SlotState::Starting,
            });
        }
        states
    }

    /// Running and desired task counts of a service, from the tasks seen.
    pub fn replicas(&self, service: &pb::Service) -> (u64, u64) {
        let id = id_of(&service.meta);
        let running = self
            .task_index
            .running_by_service
            .get(&id)
            .map_or(0, |n| *n as u64);
        let spec = service.spec.clone().unwrap_or_default();
        let desired = if spec.mode == pb::ServiceMode::Global as i32 {
            // One per eligible node: the nodes the orchestrator gave a
            // task. The index keeps a node's global tasks together.
            let mut nodes = 0;
            let mut previous: Option<&str> = None;
            for task in self.tasks_of(&id) {
                if task.desired_state <= pb::TaskState::Running as i32
                    && previous != Some(task.node_id.as_str())
                {
                    nodes += 1;
                    previous = Some(task.node_id.as_str());
                }
            }
            nodes
        } else {
            spec.replicas
        };
        (running, desired)
    }
}
