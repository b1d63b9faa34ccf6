//! The console's copy of the cluster, kept current by the `Watch` stream:
//! a full copy after each (re)connection, then change events. Notable
//! changes (a node going down, a task failing, an update pausing, the
//! leader moving) are also turned into lines of the event log.

use std::collections::{BTreeMap, VecDeque};

use shoal_proto::v1 as pb;
use shoal_proto::v1::watch_event::{Object, Old};

use crate::cli::output::{node_state_name, short, task_state_name, update_state_name};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

#[derive(Clone, Debug)]
pub struct Model {
    pub nodes: BTreeMap<String, pb::Node>,
    pub services: BTreeMap<String, pb::Service>,
    pub tasks: BTreeMap<String, pb::Task>,
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

/// A task's place: its slot, or for global tasks its node.
pub fn slot_key(task: &pb::Task) -> (u64, &str) {
    if task.slot > 0 {
        (task.slot, "")
    } else {
        (0, task.node_id.as_str())
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
                    self.tasks.remove(&id);
                } else {
                    self.tasks.insert(id, task);
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

    /// Tasks of a service, grouped by slot (or node), newest first within
    /// each: the order `service ps` uses.
    pub fn tasks_of(&self, service_id: &str) -> Vec<&pb::Task> {
        let created = |t: &pb::Task| t.meta.as_ref().map(|m| m.created_at_ms).unwrap_or(0);
        let mut tasks: Vec<&pb::Task> = self
            .tasks
            .values()
            .filter(|t| t.service_id == service_id)
            .collect();
        tasks.sort_by(|a, b| {
            slot_key(a)
                .cmp(&slot_key(b))
                .then(created(b).cmp(&created(a)))
        });
        tasks
    }

    /// Tasks meant to run on a node.
    pub fn running_on(&self, node_id: &str) -> usize {
        self.tasks
            .values()
            .filter(|t| t.node_id == node_id && t.desired_state <= pb::TaskState::Running as i32)
            .filter(|t| {
                t.status
                    .as_ref()
                    .is_some_and(|s| s.state == pb::TaskState::Running as i32)
            })
            .count()
    }

    /// Running and desired task counts of a service, from the tasks seen.
    pub fn replicas(&self, service: &pb::Service) -> (u64, u64) {
        let id = id_of(&service.meta);
        let running = self
            .tasks
            .values()
            .filter(|t| t.service_id == id && t.desired_state <= pb::TaskState::Running as i32)
            .filter(|t| {
                t.status
                    .as_ref()
                    .is_some_and(|s| s.state == pb::TaskState::Running as i32)
            })
            .count() as u64;
        let spec = service.spec.clone().unwrap_or_default();
        let desired = if spec.mode == pb::ServiceMode::Global as i32 {
            // One per eligible node: the nodes the orchestrator gave a task.
            self.tasks
                .values()
                .filter(|t| t.service_id == id && t.desired_state <= pb::TaskState::Running as i32)
                .map(|t| t.node_id.as_str())
                .collect::<std::collections::HashSet<_>>()
                .len() as u64
        } else {
            spec.replicas
        };
        (running, desired)
    }
}
