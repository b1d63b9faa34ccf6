//! The cluster's objects as the store keeps them: nodes, services, tasks and
//! the cluster itself. These are domain types; `shoal_proto` has their wire
//! twins and `crate::api::convert` is the one place that maps between them.
//!
//! Every object has a [`Meta`]; its `version` is the raft index of its last
//! change and is set by the store when a transaction is applied.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub version: u64,
    /// Unix ms, stamped by the proposer.
    pub created_at: i64,
    pub updated_at: i64,
}

impl Meta {
    pub fn new(id: String, now: i64) -> Self {
        Meta {
            id,
            version: 0,
            created_at: now,
            updated_at: now,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Node,
    Service,
    Task,
    Cluster,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Node, Kind::Service, Kind::Task, Kind::Cluster];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Task => "task",
            Kind::Cluster => "cluster",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Any stored object, shared: the tables, the events of the change that
/// made it, the watch history and the transaction that carried it all hold
/// the same `Arc`. Copying each object into every one of them (an event
/// was 2 KiB inline, 100,000 of them in the history) cost the leader a
/// seventh of its CPU during a large scale-up, most of it in page faults.
/// `Arc` is transparent to serde: the log's encoding does not change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Object {
    Node(Arc<Node>),
    Service(Arc<Service>),
    Task(Arc<Task>),
    Cluster(Arc<Cluster>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Node(_) => Kind::Node,
            Object::Service(_) => Kind::Service,
            Object::Task(_) => Kind::Task,
            Object::Cluster(_) => Kind::Cluster,
        }
    }

    pub fn meta(&self) -> &Meta {
        match self {
            Object::Node(o) => &o.meta,
            Object::Service(o) => &o.meta,
            Object::Task(o) => &o.meta,
            Object::Cluster(o) => &o.meta,
        }
    }

    /// The metadata, for changing: copies the object first if it is shared.
    pub fn meta_mut(&mut self) -> &mut Meta {
        match self {
            Object::Node(o) => &mut Arc::make_mut(o).meta,
            Object::Service(o) => &mut Arc::make_mut(o).meta,
            Object::Task(o) => &mut Arc::make_mut(o).meta,
            Object::Cluster(o) => &mut Arc::make_mut(o).meta,
        }
    }

    pub fn id(&self) -> &str {
        &self.meta().id
    }
}

/// Implemented by each object type so the store can be generic over kinds.
pub trait StoreObject: Clone + Send + Sync + std::fmt::Debug + 'static {
    const KIND: Kind;
    fn meta(&self) -> &Meta;
    fn meta_mut(&mut self) -> &mut Meta;
    fn into_object(self) -> Object;
    fn from_object(object: &Object) -> Option<&Self>;
}

macro_rules! store_object {
    ($ty:ident) => {
        impl StoreObject for $ty {
            const KIND: Kind = Kind::$ty;
            fn meta(&self) -> &Meta {
                &self.meta
            }
            fn meta_mut(&mut self) -> &mut Meta {
                &mut self.meta
            }
            fn into_object(self) -> Object {
                Object::$ty(Arc::new(self))
            }
            fn from_object(object: &Object) -> Option<&Self> {
                match object {
                    Object::$ty(o) => Some(o),
                    _ => None,
                }
            }
        }
    };
}

store_object!(Node);
store_object!(Service);
store_object!(Task);
store_object!(Cluster);

// ------------------------------------------------------------------ nodes

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    #[default]
    Worker,
    Manager,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Availability {
    #[default]
    Active,
    Pause,
    Drain,
}

impl Availability {
    pub fn name(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeState {
    #[default]
    Unknown,
    Down,
    Ready,
    Disconnected,
}

impl NodeState {
    pub const ALL: [NodeState; 4] = [
        NodeState::Unknown,
        NodeState::Down,
        NodeState::Ready,
        NodeState::Disconnected,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NodeState::Unknown => "unknown",
            NodeState::Down => "down",
            NodeState::Ready => "ready",
            NodeState::Disconnected => "disconnected",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reachability {
    #[default]
    Unknown,
    Unreachable,
    Reachable,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub desired_role: Role,
    pub availability: Availability,
    pub labels: Labels,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Billionths of a CPU.
    pub nano_cpus: i64,
    pub memory_bytes: i64,
}

impl Resources {
    pub fn is_zero(&self) -> bool {
        self.nano_cpus == 0 && self.memory_bytes == 0
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescription {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub resources: Resources,
    pub engine_labels: Labels,
    pub agent_version: String,
    pub executor: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub state: NodeState,
    pub message: String,
    pub addr: String,
    pub timestamp: i64,
}

/// Raft membership facts about a manager node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerStatus {
    pub raft_id: u64,
    /// Address other managers reach it at.
    pub addr: String,
    /// Written by the leader when it observes a change, so that every
    /// manager shows the same answer.
    pub reachability: Reachability,
    pub locked: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub meta: Meta,
    pub spec: NodeSpec,
    pub description: NodeDescription,
    pub status: NodeStatus,
    /// The role the node holds now; `spec.desired_role` is what was asked.
    pub role: Role,
    pub manager_status: Option<ManagerStatus>,
}

impl Node {
    pub fn hostname(&self) -> &str {
        &self.description.hostname
    }

    /// Ready and active: may receive new tasks.
    pub fn is_available(&self) -> bool {
        self.status.state == NodeState::Ready && self.spec.availability == Availability::Active
    }
}

// ---------------------------------------------------------------- cluster

/// The one cluster object's id.
pub const CLUSTER_OBJECT_ID: &str = "default";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub name: String,
    pub labels: Labels,
    pub heartbeat_period_ms: u64,
    pub heartbeat_tolerance: u32,
    pub task_history_retention: u32,
    pub node_cert_expiry_s: u64,
    pub autolock: bool,
    pub snapshot_interval: u64,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            name: "default".into(),
            labels: Labels::new(),
            heartbeat_period_ms: 1_000,
            heartbeat_tolerance: 3,
            task_history_retention: 5,
            node_cert_expiry_s: 90 * 24 * 3600,
            autolock: false,
            snapshot_interval: 10_000,
        }
    }
}

/// Secret material the managers share through the store. The raft log is
/// encrypted at rest, and the API never returns these fields.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RootCa {
    pub cert_pem: String,
    pub key_pem: String,
    /// Base-36 sha256 of `cert_pem`, the digest in join tokens.
    pub digest: String,
    /// During a root rotation: the new root, cross-signed by the old one.
    pub next: Option<Box<RootCa>>,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("digest", &self.digest)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JoinTokens {
    pub worker: String,
    pub manager: String,
}

impl std::fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinTokens(<redacted>)")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub meta: Meta,
    pub spec: ClusterSpec,
    pub cluster_id: String,
    pub root_ca: RootCa,
    pub join_tokens: JoinTokens,
    /// Unlock key (KEK) shared by all managers when autolock is on.
    pub unlock_key: Option<crate::secret::Secret>,
    /// Nodes that were removed, with when: their certificates are refused.
    pub removed_nodes: BTreeMap<String, i64>,
}

// ---------------------------------------------------------------- services

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServiceMode {
    #[default]
    Replicated,
    Global,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RestartCondition {
    #[default]
    Any,
    OnFailure,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    pub delay_ms: u64,
    /// 0 = unlimited.
    pub max_attempts: u64,
    /// 0 = unbounded.
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    /// Swarm's defaults: restart on any exit, after 5 s, forever.
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay_ms: shoal_proto::defaults::RESTART_DELAY_MS,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthConfig {
    /// Docker's form: `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    pub test: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub labels: Labels,
    pub dir: String,
    pub user: String,
    pub stop_grace_period_ms: u64,
    pub healthcheck: Option<HealthConfig>,
    /// Ignore the image's HEALTHCHECK.
    pub no_healthcheck: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub constraints: Vec<String>,
    /// `node.labels.K` descriptors, spread in order.
    pub preferences: Vec<String>,
    /// 0 = unlimited.
    pub max_replicas_per_node: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub container: ContainerSpec,
    pub reservations: Resources,
    pub limits: Resources,
    pub restart: RestartPolicy,
    pub placement: Placement,
    pub force_update: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// 0 = all at once.
    pub parallelism: u64,
    pub delay_ms: u64,
    pub failure_action: FailureAction,
    pub monitor_ms: u64,
    pub max_failure_ratio: f32,
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    /// Swarm's defaults.
    fn default() -> Self {
        UpdateConfig {
            parallelism: shoal_proto::defaults::UPDATE_PARALLELISM,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: shoal_proto::defaults::UPDATE_MONITOR_MS,
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub labels: Labels,
    pub task: TaskSpec,
    pub mode: ServiceMode,
    pub replicas: u64,
    pub update: UpdateConfig,
    pub rollback: UpdateConfig,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UpdateState {
    #[default]
    Unknown,
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    pub fn name(self) -> &'static str {
        match self {
            UpdateState::Unknown => "unknown",
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }

    /// An update or rollback is under way (not paused, not done).
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started_at: i64,
    pub completed_at: i64,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub meta: Meta,
    pub spec: ServiceSpec,
    /// The spec before the last update: what a rollback returns to.
    pub previous_spec: Option<ServiceSpec>,
    pub update_status: Option<UpdateStatus>,
}

// ---------------------------------------------------------------- tasks

/// The task lifecycle. States only move forward (ordering is meaningful):
///
/// ```text
///  new → pending → assigned → accepted → preparing → starting → running
///   (orchestrator) (scheduler)   (worker ......................)   │
///                                                                 ▼
///                       complete | shutdown | failed | rejected | orphaned
/// ```
/// `remove` is only ever a desired state: the task is to be deleted once its
/// container is gone.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum TaskState {
    #[default]
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Remove,
    Orphaned,
}

impl TaskState {
    pub const ALL: [TaskState; 13] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Remove,
        TaskState::Orphaned,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }

    /// The task has stopped for good.
    pub fn is_terminal(self) -> bool {
        self > TaskState::Running
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Health {
    #[default]
    None,
    Starting,
    Healthy,
    Unhealthy,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    /// Unix ms when `state` was reached.
    pub timestamp: i64,
    pub message: String,
    pub err: String,
    pub exit_code: Option<i32>,
    pub container_id: String,
    pub health: Health,
    pub pid: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub meta: Meta,
    pub service_id: String,
    pub service_name: String,
    /// 1..N for replicated services; 0 for global ones (keyed by node).
    pub slot: u64,
    /// Empty until the scheduler assigns the task.
    pub node_id: String,
    pub spec: TaskSpec,
    /// The service version this task was made from.
    pub spec_version: u64,
    pub desired_state: TaskState,
    pub status: TaskStatus,
}

impl Task {
    /// `<service>.<slot>.<id>`, or `<service>.<node id>.<id>` for global
    /// tasks: Docker's container naming.
    pub fn name(&self) -> String {
        if self.slot == 0 {
            format!("{}.{}.{}", self.service_name, self.node_id, self.meta.id)
        } else {
            format!("{}.{}.{}", self.service_name, self.slot, self.meta.id)
        }
    }
}
